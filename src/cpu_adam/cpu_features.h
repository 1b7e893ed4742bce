// src/cpu_adam/cpu_features.h — which SIMD instruction sets this CPU and OS can run, read
// once from CPUID and XGETBV, and the names the CPU optimizer's paths are chosen by.
//
// A path is usable only when the CPU has the instructions AND the OS saves the registers
// they use (XCR0), so a kernel never faults on a machine that hides AVX-512 state.
//
// Thread-safety: cpu_features() detects on first use (thread-safe static) and is read-only after.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace strata::cpu_adam {

// The instruction-set paths of the CPU optimizer, worst to best.
enum class Isa : std::uint8_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

struct CpuFeatures {
  std::string brand;     // "AMD EPYC 7763 64-Core Processor"; empty when CPUID has no brand string
  bool avx2 = false;     // each flag: CPU support and OS support of the register state
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
};

const CpuFeatures& cpu_features();

// "scalar", "avx2", "avx512".
std::string_view isa_name(Isa isa);
// Accepts the names above; nullopt for anything else.
std::optional<Isa> parse_isa(std::string_view name);

// The AVX2 path needs AVX2, FMA and F16C; the AVX-512 path AVX-512F (plus the AVX2 set,
// which every AVX-512 CPU has). Scalar always runs.
bool isa_supported(Isa isa);
// Why an ISA is not supported, e.g. "this CPU lacks avx512f"; empty when it is.
std::string isa_missing(Isa isa);
// Supported paths, best first.
std::vector<Isa> supported_isas();

}  // namespace strata::cpu_adam
