// src/offload/tier_manager.h — TierManager: blocks of bytes placed across device memory, pinned
// host memory and NVMe swap, under hard budgets, moved ahead of need.
//
// Model (DESIGN.md, "Data model"):
//   * A block is a contiguous byte range (a flattened parameter group, a ZeRO shard, an
//     optimizer-state chunk) registered with a name, a size and a home tier. The home copy
//     always exists: device and host homes are allocated at registration, an NVMe home is a
//     set of SwapStore slots, one per staging chunk. A never-written block reads as zeros.
//   * A block may have copies in tiers faster than its home. Copies are versioned: the copy
//     with the newest version is current; a cached copy newer than the home copy is dirty.
//   * acquire(block, tier, access) pins the block's copy in that tier and returns a Pin at
//     once; the load, if one is needed, runs asynchronously and Pin::wait() blocks until the
//     bytes are there (that time is "stall"). A pinned copy is never evicted. Access::kWrite
//     lets the holder change the bytes and mark_dirty(); Access::kOverwrite loads nothing.
//     Releasing the pin (Pin::release() or its destructor) makes the copy evictable.
//   * Budgets per tier are hard: bytes charged (sizes rounded up to 4 KiB, plus the staging
//     pool on the host tier) never exceed them. To make room the manager evicts unpinned
//     cached copies — clean ones are dropped, dirty ones are written back to the block's home
//     first — and a request that needs the write-backs to finish waits for them (queued).
//     When pinned data and home blocks leave no room, acquire() fails with an out-of-memory
//     Status naming the budget and the bytes needed; it never waits for a pin to be released.
//     A block larger than the budget of a tier it may be used in is refused at registration.
//   * Transfers: host <-> device through the device's copy streams; NVMe <-> host directly
//     between the SwapStore and the pinned copy; NVMe <-> device through the pool of pinned
//     staging buffers (buffer_count x buffer_size), chunk by chunk, so that reads, copies and
//     writes of different chunks overlap.
//   * Access tracing: between two end_step() calls the manager records the order of
//     acquires. Later steps prefetch along that trace — the next accesses whose blocks fit in
//     prefetch_bytes, as long as the pinned, loading and prefetched-but-unused bytes stay
//     under max_live_bytes — and evict the copy whose next use is furthest away (Belady).
//     Without a trace (the first step, or tracing off) eviction is least-recently-used. When
//     the order changes the trace is dropped and re-recorded, and an info line says so.
//   * Host leases: pinned host buffers that are not blocks (an offloaded optimizer's gradient
//     and weight staging), charged to the host budget beside them and never evicted, so one
//     budget and one set of statistics cover everything a rank pins.
//   * A failed transfer surfaces as the Status of Pin::wait() (a load) or of the request that
//     needed the room (a write-back); the block's other copies and every other block stay
//     intact, and a dirty copy whose write-back failed stays dirty where it was.
//
// Thread-safety: every TierManager member may be called from any thread. A Pin is a value
// for one thread at a time; different Pins may be used from different threads. Pins of one
// block follow a readers-writer rule that acquire() enforces: any number of kRead pins, or a
// single kWrite/kOverwrite pin. The manager's lock is never held across I/O, device copies or
// memory (de)allocation: those run on an internal dispatcher thread, and their completions
// (device host callbacks, I/O finalizers) only update state under the lock.
#pragma once

#include <array>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "offload/access_trace.h"
#include "offload/staging_pool.h"
#include "strata/device.h"
#include "strata/offload.h"
#include "strata/profile.h"
#include "strata/status.h"

namespace strata::nvme {
class SwapStore;
}

