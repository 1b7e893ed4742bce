// Clients (tier_prefetch.cc): two users of one manager whose accesses interleave differently
// every step — a parameter fetcher sweeping layers on the device, an optimizer worker walking
// its state on the host — each keep their own trace, so each gets the prefetches it would get
// alone. Through one client the same interleavings break the trace every step.
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "offload/offload_test_util.h"
#include "offload/tier_manager.h"
#include "strata/log.h"
#include "strata/units.h"

namespace strata::offload {
namespace {

using testing::check_pattern;
using testing::fill_pattern;
using testing::pinned_bytes;
using testing::pinned_bytes_mut;
using testing::Rig;
using testing::RigOptions;
using testing::Watchdog;

constexpr std::uint64_t KB = 1024;
constexpr int kParams = 8;
constexpr int kStates = 6;
constexpr std::uint64_t kBytes = 48 * KB;
constexpr int kSteps = 6;

struct QuietLogs {
  QuietLogs() : level(log_level()) { set_log_level(LogLevel::kWarn); }
  ~QuietLogs() { set_log_level(level); }
  LogLevel level;
};

enum class Mode { kFetcherAlone, kOptimizerAlone, kTwoClients, kOneClientInterleaved };

struct StepAccess {
  BlockId id;
  Tier tier;
  ClientId client;
};

// Per client: the figures after the first step and after the last.
struct ClientRun {
  ClientStats fetcher_first, fetcher_last, optimizer_first, optimizer_last;
  TierStats last;
};

std::uint64_t later_misses(const ClientStats& first, const ClientStats& last) { return last.misses - first.misses; }
std::uint64_t later_served(const ClientStats& first, const ClientStats& last) {
  return last.hits + last.in_flight_hits - first.hits - first.in_flight_hits;
}

// One step's accesses: the fetcher's forward and backward sweep and the optimizer's walk,
// merged in an order drawn afresh for every step (each client's own order never changes).
std::vector<StepAccess> step_accesses(Mode mode, int step, const std::vector<BlockId>& params,
                                   const std::vector<BlockId>& states, ClientId fetcher, ClientId optimizer) {
  std::vector<StepAccess> fetch, opt;
  if (mode != Mode::kOptimizerAlone) {
    for (int l = 0; l < kParams; ++l) fetch.push_back({params[static_cast<std::size_t>(l)], Tier::kDevice, fetcher});
    for (int l = kParams - 1; l >= 0; --l) fetch.push_back({params[static_cast<std::size_t>(l)], Tier::kDevice, fetcher});
  }
  if (mode != Mode::kFetcherAlone) {
    for (int s = 0; s < kStates; ++s) opt.push_back({states[static_cast<std::size_t>(s)], Tier::kHost, optimizer});
  }
  std::mt19937_64 rng(1000 + static_cast<std::uint64_t>(step));
  std::vector<StepAccess> merged;
  std::size_t f = 0, o = 0;
  while (f < fetch.size() || o < opt.size()) {
    const std::uint64_t left_f = fetch.size() - f, left_o = opt.size() - o;
    const bool take_fetch = std::uniform_int_distribution<std::uint64_t>(1, left_f + left_o)(rng) <= left_f;
    merged.push_back(take_fetch ? fetch[f++] : opt[o++]);
  }
  return merged;
}

ClientRun run(Mode mode) {
  RigOptions o;
  o.tiers.device_budget = 5 * kBytes;            // 5 of 8 layers
  o.tiers.staging_buffers = 3;
  o.tiers.staging_buffer_size = 16 * KB;
  // The staging pool, the layers' host homes and 3 of the 6 optimizer state copies.
  o.tiers.host_budget = 3 * 16 * KB + kParams * kBytes + 3 * kBytes;
  o.tiers.prefetch_bytes = 2 * kBytes;
  auto rig = Rig::make(o);
  EXPECT_NE(rig, nullptr);
  if (rig == nullptr) return {};
  TierManager& tm = *rig->tiers;
  std::vector<BlockId> params, states;
  for (int i = 0; i < kParams + kStates; ++i) {
    const bool param = i < kParams;
    auto id = tm.register_block({(param ? "layer." : "state.") + std::to_string(i), kBytes,
                                 param ? Tier::kHost : Tier::kNvme, param ? Tier::kDevice : Tier::kHost});
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) return {};
    (param ? params : states).push_back(*id);
    auto w = tm.acquire(*id, Tier::kHost, Access::kOverwrite);
    EXPECT_TRUE(w.ok() && w->wait().ok());
    fill_pattern(pinned_bytes_mut(*w), id->value, 1);
  }
  EXPECT_TRUE(tm.flush().ok());
  tm.restart_trace();  // the set-up does not repeat
  const bool two = mode == Mode::kTwoClients;
  const ClientId fetcher = two ? tm.register_client("fetcher") : ClientId{};
  const ClientId optimizer = two ? tm.register_client("optimizer") : ClientId{};
  EXPECT_NE(fetcher == optimizer, two);

