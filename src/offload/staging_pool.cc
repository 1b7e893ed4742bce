#include "offload/staging_pool.h"

#include <string>

#include "strata/units.h"

namespace strata::offload {

Result<StagingPool> StagingPool::create(Device& device, int count, std::uint64_t buffer_size) {
  if (count < 1) return invalid_argument("staging pool: buffer_count is " + std::to_string(count) + "; it must be at least 1");
  if (buffer_size == 0 || buffer_size % 4096 != 0) {
    return invalid_argument("staging pool: buffer_size " + format_bytes(buffer_size) +
                            " must be a positive multiple of 4 KiB");
  }
  StagingPool pool;
  pool.buffer_size_ = buffer_size;
  pool.buffers_.reserve(static_cast<std::size_t>(count));
  for (int i = 0; i < count; ++i) {
    auto buf = device.allocate_pinned(buffer_size);
    if (!buf.ok()) {
      return buf.status().with_context("staging pool: allocating buffer " + std::to_string(i + 1) + " of " +
                                       std::to_string(count) + " (" + format_bytes(buffer_size) + " each)");
    }
    pool.buffers_.push_back(std::move(buf).value());
  }
  // Handed out from the back: buffer 0 first.
  for (int i = count - 1; i >= 0; --i) pool.free_.push_back(i);
  return pool;
}

bool StagingPool::locked() const {
  for (const PinnedBuffer& b : buffers_) {
    if (!b.locked()) return false;
  }
  return true;
}

int StagingPool::take() {
  if (free_.empty()) return -1;
  int i = free_.back();
  free_.pop_back();
  return i;
}

void StagingPool::give_back(int index) { free_.push_back(index); }

}  // namespace strata::offload
