// Prefetch along the access trace: a layer-by-layer forward/backward sweep, repeated, reaches
// >= 95 % hits after the first step when the device budget leaves room for the lookahead;
// without a trace (LRU only) the same sweep mostly misses.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "offload/offload_test_util.h"
#include "offload/tier_manager.h"
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
constexpr int kLayers = 12;
constexpr std::uint64_t kLayerBytes = 48 * KB;

struct SweepResult {
  TierStats first;  // after the set-up and step 1
  TierStats last;   // after every step
};

// Forward 0..L-1 then backward L-1..0 on the device, `steps` times; checks every byte read.
SweepResult sweep(Tier home, bool tracing, int steps, std::uint64_t max_live_bytes = 0) {
  RigOptions o;
  o.nvme = home == Tier::kNvme;
  o.tiers.device_budget = 5 * kLayerBytes;     // 5 of 12 layers: eviction every step
  o.tiers.staging_buffers = 3;
  o.tiers.staging_buffer_size = 16 * KB;       // 3 chunks per layer
  // NVMe homes: room for the staging pool and one cached layer, so loads come from NVMe.
  o.tiers.host_budget = home == Tier::kNvme ? 3 * 16 * KB + kLayerBytes : 2 * MiB;
  o.tiers.prefetch_bytes = 2 * kLayerBytes;    // look two layers ahead
  o.tiers.tracing = tracing;
  o.tiers.max_live_bytes = max_live_bytes;
  auto rig = Rig::make(o);
  EXPECT_NE(rig, nullptr);
  if (rig == nullptr) return {};
  TierManager& tm = *rig->tiers;
  std::vector<BlockId> layers;
  for (int l = 0; l < kLayers; ++l) {
    auto id = tm.register_block({"layer." + std::to_string(l), kLayerBytes, home, Tier::kDevice});
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) return {};
    layers.push_back(*id);
    auto w = tm.acquire(*id, Tier::kHost, Access::kOverwrite);
    EXPECT_TRUE(w.ok() && w->wait().ok());
    fill_pattern(pinned_bytes_mut(*w), id->value, 1);
  }
  EXPECT_TRUE(tm.flush().ok());
  tm.restart_trace();  // the set-up does not repeat
  auto use = [&](int l) {
    auto pin = tm.acquire(layers[static_cast<std::size_t>(l)], Tier::kDevice);
    ASSERT_TRUE(pin.ok()) << pin.status();
    ASSERT_TRUE(pin->wait().ok());
    EXPECT_TRUE(check_pattern(pinned_bytes(*pin), layers[static_cast<std::size_t>(l)].value, 1)) << "layer " << l;
  };
  SweepResult r;
  for (int step = 0; step < steps; ++step) {
    for (int l = 0; l < kLayers; ++l) use(l);
    for (int l = kLayers - 1; l >= 0; --l) use(l);
    tm.end_step();
    if (step == 0) r.first = tm.stats();
  }
  r.last = tm.stats();
  EXPECT_LE(r.last.tiers[0].peak, o.tiers.device_budget);
  return r;
}

double later_hit_rate(const SweepResult& r) {
  const double acquires = static_cast<double>(r.last.acquires - r.first.acquires);
  const double hits = static_cast<double>(r.last.hits + r.last.in_flight_hits - r.first.hits - r.first.in_flight_hits);
  return hits / acquires;
}

class PrefetchSweep : public ::testing::TestWithParam<Tier> {};

TEST_P(PrefetchSweep, ReachesNinetyFivePercentHitsAfterTheFirstStep) {
  Watchdog wd(std::chrono::seconds(120), "prefetch sweep");
  SweepResult r = sweep(GetParam(), /*tracing=*/true, /*steps=*/5);
  const double rate = later_hit_rate(r);
  EXPECT_GE(rate, 0.95) << "hit rate after the first step: " << rate << "\n" << r.last.to_json();
  EXPECT_EQ(r.last.trace_length, 2u * kLayers);
  EXPECT_EQ(r.last.trace_divergences, 0u);
  EXPECT_GT(r.last.prefetches, 0u);
  EXPECT_GT(r.last.tiers[0].evictions, 0u);  // the budget really forced evictions
  // Belady keeps the prefetched copies: none of them is evicted before its use.
  EXPECT_EQ(r.last.prefetches_unused, 0u) << r.last.to_json();
  if (GetParam() == Tier::kNvme) {
    EXPECT_GT(r.last.staged_chunks, 0u);
    EXPECT_GT(r.last.bytes_moved[2][0], 0u);
  }
}

