#include "device/region_allocator.h"

#include <iterator>

namespace strata::device {

RegionAllocator::RegionAllocator(std::size_t capacity, std::size_t alignment)
    : capacity_(capacity & ~(alignment - 1)), alignment_(alignment) {
  if (capacity_ > 0) insert_free(0, capacity_);
}

void RegionAllocator::insert_free(std::size_t offset, std::size_t size) {
  by_offset_.emplace(offset, size);
  by_size_.emplace(size, offset);
}

void RegionAllocator::erase_free(std::map<std::size_t, std::size_t>::iterator it) {
  by_size_.erase({it->second, it->first});
  by_offset_.erase(it);
}

std::optional<std::size_t> RegionAllocator::allocate(std::size_t bytes) {
  if (bytes == 0 || bytes > capacity_) return std::nullopt;
  const std::size_t size = rounded(bytes);
  auto fit = by_size_.lower_bound({size, 0});
  if (fit == by_size_.end()) return std::nullopt;
  const std::size_t block_size = fit->first;
  const std::size_t offset = fit->second;
  erase_free(by_offset_.find(offset));
  if (block_size > size) insert_free(offset + size, block_size - size);
  live_.emplace(offset, size);
  used_ += size;
  if (used_ > peak_) peak_ = used_;
  return offset;
}

bool RegionAllocator::free(std::size_t offset) {
  auto live = live_.find(offset);
  if (live == live_.end()) return false;
  std::size_t start = offset;
  std::size_t size = live->second;
  used_ -= size;
  live_.erase(live);
  // Coalesce with the free block that ends where this one starts, and the one that starts
  // where it ends, so that freed space is reusable at full size.
  auto next = by_offset_.lower_bound(start);
  if (next != by_offset_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      size += prev->second;
      erase_free(prev);
    }
  }
  next = by_offset_.lower_bound(start + size);
  if (next != by_offset_.end() && next->first == start + size) {
    size += next->second;
    erase_free(next);
  }
  insert_free(start, size);
  return true;
}

bool RegionAllocator::contains(std::size_t offset, std::size_t bytes) const {
  auto it = live_.upper_bound(offset);
  if (it == live_.begin()) return false;
  --it;
  return offset >= it->first && offset - it->first <= it->second && bytes <= it->second - (offset - it->first);
}

std::size_t RegionAllocator::largest_free() const { return by_size_.empty() ? 0 : by_size_.rbegin()->first; }

}  // namespace strata::device
