// src/engine/dp_test_util.h — data-parallel trainers against the one-rank run, for the tests of
// ZeRO stages 0 to 3: the profile (the tiny GPT, two micro-steps), trainers on LocalComm
// ranks as threads, and the comparison with its stated tolerance (see expect_matches_one_rank).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "strata/checkpoint.h"
#include "strata/communicator.h"
#include "strata/trainer.h"
#include "strata/units.h"

namespace strata::dp_test {

inline constexpr int kSteps = 20;
inline constexpr int kRowsPerRank = 2;

inline Profile profile(int dp, int micro_batch, std::uint64_t bucket_bytes, bool overlap) {
  auto p = Profile::from_toml_string("", "dp test");
  EXPECT_TRUE(p.ok()) << p.status();
  Profile out = *p;
  out.train.model = "tiny";
  EXPECT_TRUE(model_preset("tiny", &out.train.dims));
  out.train.micro_batch = micro_batch;
  out.train.grad_accum = 2;
  out.train.seed = 7;
  out.optimizer.lr = 1e-3;
  out.parallel.dp = dp;
  out.zero.reduce_bucket_size = bucket_bytes;
  out.zero.overlap_comm = overlap;
  return out;
}

inline std::unique_ptr<Device> host() {
  DeviceOptions o;
  o.capacity = 256ULL << 20;
  o.compute_threads = 1;
  return std::move(*create_device("host", o));
}

inline const TokenDataset& text() {
  static const TokenDataset d = *TokenDataset::default_text();
  return d;
}

struct RankRun {
  std::vector<double> losses;
  std::vector<float> masters;  // every parameter's fp32 master, in parameter order
  std::vector<float> values;   // every parameter's device value once gathered (fp32 runs)
};

inline RankRun train(Trainer& t, int steps = kSteps) {
  RankRun r;
  for (int s = 0; s < steps; ++s) {
    auto st = t.train_step(text());
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok()) return r;
    r.losses.push_back(st->loss);
  }
  for (const Parameter* p : t.model().parameters()) {
    std::vector<float> v(p->numel());
    EXPECT_TRUE(t.read_state(*p, OptimizerState::kMaster, 0, v).ok());
    r.masters.insert(r.masters.end(), v.begin(), v.end());
  }
  // The device values every rank computes with, made whole (ZeRO 1 and 2 gather them).
  EXPECT_TRUE(t.gather_parameters().ok());
  auto stream = t.device().create_stream("test read-back");
  EXPECT_TRUE(stream.ok());
  for (const Parameter* p : t.model().parameters()) {
    // ZeRO stage 3 binds a parameter only while its module runs: nothing to read here.
    if (!p->bound() || p->value().dtype() != DType::kF32 || !stream.ok()) break;
    std::vector<float> v(p->numel());
    EXPECT_TRUE(t.device().copy_to_host(std::as_writable_bytes(std::span<float>(v)), p->value().range(), **stream).ok());
    EXPECT_TRUE((*stream)->synchronize().ok());
    r.values.insert(r.values.end(), v.begin(), v.end());
  }
  return r;
}

// `n` steps' losses.
inline std::vector<double> steps(Trainer& t, int n) {
  std::vector<double> losses;
  for (int s = 0; s < n; ++s) {
    auto st = t.train_step(text());
    EXPECT_TRUE(st.ok()) << st.status();
    if (st.ok()) losses.push_back(st->loss);
  }
  return losses;
}

inline RankRun one_rank(int dp) {
  auto dev = host();
  auto t = Trainer::create(profile(1, dp * kRowsPerRank, 25ULL << 20, true), *dev);
  EXPECT_TRUE(t.ok()) << t.status();
  return train(**t);
}

// One trainer per communicator, each on a thread with its own device, made from `p` with
// parallel.dp = the number of ranks and `optimizer(rank)` (null: the device Adam); `body` runs
// on each. A one-rank group trains without a communicator.
inline void on_ranks(const std::vector<Communicator*>& comms, Profile p, const std::function<void(int, Trainer&)>& body,
              const std::function<std::unique_ptr<StepOptimizer>(int)>& optimizer = {}) {
  p.parallel.dp = static_cast<int>(comms.size());
  std::vector<std::thread> ranks;
  for (std::size_t r = 0; r < comms.size(); ++r) {
    ranks.emplace_back([&, r] {
      auto dev = host();
      TrainerOptions o;
      o.dp = comms.size() > 1 ? comms[r] : nullptr;
      auto t = Trainer::create(p, *dev, optimizer ? optimizer(static_cast<int>(r)) : nullptr, o);
      ASSERT_TRUE(t.ok()) << t.status();
      body(static_cast<int>(r), **t);
    });
  }
  for (auto& t : ranks) t.join();
}

