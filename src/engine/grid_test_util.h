// src/engine/grid_test_util.h — a dp x tp x pp grid of trainers (LocalComm ranks as threads, a
// ProcessGrid over them) against the one-rank run of the same global batch, for the pipeline
// tests and the composition matrix: the losses and each rank's master weights compared as
// engine/dp_test_util.h's expect_rank_matches states, and optionally the grid's weight export
// against the one-rank run's.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "engine/dp_test_util.h"
#include "parallel/process_grid.h"

namespace strata::dp_test {

struct Grid {
  int dp = 1, tp = 1, pp = 1;
  int ranks() const { return dp * tp * pp; }
  std::string name() const {
    return "dp" + std::to_string(dp) + "_tp" + std::to_string(tp) + "_pp" + std::to_string(pp);
  }
};

// The one-rank run of `p`'s global batch: the same micro-batches, ZeRO stage 0, the optimizer
// on the device, every tensor whole.
inline Profile one_rank_reference(Profile p, Grid g) {
  Profile one = one_rank_of(p, g.dp);
  one.parallel.tp = 1;
  one.parallel.pp = 1;
  one.parallel.sequence_parallel = false;
  one.parallel.schedule = PipelineSchedule::k1F1B;
  one.parallel.virtual_stages = 1;
  one.offload_optimizer.device = OffloadTarget::kNone;
  return one;
}

inline std::vector<char> file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// Two fp32 safetensors exports of the same model: the same header, and the largest difference of
// their values (infinity when the headers differ).
inline double export_difference(const std::string& a, const std::string& b) {
  const std::vector<char> x = file_bytes(a), y = file_bytes(b);
  if (x.size() != y.size() || x.size() < 8) return INFINITY;
  std::uint64_t header = 0;
  std::memcpy(&header, x.data(), 8);
  if (8 + header > x.size() || !std::equal(x.begin(), x.begin() + static_cast<std::ptrdiff_t>(8 + header), y.begin())) {
    return INFINITY;
  }
  double worst = 0;
  for (std::size_t at = 8 + header; at + 4 <= x.size(); at += 4) {
    float u, v;
    std::memcpy(&u, x.data() + at, 4);
    std::memcpy(&v, y.data() + at, 4);
    worst = std::max(worst, std::abs(double(u) - double(v)));
  }
  return worst;
}

// One trainer of `p` per rank of `g` (parallel.dp, tp and pp set from `g`), each on a thread
// with its own device, `body(rank, trainer)` run on each. Returns the reason the trainers
// refused the combination at start-up (every rank the same), or "" when they ran.
inline std::string on_grid(Grid g, Profile p, const std::function<void(int, Trainer&)>& body) {
  p.parallel.dp = g.dp;
  p.parallel.tp = g.tp;
  p.parallel.pp = g.pp;
  LocalRanks world(g.ranks());
  std::vector<std::string> refused(static_cast<std::size_t>(g.ranks()));
  std::vector<std::thread> ranks;
  for (int r = 0; r < g.ranks(); ++r) {
    ranks.emplace_back([&, r] {
      auto grid = parallel::ProcessGrid::create(*world.comms[static_cast<std::size_t>(r)], {g.dp, g.tp, g.pp});
      ASSERT_TRUE(grid.ok()) << grid.status();
      auto dev = host();
      TrainerOptions o;
      o.dp = g.dp > 1 ? &(*grid)->dp() : nullptr;
      o.tp = g.tp > 1 ? &(*grid)->tp() : nullptr;
      o.pp = g.pp > 1 ? &(*grid)->pp() : nullptr;
      auto t = Trainer::create(p, *dev, nullptr, o);
      if (!t.ok()) {
        refused[static_cast<std::size_t>(r)] = t.status().message();
        return;
      }
      body(r, **t);
    });
  }
  for (auto& t : ranks) t.join();
  for (const std::string& why : refused) EXPECT_EQ(why, refused[0]) << g.name() << ": the ranks disagree on starting";
  return refused[0];
}

// The rank's device memory against ZeRO's model state for the stage and homes in use
// (Trainer::DeviceMemory): the model state it holds is at least the formula's and at most 15 %
// and 16 KiB above it (the small test model's alignment padding and persistent parameters),
// and the peak less the activations is no more than the formula plus the declared buffers
// (no device memory the accounting does not know of) and at least 0.9 of it.
inline void expect_peak_within_formula(const Trainer& t, const std::string& what) {
  const Trainer::DeviceMemory m = t.device_memory();
  const double formula = m.formula_bytes();
  const double bound = formula + static_cast<double>(m.buffer_bytes());
  const double ratio = (static_cast<double>(m.peak) - static_cast<double>(m.activations)) / bound;
  const std::string figures = what + ": peak " + std::to_string(m.peak) + " B, activations " +
                              std::to_string(m.activations) + " B, model state " + std::to_string(m.model_state) +
                              " B against " + std::to_string(formula) + " B (" + std::to_string(m.state_per_element) +
                              " B x " + std::to_string(m.elements) + "), buffers " + std::to_string(m.buffer_bytes()) + " B";
  EXPECT_GE(static_cast<double>(m.model_state), formula) << figures;
  EXPECT_LE(static_cast<double>(m.model_state), 1.15 * formula + 16384) << figures;
  EXPECT_LE(ratio, 1.0) << figures;
  EXPECT_GE(ratio, 0.9) << figures;
}

// Every rank of `g` trains `p` for `steps` steps and matches `ref` (the one-rank run, whose
// tensors `whole` locates); with `export_path`, the grid exports its weights there (a
// collective, written by global rank 0). on_grid's refusal, or "".
inline std::string run_grid(Grid g, const Profile& p, const RankRun& ref, const std::map<std::string, Span>& whole,
                            const std::string& what, int steps = kSteps, const std::string& export_path = "") {
  return on_grid(g, p, [&](int r, Trainer& t) {
    const RankRun run = train(t, steps);
    expect_rank_matches(run, ref, t, whole, what + ", rank " + std::to_string(r));
    expect_peak_within_formula(t, what + ", rank " + std::to_string(r));
    if (!export_path.empty()) {
      EXPECT_TRUE(t.export_weights(export_path).ok()) << what;
    }
  });
}

// run_grid against the one-rank run of the same global batch, which must not refuse.
inline void expect_grid_matches(Grid g, const Profile& p, const std::string& what) {
  const Profile one = one_rank_reference(p, g);
  auto dev = host();
  auto ref_trainer = Trainer::create(one, *dev);
  ASSERT_TRUE(ref_trainer.ok()) << ref_trainer.status();
  const RankRun ref = train(**ref_trainer);
  const std::string refused = run_grid(g, p, ref, whole_spans(one), what);
  EXPECT_EQ(refused, "") << what;
}

}  // namespace strata::dp_test