namespace strata::offload {

struct TierOptions {
  std::uint64_t device_budget = 2ULL << 30;        // memory.device_budget
  std::uint64_t host_budget = 8ULL << 30;          // memory.host_budget (pinned; includes the staging pool)
  std::uint64_t nvme_budget = 0;                   // bytes of NVMe homes; 0 = the swap store's capacity
  int staging_buffers = 5;                         // offload_param.buffer_count
  std::uint64_t staging_buffer_size = 64ULL << 20; // offload_param.buffer_size; also the NVMe slot chunk
  std::uint64_t prefetch_bytes = 50ULL << 20;      // zero.prefetch_bucket_size; 0 = no prefetch
  std::uint64_t max_live_bytes = 0;                // zero.max_live_parameters x element size; 0 = budget only
  bool tracing = true;                             // record the access order and prefetch along it
};

// The options a profile asks for. `param_dtype` converts zero.max_live_parameters (elements)
// into bytes.
TierOptions tier_options(const Profile& profile, DType param_dtype);

// Names a registered block. Stale ids (of dropped blocks) are detected.
struct BlockId {
  std::uint64_t value = 0;  // 0 = none
  bool valid() const { return value != 0; }
  bool operator==(const BlockId&) const = default;
};

struct BlockSpec {
  std::string name;                // for messages and statistics, e.g. "h.3.attn.w"
  std::uint64_t bytes = 0;         // > 0
  Tier home = Tier::kHost;
  Tier fastest = Tier::kDevice;    // the fastest tier the block will be acquired in
  // False: an NVMe-homed block that is never cached in host memory (used on the device, it
  // moves through the staging pool); its size is then not checked against the host budget
  // and acquiring it in host memory is refused.
  bool host_copies = true;
};

struct BlockInfo {
  std::string name;
  std::uint64_t bytes = 0;
  Tier home = Tier::kHost;
  std::array<bool, kTierCount> current{};  // tiers holding the newest bytes
  std::array<bool, kTierCount> cached{};   // tiers holding a copy (current or being loaded)
  bool dirty = false;                      // the home copy is older than the newest one
  int pins = 0;
  int transfers = 0;                       // transfers of this block in flight
};

class TierManager;

namespace detail {
struct PinState;
}

// A pin on one copy of one block (move-only). Releasing it (release() or the destructor)
// makes the copy evictable again.
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

class TierManager {
 public:
  // `swap` is the NVMe tier (nullptr: no NVMe homes). REQUIRES: `device` and `swap` outlive
  // the manager. Fails when a budget is inconsistent (the device budget above the device's
  // capacity, the staging pool above the host budget) or the staging pool cannot be allocated.
  static Result<std::unique_ptr<TierManager>> create(Device& device, nvme::SwapStore* swap,
                                                     const TierOptions& options);
  // Waits for every transfer in flight, then frees every copy and NVMe slot. Dirty copies are
  // not written back: call flush() first to keep them.
  ~TierManager();
  TierManager(const TierManager&) = delete;
  TierManager& operator=(const TierManager&) = delete;

  // Registers a block and allocates its home copy (zeros). Fails with invalid_argument when
  // the block is larger than the budget of a tier it may be used in (from `fastest` to
  // `home`, without host memory when !host_copies), and with
  // out_of_memory / out_of_space when the home tier is full of other home blocks and pins.
  Result<BlockId> register_block(const BlockSpec& spec);
  // Forgets a block and frees its copies (after transfers in flight finish).
  // REQUIRES: no pin on the block (failed_precondition otherwise).
  Status drop(BlockId id);

  // Pins the block's copy in `tier` (kDevice or kHost, not slower than its home nor faster
  // than its `fastest`), starting a load if needed; see the file comment. Fails at once for a
  // stale id, a wrong tier, a pin conflict or a budget that pinned data fills.
  Result<Pin> acquire(BlockId id, Tier tier, Access access = Access::kRead);
  // Starts loading the block into `tier` without pinning it (a hint; it is skipped when it
  // would have to evict something or wait). Fails only for a stale id or a wrong tier.
  Status prefetch(BlockId id, Tier tier);

  // Writes every dirty copy back to its block's home and waits for it, then for the device
  // streams. REQUIRES: no write pin outstanding. Returns the first failure.
  Status flush();

  // Marks the end of a training step: the first step's accesses become the trace; later
  // steps are checked against it. Also starts prefetching the next step's first blocks.
  void end_step();
  // Forgets the trace and any recording: the accesses from now until the next end_step() are
  // recorded as the first step (call it after initialisation, whose accesses do not repeat).
  void restart_trace();

  // Pinned host memory for `what`, charged to the host budget (rounded up to 4 KiB) until the
  // lease is released. Fails with out_of_memory, naming `what`, the bytes and the budget, when
  // the budget's free room (not counting cached copies that could be evicted) is too small:
  // take leases before caching blocks. Allocates on the calling thread, without the lock.
  Result<HostLease> lease_host(std::string_view what, std::uint64_t bytes);

