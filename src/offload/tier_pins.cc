// The tier manager's pins (src/offload/tier_manager.h): Pin and PinState — take, wait, mark
// dirty, release, ready, fail. Their ordering with streams is in tier_pin_streams.cc.
#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "offload/tier_manager.h"
#include "offload/tier_manager_internal.h"

namespace strata::offload {

namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

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
// Taking and releasing pins (mu_ held unless the function takes it)

Status TierManager::check_pin_conflict(const Block& b, Access access) const {
  if (access == Access::kRead && b.write_pins > 0) {
    return failed_precondition("acquire block '" + b.name + "' for reading: it is pinned for writing, and a writer excludes every other pin");
  }
  if (access != Access::kRead && b.read_pins + b.write_pins > 0) {
    return failed_precondition("acquire block '" + b.name + "' for " + std::string(access_name(access)) + ": it has " +
                               std::to_string(b.read_pins + b.write_pins) +
                               " pin(s); a write pin must be the only pin of its block");
  }
  return Status::OK();
}

std::shared_ptr<PinState> TierManager::add_pin(Block& b, Tier tier, Access access) {
  Copy& c = b.copy(tier);
  auto p = std::make_shared<PinState>();
  p->id = b.id;
  p->tier = tier;
  p->access = access;
  p->bytes = b.bytes;
  totals_->add_pin(b, tier);
  if (access == Access::kRead) {
    ++b.read_pins;
  } else {
    ++b.write_pins;
  }
  c.last_use = ++tick_;
  totals_->set_prefetched_unused(b, tier, false);
  totals_->set_evicting(b, tier, false);  // a pin arriving during a write-back keeps the copy
  c.waiters.push_back(p);
  return p;
}

void TierManager::uncount_pin(Block& b, PinState& p) {
  p.counted = false;
  totals_->remove_pin(b, p.tier);
  if (p.access == Access::kRead) {
    --b.read_pins;
  } else {
    --b.write_pins;
  }
}

void TierManager::release_pin(PinState& p) {
  std::lock_guard lk(mu_);
  release_pin_locked(p);
}

void TierManager::release_pin_locked(PinState& p) {
  if (!p.counted) return;
  Block* b = lookup(p.id);
  if (b == nullptr) {  // cannot happen: drop() refuses pinned blocks
    p.counted = false;
    return;
  }
  if (!p.ready) {
    post_signals(p, failed_precondition("the pin on block '" + b->name + "' was released before its data was ready"));
  }
  uncount_pin(*b, p);
  Copy& c = b->copy(p.tier);
  c.last_use = ++tick_;
  auto w = std::find_if(c.waiters.begin(), c.waiters.end(), [&](const auto& q) { return q.get() == &p; });
  if (w != c.waiters.end()) c.waiters.erase(w);
  if (c.pins() == 0) {
    if (c.state() == CopyState::kQueued) totals_->set_state(*b, p.tier, CopyState::kAbsent);  // nobody wants it any more
    if (!c.home() && c.state() == CopyState::kValid && c.version != b->version && c.readers() == 0 && !c.evicting()) {
      free_copy(*b, p.tier);
    }
  }
  // A released write pin lets transfers of this block start again; a released copy may be
  // the room a queued request waits for.
  update_waiters(*b);
  process_pending();
  ready_cv_.notify_all();
}

// ---------------------------------------------------------------------------------------------
// Using pins (called by Pin; each takes mu_)

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

// ---------------------------------------------------------------------------------------------
// Readying and failing waiting pins (mu_ held)

void TierManager::drop_stale_copies(Block& b, Tier keep) {
  for (Tier o : {Tier::kDevice, Tier::kHost}) {
    if (o == keep) continue;
    Copy& oc = b.copy(o);
    if (!oc.home() && oc.state() == CopyState::kValid && oc.version != b.version && oc.pins() == 0 && oc.readers() == 0 &&
        !oc.evicting()) {
      free_copy(b, o);
    }
  }
}

void TierManager::update_waiters(Block& b) {
  for (Tier t : {Tier::kDevice, Tier::kHost}) {
    Copy& c = b.copy(t);
    if (c.waiters.empty() || c.state() != CopyState::kValid) continue;
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
  post_signals(p, Status::OK());
  ready_cv_.notify_all();
}

void TierManager::fail_waiters(Block& b, Tier t, const Status& status) {
  Copy& c = b.copy(t);
  for (auto& p : c.waiters) {
    p->ready = true;
    p->error = status;
    post_signals(*p, status);
    if (p->counted) uncount_pin(b, *p);
  }
  c.waiters.clear();
  ready_cv_.notify_all();
}

}  // namespace strata::offload
