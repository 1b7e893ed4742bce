// The gradient norm, overflow check and clip coefficient of engine/grad_norm.h.
#include "engine/grad_norm.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/numeric.h"

namespace strata::engine {

Result<GradSquaredNorm> GradSquaredNorm::create(Device& device) {
  GradSquaredNorm n;
  n.device_ = &device;
  auto scalar = device.allocate(sizeof(float));
  if (!scalar.ok()) return scalar.status().with_context("gradient norm scratch");
  n.scalar_ = std::move(*scalar);
  auto host = device.allocate_pinned(sizeof(float));
  if (!host.ok()) return host.status().with_context("gradient norm read-back");
  n.host_ = std::move(*host);
  return n;
}

Status GradSquaredNorm::enqueue(std::span<const DeviceView> grads, Stream& stream, Communicator* group,
                                std::span<const DeviceView> split, Communicator* tp, Communicator* pp) {
  if (device_ == nullptr) return failed_precondition("gradient norm: create() it first");
  if (!split.empty() && tp == nullptr) return internal_error("gradient norm: split gradients without their tp group");
  STRATA_ASSIGN_OR_RETURN(DeviceView sumsq, scalar_.view(DType::kF32, 0, 1));
  const CommBuffer b = CommBuffer::of(sumsq);
  STRATA_RETURN_IF_ERROR(device_->fill(sumsq, 0.0f, stream));
  for (const DeviceView& g : split) STRATA_RETURN_IF_ERROR(device_->sum_squares(g, sumsq, stream));
  if (tp != nullptr) STRATA_RETURN_IF_ERROR(tp->all_reduce(b, b, ReduceOp::kSum, stream));
  for (const DeviceView& g : grads) STRATA_RETURN_IF_ERROR(device_->sum_squares(g, sumsq, stream));
  if (group != nullptr) STRATA_RETURN_IF_ERROR(group->all_reduce(b, b, ReduceOp::kSum, stream));
  if (pp != nullptr) STRATA_RETURN_IF_ERROR(pp->all_reduce(b, b, ReduceOp::kSum, stream));
  return device_->copy_to_host(host_.bytes().first(sizeof(float)), sumsq.range(), stream);
}

float GradSquaredNorm::value() const {
  float v;
  std::memcpy(&v, host_.data(), sizeof v);
  return v;
}

Result<double> host_sum_squares(std::span<const std::byte> grads, DType dtype, Communicator* group) {
  const std::size_t n = grads.size() / dtype_size(dtype);
  double sum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    float x = 0;
    if (dtype == DType::kF32) {
      std::memcpy(&x, grads.data() + i * 4, 4);
    } else {
      std::uint16_t h;
      std::memcpy(&h, grads.data() + i * 2, 2);
      x = dtype == DType::kBF16 ? num::bf16_to_f32(h) : num::f16_to_f32(h);
    }
    sum += static_cast<double>(x) * x;
  }
  if (group == nullptr) return sum;
  std::vector<double> all{sum};
  STRATA_RETURN_IF_ERROR(group->all_reduce_host(all, ReduceOp::kSum));
  return all[0];
}

GradNorm finish_grad_norm(double sum_squares, double loss_scale, double grad_clip) {
  GradNorm r;
  r.norm = std::sqrt(sum_squares) / loss_scale;
  r.finite = std::isfinite(sum_squares);
  if (!r.finite) return r;
  if (grad_clip > 0 && r.norm > grad_clip) r.clip = grad_clip / (r.norm + 1e-6);
  r.grad_scale = r.clip / loss_scale;
  return r;
}

NormedUpdate normed_update(const GradNorm& norm, const AdamHyper& hyper, const UpdateRequest& req, std::int64_t updates) {
  NormedUpdate u;
  u.result.grad_norm = norm.norm;
  u.result.finite = norm.finite;
  u.result.applied = norm.finite;
  u.hyper = hyper;
  u.hyper.lr = req.lr;
  u.step = AdamStep{updates + 1, norm.grad_scale};
  return u;
}

}  // namespace strata::engine
