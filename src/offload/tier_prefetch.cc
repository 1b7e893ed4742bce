// The tier manager's clients and prefetching (src/offload/tier_manager.h): each client's access
// trace (recording, checking, steps), the next use of a copy over every trace, prefetch hints,
// and passes of prefetches along a client's trace.
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
// Clients and their steps

ClientId TierManager::register_client(std::string_view name) {
  std::lock_guard lk(mu_);
  auto c = std::make_unique<Client>();
  c->name = std::string(name);
  clients_.push_back(std::move(c));
  return ClientId{static_cast<std::uint32_t>(clients_.size() - 1)};
}

void TierManager::end_step() {
  std::lock_guard lk(mu_);
  end_client_step(*clients_.front());
}

Status TierManager::end_step(ClientId client) {
  std::lock_guard lk(mu_);
  Client* c = lookup(client);
  if (c == nullptr) return not_found("end_step: client " + std::to_string(client.value) + " is not registered");
  end_client_step(*c);
  return Status::OK();
}

void TierManager::restart_trace() {
  std::lock_guard lk(mu_);
  clients_.front()->trace.reset();
}

Status TierManager::restart_trace(ClientId client) {
  std::lock_guard lk(mu_);
  Client* c = lookup(client);
  if (c == nullptr) return not_found("restart_trace: client " + std::to_string(client.value) + " is not registered");
  c->trace.reset();
  return Status::OK();
}

Result<ClientStats> TierManager::client_stats(ClientId client) const {
  std::lock_guard lk(mu_);
  const Client* c = lookup(client);
  if (c == nullptr) return not_found("client_stats: client " + std::to_string(client.value) + " is not registered");
  ClientStats s;
  s.name = c->name;
  s.acquires = c->acquires;
  s.hits = c->hits;
  s.in_flight_hits = c->in_flight_hits;
  s.misses = c->misses;
  s.steps = c->steps;
  s.trace_length = c->trace.size();
  s.trace_recordings = c->trace.recordings();
  s.trace_divergences = c->trace.divergences();
  return s;
}

// ---------------------------------------------------------------------------------------------
// Traces (mu_ held)

namespace {

std::string client_prefix(const std::string& name, bool is_default) {
  return is_default ? std::string() : "client '" + name + "': ";
}

}  // namespace

void TierManager::end_client_step(Client& client) {
  ++stats_.steps;
  ++client.steps;
  if (!options_.tracing) return;
  const std::string who = client_prefix(client.name, &client == clients_.front().get());
  const std::uint64_t before = client.trace.recordings();
  auto d = client.trace.end_step();
  if (d) {
    STRATA_LOG(kInfo) << "tier manager: " << who << "step " << client.steps - 1 << " ended after " << d->position
                      << " accesses, the trace has " << d->dropped_length
                      << "; dropped the trace and keeping this step's order as the new one";
  }
  if (client.trace.recordings() > before) {
    STRATA_LOG(kDebug) << "tier manager: " << who << "recorded an access trace of " << client.trace.size() << " accesses";
  }
  issue_prefetches(client);
}

void TierManager::observe(Client& client, Block& b, Tier t, Access access) {
  if (!options_.tracing) return;
  auto d = client.trace.observe(TraceEntry{b.id.value, t, access});
  if (!d) return;
  STRATA_LOG(kInfo) << "tier manager: " << client_prefix(client.name, &client == clients_.front().get())
                    << "the access order changed at access " << d->position << " of step " << client.steps
                    << ": the trace expected " << describe_entry(d->expected, true) << ", the step used "
                    << describe_entry(d->got, false) << "; dropped the trace of " << d->dropped_length
                    << " accesses and recording the order again";
}

std::string TierManager::describe_entry(const std::optional<TraceEntry>& e, bool expected) const {
  if (!e) return std::string(expected ? "no more accesses in the step" : "the step to end");
  const Block* x = lookup(BlockId{e->block});
  return "block '" + (x ? x->name : std::string("(dropped)")) + "' in " + std::string(tier_name(e->tier)) + " (" +
         std::string(access_name(e->access)) + ")";
}

bool TierManager::any_trace() const {
  return std::any_of(clients_.begin(), clients_.end(), [](const auto& c) { return c->trace.replaying(); });
}

