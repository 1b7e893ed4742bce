// The composition matrix: every grid in {1x1x1, 2x1x1, 1x2x1, 1x1x2, 2x2x1, 2x1x2, 1x2x2, 2x2x2}
// (dp x tp x pp, LocalComm ranks as threads) x ZeRO stage {0, 1, 2, 3} x optimizer {device, cpu,
// nvme} x parameters {on the device, on NVMe (stage 3 only)}, 10 fp32 steps of a small GPT
// (n_layer 4, n_head 4, a vocabulary of 257 that tp pads), each against the one-rank run of
// the same global batch: losses within 1e-6 relative, every rank's master weights as
// engine/dp_test_util.h's expect_rank_matches states, and the grid's weight export within 1e-6
// of the one-rank export, 1e-5 with tp (the same header; the values differ where sums run in
// another order, and tp's row-parallel products are summed in parts).
// A combination the trainer refuses must be refused at start-up on every rank with the same
// reason; the test lists each, and the list must be exactly the documented one (kRefusals).
// bf16 runs of a few cells compare their losses within 2e-2 relative.
//
// By default a sample runs (every grid, stage, optimizer and parameter placement at least
// once); STRATA_MATRIX=full runs every cell (`ctest -L matrix`).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "engine/grid_test_util.h"
#include "offload/offload_test_util.h"

namespace strata {
namespace {

using namespace dp_test;

constexpr int kMatrixSteps = 10;

struct Cell {
  Grid grid;
  int stage = 0;
  OffloadTarget optimizer = OffloadTarget::kNone;
  OffloadTarget params = OffloadTarget::kNone;
  DType dtype = DType::kF32;
  std::string name() const {
    return grid.name() + "_z" + std::to_string(stage) + "_opt_" + target_name(optimizer) + "_param_" +
           target_name(params) + (dtype == DType::kF32 ? "" : "_bf16");
  }
};

// What the trainer refuses, and why: parameters offloaded to NVMe live in the offloaded
// optimizer's swap and are updated there, which the device Adam does not have (the profile's
// check refuses it, the same on every rank).
bool refused_by_design(const Cell& c) { return c.params == OffloadTarget::kNvme && c.optimizer == OffloadTarget::kNone; }

std::vector<Cell> every_cell() {
  const std::vector<Grid> grids = {{1, 1, 1}, {2, 1, 1}, {1, 2, 1}, {1, 1, 2}, {2, 2, 1}, {2, 1, 2}, {1, 2, 2}, {2, 2, 2}};
  std::vector<Cell> cells;
  for (const Grid& g : grids) {
    for (int stage : {0, 1, 2, 3}) {
      for (OffloadTarget opt : {OffloadTarget::kNone, OffloadTarget::kCpu, OffloadTarget::kNvme}) {
        for (OffloadTarget params : {OffloadTarget::kNone, OffloadTarget::kNvme}) {
          if (params == OffloadTarget::kNvme && stage != 3) continue;
          cells.push_back({g, stage, opt, params});
        }
      }
    }
  }
  return cells;
}

// Every grid, stage, optimizer and parameter placement at least once, and the 2x2x2 grid with
// ZeRO-3 and everything on NVMe; a few in bf16.
std::vector<Cell> sample() {
  using T = OffloadTarget;
  return {
      {{1, 1, 1}, 0, T::kNone},         {{2, 1, 1}, 1, T::kCpu},           {{1, 2, 1}, 2, T::kNvme},
      {{1, 1, 2}, 3, T::kCpu, T::kNvme}, {{2, 2, 1}, 3, T::kNone},          {{2, 1, 2}, 2, T::kCpu},
      {{1, 2, 2}, 1, T::kNvme},         {{2, 2, 2}, 3, T::kNvme, T::kNvme}, {{2, 2, 2}, 0, T::kNone},
      {{2, 1, 2}, 3, T::kNone, T::kNvme},
      {{2, 2, 2}, 2, T::kNone, T::kNone, DType::kBF16}, {{1, 1, 2}, 1, T::kCpu, T::kNone, DType::kBF16},
  };
}

std::vector<Cell> cells() {
  const char* which = std::getenv("STRATA_MATRIX");
  if (which != nullptr && std::string(which) == "full") {
    std::vector<Cell> all = every_cell();
    for (const Cell& c : sample()) {
      if (c.dtype != DType::kF32) all.push_back(c);
    }
    return all;
  }
  return sample();
}

Profile cell_profile(const Cell& c, const std::string& swap) {
  Profile p = c.stage == 3 ? zero3_profile(c.optimizer, swap, c.params) : zero_profile(c.stage, c.optimizer, swap);
  p.train.dims.n_layer = 4;
  p.train.dims.n_head = 4;
  p.train.dims.vocab = 257;
  p.train.grad_accum = 2;
  p.parallel.schedule = PipelineSchedule::k1F1B;
  if (c.dtype != DType::kF32) {
    p.precision.dtype = c.dtype;
    p.optimizer.lr = 3e-3;
  }
  return p;
}

class Matrix : public ::testing::TestWithParam<Cell> {};

TEST_P(Matrix, EqualsTheOneRankRun) {
  const Cell& c = GetParam();
  offload::testing::ScratchDir swap, exports;
  const Profile p = cell_profile(c, swap.path());
  const Profile one = one_rank_reference(p, c.grid);
  const std::string one_file = exports.path() + "/one.safetensors", grid_file = exports.path() + "/grid.safetensors";
  auto dev = host();
  auto ref_trainer = Trainer::create(one, *dev);
  ASSERT_TRUE(ref_trainer.ok()) << ref_trainer.status();
  const RankRun ref = train(**ref_trainer, kMatrixSteps);
  ASSERT_TRUE((*ref_trainer)->export_weights(one_file).ok());
  if (c.dtype != DType::kF32) {
    // Low precision: the losses only, within 2e-2 relative (rounding in another order).
    std::vector<double> losses;
    const std::string refused = on_grid(c.grid, p, [&](int r, Trainer& t) {
      const std::vector<double> mine = steps(t, kMatrixSteps);
      if (r == 0) losses = mine;
    });
    ASSERT_EQ(refused, "") << c.name();
    ASSERT_EQ(losses.size(), ref.losses.size());
    for (std::size_t s = 0; s < ref.losses.size(); ++s) {
      EXPECT_NEAR(losses[s], ref.losses[s], 2e-2 * ref.losses[s]) << c.name() << " step " << s + 1;
    }
    return;
  }
  const std::string refused = run_grid(c.grid, p, ref, whole_spans(one), c.name(), kMatrixSteps, grid_file);
  if (refused_by_design(c)) {
    EXPECT_NE(refused.find("offload.param.device: parameter offload keeps each rank's parameter shard in the offloaded "
                           "optimizer's"), std::string::npos)
        << c.name() << ": " << refused;
    std::printf("refused: %s: %s\n", c.name().c_str(), refused.c_str());
    return;
  }
  ASSERT_EQ(refused, "") << c.name();
  // Tensor parallelism also sums each row-parallel product in parts: its weights drift further.
  const double tolerance = c.grid.tp > 1 ? 1e-5 : 1e-6;
  const double worst = export_difference(grid_file, one_file);
  EXPECT_LE(worst, tolerance) << c.name() << ": the grid's export against the one-rank run's";
  std::printf("%s: export within %.3g of the one-rank run's\n", c.name().c_str(), worst);
}

INSTANTIATE_TEST_SUITE_P(Grids, Matrix, ::testing::ValuesIn(cells()),
                         [](const ::testing::TestParamInfo<Cell>& cell) { return cell.param.name(); });

}  // namespace
}  // namespace strata
