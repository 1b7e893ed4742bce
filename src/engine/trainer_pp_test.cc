// Pipeline parallelism in the trainer against the one-rank run with grad_accum = m (the same
// micro-batches): pp = 2 and pp = 4 with every schedule (and activation checkpointing), pp = 2
// x dp = 2 with ZeRO stages 0 to 3, the optimizer on the device, in host memory or in NVMe swap
// and ZeRO-3's parameters offloaded, and pp = 2 x tp = 2. fp32 losses within 1e-6
// relative over 20 steps; each stage's master weights (the tied wte on the first and on the
// last stage) against the one-rank masters of the same names, counted as
// engine/dp_test_util.h's comparison counts differences (the tied gradient and the norm are
// summed in another order than one rank sums them).
#include <gtest/gtest.h>

#include <string>

#include "engine/grid_test_util.h"
#include "offload/offload_test_util.h"

namespace strata {
namespace {

using namespace dp_test;

Profile pp_profile(const Profile& base, int pp, PipelineSchedule schedule, int micro_batches, int virtual_stages = 1,
                   int n_layer = 4) {
  Profile p = base;
  p.train.dims.n_layer = n_layer;
  p.train.dims.n_head = 4;
  p.train.grad_accum = micro_batches;
  p.parallel.pp = pp;
  p.parallel.schedule = schedule;
  p.parallel.virtual_stages = virtual_stages;
  return p;
}

const Profile& base() {
  static const Profile p = profile(1, kRowsPerRank, 16 << 10, true);
  return p;
}

TEST(TrainerPipeline, TwoStagesEqualTheOneRankRunWithEverySchedule) {
  using S = PipelineSchedule;
  expect_grid_matches({1, 1, 2}, pp_profile(base(), 2, S::kGPipe, 4), "pp 2, gpipe");
  expect_grid_matches({1, 1, 2}, pp_profile(base(), 2, S::k1F1B, 4), "pp 2, 1f1b");
  expect_grid_matches({1, 1, 2}, pp_profile(base(), 2, S::k1F1B, 3), "pp 2, 1f1b, 3 micro-batches");
  expect_grid_matches({1, 1, 2}, pp_profile(base(), 2, S::kInterleaved, 4, 2), "pp 2, interleaved x 2");
  expect_grid_matches({1, 1, 2}, pp_profile(base(), 2, S::kZbH1, 4), "pp 2, zb-h1");
  Profile recompute = pp_profile(base(), 2, S::kInterleaved, 4, 2);
  recompute.activation.checkpointing = true;
  expect_grid_matches({1, 1, 2}, recompute, "pp 2, interleaved x 2, activation checkpointing");
}

TEST(TrainerPipeline, FourStagesEqualTheOneRankRunWithEverySchedule) {
  using S = PipelineSchedule;
  expect_grid_matches({1, 1, 4}, pp_profile(base(), 4, S::kGPipe, 4), "pp 4, gpipe");
  expect_grid_matches({1, 1, 4}, pp_profile(base(), 4, S::k1F1B, 5), "pp 4, 1f1b, 5 micro-batches");
  // Two chunks on each of four stages: 8 parts of one block.
  expect_grid_matches({1, 1, 4}, pp_profile(base(), 4, S::kInterleaved, 4, 2, 8), "pp 4, interleaved x 2");
  expect_grid_matches({1, 1, 4}, pp_profile(base(), 4, S::kZbH1, 4), "pp 4, zb-h1");
}

TEST(TrainerPipeline, ComposesWithDataParallelZeroAndOffload) {
  offload::testing::ScratchDir swap;
  for (int stage : {0, 1, 2}) {
    for (OffloadTarget target : {OffloadTarget::kNone, OffloadTarget::kNvme}) {
      expect_grid_matches({2, 1, 2}, pp_profile(zero_profile(stage, target, swap.path()), 2, PipelineSchedule::k1F1B, 4),
                              "pp 2 x dp 2, stage " + std::to_string(stage) + ", optimizer " + target_name(target));
    }
  }
  expect_grid_matches({2, 1, 2}, pp_profile(zero_profile(2, OffloadTarget::kCpu, swap.path()), 2, PipelineSchedule::kZbH1, 4),
                          "pp 2 x dp 2, zb-h1, stage 2, optimizer cpu");
}

TEST(TrainerPipeline, ComposesWithTensorParallelism) {
  Profile p = pp_profile(base(), 2, PipelineSchedule::kInterleaved, 4, 2);
  p.train.dims.vocab = 257;
  expect_grid_matches({1, 2, 2}, p, "pp 2 x tp 2, interleaved x 2");
  p.parallel.sequence_parallel = true;
  p.parallel.schedule = PipelineSchedule::kZbH1;
  p.parallel.virtual_stages = 1;
  expect_grid_matches({1, 2, 2}, p, "pp 2 x tp 2, sequence parallel, zb-h1");
}

// ZeRO-3 under a pipeline: the parameters gathered per module use, kept through the step's
// micro-batches when the window holds the stage (each bucket gathered once per step), or
// regathered at every use when it does not; with the parameter shards in host memory and on
// NVMe too.
TEST(TrainerPipeline, ZeroStage3GathersAlongTheSchedule) {
  offload::testing::ScratchDir swap;
  const auto s3 = [&](OffloadTarget opt, OffloadTarget params) {
    return pp_profile(zero3_profile(opt, swap.path(), params), 2, PipelineSchedule::k1F1B, 4);
  };
  expect_grid_matches({2, 1, 2}, s3(OffloadTarget::kNone, OffloadTarget::kNone), "pp 2 x dp 2, stage 3");
  expect_grid_matches({2, 1, 2}, s3(OffloadTarget::kNvme, OffloadTarget::kNone), "pp 2 x dp 2, stage 3, optimizer on nvme");
  expect_grid_matches({2, 1, 2}, s3(OffloadTarget::kCpu, OffloadTarget::kCpu), "pp 2 x dp 2, stage 3, parameters on cpu");
  expect_grid_matches({2, 1, 2}, s3(OffloadTarget::kNvme, OffloadTarget::kNvme),
                          "pp 2 x dp 2, stage 3, parameters and optimizer on nvme");
  Profile zb = s3(OffloadTarget::kNone, OffloadTarget::kNone);
  zb.parallel.schedule = PipelineSchedule::kInterleaved;
  zb.parallel.virtual_stages = 2;
  expect_grid_matches({2, 1, 2}, zb, "pp 2 x dp 2, stage 3, interleaved x 2");
}

// Gathers per step (the third, once the order is recorded) of each stage of pp 2 with ZeRO-3
// on one data-parallel rank, m micro-batches of 1F1B.
std::vector<std::uint64_t> gathers_per_step(int m, bool keep) {
  offload::testing::ScratchDir swap;
  Profile p = pp_profile(zero3_profile(OffloadTarget::kNone, swap.path()), 2, PipelineSchedule::k1F1B, m);
  if (keep) {
    p.zero.max_live_parameters = 1ULL << 30;
    p.zero.max_reuse_distance = 1ULL << 40;
  } else {
    p.zero.max_reuse_distance = 0;
  }
  LocalRanks world(2);
  std::vector<std::uint64_t> per(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      auto dev = host();
      TrainerOptions o;
      o.pp = world.comms[static_cast<std::size_t>(r)];
      auto t = Trainer::create(p, *dev, nullptr, o);
      ASSERT_TRUE(t.ok()) << t.status();
      steps(**t, 2);
      const std::uint64_t before = (*t)->gather_stats().gathers;
      steps(**t, 1);
      per[static_cast<std::size_t>(r)] = (*t)->gather_stats().gathers - before;
    });
  }
  for (auto& t : ranks) t.join();
  return per;
}

