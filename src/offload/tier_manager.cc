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
//
// The implementation is split by responsibility: this file holds the public API
// (construction, registration, acquire, prefetch, flush, end_step, statistics);
// tier_pins.cc the pins; tier_space.cc budgets, reservation, eviction, the queue of requests
// waiting for room and host leases; tier_transfers.cc the transfers and the dispatcher
// thread; tier_prefetch.cc prefetching along the access trace. The records they share are in
// tier_manager_internal.h.
#include "offload/tier_manager.h"

#include <algorithm>
#include <cstring>
#include <future>
#include <limits>
#include <utility>

#include "nvme/swap_store.h"
#include "offload/tier_manager_internal.h"
#include "strata/log.h"
#include "strata/units.h"

namespace strata::offload {

namespace {

constexpr std::uint64_t kBlockAlignment = 4096;

std::uint64_t round_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

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
  if (swap_ != nullptr) STRATA_RETURN_IF_ERROR(init_nvme());
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

Status TierManager::init_nvme() {
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

// ---------------------------------------------------------------------------------------------
// Registration

Result<BlockId> TierManager::register_block(const BlockSpec& spec) {
  const std::uint64_t charge_bytes = round_up(spec.bytes, kBlockAlignment);
  STRATA_RETURN_IF_ERROR(check_spec(spec, charge_bytes));
  {
    std::unique_lock lk(mu_);
    STRATA_RETURN_IF_ERROR(reserve_home(lk, spec, charge_bytes));
    stats_.tiers[static_cast<std::size_t>(ti(spec.home))].home_bytes += charge_bytes;
  }

  auto b = std::make_unique<Block>();
  b->name = spec.name;
  b->bytes = spec.bytes;
  b->charge = charge_bytes;
  b->home = spec.home;
  b->fastest = spec.fastest;
  b->host_copies = spec.host_copies || spec.home == Tier::kHost;
  const Status st = spec.home == Tier::kNvme ? allocate_slots(*b) : allocate_home_copy(*b);
  if (!st.ok()) {
    std::lock_guard g(mu_);
    uncharge(spec.home, charge_bytes);
    stats_.tiers[static_cast<std::size_t>(ti(spec.home))].home_bytes -= charge_bytes;
    process_pending();
    return st.with_context("register block '" + spec.name + "'");
  }

  std::lock_guard lk(mu_);
  return insert_block(std::move(b));
}

Status TierManager::check_spec(const BlockSpec& spec, std::uint64_t charge_bytes) const {
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
  for (int t = ti(spec.fastest); t <= ti(spec.home); ++t) {
    const Tier tier = static_cast<Tier>(t);
    if (tier == Tier::kHost && !spec.host_copies && spec.home != Tier::kHost) continue;
    if (charge_bytes > budget(tier)) {
      return invalid_argument("register block '" + spec.name + "' (" + human(spec.bytes) + "): larger than the " +
                              std::string(tier_name(tier)) + " budget " + human(budget(tier)) + " (" +
                              budget_key(tier) + "); a block must fit in every tier it is used in: split it or raise the budget");
    }
  }
  return Status::OK();
}

Status TierManager::reserve_home(std::unique_lock<std::mutex>& lk, const BlockSpec& spec, std::uint64_t charge_bytes) {
  if (spec.home == Tier::kNvme) {
    TierUsage& u = stats_.tiers[ti(Tier::kNvme)];
    if (u.used + charge_bytes > budget(Tier::kNvme)) {
      return out_of_space("register block '" + spec.name + "' (" + human(spec.bytes) + ") on nvme: " + human(u.used) +
                          " of the " + human(budget(Tier::kNvme)) + " NVMe budget are taken by other blocks; " +
                          "raise the swap capacity or drop blocks");
    }
    charge(Tier::kNvme, charge_bytes);
    return Status::OK();
  }
  // Home memory is permanent: room comes from evicting cached copies, never from pins.
  for (;;) {
    Block probe;
    probe.name = spec.name;
    probe.charge = charge_bytes;
    if (unevictable_bytes(spec.home, nullptr) + charge_bytes > budget(spec.home)) {
      return budget_error(spec.home, probe, "as its home");
    }
    Reserve r = try_reserve(spec.home, charge_bytes, kNoUse, false);
    if (r.reserved) return Status::OK();
    if (!r.progress) return budget_error(spec.home, probe, "as its home (nothing can be evicted)");
    ready_cv_.wait(lk);
  }
}

Status TierManager::allocate_slots(Block& b) {
  const std::uint64_t cs = options_.staging_buffer_size;
  for (std::uint64_t off = 0; off < b.bytes; off += cs) {
    auto slot = swap_->allocate(std::min(cs, b.bytes - off));
    if (!slot.ok()) {
      for (const nvme::SwapSlot& s : b.slots) swap_->release(s).ignore();
      return slot.status();
    }
    b.slots.push_back(*slot);
  }
  return Status::OK();
}

Status TierManager::allocate_home_copy(Block& b) {
  // Allocations run on the dispatcher so that they follow the frees decided before them.
  Copy& h = b.copy(b.home);
  h.home = true;
  if (b.home == Tier::kDevice) {
    auto task = std::make_shared<std::packaged_task<Result<DeviceBuffer>()>>([&] { return device_.allocate(b.charge); });
    auto fut = task->get_future();
    {
      std::lock_guard g(mu_);
      post([task] { (*task)(); });
    }
    auto mem = fut.get();
    if (!mem.ok()) return mem.status();
    h.device_mem = std::move(mem).value();
    Status st = device_.fill(h.device_mem.view(DType::kF32), 0.0f, *aux_);
    if (st.ok()) st = aux_->synchronize();
    if (!st.ok()) {
      auto holder = std::make_shared<DeviceBuffer>(std::move(h.device_mem));
      {
        std::lock_guard g(mu_);
        post([holder] { holder->reset(); });
      }
      return st;
    }
  } else {
    auto task = std::make_shared<std::packaged_task<Result<PinnedBuffer>()>>([&] { return device_.allocate_pinned(b.charge); });
    auto fut = task->get_future();
    {
      std::lock_guard g(mu_);
      post([task] { (*task)(); });
    }
    auto mem = fut.get();
    if (!mem.ok()) return mem.status();
    h.host_mem = std::move(mem).value();
    std::memset(h.host_mem.data(), 0, h.host_mem.size());
  }
  h.state = CopyState::kValid;
  h.version = 0;
  return Status::OK();
}

BlockId TierManager::insert_block(std::unique_ptr<Block> b) {
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
// Acquire, prefetch

Result<Pin> TierManager::acquire(BlockId id, Tier tier, Access access) {
  std::unique_lock lk(mu_);
  Block* b = lookup(id);
  if (b == nullptr) return not_found("acquire: block id " + std::to_string(id.value) + " is not registered (dropped?)");
  STRATA_RETURN_IF_ERROR(check_tier(*b, tier, "acquire"));
  STRATA_RETURN_IF_ERROR(check_pin_conflict(*b, access));
  Copy& c = b->copy(tier);
  const bool current = is_current(*b, tier);
  const bool need_reserve = c.state == CopyState::kAbsent;
  // A stale home copy (the newest bytes are in a faster tier).
  const bool need_load = c.state == CopyState::kValid && !current && access != Access::kOverwrite;
  const bool queue_behind = need_reserve && pinned_requests_queued(tier);
  if (need_reserve && unevictable_bytes(tier, nullptr) + b->charge > budget(tier)) {
    ++stats_.budget_refusals;
    return budget_error(tier, *b, "now");
  }

  count_acquire(*b, tier, access, current);
  observe(*b, tier, access);
  std::shared_ptr<PinState> p = add_pin(*b, tier, access);
  if (need_reserve) {
    reserve_for_pin(*b, tier, access, queue_behind);
  } else if (need_load) {
    start_load(*b, tier, /*prefetch=*/false, true);
  }
  update_waiters(*b);
  issue_prefetches();
  return Pin(this, std::move(p));
}

void TierManager::count_acquire(const Block& b, Tier tier, Access access, bool current) {
  const Copy& c = b.copy(tier);
  ++stats_.acquires;
  if (current || (access == Access::kOverwrite && c.state == CopyState::kValid)) {
    ++stats_.hits;
  } else if (c.state == CopyState::kLoading || c.state == CopyState::kQueued) {
    ++stats_.in_flight_hits;
  } else {
    ++stats_.misses;
    STRATA_LOG(kTrace) << "tier manager: miss: block '" << b.name << "' in " << tier_name(tier) << " ("
                       << access_name(access) << ")";
  }
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

// ---------------------------------------------------------------------------------------------
// Steps and the trace

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
