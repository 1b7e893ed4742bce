// Names of tiers and access kinds, and TierStats as JSON.
#include <nlohmann/json.hpp>

#include "strata/offload.h"

namespace strata {

std::string_view tier_name(Tier tier) {
  switch (tier) {
    case Tier::kDevice: return "device";
    case Tier::kHost: return "host";
    case Tier::kNvme: return "nvme";
  }
  return "unknown";
}

std::string_view access_name(Access access) {
  switch (access) {
    case Access::kRead: return "read";
    case Access::kWrite: return "write";
    case Access::kOverwrite: return "overwrite";
  }
  return "unknown";
}

double TierStats::hit_rate() const {
  if (acquires == 0) return 0.0;
  return static_cast<double>(hits + in_flight_hits) / static_cast<double>(acquires);
}

std::string TierStats::to_json() const {
  nlohmann::ordered_json j;
  nlohmann::ordered_json moved = nlohmann::ordered_json::object();
  for (int from = 0; from < kTierCount; ++from) {
    for (int to = 0; to < kTierCount; ++to) {
      if (from == to) continue;
      moved[std::string(tier_name(static_cast<Tier>(from))) + "_to_" + std::string(tier_name(static_cast<Tier>(to)))] =
          bytes_moved[static_cast<std::size_t>(from)][static_cast<std::size_t>(to)];
    }
  }
  j["bytes_moved"] = moved;
  nlohmann::ordered_json tiers_json = nlohmann::ordered_json::object();
  for (int t = 0; t < kTierCount; ++t) {
    const TierUsage& u = tiers[static_cast<std::size_t>(t)];
    tiers_json[std::string(tier_name(static_cast<Tier>(t)))] = {
        {"budget", u.budget},           {"used", u.used},
        {"peak", u.peak},               {"home_bytes", u.home_bytes},
        {"evictions", u.evictions},     {"write_backs", u.write_backs},
        {"write_back_bytes", u.write_back_bytes}};
  }
  j["tiers"] = tiers_json;
  j["acquires"] = acquires;
  j["hits"] = hits;
  j["in_flight_hits"] = in_flight_hits;
  j["misses"] = misses;
  j["hit_rate"] = hit_rate();
  j["zero_fills"] = zero_fills;
  j["stalls"] = stalls;
  j["stall_seconds"] = static_cast<double>(stall_ns) * 1e-9;
  j["prefetches"] = prefetches;
  j["prefetch_bytes"] = prefetch_bytes;
  j["prefetches_unused"] = prefetches_unused;
  j["queued_requests"] = queued_requests;
  j["budget_refusals"] = budget_refusals;
  j["load_failures"] = load_failures;
  j["write_back_failures"] = write_back_failures;
  j["staged_chunks"] = staged_chunks;
  j["staging_waits"] = staging_waits;
  j["trace_length"] = trace_length;
  j["trace_recordings"] = trace_recordings;
  j["trace_divergences"] = trace_divergences;
  j["steps"] = steps;
  j["blocks"] = blocks;
  j["pinned_copies"] = pinned_copies;
  return j.dump();
}

}  // namespace strata
