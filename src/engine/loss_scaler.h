// src/engine/loss_scaler.h — the loss scale of a training run: fixed, or dynamic as DeepSpeed's
// DynamicLossScaler (fp16): start at 2^initial_scale_power; on a step with non-finite gradients
// the step is skipped and, once `hysteresis` such overflows have been tolerated since the last
// halving, the scale halves (never below min_loss_scale); after `scale_window` consecutive
// clean steps it doubles and the tolerance is restored.
//
// Thread-safety: a plain value; one thread at a time.
#pragma once

#include <algorithm>
#include <cmath>

#include "strata/profile.h"

namespace strata::engine {

class LossScaler {
 public:
  // fp16 follows the profile (dynamic, or a fixed loss_scale > 0); fp32 and bf16 use 1.
  explicit LossScaler(const PrecisionConfig& p)
      : dynamic_(p.dtype == DType::kF16 && p.dynamic_loss_scale),
        scale_(p.dtype != DType::kF16       ? 1.0
               : p.dynamic_loss_scale ? std::ldexp(1.0, p.initial_scale_power)
               : p.loss_scale > 0     ? p.loss_scale
                                      : 1.0),
        window_(std::max(1, p.scale_window)),
        hysteresis_(std::max(1, p.hysteresis)),
        tolerance_left_(hysteresis_),
        min_scale_(p.min_loss_scale) {}

  double scale() const { return scale_; }
  bool dynamic() const { return dynamic_; }
  int clean_steps() const { return clean_; }
  int tolerance_left() const { return tolerance_left_; }
  // Restores a saved state (checkpoints). REQUIRES: scale > 0.
  void restore(double scale, int clean_steps, int tolerance_left) {
    scale_ = scale;
    clean_ = std::max(0, clean_steps);
    tolerance_left_ = std::clamp(tolerance_left, 1, hysteresis_);
  }

  // Records the outcome of a step that used scale().
  void update(bool finite) {
    if (!dynamic_) return;
    if (!finite) {
      clean_ = 0;
      if (tolerance_left_ > 1) {
        --tolerance_left_;
      } else {
        scale_ = std::max(scale_ / 2, min_scale_);
      }
      return;
    }
    if (++clean_ >= window_) {
      scale_ *= 2;
      clean_ = 0;
      tolerance_left_ = hysteresis_;
    }
  }

 private:
  bool dynamic_;
  double scale_;
  int window_;
  int hysteresis_;
  int tolerance_left_;
  double min_scale_;
  int clean_ = 0;
};

}  // namespace strata::engine
