// ZeRO stages 1 and 2 against the one-rank run with the global batch (dp x B rows), the
// optimizer on the device, in pinned host memory or in NVMe swap (each rank's shard in its own
// swap files): fp32 losses within 1e-6 relative over 20 steps, master weights within 1e-6 but
// for at most 1 in 1000 (within lr / 10; engine/dp_test_util.h says why), every rank's gathered
// weights bitwise equal. dp 3 exercises the buckets' padding. Also: the bytes each rank sends
// per step against ZeRO's formulas, and the gradient memory stage 2 keeps.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <cstdio>
#include <optional>

#include "engine/dp_test_util.h"
#include "offload/offload_test_util.h"
#include "parallel/faulty_comm.h"
#include "strata/checkpoint.h"
#include "strata/engine.h"
#include "strata/units.h"

namespace strata {
namespace {

using namespace dp_test;

TEST(TrainerZero, StagesOneAndTwoEqualTheOneRankRunWithEveryOptimizerHome) {
  offload::testing::ScratchDir swap;
  for (int dp : {2, 3, 4}) {
    const RankRun ref = one_rank(dp);
    for (int stage : {1, 2}) {
      for (OffloadTarget target : {OffloadTarget::kNone, OffloadTarget::kCpu, OffloadTarget::kNvme}) {
        const std::string what = "dp " + std::to_string(dp) + " stage " + std::to_string(stage) + " " + target_name(target);
        SCOPED_TRACE(what);
        expect_matches_one_rank(run_zero(dp, zero_profile(stage, target, swap.path())), ref, what);
      }
    }
  }
}

// bf16 and fp16 (with loss scaling), activation checkpointing and three micro-steps, through
// stages 1 and 2 with the optimizer on the device and on the host (dp_test_util.h: the
// tolerances).
TEST(TrainerZero, LowPrecisionCheckpointingAndAccumulationEqualTheOneRankRun) {
  offload::testing::ScratchDir swap;
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    for (int stage : {1, 2}) {
      for (OffloadTarget target : {OffloadTarget::kNone, OffloadTarget::kCpu}) {
        expect_low_precision_matches_one_rank(zero_profile(stage, target, swap.path()), dtype,
                                              "stage " + std::to_string(stage) + " " + target_name(target));
      }
    }
  }
}

// Stage 0 with the optimizer offloaded: every rank keeps the whole state, its gradients moved
// to the host once all-reduced.
TEST(TrainerZero, StageZeroWithTheOptimizerOffloadedEqualsTheOneRankRun) {
  offload::testing::ScratchDir swap;
  for (int dp : {2, 3, 4}) {
    const RankRun ref = one_rank(dp);
    for (OffloadTarget target : {OffloadTarget::kCpu, OffloadTarget::kNvme}) {
      expect_matches_one_rank(run_zero(dp, zero_profile(0, target, swap.path())), ref,
                              "dp " + std::to_string(dp) + " " + target_name(target));
    }
  }
}

// Overlapped and delayed offloaded updates, and buckets launched only at the end of backward,
// keep stage 1 and 2 equal to their one-rank counterparts (the delayed update is one step
// stale, on one rank as on many).
TEST(TrainerZero, OverlapVariantsEqualTheirOneRankCounterparts) {
  offload::testing::ScratchDir swap;
  for (int stage : {1, 2}) {
    Profile p = zero_profile(stage, OffloadTarget::kNvme, swap.path());
    p.offload_optimizer.delayed_update = true;
    p.offload_optimizer.delayed_update_warmup = 3;
    auto dev = host();
    auto t = Trainer::create(one_rank_of(p, 2), *dev);
    ASSERT_TRUE(t.ok()) << t.status();
    const RankRun ref = train(**t);
    expect_matches_one_rank(run_zero(2, p), ref, "delayed, stage " + std::to_string(stage));
    Profile late = zero_profile(stage, OffloadTarget::kNone, swap.path());
    late.zero.overlap_comm = false;
    expect_matches_one_rank(run_zero(2, late), one_rank(2), "buckets at the end, stage " + std::to_string(stage));
  }
}

// Per step, each rank sends (counters: the ring volume) the reduce-scatter of its gradient
// buckets and the all-gather of its parameters, each Ψ(N-1)/N elements of the padded space (4
// bytes here, fp32), plus the scalar all-reduces (loss, squared norm): stage 1 once per step,
// stage 2's reduce-scatter once per micro-step (grad_accum = 2).
TEST(TrainerZero, EachRankSendsZerosVolume) {
  offload::testing::ScratchDir swap;
  for (int dp : {2, 3}) {
    for (int stage : {1, 2}) {
      LocalRanks ranks(dp);
      std::vector<CommStats> before(static_cast<std::size_t>(dp)), after(before.size());
      Profile p = zero_profile(stage, OffloadTarget::kNone, swap.path());
      p.parallel.dp = dp;
      on_ranks(ranks.comms, p, [&](int r, Trainer& t) {
        Communicator& c = *ranks.comms[static_cast<std::size_t>(r)];
        ASSERT_TRUE(t.train_step(text()).ok());  // every step's forward gathers every bucket
        before[static_cast<std::size_t>(r)] = c.stats();
        ASSERT_TRUE(t.train_step(text()).ok());
        after[static_cast<std::size_t>(r)] = c.stats();
      });
      std::uint64_t elements = 0;  // the parameters'
      {
        auto dev = host();
        p.parallel.dp = 1;
        auto t = Trainer::create(p, *dev);
        ASSERT_TRUE(t.ok()) << t.status();
        for (const Parameter* q : (*t)->model().parameters()) elements += q->numel();
      }
      const auto N = static_cast<std::uint64_t>(dp);
      const int micro = stage == 2 ? p.train.grad_accum : 1;
      for (std::size_t r = 0; r < before.size(); ++r) {
        const auto sent = [&](CommKind k) { return after[r].of(k).bytes_sent - before[r].of(k).bytes_sent; };
        const auto payload = [&](CommKind k) { return after[r].of(k).payload_bytes - before[r].of(k).payload_bytes; };
        const std::uint64_t rs = payload(CommKind::kReduceScatter), ag = payload(CommKind::kAllGather);
        // The padded space is the parameters plus at most an alignment per tensor and a
        // (dp x alignment) per bucket: within 10 % for the tiny model's small buckets.
        EXPECT_EQ(rs, ag * static_cast<std::uint64_t>(micro)) << "dp " << dp << " stage " << stage;
        EXPECT_GE(ag, elements * 4);
        EXPECT_LE(static_cast<double>(ag), 1.1 * static_cast<double>(elements * 4)) << "padding";
        EXPECT_EQ(sent(CommKind::kReduceScatter), rs * (N - 1) / N) << "dp " << dp << " stage " << stage;
        EXPECT_EQ(sent(CommKind::kAllGather), ag * (N - 1) / N) << "dp " << dp << " stage " << stage;
        EXPECT_EQ(payload(CommKind::kAllReduce), 8u) << "the loss and the squared norm, one fp32 each";
      }
    }
  }
}

// Stage 2 holds this rank's gradient shard and the open buckets' slots, not every gradient:
// with 4 KiB buckets, at most half the gradients plus the tied embedding's bucket (open through
// the whole backward) and four buckets in flight.
TEST(TrainerZero, StageTwoKeepsOnlyTheShardAndTheOpenBuckets) {
  offload::testing::ScratchDir swap;
  constexpr std::uint64_t kBucket = 4 << 10;
  std::uint64_t used[3] = {};
  std::uint64_t grads = 0, wte = 0;  // fp32 gradient bytes of the model and of the embedding
  for (int stage : {1, 2}) {
    LocalRanks ranks(2);
    Profile p = zero_profile(stage, OffloadTarget::kNone, swap.path(), kBucket);
    std::vector<std::uint64_t> bytes(2);
    on_ranks(ranks.comms, p, [&](int r, Trainer& t) {
      ASSERT_TRUE(t.train_step(text()).ok());
      ASSERT_TRUE(t.train_step(text()).ok());
      bytes[static_cast<std::size_t>(r)] = t.parameter_bytes().total();
      if (r == 0 && stage == 1) {
        for (const Parameter* q : t.model().parameters()) grads += q->numel() * 4;
        wte = t.model().find_parameter("wte.weight")->numel() * 4;
      }
    });
    used[stage] = bytes[0];
  }
  // Stage 1 and 2 lay out and hold the values alike; stage 1 holds every gradient.
  const std::uint64_t stage2_grads = used[2] - (used[1] - grads);
  EXPECT_LE(static_cast<double>(stage2_grads), 1.05 * static_cast<double>(grads / 2 + wte + 4 * kBucket))
      << "stage 1 " << used[1] << " B, stage 2 " << used[2] << " B";
  EXPECT_LT(used[2], used[1]);
}

// A sharded checkpoint (every rank writes its shard) saved by 2 ranks of stage 1 and of stage 2
// with the optimizer in NVMe resumes on 1 rank and on 4 (the same global batch of 4 rows), and
// the next 3 losses are the uninterrupted run's within 1e-6 relative.
TEST(TrainerZero, AShardedCheckpointOfTwoRanksResumesOnOneAndOnFour) {
  offload::testing::ScratchDir swap, ckpt;
  for (int stage : {1, 2}) {
    expect_resumes_on_one_and_four(zero_profile(stage, OffloadTarget::kNvme, swap.path()),
                                   ckpt.path() + "/stage" + std::to_string(stage), "stage " + std::to_string(stage));
  }
}

// The device Adam, whose state reads fail once `fail` is set (a rank whose disk or memory
// gives out in the middle of a save).
class FailingReads final : public StepOptimizer {
 public:
  explicit FailingReads(std::unique_ptr<StepOptimizer> inner) : inner_(std::move(inner)) {}
  bool fail = false;
  std::string name() const override { return inner_->name(); }
  Status attach(Module& m, Device& d, Stream& s, const OptimizerShard& shard) override { return inner_->attach(m, d, s, shard); }
  Status set_master(const Parameter& p, std::uint64_t f, std::span<const float> v) override { return inner_->set_master(p, f, v); }
  Status get_master(const Parameter& p, std::uint64_t f, std::span<float> o) override { return inner_->get_master(p, f, o); }
  Status read_state(const Parameter& p, OptimizerState w, std::uint64_t f, std::span<float> o) override {
    if (fail) return io_error("reading " + p.name() + ": injected failure");
    return inner_->read_state(p, w, f, o);
  }
  Status write_state(const Parameter& p, OptimizerState w, std::uint64_t f, std::span<const float> v) override {
    return inner_->write_state(p, w, f, v);
  }
  Result<UpdateResult> step(const UpdateRequest& r) override { return inner_->step(r); }
  std::int64_t updates() const override { return inner_->updates(); }
  Status set_updates(std::int64_t n) override { return inner_->set_updates(n); }
  std::uint64_t device_bytes() const override { return inner_->device_bytes(); }

