#include "kernels/numeric.h"

#include <immintrin.h>

#include <cmath>
#include <random>

#include <gtest/gtest.h>

namespace strata::num {
namespace {

// Reference: the F16C instruction (round to nearest even).
std::uint16_t hw_f32_to_f16(float f) { return static_cast<std::uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)); }
float hw_f16_to_f32(std::uint16_t h) { return _cvtsh_ss(h); }

TEST(Numeric, HalfDecodeMatchesHardwareForAllValues) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    float a = f16_to_f32(static_cast<std::uint16_t>(h));
    float b = hw_f16_to_f32(static_cast<std::uint16_t>(h));
    if (std::isnan(b)) {
      EXPECT_TRUE(std::isnan(a)) << h;
    } else {
      EXPECT_EQ(f32_bits(a), f32_bits(b)) << h;
    }
  }
}

TEST(Numeric, HalfEncodeMatchesHardware) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::uint32_t> bits;
  auto check = [](float f) {
    std::uint16_t a = f32_to_f16(f);
    std::uint16_t b = hw_f32_to_f16(f);
    if (std::isnan(f)) {
      EXPECT_EQ(a & 0x7c00u, 0x7c00u);
      EXPECT_NE(a & 0x3ffu, 0u);
    } else {
      EXPECT_EQ(a, b) << f;
    }
  };
  for (int i = 0; i < 2000000; ++i) check(bits_f32(bits(rng)));
  // Every half value, its neighbours and the midpoints between them.
  for (std::uint32_t h = 0; h < 0x7c00; ++h) {
    float v = f16_to_f32(static_cast<std::uint16_t>(h));
    float next = f16_to_f32(static_cast<std::uint16_t>(h + 1));
    check(v);
    check(-v);
    float mid = (v + next) / 2;
    check(mid);
    check(std::nextafter(mid, 0.0f));
    check(std::nextafter(mid, 1e9f));
  }
  check(65519.f);
  check(65520.f);
  check(1e-8f);
  check(std::ldexp(1.0f, -25));
  check(std::nextafter(std::ldexp(1.0f, -25), 1.0f));
}

TEST(Numeric, Bf16RoundsToNearestEvenAndKeepsNaN) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(f32_to_bf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)), 0x3f81);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(bits_f32(0x7f800001u)))));  // signalling NaN with low payload
  EXPECT_TRUE(std::isinf(bf16_to_f32(f32_to_bf16(INFINITY))));
  EXPECT_TRUE(std::isinf(bf16_to_f32(f32_to_bf16(3.4e38f))));  // rounds up past the largest bf16
  std::mt19937 rng(3);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 1000000; ++i) {
    float f = bits_f32(bits(rng));
    if (std::isnan(f)) continue;
    float r = bf16_to_f32(f32_to_bf16(f));
    // Round-trip error is at most half an ulp of bf16: 2^-8 relative for normal numbers, and
    // half the subnormal spacing (2^-134) below 2^-126.
    if (std::isfinite(r)) {
      EXPECT_LE(std::fabs(static_cast<double>(r) - f), std::ldexp(std::fabs(static_cast<double>(f)), -8) + std::ldexp(1.0, -134));
    }
  }
}

}  // namespace
}  // namespace strata::num
