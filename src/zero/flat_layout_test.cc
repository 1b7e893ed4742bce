// The flat layout: offsets and alignment, padding to shards x alignment, shard ranges, and the
// segments of ranges that start or end inside tensors and cover padding.
#include "zero/flat_layout.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace strata::zero {
namespace {

FlatLayout make(const std::vector<std::uint64_t>& numels, std::uint64_t alignment, std::uint64_t shards = 1,
                std::uint64_t bucket_elements = 0) {
  std::vector<FlatTensor> ts;
  for (std::size_t i = 0; i < numels.size(); ++i) ts.push_back({"t" + std::to_string(i), numels[i]});
  auto l = FlatLayout::create(std::move(ts), alignment, shards, bucket_elements);
  EXPECT_TRUE(l.ok()) << l.status();
  return l.ok() ? std::move(*l) : FlatLayout();
}

TEST(FlatLayout, OffsetsStartOnTheAlignment) {
  const FlatLayout l = make({5, 16, 17, 0, 1}, 16);
  ASSERT_EQ(l.tensor_count(), 5u);
  EXPECT_EQ(l.offset(0), 0u);
  EXPECT_EQ(l.offset(1), 16u);
  EXPECT_EQ(l.offset(2), 32u);
  EXPECT_EQ(l.offset(3), 64u);  // an empty tensor takes no room
  EXPECT_EQ(l.offset(4), 64u);
  EXPECT_EQ(l.used(), 80u);
  EXPECT_EQ(l.total(), 80u);
  EXPECT_EQ(l.tensor(2).name, "t2");
  EXPECT_EQ(l.tensor(2).numel, 17u);
}

TEST(FlatLayout, AlignmentOneIsEndToEnd) {
  const FlatLayout l = make({3, 4, 5}, 1);
  EXPECT_EQ(l.offset(1), 3u);
  EXPECT_EQ(l.offset(2), 7u);
  EXPECT_EQ(l.total(), 12u);
}

// With one shard the total is the sum of the aligned slots: no padding beyond the alignment.
TEST(FlatLayout, OneShardAddsNoPadding) {
  const FlatLayout l = make({5, 17, 33}, 16, 1);
  EXPECT_EQ(l.used(), 16u + 32u + 48u);
  EXPECT_EQ(l.total(), l.used());
  EXPECT_EQ(l.shard_size(), l.total());
  EXPECT_EQ(l.shard(0), (std::vector<FlatRange>{{0, l.total()}}));
}

TEST(FlatLayout, PadsToShardsTimesAlignment) {
  // used = 16 + 32 + 48 = 96 elements = 6 x 16.
  const std::vector<std::uint64_t> numels = {5, 17, 33};
  const std::uint64_t want_total[] = {96, 96, 96, 128};  // 1, 2, 3 and 4 shards
  for (std::uint64_t shards = 1; shards <= 4; ++shards) {
    const FlatLayout l = make(numels, 16, shards);
    SCOPED_TRACE("shards " + std::to_string(shards));
    EXPECT_EQ(l.shards(), shards);
    EXPECT_EQ(l.used(), 96u);
    EXPECT_EQ(l.total(), want_total[shards - 1]);
    EXPECT_EQ(l.total() % (shards * 16), 0u);
    EXPECT_EQ(l.shard_size() % 16, 0u);
    EXPECT_EQ(l.shard_size() * shards, l.total());
    // The offsets do not depend on the shard count.
    EXPECT_EQ(l.offset(2), 48u);
  }
  // Three shards where the padding is not trivial: used 112 = 7 x 16 -> 144 = 3 x 48.
  const FlatLayout l3 = make({5, 17, 33, 16}, 16, 3);
  EXPECT_EQ(l3.used(), 112u);
  EXPECT_EQ(l3.total(), 144u);
  EXPECT_EQ(l3.shard_size(), 48u);
}

TEST(FlatLayout, ShardsAreContiguousAndCoverTheSpace) {
  const FlatLayout l = make({5, 17, 33, 16}, 16, 3);
  std::uint64_t next = 0;
  for (std::uint64_t s = 0; s < l.shards(); ++s) {
    ASSERT_EQ(l.shard(s).size(), 1u);
    const FlatRange r = l.shard(s)[0];
    EXPECT_EQ(r.first, next);
    EXPECT_EQ(r.count, l.shard_size());
    next = r.end();
  }
  EXPECT_EQ(next, l.total());
  EXPECT_EQ(l.shard(1), (std::vector<FlatRange>{{48, 48}}));
}

TEST(FlatLayout, SegmentsOfTheWholeSpaceAreTheTensors) {
  const FlatLayout l = make({5, 17, 0, 33}, 16, 4);
  const std::vector<FlatSegment> want = {{0, 0, 0, 5}, {1, 0, 16, 17}, {3, 0, 48, 33}};
  EXPECT_EQ(l.segments({0, l.total()}), want);
}

TEST(FlatLayout, SegmentsOfRangesInsideTensors) {
  // t0 at [0, 5), t1 at [16, 33), t2 at [48, 81); used 96.
  const FlatLayout l = make({5, 17, 33}, 16);
  // Starts inside t0, ends inside t1, crossing t0's padding.
  EXPECT_EQ(l.segments({2, 18}), (std::vector<FlatSegment>{{0, 2, 2, 3}, {1, 0, 16, 4}}));
  // Wholly inside one tensor.
  EXPECT_EQ(l.segments({20, 5}), (std::vector<FlatSegment>{{1, 4, 20, 5}}));
  // Starts inside t1, spans its padding, ends inside t2.
  EXPECT_EQ(l.segments({30, 30}), (std::vector<FlatSegment>{{1, 14, 30, 3}, {2, 0, 48, 12}}));
  // Starts in the padding after t0, ends exactly where t1 ends.
  EXPECT_EQ(l.segments({8, 25}), (std::vector<FlatSegment>{{1, 0, 16, 17}}));
  // Only padding: between tensors, and the tail.
  EXPECT_TRUE(l.segments({5, 11}).empty());
  EXPECT_TRUE(l.segments({81, 15}).empty());
  // Starts inside t2, runs into the tail padding.
  EXPECT_EQ(l.segments({70, 26}), (std::vector<FlatSegment>{{2, 22, 70, 11}}));
  EXPECT_TRUE(l.segments({10, 0}).empty());
}

// Cutting the space into chunks of any size gives every tensor element exactly once, in order
// (the optimizer's chunks and ZeRO's shards both rely on it).
TEST(FlatLayout, ChunksPartitionEveryTensor) {
  const std::vector<std::uint64_t> numels = {5, 17, 0, 33, 1, 64};
  for (std::uint64_t shards = 1; shards <= 4; ++shards) {
    const FlatLayout l = make(numels, 16, shards);
    for (std::uint64_t chunk : {1u, 7u, 16u, 40u, 1000u}) {
      SCOPED_TRACE("shards " + std::to_string(shards) + ", chunk " + std::to_string(chunk));
      std::vector<std::uint64_t> seen(numels.size(), 0);
      std::uint64_t last_flat = 0;
      for (std::uint64_t first = 0; first < l.total(); first += chunk) {
        const FlatRange r{first, std::min(chunk, l.total() - first)};
        for (const FlatSegment& s : l.segments(r)) {
          EXPECT_GE(s.flat_first, r.first);
          EXPECT_LE(s.flat_first + s.count, r.end());
          EXPECT_GE(s.flat_first, last_flat);
          EXPECT_EQ(s.tensor_first, seen[s.tensor]) << "tensor " << s.tensor;
          EXPECT_EQ(s.flat_first, l.offset(s.tensor) + s.tensor_first);
          seen[s.tensor] += s.count;
          last_flat = s.flat_first + s.count;
        }
      }
      EXPECT_EQ(seen, numels);
    }
  }
}

// Buckets take whole tensors while they fit; each is padded to shards x alignment, and shard s
// is slice s of every bucket.
TEST(FlatLayout, BucketsHoldWholeTensorsAndCutIntoSlices) {
  // Slots 16, 32, 48, 16, 80 (numels 5, 17, 33, 16, 65); buckets of at most 64 elements.
  const FlatLayout l = make({5, 17, 33, 16, 65}, 16, 3, 64);
  // {t0, t1}: 48 elements, already a multiple of 48. {t2, t3}: 64, padded to 96. t4 alone (80
  // more would pass 64): 80, padded to 96.
  ASSERT_EQ(l.bucket_count(), 3u);
  EXPECT_EQ(l.bucket(0), (FlatRange{0, 48}));
  EXPECT_EQ(l.bucket_tensors(0), (std::pair<std::size_t, std::size_t>{0, 2}));
  EXPECT_EQ(l.bucket(1), (FlatRange{48, 96}));
  EXPECT_EQ(l.bucket_tensors(1), (std::pair<std::size_t, std::size_t>{2, 4}));
  EXPECT_EQ(l.bucket(2), (FlatRange{144, 96}));
  EXPECT_EQ(l.offset(2), 48u);
  EXPECT_EQ(l.offset(3), 96u);
  EXPECT_EQ(l.offset(4), 144u);
  EXPECT_EQ(l.bucket_of(3), 1u);
  EXPECT_EQ(l.bucket_of(4), 2u);
  EXPECT_EQ(l.used(), 16u + 32u + 48u + 16u + 80u);
  EXPECT_EQ(l.total(), 240u);
  EXPECT_EQ(l.shard_size(), 80u);
  EXPECT_EQ(l.slice(2, 2), (FlatRange{208, 32}));
  EXPECT_EQ(l.shard_offset(2), 48u);  // 16 + 32 before it in every shard
  EXPECT_EQ(l.shard(1), (std::vector<FlatRange>{{16, 16}, {80, 32}, {176, 32}}));
  // Every tensor element is in exactly one slice of one shard.
  std::vector<std::uint64_t> seen(5, 0);
  for (std::uint64_t s = 0; s < 3; ++s) {
    std::uint64_t elements = 0;
    for (const FlatRange& r : l.shard(s)) {
      elements += r.count;
      for (const FlatSegment& seg : l.segments(r)) seen[seg.tensor] += seg.count;
    }
    EXPECT_EQ(elements, l.shard_size());
  }
  EXPECT_EQ(seen, (std::vector<std::uint64_t>{5, 17, 33, 16, 65}));
}

TEST(FlatLayout, CutsOpenBucketsWhereAsked) {
  // Slots 16, 16, 32, 16; t2 opens a bucket although {t0..t3} would fit in 128.
  auto l = FlatLayout::create({{"a", 16}, {"b", 3}, {"c", 17}, {"d", 16}}, 16, 2, 128, {false, false, true, false});
  ASSERT_TRUE(l.ok()) << l.status();
  ASSERT_EQ(l->bucket_count(), 2u);
  EXPECT_EQ(l->bucket_tensors(0), (std::pair<std::size_t, std::size_t>{0, 2}));
  EXPECT_EQ(l->bucket_tensors(1), (std::pair<std::size_t, std::size_t>{2, 4}));
  EXPECT_EQ(l->bucket(1), (FlatRange{32, 64}));
  // A cut at the first tensor opens nothing extra; the size limit still cuts.
  auto first = FlatLayout::create({{"a", 16}, {"b", 16}}, 16, 1, 16, {true, false});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->bucket_count(), 2u);
  EXPECT_FALSE(FlatLayout::create({{"a", 16}, {"b", 16}}, 16, 1, 0, {true}).ok());
}

TEST(FlatLayout, EmptyLayout) {
  const FlatLayout l = make({}, 16, 3);
  EXPECT_EQ(l.tensor_count(), 0u);
  EXPECT_EQ(l.total(), 0u);
  EXPECT_EQ(l.shard_size(), 0u);
  EXPECT_TRUE(l.segments({0, 0}).empty());
}

TEST(FlatLayout, RefusesZeroAlignmentZeroShardsAndOverflow) {
  EXPECT_FALSE(FlatLayout::create({{"a", 4}}, 0).ok());
  EXPECT_FALSE(FlatLayout::create({{"a", 4}}, 16, 0).ok());
  const std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
  auto big = FlatLayout::create({{"a", max / 2}, {"huge", max / 2 + 2}}, 16);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.status().message().find("huge"), std::string::npos) << big.status();
  EXPECT_FALSE(FlatLayout::create({{"a", max - 2}}, 16).ok());  // its aligned slot overflows
  EXPECT_FALSE(FlatLayout::create({{"a", 4}}, max / 2, 3).ok());
}

}  // namespace
}  // namespace strata::zero
