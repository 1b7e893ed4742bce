// ZeRO stage 3's parameter fetches on LocalComm ranks: every gathered tensor holds the whole
// bucket (each rank's slice from its home), the window never holds more than max_live
// elements, buckets used again soon are kept, later steps prefetch along the recorded order and
// issue no gather on demand, and a step whose order changes falls back on every rank alike
// without a hang, then prefetches along the new order.
#include "zero/param_fetch.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace strata::zero {
namespace {

// Buckets (two ranks, alignment 4): b0 {t0, t1} 16, b1 {t2} 32, b2 {t3} 8 (persistent), b3 {t4} 24.
FlatLayout test_layout() {
  auto l = FlatLayout::create({{"t0", 6}, {"t1", 8}, {"t2", 30}, {"t3", 5}, {"t4", 21}}, 4, 2, 0,
                              {true, false, true, true, true});
  EXPECT_TRUE(l.ok()) << l.status();
  return std::move(*l);
}

float expected(std::uint64_t flat) { return static_cast<float>(flat % 997) + 0.5f; }

using Order = std::vector<std::vector<std::size_t>>;  // the modules' buckets, in order

struct Rank {
  std::unique_ptr<Device> device;
  std::unique_ptr<Stream> stream;
  std::unique_ptr<ParamFetch> fetch;
};

Rank make_rank(Communicator& comm, const FlatLayout& layout, const FetchOptions& o) {
  Rank r;
  DeviceOptions d;
  d.capacity = 16 << 20;
  r.device = std::move(*create_device("host", d));
  r.stream = std::move(*r.device->create_stream("test"));
  auto f = ParamFetch::create(comm, *r.device, layout, DType::kF32, o, [](std::size_t) { return Status::OK(); });
  EXPECT_TRUE(f.ok()) << f.status();
  r.fetch = std::move(*f);
  // Each rank's home holds its slice of the expected values.
  for (std::size_t b = 0; b < layout.bucket_count(); ++b) {
    const FlatRange s = layout.slice(b, static_cast<std::uint64_t>(comm.rank()));
    std::vector<float> v(s.count);
    for (std::uint64_t k = 0; k < s.count; ++k) v[k] = expected(s.first + k);
    auto home = r.fetch->home_slice(b);
    EXPECT_TRUE(home.ok());
    EXPECT_TRUE(r.device->copy_to_device(home->range(), std::as_bytes(std::span<const float>(v)), *r.stream).ok());
    EXPECT_TRUE(r.stream->synchronize().ok());  // before `v` goes
  }
  return r;
}

// Runs one step of `order` on a rank, checking every tensor of each acquired bucket.
void run_step(Rank& r, const FlatLayout& layout, const Order& order, std::uint64_t max_live) {
  ASSERT_TRUE(r.fetch->begin_step(*r.stream).ok());
  for (const std::vector<std::size_t>& module : order) {
    ASSERT_TRUE(r.fetch->acquire(module, *r.stream).ok());
    EXPECT_LE(r.fetch->stats().held, max_live);
    for (std::size_t b : module) {
      const auto [lo, hi] = layout.bucket_tensors(b);
      for (std::size_t i = lo; i < hi; ++i) {
        auto view = r.fetch->tensor_view(i);
        ASSERT_TRUE(view.ok()) << view.status();
        std::vector<float> got(view->count());
        ASSERT_TRUE(r.device->copy_to_host(std::as_writable_bytes(std::span<float>(got)), view->range(), *r.stream).ok());
        ASSERT_TRUE(r.stream->synchronize().ok());
        for (std::uint64_t k = 0; k < got.size(); ++k) {
          ASSERT_EQ(got[k], expected(layout.offset(i) + k)) << "tensor " << i << " element " << k;
        }
      }
    }
    ASSERT_TRUE(r.fetch->release(module, *r.stream).ok());
  }
  ASSERT_TRUE(r.fetch->end_step(*r.stream).ok());
}

// Runs `steps` (one order each) on two ranks; returns each rank's statistics after every step.
std::vector<std::vector<GatherStats>> run(const FetchOptions& o, const std::vector<Order>& steps) {
  auto comms = make_local_comms(2);
  EXPECT_TRUE(comms.ok());
  const FlatLayout layout = test_layout();
  std::vector<std::vector<GatherStats>> stats(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      Rank r = make_rank(*(*comms)[static_cast<std::size_t>(rank)], layout, o);
      for (const Order& order : steps) {
        run_step(r, layout, order, o.max_live);
        stats[static_cast<std::size_t>(rank)].push_back(r.fetch->stats());
      }
    });
  }
  for (auto& t : threads) t.join();
  return stats;
}

