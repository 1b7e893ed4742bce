// src/zero/param_gather.h — ZeRO stages 1 and 2: once every rank has updated its slice of each
// bucket (zero/flat_layout.h) in the replicated low-precision parameters, the buckets are
// all-gathered in place, one collective per bucket, each when the engine first needs it: it is
// enqueued on the training stream just before the forward of the first module using it, so
// an offloaded optimizer pass still updating later buckets goes on meanwhile (the gather
// itself runs between forward's kernels, not under them). Every rank gathers the same buckets
// in the same order: the model's forward order.
//
// Thread-safety: one thread at a time.
#pragma once

#include <cstddef>
#include <vector>

#include "strata/communicator.h"
#include "strata/device.h"
#include "zero/flat_layout.h"

namespace strata::zero {

class ParamGather {
 public:
  // `values` holds the layout's flat space in `dtype`.
  // REQUIRES: dp, layout and values outlive this object; layout.shards() == dp.size().
  ParamGather(Communicator& dp, const FlatLayout& layout, const DeviceBuffer& values, DType dtype)
      : dp_(&dp), layout_(&layout), values_(&values), dtype_(dtype), pending_(layout.bucket_count(), false) {}

  // Every bucket's slices of the other ranks are stale (an update was applied).
  void mark_all() { pending_.assign(pending_.size(), true); }
  bool pending(std::size_t b) const { return pending_[b]; }
  // Enqueues bucket b's all-gather on `stream` when it is pending.
  Status gather(std::size_t b, Stream& stream);
  // Every pending bucket, in order.
  Status gather_all(Stream& stream);

 private:
  Communicator* dp_;
  const FlatLayout* layout_;
  const DeviceBuffer* values_;
  DType dtype_;
  std::vector<bool> pending_;
};

}  // namespace strata::zero
