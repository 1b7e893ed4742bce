// src/model/init_rng.h — the counter-based generator behind parameter initialisation
// (strata/model.h states the algorithm): SplitMix64 and FNV-1a to derive a stream key from
// (seed, parameter name), Philox4x32-10 to map (key, element index) to random bits, and a
// Box-Muller transform to a standard normal. Separate from module.cc so that the tests can pin
// Philox to the published known-answer vectors.
//
// Thread-safety: pure functions.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string_view>

namespace strata::rng {

inline std::uint64_t splitmix64(std::uint64_t x) {
  std::uint64_t z = x + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline std::uint64_t fnv1a64(std::string_view s) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// generator of Random123, cuRAND and NumPy's Philox.
inline std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> c, std::array<std::uint32_t, 2> k) {
  constexpr std::uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k[0] += kW0;
      k[1] += kW1;
    }
    const std::uint64_t p0 = static_cast<std::uint64_t>(kM0) * c[0];
    const std::uint64_t p1 = static_cast<std::uint64_t>(kM1) * c[2];
    const auto hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    const auto hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
  }
  return c;
}

// The key of the stream of parameter `name` under `seed`.
inline std::uint64_t stream_key(std::uint64_t seed, std::string_view name) { return splitmix64(seed ^ fnv1a64(name)); }

// Standard normal number `index` of the stream `key`.
inline float normal_at(std::uint64_t key, std::uint64_t index) {
  const auto r = philox4x32_10({static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32), 0, 0},
                               {static_cast<std::uint32_t>(key), static_cast<std::uint32_t>(key >> 32)});
  const double u1 = (static_cast<double>(r[0]) + 1.0) / 4294967296.0;
  const double u2 = static_cast<double>(r[1]) / 4294967296.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
}

}  // namespace strata::rng