FetchOptions options() {
  FetchOptions o;
  o.max_live = 56;  // b1 + b3: the largest use, as forward and backward below need
  o.prefetch = 32;
  o.reuse_distance = 0;
  o.persistence_threshold = 8;
  o.largest_use = 32;
  return o;
}

// Forward then backward of three modules; b2 is persistent.
const Order kForwardBackward = {{0}, {1, 2}, {3}, {3}, {1, 2}, {0}};

TEST(ParamFetch, GathersWholeBucketsAndPrefetchesAlongTheRecordedOrder) {
  const auto stats = run(options(), {kForwardBackward, kForwardBackward, kForwardBackward});
  for (const auto& s : stats) {
    // Step 1 records the order: every use gathers on demand (the persistent b2 once).
    EXPECT_EQ(s[0].on_demand, 7u);
    EXPECT_EQ(s[0].reused, 0u);
    EXPECT_EQ(s[0].persistent, 8u);
    // Later steps gather the same buckets ahead of need, none on demand, and keep b3 from its
    // forward for its backward (adjacent: distance 0).
    EXPECT_EQ(s[2].on_demand, s[0].on_demand);
    EXPECT_EQ(s[2].prefetched - s[1].prefetched, 6u);
    EXPECT_EQ(s[2].gathers - s[1].gathers, 6u);
    EXPECT_EQ(s[2].reused - s[1].reused, 1u);
    EXPECT_EQ(s[2].gathered - s[1].gathered, 16u + 32 + 8 + 24 + 32 + 16);
    EXPECT_LE(s[2].peak_held, 56u);
    EXPECT_EQ(s[2].order_changes, 0u);
  }
}

TEST(ParamFetch, KeepsBucketsUsedAgainWithinTheReuseDistance) {
  FetchOptions o = options();
  o.reuse_distance = 24;  // b1 and b2 between the backward of b3 and b0: only b3 qualifies
  o.max_live = 1000;
  auto stats = run(o, {kForwardBackward, kForwardBackward});
  EXPECT_EQ(stats[0][1].reused - stats[0][0].reused, 1u);
  o.reuse_distance = 1000;  // everything stays until its last use
  stats = run(o, {kForwardBackward, kForwardBackward});
  EXPECT_EQ(stats[0][1].reused - stats[0][0].reused, 3u);
  EXPECT_EQ(stats[0][1].gathers - stats[0][0].gathers, 4u);  // b0, b1, b3 and the persistent b2
}

TEST(ParamFetch, AChangedOrderFallsBackOnEveryRankAndIsRecordedAgain) {
  const Order other = {{3}, {0}, {1, 2}, {1, 2}, {0}, {3}};
  const auto stats = run(options(), {kForwardBackward, kForwardBackward, other, other});
  for (const auto& s : stats) {
    EXPECT_EQ(s[1].order_changes, 0u);
    EXPECT_EQ(s[2].order_changes, 1u);
    EXPECT_GT(s[2].on_demand, s[1].on_demand);  // the changed step fetched on demand
    EXPECT_EQ(s[3].on_demand, s[2].on_demand);  // and the next followed the new order
    EXPECT_EQ(s[3].order_changes, 1u);
    EXPECT_LE(s[3].peak_held, 56u);
  }
  EXPECT_EQ(stats[0].back().gathers, stats[1].back().gathers);
}

TEST(ParamFetch, TheWindowNeverHoldsMoreThanMaxLive) {
  FetchOptions o = options();
  o.max_live = 32;  // one bucket of 32 at a time: b1 waits for b0's buffer to retire
  o.prefetch = 1000;
  const auto stats = run(o, {kForwardBackward, kForwardBackward, kForwardBackward});
  for (const auto& s : stats) EXPECT_LE(s.back().peak_held, 32u);
}


// b1 is in use at fetch 1 and given back before its next use at fetch 3 (b3 lies between, and
// nothing is kept), so it must be gathered again there: the prefetch stops at it instead of
// filling the window with what follows, and no later step fetches anything on demand.
TEST(ParamFetch, ABucketGivenBackBeforeItsNextUseIsPrefetchedBeforeWhatFollowsIt) {
  FetchOptions o = options();
  o.max_live = 1000;
  o.prefetch = 40;
  const Order twice = {{0}, {1, 2}, {3}, {1, 2}, {3}, {0}};
  const auto stats = run(o, {twice, twice, twice});
  for (const auto& s : stats) {
    EXPECT_EQ(s[2].on_demand, s[0].on_demand);
    EXPECT_EQ(s[2].order_changes, 0u);
  }
}
}  // namespace
}  // namespace strata::zero
