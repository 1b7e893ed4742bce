// TierManager — see tier_manager.h for the model. Notes on the implementation:
//
// * State lives in Block records (one per registered block) guarded by mu_. Each block has a
//   Copy per memory tier (device, host) and, when homed on NVMe, one SwapStore slot per
//   staging chunk. Copies carry versions; Block::version is the newest.
// * Everything that touches memory, a device stream or the SwapStore runs on the dispatcher
//   thread, without mu_. Completions (device host callbacks, I/O finalizers) only take mu_ to
//   update state and post follow-up actions. On CUDA a host callback may make no CUDA call,
//   which is why even the next chunk's copy is posted rather than enqueued from the callback.
// * Budget accounting is done under mu_ when space is reserved, before the memory exists,
//   and returned when a copy is freed. Frees and allocations both run on the dispatcher, in
//   the order they were decided, so the memory really held never exceeds the charged bytes.
// * A transfer that moves a block (Xfer) counts in Block::transfers and in the source copy's
//   `readers`; neither the source nor the destination can be freed until it completes.
#include "offload/tier_manager.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <limits>
#include <optional>
#include <sstream>
#include <utility>

#include "nvme/swap_store.h"
#include "strata/log.h"
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
}  // namespace detail

namespace {

using Clock = std::chrono::steady_clock;
using detail::PinState;

constexpr std::uint64_t kBlockAlignment = 4096;
constexpr std::uint64_t kInvalidVersion = std::numeric_limits<std::uint64_t>::max();
constexpr std::size_t kNoUse = AccessTrace::kNoUse;

std::uint64_t round_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

int ti(Tier t) { return static_cast<int>(t); }

std::string budget_key(Tier t) {
  switch (t) {
    case Tier::kDevice: return "memory.device_budget";
    case Tier::kHost: return "memory.host_budget";
    case Tier::kNvme: return "the NVMe budget (swap capacity)";
  }
  return "?";
}

std::string human(std::uint64_t bytes) { return format_bytes_human(static_cast<double>(bytes)); }

enum class CopyState : std::uint8_t {
  kAbsent,   // no memory (non-home copies only)
  kQueued,   // waiting for room in its tier (in pending_)
  kLoading,  // memory reserved, a transfer is filling it
  kValid,    // holds the bytes of `version`
};

}  // namespace

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

// ---------------------------------------------------------------------------------------------
// Options

TierOptions tier_options(const Profile& profile, DType param_dtype) {
  TierOptions o;
  o.device_budget = profile.memory.device_budget;
  o.host_budget = profile.memory.host_budget;
  o.staging_buffers = profile.offload_param.buffer_count;
  o.staging_buffer_size = profile.offload_param.buffer_size;
  o.prefetch_bytes = profile.zero.prefetch_bucket_size;
  const std::uint64_t elem = dtype_size(param_dtype);
  const std::uint64_t n = profile.zero.max_live_parameters;
  o.max_live_bytes = n > std::numeric_limits<std::uint64_t>::max() / elem ? 0 : n * elem;
  return o;
}

// ---------------------------------------------------------------------------------------------
// Pin

Pin::Pin(Pin&& other) noexcept : manager_(other.manager_), state_(std::move(other.state_)) { other.manager_ = nullptr; }

Pin& Pin::operator=(Pin&& other) noexcept {
  if (this != &other) {
    release();
    manager_ = other.manager_;
    state_ = std::move(other.state_);
    other.manager_ = nullptr;
  }
  return *this;
}

Pin::~Pin() { release(); }

BlockId Pin::block() const { return state_ ? state_->id : BlockId{}; }
Tier Pin::tier() const { return state_ ? state_->tier : Tier::kDevice; }
Access Pin::access() const { return state_ ? state_->access : Access::kRead; }
std::uint64_t Pin::bytes() const { return state_ ? state_->bytes : 0; }

Status Pin::wait() {
  if (!state_) return failed_precondition("wait on an empty pin (released or moved from)");
  return manager_->wait_pin(*state_);
}

bool Pin::ready() const { return state_ && manager_->pin_ready(*state_); }

std::span<std::byte> Pin::host_bytes() const { return state_ ? manager_->pin_host_bytes(*state_) : std::span<std::byte>{}; }

DeviceRange Pin::device_range() const { return state_ ? manager_->pin_device_range(*state_) : DeviceRange{}; }

Status Pin::mark_dirty() {
  if (!state_) return failed_precondition("mark_dirty on an empty pin (released or moved from)");
  return manager_->mark_dirty(*state_);
}

void Pin::release() {
  if (state_) {
    manager_->release_pin(*state_);
    state_.reset();
    manager_ = nullptr;
  }
}

// ---------------------------------------------------------------------------------------------
// Creation and destruction

TierManager::TierManager(Device& device, nvme::SwapStore* swap, const TierOptions& options)
    : device_(device), swap_(swap), options_(options) {}

Result<std::unique_ptr<TierManager>> TierManager::create(Device& device, nvme::SwapStore* swap,
                                                         const TierOptions& options) {
  std::unique_ptr<TierManager> m(new TierManager(device, swap, options));
  STRATA_RETURN_IF_ERROR(m->init());
  return m;
}

Status TierManager::init() {
  const DeviceInfo& info = device_.info();
  if (options_.device_budget > info.capacity) {
    return invalid_argument("tier manager: memory.device_budget " + format_bytes(options_.device_budget) +
                            " is larger than the capacity of device '" + info.name + "' (" +
                            format_bytes(info.capacity) + "); lower the budget");
  }
  budgets_[ti(Tier::kDevice)] = options_.device_budget;
  budgets_[ti(Tier::kHost)] = options_.host_budget;
  if (swap_ != nullptr) {
    const std::uint64_t capacity = swap_->stats().capacity_bytes;
    budgets_[ti(Tier::kNvme)] = options_.nvme_budget == 0 ? capacity : std::min(options_.nvme_budget, capacity);
    if (options_.staging_buffer_size == 0 || options_.staging_buffer_size % kBlockAlignment != 0) {
      return invalid_argument("tier manager: the staging buffer size " + format_bytes(options_.staging_buffer_size) +
                              " (offload_param.buffer_size) must be a positive multiple of 4 KiB");
    }
    const std::uint64_t pool = options_.staging_buffer_size * static_cast<std::uint64_t>(std::max(options_.staging_buffers, 0));
    if (pool > options_.host_budget) {
      return invalid_argument("tier manager: the pinned staging pool (" + std::to_string(options_.staging_buffers) + " x " +
                              format_bytes(options_.staging_buffer_size) + " = " + format_bytes(pool) +
                              ") does not fit in memory.host_budget " + format_bytes(options_.host_budget) +
                              "; lower offload_param.buffer_count or buffer_size, or raise the budget");
    }
    auto pool_or = StagingPool::create(device_, options_.staging_buffers, options_.staging_buffer_size);
    if (!pool_or.ok()) return pool_or.status().with_context("tier manager");
    staging_ = std::move(pool_or).value();
    stats_.tiers[ti(Tier::kHost)].used = staging_.total_bytes();
    stats_.tiers[ti(Tier::kHost)].peak = staging_.total_bytes();
  }
  for (int t = 0; t < kTierCount; ++t) stats_.tiers[static_cast<std::size_t>(t)].budget = budgets_[static_cast<std::size_t>(t)];

  auto h2d = device_.create_stream("tiers.h2d");
  if (!h2d.ok()) return h2d.status().with_context("tier manager");
  h2d_ = std::move(h2d).value();
  auto d2h = device_.create_stream("tiers.d2h");
  if (!d2h.ok()) return d2h.status().with_context("tier manager");
  d2h_ = std::move(d2h).value();
  auto aux = device_.create_stream("tiers.aux");
  if (!aux.ok()) return aux.status().with_context("tier manager");
  aux_ = std::move(aux).value();

  try {
    dispatcher_ = std::thread([this] { dispatcher_loop(); });
  } catch (const std::exception& e) {
    return internal_error(std::string("tier manager: starting the dispatcher thread failed: ") + e.what());
  }
  return Status::OK();
}

