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
                                      std::uint64_t shards) {
  if (alignment == 0) return invalid_argument("flat layout: the alignment must be at least 1 element");
  if (shards == 0) return invalid_argument("flat layout: the shard count must be at least 1");
  if (alignment > kMax / shards) {
    return invalid_argument("flat layout: " + std::to_string(shards) + " shards x " + std::to_string(alignment) +
                            " elements of alignment do not fit in 64 bits");
  }
  FlatLayout l;
  l.alignment_ = alignment;
  l.shards_ = shards;
  l.offsets_.reserve(tensors.size());
  std::uint64_t at = 0;
  for (const FlatTensor& t : tensors) {
    l.offsets_.push_back(at);
    std::uint64_t slot = 0;
    if (!round_up(t.numel, alignment, slot) || slot > kMax - at) {
      return invalid_argument("flat layout: tensor " + t.name + " (" + std::to_string(t.numel) +
                              " elements) at flat offset " + std::to_string(at) + " does not fit in 64 bits");
    }
    at += slot;
  }
  l.used_ = at;
  if (!round_up(at, shards * alignment, l.total_)) {
    return invalid_argument("flat layout: " + std::to_string(at) + " elements padded to a multiple of " +
                            std::to_string(shards * alignment) + " do not fit in 64 bits");
  }
  l.tensors_ = std::move(tensors);
  return l;
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