 private:
  std::unique_ptr<StepOptimizer> inner_;
};

// A rank that cannot write its shard fails the save on every rank, naming it, and leaves the
// previous checkpoint the newest complete one.
TEST(TrainerZero, ARankThatCannotWriteFailsTheSaveEverywhere) {
  offload::testing::ScratchDir swap, ckpt;
  Profile p = zero_profile(1, OffloadTarget::kNone, swap.path());
  p.train.micro_batch = 2;
  std::vector<Status> second(2);
  std::vector<FailingReads*> opts(2);
  LocalRanks ranks(2);
  auto optimizer = [&](int r) -> std::unique_ptr<StepOptimizer> {
    auto o = std::make_unique<FailingReads>(std::move(*make_device_adam(p.optimizer)));
    opts[static_cast<std::size_t>(r)] = o.get();
    return o;
  };
  on_ranks(ranks.comms, p, [&](int rank, Trainer& t) {
    ASSERT_TRUE(t.train_step(text()).ok());
    ASSERT_TRUE(save_checkpoint(t, ckpt.path()).ok());
    ASSERT_TRUE(t.train_step(text()).ok());
    opts[static_cast<std::size_t>(rank)]->fail = rank == 1;  // rank 1's part of the save fails
    second[static_cast<std::size_t>(rank)] = save_checkpoint(t, ckpt.path()).status();
  }, optimizer);
  EXPECT_FALSE(second[1].ok());
  ASSERT_FALSE(second[0].ok());
  EXPECT_NE(second[0].message().find("failed on rank 1"), std::string::npos) << second[0];
  auto latest = latest_checkpoint(ckpt.path());
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, ckpt.path() + "/step-00000001");
}

