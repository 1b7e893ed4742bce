// ZeRO stage 3 against the one-rank run with the global batch (dp x B rows), on one rank (the
// gather is a copy) and on two and three, with the optimizer on the device, in pinned host
// memory or in NVMe swap: fp32 losses within 1e-6 relative over 20 steps, master weights within
// 1e-6 but for at most 1 in 1000 (engine/dp_test_util.h says why). Also: the window of gathered
// parameters never holds more than zero.max_live_parameters and later steps gather nothing on
// demand; a window or device too small for the largest module is refused at start-up with the
// numbers; a device too small for a replica's parameters and gradients trains at stage 3; the
// traffic per step against ZeRO-3's formula; and checkpoints across dp sizes.
#include <gtest/gtest.h>

#include <cstdio>
#include <mutex>
#include <thread>

#include "engine/dp_test_util.h"
#include "offload/offload_test_util.h"
#include "strata/checkpoint.h"
#include "strata/log.h"

namespace strata {
namespace {

using namespace dp_test;

TEST(TrainerZeroThree, EqualsTheOneRankRunWithEveryOptimizerAndParameterHome) {
  offload::testing::ScratchDir swap;
  for (int dp : {1, 2, 3}) {
    const RankRun ref = one_rank(dp);
    for (OffloadTarget params : {OffloadTarget::kNone, OffloadTarget::kCpu, OffloadTarget::kNvme}) {
      for (OffloadTarget target : {OffloadTarget::kNone, OffloadTarget::kCpu, OffloadTarget::kNvme}) {
        if (params != OffloadTarget::kNone && target == OffloadTarget::kNone) continue;  // refused: see below
        const std::string what = "dp " + std::to_string(dp) + " optimizer " + target_name(target) + " parameters " +
                                 target_name(params);
        SCOPED_TRACE(what);
        expect_matches_one_rank(run_zero(dp, zero3_profile(target, swap.path(), params)), ref, what);
      }
    }
  }
}

// Offloaded parameters are updated where their only copy lives: the device Adam cannot, and
// the delayed update would overwrite the weights the next forward reads.
TEST(TrainerZeroThree, ParameterOffloadRefusesWhatCannotServeIt) {
  offload::testing::ScratchDir swap;
  auto dev = host();
  for (OffloadTarget params : {OffloadTarget::kCpu, OffloadTarget::kNvme}) {
    SCOPED_TRACE(target_name(params));
    auto t = Trainer::create(zero3_profile(OffloadTarget::kNone, swap.path(), params), *dev);
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.status().message().find("offload.optimizer.device = \"cpu\" or \"nvme\""), std::string::npos) << t.status();
    Profile delayed = zero3_profile(OffloadTarget::kCpu, swap.path(), params);
    delayed.offload_optimizer.delayed_update = true;
    t = Trainer::create(delayed, *dev);
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.status().message().find("delayed_update"), std::string::npos) << t.status();
  }
}

// The parameter swap's buffers are checked at start-up: a block larger than a buffer, fewer
// than two buffers, and a pool too small for the largest module's slice and the prefetch
// window beside the optimizer's block are refused with the numbers and the key to change.
TEST(TrainerZeroThree, ParameterSwapBuffersAreCheckedAtStartUpWithTheNumbers) {
  offload::testing::ScratchDir swap;
  auto dev = host();
  auto refusal = [&](const std::function<void(Profile&)>& change) {
    Profile p = zero3_profile(OffloadTarget::kNvme, swap.path(), OffloadTarget::kNvme);
    change(p);
    auto t = Trainer::create(p, *dev);
    EXPECT_FALSE(t.ok());
    return t.ok() ? std::string() : t.status().message();
  };
  std::string m = refusal([](Profile& p) { p.offload_param.buffer_size = 16 * KiB; });
  EXPECT_NE(m.find("offload.param.buffer_size = 16KiB is smaller than one block of parameter values (20KiB"),
            std::string::npos) << m;
  m = refusal([](Profile& p) { p.offload_param.buffer_count = 1; });
  EXPECT_NE(m.find("offload.param.buffer_count = 1"), std::string::npos) << m;
  // (9216 + 8192) elements on one rank: 69632 B, 4 blocks and one more at each end, and the write's.
  m = refusal([](Profile& p) { p.offload_param.buffer_count = 2; });
  EXPECT_NE(m.find("(17408 values) span up to 6 blocks of 20KiB"), std::string::npos) << m;
  EXPECT_NE(m.find("need 140KiB of pinned buffers, but offload.param.buffer_count x buffer_size = 128KiB"),
            std::string::npos) << m;
  EXPECT_NE(m.find("raise offload.param.buffer_count to at least 3"), std::string::npos) << m;
}