TierManager::~TierManager() {
  if (dispatcher_.joinable()) {
    std::unique_lock lk(mu_);
    ready_cv_.wait(lk, [&] { return xfers_.empty(); });
    int pinned = 0;
    for (Block* b : live_) pinned += b->read_pins + b->write_pins;
    if (pinned > 0) {
      STRATA_LOG(kError) << "tier manager destroyed with " << pinned << " pin(s) still held; their memory is freed now";
    }
    stopping_ = true;
    dispatch_cv_.notify_all();
  }
  if (dispatcher_.joinable()) dispatcher_.join();
  // No transfer is in flight and the dispatcher has stopped: free without the lock.
  if (swap_ != nullptr) {
    for (auto& b : slots_) {
      if (!b) continue;
      for (const nvme::SwapSlot& s : b->slots) swap_->release(s).ignore();
    }
  }
  if (h2d_) h2d_->synchronize().ignore();
  if (d2h_) d2h_->synchronize().ignore();
  if (aux_) aux_->synchronize().ignore();
}

// ---------------------------------------------------------------------------------------------
// The dispatcher

void TierManager::post(std::function<void()> action) {
  actions_.push_back(std::move(action));
  dispatch_cv_.notify_one();
}

void TierManager::dispatcher_loop() {
  std::unique_lock lk(mu_);
  for (;;) {
    dispatch_cv_.wait(lk, [&] { return stopping_ || !actions_.empty(); });
    if (actions_.empty()) return;
    std::function<void()> action = std::move(actions_.front());
    actions_.pop_front();
    lk.unlock();
    action();
    action = nullptr;  // frees what it captured (memory handed over for freeing) outside the lock
    lk.lock();
  }
}

void TierManager::post_free(Tier t, std::uint64_t charge_bytes, DeviceBuffer device_mem, PinnedBuffer host_mem) {
  uncharge(t, charge_bytes);
  if (!device_mem && !host_mem) return;
  auto holder = std::make_shared<std::pair<DeviceBuffer, PinnedBuffer>>(std::move(device_mem), std::move(host_mem));
  post([holder] {
    holder->first.reset();
    holder->second.reset();
  });
}

// ---------------------------------------------------------------------------------------------
// Helpers (mu_ held)

TierManager::Block* TierManager::lookup(BlockId id) const {
  const std::uint64_t index = (id.value & 0xffffffffULL);
  if (index == 0 || index > slots_.size()) return nullptr;
  Block* b = slots_[index - 1].get();
  if (b == nullptr || b->id != id || b->dropped) return nullptr;
  return b;
}

Status TierManager::check_tier(const Block& b, Tier tier, std::string_view op) const {
  if (tier == Tier::kNvme) {
    return invalid_argument(std::string(op) + " of block '" + b.name +
                            "' in nvme: blocks are used from device or host memory; nvme is a home tier only");
  }
  if (ti(tier) > ti(b.home)) {
    return invalid_argument(std::string(op) + " of block '" + b.name + "' in " + std::string(tier_name(tier)) +
                            ": its home is " + std::string(tier_name(b.home)) +
                            " and copies live only in faster tiers");
  }
  if (ti(tier) < ti(b.fastest)) {
    return invalid_argument(std::string(op) + " of block '" + b.name + "' in " + std::string(tier_name(tier)) +
                            ": it was registered with fastest tier " + std::string(tier_name(b.fastest)) +
                            " (its size was checked only against the budgets from there to its home)");
  }
  if (tier == Tier::kHost && !b.host_copies && b.home != Tier::kHost) {
    return invalid_argument(std::string(op) + " of block '" + b.name +
                            "' in host: it was registered without host copies (host_copies = false)");
  }
  return Status::OK();
}

void TierManager::charge(Tier t, std::uint64_t bytes) {
  TierUsage& u = stats_.tiers[static_cast<std::size_t>(ti(t))];
  u.used += bytes;
  u.peak = std::max(u.peak, u.used);
}

void TierManager::uncharge(Tier t, std::uint64_t bytes) { stats_.tiers[static_cast<std::size_t>(ti(t))].used -= bytes; }

std::uint64_t TierManager::home_version(const Block& b) const {
  if (b.home == Tier::kNvme) return b.nvme_busy ? kInvalidVersion : b.nvme_version;
  const Copy& h = b.copy(b.home);
  return h.state == CopyState::kValid ? h.version : kInvalidVersion;
}

bool TierManager::is_current(const Block& b, Tier t) const {
  if (t == Tier::kNvme) return home_version(b) == b.version;
  const Copy& c = b.copy(t);
  return c.state == CopyState::kValid && c.version == b.version;
}

bool TierManager::has_other_current(const Block& b, Tier t) const {
  for (Tier o : {Tier::kDevice, Tier::kHost}) {
    if (o != t && is_current(b, o)) return true;
  }
  return false;
}

bool TierManager::needs_write_back(const Block& b, Tier t) const {
  const Copy& c = b.copy(t);
  return !c.home && c.version == b.version && home_version(b) != b.version && !has_other_current(b, t);
}

bool TierManager::evictable(const Block& b, Tier t) const {
  const Copy& c = b.copy(t);
  if (c.home || c.state != CopyState::kValid || c.pins > 0 || c.readers > 0 || c.evicting || b.dropped) return false;
  if (needs_write_back(b, t)) {
    if (b.home == Tier::kNvme) return !b.nvme_busy;
    return b.copy(b.home).state == CopyState::kValid;
  }
  return true;
}

std::size_t TierManager::next_use(const Block& b, Tier t) const {
  return trace_.distance_to_next_use(b.id.value, t);
}

std::uint64_t TierManager::unevictable_bytes(Tier t, const Block* except) const {
  std::uint64_t bytes = stats_.tiers[static_cast<std::size_t>(ti(t))].home_bytes;
  if (t == Tier::kHost) bytes += staging_.total_bytes() + leased_host_;
  for (const Block* b : live_) {
    if (b == except || b->home == t) continue;
    const Copy& c = b->copy(t);
    if (c.state != CopyState::kAbsent && c.pins > 0) bytes += b->charge;
  }
  return bytes;
}

Result<HostLease> TierManager::lease_host(std::string_view what, std::uint64_t bytes) {
  const std::uint64_t rounded = (std::max<std::uint64_t>(bytes, 1) + 4095) / 4096 * 4096;
  {
    std::lock_guard lk(mu_);
    const std::uint64_t used = stats_.tiers[ti(Tier::kHost)].used;
    if (used + rounded > budget(Tier::kHost)) {
      return out_of_memory("tier manager: " + std::string(what) + " needs " + human(rounded) + " of pinned host memory but " +
                           human(used) + " of the " + human(budget(Tier::kHost)) +
                           " host budget (memory.host_budget) are taken; raise the budget");
    }
    charge_locked(Tier::kHost, rounded);
  }
  auto buffer = device_.allocate_pinned(bytes);
  if (!buffer.ok()) {
    end_lease(rounded);
    return buffer.status().with_context("tier manager: " + std::string(what));
  }
  HostLease lease;
  lease.manager_ = this;
  lease.charge_ = rounded;
  lease.buffer_ = std::move(*buffer);
  return lease;
}

void TierManager::charge_locked(Tier t, std::uint64_t bytes) {
  charge(t, bytes);
  if (t == Tier::kHost) leased_host_ += bytes;
}

void TierManager::end_lease(std::uint64_t bytes) {
  std::lock_guard lk(mu_);
  uncharge(Tier::kHost, bytes);
  leased_host_ -= bytes;
  process_pending();  // the room may let a queued copy in
}

HostLease& HostLease::operator=(HostLease&& other) noexcept {
  if (this == &other) return *this;
  release();
  manager_ = std::exchange(other.manager_, nullptr);
  charge_ = std::exchange(other.charge_, 0);
  buffer_ = std::move(other.buffer_);
  return *this;
}

void HostLease::release() {
  if (manager_ == nullptr) return;
  buffer_ = PinnedBuffer();
  manager_->end_lease(charge_);
  manager_ = nullptr;
  charge_ = 0;
}

std::uint64_t TierManager::releasing_bytes(Tier t) const {
  std::uint64_t bytes = 0;
  for (const Block* b : live_) {
    const Copy& c = b->copy(t);
    if (c.evicting && c.pins == 0) bytes += b->charge;
  }
  return bytes;
}

