// src/zero/grad_buckets.h — the gradients of a data-parallel group reduced in buckets, each
// launched as soon as the gradients it holds are final in backward.
//
// A bucket counts the tensors it overlaps, and when the last of them is final (the caller says
// so, tensor by tensor, as backward proceeds) its reduction is enqueued on a communication
// stream of its own that first waits for the training stream's work so far, so the reduction
// runs while backward goes on (zero.overlap_comm; without it every bucket is launched at the
// end). finish() launches what is left and makes the training stream wait for every bucket:
// no whole-device synchronisation anywhere. Buckets launch in the order their tensors finish,
// which is the same on every rank (the same model runs the same backward).
//
// What a reduction is belongs to the caller (`Reduce`): ZeRO stage 0 all-reduces byte ranges of
// one gradient buffer (cut_byte_buckets below), stages 1 to 3 reduce-scatter the buckets of
// the flat layout (zero/sharded_grads.h). The sum is the mean gradient of the global batch
// because the caller scales the loss by 1/dp.
//
// It knows tensors by index and buckets by index, not Modules.
//
// Thread-safety: one thread at a time (the thread that runs backward).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "strata/communicator.h"
#include "strata/device.h"

namespace strata::zero {

// Consecutive byte ranges of at most `bucket_bytes` (a multiple of `elem`) over `total` bytes,
// and the buckets each tensor's byte range [first, second) overlaps.
struct ByteBuckets {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> buckets;  // (first byte, bytes)
  std::vector<std::vector<std::size_t>> of_tensor;
};
ByteBuckets cut_byte_buckets(std::uint64_t total, const std::vector<std::pair<std::uint64_t, std::uint64_t>>& tensor_bytes,
                             std::uint64_t bucket_bytes, std::uint64_t elem);

class GradBuckets {
 public:
  // Enqueues bucket `b`'s reduction on `comm`, the buckets' own stream, which has already
  // waited for the training stream.
  using Reduce = std::function<Status(std::size_t b, Stream& comm)>;

  // `of_tensor[i]`: the buckets tensor i's gradient lies in.
  // REQUIRES: every index in of_tensor is below bucket_count; the device outlives this object.
  static Result<std::unique_ptr<GradBuckets>> create(Device& device, std::size_t bucket_count,
                                                     std::vector<std::vector<std::size_t>> of_tensor, bool overlap,
                                                     Reduce reduce);
  ~GradBuckets();

  // Starts a reduction pass: every bucket waits for all its tensors again.
  void begin();
  // Tensor i's gradient is final for this pass; with overlap, a bucket whose tensors are all
  // final is launched now, behind `stream`'s work.
  Status tensor_final(std::size_t i, Stream& stream);
  // Launches the buckets not launched yet in this pass.
  Status launch_rest(Stream& stream);
  // launch_rest(), then makes `stream` wait for every bucket launched so far.
  Status finish(Stream& stream);

  std::size_t bucket_count() const { return buckets_.size(); }
  bool launched(std::size_t b) const { return buckets_[b].launched; }

 private:
  struct Bucket {
    int tensors = 0;  // tensors in it
    int waiting = 0;  // of those, not final yet this pass
    bool launched = false;
  };
  GradBuckets() = default;
  Status launch(std::size_t b, Stream& stream);

  bool overlap_ = true;
  Reduce reduce_;
  std::vector<Bucket> buckets_;
  std::vector<std::vector<std::size_t>> of_tensor_;
  std::unique_ptr<Stream> comm_stream_;
  std::unique_ptr<Event> ready_, reduced_;
};

}  // namespace strata::zero