  TierStats stats() const;
  Result<BlockInfo> info(BlockId id) const;
  const TierOptions& options() const { return options_; }
  Device& device() const { return device_; }

 private:
  friend class Pin;
  friend class HostLease;
  void end_lease(std::uint64_t bytes);
  void charge_locked(Tier t, std::uint64_t bytes);  // a lease's charge; REQUIRES mu_
  struct Block;
  struct Copy;
  struct Xfer;
  struct PrefetchPass;
  enum class Route : std::uint8_t;

  TierManager(Device& device, nvme::SwapStore* swap, const TierOptions& options);
  Status init();
  Status init_nvme();  // the NVMe budget and the staging pool

  // --- pins (called by Pin) ---
  Status wait_pin(detail::PinState& pin);
  bool pin_ready(const detail::PinState& pin) const;
  std::span<std::byte> pin_host_bytes(const detail::PinState& pin) const;
  DeviceRange pin_device_range(const detail::PinState& pin) const;
  Status mark_dirty(detail::PinState& pin);
  void release_pin(detail::PinState& pin);

  // --- registration (called by register_block without mu_ unless they say otherwise) ---
  Status check_spec(const BlockSpec& spec, std::uint64_t charge_bytes) const;
  Status reserve_home(std::unique_lock<std::mutex>& lk, const BlockSpec& spec, std::uint64_t charge_bytes);  // lk holds mu_
  Status allocate_slots(Block& b);
  Status allocate_home_copy(Block& b);  // takes mu_ to post the allocation

  // --- everything below REQUIRES mu_ held unless it says otherwise ---
  Block* lookup(BlockId id) const;
  Status check_tier(const Block& b, Tier tier, std::string_view op) const;
  BlockId insert_block(std::unique_ptr<Block> b);
  void count_acquire(const Block& b, Tier t, Access access, bool current);  // statistics
  std::uint64_t budget(Tier t) const { return budgets_[static_cast<int>(t)]; }
  void charge(Tier t, std::uint64_t bytes);
  void uncharge(Tier t, std::uint64_t bytes);
  std::uint64_t home_version(const Block& b) const;
  bool is_current(const Block& b, Tier t) const;
  bool has_other_current(const Block& b, Tier t) const;
  bool evictable(const Block& b, Tier t) const;
  bool needs_write_back(const Block& b, Tier t) const;
  std::size_t next_use(const Block& b, Tier t) const;

  // Pins.
  Status check_pin_conflict(const Block& b, Access access) const;  // the readers-writer rule
  std::shared_ptr<detail::PinState> add_pin(Block& b, Tier t, Access access);
  void uncount_pin(Block& b, detail::PinState& pin);

  // Space.
  std::uint64_t unevictable_bytes(Tier t, const Block* except) const;
  std::uint64_t releasing_bytes(Tier t) const;
  bool space_coming(Tier t) const;
  struct Reserve {
    bool reserved = false;
    bool progress = false;  // room will appear without a pin being released
  };
  Reserve try_reserve(Tier t, std::uint64_t bytes, std::size_t victim_min_distance, bool all_or_nothing);
  std::vector<Block*> eviction_candidates(Tier t, std::size_t victim_min_distance) const;  // in eviction order
  Block* allocation_victim(const Block& b, Tier t) const;  // the oldest clean evictable copy, or nullptr
  void evict(Block& b, Tier t);
  void free_copy(Block& b, Tier t);
  Status budget_error(Tier t, const Block& b, std::string_view what) const;
  bool pinned_requests_queued(Tier t) const;
  void reserve_for_pin(Block& b, Tier t, Access access, bool queue_behind);  // room, or a place in pending_
  void process_pending();
  bool retry_queued_request(Block& b, Tier t);   // true: it stays queued
  bool retry_queued_prefetch(Block& b, Tier t);  // true: it stays queued
  void fail_queued(Tier t, const Status& cause);
  void fail_waiters(Block& b, Tier t, const Status& status);