// `n` LocalComm ranks, owned, and their plain pointers.
struct LocalRanks {
  std::vector<std::unique_ptr<Communicator>> owned;
  std::vector<Communicator*> comms;
  explicit LocalRanks(int n) {
    auto c = make_local_comms(n);
    EXPECT_TRUE(c.ok()) << c.status();
    owned = std::move(*c);
    for (auto& x : owned) comms.push_back(x.get());
  }
};

inline std::vector<RankRun> data_parallel_on(const std::vector<Communicator*>& comms, std::uint64_t bucket_bytes, bool overlap) {
  std::vector<RankRun> runs(comms.size());
  on_ranks(comms, profile(1, kRowsPerRank, bucket_bytes, overlap),
           [&](int r, Trainer& t) { runs[static_cast<std::size_t>(r)] = train(t); });
  return runs;
}

inline std::vector<RankRun> data_parallel(int dp, std::uint64_t bucket_bytes, bool overlap) {
  LocalRanks ranks(dp);
  return data_parallel_on(ranks.comms, bucket_bytes, overlap);
}

inline void expect_matches_one_rank(const std::vector<RankRun>& runs, const RankRun& ref, const std::string& what) {
  ASSERT_EQ(runs[0].losses.size(), ref.losses.size()) << what;
  for (std::size_t s = 0; s < ref.losses.size(); ++s) {
    EXPECT_NEAR(runs[0].losses[s], ref.losses[s], 1e-6 * std::abs(ref.losses[s])) << what << " step " << s + 1;
  }
  ASSERT_EQ(runs[0].masters.size(), ref.masters.size()) << what;
  double worst = 0;
  std::size_t at = 0;
  int over = 0;
  for (std::size_t i = 0; i < ref.masters.size(); ++i) {
    const double d = std::abs(double(runs[0].masters[i]) - ref.masters[i]);
    if (d > 1e-6) ++over;
    if (d > worst) { worst = d; at = i; }
  }
  // Adam divides by the root of the second moment, so where a gradient is near zero the
  // rounding of the ranks' sums (another order than one rank's GEMMs) moves its update by up to
  // a tenth of the step: at most 1 element in 1000 beyond 1e-6, none beyond lr / 10.
  EXPECT_LE(over, static_cast<int>(ref.masters.size() / 1000)) << what << ": master weights beyond 1e-6";
  EXPECT_LE(worst, 1e-4) << what << ": largest master weight difference at " << at << " (" << runs[0].masters[at]
                         << " vs " << ref.masters[at] << "), " << over << " of " << ref.masters.size() << " beyond 1e-6";
  for (std::size_t r = 1; r < runs.size(); ++r) {
    EXPECT_EQ(runs[r].losses, runs[0].losses) << what << ": rank " << r << " reports another loss";
    EXPECT_TRUE(runs[r].masters == runs[0].masters) << what << ": rank " << r << " holds other weights";
  }
  // What each rank computes with: its device values, which for fp32 are the master weights
  // themselves, on every rank (a bucket gathered wrongly, or not at all, shows here).
  for (std::size_t r = 0; r < runs.size(); ++r) {
    if (runs[r].values.empty()) continue;
    EXPECT_TRUE(runs[r].values == runs[0].masters) << what << ": rank " << r << "'s device values are not the weights";
  }
}

// The test profile with `stage` and the optimizer homed at `target` (swap files in `swap`).
inline Profile zero_profile(int stage, OffloadTarget target, const std::string& swap, std::uint64_t bucket_bytes = 16 << 10) {
  Profile p = profile(1, kRowsPerRank, bucket_bytes, true);
  p.zero.stage = stage;
  p.offload_optimizer.device = target;
  if (target == OffloadTarget::kNvme) p.offload_optimizer.nvme_path = {swap};
  p.offload_optimizer.buffer_size = 64 * KiB;  // several chunks per rank's shard: the pipeline runs
  p.memory.host_budget = 256 * MiB;
  p.nvme.engine = "posix";
  p.nvme.direct = false;
  p.nvme.registered_buffers = false;
  p.nvme.block_size = 64 * KiB;
  return p;
}

