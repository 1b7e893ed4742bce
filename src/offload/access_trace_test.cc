#include "offload/access_trace.h"

#include <gtest/gtest.h>

namespace strata::offload {
namespace {

TraceEntry dev(std::uint64_t b, Access a = Access::kRead) { return TraceEntry{b, Tier::kDevice, a}; }
TraceEntry host(std::uint64_t b, Access a = Access::kRead) { return TraceEntry{b, Tier::kHost, a}; }

AccessTrace recorded(const std::vector<TraceEntry>& step) {
  AccessTrace t;
  for (const auto& e : step) EXPECT_FALSE(t.observe(e).has_value());
  EXPECT_FALSE(t.end_step().has_value());
  return t;
}

TEST(AccessTrace, FirstStepRecordsThenReplays) {
  AccessTrace t;
  EXPECT_FALSE(t.replaying());
  EXPECT_EQ(t.distance_to_next_use(1, Tier::kDevice), AccessTrace::kNoUse);
  for (std::uint64_t b : {1, 2, 3, 3, 2, 1}) EXPECT_FALSE(t.observe(dev(b)).has_value());
  EXPECT_FALSE(t.replaying());
  EXPECT_FALSE(t.end_step().has_value());
  ASSERT_TRUE(t.replaying());
  EXPECT_EQ(t.size(), 6u);
  EXPECT_EQ(t.recordings(), 1u);
  EXPECT_EQ(t.cursor(), 0u);
  // Replay two identical steps.
  for (int step = 0; step < 2; ++step) {
    for (std::uint64_t b : {1, 2, 3, 3, 2, 1}) EXPECT_FALSE(t.observe(dev(b)).has_value());
    EXPECT_EQ(t.cursor(), 6u);
    EXPECT_FALSE(t.end_step().has_value());
    EXPECT_EQ(t.cursor(), 0u);
  }
  EXPECT_EQ(t.divergences(), 0u);
  EXPECT_EQ(t.recordings(), 1u);
}

TEST(AccessTrace, DistancesAreToTheNextUseAndWrapIntoTheNextStep) {
  AccessTrace t = recorded({dev(1), dev(2), dev(3), dev(3), dev(2), dev(1)});
  EXPECT_EQ(t.distance_to_next_use(1, Tier::kDevice), 0u);
  EXPECT_EQ(t.distance_to_next_use(3, Tier::kDevice), 2u);
  EXPECT_EQ(t.distance_to_next_use(9, Tier::kDevice), AccessTrace::kNoUse);
  EXPECT_EQ(t.distance_to_next_use(1, Tier::kHost), AccessTrace::kNoUse);  // same block, other tier
  ASSERT_FALSE(t.observe(dev(1)).has_value());
  ASSERT_FALSE(t.observe(dev(2)).has_value());
  // Cursor at 2: block 1 is next used at index 5, block 2 at index 4, block 3 at 2.
  EXPECT_EQ(t.distance_to_next_use(1, Tier::kDevice), 3u);
  EXPECT_EQ(t.distance_to_next_use(2, Tier::kDevice), 2u);
  EXPECT_EQ(t.distance_to_next_use(3, Tier::kDevice), 0u);
  for (std::uint64_t b : {3, 3, 2}) ASSERT_FALSE(t.observe(dev(b)).has_value());
  // Cursor at 5: block 3's next use is in the next step (index 2 + 6).
  EXPECT_EQ(t.distance_to_next_use(3, Tier::kDevice), 3u);
  EXPECT_EQ(t.upcoming(0), dev(1));
  EXPECT_EQ(t.upcoming(1), dev(1));  // wraps: the next step starts with block 1
  EXPECT_EQ(t.upcoming(2), dev(2));
}

TEST(AccessTrace, ADifferentAccessDropsTheTraceAndKeepsTheMatchedPrefix) {
  AccessTrace t = recorded({dev(1), dev(2), dev(3)});
  ASSERT_FALSE(t.observe(dev(1)).has_value());
  auto d = t.observe(host(2));
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->position, 1u);
  ASSERT_TRUE(d->expected.has_value());
  EXPECT_EQ(*d->expected, dev(2));
  ASSERT_TRUE(d->got.has_value());
  EXPECT_EQ(*d->got, host(2));
  EXPECT_EQ(d->dropped_length, 3u);
  EXPECT_FALSE(t.replaying());
  EXPECT_EQ(t.distance_to_next_use(1, Tier::kDevice), AccessTrace::kNoUse);
  // The rest of the step is recorded; the new trace is the whole step.
  ASSERT_FALSE(t.observe(dev(3)).has_value());
  ASSERT_FALSE(t.end_step().has_value());
  ASSERT_TRUE(t.replaying());
  EXPECT_EQ(t.size(), 3u);
  EXPECT_EQ(t.upcoming(0), dev(1));
  EXPECT_EQ(t.upcoming(1), host(2));
  EXPECT_EQ(t.upcoming(2), dev(3));
  EXPECT_EQ(t.divergences(), 1u);
  EXPECT_EQ(t.recordings(), 2u);
}

TEST(AccessTrace, AccessKindIsPartOfTheOrder) {
  AccessTrace t = recorded({dev(1), dev(2)});
  auto d = t.observe(dev(1, Access::kWrite));
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->position, 0u);
}

TEST(AccessTrace, AStepThatEndsEarlyBecomesTheNewTrace) {
  AccessTrace t = recorded({dev(1), dev(2), dev(3)});
  ASSERT_FALSE(t.observe(dev(1)).has_value());
  ASSERT_FALSE(t.observe(dev(2)).has_value());
  auto d = t.end_step();
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->position, 2u);
  EXPECT_FALSE(d->got.has_value());
  ASSERT_TRUE(d->expected.has_value());
  EXPECT_EQ(*d->expected, dev(3));
  ASSERT_TRUE(t.replaying());
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(t.distance_to_next_use(3, Tier::kDevice), AccessTrace::kNoUse);
}

TEST(AccessTrace, AStepThatRunsLongerDiverges) {
  AccessTrace t = recorded({dev(1), dev(2)});
  ASSERT_FALSE(t.observe(dev(1)).has_value());
  ASSERT_FALSE(t.observe(dev(2)).has_value());
  auto d = t.observe(dev(3));
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->position, 2u);
  EXPECT_FALSE(d->expected.has_value());
  ASSERT_FALSE(t.end_step().has_value());
  EXPECT_EQ(t.size(), 3u);
}

TEST(AccessTrace, AnEmptyStepRecordsNothing) {
  AccessTrace t;
  EXPECT_FALSE(t.end_step().has_value());
  EXPECT_FALSE(t.replaying());
  EXPECT_EQ(t.recordings(), 0u);
}

TEST(AccessTrace, ResetForgetsTheTrace) {
  AccessTrace t = recorded({dev(1), dev(2)});
  t.reset();
  EXPECT_FALSE(t.replaying());
  EXPECT_FALSE(t.observe(dev(5)).has_value());
  EXPECT_FALSE(t.end_step().has_value());
  EXPECT_EQ(t.size(), 1u);
}

}  // namespace
}  // namespace strata::offload
