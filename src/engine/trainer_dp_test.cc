// Data parallelism (ZeRO stage 0) against the one-rank run: dp ranks of micro_batch B as threads
// with LocalComm equal one rank of micro_batch dp x B, step by step. Stated tolerance (fp32):
// losses within 1e-6 relative over 20 steps; final master weights within 1e-6 but for at most
// 1 in 1000, which stay within lr / 10 (the ranks sum their rows' gradients in another order
// than one rank's GEMMs do, and Adam magnifies that where a gradient is near zero); the ranks
// agree with each other bitwise (LocalComm reduces in a fixed order).
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <thread>
#include <vector>

#include <filesystem>
#include <chrono>
#include <functional>
#include <optional>

#include "core/remove_at_exit.h"
#include "engine/dp_test_util.h"
#include "parallel/faulty_comm.h"
#include "strata/checkpoint.h"
#include "strata/communicator.h"
#include "strata/trainer.h"

namespace strata {
namespace {

using namespace dp_test;

TEST(TrainerDataParallel, StageZeroEqualsTheOneRankRunWithTheGlobalBatch) {
  for (int dp : {2, 3}) {
    const RankRun ref = one_rank(dp);
    // Small buckets, launched as backward proceeds; and one bucket at the end.
    expect_matches_one_rank(data_parallel(dp, 16 << 10, true), ref, "dp " + std::to_string(dp) + " overlapped");
    expect_matches_one_rank(data_parallel(dp, 25ULL << 20, false), ref, "dp " + std::to_string(dp) + " at the end");
  }
}

// A checkpoint saved by 2 ranks resumes on 1 and on 4 (the same global batch of 4 rows), and
// the next steps' losses are the uninterrupted run's within 1e-6: stage 0 keeps the whole state
// on every rank and the checkpoint format is world-size independent.
TEST(TrainerDataParallel, ACheckpointOfTwoRanksResumesOnOneAndOnFour) {
  const char* base = std::getenv("STRATA_TEST_TMPDIR");
  const auto dir = std::filesystem::path(base ? base : "/tmp") / ("trainer_dp_test." + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  remove_at_exit(dir);
  expect_resumes_on_one_and_four(profile(1, kRowsPerRank, 25ULL << 20, true), dir.string(), "stage 0");
}

// The bytes each rank sends per step are the ring all-reduce of the gradient buffer (the
// parameters in their aligned slots) and of the loss: 2 S (N - 1) / N.
TEST(TrainerDataParallel, EachRankSendsTheRingVolumeOfItsGradients) {
  for (int dp : {2, 3}) {
    LocalRanks ranks(dp);
    std::vector<std::uint64_t> sent(static_cast<std::size_t>(dp));
    std::uint64_t grad_bytes = 0;
    on_ranks(ranks.comms, profile(1, kRowsPerRank, 16 << 10, true), [&](int r, Trainer& t) {
      Communicator& c = *ranks.comms[static_cast<std::size_t>(r)];
      const std::uint64_t before = c.stats().bytes_sent();
      ASSERT_TRUE(t.train_step(text()).ok());
      sent[static_cast<std::size_t>(r)] = c.stats().bytes_sent() - before;
      if (r == 0) {
        for (const Parameter* p : t.model().parameters()) grad_bytes += (p->numel() * 4 + 255) / 256 * 256;
      }
    });
    const auto N = static_cast<std::uint64_t>(dp);
    // Each bucket and the loss are rounded down separately by the integer formula.
    for (std::uint64_t s : sent) {
      EXPECT_NEAR(static_cast<double>(s), static_cast<double>(2 * (grad_bytes + 4) * (N - 1) / N), 64.0) << "dp " << dp;
    }
  }
}

// The device Adam, with an inf written into one gradient of this rank before it is reduced in
// step `at` (the way an fp16 overflow in one rank's backward looks).
class OverflowOnce final : public StepOptimizer {
 public:
  OverflowOnce(std::unique_ptr<StepOptimizer> inner, int at) : inner_(std::move(inner)), at_(at) {}
  std::string name() const override { return inner_->name(); }
  Status attach(Module& model, Device& device, Stream& stream, const OptimizerShard& shard) override {
    device_ = &device;
    stream_ = &stream;
    return inner_->attach(model, device, stream, shard);
  }
  Status set_master(const Parameter& p, std::uint64_t first, std::span<const float> v) override {
    return inner_->set_master(p, first, v);
  }
  Status get_master(const Parameter& p, std::uint64_t first, std::span<float> out) override {
    return inner_->get_master(p, first, out);
  }
  Status after_backward(Module& module, bool last) override {
    if (last && steps_ + 1 == at_ && !done_ && !module.own_parameters().empty()) {
      done_ = true;
      STRATA_ASSIGN_OR_RETURN(DeviceView g, module.own_parameters().front()->grad().slice(0, 1));
      STRATA_RETURN_IF_ERROR(device_->fill(g, INFINITY, *stream_));
    }
    return inner_->after_backward(module, last);
  }
  Result<UpdateResult> step(const UpdateRequest& r) override {
    ++steps_;
    return inner_->step(r);
  }
  std::int64_t updates() const override { return inner_->updates(); }
  std::uint64_t device_bytes() const override { return inner_->device_bytes(); }

 private:
  std::unique_ptr<StepOptimizer> inner_;
  int at_;
  int steps_ = 0;
  bool done_ = false;
  Device* device_ = nullptr;
  Stream* stream_ = nullptr;
};

// fp16 with an overflow on one rank only, with ZeRO stage 0, 1 and 2: the reduction (of the
// gradients, or of the shards' squared norms) carries it to every rank, so every rank skips
// that step and halves its loss scale, and they stay identical.
TEST(TrainerDataParallel, AnOverflowOnOneRankSkipsTheStepOnEveryRank) {
  struct Seen {
    std::vector<bool> skipped;
    std::vector<double> scales;
    std::vector<double> losses;
  };
  for (int stage : {0, 1, 2}) {
    SCOPED_TRACE("stage " + std::to_string(stage));
    std::vector<Seen> seen(2);
    Profile p = profile(1, kRowsPerRank, 16 << 10, true);
    p.precision.dtype = DType::kF16;
    p.precision.initial_scale_power = 8;
    p.precision.hysteresis = 1;
    p.zero.stage = stage;
    auto optimizer = [&](int r) -> std::unique_ptr<StepOptimizer> {
      auto adam = make_device_adam(p.optimizer);
      EXPECT_TRUE(adam.ok());
      if (r == 1) return std::make_unique<OverflowOnce>(std::move(*adam), 2);
      return std::move(*adam);
    };
    LocalRanks ranks(2);
    on_ranks(ranks.comms, p, [&](int r, Trainer& t) {
      for (int s = 0; s < 4; ++s) {
        auto st = t.train_step(text());
        ASSERT_TRUE(st.ok()) << st.status();
        seen[static_cast<std::size_t>(r)].skipped.push_back(st->skipped);
        seen[static_cast<std::size_t>(r)].scales.push_back(t.loss_scale());
        seen[static_cast<std::size_t>(r)].losses.push_back(st->loss);
      }
    }, optimizer);
    for (const Seen& s : seen) {
      EXPECT_EQ(s.skipped, (std::vector<bool>{false, true, false, false}));
      EXPECT_EQ(s.scales[1], s.scales[0] / 2) << "the scale halves after the overflow";
    }
    EXPECT_EQ(seen[0].scales, seen[1].scales);
    EXPECT_EQ(seen[0].losses, seen[1].losses);
  }
}

TEST(TrainerDataParallel, TheGroupMustHaveParallelDpRanks) {
  auto comms = make_local_comms(1);
  ASSERT_TRUE(comms.ok());
  auto dev = host();
  TrainerOptions o;
  o.dp = (*comms)[0].get();
  auto t = Trainer::create(profile(2, kRowsPerRank, 25ULL << 20, true), *dev, nullptr, o);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("parallel.dp = 2 but the trainer runs as one rank"), std::string::npos)
      << t.status();
}

}  // namespace
}  // namespace strata
