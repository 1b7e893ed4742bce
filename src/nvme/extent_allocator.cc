#include "nvme/extent_allocator.h"

#include <string>

namespace strata::nvme {

ExtentAllocator::ExtentAllocator(std::uint64_t capacity) : capacity_(capacity) {
  if (capacity > 0) insert(0, capacity);
}

void ExtentAllocator::insert(std::uint64_t offset, std::uint64_t length) {
  by_offset_.emplace(offset, length);
  by_size_.emplace(length, offset);
  free_ += length;
}

void ExtentAllocator::erase(std::map<std::uint64_t, std::uint64_t>::iterator it) {
  by_size_.erase({it->second, it->first});
  free_ -= it->second;
  by_offset_.erase(it);
}

std::optional<std::uint64_t> ExtentAllocator::allocate(std::uint64_t length) {
  if (length == 0) return std::nullopt;
  auto fit = by_size_.lower_bound({length, 0});
  if (fit == by_size_.end()) return std::nullopt;
  const std::uint64_t offset = fit->second;
  const std::uint64_t have = fit->first;
  erase(by_offset_.find(offset));
  if (have > length) insert(offset + length, have - length);
  return offset;
}

Status ExtentAllocator::release(std::uint64_t offset, std::uint64_t length) {
  if (length == 0 || offset > capacity_ || length > capacity_ - offset) {
    return internal_error("swap extent [" + std::to_string(offset) + ", +" + std::to_string(length) +
                          ") lies outside the file's " + std::to_string(capacity_) + " bytes");
  }
  auto next = by_offset_.lower_bound(offset);
  if (next != by_offset_.end() && next->first < offset + length) {
    return internal_error("swap extent at " + std::to_string(offset) + " released twice (overlaps a free range)");
  }
  if (next != by_offset_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second > offset) {
      return internal_error("swap extent at " + std::to_string(offset) + " released twice (overlaps a free range)");
    }
  }
  std::uint64_t start = offset;
  std::uint64_t len = length;
  if (next != by_offset_.end() && next->first == offset + length) {
    len += next->second;
    erase(next);
  }
  auto after = by_offset_.lower_bound(start);
  if (after != by_offset_.begin()) {
    auto prev = std::prev(after);
    if (prev->first + prev->second == start) {
      start = prev->first;
      len += prev->second;
      erase(prev);
    }
  }
  insert(start, len);
  return Status::OK();
}

std::uint64_t ExtentAllocator::largest_free() const {
  return by_size_.empty() ? 0 : by_size_.rbegin()->first;
}

}  // namespace strata::nvme
