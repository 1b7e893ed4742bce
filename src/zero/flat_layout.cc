// The flat layout of zero/flat_layout.h.
#include "zero/flat_layout.h"

#include <algorithm>
#include <limits>

namespace strata::zero {

namespace {

constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

// x rounded up to a multiple of q, or false when that does not fit in 64 bits.
bool round_up(std::uint64_t x, std::uint64_t q, std::uint64_t& out) {
  const std::uint64_t rem = x % q;
  if (rem == 0) {
    out = x;
    return true;
  }
  if (x > kMax - (q - rem)) return false;
  out = x + (q - rem);
  return true;
}

}  // namespace

Result<FlatLayout> FlatLayout::create(std::vector<FlatTensor> tensors, std::uint64_t alignment,
                                      std::uint64_t shards, std::uint64_t bucket_elements,
                                      const std::vector<bool>& opens_bucket) {
  if (alignment == 0) return invalid_argument("flat layout: the alignment must be at least 1 element");
  if (shards == 0) return invalid_argument("flat layout: the shard count must be at least 1");
  if (alignment > kMax / shards) {
    return invalid_argument("flat layout: " + std::to_string(shards) + " shards x " + std::to_string(alignment) +
                            " elements of alignment do not fit in 64 bits");
  }
  if (!opens_bucket.empty() && opens_bucket.size() != tensors.size()) {
    return invalid_argument("flat layout: " + std::to_string(opens_bucket.size()) + " bucket cuts for " +
                            std::to_string(tensors.size()) + " tensors");
  }
  FlatLayout l;
  l.alignment_ = alignment;
  l.shards_ = shards;
  l.offsets_.reserve(tensors.size());
  std::uint64_t at = 0;        // the next tensor's offset
  std::uint64_t in_bucket = 0; // elements of the open bucket so far
  // Pads the open bucket to a multiple of shards x alignment and closes it.
  auto close_bucket = [&](std::size_t tensor_end) -> Status {
    Bucket& b = l.buckets_.back();
    std::uint64_t end = 0;
    if (!round_up(at, shards * alignment, end)) {
      return invalid_argument("flat layout: " + std::to_string(at) + " elements padded to a multiple of " +
                              std::to_string(shards * alignment) + " do not fit in 64 bits");
    }
    b.range.count = end - b.range.first;
    b.tensor_end = tensor_end;
    at = end;
    return Status::OK();
  };
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const FlatTensor& t = tensors[i];
    std::uint64_t slot = 0;
    const bool fits = round_up(t.numel, alignment, slot);
    const bool full = bucket_elements > 0 && slot > bucket_elements - std::min(bucket_elements, in_bucket);
    const bool cut = !opens_bucket.empty() && opens_bucket[i];
    if (l.buckets_.empty() || (in_bucket > 0 && (full || cut))) {
      if (!l.buckets_.empty()) STRATA_RETURN_IF_ERROR(close_bucket(i));
      l.buckets_.push_back(Bucket{FlatRange{at, 0}, i, i});
      in_bucket = 0;
    }
    if (!fits || slot > kMax - at) {
      return invalid_argument("flat layout: tensor " + t.name + " (" + std::to_string(t.numel) +
                              " elements) at flat offset " + std::to_string(at) + " does not fit in 64 bits");
    }
    l.offsets_.push_back(at);
    l.bucket_of_.push_back(l.buckets_.size() - 1);
    at += slot;
    in_bucket += slot;
    l.used_ += slot;
  }
  if (!l.buckets_.empty()) STRATA_RETURN_IF_ERROR(close_bucket(tensors.size()));
  l.total_ = at;
  l.tensors_ = std::move(tensors);
  return l;
}

std::vector<FlatRange> FlatLayout::shard(std::uint64_t s) const {
  std::vector<FlatRange> out;
  for (std::size_t b = 0; b < buckets_.size(); ++b) out.push_back(slice(b, s));
  return out;
}

std::vector<FlatSegment> FlatLayout::segments(FlatRange range) const {
  std::vector<FlatSegment> out;
  if (range.count == 0 || tensors_.empty()) return out;
  // The last tensor starting at or before range.first: no earlier one reaches into the range.
  auto it = std::upper_bound(offsets_.begin(), offsets_.end(), range.first);
  std::size_t i = static_cast<std::size_t>(it - offsets_.begin()) - 1;
  for (; i < tensors_.size() && offsets_[i] < range.end(); ++i) {
    const std::uint64_t lo = std::max(range.first, offsets_[i]);
    const std::uint64_t hi = std::min(range.end(), offsets_[i] + tensors_[i].numel);
    if (lo < hi) out.push_back(FlatSegment{i, lo - offsets_[i], lo, hi - lo});
  }
  return out;
}

}  // namespace strata::zero
