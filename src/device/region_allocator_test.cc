#include "device/region_allocator.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

namespace strata::device {
namespace {

TEST(RegionAllocator, AlignsRoundsAndEnforcesCapacity) {
  RegionAllocator a(4096, 256);
  auto x = a.allocate(1);
  ASSERT_TRUE(x);
  EXPECT_EQ(*x % 256, 0u);
  EXPECT_EQ(a.used(), 256u);
  auto y = a.allocate(4096 - 256);
  ASSERT_TRUE(y);
  EXPECT_EQ(a.used(), 4096u);
  EXPECT_FALSE(a.allocate(1));
  EXPECT_FALSE(a.allocate(5000));
  EXPECT_EQ(a.largest_free(), 0u);
}

TEST(RegionAllocator, CoalescesBothNeighboursOnFree) {
  RegionAllocator a(1024, 256);
  auto b0 = a.allocate(256), b1 = a.allocate(256), b2 = a.allocate(256), b3 = a.allocate(256);
  ASSERT_TRUE(b0 && b1 && b2 && b3);
  EXPECT_TRUE(a.free(*b0));
  EXPECT_TRUE(a.free(*b2));
  EXPECT_EQ(a.free_blocks(), 2u);
  EXPECT_FALSE(a.allocate(512)) << "free space is fragmented into two 256-byte holes";
  EXPECT_TRUE(a.free(*b1));  // joins b0 and b2
  EXPECT_EQ(a.free_blocks(), 1u);
  EXPECT_EQ(a.largest_free(), 768u);
  EXPECT_TRUE(a.free(*b3));
  EXPECT_EQ(a.largest_free(), 1024u);
  EXPECT_EQ(a.used(), 0u);
  EXPECT_FALSE(a.free(*b3)) << "double free is refused";
  EXPECT_FALSE(a.free(17));
}

TEST(RegionAllocator, BestFitPicksTheSmallestHole) {
  RegionAllocator a(4096, 256);
  auto big = a.allocate(1024), sep1 = a.allocate(256), small = a.allocate(256), sep2 = a.allocate(256);
  ASSERT_TRUE(big && sep1 && small && sep2);
  a.free(*big);
  a.free(*small);
  auto x = a.allocate(200);
  ASSERT_TRUE(x);
  EXPECT_EQ(*x, *small) << "the 256-byte hole fits exactly";
  EXPECT_TRUE(a.contains(*x + 10, 100));
  EXPECT_FALSE(a.contains(*x + 10, 300));
  EXPECT_FALSE(a.contains(*big, 1));
}

TEST(RegionAllocator, RandomWorkloadKeepsInvariants) {
  RegionAllocator a(1 << 20, 256);
  std::mt19937 rng(42);
  std::map<std::size_t, std::size_t> live;  // offset -> rounded size
  for (int i = 0; i < 20000; ++i) {
    if (!live.empty() && rng() % 3 == 0) {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      ASSERT_TRUE(a.free(it->first));
      live.erase(it);
    } else {
      const std::size_t n = 1 + rng() % 20000;
      auto off = a.allocate(n);
      if (!off) continue;
      const std::size_t r = a.rounded(n);
      // No overlap with any live block.
      auto next = live.lower_bound(*off);
      if (next != live.end()) {
        ASSERT_LE(*off + r, next->first);
      }
      if (next != live.begin()) {
        auto prev = std::prev(next);
        ASSERT_LE(prev->first + prev->second, *off);
      }
      ASSERT_LE(*off + r, a.capacity());
      live.emplace(*off, r);
    }
    std::size_t sum = 0;
    for (auto& [o, s] : live) sum += s;
    ASSERT_EQ(a.used(), sum);
  }
  for (auto& [o, s] : live) ASSERT_TRUE(a.free(o));
  EXPECT_EQ(a.free_blocks(), 1u);
  EXPECT_EQ(a.largest_free(), a.capacity());
}

}  // namespace
}  // namespace strata::device