  // Transfers.
  bool start_load(Block& b, Tier t, bool prefetch, bool content);
  void choose_load_source(Xfer& x) const;
  void start_write_back(Block& b, Tier from, bool evicting);
  void launch(std::unique_ptr<Xfer> x);
  void run_xfer(Xfer* x);                      // dispatcher thread, no lock
  bool allocate_destination(Xfer* x);          // dispatcher thread, takes mu_; false: retried or completed
  bool capture_memory(Xfer* x);                // dispatcher thread, takes mu_; false: completed
  void run_route(Xfer* x);                     // dispatcher thread, no lock
  void run_chunks(Xfer* x, bool resumed);      // dispatcher thread, no lock
  void run_direct_chunks(Xfer* x);             // dispatcher thread, no lock
  void run_staged_chunk(Xfer* x, std::size_t k, int buffer);  // dispatcher thread, no lock
  void stage_in_chunk(Xfer* x, std::size_t k, std::uint64_t off, std::span<std::byte> stage, int buffer);   // ditto
  void stage_out_chunk(Xfer* x, std::size_t k, std::uint64_t off, std::span<std::byte> stage, int buffer);  // ditto
  void chunk_done(Xfer* x, const Status& status, int buffer);  // any thread, no lock
  void finish_chunk(Xfer& x, const Status& status, int buffer);
  void maybe_complete(Xfer& x);
  void complete(Xfer& x);
  std::string describe(const Xfer& x) const;
  void complete_copy(Xfer& x, const std::string& what);
  void complete_write_back(Xfer& x, const std::string& what);
  void update_waiters(Block& b);
  void make_ready(Block& b, Tier t, detail::PinState& pin);
  void drop_stale_copies(Block& b, Tier keep);
  void destroy_if_dead(Block& b);

  // Prefetch along the trace.
  void issue_prefetches();
  void prefetch_ahead(PrefetchPass& pass, Block& b, Tier t, std::size_t ahead);
  std::uint64_t& live_bytes(PrefetchPass& pass, Tier t) const;
  void observe(Block& b, Tier t, Access access);

  // The dispatcher: the only thread that allocates, frees, enqueues copies and submits I/O.
  void post(std::function<void()> action);
  void dispatcher_loop();
  void post_free(Tier t, std::uint64_t charge_bytes, DeviceBuffer device_mem, PinnedBuffer host_mem);

  Device& device_;
  nvme::SwapStore* swap_;
  TierOptions options_;
  std::array<std::uint64_t, kTierCount> budgets_{};
  std::unique_ptr<Stream> h2d_;
  std::unique_ptr<Stream> d2h_;
  std::unique_ptr<Stream> aux_;  // zero-filling device homes at registration

  mutable std::mutex mu_;
  std::condition_variable ready_cv_;     // pins becoming ready, transfers finishing
  std::condition_variable dispatch_cv_;  // actions for the dispatcher
  std::deque<std::function<void()>> actions_;  // guarded by mu_
  bool stopping_ = false;                      // guarded by mu_
  std::thread dispatcher_;

  // Blocks: slot table indexed by BlockId (low 32 bits), generation in the high bits.
  std::vector<std::unique_ptr<Block>> slots_;      // guarded by mu_
  std::vector<std::uint32_t> free_slots_;          // guarded by mu_
  std::vector<Block*> live_;                       // registered, not dropped; guarded by mu_
  std::vector<std::unique_ptr<Block>> zombies_;    // dropped, transfers still in flight
  std::vector<std::unique_ptr<Xfer>> xfers_;       // in flight; guarded by mu_
  std::deque<std::pair<BlockId, Tier>> pending_;   // copies waiting for room, FIFO; guarded by mu_
  StagingPool staging_;                            // guarded by mu_
  std::uint64_t leased_host_ = 0;                  // HostLease bytes; guarded by mu_
  std::deque<Xfer*> staging_waiters_;              // guarded by mu_
  AccessTrace trace_;                              // guarded by mu_
  std::uint64_t tick_ = 0;                         // LRU clock; guarded by mu_
  std::uint32_t next_generation_ = 0;              // of BlockIds; guarded by mu_
  int write_backs_in_flight_ = 0;                  // guarded by mu_
  Status last_write_back_error_;                   // guarded by mu_
  TierStats stats_;                                // guarded by mu_
};

}  // namespace strata::offload
