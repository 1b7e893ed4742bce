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
//     When pinned data, home blocks and leases leave no room, acquire() fails with an out-of-memory
//     Status naming the budget and the bytes needed; it never waits for a pin to be released.
//     A block larger than the budget of a tier it may be used in is refused at registration.
//   * Transfers: host <-> device through the device's copy streams; NVMe <-> host directly
//     between the SwapStore and the pinned copy; NVMe <-> device through the pool of pinned
//     staging buffers (buffer_count x buffer_size), chunk by chunk, so that reads, copies and
//     writes of different chunks overlap.
//   * Access tracing: between two end_step() calls of a client the manager records the order
//     of that client's acquires. Later steps prefetch along that trace — the next accesses whose blocks fit in
//     prefetch_bytes, as long as the pinned, loading and prefetched-but-unused bytes stay
//     under max_live_bytes — and evict the copy whose next use is furthest away (Belady).
//     Without a trace (the first step, or tracing off) eviction is least-recently-used. When
//     the order changes the trace is dropped and re-recorded, and an info line says so.
//   * Clients: each user of the manager whose accesses form their own repeating sequence (a
//     ZeRO-3 parameter fetcher, an optimizer worker) registers a client and passes it to
//     acquire(), prefetch() and end_step(); each client has its own trace, so accesses of two
//     clients may interleave differently every step without breaking either prediction.
//     Without a client argument, calls belong to the default client (ClientId{}). Eviction
//     takes a copy's next use as the nearest one over every client's trace, each distance
//     counted in its own client's accesses; a pass of prefetches along a client's trace runs on
//     that client's acquires and end_step().
//   * Host leases: pinned host buffers that are not blocks (an offloaded optimizer's gradient
//     and weight staging), charged to the host budget beside them and never evicted, so one
//     budget and one set of statistics cover everything a rank pins. Device leases do the
//     same for scratch device memory (gather buffers); a device lease makes room by evicting
//     unpinned cached copies, as a pin does.
//   * Pins and streams: a pin can be released in a stream's order (Pin::release_after), so
//     that its copy is not evicted while queued kernels or copies still use it, and a stream
//     can be made to wait for a pin's data (Pin::ready_on) without the host thread waiting for
//     the load.
//   * A failed transfer surfaces as the Status of Pin::wait() (a load) or of the request that
//     needed the room (a write-back); the block's other copies and every other block stay
//     intact, and a dirty copy whose write-back failed stays dirty where it was.
//
// Counters: per-tier totals (pinned, releasing, live and resident copies) are kept as copies
// change state, so that acquire, release, reservation and stats() do not walk every block;
// choosing eviction victims walks only the copies resident in the tier.
//
// Thread-safety: every TierManager member may be called from any thread. A Pin or a lease is
// a value for one thread at a time; different Pins may be used from different threads. Pins
// of one block follow a readers-writer rule that acquire() enforces: any number of kRead
// pins, or a single kWrite/kOverwrite pin. The manager's lock is never held across I/O,
// device copies or memory (de)allocation: those run on an internal dispatcher thread, and
// their completions (device host callbacks, I/O finalizers, a pin's release after a stream)
// only update state under the lock. HostSignals for streams waiting on pins are set by the
// dispatcher, not under the lock.
#pragma once

#include <array>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "offload/access_trace.h"
#include "offload/staging_pool.h"
#include "offload/tier_handles.h"
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

// One client's view of the statistics (TierManager::client_stats).
struct ClientStats {
  std::string name;
  std::uint64_t acquires = 0;           // as in TierStats, for this client's acquires
  std::uint64_t hits = 0;
  std::uint64_t in_flight_hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t steps = 0;              // this client's end_step() calls
  std::uint64_t trace_length = 0;       // accesses per step in this client's trace (0: none yet)
  std::uint64_t trace_recordings = 0;
  std::uint64_t trace_divergences = 0;
};

class TierManager {
 public:
  // `swap` is the NVMe tier (nullptr: no NVMe homes). REQUIRES: `device` and `swap` outlive
  // the manager. Fails when a budget is inconsistent (the device budget above the device's
  // capacity, the staging pool above the host budget) or the staging pool cannot be allocated.
  static Result<std::unique_ptr<TierManager>> create(Device& device, nvme::SwapStore* swap,
                                                     const TierOptions& options);
  // Waits for every transfer in flight and every pin release queued on a stream, then frees
  // every copy and NVMe slot. Dirty copies are not written back: call flush() first to keep
  // them.
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

  // A new client with its own access trace; `name` appears in log lines and client_stats().
  ClientId register_client(std::string_view name);

