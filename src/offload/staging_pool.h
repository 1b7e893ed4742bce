// src/offload/staging_pool.h — the pinned staging buffers through which NVMe <-> device
// transfers pass (`buffer_count` x `buffer_size`).
//
// A block moving between NVMe and the device is cut into buffer_size chunks; each chunk holds
// one staging buffer from its NVMe read until its device copy finishes (or from its device
// copy until its NVMe write finishes), so with several buffers reads, copies and writes of
// different chunks overlap. The buffers are allocated once from the device (page-locked, as a
// CUDA copy needs to overlap), and taken and returned in O(1).
//
// Thread-safety: none. The tier manager takes and returns buffers under its own lock; the
// buffers' bytes are used outside it by the one transfer that holds them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "strata/device.h"
#include "strata/status.h"

namespace strata::offload {

class StagingPool {
 public:
  StagingPool() = default;
  StagingPool(StagingPool&&) = default;
  StagingPool& operator=(StagingPool&&) = default;

  // REQUIRES: count >= 1, buffer_size a positive multiple of 4096.
  static Result<StagingPool> create(Device& device, int count, std::uint64_t buffer_size);

  int count() const { return static_cast<int>(buffers_.size()); }
  std::uint64_t buffer_size() const { return buffer_size_; }
  std::uint64_t total_bytes() const { return buffer_size_ * buffers_.size(); }
  int free_count() const { return static_cast<int>(free_.size()); }
  // True when every buffer page is locked (false when the memlock limit refused).
  bool locked() const;

  // Index of a free buffer, or -1 when all are taken.
  int take();
  // REQUIRES: `index` was returned by take() and not yet given back.
  void give_back(int index);
  std::span<std::byte> bytes(int index) const { return buffers_[static_cast<std::size_t>(index)].bytes(); }

 private:
  std::vector<PinnedBuffer> buffers_;
  std::vector<int> free_;
  std::uint64_t buffer_size_ = 0;
};

}  // namespace strata::offload
