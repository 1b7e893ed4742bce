// The tier manager's internal records (src/offload/tier_manager.h): blocks, copies, pins,
// transfers, clients and the per-tier totals, shared by its .cc files.
//
// Thread-safety: none of its own; everything here is guarded by the manager's mutex, except
// what a comment says is written before a block is registered.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
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
  // Streams waiting for the pin (ready_on), set by the dispatcher once it is ready or failed.
  std::vector<std::shared_ptr<HostSignal>> signals;
};

inline constexpr std::uint64_t kInvalidVersion = std::numeric_limits<std::uint64_t>::max();
inline constexpr std::size_t kNoUse = AccessTrace::kNoUse;
inline constexpr std::size_t kNotListed = std::numeric_limits<std::size_t>::max();
// Charges are whole 4 KiB pages: block sizes, leases, staging chunks.
inline constexpr std::uint64_t kBlockAlignment = 4096;

inline std::uint64_t round_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

inline int ti(Tier t) { return static_cast<int>(t); }
inline std::size_t tu(Tier t) { return static_cast<std::size_t>(t); }

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
using detail::kBlockAlignment;
using detail::kInvalidVersion;
using detail::kNoUse;
using detail::PinState;
using detail::round_up;
using detail::ti;
using detail::tu;

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

// One block's copy in one memory tier. The fields the per-tier totals depend on are private:
// only Totals changes them, so that every change reaches the totals.
class TierManager::Copy {
 public:
  CopyState state() const { return state_; }
  bool home() const { return home_; }
  int pins() const { return pins_; }
  int readers() const { return readers_; }        // transfers reading this copy
  bool evicting() const { return evicting_; }     // being written back, to be freed afterwards
  bool prefetched_unused() const { return prefetched_unused_; }

  bool charged = false;           // bytes charged against the tier (non-home copies)
  bool queued_content = true;     // kQueued: load the bytes (false: overwrite, allocate only)
  DeviceBuffer device_mem;
  PinnedBuffer host_mem;
  std::uint64_t version = 0;
  std::uint64_t last_use = 0;
  std::vector<std::shared_ptr<PinState>> waiters;

 private:
  friend class TierManager::Totals;
  CopyState state_ = CopyState::kAbsent;
  bool home_ = false;
  int pins_ = 0;
  int readers_ = 0;
  bool evicting_ = false;
  bool prefetched_unused_ = false;
  std::size_t resident_index_ = detail::kNotListed;  // place in Totals' list of resident copies
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
  std::size_t live_index = detail::kNotListed;  // place in live_

  bool dropped() const { return dropped_; }
  Copy& copy(Tier t) { return copies[tu(t)]; }
  const Copy& copy(Tier t) const { return copies[tu(t)]; }

 private:
  friend class TierManager::Totals;
  bool dropped_ = false;  // set by Totals::forget
};

// Per-tier totals over the copies of registered blocks, kept up to date as copies change so
// that acquire, release, reservation and stats() never walk every block. Each counted
// quantity is a predicate of one copy (flags()); every change of a counted field goes
// through a member here, which moves the copy's charge between the totals its predicates
// left and entered. A dropped block counts nowhere.
class TierManager::Totals {
 public:
  struct PerTier {
    std::uint64_t pinned_copies = 0;    // copies with a pin, home copies included
    std::uint64_t pinned_bytes = 0;     // cached copies with a pin and memory or a place in the queue
    std::uint64_t releasing_bytes = 0;  // unpinned copies being written back to be freed
    std::uint64_t coming_copies = 0;    // unpinned cached copies loading, read by a transfer or evicting
    std::uint64_t live_bytes = 0;       // cached copies pinned, loading, queued or prefetched and unused
    std::uint64_t queued_pins = 0;      // pinned copies waiting for room
    std::vector<Block*> resident;       // blocks with a valid cached copy here, in no order
  };

  const PerTier& tier(Tier t) const { return tiers_[tu(t)]; }

  void set_state(Block& b, Tier t, CopyState s);
  void add_pin(Block& b, Tier t);
  void remove_pin(Block& b, Tier t);
  void add_reader(Block& b, Tier t);
  void remove_reader(Block& b, Tier t);
  void set_evicting(Block& b, Tier t, bool evicting);
  void set_prefetched_unused(Block& b, Tier t, bool unused);
  // The block is dropped: its copies leave every total.
  void forget(Block& b);
  // The home copy of a block not yet registered (not counted anywhere yet): resident, zeros.
  static void init_home(Copy& c);

  // The predicates, as bits; public for the tests' recount.
  enum Flag : unsigned {
    kPinned = 1u << 0,
    kPinnedCached = 1u << 1,
    kReleasing = 1u << 2,
    kComing = 1u << 3,
    kLive = 1u << 4,
    kQueuedPin = 1u << 5,
    kResident = 1u << 6,
  };
  static unsigned flags(const Block& b, Tier t);

 private:
  template <typename F>
  void edit(Block& b, Tier t, F&& change);
  void apply(Block& b, Tier t, unsigned before, unsigned after);

  std::array<PerTier, 2> tiers_;  // kDevice, kHost
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
  // Chunks whose device copy is enqueued on `copy_stream` (a load into memory): once all
  // are, an event recorded there completes with the load.
  Stream* copy_stream = nullptr;
  std::size_t copies_enqueued = 0;
  bool waiting_for_staging = false;
  Status error;
  // Captured on the dispatcher under mu_ once the memory exists.
  std::span<std::byte> src_host, dst_host;
  DeviceRange src_dev, dst_dev;
  DeviceView zero_view;
  int pending_runs = 0;  // run_chunks() posted for it and not yet started
};

// A user of the manager with its own access trace (TierManager::register_client).
struct TierManager::Client {
  std::string name;
  AccessTrace trace;
  std::uint64_t steps = 0;
  std::uint64_t acquires = 0;
  std::uint64_t hits = 0;
  std::uint64_t in_flight_hits = 0;
  std::uint64_t misses = 0;
};

// One issue_prefetches() pass over a client's trace: the tiers where it stopped.
struct TierManager::PrefetchPass {
  std::array<bool, kTierCount> stop{};
};

}  // namespace strata::offload