std::mutex g_log_mu;
std::vector<std::string> g_warnings;
void capture_warnings(LogLevel level, const std::string& line) {
  std::lock_guard lk(g_log_mu);
  if (level == LogLevel::kWarn) g_warnings.push_back(line);
}

TEST(TrainerZeroThree, ABufferPoolThatCannotHoldTheReadAheadBesideTheWindowIsWarnedOfWithTheNumbers) {
  offload::testing::ScratchDir swap;
  auto dev = host();
  Profile p = zero3_profile(OffloadTarget::kNvme, swap.path(), OffloadTarget::kNvme);
  p.offload_param.buffer_count = 3;  // 192KiB: the window's 140KiB and 52KiB of the 96KiB read-ahead
  set_log_sink(&capture_warnings);
  auto t = Trainer::create(p, *dev);
  set_log_sink(nullptr);
  ASSERT_TRUE(t.ok()) << t.status().message();
  ASSERT_EQ(g_warnings.size(), 1u);
  const std::string& w = g_warnings[0];
  EXPECT_NE(w.find("hold up to 140.00 KiB of the 192.00 KiB of pinned buffers, which leaves 52.00 KiB of the "
                   "96.00 KiB of offload.param.max_in_cpu to read ahead"),
            std::string::npos) << w;
  EXPECT_NE(w.find("raise offload.param.buffer_count to 4 or lower max_in_cpu"), std::string::npos) << w;
  g_warnings.clear();
  p.offload_param.buffer_count = 4;
  set_log_sink(&capture_warnings);
  auto enough = Trainer::create(p, *dev);
  set_log_sink(nullptr);
  ASSERT_TRUE(enough.ok()) << enough.status().message();
  EXPECT_TRUE(g_warnings.empty()) << g_warnings[0];
}

// bf16 and fp16 with activation checkpointing (the recompute gathers again) and three
// micro-steps (later ones added to the host gradients), with the parameters on the device and
// in host memory (dp_test_util.h: the tolerances).
TEST(TrainerZeroThree, LowPrecisionCheckpointingAndAccumulationEqualTheOneRankRun) {
  offload::testing::ScratchDir swap;
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    for (OffloadTarget params : {OffloadTarget::kNone, OffloadTarget::kCpu, OffloadTarget::kNvme}) {
      expect_low_precision_matches_one_rank(zero3_profile(OffloadTarget::kCpu, swap.path(), params), dtype,
                                            std::string("stage 3, parameters ") + target_name(params));
    }
  }
}

// The statistics' peak covers every gather of the run: it never passes max_live, which is well
// below the model. A window with room for the prefetch gathers nothing on demand after the
// first step; a window just above the largest module (the embeddings' 9216) trains too.
TEST(TrainerZeroThree, TheWindowHoldsAtMostMaxLiveAndLaterStepsPrefetchEverything) {
  offload::testing::ScratchDir swap;
  for (std::uint64_t max_live : {10000, 24000}) {
    SCOPED_TRACE("max_live " + std::to_string(max_live));
    Profile p = zero3_profile(OffloadTarget::kNone, swap.path());
    p.zero.max_live_parameters = max_live;
    p.zero.prefetch_bucket_size = 64 * KiB;  // 16384 elements: the embeddings and a block's MLP
    on_local_ranks(2, kRowsPerRank, p, [&](int, Trainer& t) {
      std::uint64_t elements = 0;
      for (const Parameter* q : t.model().parameters()) elements += q->numel();
      ASSERT_TRUE(t.train_step(text()).ok());
      const GatherStats first = t.gather_stats();
      const std::vector<double> losses = steps(t, 4);
      const GatherStats s = t.gather_stats();
      EXPECT_LE(s.peak_held, max_live);
      EXPECT_LT(s.peak_held, elements * 7 / 10);
      EXPECT_GT(s.prefetched, first.prefetched);
      EXPECT_EQ(s.order_changes, 0u);
      if (max_live == 24000) {
        EXPECT_EQ(s.on_demand, first.on_demand) << "a later step fetched on demand";
        EXPECT_GT(s.reused, first.reused) << "the tied head's bucket is kept from forward for backward";
      }
      ASSERT_EQ(losses.size(), 4u);
    });
  }
}