  ClientRun r;
  for (int step = 0; step < kSteps; ++step) {
    for (const StepAccess& a : step_accesses(mode, step, params, states, fetcher, optimizer)) {
      auto pin = tm.acquire(a.id, a.tier, Access::kRead, a.client);
      EXPECT_TRUE(pin.ok()) << pin.status();
      if (!pin.ok()) return r;
      EXPECT_TRUE(pin->wait().ok());
      EXPECT_TRUE(check_pattern(pinned_bytes(*pin), a.id.value, 1));
    }
    if (two) {
      EXPECT_TRUE(tm.end_step(fetcher).ok());
      EXPECT_TRUE(tm.end_step(optimizer).ok());
    } else {
      tm.end_step();
    }
    if (step == 0) {
      r.fetcher_first = *tm.client_stats(fetcher);
      r.optimizer_first = *tm.client_stats(optimizer);
    }
  }
  r.fetcher_last = *tm.client_stats(fetcher);
  r.optimizer_last = *tm.client_stats(optimizer);
  r.last = tm.stats();
  EXPECT_LE(r.last.tiers[0].peak, o.tiers.device_budget);
  EXPECT_LE(r.last.tiers[1].peak, o.tiers.host_budget);
  EXPECT_EQ(TierManagerPeer::recount(tm), "");
  return r;
}

TEST(TierClients, EachClientGetsThePredictionsItWouldGetAlone) {
  Watchdog wd(std::chrono::seconds(120), "two clients");
  QuietLogs quiet;
  const ClientRun fetcher_alone = run(Mode::kFetcherAlone);
  const ClientRun optimizer_alone = run(Mode::kOptimizerAlone);
  const ClientRun both = run(Mode::kTwoClients);
  const ClientStats& f = both.fetcher_last;
  const ClientStats& o = both.optimizer_last;
  EXPECT_EQ(f.name, "fetcher");
  EXPECT_EQ(o.name, "optimizer");
  EXPECT_EQ(f.steps, static_cast<std::uint64_t>(kSteps));
  EXPECT_EQ(f.acquires, 2u * kParams * kSteps);
  EXPECT_EQ(o.acquires, static_cast<std::uint64_t>(kStates) * kSteps);
  // Each trace is its client's own order, the same every step: recorded once, never dropped.
  EXPECT_EQ(f.trace_length, fetcher_alone.fetcher_last.trace_length);
  EXPECT_EQ(f.trace_length, 2u * kParams);
  EXPECT_EQ(o.trace_length, optimizer_alone.optimizer_last.trace_length);
  EXPECT_EQ(o.trace_length, static_cast<std::uint64_t>(kStates));
  EXPECT_EQ(f.trace_divergences, 0u);
  EXPECT_EQ(o.trace_divergences, 0u);
  EXPECT_EQ(f.trace_recordings, 1u);
  EXPECT_EQ(o.trace_recordings, 1u);
  EXPECT_EQ(both.last.trace_length, 2u * kParams + kStates);
  EXPECT_EQ(both.last.steps, 2u * kSteps);
  // After the first step, each client is served exactly as its sequence alone is.
  EXPECT_EQ(later_misses(both.fetcher_first, f), later_misses(fetcher_alone.fetcher_first, fetcher_alone.fetcher_last));
  EXPECT_EQ(later_served(both.fetcher_first, f), later_served(fetcher_alone.fetcher_first, fetcher_alone.fetcher_last));
  EXPECT_EQ(later_misses(both.optimizer_first, o),
            later_misses(optimizer_alone.optimizer_first, optimizer_alone.optimizer_last));
  EXPECT_EQ(later_served(both.optimizer_first, o),
            later_served(optimizer_alone.optimizer_first, optimizer_alone.optimizer_last));
  // And that is nearly every access: the predictions are right.
  const double f_rate = static_cast<double>(later_served(both.fetcher_first, f)) /
                        static_cast<double>(f.acquires - both.fetcher_first.acquires);
  const double o_rate = static_cast<double>(later_served(both.optimizer_first, o)) /
                        static_cast<double>(o.acquires - both.optimizer_first.acquires);
  EXPECT_GE(f_rate, 0.9) << both.last.to_json();
  EXPECT_GE(o_rate, 0.9) << both.last.to_json();
  EXPECT_GT(both.last.prefetches, 0u);
  EXPECT_GT(both.last.tiers[0].evictions, 0u);  // both budgets really forced evictions
  EXPECT_GT(both.last.tiers[1].evictions, 0u);
}

TEST(TierClients, OneClientForBothLosesItsTraceEveryStep) {
  Watchdog wd(std::chrono::seconds(120), "one client, interleaved");
  QuietLogs quiet;
  const ClientRun both = run(Mode::kTwoClients);
  const ClientRun one = run(Mode::kOneClientInterleaved);
  const ClientStats& d = one.fetcher_last;  // the default client did everything
  EXPECT_EQ(d.acquires - one.fetcher_first.acquires, (2u * kParams + kStates) * (kSteps - 1));
  EXPECT_GE(d.trace_divergences, static_cast<std::uint64_t>(kSteps - 2));
  const std::uint64_t both_misses = later_misses(both.fetcher_first, both.fetcher_last) +
                                    later_misses(both.optimizer_first, both.optimizer_last);
  EXPECT_GT(later_misses(one.fetcher_first, d), both_misses) << one.last.to_json();
}

TEST(TierClients, UnknownClientsAreRefused) {
  RigOptions o;
  o.nvme = false;
  o.tiers.device_budget = 1 * MiB;
  o.tiers.host_budget = 1 * MiB;
  auto rig = Rig::make(o);
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  auto id = tm.register_block({"b", 4 * KB, Tier::kHost});
  ASSERT_TRUE(id.ok());
  const ClientId bogus{7};
  EXPECT_EQ(tm.acquire(*id, Tier::kDevice, Access::kRead, bogus).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(tm.prefetch(*id, Tier::kDevice, bogus).code(), StatusCode::kNotFound);
  EXPECT_EQ(tm.end_step(bogus).code(), StatusCode::kNotFound);
  EXPECT_EQ(tm.restart_trace(bogus).code(), StatusCode::kNotFound);
  EXPECT_EQ(tm.client_stats(bogus).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(tm.client_stats(ClientId{})->name, "default");
  const ClientId c = tm.register_client("worker");
  EXPECT_NE(c, ClientId{});
  auto pin = tm.acquire(*id, Tier::kDevice, Access::kRead, c);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(tm.client_stats(c)->acquires, 1u);
  EXPECT_EQ(tm.client_stats(ClientId{})->acquires, 0u);
  EXPECT_EQ(tm.stats().acquires, 1u);
  ASSERT_TRUE(tm.end_step(c).ok());
  EXPECT_EQ(tm.client_stats(c)->trace_length, 1u);
  ASSERT_TRUE(tm.restart_trace(c).ok());
  EXPECT_EQ(tm.client_stats(c)->trace_length, 0u);
}

}  // namespace
}  // namespace strata::offload
