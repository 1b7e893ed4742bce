#include "zero/grad_buckets.h"

#include <algorithm>

namespace strata::zero {

ByteBuckets cut_byte_buckets(std::uint64_t total, const std::vector<std::pair<std::uint64_t, std::uint64_t>>& tensor_bytes,
                             std::uint64_t bucket_bytes, std::uint64_t elem) {
  ByteBuckets out;
  const std::uint64_t step = std::max<std::uint64_t>(elem, bucket_bytes / elem * elem);
  total = total / elem * elem;
  for (std::uint64_t first = 0; first < total; first += step) out.buckets.emplace_back(first, std::min(step, total - first));
  out.of_tensor.resize(tensor_bytes.size());
  for (std::size_t i = 0; i < tensor_bytes.size(); ++i) {
    const auto [lo, hi] = tensor_bytes[i];
    if (hi <= lo) continue;
    for (std::size_t b = lo / step; b < out.buckets.size() && out.buckets[b].first < hi; ++b) out.of_tensor[i].push_back(b);
  }
  return out;
}

Result<std::unique_ptr<GradBuckets>> GradBuckets::create(Device& device, std::size_t bucket_count,
                                                         std::vector<std::vector<std::size_t>> of_tensor, bool overlap,
                                                         Reduce reduce) {
  std::unique_ptr<GradBuckets> g(new GradBuckets());
  g->overlap_ = overlap;
  g->reduce_ = std::move(reduce);
  g->buckets_.resize(bucket_count);
  for (const auto& list : of_tensor) {
    for (std::size_t b : list) {
      if (b >= bucket_count) return internal_error("gradient buckets: a tensor names bucket " + std::to_string(b));
      ++g->buckets_[b].tensors;
    }
  }
  g->of_tensor_ = std::move(of_tensor);
  STRATA_ASSIGN_OR_RETURN(g->comm_stream_, device.create_stream("gradient reduction"));
  STRATA_ASSIGN_OR_RETURN(g->ready_, device.create_event());
  STRATA_ASSIGN_OR_RETURN(g->reduced_, device.create_event());
  return g;
}

GradBuckets::~GradBuckets() {
  if (comm_stream_) comm_stream_->synchronize().ignore();
}

void GradBuckets::begin() {
  for (Bucket& b : buckets_) {
    b.waiting = b.tensors;
    b.launched = false;
  }
}

Status GradBuckets::launch(std::size_t b, Stream& stream) {
  buckets_[b].launched = true;
  // The bucket's gradients are written by the training stream's work so far.
  STRATA_RETURN_IF_ERROR(stream.record(*ready_));
  STRATA_RETURN_IF_ERROR(comm_stream_->wait(*ready_));
  return reduce_(b, *comm_stream_);
}

Status GradBuckets::tensor_final(std::size_t i, Stream& stream) {
  for (std::size_t k : of_tensor_[i]) {
    Bucket& b = buckets_[k];
    if (--b.waiting == 0 && overlap_ && !b.launched) STRATA_RETURN_IF_ERROR(launch(k, stream));
  }
  return Status::OK();
}

Status GradBuckets::launch_rest(Stream& stream) {
  for (std::size_t b = 0; b < buckets_.size(); ++b) {
    if (!buckets_[b].launched) STRATA_RETURN_IF_ERROR(launch(b, stream));
  }
  return Status::OK();
}

Status GradBuckets::finish(Stream& stream) {
  STRATA_RETURN_IF_ERROR(launch_rest(stream));
  STRATA_RETURN_IF_ERROR(comm_stream_->record(*reduced_));
  return stream.wait(*reduced_);
}

}  // namespace strata::zero
