// src/engine/grad_norm.h — the global gradient norm of an optimizer step, which is also its
// inf/nan overflow check, and the clip coefficient, shared by every StepOptimizer backend so
// that they agree to the bit.
//
// Two halves, so that a data-parallel layer can sum the ranks' squared norms in between:
//   1. GradSquaredNorm::enqueue: this rank's sum of squares of its gradients, accumulated in
//      fp32 on the device (Device::sum_squares, tensor after tensor, in the caller's order),
//      summed over a group whose ranks hold the other parts of the gradients (ZeRO's shards),
//      and copied to pinned host memory; value() reads it once the stream has synchronized.
//   2. finish_grad_norm: sqrt, divided by the loss scale; finite or not; the clip coefficient
//      min(1, grad_clip / (norm + 1e-6)) as torch.nn.utils.clip_grad_norm_.
// The sum of squares is inf or NaN exactly when some gradient is (or when it overflows fp32,
// which a loss scale must avoid anyway), so it doubles as the overflow check, as in DeepSpeed:
// one pass over the gradients instead of two.
//
// Thread-safety: a GradSquaredNorm is used by one thread at a time; its work follows the stream
// rules of strata/device.h. finish_grad_norm is pure.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>

#include "strata/communicator.h"
#include "strata/device.h"
#include "strata/optimizer.h"
#include "strata/status.h"
#include "strata/trainer.h"

namespace strata::engine {

class GradSquaredNorm {
 public:
  GradSquaredNorm() = default;  // holds nothing; create() one before use

  // One fp32 scalar on `device` and its pinned host copy.
  static Result<GradSquaredNorm> create(Device& device);

  // Enqueues on `stream`: the scalar = the sum of squares of every element of `grads`, all-
  // reduced (sum) over `group` when one is given, then its copy to host memory. With tensor
  // parallelism, `split` are this rank's shards of the tensors split over `tp`: their squares
  // are summed first and all-reduced over tp, then `grads` (the tensors every tp rank holds
  // whole, with the same gradients) are added once. The views must stay unchanged until the
  // stream has run it.
  // REQUIRES: created.
  // With pipeline stages, the sum is last all-reduced over `pp`.
  Status enqueue(std::span<const DeviceView> grads, Stream& stream, Communicator* group = nullptr,
                 std::span<const DeviceView> split = {}, Communicator* tp = nullptr, Communicator* pp = nullptr);

  // The sum the latest enqueue() computed.
  // REQUIRES: the stream it was enqueued on has synchronized since.
  float value() const;

  std::uint64_t device_bytes() const { return scalar_.size(); }

 private:
  Device* device_ = nullptr;
  DeviceBuffer scalar_;
  PinnedBuffer host_;
};

// The gradient views of an optimizer's pieces (anything with `param` and `grad`) for enqueue():
// with a tp group, those of parameters split over it go to `split`, the rest to `whole`; the
// pieces of `replicas` (OptimizerShard's) are left out.
struct NormViews {
  std::vector<DeviceView> whole, split;
};
template <typename Piece>
NormViews norm_views(const std::vector<Piece>& pieces, const Communicator* tp,
                     std::span<const Parameter* const> replicas = {}) {
  NormViews v;
  for (const Piece& p : pieces) {
    if (std::find(replicas.begin(), replicas.end(), p.param) != replicas.end()) continue;
    (tp != nullptr && p.param->shard().split() ? v.split : v.whole).push_back(p.grad);
  }
  return v;
}

// The sum of squares of `grads` (elements of `dtype`, in host memory), accumulated in double,
// summed over `group` when one is given (Communicator::all_reduce_host): the squared norm of
// gradients an engine delivered to host memory (ZeRO-3 with parameter offload). Not the device
// sum's rounding, so the clip coefficient may differ from it in the last bits.
Result<double> host_sum_squares(std::span<const std::byte> grads, DType dtype, Communicator* group = nullptr);

struct GradNorm {
  double norm = 0.0;        // L2 norm of the true gradient, before clipping (inf or NaN when not finite)
  bool finite = true;       // every gradient element is finite
  double clip = 1.0;        // the clip coefficient; with grad_scale, meaningful only when finite
  double grad_scale = 1.0;  // clip / loss_scale: what the update multiplies the stored gradients by
};

// The norm, overflow check and clip coefficient from the squared norm of the stored (loss
// scaled) gradients of every rank. grad_clip <= 0 turns clipping off.
// REQUIRES: loss_scale finite and positive.
GradNorm finish_grad_norm(double sum_squares, double loss_scale, double grad_clip);

// The update a norm calls for, as every StepOptimizer applies it: the result to return
// (applied when the gradients are finite), Adam's hyperparameters at req.lr, and the step
// after `updates` with the norm's grad_scale.
struct NormedUpdate {
  UpdateResult result;
  AdamHyper hyper;
  AdamStep step;
};
NormedUpdate normed_update(const GradNorm& norm, const AdamHyper& hyper, const UpdateRequest& req, std::int64_t updates);

}  // namespace strata::engine
