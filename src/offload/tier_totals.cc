// The tier manager's per-tier totals (tier_manager_internal.h, TierManager::Totals): every
// change of a copy's counted fields, and the totals it moves.
#include <utility>

#include "offload/tier_manager.h"
#include "offload/tier_manager_internal.h"

namespace strata::offload {

unsigned TierManager::Totals::flags(const Block& b, Tier t) {
  if (b.dropped_) return 0;
  const Copy& c = b.copy(t);
  const bool pinned = c.pins_ > 0;
  unsigned f = pinned ? kPinned : 0u;
  if (c.home_) return f;
  if (pinned && c.state_ != CopyState::kAbsent) f |= kPinnedCached;
  if (!pinned && c.evicting_) f |= kReleasing;
  if (!pinned && (c.state_ == CopyState::kLoading || c.readers_ > 0 || c.evicting_)) f |= kComing;
  if (pinned || c.state_ == CopyState::kLoading || c.state_ == CopyState::kQueued || c.prefetched_unused_) f |= kLive;
  if (pinned && c.state_ == CopyState::kQueued) f |= kQueuedPin;
  if (c.state_ == CopyState::kValid) f |= kResident;
  return f;
}

template <typename F>
void TierManager::Totals::edit(Block& b, Tier t, F&& change) {
  const unsigned before = flags(b, t);
  change(b.copy(t));
  apply(b, t, before, flags(b, t));
}

void TierManager::Totals::apply(Block& b, Tier t, unsigned before, unsigned after) {
  if (before == after) return;
  PerTier& p = tiers_[tu(t)];
  auto move = [&](unsigned flag, std::uint64_t& total, std::uint64_t amount) {
    const bool was = (before & flag) != 0;
    const bool is = (after & flag) != 0;
    if (was && !is) total -= amount;
    if (!was && is) total += amount;
  };
  move(kPinned, p.pinned_copies, 1);
  move(kPinnedCached, p.pinned_bytes, b.charge);
  move(kReleasing, p.releasing_bytes, b.charge);
  move(kComing, p.coming_copies, 1);
  move(kLive, p.live_bytes, b.charge);
  move(kQueuedPin, p.queued_pins, 1);
  const bool was_resident = (before & kResident) != 0;
  const bool is_resident = (after & kResident) != 0;
  Copy& c = b.copy(t);
  if (!was_resident && is_resident) {
    c.resident_index_ = p.resident.size();
    p.resident.push_back(&b);
  } else if (was_resident && !is_resident) {
    Block* last = p.resident.back();
    p.resident[c.resident_index_] = last;
    last->copy(t).resident_index_ = c.resident_index_;
    p.resident.pop_back();
    c.resident_index_ = detail::kNotListed;
  }
}

void TierManager::Totals::set_state(Block& b, Tier t, CopyState s) {
  edit(b, t, [&](Copy& c) { c.state_ = s; });
}

void TierManager::Totals::add_pin(Block& b, Tier t) {
  edit(b, t, [](Copy& c) { ++c.pins_; });
}

void TierManager::Totals::remove_pin(Block& b, Tier t) {
  edit(b, t, [](Copy& c) { --c.pins_; });
}

void TierManager::Totals::add_reader(Block& b, Tier t) {
  edit(b, t, [](Copy& c) { ++c.readers_; });
}

void TierManager::Totals::remove_reader(Block& b, Tier t) {
  edit(b, t, [](Copy& c) { --c.readers_; });
}

void TierManager::Totals::set_evicting(Block& b, Tier t, bool evicting) {
  edit(b, t, [&](Copy& c) { c.evicting_ = evicting; });
}

void TierManager::Totals::set_prefetched_unused(Block& b, Tier t, bool unused) {
  edit(b, t, [&](Copy& c) { c.prefetched_unused_ = unused; });
}

void TierManager::Totals::forget(Block& b) {
  const unsigned device = flags(b, Tier::kDevice);
  const unsigned host = flags(b, Tier::kHost);
  b.dropped_ = true;
  apply(b, Tier::kDevice, device, 0);
  apply(b, Tier::kHost, host, 0);
}

void TierManager::Totals::init_home(Copy& c) {
  c.home_ = true;
  c.state_ = CopyState::kValid;
}

}  // namespace strata::offload