  // Pins the block's copy in `tier` (kDevice or kHost, not slower than its home nor faster
  // than its `fastest`), starting a load if needed; see the file comment. The access is
  // recorded in `client`'s trace. Fails at once for a stale id, an unknown client, a wrong
  // tier, a pin conflict or a budget that pinned data fills.
  Result<Pin> acquire(BlockId id, Tier tier, Access access = Access::kRead, ClientId client = {});
  // Starts loading the block into `tier` without pinning it (a hint; it is skipped when it
  // would have to evict something or wait; along `client`'s trace it may evict copies whose
  // next use comes later). Fails only for a stale id, an unknown client or a wrong tier.
  Status prefetch(BlockId id, Tier tier, ClientId client = {});

  // Writes every dirty copy back to its block's home and waits for it, then for the device
  // streams. REQUIRES: no write pin outstanding. Returns the first failure.
  Status flush();

  // Marks the end of a training step of the default client: its first step's accesses become
  // its trace; later steps are checked against it. Also starts prefetching the next step's
  // first blocks.
  void end_step();
  // The same for `client`; fails for an unknown client.
  Status end_step(ClientId client);
  // Forgets the default client's trace and any recording: its accesses from now until its
  // next end_step() are recorded as its first step (call it after initialisation, whose
  // accesses do not repeat).
  void restart_trace();
  // The same for `client`; fails for an unknown client.
  Status restart_trace(ClientId client);

  // Pinned host memory for `what`, charged to the host budget (rounded up to 4 KiB) until the
  // lease is released. Fails with out_of_memory, naming `what`, the bytes and the budget, when
  // the budget's free room (not counting cached copies that could be evicted) is too small:
  // take leases before caching blocks. Allocates on the calling thread, without the lock.
  Result<HostLease> lease_host(std::string_view what, std::uint64_t bytes);
  // Device memory for `what`, charged to the device budget (rounded up to 4 KiB) beside the
  // blocks until the lease is released. Room is made as for a pin: unpinned cached copies are
  // evicted (dirty ones written back first, which the call waits for). Fails with
  // invalid_argument for 0 bytes, and with out_of_memory, naming `what`, the bytes and the
  // budget, when home blocks, pinned copies and other leases leave too little room. The
  // memory is allocated on the dispatcher, in order with the frees of evicted copies.
  Result<DeviceLease> lease_device(std::string_view what, std::uint64_t bytes);

  // The figures of every client together: acquires, hits and misses of all of them;
  // trace_length, trace_recordings and trace_divergences summed over the clients' traces;
  // steps counts end_step() calls of every client.
  TierStats stats() const;
  Result<ClientStats> client_stats(ClientId client) const;
  Result<BlockInfo> info(BlockId id) const;
  const TierOptions& options() const { return options_; }
  Device& device() const { return device_; }

 private:
  friend class Pin;
  friend class HostLease;
  friend class DeviceLease;
  friend struct TierManagerPeer;  // the tests' recount of the per-tier totals
  struct Block;
  class Copy;
  class Totals;
  struct Xfer;
  struct Client;
  struct PrefetchPass;
  enum class Route : std::uint8_t;

  TierManager(Device& device, nvme::SwapStore* swap, const TierOptions& options);
  Status init();
  Status init_streams();
  Status init_nvme();  // the NVMe budget and the staging pool

  // --- pins (called by Pin; each takes mu_) ---
  Status wait_pin(detail::PinState& pin);
  bool pin_ready(const detail::PinState& pin) const;
  std::span<std::byte> pin_host_bytes(const detail::PinState& pin) const;
  DeviceRange pin_device_range(const detail::PinState& pin) const;
  Result<DeviceView> pin_device_view(const detail::PinState& pin, DType dtype, std::uint64_t first,
                                     std::uint64_t count) const;
  Status pin_ready_on(detail::PinState& pin, Stream& stream);
  Status release_pin_after(const std::shared_ptr<detail::PinState>& pin, Stream& stream);
  Status mark_dirty(detail::PinState& pin);
  void release_pin(detail::PinState& pin);

  // --- leases (each takes mu_) ---
  void end_host_lease(std::uint64_t charge);
  void end_device_lease(std::uint64_t charge, DeviceBuffer memory);
  // Memory allocated on the dispatcher, in order with the frees decided before; waits for it.
  // REQUIRES: mu_ not held.
  Result<DeviceBuffer> allocate_device(std::uint64_t bytes);
  Result<PinnedBuffer> allocate_host(std::uint64_t bytes);

  // --- registration (called by register_block without mu_ unless they say otherwise) ---
  Status check_spec(const BlockSpec& spec, std::uint64_t charge_bytes) const;
  Status reserve_home(std::unique_lock<std::mutex>& lk, const BlockSpec& spec, std::uint64_t charge_bytes);  // lk holds mu_
  Status allocate_slots(Block& b);
  Status allocate_home_copy(Block& b);

