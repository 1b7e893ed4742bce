// The AVX2 path of the CPU optimizer: 8 floats per vector, FMA, F16C for fp16, integer
// round-to-nearest-even for bf16. Compiled for the baseline target; only the functions
// after the target pragma use AVX2, and they run only when cpu_features() reports
// avx2, fma and f16c.
#include <cstddef>
#include <cstdint>

#include "cpu_adam/adam_kernels.h"
#include "kernels/adam_math.h"
#include "kernels/numeric.h"

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

#include "cpu_adam/adam_kernel_impl.h"

namespace strata::cpu_adam {
namespace {

struct Avx2Ops {
  using F = __m256;
  static constexpr std::size_t kLanes = 8;

  static STRATA_ADAM_INLINE F set1(float x) { return _mm256_set1_ps(x); }
  static STRATA_ADAM_INLINE F load(const float* p) { return _mm256_loadu_ps(p); }
  static STRATA_ADAM_INLINE void store(float* p, F x) { _mm256_storeu_ps(p, x); }
  static STRATA_ADAM_INLINE F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static STRATA_ADAM_INLINE F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static STRATA_ADAM_INLINE F fnma(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static STRATA_ADAM_INLINE F div(F a, F b) { return _mm256_div_ps(a, b); }
  static STRATA_ADAM_INLINE F sqrt(F a) { return _mm256_sqrt_ps(a); }

  static STRATA_ADAM_INLINE __m128i load16(const std::uint16_t* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }
  // bf16 -> f32 is exact: the 16 bits become the high half of the float.
  static STRATA_ADAM_INLINE F load_bf16(const std::uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load16(p)), 16));
  }
  // fp16 -> f32 is exact (F16C, subnormals included).
  static STRATA_ADAM_INLINE F load_f16(const std::uint16_t* p) { return _mm256_cvtph_ps(load16(p)); }

  // Narrows 8 x 32-bit lanes holding values <= 0xffff to 8 x 16 bit.
  static STRATA_ADAM_INLINE __m128i narrow(__m256i x) {
    const __m256i packed = _mm256_packus_epi32(x, x);  // per 128-bit lane: [x0..3 x0..3 | x4..7 x4..7]
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));  // qwords 0 and 2
  }
  // REQUIRES: p is 16-byte aligned (copy_peel() arranges it).
  static STRATA_ADAM_INLINE void stream128(std::uint16_t* p, __m128i x) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), x);
  }
  // Round to nearest even as num::f32_to_bf16: (u + 0x7fff + lsb) >> 16; NaN -> (u >> 16) | 0x40.
  static STRATA_ADAM_INLINE void stream_bf16(std::uint16_t* p, F x) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i hi = _mm256_srli_epi32(u, 16);
    const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i quiet_nan = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
    const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    stream128(p, narrow(_mm256_blendv_epi8(rounded, quiet_nan, is_nan)));
  }
  static STRATA_ADAM_INLINE void stream_f16(std::uint16_t* p, F x) {
    stream128(p, _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  }
  static STRATA_ADAM_INLINE void stream_trunc16(std::uint16_t* p, F x) {
    stream128(p, narrow(_mm256_srli_epi32(_mm256_castps_si256(x), 16)));
  }
  // Orders the non-temporal stores before whatever the caller does next (an OpenMP barrier).
  static STRATA_ADAM_INLINE void store_fence() { _mm_sfence(); }
};

RangeFn avx2_adam(DType g, CopyKind c, bool l2) { return select_adam<Avx2Ops>(g, c, l2); }
RangeFn avx2_stream(DType g, CopyKind c) { return select_stream<Avx2Ops>(g, c); }

}  // namespace
}  // namespace strata::cpu_adam

#pragma GCC pop_options

namespace strata::cpu_adam {
// Baseline code: safe to call on any CPU; the functions it points to are not.
const Kernels& avx2_kernels() {
  static const Kernels k{Isa::kAvx2, &avx2_adam, &avx2_stream};
  return k;
}
}  // namespace strata::cpu_adam

#else  // not x86-64: the table exists so the dispatcher links; cpu_features() never selects it.

namespace strata::cpu_adam {
const Kernels& avx2_kernels() { return scalar_kernels(); }
}  // namespace strata::cpu_adam

#endif