bool TierManager::space_coming(Tier t) const {
  for (const Block* b : live_) {
    const Copy& c = b->copy(t);
    if (c.home || c.pins > 0) continue;
    if (c.state == CopyState::kLoading || c.readers > 0 || c.evicting) return true;
  }
  for (const auto& z : zombies_) {
    if (z->home == t || z->copy(t).state != CopyState::kAbsent) return true;
  }
  return false;
}

Status TierManager::budget_error(Tier t, const Block& b, std::string_view what) const {
  const std::uint64_t home = stats_.tiers[static_cast<std::size_t>(ti(t))].home_bytes;
  const std::uint64_t fixed = unevictable_bytes(t, &b);
  std::ostringstream os;
  os << tier_name(t) << " budget " << human(budget(t)) << " (" << budget_key(t) << ") cannot hold block '" << b.name
     << "' (" << human(b.charge) << ") " << what << ": " << human(fixed) << " are held by home blocks ("
     << human(home) << ")";
  if (t == Tier::kHost && staging_.count() > 0) os << ", the staging pool (" << human(staging_.total_bytes()) << ")";
  os << " and pinned copies (" << human(fixed - home - (t == Tier::kHost ? staging_.total_bytes() : 0))
     << "); release pins, use smaller blocks or raise " << budget_key(t);
  return out_of_memory(os.str());
}

// ---------------------------------------------------------------------------------------------
// Space

TierManager::Reserve TierManager::try_reserve(Tier t, std::uint64_t bytes, std::size_t victim_min_distance,
                                               bool all_or_nothing) {
  Reserve r;
  const std::uint64_t bud = budget(t);
  auto used = [&] { return stats_.tiers[static_cast<std::size_t>(ti(t))].used; };
  if (used() + bytes <= bud) {
    charge(t, bytes);
    r.reserved = true;
    return r;
  }
  const std::uint64_t deficit = used() + bytes - bud;
  const std::uint64_t releasing = releasing_bytes(t);
  if (releasing >= deficit) {
    r.progress = true;
    return r;
  }
  const std::uint64_t need = deficit - releasing;

  // Candidates in eviction order: with a trace, furthest next use first (Belady); without,
  // least recently used first. Ties go to clean copies (no write-back).
  struct Cand {
    Block* b;
    std::size_t distance;
    bool dirty;
    std::uint64_t last_use;
  };
  std::vector<Cand> cands;
  const bool belady = trace_.replaying();
  for (Block* b : live_) {
    if (!evictable(*b, t)) continue;
    const std::size_t d = belady ? next_use(*b, t) : kNoUse;
    // victim_min_distance == kNoUse means "any victim"; otherwise the victim's next use must
    // come after the use the space is for.
    if (victim_min_distance != kNoUse && d != kNoUse && d <= victim_min_distance) continue;
    cands.push_back(Cand{b, d, needs_write_back(*b, t), b->copy(t).last_use});
  }
  std::sort(cands.begin(), cands.end(), [&](const Cand& a, const Cand& c) {
    if (belady && a.distance != c.distance) return a.distance > c.distance;
    if (!belady && a.last_use != c.last_use) return a.last_use < c.last_use;
    if (a.dirty != c.dirty) return !a.dirty;
    return a.last_use < c.last_use;
  });
  std::uint64_t picked = 0;
  std::size_t n = 0;
  while (n < cands.size() && picked < need) picked += cands[n++].b->charge;
  if (all_or_nothing && picked < need) return r;
  for (std::size_t i = 0; i < n; ++i) evict(*cands[i].b, t);
  if (used() + bytes <= bud) {
    charge(t, bytes);
    r.reserved = true;
    return r;
  }
  r.progress = n > 0 || releasing > 0 || space_coming(t);
  return r;
}

void TierManager::evict(Block& b, Tier t) {
  if (needs_write_back(b, t)) {
    start_write_back(b, t, /*evicting=*/true);
  } else {
    ++stats_.tiers[static_cast<std::size_t>(ti(t))].evictions;
    free_copy(b, t);
  }
}

void TierManager::free_copy(Block& b, Tier t) {
  Copy& c = b.copy(t);
  if (c.prefetched_unused) ++stats_.prefetches_unused;
  c.prefetched_unused = false;
  c.state = CopyState::kAbsent;
  c.evicting = false;
  c.version = 0;
  const std::uint64_t charged = c.charged ? b.charge : 0;
  c.charged = false;
  post_free(t, charged, std::move(c.device_mem), std::move(c.host_mem));
}

void TierManager::fail_waiters(Block& b, Tier t, const Status& status) {
  Copy& c = b.copy(t);
  for (auto& p : c.waiters) {
    p->ready = true;
    p->error = status;
    if (p->counted) {
      p->counted = false;
      --c.pins;
      if (p->access == Access::kRead) {
        --b.read_pins;
      } else {
        --b.write_pins;
      }
    }
  }
  c.waiters.clear();
  ready_cv_.notify_all();
}

void TierManager::process_pending() {
  std::array<bool, kTierCount> blocked{};
  for (auto it = pending_.begin(); it != pending_.end();) {
    const BlockId id = it->first;
    const Tier t = it->second;
    Block* b = lookup(id);
    if (b == nullptr || b->copy(t).state != CopyState::kQueued) {
      it = pending_.erase(it);
      continue;
    }
    if (blocked[static_cast<std::size_t>(ti(t))]) {
      ++it;
      continue;
    }
    Copy& c = b->copy(t);
    if (c.pins > 0) {
      if (unevictable_bytes(t, b) + b->charge > budget(t)) {
        ++stats_.budget_refusals;
        c.state = CopyState::kAbsent;
        fail_waiters(*b, t, budget_error(t, *b, "while it waited for room"));
        it = pending_.erase(it);
        continue;
      }
      Reserve r = try_reserve(t, b->charge, kNoUse, /*all_or_nothing=*/false);
      if (r.reserved) {
        c.charged = true;
        it = pending_.erase(it);
        start_load(*b, t, /*prefetch=*/false, c.queued_content);
        continue;
      }
      if (!r.progress) {
        ++stats_.budget_refusals;
        c.state = CopyState::kAbsent;
        fail_waiters(*b, t, budget_error(t, *b, "and nothing can be evicted"));
        it = pending_.erase(it);
        continue;
      }
      blocked[static_cast<std::size_t>(ti(t))] = true;
      ++it;
      continue;
    }
    // A queued prefetch: only along the trace, and only by evicting copies needed later.
    const std::size_t d = trace_.replaying() ? next_use(*b, t) : kNoUse;
    Reserve r;
    if (d != kNoUse) r = try_reserve(t, b->charge, d, /*all_or_nothing=*/true);
    if (r.reserved) {
      c.charged = true;
      it = pending_.erase(it);
      start_load(*b, t, /*prefetch=*/true, true);
      continue;
    }
    if (r.progress) {
      blocked[static_cast<std::size_t>(ti(t))] = true;
      ++it;
      continue;
    }
    c.state = CopyState::kAbsent;
    it = pending_.erase(it);
  }
}

// ---------------------------------------------------------------------------------------------
// Registration

