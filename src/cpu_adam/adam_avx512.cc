// The AVX-512 path of the CPU optimizer: 16 floats per vector (AVX-512F only: no BW, VL or
// BF16 extensions are needed), integer round-to-nearest-even for bf16, vcvtps2ph for fp16.
// Compiled for the baseline target; only the functions after the target pragma use
// AVX-512, and they run only when cpu_features() reports avx512f (with OS support).
#include <cstddef>
#include <cstdint>

#include "cpu_adam/adam_kernels.h"
#include "kernels/adam_math.h"
#include "kernels/numeric.h"

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")

#include "cpu_adam/adam_kernel_impl.h"

namespace strata::cpu_adam {
namespace {

struct Avx512Ops {
  using F = __m512;
  static constexpr std::size_t kLanes = 16;

  static STRATA_ADAM_INLINE F set1(float x) { return _mm512_set1_ps(x); }
  static STRATA_ADAM_INLINE F load(const float* p) { return _mm512_loadu_ps(p); }
  static STRATA_ADAM_INLINE void store(float* p, F x) { _mm512_storeu_ps(p, x); }
  static STRATA_ADAM_INLINE F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static STRATA_ADAM_INLINE F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static STRATA_ADAM_INLINE F fnma(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static STRATA_ADAM_INLINE F div(F a, F b) { return _mm512_div_ps(a, b); }
  static STRATA_ADAM_INLINE F sqrt(F a) { return _mm512_sqrt_ps(a); }

  static STRATA_ADAM_INLINE __m256i load16(const std::uint16_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  // bf16 -> f32 is exact: the 16 bits become the high half of the float.
  static STRATA_ADAM_INLINE F load_bf16(const std::uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(load16(p)), 16));
  }
  // fp16 -> f32 is exact (subnormals included).
  static STRATA_ADAM_INLINE F load_f16(const std::uint16_t* p) { return _mm512_cvtph_ps(load16(p)); }

  // REQUIRES: p is 32-byte aligned (copy_peel() arranges it).
  static STRATA_ADAM_INLINE void stream256(std::uint16_t* p, __m256i x) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), x);
  }
  // Round to nearest even as num::f32_to_bf16: (u + 0x7fff + lsb) >> 16; NaN -> (u >> 16) | 0x40.
  // vpmovdw truncates each 32-bit lane to 16 bits; every lane is <= 0xffff here.
  static STRATA_ADAM_INLINE void stream_bf16(std::uint16_t* p, F x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    const __m512i rounded =
        _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __m512i quiet_nan = _mm512_or_si512(hi, _mm512_set1_epi32(0x40));
    const __mmask16 is_nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    stream256(p, _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, quiet_nan)));
  }
  static STRATA_ADAM_INLINE void stream_f16(std::uint16_t* p, F x) {
    stream256(p, _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
  }
  static STRATA_ADAM_INLINE void stream_trunc16(std::uint16_t* p, F x) {
    stream256(p, _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(x), 16)));
  }
  // Orders the non-temporal stores before whatever the caller does next (an OpenMP barrier).
  static STRATA_ADAM_INLINE void store_fence() { _mm_sfence(); }
};

RangeFn avx512_adam(DType g, CopyKind c, bool l2) { return select_adam<Avx512Ops>(g, c, l2); }
RangeFn avx512_stream(DType g, CopyKind c) { return select_stream<Avx512Ops>(g, c); }

}  // namespace
}  // namespace strata::cpu_adam

#pragma GCC pop_options

namespace strata::cpu_adam {
// Baseline code: safe to call on any CPU; the functions it points to are not.
const Kernels& avx512_kernels() {
  static const Kernels k{Isa::kAvx512, &avx512_adam, &avx512_stream};
  return k;
}
}  // namespace strata::cpu_adam

#else  // not x86-64: the table exists so the dispatcher links; cpu_features() never selects it.

namespace strata::cpu_adam {
const Kernels& avx512_kernels() { return scalar_kernels(); }
}  // namespace strata::cpu_adam

#endif