// Engines on two ranks: saving and exporting are collectives with one outcome on every rank,
// for stage 0 (rank 0 writes) and stage 1 (each rank its shard); an export that cannot be
// written fails on every rank, naming the rank, without leaving the others waiting.
TEST(TrainerZero, EnginesAgreeOnSavesAndExports) {
  offload::testing::ScratchDir swap, out;
  for (int stage : {0, 1}) {
    Profile p = zero_profile(stage, OffloadTarget::kNone, swap.path());
    p.parallel.dp = 2;
    p.memory.device_budget = 256ULL << 20;
    LocalRanks ranks(2);
    std::vector<Result<std::string>> saved(2, std::string());
    std::vector<Status> bad(2), good(2);
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r) {
      threads.emplace_back([&, r] {
        auto e = Engine::create(p, ranks.comms[static_cast<std::size_t>(r)]);
        ASSERT_TRUE(e.ok()) << e.status();
        ASSERT_TRUE((*e)->train_step(text()).ok());
        const std::string base = out.path() + "/stage" + std::to_string(stage);
        saved[static_cast<std::size_t>(r)] = (*e)->save_checkpoint(base + "/ckpt");
        bad[static_cast<std::size_t>(r)] = (*e)->export_weights(base + "/missing/dir/w.safetensors");
        good[static_cast<std::size_t>(r)] = (*e)->export_weights(base + "-w.safetensors");
      });
    }
    for (auto& t : threads) t.join();
    const std::string what = "stage " + std::to_string(stage);
    ASSERT_TRUE(saved[0].ok() && saved[1].ok()) << what << ": " << saved[0].status() << " / " << saved[1].status();
    EXPECT_EQ(*saved[0], *saved[1]) << what;
    EXPECT_FALSE(bad[0].ok()) << what;
    ASSERT_FALSE(bad[1].ok()) << what;
    EXPECT_NE(bad[1].message().find("failed on rank 0"), std::string::npos) << what << ": " << bad[1];
    EXPECT_EQ(bad[1].code(), bad[0].code()) << what << ": every rank fails with the failing rank's kind";
    EXPECT_TRUE(good[0].ok() && good[1].ok()) << what << ": " << good[0] << " / " << good[1];
    EXPECT_TRUE(std::filesystem::exists(out.path() + "/stage" + std::to_string(stage) + "-w.safetensors")) << what;
  }
}