// ZeRO stage 3 on the test profile: LayerNorms (128 elements, padded) stay whole; every Linear
// and embedding is gathered. The parameter shard lives on the device, or (`params` = cpu) in
// the optimizer's pinned weights, or (nvme) in a parameter swap of 20 KiB blocks (the values of
// a 64 KiB optimizer chunk) cached in eight 64 KiB buffers, at most 96 KiB read ahead.
inline Profile zero3_profile(OffloadTarget target, const std::string& swap, OffloadTarget params = OffloadTarget::kNone) {
  Profile p = zero_profile(3, target, swap);
  p.offload_param.device = params;
  if (params == OffloadTarget::kNvme) {
    p.offload_param.nvme_path = {swap};
    p.offload_param.buffer_count = 8;
    p.offload_param.buffer_size = 64 * KiB;
    p.offload_param.max_in_cpu = 96 * KiB;
  }
  p.zero.param_persistence_threshold = 256;
  p.zero.prefetch_bucket_size = 32 * KiB;
  p.zero.max_live_parameters = 20000;
  return p;
}

inline std::vector<RankRun> run_ranks(const std::vector<Communicator*>& comms, const Profile& p) {
  std::vector<RankRun> runs(comms.size());
  on_ranks(comms, p, [&](int r, Trainer& t) {
    EXPECT_EQ(t.zero_stage(), p.zero.stage);
    runs[static_cast<std::size_t>(r)] = train(t);
  });
  return runs;
}

inline std::vector<RankRun> run_zero(int dp, const Profile& p) {
  LocalRanks ranks(dp);
  return run_ranks(ranks.comms, p);
}

// The one-rank counterpart of a dp-rank profile: the global batch, no sharding, no parameter offload.
inline Profile one_rank_of(Profile p, int dp) {
  p.zero.stage = 0;
  p.offload_param.device = OffloadTarget::kNone;
  p.parallel.dp = 1;
  p.train.micro_batch = dp * kRowsPerRank;
  return p;
}

inline const char* target_name(OffloadTarget t) { return t == OffloadTarget::kNone ? "device" : t == OffloadTarget::kCpu ? "cpu" : "nvme"; }

// `p` in `dtype` (weights and gradients) with activation checkpointing and three micro-steps,
// on 2 LocalComm ranks, against the one-rank run of the same profile with the global batch.
// Low-precision gradients are rounded where the ranks' sums are, in another order than one
// rank's: losses within 1e-3 relative (bf16) and 1e-4 (fp16) over 8 steps, about 40 times what
// this machine measures (both runs train: the losses fall by more than that).
inline void expect_low_precision_matches_one_rank(Profile p, DType dtype, const std::string& how) {
  p.precision.dtype = p.precision.grad_dtype = dtype;
  p.activation.checkpointing = true;
  p.train.grad_accum = 3;
  const std::string what = std::string(dtype_name(dtype)) + " " + how;
  auto dev = host();
  auto t = Trainer::create(one_rank_of(p, 2), *dev);
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<double> ref = steps(**t, 8);
  std::vector<std::vector<double>> got(2);
  LocalRanks ranks(2);
  on_ranks(ranks.comms, p, [&](int r, Trainer& tr) { got[static_cast<std::size_t>(r)] = steps(tr, 8); });
  ASSERT_EQ(got[0].size(), ref.size()) << what;
  double worst = 0;
  for (std::size_t s = 0; s < ref.size(); ++s) worst = std::max(worst, std::abs(got[0][s] - ref[s]) / ref[s]);
  EXPECT_LE(worst, dtype == DType::kBF16 ? 1e-3 : 1e-4) << what;
  EXPECT_EQ(got[0], got[1]) << what << ": the ranks report different losses";
  EXPECT_LT(ref.back(), ref.front() * 0.98) << what << ": the run did not train";
  std::printf("%s: largest relative loss difference %.3g\n", what.c_str(), worst);
}

