// src/zero/flat_layout.h — the flat layout of a rank's parameters (DESIGN.md, "The flat
// layout"): tensors laid end to end in one element space, each starting on a multiple of
// `alignment` elements, the whole padded to a multiple of shards x alignment so that it cuts
// into `shards` equal contiguous ranges (ZeRO's data-parallel shards). Shards, gradient buckets
// and optimizer chunks are all ranges of this one space, and segments() says which tensor
// elements a range holds. The gaps between tensors and the tail padding belong to no tensor;
// whoever stores the space keeps them zero.
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

  // Lays `tensors` out in order. Fails when alignment or shards is 0, or when the padded
  // total does not fit in 64 bits (naming the tensor where it stops fitting).
  static Result<FlatLayout> create(std::vector<FlatTensor> tensors, std::uint64_t alignment,
                                   std::uint64_t shards = 1);

  std::size_t tensor_count() const { return tensors_.size(); }
  // REQUIRES: i < tensor_count().
  const FlatTensor& tensor(std::size_t i) const { return tensors_[i]; }
  // The first flat element of tensor i: a multiple of alignment().  REQUIRES: i < tensor_count().
  std::uint64_t offset(std::size_t i) const { return offsets_[i]; }

  std::uint64_t alignment() const { return alignment_; }
  std::uint64_t shards() const { return shards_; }
  // The end of the last tensor's aligned slot: the sum of every numel rounded up to alignment().
  std::uint64_t used() const { return used_; }
  // The size of the flat space: used() rounded up to a multiple of shards() x alignment().
  std::uint64_t total() const { return total_; }
  // total() / shards(), a multiple of alignment().
  std::uint64_t shard_size() const { return total_ / shards_; }
  // Shard s: [s * shard_size(), (s + 1) * shard_size()).  REQUIRES: s < shards().
  FlatRange shard(std::uint64_t s) const { return FlatRange{s * shard_size(), shard_size()}; }

  // The tensor elements inside `range`, in flat order, one segment per tensor it touches.
  // Padding contributes nothing, nor does a tensor with no elements.
  // REQUIRES: range.end() <= total().
  std::vector<FlatSegment> segments(FlatRange range) const;

 private:
  std::vector<FlatTensor> tensors_;
  std::vector<std::uint64_t> offsets_;
  std::uint64_t alignment_ = 1;
  std::uint64_t shards_ = 1;
  std::uint64_t used_ = 0;
  std::uint64_t total_ = 0;
};

}  // namespace strata::zero
