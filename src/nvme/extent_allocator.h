// src/nvme/extent_allocator.h — free-space map of one swap file: hands out and takes back
// byte ranges, best fit, neighbours coalesced on release, so slots of any size are reused.
// Offsets and lengths are whatever unit the caller aligns to; the allocator does not round.
//
// Thread-safety: none; the swap store serialises access under its mutex.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "strata/status.h"

namespace strata::nvme {

class ExtentAllocator {
 public:
  explicit ExtentAllocator(std::uint64_t capacity);

  // The offset of a free range of `length` bytes, or nullopt when no free range is large
  // enough. REQUIRES: length > 0.
  std::optional<std::uint64_t> allocate(std::uint64_t length);

  // Returns a range obtained from allocate(). Releasing a range that is not wholly
  // allocated (double release, overlap) is an internal error and changes nothing.
  Status release(std::uint64_t offset, std::uint64_t length);

  std::uint64_t capacity() const { return capacity_; }
  std::uint64_t free_bytes() const { return free_; }
  std::uint64_t largest_free() const;
  std::size_t free_ranges() const { return by_offset_.size(); }

 private:
  void insert(std::uint64_t offset, std::uint64_t length);
  void erase(std::map<std::uint64_t, std::uint64_t>::iterator it);

  std::uint64_t capacity_;
  std::uint64_t free_ = 0;
  std::map<std::uint64_t, std::uint64_t> by_offset_;        // offset -> length
  std::set<std::pair<std::uint64_t, std::uint64_t>> by_size_;  // (length, offset)
};

}  // namespace strata::nvme
