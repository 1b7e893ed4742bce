// src/device/region_allocator.h — a best-fit allocator over one contiguous region, used by the
// host device as its "device memory": the region is reserved once at the device's capacity, so
// the capacity is a hard limit and fragmentation behaves as it does on a real accelerator.
//
// Blocks are aligned to `alignment` (a power of two) and sizes are rounded up to it. Free
// blocks are kept twice — by offset, to coalesce with both neighbours on free, and by size, to
// find the smallest block that fits (best fit, lowest offset among equals) in O(log n).
//
// Thread-safety: none; the owner serialises calls (the host device holds a mutex).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <utility>

namespace strata::device {

class RegionAllocator {
 public:
  // REQUIRES: alignment is a power of two.
  RegionAllocator(std::size_t capacity, std::size_t alignment);

  // Offset of a new block of at least `bytes` bytes, or nullopt when no free block is large
  // enough. REQUIRES: bytes > 0.
  std::optional<std::size_t> allocate(std::size_t bytes);
  // Returns the block at `offset` (as allocate() gave it) to the free space; false when no
  // live block starts there.
  bool free(std::size_t offset);

  // True when [offset, offset + bytes) lies inside one live block.
  bool contains(std::size_t offset, std::size_t bytes) const;

  std::size_t rounded(std::size_t bytes) const { return (bytes + alignment_ - 1) & ~(alignment_ - 1); }
  std::size_t capacity() const { return capacity_; }
  std::size_t used() const { return used_; }
  std::size_t peak_used() const { return peak_; }
  std::size_t live_blocks() const { return live_.size(); }
  std::size_t free_blocks() const { return by_offset_.size(); }
  std::size_t largest_free() const;

 private:
  void insert_free(std::size_t offset, std::size_t size);
  void erase_free(std::map<std::size_t, std::size_t>::iterator it);

  std::size_t capacity_;
  std::size_t alignment_;
  std::size_t used_ = 0;
  std::size_t peak_ = 0;
  std::map<std::size_t, std::size_t> by_offset_;            // free: offset -> size
  std::set<std::pair<std::size_t, std::size_t>> by_size_;   // free: (size, offset)
  std::map<std::size_t, std::size_t> live_;                 // allocated: offset -> size
};

}  // namespace strata::device
