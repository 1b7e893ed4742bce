// kernels/elementwise_math.h — the per-element math of the device primitives (load/store in
// fp32, fp16 and bf16; fill, cast, scale, axpy, inf/nan test, square), written once as
// host+device functions. The CUDA kernels in kernels/*.cu and the host device's OpenMP loops
// (src/device/host_device.cc) call exactly these functions, so both backends compute the same
// values element by element; only the order of a reduction's additions may differ.
//
// Everything computes in fp32. Storage types are distinct structs so that overloads pick the
// conversion (round to nearest even, from kernels/numeric.h). Arithmetic goes through single
// IEEE operations (the _rn intrinsics on the device) so that nvcc cannot contract `a * b + c`
// into an FMA the host does not do; the host builds in ISO mode, where GCC does not contract.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>

#include "kernels/numeric.h"

namespace strata::kern {

// Storage of one bf16 / fp16 element (the raw bits).
struct Bf16 {
  std::uint16_t bits;
};
struct F16 {
  std::uint16_t bits;
};

STRATA_HD float to_f32(float v) { return v; }
STRATA_HD float to_f32(Bf16 v) { return num::bf16_to_f32(v.bits); }
STRATA_HD float to_f32(F16 v) { return num::f16_to_f32(v.bits); }

// from_f32<T>(x): x rounded to the storage type T.
template <typename T>
STRATA_HD T from_f32(float v);
template <>
STRATA_HD float from_f32<float>(float v) {
  return v;
}
template <>
STRATA_HD Bf16 from_f32<Bf16>(float v) {
  return Bf16{num::f32_to_bf16(v)};
}
template <>
STRATA_HD F16 from_f32<F16>(float v) {
  return F16{num::f32_to_f16(v)};
}

// One IEEE operation each, rounded to nearest, never contracted.
STRATA_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
STRATA_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// x * alpha
STRATA_HD float scale_elem(float x, float alpha) { return mul_rn(x, alpha); }

// y + alpha * x, two roundings (no fused multiply-add on either backend)
STRATA_HD float axpy_elem(float y, float alpha, float x) { return add_rn(y, mul_rn(alpha, x)); }

// True for +-inf and NaN of any payload; a bit test, so it also holds under fast-math flags.
STRATA_HD bool is_nonfinite(float x) { return (num::f32_bits(x) & 0x7f800000u) == 0x7f800000u; }

// The term a sum of squares adds.
STRATA_HD float square_elem(float x) { return mul_rn(x, x); }

}  // namespace strata::kern
