// The tier manager's space (src/offload/tier_manager.h): charges, reservation, eviction, budget errors, pending queue, host leases.
#include <algorithm>
#include <array>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "offload/tier_manager.h"
#include "offload/tier_manager_internal.h"

namespace strata::offload {

// ---------------------------------------------------------------------------------------------
// Charges and what can be evicted (mu_ held)

void TierManager::charge(Tier t, std::uint64_t bytes) {
  TierUsage& u = stats_.tiers[static_cast<std::size_t>(ti(t))];
  u.used += bytes;
  u.peak = std::max(u.peak, u.used);
}

void TierManager::uncharge(Tier t, std::uint64_t bytes) { stats_.tiers[static_cast<std::size_t>(ti(t))].used -= bytes; }

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
  const std::vector<Block*> cands = eviction_candidates(t, victim_min_distance);
  std::uint64_t picked = 0;
  std::size_t n = 0;
  while (n < cands.size() && picked < need) picked += cands[n++]->charge;
  if (all_or_nothing && picked < need) return r;
  for (std::size_t i = 0; i < n; ++i) evict(*cands[i], t);
  if (used() + bytes <= bud) {
    charge(t, bytes);
    r.reserved = true;
    return r;
  }
  r.progress = n > 0 || releasing > 0 || space_coming(t);
  return r;
}

std::vector<TierManager::Block*> TierManager::eviction_candidates(Tier t, std::size_t victim_min_distance) const {
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
  std::vector<Block*> order;
  order.reserve(cands.size());
  for (const Cand& c : cands) order.push_back(c.b);
  return order;
}

TierManager::Block* TierManager::allocation_victim(const Block& b, Tier t) const {
  Block* victim = nullptr;
  std::uint64_t oldest = std::numeric_limits<std::uint64_t>::max();
  for (Block* v : live_) {
    if (v != &b && evictable(*v, t) && !needs_write_back(*v, t) && v->copy(t).last_use < oldest) {
      victim = v;
      oldest = v->copy(t).last_use;
    }
  }
  return victim;
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

// ---------------------------------------------------------------------------------------------
// Copies waiting for room (mu_ held)

bool TierManager::pinned_requests_queued(Tier t) const {
  return std::any_of(pending_.begin(), pending_.end(), [&](const auto& p) {
    const Block* q = lookup(p.first);
    return p.second == t && q != nullptr && q->copy(t).state == CopyState::kQueued && q->copy(t).pins > 0;
  });
}

void TierManager::reserve_for_pin(Block& b, Tier tier, Access access, bool queue_behind) {
  Copy& c = b.copy(tier);
  Reserve r;
  if (!queue_behind) r = try_reserve(tier, b.charge, kNoUse, /*all_or_nothing=*/false);
  if (r.reserved) {
    c.charged = true;
    start_load(b, tier, /*prefetch=*/false, access != Access::kOverwrite);
    return;
  }
  c.state = CopyState::kQueued;
  c.queued_content = access != Access::kOverwrite;
  pending_.emplace_back(b.id, tier);
  ++stats_.queued_requests;
  if (!queue_behind && !r.progress) process_pending();  // fails it with the budget message
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
    const bool waits = b->copy(t).pins > 0 ? retry_queued_request(*b, t) : retry_queued_prefetch(*b, t);
    if (waits) {
      blocked[static_cast<std::size_t>(ti(t))] = true;
      ++it;
    } else {
      it = pending_.erase(it);
    }
  }
}

bool TierManager::retry_queued_request(Block& b, Tier t) {
  Copy& c = b.copy(t);
  if (unevictable_bytes(t, &b) + b.charge > budget(t)) {
    ++stats_.budget_refusals;
    c.state = CopyState::kAbsent;
    fail_waiters(b, t, budget_error(t, b, "while it waited for room"));
    return false;
  }
  Reserve r = try_reserve(t, b.charge, kNoUse, /*all_or_nothing=*/false);
  if (r.reserved) {
    c.charged = true;
    start_load(b, t, /*prefetch=*/false, c.queued_content);
    return false;
  }
  if (!r.progress) {
    ++stats_.budget_refusals;
    c.state = CopyState::kAbsent;
    fail_waiters(b, t, budget_error(t, b, "and nothing can be evicted"));
    return false;
  }
  return true;
}

bool TierManager::retry_queued_prefetch(Block& b, Tier t) {
  // A queued prefetch: only along the trace, and only by evicting copies needed later.
  Copy& c = b.copy(t);
  const std::size_t d = trace_.replaying() ? next_use(b, t) : kNoUse;
  Reserve r;
  if (d != kNoUse) r = try_reserve(t, b.charge, d, /*all_or_nothing=*/true);
  if (r.reserved) {
    c.charged = true;
    start_load(b, t, /*prefetch=*/true, true);
    return false;
  }
  if (r.progress) return true;
  c.state = CopyState::kAbsent;
  return false;
}

void TierManager::fail_queued(Tier t, const Status& cause) {
  for (auto& [id, tier] : pending_) {
    if (tier != t) continue;
    Block* q = lookup(id);
    if (q == nullptr || q->copy(t).state != CopyState::kQueued) continue;
    q->copy(t).state = CopyState::kAbsent;
    if (q->copy(t).pins > 0) {
      fail_waiters(*q, t, cause.with_context("making room for block '" + q->name + "' in " + std::string(tier_name(t))));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host leases

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

}  // namespace strata::offload