// Trains `p` on `dp` LocalComm ranks of `rows` each, running `body` on every rank's trainer.
inline void on_local_ranks(int dp, int rows, Profile p, const std::function<void(int rank, Trainer&)>& body) {
  LocalRanks ranks(dp);
  p.train.micro_batch = rows;
  on_ranks(ranks.comms, p, body);
}

// A checkpoint in `dir` saved after 3 steps by 2 ranks of 2 rows (every rank saving with ZeRO
// 1 and 2, rank 0 alone otherwise) resumes on 1 rank of 4 rows and on 4 of 1 (the same global
// batch), and the next 3 losses are the uninterrupted run's within 1e-6 relative.
inline void expect_resumes_on_one_and_four(const Profile& p, const std::string& dir, const std::string& what) {
  std::vector<double> whole, tail1, tail4;
  on_local_ranks(2, 2, p, [&](int rank, Trainer& t) {
    const std::vector<double> first = steps(t, 3);
    if (rank == 0 || t.zero_stage() >= 1) {
      auto saved = save_checkpoint(t, dir);
      ASSERT_TRUE(saved.ok()) << saved.status();
      EXPECT_EQ(*saved, dir + "/step-00000003");
    }
    const std::vector<double> rest = steps(t, 3);  // a rank not saving waits for the saver at the first collective
    if (rank == 0) {
      whole = first;
      whole.insert(whole.end(), rest.begin(), rest.end());
    }
  });
  for (int dp : {1, 4}) {
    on_local_ranks(dp, 4 / dp, p, [&](int rank, Trainer& t) {
      auto loaded = load_checkpoint(t, dir);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      const std::vector<double> l = steps(t, 3);
      if (rank == 0) (dp == 1 ? tail1 : tail4) = l;
    });
  }
  ASSERT_EQ(whole.size(), 6u) << what;
  ASSERT_EQ(tail1.size(), 3u) << what;
  ASSERT_EQ(tail4.size(), 3u) << what;
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(tail1[i], whole[3 + i], 1e-6 * whole[3 + i]) << what << ", dp 1, step " << 4 + i;
    EXPECT_NEAR(tail4[i], whole[3 + i], 1e-6 * whole[3 + i]) << what << ", dp 4, step " << 4 + i;
  }
}

// Where each parameter's whole tensor lies in the one-rank run's masters.
struct Span {
  std::size_t at = 0, n = 0;
};
inline std::map<std::string, Span> whole_spans(const Profile& p) {
  auto gpt = Gpt::create(GptConfig::from_profile(p));
  EXPECT_TRUE(gpt.ok()) << gpt.status();
  std::map<std::string, Span> spans;
  std::size_t next = 0;
  for (const Parameter* q : (*gpt)->parameters()) {
    spans[q->name()] = {next, q->numel()};
    next += q->numel();
  }
  return spans;
}

// One rank's losses equal the one-rank run's within 1e-6 relative; its masters (in its
// parameter order: its tensor shards of its pipeline stage's tensors) equal the one-rank
// masters of the same names at their global elements (wte's padding rows have none), counted
// as expect_matches_one_rank counts differences.
inline void expect_rank_matches(const RankRun& run, const RankRun& ref, Trainer& t, const std::map<std::string, Span>& whole,
                         const std::string& what) {
  ASSERT_EQ(run.losses.size(), ref.losses.size()) << what;
  for (std::size_t s = 0; s < ref.losses.size(); ++s) {
    EXPECT_NEAR(run.losses[s], ref.losses[s], 1e-6 * ref.losses[s]) << what << " step " << s + 1;
  }
  std::size_t mine = 0, over = 0, compared = 0;
  double worst = 0;
  for (const Parameter* p : t.model().parameters()) {
    const Span w = whole.at(p->name());
    for (std::size_t i = 0; i < p->numel(); ++i, ++mine) {
      const std::uint64_t g = p->shard().global_index(i);
      if (g >= w.n) continue;
      const double d = std::abs(double(run.masters[mine]) - ref.masters[w.at + g]);
      worst = std::max(worst, d);
      over += d > 1e-6 ? 1 : 0;
      ++compared;
    }
  }
  EXPECT_EQ(mine, run.masters.size()) << what;
  EXPECT_LE(over, compared / 1000) << what << ": master weights beyond 1e-6";
  EXPECT_LE(worst, 1e-4) << what << ": largest master weight difference";
}

}  // namespace strata::dp_test