TEST_P(PrefetchSweep, WithoutATraceTheSameSweepMostlyMisses) {
  Watchdog wd(std::chrono::seconds(120), "lru sweep");
  SweepResult r = sweep(GetParam(), /*tracing=*/false, /*steps=*/3);
  const double rate = later_hit_rate(r);
  // LRU keeps the 5 most recent layers: the turnaround of each sweep hits, the rest misses.
  EXPECT_LT(rate, 0.6) << r.last.to_json();
  EXPECT_EQ(r.last.prefetches, 0u);
  EXPECT_EQ(r.last.trace_length, 0u);
}

TEST(PrefetchLimits, MaxLiveBytesCapsTheLookahead) {
  Watchdog wd(std::chrono::seconds(120), "max live bytes");
  // One live layer: the one in use. Nothing can be fetched beside it, so the sweep misses
  // as if there were no prefetch (except the first layer of each step, fetched at its end).
  SweepResult capped = sweep(Tier::kHost, /*tracing=*/true, /*steps=*/3, /*max_live_bytes=*/kLayerBytes);
  SweepResult free = sweep(Tier::kHost, /*tracing=*/true, /*steps=*/3);
  EXPECT_LT(capped.last.prefetches, free.last.prefetches / 4) << capped.last.to_json();
  EXPECT_LT(later_hit_rate(capped), 0.6);
  EXPECT_GE(later_hit_rate(free), 0.95);
}

INSTANTIATE_TEST_SUITE_P(Homes, PrefetchSweep, ::testing::Values(Tier::kHost, Tier::kNvme),
                         [](const ::testing::TestParamInfo<Tier>& p) { return std::string(tier_name(p.param)); });

// Gradients written on the device in backward (overwrite), read on the host by the optimizer:
// the dirty device copies go home through eviction or the host load, and every byte arrives.
TEST(PrefetchPattern, GradientsWrittenOnTheDeviceReachTheHostIntact) {
  Watchdog wd(std::chrono::seconds(120), "gradient pattern");
  RigOptions o;
  o.tiers.device_budget = 6 * kLayerBytes;
  o.tiers.host_budget = 4 * MiB;
  o.tiers.staging_buffers = 2;
  o.tiers.staging_buffer_size = 16 * KB;
  o.tiers.prefetch_bytes = 2 * kLayerBytes;
  auto rig = Rig::make(o);
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  std::vector<BlockId> params, grads;
  for (int l = 0; l < 6; ++l) {
    params.push_back(*tm.register_block({"p." + std::to_string(l), kLayerBytes, Tier::kHost}));
    grads.push_back(*tm.register_block({"g." + std::to_string(l), kLayerBytes, Tier::kNvme}));
  }
  for (int step = 1; step <= 4; ++step) {
    for (int l = 0; l < 6; ++l) {
      auto p = tm.acquire(params[static_cast<std::size_t>(l)], Tier::kDevice);
      ASSERT_TRUE(p.ok() && p->wait().ok());
    }
    for (int l = 5; l >= 0; --l) {
      auto p = tm.acquire(params[static_cast<std::size_t>(l)], Tier::kDevice);
      ASSERT_TRUE(p.ok() && p->wait().ok());
      auto g = tm.acquire(grads[static_cast<std::size_t>(l)], Tier::kDevice, Access::kOverwrite);
      ASSERT_TRUE(g.ok()) << g.status();
      ASSERT_TRUE(g->wait().ok());
      fill_pattern(pinned_bytes_mut(*g), grads[static_cast<std::size_t>(l)].value, static_cast<std::uint64_t>(step));
    }
    for (int l = 0; l < 6; ++l) {
      auto g = tm.acquire(grads[static_cast<std::size_t>(l)], Tier::kHost);
      ASSERT_TRUE(g.ok()) << g.status();
      ASSERT_TRUE(g->wait().ok());
      EXPECT_TRUE(check_pattern(pinned_bytes(*g), grads[static_cast<std::size_t>(l)].value, static_cast<std::uint64_t>(step)))
          << "step " << step << " grad " << l;
    }
    tm.end_step();
  }
  TierStats s = tm.stats();
  EXPECT_EQ(s.trace_divergences, 0u);
  EXPECT_LE(s.tiers[0].peak, o.tiers.device_budget);
  EXPECT_GT(s.bytes_moved[0][1], 0u);  // device -> host
}

}  // namespace
}  // namespace strata::offload
