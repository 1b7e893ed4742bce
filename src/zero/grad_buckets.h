// src/zero/grad_buckets.h — ZeRO stage 0: the gradients of a data-parallel group all-reduced in
// buckets, each launched as soon as the gradients it holds are final in backward.
//
// The gradients live in one flat device buffer (the trainer's, one aligned slot per tensor).
// It is cut into consecutive buckets of at most `bucket_bytes` (zero.reduce_bucket_size); a
// bucket counts the tensors it overlaps, and when the last of them is final (the caller says
// so, tensor by tensor, as backward proceeds) its all-reduce is enqueued on a communication
// stream of its own that first waits for the training stream's work so far, so the reduction
// runs while backward goes on (zero.overlap_comm; without it every bucket is launched at the
// end). finish() launches what is left and makes the training stream wait for every bucket:
// no whole-device synchronisation anywhere. Buckets launch in the order their tensors finish,
// which is the same on every rank (the same model runs the same backward).
//
// The reduction is a sum: the caller scales the loss by 1/dp so that the sum is the mean
// gradient of the global batch (the one-rank run's gradient for micro_batch = dp x B).
//
// It knows tensors by index, byte ranges and communicators, not Modules.
//
// Thread-safety: one thread at a time (the thread that runs backward).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "strata/communicator.h"
#include "strata/device.h"

namespace strata::zero {

class GradBuckets {
 public:
  // `grads` holds `type` elements; tensor i occupies bytes [tensor_bytes[i].first, .second).
  // REQUIRES: dp, grads and the device outlive this object; bucket_bytes > 0.
  static Result<std::unique_ptr<GradBuckets>> create(Communicator& dp, Device& device, const DeviceBuffer& grads,
                                                     CommType type,
                                                     std::vector<std::pair<std::uint64_t, std::uint64_t>> tensor_bytes,
                                                     std::uint64_t bucket_bytes, bool overlap);
  ~GradBuckets();

  // Starts a step's reduction: every bucket waits for all its tensors again.
  void begin();
  // Tensor i's gradient is final (its last user finished backward in the last micro-step); with
  // overlap, a bucket whose tensors are all final is launched now, behind `stream`'s work.
  Status tensor_final(std::size_t i, Stream& stream);
  // Launches the buckets not launched yet and makes `stream` wait for all of them.
  Status finish(Stream& stream);

  std::size_t bucket_count() const { return buckets_.size(); }

 private:
  struct Bucket {
    std::uint64_t first = 0, bytes = 0;  // byte range of the gradient buffer
    int tensors = 0;                     // tensors overlapping it
    int waiting = 0;                     // of those, not final yet this step
    bool launched = false;
  };
  GradBuckets() = default;
  Status launch(Bucket& b, Stream& stream);

  Communicator* dp_ = nullptr;
  const DeviceBuffer* grads_ = nullptr;
  CommType type_ = CommType::kF32;
  bool overlap_ = true;
  std::vector<Bucket> buckets_;
  std::vector<std::vector<std::size_t>> buckets_of_;  // per tensor: the buckets it overlaps
  std::unique_ptr<Stream> comm_stream_;
  std::unique_ptr<Event> ready_, reduced_;
};

}  // namespace strata::zero
