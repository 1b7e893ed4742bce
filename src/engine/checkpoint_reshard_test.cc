// Checkpoints reshard to any grid with no conversion step: the 2x2x2 grid (dp x tp x pp) with
// ZeRO-3 and its parameters and optimizer state on NVMe saves after 3 steps; one rank with the
// optimizer in host memory resumes it, trains a step and saves; four data-parallel ranks with
// ZeRO-1 resume that. Each resumed run's next losses equal the uninterrupted grid's within 1e-6
// relative (fp32), and the Adam moments it restores equal the saving grid's, element by element.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "engine/grid_test_util.h"
#include "offload/offload_test_util.h"
#include "strata/checkpoint.h"

namespace strata {
namespace {

using namespace dp_test;

using Moments = std::map<std::string, std::vector<float>>;

Profile small_gpt(Profile p) {
  p.train.dims.n_layer = 4;
  p.train.dims.n_head = 4;
  p.train.dims.vocab = 257;
  p.train.grad_accum = 2;
  return p;
}

// Every whole tensor's two moments, read on every rank of the trainer's grid (a collective).
Moments moments_of(Trainer& t) {
  Moments out;
  auto whole = t.whole_model();
  EXPECT_TRUE(whole.ok()) << whole.status();
  for (const Parameter* q : (*whole)->parameters()) {
    for (OptimizerState which : {OptimizerState::kExpAvg, OptimizerState::kExpAvgSq}) {
      std::vector<float> v;
      EXPECT_TRUE(t.read_model_state(q->name(), which, &v).ok()) << q->name();
      out[q->name() + (which == OptimizerState::kExpAvg ? " m" : " v")] = std::move(v);
    }
  }
  return out;
}

void expect_losses_near(const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6 * want[i]) << what << " step " << i;
}

TEST(CheckpointReshard, TheGridsCheckpointResumesOnOneRankAndOnFourDataParallelRanks) {
  offload::testing::ScratchDir swap, ck_grid, ck_one;
  const Grid cube{2, 2, 2};
  // The uninterrupted grid: 3 steps, a checkpoint, 3 more.
  Moments saved;
  std::vector<double> after;
  const std::string refused = on_grid(cube, small_gpt(zero3_profile(OffloadTarget::kNvme, swap.path(), OffloadTarget::kNvme)),
                                      [&](int r, Trainer& t) {
                                        steps(t, 3);
                                        auto path = save_checkpoint(t, ck_grid.path());
                                        ASSERT_TRUE(path.ok()) << path.status();
                                        Moments m = moments_of(t);
                                        const std::vector<double> next = steps(t, 3);
                                        if (r == 0) {
                                          saved = std::move(m);
                                          after = next;
                                        }
                                      });
  ASSERT_EQ(refused, "");
  ASSERT_EQ(after.size(), 3u);

  // One rank, the optimizer in pinned host memory, the grid's global batch in one micro-batch.
  Profile one = small_gpt(zero_profile(0, OffloadTarget::kCpu, swap.path()));
  one.train.micro_batch = cube.dp * kRowsPerRank;
  auto dev = host();
  auto t1 = Trainer::create(one, *dev);
  ASSERT_TRUE(t1.ok()) << t1.status();
  ASSERT_TRUE(load_checkpoint(**t1, ck_grid.path()).ok());
  EXPECT_EQ((*t1)->steps_done(), 3);
  const Moments restored = moments_of(**t1);
  for (const auto& [name, values] : saved) EXPECT_EQ(restored.at(name), values) << name << ": restored on one rank";
  const std::vector<double> one_next = steps(**t1, 1);
  expect_losses_near(one_next, {after[0]}, "one rank resumed");
  ASSERT_TRUE(save_checkpoint(**t1, ck_one.path()).ok());
  const Moments one_saved = moments_of(**t1);

  // Four data-parallel ranks with ZeRO-1, one row each.
  Profile four = small_gpt(zero_profile(1, OffloadTarget::kNone, swap.path()));
  four.train.micro_batch = 1;
  std::vector<double> four_next;
  const std::string refused4 = on_grid({4, 1, 1}, four, [&](int r, Trainer& t) {
    ASSERT_TRUE(load_checkpoint(t, ck_one.path()).ok());
    EXPECT_EQ(t.steps_done(), 4);
    const Moments m = moments_of(t);
    for (const auto& [name, values] : one_saved) EXPECT_EQ(m.at(name), values) << name << ": restored on rank " << r;
    const std::vector<double> next = steps(t, 2);
    if (r == 0) four_next = next;
  });
  ASSERT_EQ(refused4, "");
  expect_losses_near(four_next, {after[1], after[2]}, "four ranks resumed");
}

}  // namespace
}  // namespace strata
