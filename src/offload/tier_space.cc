// The tier manager's space (src/offload/tier_manager.h): charges, reservation, eviction,
// budget errors and the queue of requests waiting for room.
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
  TierUsage& u = stats_.tiers[tu(t)];
  u.used += bytes;
  u.peak = std::max(u.peak, u.used);
}

void TierManager::uncharge(Tier t, std::uint64_t bytes) { stats_.tiers[tu(t)].used -= bytes; }

bool TierManager::needs_write_back(const Block& b, Tier t) const {
  const Copy& c = b.copy(t);
  return !c.home() && c.version == b.version && home_version(b) != b.version && !has_other_current(b, t);
}

bool TierManager::evictable(const Block& b, Tier t) const {
  const Copy& c = b.copy(t);
  if (c.home() || c.state() != CopyState::kValid || c.pins() > 0 || c.readers() > 0 || c.evicting() || b.dropped()) {
    return false;
  }
  if (needs_write_back(b, t)) {
    if (b.home == Tier::kNvme) return !b.nvme_busy;
    return b.copy(b.home).state() == CopyState::kValid;
  }
  return true;
}

std::uint64_t TierManager::leased_bytes(Tier t) const {
  return t == Tier::kHost ? leased_host_ : t == Tier::kDevice ? leased_device_ : 0;
}

std::uint64_t TierManager::unevictable_bytes(Tier t, const Block* except) const {
  std::uint64_t bytes = stats_.tiers[tu(t)].home_bytes + leased_bytes(t);
  if (t == Tier::kHost) bytes += staging_.total_bytes();
  if (t == Tier::kNvme) return bytes;
  bytes += totals_->tier(t).pinned_bytes;
  if (except != nullptr && (Totals::flags(*except, t) & Totals::kPinnedCached) != 0) bytes -= except->charge;
  return bytes;
}

std::uint64_t TierManager::releasing_bytes(Tier t) const { return totals_->tier(t).releasing_bytes; }

bool TierManager::space_coming(Tier t) const {
  if (totals_->tier(t).coming_copies > 0) return true;
  for (const auto& z : zombies_) {
    if (z->home == t || z->copy(t).state() != CopyState::kAbsent) return true;
  }
  return false;
}

Status TierManager::budget_error(Tier t, const Block& b, std::string_view what) const {
  const std::uint64_t fixed = unevictable_bytes(t, &b);
  std::ostringstream os;
  os << tier_name(t) << " budget " << human(budget(t)) << " (" << budget_key(t) << ") cannot hold block '" << b.name
     << "' (" << human(b.charge) << ") " << what << ": " << budget_holders(t, fixed) << "; release pins"
     << (leased_bytes(t) > 0 ? " or leases" : "") << ", use smaller blocks or raise " << budget_key(t);
  return out_of_memory(os.str());
}

std::string TierManager::budget_holders(Tier t, std::uint64_t fixed) const {
  const std::uint64_t home = stats_.tiers[tu(t)].home_bytes;
  const std::uint64_t pool = t == Tier::kHost ? staging_.total_bytes() : 0;
  const std::uint64_t leased = leased_bytes(t);
  std::ostringstream os;
  os << human(fixed) << " are held by home blocks (" << human(home) << ")";
  if (pool > 0) os << ", the staging pool (" << human(pool) << ")";
  if (leased > 0) os << ", leases (" << human(leased) << ")";
  os << " and pinned copies (" << human(fixed - home - pool - leased) << ")";
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// Space

TierManager::Reserve TierManager::try_reserve(Tier t, std::uint64_t bytes, std::size_t victim_min_distance,
                                               bool all_or_nothing) {
  Reserve r;
  const std::uint64_t bud = budget(t);
  auto used = [&] { return stats_.tiers[tu(t)].used; };
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
  // least recently used first. Ties go to clean copies (no write-back). Only resident copies
  // can be evictable, so only they are looked at; the order does not depend on theirs, since
  // no two copies of a tier share a last use.
  struct Cand {
    Block* b;
    std::size_t distance;
    bool dirty;
    std::uint64_t last_use;
  };
  std::vector<Cand> cands;
  const bool belady = any_trace();
  for (Block* b : totals_->tier(t).resident) {
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
  for (Block* v : totals_->tier(t).resident) {
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
    ++stats_.tiers[tu(t)].evictions;
    free_copy(b, t);
  }
}

void TierManager::free_copy(Block& b, Tier t) {
  Copy& c = b.copy(t);
  if (c.prefetched_unused()) ++stats_.prefetches_unused;
  totals_->set_prefetched_unused(b, t, false);
  totals_->set_state(b, t, CopyState::kAbsent);
  totals_->set_evicting(b, t, false);
  c.version = 0;
  const std::uint64_t charged = c.charged ? b.charge : 0;
  c.charged = false;
  post_free(t, charged, std::move(c.device_mem), std::move(c.host_mem));
}

// ---------------------------------------------------------------------------------------------
// Copies waiting for room (mu_ held)

bool TierManager::pinned_requests_queued(Tier t) const { return totals_->tier(t).queued_pins > 0; }

void TierManager::reserve_for_pin(Block& b, Tier tier, Access access, bool queue_behind) {
  Copy& c = b.copy(tier);
  Reserve r;
  if (!queue_behind) r = try_reserve(tier, b.charge, kNoUse, /*all_or_nothing=*/false);
  if (r.reserved) {
    c.charged = true;
    start_load(b, tier, /*prefetch=*/false, access != Access::kOverwrite);
    return;
  }
  totals_->set_state(b, tier, CopyState::kQueued);
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
    if (b == nullptr || b->copy(t).state() != CopyState::kQueued) {
      it = pending_.erase(it);
      continue;
    }
    if (blocked[tu(t)]) {
      ++it;
      continue;
    }
    const bool waits = b->copy(t).pins() > 0 ? retry_queued_request(*b, t) : retry_queued_prefetch(*b, t);
    if (waits) {
      blocked[tu(t)] = true;
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
    totals_->set_state(b, t, CopyState::kAbsent);
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
    totals_->set_state(b, t, CopyState::kAbsent);
    fail_waiters(b, t, budget_error(t, b, "and nothing can be evicted"));
    return false;
  }
  return true;
}

bool TierManager::retry_queued_prefetch(Block& b, Tier t) {
  // A queued prefetch: only along the trace, and only by evicting copies needed later.
  Copy& c = b.copy(t);
  const std::size_t d = any_trace() ? next_use(b, t) : kNoUse;
  Reserve r;
  if (d != kNoUse) r = try_reserve(t, b.charge, d, /*all_or_nothing=*/true);
  if (r.reserved) {
    c.charged = true;
    start_load(b, t, /*prefetch=*/true, true);
    return false;
  }
  if (r.progress) return true;
  totals_->set_state(b, t, CopyState::kAbsent);
  return false;
}

void TierManager::fail_queued(Tier t, const Status& cause) {
  for (auto& [id, tier] : pending_) {
    if (tier != t) continue;
    Block* q = lookup(id);
    if (q == nullptr || q->copy(t).state() != CopyState::kQueued) continue;
    totals_->set_state(*q, t, CopyState::kAbsent);
    if (q->copy(t).pins() > 0) {
      fail_waiters(*q, t, cause.with_context("making room for block '" + q->name + "' in " + std::string(tier_name(t))));
    }
  }
}

}  // namespace strata::offload
