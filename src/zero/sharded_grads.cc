#include "zero/sharded_grads.h"

#include <algorithm>

#include "kernels/numeric.h"

namespace strata::zero {

Result<std::unique_ptr<ShardedGrads>> ShardedGrads::create(Communicator& dp, Device& device, const FlatLayout& layout,
                                                           DType grad_dtype, int stage, bool overlap, bool host_sink) {
  if (stage != 1 && stage != 2) return invalid_argument("sharded gradients: stage " + std::to_string(stage) + " is not 1 or 2");
  if (host_sink && stage != 2) return invalid_argument("sharded gradients: a host sink needs stage 2's bucket slots");
  if (layout.shards() != static_cast<std::uint64_t>(dp.size())) {
    return internal_error("sharded gradients: the layout has " + std::to_string(layout.shards()) + " shards for " +
                          std::to_string(dp.size()) + " ranks");
  }
  std::unique_ptr<ShardedGrads> g(new ShardedGrads());
  g->dp_ = &dp;
  g->device_ = &device;
  g->layout_ = &layout;
  g->dtype_ = grad_dtype;
  g->stage_ = stage;
  g->host_sink_ = host_sink;
  const std::uint64_t gs = dtype_size(grad_dtype);
  const auto rank = static_cast<std::uint64_t>(dp.rank());
  const std::size_t buckets = layout.bucket_count();
  if (stage == 1) {
    auto full = device.allocate(std::max<std::uint64_t>(1, layout.total() * gs));
    if (!full.ok()) return full.status().with_context("ZeRO stage 1: the gradients of " + std::to_string(layout.used()) + " parameters");
    g->full_ = std::move(*full);
  } else if (host_sink) {
    std::uint64_t largest = 1;
    for (std::size_t b = 0; b < buckets; ++b) largest = std::max(largest, layout.slice(b, 0).count * gs);
    STRATA_ASSIGN_OR_RETURN(g->staging_, device.allocate_pinned(largest));
    g->host_.resize(buckets);
  } else {
    auto shard = device.allocate(std::max<std::uint64_t>(1, layout.shard_size() * gs));
    if (!shard.ok()) return shard.status().with_context("ZeRO stage 2: this rank's gradient shard");
    g->shard_ = std::move(*shard);
  }
  for (std::size_t b = 0; b < buckets && !host_sink; ++b) {
    const FlatRange s = layout.slice(b, rank);
    const DeviceBuffer& home = stage == 1 ? g->full_ : g->shard_;
    const std::uint64_t at = stage == 1 ? s.first : layout.shard_offset(b);
    STRATA_ASSIGN_OR_RETURN(DeviceView v, home.view(grad_dtype, at * gs, s.count));
    g->shard_grads_.push_back(v);
  }
  g->shard_grads_.resize(buckets);  // empty views with a host sink
  g->slot_of_.assign(buckets, -1);
  std::vector<std::vector<std::size_t>> of_tensor(layout.tensor_count());
  for (std::size_t i = 0; i < layout.tensor_count(); ++i) of_tensor[i].push_back(layout.bucket_of(i));
  ShardedGrads* self = g.get();
  STRATA_ASSIGN_OR_RETURN(g->buckets_, GradBuckets::create(device, buckets, std::move(of_tensor), overlap,
                                                           [self](std::size_t b, Stream& comm) { return self->reduce(b, comm); }));
  return g;
}

ShardedGrads::~ShardedGrads() {
  buckets_.reset();  // waits for the reductions still reading the buffers
}

Status ShardedGrads::begin_micro(int micro, bool last, Stream& stream) {
  micro_ = micro;
  last_ = last;
  if (stage_ == 1) {
    if (micro == 0) STRATA_RETURN_IF_ERROR(device_->fill(full_.view(dtype_), 0.0f, stream));
    if (last) buckets_->begin();
    return Status::OK();
  }
  buckets_->begin();
  // Every bucket was reduced at the end of the previous micro-step; after a step that failed
  // part of the way, none is left open either (a reused slot waits for its free event).
  slot_of_.assign(slot_of_.size(), -1);
  for (Slot& slot : slots_) slot.bucket = -1;
  return Status::OK();
}

Result<DeviceView> ShardedGrads::tensor_grad(std::size_t i, Stream& stream) {
  const std::uint64_t gs = dtype_size(dtype_);
  const std::uint64_t numel = layout_->tensor(i).numel;
  if (stage_ == 1) return full_.view(dtype_, layout_->offset(i) * gs, numel);
  const std::size_t b = layout_->bucket_of(i);
  if (slot_of_[b] < 0) STRATA_RETURN_IF_ERROR(open_bucket(b, stream));
  const Slot& slot = slots_[static_cast<std::size_t>(slot_of_[b])];
  return slot.buffer.view(dtype_, (layout_->offset(i) - layout_->bucket(b).first) * gs, numel);
}

Status ShardedGrads::tensor_final(std::size_t i, Stream& stream) {
  if (stage_ == 1 && !last_) return Status::OK();
  const std::size_t b = layout_->bucket_of(i);
  // A bucket none of whose tensors got a gradient this micro-step contributes zeros.
  if (stage_ == 2 && slot_of_[b] < 0 && !buckets_->launched(b)) STRATA_RETURN_IF_ERROR(open_bucket(b, stream));
  return buckets_->tensor_final(i, stream);
}

Status ShardedGrads::end_micro(Stream& stream) {
  if (stage_ == 1 && !last_) return Status::OK();
  if (stage_ == 2) {
    for (std::size_t b = 0; b < slot_of_.size(); ++b) {
      if (slot_of_[b] < 0 && !buckets_->launched(b)) STRATA_RETURN_IF_ERROR(open_bucket(b, stream));
    }
  }
  return last_ ? buckets_->finish(stream) : buckets_->launch_rest(stream);
}

Status ShardedGrads::open_bucket(std::size_t b, Stream& stream) {
  // The smallest free slot that holds the bucket, else a new one of its size: backward opens
  // the same buckets in the same order every step, so the slots made in the first step serve.
  const std::uint64_t bytes = layout_->bucket(b).count * dtype_size(dtype_);
  std::size_t s = slots_.size();
  for (std::size_t k = 0; k < slots_.size(); ++k) {
    const Slot& c = slots_[k];
    if (c.bucket < 0 && c.buffer.size() >= bytes && (s == slots_.size() || c.buffer.size() < slots_[s].buffer.size())) s = k;
  }
  if (s == slots_.size()) {
    Slot fresh;
    auto buffer = device_->allocate(bytes);
    if (!buffer.ok()) {
      return buffer.status().with_context("ZeRO stage 2: a gradient bucket slot (" + std::to_string(slots_.size()) +
                                          " made so far)");
    }
    fresh.buffer = std::move(*buffer);
    STRATA_ASSIGN_OR_RETURN(fresh.free, device_->create_event());
    slots_.push_back(std::move(fresh));
  }
  Slot& slot = slots_[s];
  // The slot's previous bucket has been reduced before its gradients are zeroed for this one.
  if (slot.recorded) STRATA_RETURN_IF_ERROR(stream.wait(*slot.free));
  STRATA_ASSIGN_OR_RETURN(DeviceView zeros, slot.buffer.view(dtype_, 0, layout_->bucket(b).count));
  STRATA_RETURN_IF_ERROR(device_->fill(zeros, 0.0f, stream));
  slot.bucket = static_cast<int>(b);
  slot_of_[b] = static_cast<int>(s);
  return Status::OK();
}

Status ShardedGrads::reduce(std::size_t b, Stream& comm) {
  const std::uint64_t gs = dtype_size(dtype_);
  const FlatRange bucket = layout_->bucket(b);
  const CommType type = comm_type_of(dtype_);
  const DeviceView& mine = shard_grads_[b];
  if (stage_ == 1) {
    STRATA_ASSIGN_OR_RETURN(DeviceRange all, full_.range(bucket.first * gs, bucket.count * gs));
    return dp_->reduce_scatter({all, type, bucket.count}, CommBuffer::of(mine), ReduceOp::kSum, comm);
  }
  const int s = slot_of_[b];
  if (s < 0) return internal_error("ZeRO stage 2: bucket " + std::to_string(b) + " is reduced without a slot");
  Slot& slot = slots_[static_cast<std::size_t>(s)];
  STRATA_ASSIGN_OR_RETURN(DeviceRange all, slot.buffer.range(0, bucket.count * gs));
  const CommBuffer send{all, type, bucket.count};
  if (host_sink_) {
    const std::uint64_t n = bucket.count / layout_->shards();
    STRATA_ASSIGN_OR_RETURN(DeviceView part, slot.buffer.view(dtype_, static_cast<std::uint64_t>(dp_->rank()) * n * gs, n));
    STRATA_RETURN_IF_ERROR(dp_->reduce_scatter(send, CommBuffer::of(part), ReduceOp::kSum, comm));
    STRATA_RETURN_IF_ERROR(to_host(b, part, comm));
  } else if (micro_ == 0) {
    STRATA_RETURN_IF_ERROR(dp_->reduce_scatter(send, CommBuffer::of(mine), ReduceOp::kSum, comm));
  } else {
    // In place into this rank's part of the slot, then added to the shard.
    STRATA_ASSIGN_OR_RETURN(DeviceView part, slot.buffer.view(dtype_, static_cast<std::uint64_t>(dp_->rank()) * mine.count() * gs,
                                                              mine.count()));
    STRATA_RETURN_IF_ERROR(dp_->reduce_scatter(send, CommBuffer::of(part), ReduceOp::kSum, comm));
    STRATA_RETURN_IF_ERROR(device_->axpy(mine, 1.0f, part, comm));
  }
  STRATA_RETURN_IF_ERROR(comm.record(*slot.free));
  slot.recorded = true;
  slot.bucket = -1;
  slot_of_[b] = -1;
  return Status::OK();
}

Status ShardedGrads::to_host(std::size_t b, const DeviceView& part, Stream& comm) {
  const std::uint64_t gs = dtype_size(dtype_);
  if (micro_ == 0) {
    for (const HostGradSegment& s : host_[b]) {
      STRATA_ASSIGN_OR_RETURN(DeviceRange from, part.range().subrange(s.at * gs, s.bytes.size()));
      STRATA_RETURN_IF_ERROR(device_->copy_to_host(s.bytes, from, comm));
    }
    return Status::OK();
  }
  STRATA_RETURN_IF_ERROR(device_->copy_to_host(staging_.bytes().first(part.bytes()), part.range(), comm));
  return comm.launch_host_func([this, b] { add_staged(b); });
}

void ShardedGrads::add_staged(std::size_t b) {
  const std::uint64_t gs = dtype_size(dtype_);
  for (const HostGradSegment& s : host_[b]) {
    const std::byte* from = staging_.data() + s.at * gs;
    const std::size_t n = s.bytes.size() / gs;
    if (dtype_ == DType::kF32) {
      auto* to = reinterpret_cast<float*>(s.bytes.data());
      const auto* add = reinterpret_cast<const float*>(from);
      for (std::size_t i = 0; i < n; ++i) to[i] += add[i];
      continue;
    }
    auto* to = reinterpret_cast<std::uint16_t*>(s.bytes.data());
    const auto* add = reinterpret_cast<const std::uint16_t*>(from);
    const bool bf16 = dtype_ == DType::kBF16;
    for (std::size_t i = 0; i < n; ++i) {
      const float sum = bf16 ? num::bf16_to_f32(to[i]) + num::bf16_to_f32(add[i]) : num::f16_to_f32(to[i]) + num::f16_to_f32(add[i]);
      to[i] = bf16 ? num::f32_to_bf16(sum) : num::f32_to_f16(sum);
    }
  }
}

std::uint64_t ShardedGrads::slot_bytes() const {
  std::uint64_t bytes = 0;
  for (const Slot& s : slots_) bytes += s.buffer.size();
  return bytes;
}

}  // namespace strata::zero