Result<BlockId> TierManager::register_block(const BlockSpec& spec) {
  if (spec.name.empty()) return invalid_argument("register block: the name is empty (names appear in errors and statistics)");
  if (spec.bytes == 0) return invalid_argument("register block '" + spec.name + "': the size is 0");
  if (spec.fastest == Tier::kNvme) {
    return invalid_argument("register block '" + spec.name + "': fastest tier nvme; blocks are used from device or host memory");
  }
  if (ti(spec.fastest) > ti(spec.home)) {
    return invalid_argument("register block '" + spec.name + "': fastest tier " + std::string(tier_name(spec.fastest)) +
                            " is slower than its home " + std::string(tier_name(spec.home)));
  }
  if (spec.home == Tier::kNvme && swap_ == nullptr) {
    return failed_precondition("register block '" + spec.name +
                               "' homed on nvme: this tier manager has no swap store (set nvme_path in the profile)");
  }
  const std::uint64_t charge_bytes = round_up(spec.bytes, kBlockAlignment);
  for (int t = ti(spec.fastest); t <= ti(spec.home); ++t) {
    const Tier tier = static_cast<Tier>(t);
    if (tier == Tier::kHost && !spec.host_copies && spec.home != Tier::kHost) continue;
    if (charge_bytes > budget(tier)) {
      return invalid_argument("register block '" + spec.name + "' (" + human(spec.bytes) + "): larger than the " +
                              std::string(tier_name(tier)) + " budget " + human(budget(tier)) + " (" +
                              budget_key(tier) + "); a block must fit in every tier it is used in: split it or raise the budget");
    }
  }

  std::unique_lock lk(mu_);
  if (spec.home == Tier::kNvme) {
    TierUsage& u = stats_.tiers[ti(Tier::kNvme)];
    if (u.used + charge_bytes > budget(Tier::kNvme)) {
      return out_of_space("register block '" + spec.name + "' (" + human(spec.bytes) + ") on nvme: " + human(u.used) +
                          " of the " + human(budget(Tier::kNvme)) + " NVMe budget are taken by other blocks; " +
                          "raise the swap capacity or drop blocks");
    }
    charge(Tier::kNvme, charge_bytes);
  } else {
    // Home memory is permanent: room comes from evicting cached copies, never from pins.
    for (;;) {
      Block probe;
      probe.name = spec.name;
      probe.charge = charge_bytes;
      if (unevictable_bytes(spec.home, nullptr) + charge_bytes > budget(spec.home)) {
        return budget_error(spec.home, probe, "as its home");
      }
      Reserve r = try_reserve(spec.home, charge_bytes, kNoUse, false);
      if (r.reserved) break;
      if (!r.progress) return budget_error(spec.home, probe, "as its home (nothing can be evicted)");
      ready_cv_.wait(lk);
    }
  }
  stats_.tiers[static_cast<std::size_t>(ti(spec.home))].home_bytes += charge_bytes;
  lk.unlock();

  auto undo = [&](const Status& s) -> Status {
    std::lock_guard g(mu_);
    uncharge(spec.home, charge_bytes);
    stats_.tiers[static_cast<std::size_t>(ti(spec.home))].home_bytes -= charge_bytes;
    process_pending();
    return s.with_context("register block '" + spec.name + "'");
  };

  auto b = std::make_unique<Block>();
  b->name = spec.name;
  b->bytes = spec.bytes;
  b->charge = charge_bytes;
  b->home = spec.home;
  b->fastest = spec.fastest;
  b->host_copies = spec.host_copies || spec.home == Tier::kHost;
  if (spec.home == Tier::kNvme) {
    const std::uint64_t cs = options_.staging_buffer_size;
    for (std::uint64_t off = 0; off < spec.bytes; off += cs) {
      auto slot = swap_->allocate(std::min(cs, spec.bytes - off));
      if (!slot.ok()) {
        for (const nvme::SwapSlot& s : b->slots) swap_->release(s).ignore();
        return undo(slot.status());
      }
      b->slots.push_back(*slot);
    }
  } else {
    // Allocations run on the dispatcher so that they follow the frees decided before them.
    Copy& h = b->copy(spec.home);
    h.home = true;
    if (spec.home == Tier::kDevice) {
      auto task = std::make_shared<std::packaged_task<Result<DeviceBuffer>()>>([&] { return device_.allocate(charge_bytes); });
      auto fut = task->get_future();
      {
        std::lock_guard g(mu_);
        post([task] { (*task)(); });
      }
      auto mem = fut.get();
      if (!mem.ok()) return undo(mem.status());
      h.device_mem = std::move(mem).value();
      Status st = device_.fill(h.device_mem.view(DType::kF32), 0.0f, *aux_);
      if (st.ok()) st = aux_->synchronize();
      if (!st.ok()) {
        auto holder = std::make_shared<DeviceBuffer>(std::move(h.device_mem));
        {
          std::lock_guard g(mu_);
          post([holder] { holder->reset(); });
        }
        return undo(st);
      }
    } else {
      auto task = std::make_shared<std::packaged_task<Result<PinnedBuffer>()>>([&] { return device_.allocate_pinned(charge_bytes); });
      auto fut = task->get_future();
      {
        std::lock_guard g(mu_);
        post([task] { (*task)(); });
      }
      auto mem = fut.get();
      if (!mem.ok()) return undo(mem.status());
      h.host_mem = std::move(mem).value();
      std::memset(h.host_mem.data(), 0, h.host_mem.size());
    }
    h.state = CopyState::kValid;
    h.version = 0;
  }

  lk.lock();
  std::uint32_t index;
  if (!free_slots_.empty()) {
    index = free_slots_.back();
    free_slots_.pop_back();
  } else {
    index = static_cast<std::uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  if (++next_generation_ == 0) ++next_generation_;
  const std::uint64_t gen = next_generation_;
  b->id = BlockId{(gen << 32) | (static_cast<std::uint64_t>(index) + 1)};
  Block* raw = b.get();
  slots_[index] = std::move(b);
  live_.push_back(raw);
  ++stats_.blocks;
  return raw->id;
}

Status TierManager::drop(BlockId id) {
  std::lock_guard lk(mu_);
  Block* b = lookup(id);
  if (b == nullptr) return not_found("drop: block id " + std::to_string(id.value) + " is not registered (dropped already?)");
  if (b->read_pins + b->write_pins > 0) {
    return failed_precondition("drop block '" + b->name + "': it has " + std::to_string(b->read_pins + b->write_pins) +
                               " pin(s); release them first");
  }
  b->dropped = true;
  for (Tier t : {Tier::kDevice, Tier::kHost}) {
    if (b->copy(t).state == CopyState::kQueued) b->copy(t).state = CopyState::kAbsent;
  }
  live_.erase(std::find(live_.begin(), live_.end(), b));
  const std::uint64_t index = (id.value & 0xffffffffULL) - 1;
  zombies_.push_back(std::move(slots_[index]));
  free_slots_.push_back(static_cast<std::uint32_t>(index));
  --stats_.blocks;
  destroy_if_dead(*b);
  process_pending();
  return Status::OK();
}

void TierManager::destroy_if_dead(Block& b) {
  if (!b.dropped || b.transfers > 0) return;
  for (Tier t : {Tier::kDevice, Tier::kHost}) {
    Copy& c = b.copy(t);
    if (c.home) {
      post_free(t, b.charge, std::move(c.device_mem), std::move(c.host_mem));
    } else if (c.charged || c.device_mem || c.host_mem) {
      free_copy(b, t);
    }
  }
  if (b.home != Tier::kNvme) stats_.tiers[static_cast<std::size_t>(ti(b.home))].home_bytes -= b.charge;
  if (b.home == Tier::kNvme) {
    uncharge(Tier::kNvme, b.charge);
    stats_.tiers[ti(Tier::kNvme)].home_bytes -= b.charge;
    std::vector<nvme::SwapSlot> slots = std::move(b.slots);
    nvme::SwapStore* swap = swap_;
    post([swap, slots] {
      for (const nvme::SwapSlot& s : slots) {
        Status st = swap->release(s);
        if (!st.ok()) {
          STRATA_LOG(kWarn) << "tier manager: releasing a swap slot failed: " << st;
        }
      }
    });
  }
  auto it = std::find_if(zombies_.begin(), zombies_.end(), [&](const auto& z) { return z.get() == &b; });
  if (it != zombies_.end()) zombies_.erase(it);
}

// ---------------------------------------------------------------------------------------------
// Acquire, prefetch, release

Result<Pin> TierManager::acquire(BlockId id, Tier tier, Access access) {
  std::unique_lock lk(mu_);
  Block* b = lookup(id);
  if (b == nullptr) return not_found("acquire: block id " + std::to_string(id.value) + " is not registered (dropped?)");
  STRATA_RETURN_IF_ERROR(check_tier(*b, tier, "acquire"));
  if (access == Access::kRead && b->write_pins > 0) {
    return failed_precondition("acquire block '" + b->name + "' for reading: it is pinned for writing, and a writer excludes every other pin");
  }
  if (access != Access::kRead && b->read_pins + b->write_pins > 0) {
    return failed_precondition("acquire block '" + b->name + "' for " + std::string(access_name(access)) + ": it has " +
                               std::to_string(b->read_pins + b->write_pins) +
                               " pin(s); a write pin must be the only pin of its block");
  }
  Copy& c = b->copy(tier);
  const bool current = is_current(*b, tier);
  bool need_reserve = false;
  bool need_load = false;
  if (c.state == CopyState::kAbsent) {
    need_reserve = true;
  } else if (c.state == CopyState::kValid && !current && access != Access::kOverwrite) {
    need_load = true;  // a stale home copy (the newest bytes are in a faster tier)
  }
  const bool queue_behind = need_reserve && std::any_of(pending_.begin(), pending_.end(), [&](const auto& p) {
    const Block* q = lookup(p.first);
    return p.second == tier && q != nullptr && q->copy(tier).state == CopyState::kQueued && q->copy(tier).pins > 0;
  });
  if (need_reserve && unevictable_bytes(tier, nullptr) + b->charge > budget(tier)) {
    ++stats_.budget_refusals;
    return budget_error(tier, *b, "now");
  }

  ++stats_.acquires;
  if (current || (access == Access::kOverwrite && c.state == CopyState::kValid)) {
    ++stats_.hits;
  } else if (c.state == CopyState::kLoading || c.state == CopyState::kQueued) {
    ++stats_.in_flight_hits;
  } else {
    ++stats_.misses;
    STRATA_LOG(kTrace) << "tier manager: miss: block '" << b->name << "' in " << tier_name(tier) << " ("
                       << access_name(access) << ")";
  }
  observe(*b, tier, access);

  auto p = std::make_shared<PinState>();
  p->id = id;
  p->tier = tier;
  p->access = access;
  p->bytes = b->bytes;
  ++c.pins;
  if (access == Access::kRead) {
    ++b->read_pins;
  } else {
    ++b->write_pins;
  }
  c.last_use = ++tick_;
  c.prefetched_unused = false;
  c.evicting = false;  // a pin arriving during a write-back keeps the copy
  c.waiters.push_back(p);

  if (need_reserve) {
    Reserve r;
    if (!queue_behind) r = try_reserve(tier, b->charge, kNoUse, /*all_or_nothing=*/false);
    if (r.reserved) {
      c.charged = true;
      start_load(*b, tier, /*prefetch=*/false, access != Access::kOverwrite);
    } else {
      c.state = CopyState::kQueued;
      c.queued_content = access != Access::kOverwrite;
      pending_.emplace_back(id, tier);
      ++stats_.queued_requests;
      if (!queue_behind && !r.progress) process_pending();  // fails it with the budget message
    }
  } else if (need_load) {
    start_load(*b, tier, /*prefetch=*/false, true);
  }
  update_waiters(*b);
  issue_prefetches();
  return Pin(this, std::move(p));
}

Status TierManager::prefetch(BlockId id, Tier tier) {
  std::lock_guard lk(mu_);
  Block* b = lookup(id);
  if (b == nullptr) return not_found("prefetch: block id " + std::to_string(id.value) + " is not registered (dropped?)");
  STRATA_RETURN_IF_ERROR(check_tier(*b, tier, "prefetch"));
  Copy& c = b->copy(tier);
  if (is_current(*b, tier) || c.state == CopyState::kLoading || c.state == CopyState::kQueued) return Status::OK();
  if (b->write_pins > 0) return Status::OK();
  if (c.state == CopyState::kValid) {  // stale home copy
    start_load(*b, tier, /*prefetch=*/true, true);
    return Status::OK();
  }
  // A hint evicts nothing: with a trace, only copies needed after this one; without, none.
  const std::size_t d = trace_.replaying() ? next_use(*b, tier) : kNoUse;
  if (d == kNoUse) {
    TierUsage& u = stats_.tiers[static_cast<std::size_t>(ti(tier))];
    if (u.used + b->charge > budget(tier)) return Status::OK();
    charge(tier, b->charge);
  } else {
    Reserve r = try_reserve(tier, b->charge, d, /*all_or_nothing=*/true);
    if (!r.reserved) return Status::OK();
  }
  c.charged = true;
  start_load(*b, tier, /*prefetch=*/true, true);
  return Status::OK();
}

void TierManager::observe(Block& b, Tier t, Access access) {
  if (!options_.tracing) return;
  auto d = trace_.observe(TraceEntry{b.id.value, t, access});
  if (!d) return;
  auto describe = [&](const std::optional<TraceEntry>& e) {
    if (!e) return std::string(d->expected ? "the step to end" : "no more accesses in the step");
    const Block* x = lookup(BlockId{e->block});
    return "block '" + (x ? x->name : std::string("(dropped)")) + "' in " + std::string(tier_name(e->tier)) + " (" +
           std::string(access_name(e->access)) + ")";
  };
  STRATA_LOG(kInfo) << "tier manager: the access order changed at access " << d->position << " of step "
                    << stats_.steps << ": the trace expected " << describe(d->expected) << ", the step used "
                    << describe(d->got) << "; dropped the trace of " << d->dropped_length
                    << " accesses and recording the order again";
}

void TierManager::end_step() {
  std::lock_guard lk(mu_);
  ++stats_.steps;
  if (!options_.tracing) return;
  const std::uint64_t before = trace_.recordings();
  auto d = trace_.end_step();
  if (d) {
    STRATA_LOG(kInfo) << "tier manager: step " << stats_.steps - 1 << " ended after " << d->position
                      << " accesses, the trace has " << d->dropped_length
                      << "; dropped the trace and keeping this step's order as the new one";
  }
  if (trace_.recordings() > before) {
    STRATA_LOG(kDebug) << "tier manager: recorded an access trace of " << trace_.size() << " accesses";
  }
  issue_prefetches();
}

void TierManager::restart_trace() {
  std::lock_guard lk(mu_);
  trace_.reset();
}

void TierManager::issue_prefetches() {
  if (!options_.tracing || options_.prefetch_bytes == 0 || !trace_.replaying()) return;
  const std::size_t n = trace_.size();
  std::uint64_t window = 0;
  std::array<bool, kTierCount> stop{};
  std::array<std::optional<std::uint64_t>, kTierCount> live{};
  auto live_bytes = [&](Tier t) -> std::uint64_t& {
    auto& l = live[static_cast<std::size_t>(ti(t))];
    if (!l) {
      std::uint64_t sum = 0;
      for (const Block* b : live_) {
        const Copy& c = b->copy(t);
        if (c.home) continue;
        if (c.pins > 0 || c.state == CopyState::kLoading || c.state == CopyState::kQueued || c.prefetched_unused) sum += b->charge;
      }
      l = sum;
    }
    return *l;
  };
  auto pending_demand = [&](Tier t) {
    for (const auto& [id, tier] : pending_) {
      if (tier != t) continue;
      const Block* q = lookup(id);
      if (q != nullptr && q->copy(t).state == CopyState::kQueued && q->copy(t).pins > 0) return true;
    }
    return false;
  };
  std::vector<std::pair<std::uint64_t, Tier>> seen;
  for (std::size_t ahead = 0; ahead < n; ++ahead) {
    const TraceEntry& e = trace_.upcoming(ahead);
    if (std::find(seen.begin(), seen.end(), std::make_pair(e.block, e.tier)) != seen.end()) continue;
    seen.emplace_back(e.block, e.tier);
    Block* b = lookup(BlockId{e.block});
    if (b == nullptr) continue;
    window += b->charge;
    if (window > options_.prefetch_bytes) break;
    const Tier t = e.tier;
    if (stop[static_cast<std::size_t>(ti(t))] || e.access == Access::kOverwrite) continue;
    Copy& c = b->copy(t);
    if (is_current(*b, t) || c.state == CopyState::kLoading || c.state == CopyState::kQueued) continue;
    if (b->write_pins > 0) continue;
    if (pending_demand(t)) {
      stop[static_cast<std::size_t>(ti(t))] = true;
      continue;
    }
    if (options_.max_live_bytes != 0 && live_bytes(t) + b->charge > options_.max_live_bytes) {
      stop[static_cast<std::size_t>(ti(t))] = true;
      continue;
    }
    if (c.state == CopyState::kValid) {  // stale home copy: refresh it, no room needed
      start_load(*b, t, /*prefetch=*/true, true);
      continue;
    }
    Reserve r = try_reserve(t, b->charge, ahead, /*all_or_nothing=*/true);
    if (r.reserved) {
      c.charged = true;
      start_load(*b, t, /*prefetch=*/true, true);
      live_bytes(t) += b->charge;
    } else {
      STRATA_LOG(kTrace) << "tier manager: prefetch of block '" << b->name << "' into " << tier_name(t)
                         << (r.progress ? " waits for write-backs" : " finds no copy used later to evict");
      if (r.progress) {  // write-backs of later-needed copies are under way: wait for them
        c.state = CopyState::kQueued;
        c.queued_content = true;
        pending_.emplace_back(b->id, t);
      }
      stop[static_cast<std::size_t>(ti(t))] = true;
    }
  }
}

void TierManager::release_pin(PinState& p) {
  std::lock_guard lk(mu_);
  if (!p.counted) return;
  Block* b = lookup(p.id);
  p.counted = false;
  if (b == nullptr) return;  // cannot happen: drop() refuses pinned blocks
  Copy& c = b->copy(p.tier);
  --c.pins;
  if (p.access == Access::kRead) {
    --b->read_pins;
  } else {
    --b->write_pins;
  }
  c.last_use = ++tick_;
  auto w = std::find_if(c.waiters.begin(), c.waiters.end(), [&](const auto& q) { return q.get() == &p; });
  if (w != c.waiters.end()) c.waiters.erase(w);
  if (c.pins == 0) {
    if (c.state == CopyState::kQueued) c.state = CopyState::kAbsent;  // nobody wants it any more
    if (!c.home && c.state == CopyState::kValid && c.version != b->version && c.readers == 0 && !c.evicting) {
      free_copy(*b, p.tier);
    }
  }
  // A released write pin lets transfers of this block start again; a released copy may be
  // the room a queued request waits for.
  update_waiters(*b);
  process_pending();
  ready_cv_.notify_all();
}

Status TierManager::wait_pin(PinState& p) {
  std::unique_lock lk(mu_);
  if (!p.ready) {
    const auto t0 = Clock::now();
    ready_cv_.wait(lk, [&] { return p.ready; });
    ++stats_.stalls;
    stats_.stall_ns += static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
  }
  return p.error;
}

bool TierManager::pin_ready(const PinState& p) const {
  std::lock_guard lk(mu_);
  return p.ready;
}

std::span<std::byte> TierManager::pin_host_bytes(const PinState& p) const {
  std::lock_guard lk(mu_);
  return p.ready && p.error.ok() ? p.host : std::span<std::byte>{};
}

DeviceRange TierManager::pin_device_range(const PinState& p) const {
  std::lock_guard lk(mu_);
  return p.ready && p.error.ok() ? p.device : DeviceRange{};
}

Status TierManager::mark_dirty(PinState& p) {
  std::lock_guard lk(mu_);
  if (!p.counted || !p.ready || !p.error.ok()) {
    return failed_precondition("mark_dirty: the pin is not ready (wait() first) or its load failed");
  }
  Block* b = lookup(p.id);
  if (b == nullptr) return internal_error("mark_dirty: a pinned block is not registered");
  if (p.access == Access::kRead) {
    return failed_precondition("mark_dirty on block '" + b->name + "': the pin is for reading; acquire it with Access::kWrite");
  }
  Copy& c = b->copy(p.tier);
  b->version += 1;
  c.version = b->version;
  drop_stale_copies(*b, p.tier);
  process_pending();
  return Status::OK();
}

void TierManager::drop_stale_copies(Block& b, Tier keep) {
  for (Tier o : {Tier::kDevice, Tier::kHost}) {
    if (o == keep) continue;
    Copy& oc = b.copy(o);
    if (!oc.home && oc.state == CopyState::kValid && oc.version != b.version && oc.pins == 0 && oc.readers == 0 &&
        !oc.evicting) {
      free_copy(b, o);
    }
  }
}

void TierManager::update_waiters(Block& b) {
  for (Tier t : {Tier::kDevice, Tier::kHost}) {
    Copy& c = b.copy(t);
    if (c.waiters.empty() || c.state != CopyState::kValid) continue;
    std::vector<std::shared_ptr<PinState>> still;
    std::vector<std::shared_ptr<PinState>> now;
    for (auto& p : c.waiters) {
      const bool content_ok = c.version == b.version || p->access == Access::kOverwrite;
      const bool exclusive_ok = p->access == Access::kRead || b.transfers == 0;
      (content_ok && exclusive_ok ? now : still).push_back(p);
    }
    c.waiters = std::move(still);
    for (auto& p : now) make_ready(b, t, *p);
  }
}

void TierManager::make_ready(Block& b, Tier t, PinState& p) {
  Copy& c = b.copy(t);
  if (t == Tier::kHost) {
    p.host = c.host_mem.bytes().first(b.bytes);
  } else {
    auto r = c.device_mem.range(0, b.bytes);
    p.device = r.ok() ? *r : DeviceRange{};
  }
  if (p.access == Access::kOverwrite) {
    b.version += 1;
    c.version = b.version;
    drop_stale_copies(b, t);
  }
  p.ready = true;
  ready_cv_.notify_all();
}

// ---------------------------------------------------------------------------------------------
// Transfers

bool TierManager::start_load(Block& b, Tier t, bool prefetch, bool content) {
  Copy& c = b.copy(t);
  auto x = std::make_unique<Xfer>();
  x->b = &b;
  x->dst = t;
  x->prefetch = prefetch;
  x->version = b.version;
  x->alloc_dst = !c.home && !c.device_mem && !c.host_mem;
  if (!content) {
    x->route = Route::kAlloc;
  } else if (t == Tier::kDevice) {
    if (is_current(b, Tier::kHost)) {
      x->route = Route::kHostToDevice;
      x->src = Tier::kHost;
      x->reads_copy = true;
    } else if (b.home == Tier::kNvme && home_version(b) == b.version) {
      x->route = b.version == 0 ? Route::kZero : Route::kNvmeToDevice;
    } else {
      x->error = internal_error("no current copy of block '" + b.name + "' to load into device memory");
    }
  } else {
    if (is_current(b, Tier::kDevice)) {
      x->route = Route::kDeviceToHost;
      x->src = Tier::kDevice;
      x->reads_copy = true;
    } else if (b.home == Tier::kNvme && home_version(b) == b.version) {
      x->route = b.version == 0 ? Route::kZero : Route::kNvmeToHost;
    } else {
      x->error = internal_error("no current copy of block '" + b.name + "' to load into host memory");
    }
  }
  if (x->route == Route::kNvmeToDevice || x->route == Route::kNvmeToHost) x->chunks = b.slots.size();
  c.state = CopyState::kLoading;
  c.prefetched_unused = prefetch && c.pins == 0;
  if (prefetch) c.last_use = ++tick_;
  if (prefetch) {
    ++stats_.prefetches;
    stats_.prefetch_bytes += b.bytes;
  }
  if (x->reads_copy) {
    // A copy being written back for eviction may be the only current one: reading it cancels
    // the eviction (the room it promised is looked for again when this load completes).
    Copy& s = b.copy(x->src);
    ++s.readers;
    s.evicting = false;
  }
  ++b.transfers;
  launch(std::move(x));
  return true;
}

void TierManager::start_write_back(Block& b, Tier from, bool evicting) {
  Copy& s = b.copy(from);
  auto x = std::make_unique<Xfer>();
  x->b = &b;
  x->src = from;
  x->reads_copy = true;
  x->write_back = true;
  x->evicting = evicting;
  x->version = s.version;
  if (b.home == Tier::kHost) {
    x->route = Route::kDeviceToHost;  // into the home copy
    x->dst = Tier::kHost;
    b.copy(Tier::kHost).state = CopyState::kLoading;
  } else {
    x->route = from == Tier::kHost ? Route::kHostToNvme : Route::kDeviceToNvme;
    x->dst = Tier::kNvme;
    x->chunks = b.slots.size();
    b.nvme_busy = true;
  }
  ++s.readers;
  if (evicting) s.evicting = true;
  ++b.transfers;
  ++write_backs_in_flight_;
  launch(std::move(x));
}

void TierManager::launch(std::unique_ptr<Xfer> x) {
  Xfer* raw = x.get();
  xfers_.push_back(std::move(x));
  post([this, raw] { run_xfer(raw); });
}

void TierManager::run_xfer(Xfer* x) {
  Block& b = *x->b;
  if (!x->error.ok()) {  // decided impossible when it was created
    std::lock_guard lk(mu_);
    complete(*x);
    return;
  }
  if (x->alloc_dst) {
    DeviceBuffer dmem;
    PinnedBuffer hmem;
    Status st;
    if (x->dst == Tier::kDevice) {
      auto r = device_.allocate(b.charge);
      if (r.ok()) dmem = std::move(r).value(); else st = r.status();
    } else {
      auto r = device_.allocate_pinned(b.charge);
      if (r.ok()) hmem = std::move(r).value(); else st = r.status();
    }
    std::lock_guard lk(mu_);
    if (!st.ok()) {
      // The budget allowed it but the allocator did not (fragmentation, or the OS): free a
      // clean unpinned copy of the tier and try again after that free; else give up.
      Block* victim = nullptr;
      std::uint64_t oldest = std::numeric_limits<std::uint64_t>::max();
      for (Block* v : live_) {
        if (v != &b && evictable(*v, x->dst) && !needs_write_back(*v, x->dst) && v->copy(x->dst).last_use < oldest) {
          victim = v;
          oldest = v->copy(x->dst).last_use;
        }
      }
      if (victim != nullptr) {
        ++stats_.tiers[static_cast<std::size_t>(ti(x->dst))].evictions;
        free_copy(*victim, x->dst);
        post([this, x] { run_xfer(x); });
        return;
      }
      x->error = st.with_context("allocating " + std::string(tier_name(x->dst)) + " memory for block '" + b.name + "'");
      complete(*x);
      return;
    }
    Copy& c = b.copy(x->dst);
    c.device_mem = std::move(dmem);
    c.host_mem = std::move(hmem);
    x->alloc_dst = false;
  }
  {
    std::lock_guard lk(mu_);
    auto capture = [&](Tier t, std::span<std::byte>& host, DeviceRange& dev) {
      if (t == Tier::kNvme) return;
      Copy& c = b.copy(t);
      if (t == Tier::kHost) {
        host = c.host_mem.bytes().first(b.bytes);
      } else {
        auto r = c.device_mem.range(0, b.bytes);
        if (r.ok()) dev = *r;
      }
    };
    if (x->reads_copy) capture(x->src, x->src_host, x->src_dev);
    capture(x->dst, x->dst_host, x->dst_dev);
    if (x->route == Route::kZero && x->dst == Tier::kDevice) x->zero_view = b.copy(Tier::kDevice).device_mem.view(DType::kF32);
    if (x->route == Route::kAlloc) {
      x->started = x->finished = 1;
      complete(*x);
      return;
    }
  }
  Status st;
  switch (x->route) {
    case Route::kAlloc:
      return;
    case Route::kZero:
      ++x->started;
      if (x->dst == Tier::kHost) {
        std::memset(x->dst_host.data(), 0, x->dst_host.size());
        chunk_done(x, Status::OK(), -1);
        return;
      }
      st = device_.fill(x->zero_view, 0.0f, *h2d_);
      if (st.ok()) st = h2d_->launch_host_func([this, x] { chunk_done(x, Status::OK(), -1); });
      break;
    case Route::kHostToDevice:
      ++x->started;
      st = device_.copy_to_device(x->dst_dev, x->src_host, *h2d_);
      if (st.ok()) st = h2d_->launch_host_func([this, x] { chunk_done(x, Status::OK(), -1); });
      break;
    case Route::kDeviceToHost:
      ++x->started;
      st = device_.copy_to_host(x->dst_host, x->src_dev, *d2h_);
      if (st.ok()) st = d2h_->launch_host_func([this, x] { chunk_done(x, Status::OK(), -1); });
      break;
    case Route::kNvmeToHost:
    case Route::kHostToNvme:
    case Route::kNvmeToDevice:
    case Route::kDeviceToNvme:
      run_chunks(x, /*resumed=*/false);
      return;
  }
  if (!st.ok()) {
    // Nothing was enqueued, or the completion callback could not be; wait for the stream so
    // that no copy still uses the memory, then fail the transfer.
    Stream& s = x->route == Route::kDeviceToHost ? *d2h_ : *h2d_;
    s.synchronize().ignore();
    chunk_done(x, st.with_context("block '" + b.name + "'"), -1);
  }
}

void TierManager::run_chunks(Xfer* x, bool resumed) {
  const std::uint64_t cs = options_.staging_buffer_size;
  const std::uint64_t total = x->b->bytes;
  auto chunk_len = [&](std::size_t k) { return std::min<std::uint64_t>(cs, total - k * cs); };
  if (x->route == Route::kNvmeToHost || x->route == Route::kHostToNvme) {
    // The pinned copy is the I/O buffer: every chunk at once, no staging.
    std::size_t n;
    {
      std::lock_guard lk(mu_);
      n = x->chunks;
      x->started = n;
    }
    for (std::size_t k = 0; k < n; ++k) {
      const std::uint64_t off = k * cs;
      const nvme::SwapSlot slot = x->b->slots[k];
      auto then = [this, x](Status st) {
        chunk_done(x, st, -1);
        return st;
      };
      Result<std::shared_ptr<nvme::IoCompletion>> r =
          x->route == Route::kNvmeToHost ? swap_->read(slot, x->dst_host.subspan(off, chunk_len(k)), then)
                                         : swap_->write(slot, x->src_host.subspan(off, chunk_len(k)), then);
      if (!r.ok()) chunk_done(x, r.status(), -1);
    }
    return;
  }
  // Staged: one staging buffer per chunk in flight.
  std::vector<std::pair<std::size_t, int>> go;
  {
    std::lock_guard lk(mu_);
    if (resumed) --x->pending_runs;
    x->waiting_for_staging = false;
    if (!x->error.ok()) {  // a chunk failed while it waited: finish with what is in flight
      maybe_complete(*x);
      return;
    }
    while (x->started < x->chunks) {
      const int buf = staging_.take();
      if (buf < 0) {
        x->waiting_for_staging = true;
        staging_waiters_.push_back(x);
        ++stats_.staging_waits;
        break;
      }
      go.emplace_back(x->started++, buf);
    }
  }
  for (auto [k, buf] : go) run_staged_chunk(x, k, buf);
}

void TierManager::run_staged_chunk(Xfer* x, std::size_t k, int buf) {
  const std::uint64_t cs = options_.staging_buffer_size;
  const std::uint64_t off = k * cs;
  const std::uint64_t len = std::min<std::uint64_t>(cs, x->b->bytes - off);
  std::span<std::byte> stage = staging_.bytes(buf).first(len);
  const nvme::SwapSlot slot = x->b->slots[k];
  if (x->route == Route::kNvmeToDevice) {
    auto r = swap_->read(slot, stage, [this, x, off, len, stage, buf](Status st) {
      if (!st.ok()) {
        chunk_done(x, st, buf);
        return st;
      }
      std::lock_guard lk(mu_);
      post([this, x, off, len, stage, buf] {
        Status s;
        auto dst = x->dst_dev.subrange(off, len);
        if (!dst.ok()) {
          s = dst.status();
        } else {
          s = device_.copy_to_device(*dst, stage, *h2d_);
          if (s.ok()) s = h2d_->launch_host_func([this, x, buf] { chunk_done(x, Status::OK(), buf); });
          if (!s.ok()) h2d_->synchronize().ignore();
        }
        if (!s.ok()) chunk_done(x, s.with_context("block '" + x->b->name + "'"), buf);
      });
      return st;
    });
    if (!r.ok()) chunk_done(x, r.status(), buf);
    return;
  }
  // kDeviceToNvme: device -> staging buffer, then the buffer -> its slot.
  Status s;
  auto src = x->src_dev.subrange(off, len);
  if (!src.ok()) {
    s = src.status();
  } else {
    s = device_.copy_to_host(stage, *src, *d2h_);
    if (s.ok()) {
      s = d2h_->launch_host_func([this, x, slot, stage, buf] {
        std::lock_guard lk(mu_);
        post([this, x, slot, stage, buf] {
          auto r = swap_->write(slot, stage, [this, x, buf](Status st) {
            chunk_done(x, st, buf);
            return st;
          });
          if (!r.ok()) chunk_done(x, r.status(), buf);
        });
      });
    }
    if (!s.ok()) d2h_->synchronize().ignore();
  }
  if (!s.ok()) chunk_done(x, s.with_context("block '" + x->b->name + "'"), buf);
}

void TierManager::chunk_done(Xfer* x, const Status& status, int buffer) {
  std::lock_guard lk(mu_);
  finish_chunk(*x, status, buffer);
}

void TierManager::finish_chunk(Xfer& x, const Status& status, int buffer) {
  if (buffer >= 0) {
    staging_.give_back(buffer);
    ++stats_.staged_chunks;
    if (!staging_waiters_.empty()) {
      Xfer* w = staging_waiters_.front();
      staging_waiters_.pop_front();
      w->waiting_for_staging = false;
      ++w->pending_runs;
      post([this, w] { run_chunks(w, /*resumed=*/true); });
    }
  }
  if (!status.ok() && x.error.ok()) x.error = status;
  ++x.finished;
  maybe_complete(x);
}

void TierManager::maybe_complete(Xfer& x) {
  if (x.pending_runs == 0 && x.finished == x.started && (x.started == x.chunks || !x.error.ok())) complete(x);
}

void TierManager::complete(Xfer& x) {
  Block& b = *x.b;
  const bool ok = x.error.ok();
  --b.transfers;
  if (x.reads_copy) --b.copy(x.src).readers;
  if (x.waiting_for_staging) {
    auto it = std::find(staging_waiters_.begin(), staging_waiters_.end(), &x);
    if (it != staging_waiters_.end()) staging_waiters_.erase(it);
  }
  const std::string what = x.write_back ? "write-back of block '" + b.name + "' from " + std::string(tier_name(x.src)) +
                                              " to " + std::string(tier_name(b.home))
                                        : "load of block '" + b.name + "' into " + std::string(tier_name(x.dst));

  if (x.dst != Tier::kNvme) {
    Copy& c = b.copy(x.dst);
    if (ok) {
      c.state = CopyState::kValid;
      c.version = x.version;
      if (x.route == Route::kZero) {
        ++stats_.zero_fills;
      } else if (x.route != Route::kAlloc) {
        stats_.bytes_moved[static_cast<std::size_t>(ti(x.src))][static_cast<std::size_t>(ti(x.dst))] += b.bytes;
      }
      if (c.version != b.version) {
        // Cannot happen while write pins wait for transfers; kept so that no waiter can hang.
        if (!c.waiters.empty()) {
          start_load(b, x.dst, /*prefetch=*/false, true);
        } else if (c.pins == 0 && !c.home) {
          free_copy(b, x.dst);
        }
      }
    } else if (c.home) {
      c.state = CopyState::kValid;
      c.version = kInvalidVersion;  // partly overwritten; the newest bytes are still at the source
    } else {
      free_copy(b, x.dst);
    }
    if (!ok && !x.write_back) ++stats_.load_failures;
    if (!ok) fail_waiters(b, x.dst, x.error.with_context(what));
  } else {
    b.nvme_busy = false;
    b.nvme_version = ok ? x.version : kInvalidVersion;  // a failed write leaves the slots unreadable
  }

  if (x.write_back) {
    --write_backs_in_flight_;
    Copy& s = b.copy(x.src);
    TierUsage& u = stats_.tiers[static_cast<std::size_t>(ti(x.src))];
    if (ok) {
      ++u.write_backs;
      u.write_back_bytes += b.bytes;
      if (x.dst == Tier::kNvme) stats_.bytes_moved[static_cast<std::size_t>(ti(x.src))][ti(Tier::kNvme)] += b.bytes;
      if (s.evicting && s.pins == 0 && s.readers == 0) {
        ++u.evictions;
        free_copy(b, x.src);
      } else if (!s.home && s.pins == 0 && s.readers == 0 && s.version != b.version) {
        free_copy(b, x.src);  // became stale meanwhile
      }
      s.evicting = false;
    } else {
      ++stats_.write_back_failures;
      s.evicting = false;  // the copy stays, dirty, where it was
      last_write_back_error_ = x.error.with_context(what + " (the block stays dirty in " + std::string(tier_name(x.src)) + ")");
      STRATA_LOG(kWarn) << "tier manager: " << last_write_back_error_;
      // Requests waiting for this room would only pick the same victim again: fail them.
      for (auto& [id, t] : pending_) {
        if (t != x.src) continue;
        Block* q = lookup(id);
        if (q == nullptr || q->copy(t).state != CopyState::kQueued) continue;
        q->copy(t).state = CopyState::kAbsent;
        if (q->copy(t).pins > 0) {
          fail_waiters(*q, t, last_write_back_error_.with_context("making room for block '" + q->name + "' in " +
                                                                  std::string(tier_name(t))));
        }
      }
    }
  }

  update_waiters(b);
  destroy_if_dead(b);
  auto it = std::find_if(xfers_.begin(), xfers_.end(), [&](const auto& p) { return p.get() == &x; });
  std::unique_ptr<Xfer> done = std::move(*it);
  xfers_.erase(it);
  process_pending();
  ready_cv_.notify_all();
}

// ---------------------------------------------------------------------------------------------
// Flush, statistics

Status TierManager::flush() {
  std::unique_lock lk(mu_);
  for (const Block* b : live_) {
    if (b->write_pins > 0) {
      return failed_precondition("flush: block '" + b->name + "' is pinned for writing; release write pins first");
    }
  }
  const std::uint64_t failures_before = stats_.write_back_failures;
  for (;;) {
    std::vector<BlockId> busy;
    for (Block* b : live_) {
      if (home_version(*b) == b->version) continue;
      if (b->transfers > 0) {  // look again when they finish
        busy.push_back(b->id);
        continue;
      }
      Tier from = Tier::kNvme;
      for (Tier t : {Tier::kHost, Tier::kDevice}) {  // host -> nvme needs no staging
        if (!b->copy(t).home && is_current(*b, t)) {
          from = t;
          break;
        }
      }
      if (from == Tier::kNvme) {
        return internal_error("flush: block '" + b->name + "' is dirty but no copy holds its newest bytes");
      }
      start_write_back(*b, from, /*evicting=*/false);
      busy.push_back(b->id);
    }
    if (busy.empty()) break;
    ready_cv_.wait(lk, [&] {
      for (BlockId id : busy) {
        const Block* b = lookup(id);
        if (b != nullptr && b->transfers > 0) return false;
      }
      return true;
    });
    if (stats_.write_back_failures > failures_before) return last_write_back_error_.with_context("flush");
  }
  lk.unlock();
  STRATA_RETURN_IF_ERROR(h2d_->synchronize().with_context("flush: device stream tiers.h2d"));
  STRATA_RETURN_IF_ERROR(d2h_->synchronize().with_context("flush: device stream tiers.d2h"));
  return Status::OK();
}

TierStats TierManager::stats() const {
  std::lock_guard lk(mu_);
  TierStats s = stats_;
  s.trace_length = trace_.size();
  s.trace_recordings = trace_.recordings();
  s.trace_divergences = trace_.divergences();
  s.blocks = live_.size();
  s.pinned_copies = 0;
  for (const Block* b : live_) {
    for (const Copy& c : b->copies) s.pinned_copies += c.pins > 0 ? 1 : 0;
  }
  return s;
}

Result<BlockInfo> TierManager::info(BlockId id) const {
  std::lock_guard lk(mu_);
  const Block* b = lookup(id);
  if (b == nullptr) return not_found("info: block id " + std::to_string(id.value) + " is not registered (dropped?)");
  BlockInfo i;
  i.name = b->name;
  i.bytes = b->bytes;
  i.home = b->home;
  for (Tier t : {Tier::kDevice, Tier::kHost, Tier::kNvme}) {
    i.current[static_cast<std::size_t>(ti(t))] = (t != Tier::kNvme || b->home == Tier::kNvme) && is_current(*b, t);
    if (t != Tier::kNvme) {
      i.cached[static_cast<std::size_t>(ti(t))] = b->copy(t).state == CopyState::kValid || b->copy(t).state == CopyState::kLoading;
    }
  }
  i.cached[ti(Tier::kNvme)] = b->home == Tier::kNvme;
  i.dirty = home_version(*b) != b->version;
  i.pins = b->read_pins + b->write_pins;
  i.transfers = b->transfers;
  return i;
}

}  // namespace strata::offload
