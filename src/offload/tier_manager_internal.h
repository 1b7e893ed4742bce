// The tier manager's internal records (src/offload/tier_manager.h): blocks, copies, pins, transfers, shared by its .cc files.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nvme/swap_store.h"
#include "offload/tier_manager.h"
#include "strata/units.h"

namespace strata::offload {

namespace detail {

struct PinState {
  BlockId id;
  Tier tier = Tier::kDevice;
  Access access = Access::kRead;
  std::uint64_t bytes = 0;
  bool counted = true;  // still counted in the block's pins (false after release or failure)
  bool ready = false;   // wait() returns at once
  Status error;
  std::span<std::byte> host;
  DeviceRange device;
};

inline constexpr std::uint64_t kInvalidVersion = std::numeric_limits<std::uint64_t>::max();
inline constexpr std::size_t kNoUse = AccessTrace::kNoUse;

inline int ti(Tier t) { return static_cast<int>(t); }

inline std::string budget_key(Tier t) {
  switch (t) {
    case Tier::kDevice: return "memory.device_budget";
    case Tier::kHost: return "memory.host_budget";
    case Tier::kNvme: return "the NVMe budget (swap capacity)";
  }
  return "?";
}

inline std::string human(std::uint64_t bytes) { return format_bytes_human(static_cast<double>(bytes)); }

enum class CopyState : std::uint8_t {
  kAbsent,   // no memory (non-home copies only)
  kQueued,   // waiting for room in its tier (in pending_)
  kLoading,  // memory reserved, a transfer is filling it
  kValid,    // holds the bytes of `version`
};

}  // namespace detail

// The implementation files use these names unqualified.
using detail::budget_key;
using detail::CopyState;
using detail::human;
using detail::kInvalidVersion;
using detail::kNoUse;
using detail::PinState;
using detail::ti;

enum class TierManager::Route : std::uint8_t {
  kAlloc,         // overwrite: memory only
  kZero,          // a never-written block: zeros, nothing read
  kHostToDevice,
  kDeviceToHost,
  kNvmeToHost,
  kHostToNvme,
  kNvmeToDevice,  // staged
  kDeviceToNvme,  // staged
};

struct TierManager::Copy {
  CopyState state = CopyState::kAbsent;
  bool home = false;
  bool charged = false;           // bytes charged against the tier (non-home copies)
  bool queued_content = true;     // kQueued: load the bytes (false: overwrite, allocate only)
  DeviceBuffer device_mem;
  PinnedBuffer host_mem;
  std::uint64_t version = 0;
  int pins = 0;
  int readers = 0;                // transfers reading this copy
  bool evicting = false;          // being written back, to be freed afterwards
  bool prefetched_unused = false;
  std::uint64_t last_use = 0;
  std::vector<std::shared_ptr<PinState>> waiters;
};

struct TierManager::Block {
  BlockId id;
  std::string name;
  std::uint64_t bytes = 0;
  std::uint64_t charge = 0;  // bytes rounded up to 4 KiB
  Tier home = Tier::kHost;
  Tier fastest = Tier::kDevice;
  bool host_copies = true;
  std::array<Copy, 2> copies;  // kDevice, kHost
  std::vector<nvme::SwapSlot> slots;
  std::uint64_t version = 0;       // newest content; 0 = never written (zeros)
  std::uint64_t nvme_version = 0;  // content of the NVMe home
  bool nvme_busy = false;          // a write to the NVMe home is in flight
  int transfers = 0;
  int read_pins = 0;
  int write_pins = 0;
  bool dropped = false;

  Copy& copy(Tier t) { return copies[static_cast<std::size_t>(t)]; }
  const Copy& copy(Tier t) const { return copies[static_cast<std::size_t>(t)]; }
};

struct TierManager::Xfer {
  Block* b = nullptr;
  Route route = Route::kAlloc;
  Tier src = Tier::kNvme;  // where the bytes come from (kNvme also for kZero/kAlloc)
  Tier dst = Tier::kHost;
  bool reads_copy = false;  // src is a Copy whose `readers` this transfer holds
  bool evicting = false;    // a write-back that frees its source afterwards
  bool write_back = false;  // moves the newest bytes to the block's home
  bool prefetch = false;
  bool alloc_dst = false;   // the destination copy still needs its memory
  std::uint64_t version = 0;
  std::size_t chunks = 1;
  std::size_t started = 0;
  std::size_t finished = 0;
  bool waiting_for_staging = false;
  Status error;
  // Captured on the dispatcher under mu_ once the memory exists.
  std::span<std::byte> src_host, dst_host;
  DeviceRange src_dev, dst_dev;
  DeviceView zero_view;
  int pending_runs = 0;  // run_chunks() posted for it and not yet started
};

// One issue_prefetches() pass over the trace, per tier.
struct TierManager::PrefetchPass {
  std::array<bool, kTierCount> stop{};
  // Pinned, loading, queued and unused prefetched bytes, counted on first use, then kept up
  // to date with the prefetches the pass starts.
  std::array<std::optional<std::uint64_t>, kTierCount> live{};
};

}  // namespace strata::offload