// With every collective of every rank delayed (differently per rank), every stage gives the
// undelayed results bit for bit: the stream order, not the timing, decides what is reduced.
TEST(TrainerZero, DelayedCollectivesLeaveTheResultsUnchanged) {
  offload::testing::ScratchDir swap;
  for (int stage : {0, 1, 2}) {
    const Profile p = zero_profile(stage, stage == 0 ? OffloadTarget::kNone : OffloadTarget::kCpu, swap.path());
    const std::vector<RankRun> plain = run_zero(2, p);
    LocalRanks ranks(2);
    std::vector<std::unique_ptr<parallel::FaultyComm>> slow;
    std::vector<Communicator*> comms;
    for (int r = 0; r < 2; ++r) {
      slow.push_back(std::make_unique<parallel::FaultyComm>(std::move(ranks.owned[static_cast<std::size_t>(r)])));
      slow.back()->delay(std::nullopt, std::chrono::milliseconds(1 + 2 * r));
      comms.push_back(slow.back().get());
    }
    const std::vector<RankRun> delayed = run_ranks(comms, p);
    for (std::size_t r = 0; r < 2; ++r) {
      EXPECT_EQ(delayed[r].losses, plain[r].losses) << "stage " << stage << " rank " << r;
      EXPECT_TRUE(delayed[r].masters == plain[r].masters) << "stage " << stage << " rank " << r;
    }
  }
}

}  // namespace
}  // namespace strata
