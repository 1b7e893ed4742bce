#include "zero/grad_buckets.h"

#include <algorithm>

namespace strata::zero {

Result<std::unique_ptr<GradBuckets>> GradBuckets::create(Communicator& dp, Device& device, const DeviceBuffer& grads,
                                                         CommType type,
                                                         std::vector<std::pair<std::uint64_t, std::uint64_t>> tensor_bytes,
                                                         std::uint64_t bucket_bytes, bool overlap) {
  const std::uint64_t elem = comm_type_size(type);
  if (bucket_bytes < elem) {
    return invalid_argument("zero.reduce_bucket_size = " + std::to_string(bucket_bytes) +
                            " bytes holds no gradient element");
  }
  std::unique_ptr<GradBuckets> g(new GradBuckets());
  g->dp_ = &dp;
  g->grads_ = &grads;
  g->type_ = type;
  g->overlap_ = overlap;
  const std::uint64_t step = bucket_bytes / elem * elem;
  const std::uint64_t total = grads.size() / elem * elem;
  for (std::uint64_t first = 0; first < total; first += step) {
    g->buckets_.push_back(Bucket{first, std::min(step, total - first)});
  }
  g->buckets_of_.resize(tensor_bytes.size());
  for (std::size_t i = 0; i < tensor_bytes.size(); ++i) {
    const auto [lo, hi] = tensor_bytes[i];
    if (hi <= lo) continue;
    for (std::size_t b = lo / step; b < g->buckets_.size() && g->buckets_[b].first < hi; ++b) {
      g->buckets_of_[i].push_back(b);
      ++g->buckets_[b].tensors;
    }
  }
  STRATA_ASSIGN_OR_RETURN(g->comm_stream_, device.create_stream("grad all-reduce"));
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

Status GradBuckets::launch(Bucket& b, Stream& stream) {
  b.launched = true;
  // The bucket's gradients are written by the training stream's work so far.
  STRATA_RETURN_IF_ERROR(stream.record(*ready_));
  STRATA_RETURN_IF_ERROR(comm_stream_->wait(*ready_));
  STRATA_ASSIGN_OR_RETURN(DeviceRange r, grads_->range(b.first, b.bytes));
  const CommBuffer buf{r, type_, b.bytes / comm_type_size(type_)};
  return dp_->all_reduce(buf, buf, ReduceOp::kSum, *comm_stream_);
}

Status GradBuckets::tensor_final(std::size_t i, Stream& stream) {
  for (std::size_t k : buckets_of_[i]) {
    Bucket& b = buckets_[k];
    if (--b.waiting == 0 && overlap_ && !b.launched) STRATA_RETURN_IF_ERROR(launch(b, stream));
  }
  return Status::OK();
}

Status GradBuckets::finish(Stream& stream) {
  for (Bucket& b : buckets_) {
    if (!b.launched) STRATA_RETURN_IF_ERROR(launch(b, stream));
  }
  STRATA_RETURN_IF_ERROR(comm_stream_->record(*reduced_));
  return stream.wait(*reduced_);
}

}  // namespace strata::zero
