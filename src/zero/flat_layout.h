// src/zero/flat_layout.h — the flat layout of a rank's parameters (DESIGN.md, "The flat
// layout"): tensors laid end to end in one element space, each starting on a multiple of
// `alignment` elements. The space is cut into buckets of whole consecutive tensors, each padded
// to a multiple of shards x alignment so that it cuts into `shards` equal contiguous slices:
// slice s of every bucket belongs to data-parallel shard s (ZeRO stages 1 to 3 reduce-scatter
// and all-gather one bucket per collective, so each rank's part of a bucket must be one
// contiguous range of it; Megatron-LM's distributed optimizer shards its buckets the same
// way). With bucket_elements = 0 the whole space is one bucket, and shard s is one contiguous
// range. Shards, gradient buckets and optimizer chunks are all ranges of this one space, and
// segments() says which tensor elements a range holds. The gaps between tensors and the
// buckets' padding belong to no tensor; whoever stores the space keeps them zero.
//
// It knows element counts (and names, for messages), not Modules, dtypes or devices: an
// element is whatever the caller stores per element (an fp32 master weight, a bf16 gradient).
//
// Thread-safety: a FlatLayout is immutable once created; any number of threads may read one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "strata/status.h"

namespace strata::zero {

// One tensor of the layout, in the caller's order.
struct FlatTensor {
  std::string name;  // for messages
  std::uint64_t numel = 0;
};

// Flat elements [first, first + count).
struct FlatRange {
  std::uint64_t first = 0;
  std::uint64_t count = 0;
  std::uint64_t end() const { return first + count; }
  bool operator==(const FlatRange&) const = default;
};

// The part of one tensor that a flat range holds: elements [tensor_first, tensor_first + count)
// of tensor `tensor` (its index in the layout), which sit at flat [flat_first, flat_first + count).
struct FlatSegment {
  std::size_t tensor = 0;
  std::uint64_t tensor_first = 0;
  std::uint64_t flat_first = 0;
  std::uint64_t count = 0;
  bool operator==(const FlatSegment&) const = default;
};

class FlatLayout {
 public:
  FlatLayout() = default;  // no tensors, total() == 0

  // Lays `tensors` out in order. A bucket takes tensors while their aligned slots fit in
  // bucket_elements (a larger tensor gets a bucket of its own; 0 = one bucket for all), and a
  // tensor i with opens_bucket[i] starts a new one (ZeRO-3 cuts at modules; empty: no such
  // cuts). Fails when alignment or shards is 0, when opens_bucket is neither empty nor one flag
  // per tensor, or when the padded total does not fit in 64 bits (naming the tensor where it
  // stops fitting).
  static Result<FlatLayout> create(std::vector<FlatTensor> tensors, std::uint64_t alignment,
                                   std::uint64_t shards = 1, std::uint64_t bucket_elements = 0,
                                   const std::vector<bool>& opens_bucket = {});

  std::size_t tensor_count() const { return tensors_.size(); }
  // REQUIRES: i < tensor_count().
  const FlatTensor& tensor(std::size_t i) const { return tensors_[i]; }
  // The first flat element of tensor i: a multiple of alignment().  REQUIRES: i < tensor_count().
  std::uint64_t offset(std::size_t i) const { return offsets_[i]; }

  std::uint64_t alignment() const { return alignment_; }
  std::uint64_t shards() const { return shards_; }
  // The sum of every numel rounded up to alignment(): the space without the buckets' padding.
  std::uint64_t used() const { return used_; }
  // The size of the flat space: the sum of the buckets, each a multiple of shards() x alignment().
  std::uint64_t total() const { return total_; }
  // total() / shards(), a multiple of alignment(): the elements of one shard.
  std::uint64_t shard_size() const { return total_ / shards_; }

  std::size_t bucket_count() const { return buckets_.size(); }
  // REQUIRES: b < bucket_count().
  FlatRange bucket(std::size_t b) const { return buckets_[b].range; }
  // The tensors of bucket b: [first, second).
  std::pair<std::size_t, std::size_t> bucket_tensors(std::size_t b) const { return {buckets_[b].tensor_first, buckets_[b].tensor_end}; }
  // The bucket holding tensor i.  REQUIRES: i < tensor_count().
  std::size_t bucket_of(std::size_t i) const { return bucket_of_[i]; }
  // Slice s of bucket b: shard s's part of it.  REQUIRES: s < shards().
  FlatRange slice(std::size_t b, std::uint64_t s) const {
    const std::uint64_t n = buckets_[b].range.count / shards_;
    return FlatRange{buckets_[b].range.first + s * n, n};
  }
  // Where slice s of bucket b starts within shard s, counting the slices of the earlier buckets
  // (the same for every shard).
  std::uint64_t shard_offset(std::size_t b) const { return buckets_[b].range.first / shards_; }
  // Shard s: slice s of every bucket, in order.  REQUIRES: s < shards().
  std::vector<FlatRange> shard(std::uint64_t s) const;

  // The tensor elements inside `range`, in flat order, one segment per tensor it touches.
  // Padding contributes nothing, nor does a tensor with no elements.
  // REQUIRES: range.end() <= total().
  std::vector<FlatSegment> segments(FlatRange range) const;

 private:
  struct Bucket {
    FlatRange range;
    std::size_t tensor_first = 0, tensor_end = 0;
  };
  std::vector<FlatTensor> tensors_;
  std::vector<std::uint64_t> offsets_;
  std::vector<Bucket> buckets_;
  std::vector<std::size_t> bucket_of_;
  std::uint64_t alignment_ = 1;
  std::uint64_t shards_ = 1;
  std::uint64_t used_ = 0;
  std::uint64_t total_ = 0;
};

}  // namespace strata::zero