TEST(TrainerZeroThree, AWindowBelowTheLargestModuleIsRefusedAtStartUp) {
  offload::testing::ScratchDir swap;
  Profile p = zero3_profile(OffloadTarget::kNone, swap.path());
  p.zero.max_live_parameters = 1000;
  auto dev = host();
  auto t = Trainer::create(p, *dev);
  ASSERT_FALSE(t.ok());
  const std::string m = t.status().message();
  EXPECT_NE(m.find("zero.max_live_parameters = 1000"), std::string::npos) << m;
  // The embeddings' bucket {wte, wpe}, (256 + 32) x 32, used by the embeddings and the tied head.
  EXPECT_NE(m.find("gathers 9216 parameters"), std::string::npos) << m;
  EXPECT_NE(m.find("at least 9216"), std::string::npos) << m;
}

// A device with room for everything but the largest module's gathered buckets.
TEST(TrainerZeroThree, ADeviceTooSmallForTheWindowIsRefusedAtStartUpWithTheNumbers) {
  offload::testing::ScratchDir swap;
  const Profile p = zero3_profile(OffloadTarget::kNone, swap.path());
  std::uint64_t used = 0, window = 0;
  {
    auto dev = host();
    auto t = Trainer::create(p, *dev);
    ASSERT_TRUE(t.ok()) << t.status();
    used = dev->stats().used;
    window = (*t)->gather_stats().held * 4;  // the spare reserved at start-up
  }
  DeviceOptions o;
  o.capacity = used - window / 2;
  o.compute_threads = 1;
  auto dev = std::move(*create_device("host", o));
  auto t = Trainer::create(p, *dev);
  ASSERT_FALSE(t.ok());
  const std::string m = t.status().message();
  EXPECT_NE(m.find("largest module's gathered parameters (" + std::to_string(window / 4) + " elements"), std::string::npos) << m;
  EXPECT_NE(m.find("memory.device_budget"), std::string::npos) << m;
}

