// src/zero/sharded_grads.h — ZeRO stages 1 and 2 (and 3, whose gradients are stage 2's): each
// data-parallel rank ends a step with only its slice of every bucket's reduced gradient
// (zero/flat_layout.h: the buckets of whole tensors, each cut into one slice per rank), reduced
// with a real reduce-scatter per bucket.
//
// Stage 1 keeps every tensor's gradient in one full buffer in the flat layout; the micro-steps
// accumulate into it, and in the last one each bucket is reduce-scattered in place (into this
// rank's slice of it) as soon as its tensors are final. Per step a rank sends Ψ(N−1)/N gradient
// elements, whatever grad_accum is. Memory: the full gradients.
//
// Stage 2 keeps only the reduced shard (Ψ/N elements) and the open buckets: a tensor's gradient
// lives in a bucket slot from the first use of its bucket in a micro-step's backward (the slot
// zeroed, behind the slot's previous reduction on the communication stream) until the bucket's
// tensors are all final; then the slot is reduce-scattered and freed. Slots are allocated as
// backward first needs them (each the size of the bucket it is made for; a free slot is reused
// for a bucket it holds) and kept, since backward opens the same buckets in the same order every
// step: they hold the buckets open at once plus those still being reduced. The tied
// embedding's bucket stays open through the whole backward (lm_head uses it first, the
// embeddings last), as its gradient does in any engine. With grad_accum > 1 every micro-step is reduce-scattered (the
// first into the shard, the later ones in place and added to it on the communication stream):
// DeepSpeed's choice, least memory, grad_accum x Ψ(N−1)/N elements sent per step. Accumulating
// locally instead would need stage 1's full buffer.
//
// With a host sink (stage 3 with parameter offload) there is no device shard at all: a
// bucket's reduce-scatter lands in this rank's part of its slot, which is copied behind it to
// host memory (the offloaded optimizer's gradients, set_host_slice()) — the first micro-step's
// straight into place, a later one's into a pinned staging buffer that a host function on the
// communication stream then adds in — and the slot is free once that is done. The device then
// holds only the open buckets' slots, never the whole gradient or its shard.
//
// It knows tensors by index in the layout, not Modules: the engine binds each parameter's
// gradient to the view tensor_grad() gives it and says when a tensor is final.
//
// Thread-safety: one thread at a time (the thread that runs backward).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "strata/communicator.h"
#include "strata/device.h"
#include "zero/flat_layout.h"
#include "zero/grad_buckets.h"

namespace strata::zero {

// Part of this rank's slice of a bucket's gradient in host memory: `bytes` receive its
// elements from `at` on.
struct HostGradSegment {
  std::uint64_t at = 0;
  std::span<std::byte> bytes;
};

class ShardedGrads {
 public:
  // `layout` has dp.size() shards. stage: 1 or 2; `host_sink` only with 2.
  // REQUIRES: dp, device and layout outlive this object.
  static Result<std::unique_ptr<ShardedGrads>> create(Communicator& dp, Device& device, const FlatLayout& layout,
                                                      DType grad_dtype, int stage, bool overlap, bool host_sink = false);
  ~ShardedGrads();

  int stage() const { return stage_; }

  // Starts micro-step `micro` (0-based) of a step; `last` in the step's last one. Stage 1 zeroes
  // the gradients at micro-step 0.
  Status begin_micro(int micro, bool last, Stream& stream);
  // The view tensor i's gradient accumulates into. Stage 1: its place in the full buffer, the
  // same every step. Stage 2: its place in its bucket's slot, opening the bucket when it is the
  // first of its tensors used in this micro-step; valid until the bucket is final.
  Result<DeviceView> tensor_grad(std::size_t i, Stream& stream);
  // Tensor i's gradient is final in this micro-step (stage 1: counted in the last one only).
  Status tensor_final(std::size_t i, Stream& stream);
  // Ends the micro-step's backward: launches the buckets not launched yet; in the last one,
  // makes `stream` wait for every reduction.
  Status end_micro(Stream& stream);

  // This rank's reduced gradient of bucket b: slice_size(b) elements of the gradient dtype.
  // Fixed views, valid once end_micro of the last micro-step has run on the stream; empty with
  // a host sink.
  const DeviceView& shard_grad(std::size_t b) const { return shard_grads_[b]; }
  bool host_sink() const { return host_sink_; }
  // With a host sink: where bucket b's reduced slice goes; the segments must cover every
  // tensor element of it before the first reduction (a slice of padding only has none).
  // REQUIRES: the memory outlives this object.
  void set_host_slice(std::size_t b, std::vector<HostGradSegment> segments) { host_[b] = std::move(segments); }
  // Device bytes held: the full gradients (stage 1) or the shard (stage 2), and stage 2's slots.
  std::uint64_t gradient_bytes() const { return full_.size() + shard_.size(); }
  std::uint64_t slot_bytes() const;
  std::size_t slot_count() const { return slots_.size(); }

 private:
  struct Slot {
    DeviceBuffer buffer;
    std::unique_ptr<Event> free;  // recorded behind the last reduction that read it
    bool recorded = false;
    int bucket = -1;  // the open bucket it holds, or -1
  };
  ShardedGrads() = default;
  Status reduce(std::size_t b, Stream& comm);
  // Host sink: this rank's reduced part of bucket b, in its slot, to host memory behind `comm`.
  Status to_host(std::size_t b, const DeviceView& part, Stream& comm);
  // Adds the staged part of bucket b into its host slice (a host function on `comm`).
  void add_staged(std::size_t b);
  Status open_bucket(std::size_t b, Stream& stream);

  Communicator* dp_ = nullptr;
  Device* device_ = nullptr;
  const FlatLayout* layout_ = nullptr;
  DType dtype_ = DType::kF32;
  int stage_ = 1;
  int micro_ = 0;
  bool last_ = false;
  std::unique_ptr<GradBuckets> buckets_;
  DeviceBuffer full_;   // stage 1: every gradient in the flat layout
  DeviceBuffer shard_;  // stage 2: this rank's slices, in bucket order
  std::vector<DeviceView> shard_grads_;
  std::vector<Slot> slots_;              // stage 2
  std::vector<int> slot_of_;             // stage 2: per bucket, its slot this micro-step or -1
  bool host_sink_ = false;
  std::vector<std::vector<HostGradSegment>> host_;  // host sink: per bucket
  PinnedBuffer staging_;                 // host sink: a later micro-step's part on its way to be added
};

}  // namespace strata::zero
