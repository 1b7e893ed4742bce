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
// * The totals the hot paths need (pinned, releasing, live, queued and resident copies per
//   tier) are kept by Totals, the only writer of the copy fields they depend on.
//
// The implementation is split by responsibility: this file holds construction, acquire,
// flush and statistics; tier_blocks.cc registration and dropping; tier_pins.cc the pins and
// their ordering with streams; tier_space.cc budgets, reservation, eviction and the queue of
// requests waiting for room; tier_leases.cc host and device leases; tier_transfers.cc the
// transfers and the dispatcher thread; tier_prefetch.cc clients, their traces and
// prefetching along them; tier_totals.cc the per-tier totals. The records they share are in
// tier_manager_internal.h.
#include "offload/tier_manager.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "nvme/swap_store.h"
#include "offload/tier_manager_internal.h"
#include "strata/log.h"
#include "strata/units.h"

namespace strata::offload {

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
    : device_(device), swap_(swap), options_(options), totals_(std::make_unique<Totals>()) {
  auto main = std::make_unique<Client>();
  main->name = "default";
  clients_.push_back(std::move(main));
}

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

  STRATA_RETURN_IF_ERROR(init_streams());
  try {
    dispatcher_ = std::thread([this] { dispatcher_loop(); });
  } catch (const std::exception& e) {
    return internal_error(std::string("tier manager: starting the dispatcher thread failed: ") + e.what());
  }
  return Status::OK();
}

Status TierManager::init_streams() {
  auto h2d = device_.create_stream("tiers.h2d");
  if (!h2d.ok()) return h2d.status().with_context("tier manager");
  h2d_ = std::move(h2d).value();
  auto d2h = device_.create_stream("tiers.d2h");
  if (!d2h.ok()) return d2h.status().with_context("tier manager");
  d2h_ = std::move(d2h).value();
  auto aux = device_.create_stream("tiers.aux");
  if (!aux.ok()) return aux.status().with_context("tier manager");
  aux_ = std::move(aux).value();
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
    ready_cv_.wait(lk, [&] { return xfers_.empty() && deferred_releases_ == 0; });
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
  if (b == nullptr || b->id != id || b->dropped()) return nullptr;
  return b;
}

TierManager::Client* TierManager::lookup(ClientId id) const {
  return id.value < clients_.size() ? clients_[id.value].get() : nullptr;
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
  return h.state() == CopyState::kValid ? h.version : kInvalidVersion;
}

bool TierManager::is_current(const Block& b, Tier t) const {
  if (t == Tier::kNvme) return home_version(b) == b.version;
  const Copy& c = b.copy(t);
  return c.state() == CopyState::kValid && c.version == b.version;
}

bool TierManager::has_other_current(const Block& b, Tier t) const {
  for (Tier o : {Tier::kDevice, Tier::kHost}) {
    if (o != t && is_current(b, o)) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// Acquire

Result<Pin> TierManager::acquire(BlockId id, Tier tier, Access access, ClientId client) {
  std::unique_lock lk(mu_);
  Block* b = lookup(id);
  if (b == nullptr) return not_found("acquire: block id " + std::to_string(id.value) + " is not registered (dropped?)");
  Client* who = lookup(client);
  if (who == nullptr) return not_found("acquire of block '" + b->name + "': client " + std::to_string(client.value) + " is not registered");
  STRATA_RETURN_IF_ERROR(check_tier(*b, tier, "acquire"));
  STRATA_RETURN_IF_ERROR(check_pin_conflict(*b, access));
  Copy& c = b->copy(tier);
  const bool current = is_current(*b, tier);
  const bool need_reserve = c.state() == CopyState::kAbsent;
  // A stale home copy (the newest bytes are in a faster tier).
  const bool need_load = c.state() == CopyState::kValid && !current && access != Access::kOverwrite;
  const bool queue_behind = need_reserve && pinned_requests_queued(tier);
  if (need_reserve && unevictable_bytes(tier, nullptr) + b->charge > budget(tier)) {
    ++stats_.budget_refusals;
    return budget_error(tier, *b, "now");
  }

  count_acquire(*b, tier, access, current, *who);
  observe(*who, *b, tier, access);
  std::shared_ptr<PinState> p = add_pin(*b, tier, access);
  if (need_reserve) {
    reserve_for_pin(*b, tier, access, queue_behind);
  } else if (need_load) {
    start_load(*b, tier, /*prefetch=*/false, true);
  }
  update_waiters(*b);
  issue_prefetches(*who);
  return Pin(this, std::move(p));
}

void TierManager::count_acquire(const Block& b, Tier tier, Access access, bool current, Client& client) {
  const Copy& c = b.copy(tier);
  ++stats_.acquires;
  ++client.acquires;
  if (current || (access == Access::kOverwrite && c.state() == CopyState::kValid)) {
    ++stats_.hits;
    ++client.hits;
  } else if (c.state() == CopyState::kLoading || c.state() == CopyState::kQueued) {
    ++stats_.in_flight_hits;
    ++client.in_flight_hits;
  } else {
    ++stats_.misses;
    ++client.misses;
    STRATA_LOG(kTrace) << "tier manager: miss: block '" << b.name << "' in " << tier_name(tier) << " ("
                       << access_name(access) << ")";
  }
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
        if (!b->copy(t).home() && is_current(*b, t)) {
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
  s.trace_length = 0;
  s.trace_recordings = 0;
  s.trace_divergences = 0;
  for (const auto& c : clients_) {
    s.trace_length += c->trace.size();
    s.trace_recordings += c->trace.recordings();
    s.trace_divergences += c->trace.divergences();
  }
  s.blocks = live_.size();
  s.pinned_copies = totals_->tier(Tier::kDevice).pinned_copies + totals_->tier(Tier::kHost).pinned_copies;
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
      const CopyState cs = b->copy(t).state();
      i.cached[tu(t)] = cs == CopyState::kValid || cs == CopyState::kLoading;
    }
  }
  i.cached[ti(Tier::kNvme)] = b->home == Tier::kNvme;
  i.dirty = home_version(*b) != b->version;
  i.pins = b->read_pins + b->write_pins;
  i.transfers = b->transfers;
  return i;
}

}  // namespace strata::offload
