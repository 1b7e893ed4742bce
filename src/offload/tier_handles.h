// src/offload/tier_handles.h — the values a TierManager (tier_manager.h) hands out: block and
// client ids, pins on copies of blocks, and leases of host and device memory.
//
// Thread-safety: ids are plain values. A Pin or a lease is a value for one thread at a time;
// different ones may be used from different threads at once, since each call goes through
// the manager's lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "strata/device.h"
#include "strata/dtype.h"
#include "strata/offload.h"
#include "strata/status.h"

namespace strata::offload {

// Names a registered block. Stale ids (of dropped blocks) are detected.
struct BlockId {
  std::uint64_t value = 0;  // 0 = none
  bool valid() const { return value != 0; }
  bool operator==(const BlockId&) const = default;
};

// Names a client of the manager (register_client); each client has its own access trace.
// ClientId{} is the default client, which every manager has.
struct ClientId {
  std::uint32_t value = 0;  // 0 = the default client
  bool operator==(const ClientId&) const = default;
};

class TierManager;

namespace detail {
struct PinState;
}

// A pin on one copy of one block (move-only). Releasing it (release(), release_after() or
// the destructor) makes the copy evictable again.
// REQUIRES: every Pin is released before its TierManager is destroyed.
class Pin {
 public:
  Pin() = default;
  Pin(Pin&& other) noexcept;
  Pin& operator=(Pin&& other) noexcept;
  Pin(const Pin&) = delete;
  Pin& operator=(const Pin&) = delete;
  ~Pin();

  bool valid() const { return state_ != nullptr; }
  BlockId block() const;
  Tier tier() const;
  Access access() const;
  std::uint64_t bytes() const;

  // Blocks until the copy is resident and current (and, for a write pin, until no other
  // transfer of the block is in flight). Returns the load's failure, if it failed.
  Status wait();
  // True once wait() would return at once.
  bool ready() const;

  // The copy's bytes. REQUIRES: wait() returned OK; tier() is kHost (host_bytes) or kDevice
  // (device_range). Empty when not ready or failed.
  std::span<std::byte> host_bytes() const;
  DeviceRange device_range() const;

  // Elements [first_element, first_element + count) of a device pin's copy as `dtype`, for
  // kernels. Available once the copy's memory is placed: after wait() or ready_on() returned
  // OK (the bytes themselves are there only in the order those give). Fails with
  // invalid_argument, naming the block, when the elements do not lie within the block's
  // bytes, and with failed_precondition for an empty pin, a host pin, a failed load or memory
  // not placed yet.
  Result<DeviceView> device_view(DType dtype, std::uint64_t first_element, std::uint64_t count) const;

  // Makes the work enqueued on `stream` after this call start only once the copy is resident
  // and current, without the calling thread waiting for the load: a pin that is ready needs
  // nothing; a read pin loaded by one copy on one of the manager's copy streams (from host or
  // device memory) is waited for with an event recorded there after that copy (device-side);
  // otherwise (NVMe reads, staging, a write pin that also waits for other transfers) the
  // stream waits for a HostSignal the manager sets when the pin becomes ready
  // (Stream::wait_host), set with the load's failure if it fails, which then fails the stream.
  // The call blocks only until the copy's memory is placed and such a single copy enqueued (at
  // once for a resident copy; a request waiting for room waits for the write-backs that make
  // it, as wait() would), so that device_view() works after it. Returns the load's failure
  // when it already failed. REQUIRES: `stream` belongs to the manager's device. On a backend
  // whose wait_host waits in a host function (CUDA), that wait occupies the device's callback
  // thread, on which the manager's own copies complete too: there, make streams wait only for
  // pins loaded from host or device memory, and wait() for the others.
  Status ready_on(Stream& stream);

  // Releases the pin once the work enqueued on `stream` before this call has completed, so
  // that no queued kernel or copy reads a copy that was evicted or reused: the copy stays
  // pinned (unevictable, its bytes unchanged) until then. The release runs in a host function
  // on the device's callback thread, taking the manager's lock briefly and enqueuing nothing.
  // On success this Pin is empty; when the host function cannot be enqueued, the Status says
  // why and this Pin still holds the pin. The manager's destructor waits for releases still
  // queued on streams. REQUIRES: `stream` belongs to the manager's device, and its work
  // completes (a stream held back forever holds the pin forever).
  Status release_after(Stream& stream);

  // Declares that the holder changed the bytes: this copy becomes the newest and the other
  // copies stale. REQUIRES: access kWrite or kOverwrite, and wait() returned OK.
  Status mark_dirty();

  void release();

 private:
  friend class TierManager;
  Pin(TierManager* manager, std::shared_ptr<detail::PinState> state)
      : manager_(manager), state_(std::move(state)) {}

  TierManager* manager_ = nullptr;
  std::shared_ptr<detail::PinState> state_;
};

// A lease of pinned host memory from a TierManager (TierManager::lease_host): charged to the
// host budget until released (destruction). Move-only.
// REQUIRES: released before the manager is destroyed.
class HostLease {
 public:
  HostLease() = default;
  HostLease(HostLease&& other) noexcept { *this = std::move(other); }
  HostLease& operator=(HostLease&& other) noexcept;
  HostLease(const HostLease&) = delete;
  HostLease& operator=(const HostLease&) = delete;
  ~HostLease() { release(); }

  std::byte* data() const { return buffer_.data(); }
  std::size_t size() const { return buffer_.size(); }
  std::span<std::byte> bytes() const { return buffer_.bytes(); }
  void release();

 private:
  friend class TierManager;
  TierManager* manager_ = nullptr;
  std::uint64_t charge_ = 0;
  PinnedBuffer buffer_;
};

// A lease of device memory from a TierManager (TierManager::lease_device): scratch space that
// is not a block (a ZeRO-3 gather buffer, a reduction bucket), charged to the device budget
// beside the blocks until released (release() or destruction), never evicted. Move-only.
// REQUIRES: released before the manager is destroyed, and only once no enqueued work uses
// its memory (freeing device memory does not wait for the streams).
class DeviceLease {
 public:
  DeviceLease() = default;
  DeviceLease(DeviceLease&& other) noexcept { *this = std::move(other); }
  DeviceLease& operator=(DeviceLease&& other) noexcept;
  DeviceLease(const DeviceLease&) = delete;
  DeviceLease& operator=(const DeviceLease&) = delete;
  ~DeviceLease() { release(); }

  bool valid() const { return manager_ != nullptr; }
  std::size_t size() const { return buffer_.size(); }  // the bytes asked for
  std::uint64_t charge() const { return charge_; }      // the bytes charged (size rounded up to 4 KiB)
  DeviceRange range() const { return buffer_.range(); }
  DeviceView view(DType dtype) const { return buffer_.view(dtype); }
  // Elements [first_element, first_element + count) as `dtype`; fails when out of bounds.
  Result<DeviceView> view(DType dtype, std::uint64_t first_element, std::uint64_t count) const;
  // Returns the charge; the memory is freed on the manager's dispatcher, after the frees and
  // before the allocations decided earlier and later.
  void release();

 private:
  friend class TierManager;
  TierManager* manager_ = nullptr;
  std::uint64_t charge_ = 0;
  DeviceBuffer buffer_;
};

}  // namespace strata::offload
