// Tensor parallelism in the trainer against the one-rank run (the same global batch): tp = 2
// and tp = 4 alone, and tp = 2 x dp = 2 on a ProcessGrid with ZeRO stages 0 to 3 and the
// optimizer on the device, in pinned host memory or in NVMe swap, and stage 3 with parameters
// in host memory or on NVMe; with and without sequence parallelism. fp32 losses within 1e-6 relative over 20 steps, and
// each rank's master weights at its elements of the whole tensors within the data-parallel
// tests' tolerance (engine/dp_test_util.h). The tiny GPT with 4 heads and a vocabulary of 257
// (padded to a multiple of tp).
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "engine/dp_test_util.h"
#include "offload/offload_test_util.h"
#include "parallel/process_grid.h"

namespace strata {
namespace {

using namespace dp_test;

Profile tp_profile(int tp, const Profile& base, bool sequence_parallel = false) {
  Profile p = base;
  p.train.dims.n_head = 4;
  p.train.dims.vocab = 257;
  p.parallel.tp = tp;
  p.parallel.sequence_parallel = sequence_parallel;
  return p;
}

void expect_tp_matches(int dp, int tp, const Profile& base, const std::string& what, bool sp = false) {
  const Profile p = tp_profile(tp, base, sp);
  Profile one = one_rank_of(tp_profile(1, base), dp);
  auto dev = host();
  auto ref_trainer = Trainer::create(one, *dev);
  ASSERT_TRUE(ref_trainer.ok()) << ref_trainer.status();
  const RankRun ref = train(**ref_trainer);
  const auto whole = whole_spans(one);

  LocalRanks world(dp * tp);
  std::vector<std::thread> ranks;
  for (int r = 0; r < dp * tp; ++r) {
    ranks.emplace_back([&, r] {
      auto grid = parallel::ProcessGrid::create(*world.comms[static_cast<std::size_t>(r)], {dp, tp, 1});
      ASSERT_TRUE(grid.ok()) << grid.status();
      Profile mine = p;
      mine.parallel.dp = dp;
      auto rank_dev = host();
      TrainerOptions o;
      o.dp = dp > 1 ? &(*grid)->dp() : nullptr;
      o.tp = &(*grid)->tp();
      auto t = Trainer::create(mine, *rank_dev, nullptr, o);
      ASSERT_TRUE(t.ok()) << t.status();
      const RankRun run = train(**t);
      expect_rank_matches(run, ref, **t, whole, what + ", rank " + std::to_string(r));
    });
  }
  for (auto& t : ranks) t.join();
}

TEST(TrainerTensorParallel, TwoAndFourRanksEqualTheOneRankRun) {
  const Profile base = profile(1, kRowsPerRank, 16 << 10, true);
  expect_tp_matches(1, 2, base, "tp 2");
  expect_tp_matches(1, 4, base, "tp 4");
  expect_tp_matches(1, 2, base, "tp 2, sequence parallel", true);
  expect_tp_matches(1, 4, base, "tp 4, sequence parallel", true);
}

TEST(TrainerTensorParallel, ComposesWithDataParallelZeroAndOffload) {
  offload::testing::ScratchDir swap;
  for (int stage : {0, 1, 2, 3}) {
    for (OffloadTarget target : {OffloadTarget::kNone, OffloadTarget::kCpu, OffloadTarget::kNvme}) {
      expect_tp_matches(2, 2, zero_profile(stage, target, swap.path()),
                        "tp 2 x dp 2, stage " + std::to_string(stage) + ", optimizer " + target_name(target));
    }
  }
  for (int stage : {0, 1, 2, 3}) {
    for (OffloadTarget target : {OffloadTarget::kNone, OffloadTarget::kNvme}) {
      expect_tp_matches(2, 2, zero_profile(stage, target, swap.path()),
                        "tp 2 x dp 2, sequence parallel, stage " + std::to_string(stage) + ", optimizer " +
                            target_name(target), true);
    }
  }
  // ZeRO-3 with each rank's parameter shards in host memory (the norm of host gradients), and
  // on NVMe (ZeRO-Infinity: a parameter swap per rank, read ahead along the recorded order).
  expect_tp_matches(2, 2, zero3_profile(OffloadTarget::kCpu, swap.path(), OffloadTarget::kCpu),
                    "tp 2 x dp 2, stage 3, parameters and optimizer on cpu");
  expect_tp_matches(2, 2, zero3_profile(OffloadTarget::kNvme, swap.path(), OffloadTarget::kNvme),
                    "tp 2 x dp 2, stage 3, parameters and optimizer on nvme", true);
}

// A checkpoint saved by tp 2 x dp 2 with ZeRO-1 and the optimizer in NVMe swap holds whole
// tensors: one rank resumes it and its next 3 losses are the grid's within 1e-6, and the
// moments it restores are the grid's, element by element at their global places.
TEST(TrainerTensorParallel, ACheckpointOfTheGridResumesOnOneRank) {
  offload::testing::ScratchDir swap, ck;
  const Profile p = tp_profile(2, zero_profile(1, OffloadTarget::kNvme, swap.path()));
  LocalRanks world(4);
  std::vector<double> grid_losses;
  std::map<std::string, std::vector<float>> grid_moments;
  std::vector<std::thread> ranks;
  for (int r = 0; r < 4; ++r) {
    ranks.emplace_back([&, r] {
      auto grid = parallel::ProcessGrid::create(*world.comms[static_cast<std::size_t>(r)], {2, 2, 1});
      ASSERT_TRUE(grid.ok()) << grid.status();
      Profile mine = p;
      mine.parallel.dp = 2;
      auto dev = host();
      TrainerOptions o;
      o.dp = &(*grid)->dp();
      o.tp = &(*grid)->tp();
      auto t = Trainer::create(mine, *dev, nullptr, o);
      ASSERT_TRUE(t.ok()) << t.status();
      steps(**t, 3);
      auto saved = save_checkpoint(**t, ck.path());
      ASSERT_TRUE(saved.ok()) << saved.status();
      for (const Parameter* q : (*t)->model().parameters()) {
        for (OptimizerState which : {OptimizerState::kExpAvg, OptimizerState::kExpAvgSq}) {
          std::vector<float> whole;
          ASSERT_TRUE((*t)->read_whole_state(*q, which, &whole).ok());
          if (r == 0) grid_moments[q->name() + (which == OptimizerState::kExpAvg ? " m" : " v")] = whole;
        }
      }
      const std::vector<double> next = steps(**t, 3);
      if (r == 0) grid_losses = next;
    });
  }
  for (auto& t : ranks) t.join();
  ASSERT_EQ(grid_losses.size(), 3u);

  auto dev = host();
  auto one = Trainer::create(one_rank_of(tp_profile(1, zero_profile(0, OffloadTarget::kNone, swap.path())), 2), *dev);
  ASSERT_TRUE(one.ok()) << one.status();
  auto loaded = load_checkpoint(**one, ck.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*one)->steps_done(), 3);
  for (const Parameter* q : (*one)->model().parameters()) {
    for (OptimizerState which : {OptimizerState::kExpAvg, OptimizerState::kExpAvgSq}) {
      std::vector<float> got(q->numel());
      ASSERT_TRUE((*one)->read_state(*q, which, 0, got).ok());
      EXPECT_EQ(got, grid_moments.at(q->name() + (which == OptimizerState::kExpAvg ? " m" : " v"))) << q->name();
    }
  }
  const std::vector<double> resumed = steps(**one, 3);
  ASSERT_EQ(resumed.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_NEAR(resumed[i], grid_losses[i], 1e-6 * grid_losses[i]) << "step " << i + 4;
}

TEST(TrainerTensorParallel, AGroupOfTheWrongSizeIsRefused) {
  Profile p = tp_profile(2, profile(1, kRowsPerRank, 16 << 10, true));
  auto dev = host();
  auto t = Trainer::create(p, *dev);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("parallel.tp = 2 but the trainer runs as one rank"), std::string::npos)
      << t.status();
}

}  // namespace
}  // namespace strata