TEST(TrainerPipeline, ZeroStage3KeepsAStageGatheredWhenTheWindowHoldsIt) {
  const auto kept4 = gathers_per_step(4, true), kept8 = gathers_per_step(8, true);
  const auto re4 = gathers_per_step(4, false), re8 = gathers_per_step(8, false);
  for (std::size_t r = 0; r < 2; ++r) {
    EXPECT_GT(kept4[r], 0u);
    EXPECT_EQ(kept4[r], kept8[r]) << "stage " << r << ": kept buckets are gathered once per step, whatever m";
    EXPECT_GT(re4[r], kept4[r]) << "stage " << r;
    // Every micro-batch regathers the same buckets (for its forward and its backward): the
    // gathers grow by the same count per micro-batch, and the persistent ones come on top.
    ASSERT_GT(re8[r], re4[r]) << "stage " << r;
    EXPECT_EQ((re8[r] - re4[r]) % 4, 0u) << "stage " << r;
    EXPECT_GE(re4[r], (re8[r] - re4[r])) << "stage " << r;
    std::printf("stage %zu: gathers per step kept %llu (m 4 and 8), regathered %llu (m 4), %llu (m 8)\n", r,
                static_cast<unsigned long long>(kept4[r]), static_cast<unsigned long long>(re4[r]),
                static_cast<unsigned long long>(re8[r]));
  }
}

TEST(TrainerPipeline, LayersThatDoNotDivideAmongTheStagesAreRefused) {
  Profile p = pp_profile(base(), 2, PipelineSchedule::k1F1B, 2, 1, 3);
  auto t = Trainer::create(p, *host());
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("n_layer = 3"), std::string::npos) << t.status();
}

}  // namespace
}  // namespace strata