  // --- everything below REQUIRES mu_ held unless it says otherwise ---
  Block* lookup(BlockId id) const;
  Client* lookup(ClientId id) const;
  Status check_tier(const Block& b, Tier tier, std::string_view op) const;
  BlockId insert_block(std::unique_ptr<Block> b);
  void remove_live(Block& b);
  void count_acquire(const Block& b, Tier t, Access access, bool current, Client& client);  // statistics
  std::uint64_t budget(Tier t) const { return budgets_[static_cast<int>(t)]; }
  void charge(Tier t, std::uint64_t bytes);
  void uncharge(Tier t, std::uint64_t bytes);
  std::uint64_t home_version(const Block& b) const;
  bool is_current(const Block& b, Tier t) const;
  bool has_other_current(const Block& b, Tier t) const;
  bool evictable(const Block& b, Tier t) const;
  bool needs_write_back(const Block& b, Tier t) const;
  std::size_t next_use(const Block& b, Tier t) const;  // the nearest over every client's trace
  bool any_trace() const;                              // some client replays a trace

  // Pins.
  Status check_pin_conflict(const Block& b, Access access) const;  // the readers-writer rule
  std::shared_ptr<detail::PinState> add_pin(Block& b, Tier t, Access access);
  void uncount_pin(Block& b, detail::PinState& pin);
  void release_pin_locked(detail::PinState& pin);
  bool placed(const Block& b, Tier t) const;  // the copy's memory exists
  const Xfer* load_into(const Block& b, Tier t) const;  // the load in flight into that copy, if any
  bool copy_coming(const Block& b, const detail::PinState& pin) const;
  Stream* enqueued_load_stream(const Block& b, const detail::PinState& pin) const;
  void post_signals(detail::PinState& pin, const Status& status);

  // Space.
  std::uint64_t leased_bytes(Tier t) const;
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
  std::string budget_holders(Tier t, std::uint64_t fixed) const;  // who holds the unevictable bytes
  bool pinned_requests_queued(Tier t) const;
  void reserve_for_pin(Block& b, Tier t, Access access, bool queue_behind);  // room, or a place in pending_
  void process_pending();
  bool retry_queued_request(Block& b, Tier t);   // true: it stays queued
  bool retry_queued_prefetch(Block& b, Tier t);  // true: it stays queued
  void fail_queued(Tier t, const Status& cause);
  void fail_waiters(Block& b, Tier t, const Status& status);
  Status reserve_device_lease(std::unique_lock<std::mutex>& lk, std::string_view what, std::uint64_t charge);  // lk holds mu_

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
  void note_enqueued(Xfer* x, Stream& stream);  // any thread, takes mu_: a chunk's copy is on `stream`
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

  // Clients, their traces and prefetch along them.
  void end_client_step(Client& client);
  void issue_prefetches(Client& client);
  void prefetch_ahead(PrefetchPass& pass, Block& b, Tier t, std::size_t ahead);
  void observe(Client& client, Block& b, Tier t, Access access);
  std::string describe_entry(const std::optional<TraceEntry>& e, bool expected) const;

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
  std::condition_variable ready_cv_;     // pins becoming ready or placed, transfers finishing, room
  std::condition_variable dispatch_cv_;  // actions for the dispatcher
  std::deque<std::function<void()>> actions_;  // guarded by mu_
  bool stopping_ = false;                      // guarded by mu_
  std::thread dispatcher_;

  // Blocks: slot table indexed by BlockId (low 32 bits), generation in the high bits.
  std::vector<std::unique_ptr<Block>> slots_;      // guarded by mu_
  std::vector<std::uint32_t> free_slots_;          // guarded by mu_
  std::vector<Block*> live_;                       // registered, not dropped, in no order; guarded by mu_
  std::vector<std::unique_ptr<Block>> zombies_;    // dropped, transfers still in flight
  std::vector<std::unique_ptr<Xfer>> xfers_;       // in flight; guarded by mu_
  std::deque<std::pair<BlockId, Tier>> pending_;   // copies waiting for room, FIFO; guarded by mu_
  std::unique_ptr<Totals> totals_;                 // guarded by mu_
  StagingPool staging_;                            // guarded by mu_
  std::uint64_t leased_host_ = 0;                  // HostLease bytes; guarded by mu_
  std::uint64_t leased_device_ = 0;                // DeviceLease bytes; guarded by mu_
  int deferred_releases_ = 0;                      // release_after() not yet run; guarded by mu_
  std::deque<Xfer*> staging_waiters_;              // guarded by mu_
  std::vector<std::unique_ptr<Client>> clients_;   // indexed by ClientId; [0] the default; guarded by mu_
  std::uint64_t tick_ = 0;                         // LRU clock; guarded by mu_
  std::uint32_t next_generation_ = 0;              // of BlockIds; guarded by mu_
  int write_backs_in_flight_ = 0;                  // guarded by mu_
  Status last_write_back_error_;                   // guarded by mu_
  TierStats stats_;                                // guarded by mu_
};

}  // namespace strata::offload