std::size_t TierManager::next_use(const Block& b, Tier t) const {
  std::size_t d = kNoUse;
  for (const auto& c : clients_) d = std::min(d, c->trace.distance_to_next_use(b.id.value, t));
  return d;
}

// ---------------------------------------------------------------------------------------------
// Prefetch hints

Status TierManager::prefetch(BlockId id, Tier tier, ClientId client) {
  std::lock_guard lk(mu_);
  Block* b = lookup(id);
  if (b == nullptr) return not_found("prefetch: block id " + std::to_string(id.value) + " is not registered (dropped?)");
  const Client* who = lookup(client);
  if (who == nullptr) return not_found("prefetch of block '" + b->name + "': client " + std::to_string(client.value) + " is not registered");
  STRATA_RETURN_IF_ERROR(check_tier(*b, tier, "prefetch"));
  Copy& c = b->copy(tier);
  if (is_current(*b, tier) || c.state() == CopyState::kLoading || c.state() == CopyState::kQueued) return Status::OK();
  if (b->write_pins > 0) return Status::OK();
  if (c.state() == CopyState::kValid) {  // stale home copy
    start_load(*b, tier, /*prefetch=*/true, true);
    return Status::OK();
  }
  // A hint evicts nothing: along the client's trace, only copies needed after this one;
  // without one, none.
  const std::size_t d = who->trace.distance_to_next_use(b->id.value, tier);
  if (d == kNoUse) {
    TierUsage& u = stats_.tiers[tu(tier)];
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
// Prefetch along a trace (mu_ held)

void TierManager::issue_prefetches(Client& client) {
  const AccessTrace& trace = client.trace;
  if (!options_.tracing || options_.prefetch_bytes == 0 || !trace.replaying()) return;
  const std::size_t n = trace.size();
  std::uint64_t window = 0;
  PrefetchPass pass;
  std::vector<std::pair<std::uint64_t, Tier>> seen;
  for (std::size_t ahead = 0; ahead < n; ++ahead) {
    const TraceEntry& e = trace.upcoming(ahead);
    if (std::find(seen.begin(), seen.end(), std::make_pair(e.block, e.tier)) != seen.end()) continue;
    seen.emplace_back(e.block, e.tier);
    Block* b = lookup(BlockId{e.block});
    if (b == nullptr) continue;
    window += b->charge;
    if (window > options_.prefetch_bytes) break;
    if (pass.stop[tu(e.tier)] || e.access == Access::kOverwrite) continue;
    prefetch_ahead(pass, *b, e.tier, ahead);
  }
}

void TierManager::prefetch_ahead(PrefetchPass& pass, Block& b, Tier t, std::size_t ahead) {
  bool& stop = pass.stop[tu(t)];
  Copy& c = b.copy(t);
  if (is_current(b, t) || c.state() == CopyState::kLoading || c.state() == CopyState::kQueued) return;
  if (b.write_pins > 0) return;
  if (pinned_requests_queued(t)) {
    stop = true;
    return;
  }
  // Pinned, loading, queued and unused prefetched bytes, over every client.
  if (options_.max_live_bytes != 0 && totals_->tier(t).live_bytes + b.charge > options_.max_live_bytes) {
    stop = true;
    return;
  }
  if (c.state() == CopyState::kValid) {  // stale home copy: refresh it, no room needed
    start_load(b, t, /*prefetch=*/true, true);
    return;
  }
  Reserve r = try_reserve(t, b.charge, ahead, /*all_or_nothing=*/true);
  if (r.reserved) {
    c.charged = true;
    start_load(b, t, /*prefetch=*/true, true);
    return;
  }
  STRATA_LOG(kTrace) << "tier manager: prefetch of block '" << b.name << "' into " << tier_name(t)
                     << (r.progress ? " waits for write-backs" : " finds no copy used later to evict");
  if (r.progress) {  // write-backs of later-needed copies are under way: wait for them
    totals_->set_state(b, t, CopyState::kQueued);
    c.queued_content = true;
    pending_.emplace_back(b.id, t);
  }
  stop = true;
}

}  // namespace strata::offload
