// The swap file's free-space map: best fit, reuse, coalescing, and refusing bad releases.
#include "nvme/extent_allocator.h"

#include <map>
#include <random>

#include <gtest/gtest.h>

namespace strata::nvme {
namespace {

TEST(ExtentAllocator, AllocatesReusesAndCoalesces) {
  ExtentAllocator a(100);
  auto x = a.allocate(30);
  auto y = a.allocate(30);
  auto z = a.allocate(40);
  ASSERT_TRUE(x && y && z);
  EXPECT_EQ(*x, 0u);
  EXPECT_EQ(*y, 30u);
  EXPECT_EQ(*z, 60u);
  EXPECT_FALSE(a.allocate(1).has_value());
  EXPECT_EQ(a.free_bytes(), 0u);
  ASSERT_TRUE(a.release(*y, 30).ok());
  auto again = a.allocate(20);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, 30u) << "a released range is reused";
  ASSERT_TRUE(a.release(*x, 30).ok());
  ASSERT_TRUE(a.release(*again, 20).ok());
  EXPECT_EQ(a.largest_free(), 60u) << "neighbours coalesce";
  ASSERT_TRUE(a.release(*z, 40).ok());
  EXPECT_EQ(a.free_ranges(), 1u);
  EXPECT_EQ(a.largest_free(), 100u);
}

TEST(ExtentAllocator, BestFitKeepsLargeRangesWhole) {
  ExtentAllocator a(1000);
  auto a1 = a.allocate(100);
  auto gap_small = a.allocate(50);
  auto a2 = a.allocate(100);
  ASSERT_TRUE(a1 && gap_small && a2);
  ASSERT_TRUE(a.release(*gap_small, 50).ok());  // free: [100,150) and [250,1000)
  auto fit = a.allocate(40);
  ASSERT_TRUE(fit);
  EXPECT_EQ(*fit, 100u) << "the smallest range that fits is used";
  EXPECT_EQ(a.largest_free(), 750u);
}

TEST(ExtentAllocator, RefusesDoubleAndOutOfRangeReleases) {
  ExtentAllocator a(100);
  auto x = a.allocate(10);
  ASSERT_TRUE(x);
  ASSERT_TRUE(a.release(*x, 10).ok());
  EXPECT_EQ(a.release(*x, 10).code(), StatusCode::kInternal);
  EXPECT_EQ(a.release(95, 10).code(), StatusCode::kInternal);
  EXPECT_EQ(a.release(50, 0).code(), StatusCode::kInternal);
  EXPECT_EQ(a.free_bytes(), 100u);
}

TEST(ExtentAllocator, RandomWorkloadNeverOverlapsAndReturnsEverything) {
  constexpr std::uint64_t kCap = 1 << 20;
  ExtentAllocator a(kCap);
  std::mt19937_64 rng(3);
  std::map<std::uint64_t, std::uint64_t> live;
  for (int i = 0; i < 20000; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      std::uint64_t len = 1 + rng() % 9000;
      auto off = a.allocate(len);
      if (!off) continue;
      auto next = live.lower_bound(*off);
      if (next != live.end()) {
        ASSERT_LE(*off + len, next->first);
      }
      if (next != live.begin()) {
        auto prev = std::prev(next);
        ASSERT_LE(prev->first + prev->second, *off);
      }
      live.emplace(*off, len);
    } else {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      ASSERT_TRUE(a.release(it->first, it->second).ok());
      live.erase(it);
    }
  }
  for (auto& [off, len] : live) ASSERT_TRUE(a.release(off, len).ok());
  EXPECT_EQ(a.free_bytes(), kCap);
  EXPECT_EQ(a.free_ranges(), 1u);
}

}  // namespace
}  // namespace strata::nvme
