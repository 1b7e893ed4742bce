// src/cpu_adam/adam_reference.h — the plain reference every optimizer path is tested
// against: one Adam / AdamW step per element in double precision with the exact (double)
// hyperparameters, i.e. torch.optim.Adam / AdamW evaluated without float rounding.
//
// Alongside each value it returns a bound on the rounding error that the float operation
// sequence of kernels/adam_math.h may legitimately commit on the same inputs: a first-order
// running error analysis (Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3)
// where every float operation and every float-rounded constant adds u*|result| + eta,
// u = 2^-24 (round to nearest), eta = 2^-150 (the absolute error of a subnormal result),
// and errors of operands propagate through the derivatives of each operation. Comparing a
// path's float result r with |r - value| <= 2 * bound + eta (2x for the neglected
// second-order terms) is an absolute-plus-relative tolerance scaled to the magnitudes that
// actually entered the computation: tight where the math is well conditioned, wider only
// where cancellation makes float results legitimately uncertain.
//
// Thread-safety: pure functions.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/adam_math.h"

namespace strata::cpu_adam {

struct ReferenceElement {
  double p, m, v;              // the updated values
  double p_err, m_err, v_err;  // first-order bounds on the float path's rounding error
};

// The exact per-step scalars of one step, computed once.
class ReferenceStep {
 public:
  // REQUIRES: adam::check_hyper(h, step, grad_scale) == nullptr.
  ReferenceStep(const adam::Hyper& h, std::int64_t step, double grad_scale);

  // One element. `grad` is the stored gradient widened exactly (bf16/fp16 -> float -> double).
  ReferenceElement update(double grad, double p, double m, double v) const;

 private:
  adam::Hyper h_;
  double grad_scale_, step_size_, inv_sqrt_bc2_, decay_, l2_;
};

// True when a float result is within the tolerance described above.
inline bool within_tolerance(float got, double want, double err_bound) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return static_cast<double>(got) == want;
  return std::fabs(static_cast<double>(got) - want) <= 2 * err_bound + 0x1p-150;
}

}  // namespace strata::cpu_adam