// A wider model whose parameters dwarf its activations trains on devices too small for one
// replica's values and gradients: at dp 4 with the shards on the device, and at dp 2 and on one
// rank with the parameters in host memory, where the gradients leave the device bucket by
// bucket too: the device holds no parameter shard and no gradient shard, only the persistent
// LayerNorms, the window and the open buckets.
void expect_trains_below_a_replica(int dp, OffloadTarget params, double fraction) {
  offload::testing::ScratchDir swap;
  Profile p = zero3_profile(OffloadTarget::kCpu, swap.path(), params);
  p.train.dims.n_embd = 256;
  p.train.dims.seq_len = 16;
  p.train.micro_batch = 1;
  p.zero.max_live_parameters = 300000;  // an MLP matrix and a half
  if (params == OffloadTarget::kNvme) {
    p.offload_param.buffer_count = 40;  // 2.5 MiB for 6.6 MB of values: most are read back from NVMe
    p.offload_param.max_in_cpu = 1280 * KiB;
  }
  std::uint64_t replica = 0;
  {
    auto dev = host();
    auto t = Trainer::create(one_rank_of(p, 1), *dev);
    ASSERT_TRUE(t.ok()) << t.status();
    const Trainer::ParameterBytes b = (*t)->parameter_bytes();
    replica = b.values + b.gradients;
  }
  DeviceOptions o;
  o.capacity = static_cast<std::uint64_t>(static_cast<double>(replica) * fraction);
  o.compute_threads = 1;
  LocalRanks ranks(dp);
  p.parallel.dp = dp;
  std::vector<std::vector<double>> losses(static_cast<std::size_t>(dp));
  std::vector<std::thread> threads;
  for (int r = 0; r < dp; ++r) {
    threads.emplace_back([&, r] {
      auto dev = std::move(*create_device("host", o));
      TrainerOptions to;
      to.dp = ranks.comms[static_cast<std::size_t>(r)];
      auto t = Trainer::create(p, *dev, nullptr, to);
      ASSERT_TRUE(t.ok()) << t.status();
      losses[static_cast<std::size_t>(r)] = steps(**t, 3);
      EXPECT_LE(dev->stats().peak_used, o.capacity);
      if (params != OffloadTarget::kNone) {
        const Trainer::ParameterBytes b = (*t)->parameter_bytes();
        EXPECT_EQ(b.gradients, 0u) << "a gradient shard on the device";
        EXPECT_EQ(b.values, (*t)->gather_stats().persistent * 4) << "parameters on the device beyond the persistent";
      }
      if (r == 0) {
        std::printf("dp %d, parameters %s: device peak %llu B of %llu, a replica's values and gradients %llu B\n", dp,
                    target_name(params), static_cast<unsigned long long>(dev->stats().peak_used),
                    static_cast<unsigned long long>(o.capacity), static_cast<unsigned long long>(replica));
      }
    });
  }
  for (auto& t : threads) t.join();
  // The one-rank run of the same global batch, on a device with room for everything.
  Profile one = one_rank_of(p, 1);
  one.train.micro_batch = dp;
  auto dev = host();
  auto t = Trainer::create(one, *dev);
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<double> ref = steps(**t, 3);
  ASSERT_EQ(losses[0].size(), ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(losses[0][i], ref[i], 1e-6 * ref[i]) << "step " << i + 1;
}

// With the parameters on NVMe and the update inline (so that every bucket's update is done
// before the forward), the second step reads every block ahead of its gather: NVMe -> host
// within max_in_cpu, then host -> device within the gathers' prefetch. Whether the bytes
// arrived in time is a matter of timing and is measured by `strata bench zero3`, not here.
TEST(TrainerZeroThree, ParametersOnNvmeAreReadAheadAlongTheRecordedOrder) {
  offload::testing::ScratchDir swap;
  Profile p = zero3_profile(OffloadTarget::kCpu, swap.path(), OffloadTarget::kNvme);
  p.train.dims.n_embd = 256;
  p.train.dims.seq_len = 16;
  p.train.micro_batch = 1;
  p.zero.max_live_parameters = 300000;
  p.offload_optimizer.overlap_step = false;
  p.offload_param.buffer_count = 40;
  p.offload_param.max_in_cpu = 1280 * KiB;
  auto dev = host();
  auto t = Trainer::create(p, *dev);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE((*t)->train_step(text()).ok());
  const GatherStats first = (*t)->gather_stats();
  const std::optional<TierStats> tiers_first = (*t)->parameter_tier_stats();
  ASSERT_TRUE(tiers_first.has_value());
  ASSERT_TRUE((*t)->train_step(text()).ok());
  const GatherStats second = (*t)->gather_stats();
  const TierStats tiers = *(*t)->parameter_tier_stats();
  EXPECT_GT(second.swap_reads, first.swap_reads);
  EXPECT_EQ(second.swap_ahead - first.swap_ahead, second.swap_reads - first.swap_reads) << "a pin taken on demand";
  const auto nvme_to_host = [](const TierStats& s) {
    return s.bytes_moved[static_cast<int>(Tier::kNvme)][static_cast<int>(Tier::kHost)];
  };
  EXPECT_GT(nvme_to_host(tiers), nvme_to_host(*tiers_first)) << "the values fit in the pool: nothing was read back";
  EXPECT_LE(tiers.tiers[static_cast<int>(Tier::kHost)].peak, 40 * 64 * KiB + 20 * KiB) << "beyond the pool";
  std::printf("second step: %llu block pins, %llu taken ahead, %llu waited for; %llu B read from NVMe\n",
              static_cast<unsigned long long>(second.swap_reads - first.swap_reads),
              static_cast<unsigned long long>(second.swap_ahead - first.swap_ahead),
              static_cast<unsigned long long>(second.swap_waits - first.swap_waits),
              static_cast<unsigned long long>(nvme_to_host(tiers) - nvme_to_host(*tiers_first)));
}

// The trainer's hooks, with a detour: while `detour` is set, before the forward of `at` the
// parameters of `extra` are fetched and given back as if a branch of the model had used them,
// so that the step's order of fetches departs from the recorded one there.
class DetourHooks final : public ModuleHooks {
 public:
  DetourHooks(ModuleHooks& inner, Module& at, Module& extra) : inner_(inner), at_(at), extra_(extra) {}
  bool detour = false;
  Status before_forward(Module& m, bool recompute) override {
    if (detour && &m == &at_ && !recompute) {
      STRATA_RETURN_IF_ERROR(inner_.before_forward(extra_, false));
      STRATA_RETURN_IF_ERROR(inner_.after_forward(extra_, false));
    }
    return inner_.before_forward(m, recompute);
  }
  Status after_forward(Module& m, bool recompute) override { return inner_.after_forward(m, recompute); }
  Status before_backward(Module& m) override { return inner_.before_backward(m); }
  Status after_backward(Module& m) override { return inner_.after_backward(m); }

 private:
  ModuleHooks& inner_;
  Module& at_;
  Module& extra_;
};

Module* find_module(Module& root, const std::string& name) {
  if (root.name() == name) return &root;
  for (Module* c : root.children()) {
    if (Module* m = find_module(*c, name)) return m;
  }
  return nullptr;
}

// A module order that changes in step 3 (and back in step 4) makes both ranks fetch the rest
// of that step on demand, the same way, without a hang; the losses are the unchanged run's to
// the bit (the gathers copy the same values), with the parameters on the device and on NVMe.
TEST(TrainerZeroThree, AModuleOrderThatChangesFallsBackOnEveryRankAndKeepsTheLosses) {
  offload::testing::ScratchDir swap;
  for (OffloadTarget params : {OffloadTarget::kNone, OffloadTarget::kNvme}) {
    SCOPED_TRACE(target_name(params));
    Profile p = zero3_profile(OffloadTarget::kCpu, swap.path(), params);
    p.zero.max_live_parameters = 24000;
    p.zero.prefetch_bucket_size = 64 * KiB;
    std::vector<std::vector<double>> plain(2), detoured(2);
    std::vector<GatherStats> stats(2);
    on_local_ranks(2, kRowsPerRank, p, [&](int r, Trainer& t) { plain[static_cast<std::size_t>(r)] = steps(t, 5); });
    on_local_ranks(2, kRowsPerRank, p, [&](int r, Trainer& t) {
      Module* at = find_module(t.model(), "h.1");
      Module* extra = find_module(t.model(), "h.0.mlp.c_fc");
      ASSERT_TRUE(at != nullptr && extra != nullptr && t.model().hooks() != nullptr);
      DetourHooks hooks(*t.model().hooks(), *at, *extra);
      ModuleHooks* trainer_hooks = t.model().hooks();
      t.model().set_hooks(&hooks);
      std::vector<double> l = steps(t, 2);
      hooks.detour = true;
      const std::vector<double> third = steps(t, 1);
      hooks.detour = false;
      const std::vector<double> rest = steps(t, 2);
      t.model().set_hooks(trainer_hooks);
      l.insert(l.end(), third.begin(), third.end());
      l.insert(l.end(), rest.begin(), rest.end());
      detoured[static_cast<std::size_t>(r)] = l;
      stats[static_cast<std::size_t>(r)] = t.gather_stats();
    });
    for (std::size_t r = 0; r < 2; ++r) {
      ASSERT_EQ(detoured[r].size(), 5u);
      EXPECT_EQ(detoured[r], plain[r]) << "rank " << r;
      EXPECT_EQ(stats[r].order_changes, 2u) << "step 3 departed from step 2, step 4 from step 3";
    }
    EXPECT_EQ(stats[0].gathers, stats[1].gathers);
    EXPECT_EQ(stats[0].on_demand, stats[1].on_demand) << "the ranks fetched differently";
  }
}

TEST(TrainerZeroThree, TrainsOnADeviceTooSmallForAReplica) {
  expect_trains_below_a_replica(4, OffloadTarget::kNone, 0.95);
  expect_trains_below_a_replica(2, OffloadTarget::kCpu, 0.6);
  expect_trains_below_a_replica(1, OffloadTarget::kCpu, 0.6);
  expect_trains_below_a_replica(1, OffloadTarget::kNvme, 0.6);
}

// Per step each rank reduce-scatters every bucket's gradient once per micro-step (Ψ of the
// padded space) and all-gathers every bucket for its forward and again for its backward, the
// persistent ones once: 2Ψ - P. The embeddings' bucket {wte, wpe} (9216 elements) is also used
// by the tied head, gathered there for forward and kept for its backward (reuse distance 0):
// one gather more. Each sends (N-1)/N of those payloads: 3Ψ(N-1)/N in all, less what persists.
TEST(TrainerZeroThree, EachRankMovesZeroThreesVolume) {
  offload::testing::ScratchDir swap;
  Profile p = zero3_profile(OffloadTarget::kNone, swap.path());
  p.train.grad_accum = 1;
  p.zero.max_reuse_distance = 0;
  constexpr std::uint64_t kEmbeddingBucket = (256 + 32) * 32;
  LocalRanks ranks(2);
  std::vector<CommStats> before(2), after(2);
  std::vector<GatherStats> g0(2), g1(2);
  on_ranks(ranks.comms, p, [&](int r, Trainer& t) {
    const auto i = static_cast<std::size_t>(r);
    ASSERT_TRUE(t.train_step(text()).ok());
    before[i] = ranks.comms[i]->stats();
    g0[i] = t.gather_stats();
    ASSERT_TRUE(t.train_step(text()).ok());
    after[i] = ranks.comms[i]->stats();
    g1[i] = t.gather_stats();
  });
  for (std::size_t r = 0; r < 2; ++r) {
    const auto payload = [&](CommKind k) { return after[r].of(k).payload_bytes - before[r].of(k).payload_bytes; };
    const auto sent = [&](CommKind k) { return after[r].of(k).bytes_sent - before[r].of(k).bytes_sent; };
    const std::uint64_t rs = payload(CommKind::kReduceScatter) / 4, ag = payload(CommKind::kAllGather) / 4;
    EXPECT_EQ(ag, g1[r].gathered - g0[r].gathered) << "the counters and the statistics agree";
    EXPECT_EQ(ag, 2 * rs - g1[r].persistent + kEmbeddingBucket);
    EXPECT_EQ(g1[r].reused - g0[r].reused, 1u);
    EXPECT_EQ(sent(CommKind::kAllGather), ag * 4 / 2);
    EXPECT_EQ(sent(CommKind::kReduceScatter), rs * 4 / 2);
    std::printf("rank %zu: reduce-scatter %llu, all-gather %llu elements (persistent %llu) per step\n", r,
                static_cast<unsigned long long>(rs), static_cast<unsigned long long>(ag),
                static_cast<unsigned long long>(g1[r].persistent));
  }
}

TEST(TrainerZeroThree, ACheckpointOfTwoRanksResumesOnOneAndOnFour) {
  offload::testing::ScratchDir swap;
  for (OffloadTarget params : {OffloadTarget::kNone, OffloadTarget::kNvme}) {
    const std::string what = std::string("stage 3, parameters ") + target_name(params);
    SCOPED_TRACE(what);
    expect_resumes_on_one_and_four(zero3_profile(OffloadTarget::kNvme, swap.path(), params),
                                   swap.path() + "/ckpt-" + target_name(params), what);
  }
}

}  // namespace
}  // namespace strata
