// The tier manager's prefetching (src/offload/tier_manager.h): recording accesses in the trace and loading the next ones along it.
#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "offload/tier_manager.h"
#include "offload/tier_manager_internal.h"
#include "strata/log.h"

namespace strata::offload {

// ---------------------------------------------------------------------------------------------
// Prefetch along the trace (mu_ held)

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

void TierManager::issue_prefetches() {
  if (!options_.tracing || options_.prefetch_bytes == 0 || !trace_.replaying()) return;
  const std::size_t n = trace_.size();
  std::uint64_t window = 0;
  PrefetchPass pass;
  std::vector<std::pair<std::uint64_t, Tier>> seen;
  for (std::size_t ahead = 0; ahead < n; ++ahead) {
    const TraceEntry& e = trace_.upcoming(ahead);
    if (std::find(seen.begin(), seen.end(), std::make_pair(e.block, e.tier)) != seen.end()) continue;
    seen.emplace_back(e.block, e.tier);
    Block* b = lookup(BlockId{e.block});
    if (b == nullptr) continue;
    window += b->charge;
    if (window > options_.prefetch_bytes) break;
    if (pass.stop[static_cast<std::size_t>(ti(e.tier))] || e.access == Access::kOverwrite) continue;
    prefetch_ahead(pass, *b, e.tier, ahead);
  }
}

void TierManager::prefetch_ahead(PrefetchPass& pass, Block& b, Tier t, std::size_t ahead) {
  bool& stop = pass.stop[static_cast<std::size_t>(ti(t))];
  Copy& c = b.copy(t);
  if (is_current(b, t) || c.state == CopyState::kLoading || c.state == CopyState::kQueued) return;
  if (b.write_pins > 0) return;
  if (pinned_requests_queued(t)) {
    stop = true;
    return;
  }
  if (options_.max_live_bytes != 0 && live_bytes(pass, t) + b.charge > options_.max_live_bytes) {
    stop = true;
    return;
  }
  if (c.state == CopyState::kValid) {  // stale home copy: refresh it, no room needed
    start_load(b, t, /*prefetch=*/true, true);
    return;
  }
  Reserve r = try_reserve(t, b.charge, ahead, /*all_or_nothing=*/true);
  if (r.reserved) {
    c.charged = true;
    start_load(b, t, /*prefetch=*/true, true);
    live_bytes(pass, t) += b.charge;
    return;
  }
  STRATA_LOG(kTrace) << "tier manager: prefetch of block '" << b.name << "' into " << tier_name(t)
                     << (r.progress ? " waits for write-backs" : " finds no copy used later to evict");
  if (r.progress) {  // write-backs of later-needed copies are under way: wait for them
    c.state = CopyState::kQueued;
    c.queued_content = true;
    pending_.emplace_back(b.id, t);
  }
  stop = true;
}

std::uint64_t& TierManager::live_bytes(PrefetchPass& pass, Tier t) const {
  auto& l = pass.live[static_cast<std::size_t>(ti(t))];
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
}

}  // namespace strata::offload
