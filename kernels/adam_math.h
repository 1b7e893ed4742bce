// kernels/adam_math.h — the per-element Adam / AdamW update, written once as host+device
// functions so that the CPU optimizer (scalar, AVX2 and AVX-512 paths) and the CUDA kernel
// compute exactly the same float operations in exactly the same order.
//
// The math is PyTorch's torch.optim.Adam / torch.optim.AdamW (amsgrad=False,
// maximize=False). With t the 1-based step, g the gradient as stored and s the gradient
// scale (1/loss_scale times the clipping coefficient):
//
//   g  = g * s
//   Adam (L2):     g  = g + wd * p
//   AdamW:         p  = p * (1 - lr * wd)                 (decoupled decay, before the update)
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * g * g
//   bias correction on:  step_size = lr / (1 - beta1^t),  denom = sqrt(v) / sqrt(1 - beta2^t) + eps
//   bias correction off: step_size = lr,                  denom = sqrt(v) + eps
//   p  = p - step_size * m / denom
//
// Per-step scalars (step_size, 1/sqrt(1 - beta2^t), 1 - lr*wd, 1 - beta1, 1 - beta2) are
// computed once per step in double precision from the double hyperparameters, as PyTorch
// does with Python floats, and rounded to float once (AdamConstants). The per-element work
// is then float only, in this order, each line one IEEE operation rounded to nearest:
//
//   g  = g_in * grad_scale                              mul
//   g  = fma(l2, p, g)             (Adam with wd != 0)  fma
//   pd = p * decay                                      mul      (decay == 1 is exact)
//   m' = fma(one_minus_beta1, g, beta1 * m)             mul, fma
//   v' = fma(one_minus_beta2 * g, g, beta2 * v)         mul, mul, fma
//   d  = fma(sqrt(v'), inv_sqrt_bc2, eps)               sqrt, fma
//   p' = fma(-step_size, m' / d, pd)                    div, fma
//
// These differ from PyTorch's own float kernels only in rounding (PyTorch divides by
// sqrt(1 - beta2^t) and adds eps in two roundings, and uses lerp for m): the results agree
// with the exact formula within a few float ulps of the operands' magnitudes.
//
// Every SIMD and device implementation must perform these operations, with fused
// multiply-add where written and nowhere else, so that all backends produce bit-identical
// results for the same inputs (NaN payloads aside). On the device the explicit _rn
// intrinsics keep nvcc from contracting or reassociating; on the host the build runs in ISO
// mode, where GCC does not contract a*b+c (-ffp-contract=off).
//
// Thread-safety: pure functions on values.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/numeric.h"

namespace strata::adam {

enum class Mode : std::uint8_t {
  kAdam = 0,   // weight decay as an L2 term added to the gradient (torch.optim.Adam)
  kAdamW = 1,  // decoupled weight decay applied to the parameter (torch.optim.AdamW)
};

// The hyperparameters of one step, as the user gives them (PyTorch names).
struct Hyper {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  Mode mode = Mode::kAdamW;
  bool bias_correction = true;
};

// Returns nullptr when the hyperparameters, the 1-based step and the gradient scale are
// valid, otherwise a constant string saying which one is wrong and what is expected.
// Every backend calls it before computing constants, so all reject the same inputs.
inline const char* check_hyper(const Hyper& h, std::int64_t step, double grad_scale) {
  if (step < 1) return "step must be >= 1 (steps are counted from 1, as in PyTorch)";
  if (!(std::isfinite(h.lr) && h.lr >= 0.0)) return "lr must be finite and >= 0";
  if (!(h.beta1 >= 0.0 && h.beta1 < 1.0)) return "beta1 must be in [0, 1)";
  if (!(h.beta2 >= 0.0 && h.beta2 < 1.0)) return "beta2 must be in [0, 1)";
  if (!(std::isfinite(h.eps) && h.eps >= 0.0)) return "eps must be finite and >= 0";
  if (!(std::isfinite(h.weight_decay) && h.weight_decay >= 0.0)) return "weight_decay must be finite and >= 0";
  if (h.mode != Mode::kAdam && h.mode != Mode::kAdamW) return "mode must be Adam or AdamW";
  if (!(std::isfinite(grad_scale) && grad_scale >= 0.0)) return "grad_scale must be finite and >= 0";
  return nullptr;
}

// The float scalars of one step, computed once on the host and passed by value to every
// per-element update (a CUDA kernel takes it as a kernel argument).
struct Constants {
  float beta1;
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float eps;
  float step_size;     // lr / (1 - beta1^t), or lr without bias correction
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t), or 1 without bias correction
  float decay;         // AdamW: 1 - lr * wd; Adam: 1
  float l2;            // Adam: wd; AdamW: 0. Applied only when != 0, as PyTorch skips it.
  float grad_scale;
};

// REQUIRES: check_hyper(h, step, grad_scale) == nullptr.
inline Constants make_constants(const Hyper& h, std::int64_t step, double grad_scale) {
  const double t = static_cast<double>(step);
  const double bc1 = h.bias_correction ? 1.0 - std::pow(h.beta1, t) : 1.0;
  const double bc2 = h.bias_correction ? 1.0 - std::pow(h.beta2, t) : 1.0;
  Constants k;
  k.beta1 = static_cast<float>(h.beta1);
  k.one_minus_beta1 = static_cast<float>(1.0 - h.beta1);
  k.beta2 = static_cast<float>(h.beta2);
  k.one_minus_beta2 = static_cast<float>(1.0 - h.beta2);
  k.eps = static_cast<float>(h.eps);
  k.step_size = static_cast<float>(h.lr / bc1);
  k.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  k.decay = h.mode == Mode::kAdamW ? static_cast<float>(1.0 - h.lr * h.weight_decay) : 1.0f;
  k.l2 = h.mode == Mode::kAdam ? static_cast<float>(h.weight_decay) : 0.0f;
  k.grad_scale = static_cast<float>(grad_scale);
  return k;
}

// Single IEEE operations, rounded to nearest, never contracted.
namespace op {
STRATA_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
STRATA_HD float fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
STRATA_HD float div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
STRATA_HD float sqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
}  // namespace op

// One element: reads the gradient as a float (already widened from bf16/fp16, exactly),
// updates p, m and v in place. The order of operations is the contract described above.
STRATA_HD void update(const Constants& k, float grad, float& p, float& m, float& v) {
  float g = op::mul(grad, k.grad_scale);
  if (k.l2 != 0.0f) g = op::fma(k.l2, p, g);
  const float pd = op::mul(p, k.decay);
  const float m1 = op::fma(k.one_minus_beta1, g, op::mul(k.beta1, m));
  const float v1 = op::fma(op::mul(k.one_minus_beta2, g), g, op::mul(k.beta2, v));
  const float d = op::fma(op::sqrt(v1), k.inv_sqrt_bc2, k.eps);
  p = op::fma(-k.step_size, op::div(m1, d), pd);
  m = m1;
  v = v1;
}

}  // namespace strata::adam
