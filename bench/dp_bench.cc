// `strata bench dp`: data-parallel training (ZeRO stage 0), each figure against its ceiling:
//   bytes: what each rank sent per step (the communicator's counters) over the formula
//     2 S (N - 1) / N for S bytes of gradients (the parameters in their aligned slots) and loss;
//   state: the device bytes of the model state per rank over ZeRO's stage-0 count (weights,
//     gradients, fp32 master and moments: every rank holds all of it);
//   hidden: with every gradient all-reduce delayed by --delay-ms (FaultyComm), the share of the delay
//     that backward hides: 1 - (step growth) / (delay added), ceiling 1;
//   scaling (under `mpirun -n N`, one thread per process): tokens/s of the N-process run over
//     one process alone with the same per-rank batch, ceiling N.
// Without mpirun the ranks are LocalComm threads (--ranks N) and there is no scaling figure.
#include <algorithm>
#include <cstdlib>
#include <chrono>
#include <cxxopts.hpp>
#include <iostream>
#include <thread>
#include <vector>

#include "bench/bench_json.h"
#include "cli/command.h"
#include "parallel/faulty_comm.h"
#include "strata/communicator.h"
#include "strata/trainer.h"
#include "strata/units.h"

namespace strata::cli {
namespace {

using bench::Json;

struct DpOptions {
  Profile profile;  // of one rank; parallel.dp set per run
  int ranks = 2;
  int steps = 3;
  int rounds = 3;
  double delay_ms = 20;
};

struct RankResult {
  double step_s = 0;          // median step time
  std::uint64_t sent = 0;     // bytes sent per step
  std::uint64_t grad_bytes = 0, state_bytes = 0, activation_bytes = 0, params = 0;
};

std::unique_ptr<Device> bench_device(const Profile& p) {
  DeviceOptions o = device_options(p.memory);
  o.compute_threads = 1;
  return std::move(*create_device("host", o));
}

// One rank: a warm-up step, then `steps` timed ones.
Result<RankResult> run_rank(const DpOptions& o, Communicator* dp) {
  Profile p = o.profile;
  p.parallel.dp = dp == nullptr ? 1 : dp->size();
  auto dev = bench_device(p);
  TrainerOptions to;
  to.dp = dp;
  STRATA_ASSIGN_OR_RETURN(auto t, Trainer::create(p, *dev, nullptr, to));
  STRATA_ASSIGN_OR_RETURN(TokenDataset data, TokenDataset::default_text());
  STRATA_RETURN_IF_ERROR(t->train_step(data).status());
  RankResult r;
  const std::uint64_t before = dp == nullptr ? 0 : dp->stats().bytes_sent();
  std::vector<double> times;
  for (int i = 0; i < o.steps; ++i) {
    STRATA_ASSIGN_OR_RETURN(StepStats st, t->train_step(data));
    times.push_back(st.seconds);
  }
  r.step_s = bench::median(times);
  if (dp != nullptr) r.sent = (dp->stats().bytes_sent() - before) / static_cast<std::uint64_t>(o.steps);
  for (const Parameter* q : t->model().parameters()) {
    r.grad_bytes += (q->numel() * dtype_size(p.precision.grad_dtype) + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
    r.params += q->numel();
  }
  r.activation_bytes = Gpt::activation_bytes(t->model().config(), p.train.micro_batch);
  r.state_bytes = dev->stats().used - r.activation_bytes;
  return r;
}

// `n` LocalComm ranks as threads, each through a FaultyComm delaying its all-reduces by `delay`.
Result<std::vector<RankResult>> run_threads(const DpOptions& o, int n, double delay_ms) {
  STRATA_ASSIGN_OR_RETURN(auto comms, make_local_comms(n));
  std::vector<std::unique_ptr<parallel::FaultyComm>> wrapped;
  for (auto& c : comms) {
    wrapped.push_back(std::make_unique<parallel::FaultyComm>(std::move(c)));
    // Gradient buckets only: the loss (4 bytes) is not a gradient collective.
    if (delay_ms > 0) wrapped.back()->delay(CommKind::kAllReduce, std::chrono::milliseconds(static_cast<int>(delay_ms)), 1024);
  }
  std::vector<Result<RankResult>> out(static_cast<std::size_t>(n), internal_error("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      out[static_cast<std::size_t>(r)] = run_rank(o, wrapped[static_cast<std::size_t>(r)].get());
      if (!out[static_cast<std::size_t>(r)].ok()) wrapped[static_cast<std::size_t>(r)]->abort(out[static_cast<std::size_t>(r)].status());
    });
  }
  for (auto& t : threads) t.join();
  std::vector<RankResult> res;
  for (auto& r : out) {
    STRATA_RETURN_IF_ERROR(r.status());
    res.push_back(*r);
  }
  return res;
}

// Buckets per step: the gradient bytes cut by zero.reduce_bucket_size.
std::uint64_t buckets(const RankResult& r, const Profile& p) {
  return (r.grad_bytes + p.zero.reduce_bucket_size - 1) / p.zero.reduce_bucket_size;
}

Json counters_row(const RankResult& r, int n) {
  const auto N = static_cast<std::uint64_t>(n);
  const double formula = static_cast<double>(2 * (r.grad_bytes + 4) * (N - 1) / N);
  return {{"measure", "bytes_per_step"},
          {"ranks", n},
          {"bytes_sent", r.sent},
          {"formula_bytes", formula},
          {"ratio", static_cast<double>(r.sent) / formula},
          {"ceiling", "bytes sent per step over 2 S (N-1)/N (S: gradient slots and loss)"}};
}

Json state_row(const RankResult& r, const Profile& p) {
  // Stage 0: every rank holds weights, gradients, both fp32 moments and an fp32 master (which,
  // for fp32 weights, is the weights themselves).
  const std::size_t master = p.precision.dtype == DType::kF32 ? 0 : 4;
  const double per_param =
      static_cast<double>(dtype_size(p.precision.dtype) + dtype_size(p.precision.grad_dtype) + 8 + master);
  const double formula = per_param * static_cast<double>(r.params);
  return {{"measure", "model_state_bytes"},
          {"device_bytes_model_state", r.state_bytes},
          {"device_bytes_activations", r.activation_bytes},
          {"formula_bytes", formula},
          {"ratio", static_cast<double>(r.state_bytes) / formula},
          {"ceiling", "device bytes in use less activations over ZeRO stage 0's per-parameter count (weights, "
                      "gradients, fp32 moments, an fp32 master unless the weights are fp32; slots padded to 256 "
                      "bytes)"}};
}

void print_row(const Json& row) {
  std::cout << "  " << row.dump() << "\n";
}

// Under mpirun: the N-process run, then rank 0 alone with the same per-rank batch.
Result<Json> mpi_figures(const DpOptions& o, bench::JsonLines& out, bool json) {
  STRATA_ASSIGN_OR_RETURN(auto world, make_mpi_world());
  const int n = world->size();
  auto together = run_rank(o, world.get());
  if (!together.ok()) world->abort(together.status());
  STRATA_RETURN_IF_ERROR(together.status());
  std::vector<double> slowest{together->step_s};
  STRATA_RETURN_IF_ERROR(world->all_reduce_host(slowest, ReduceOp::kMax));
  Result<RankResult> alone = RankResult{};
  if (world->rank() == 0) alone = run_rank(o, nullptr);
  STRATA_RETURN_IF_ERROR(world->barrier());
  STRATA_RETURN_IF_ERROR(alone.status());
  if (world->rank() != 0) return Json();
  const double scaling = static_cast<double>(n) * alone->step_s / slowest[0];
  const Json rows[] = {counters_row(*together, n), state_row(*together, o.profile),
                       Json{{"measure", "weak_scaling"},
                            {"processes", n},
                            {"step_s", slowest[0]},
                            {"one_process_step_s", alone->step_s},
                            {"speedup", scaling},
                            {"ratio", scaling / n},
                            {"ceiling", "tokens/s of N processes over N x one process's (same per-rank batch)"}}};
  for (const Json& r : rows) json ? out.result(r) : print_row(r);
  return Json{{"bytes_ratio", rows[0]["ratio"]}, {"state_ratio", rows[1]["ratio"]}, {"speedup", scaling},
              {"hidden_share", nullptr}, {"ratio", scaling / n},
              {"ceiling", "weak scaling: N processes' tokens/s over N x one process's"}};
}

// Threads: alternating rounds of the plain run and the same with every gradient all-reduce
// delayed; the hidden share is the median of the rounds'.
Result<Json> local_figures(const DpOptions& o, bench::JsonLines& out, bool json) {
  std::vector<double> hidden, plain_s, slow_s;
  RankResult first;
  double added = 0;
  for (int round = 0; round < o.rounds; ++round) {
    STRATA_ASSIGN_OR_RETURN(auto plain, run_threads(o, o.ranks, 0));
    STRATA_ASSIGN_OR_RETURN(auto slow, run_threads(o, o.ranks, o.delay_ms));
    if (round == 0) first = plain[0];
    added = static_cast<double>(buckets(plain[0], o.profile)) * o.delay_ms / 1e3;
    plain_s.push_back(plain[0].step_s);
    slow_s.push_back(slow[0].step_s);
    hidden.push_back(1.0 - (slow[0].step_s - plain[0].step_s) / added);
  }
  // Below 0 the delayed run grew by more than the delay (noise on a loaded machine): none hidden.
  const double share = std::max(0.0, bench::median(hidden));
  const Json rows[] = {counters_row(first, o.ranks), state_row(first, o.profile),
                       Json{{"measure", "hidden_communication"},
                            {"step_s", bench::median(plain_s)},
                            {"delayed_step_s", bench::median(slow_s)},
                            {"delay_added_s", added},
                            {"ratio_per_round", hidden},
                            {"ratio", share},
                            {"ceiling", "share of the delay added to every gradient all-reduce that backward hides "
                                        "(1 = all; median of rounds)"}}};
  for (const Json& r : rows) json ? out.result(r) : print_row(r);
  return Json{{"bytes_ratio", rows[0]["ratio"]}, {"state_ratio", rows[1]["ratio"]}, {"speedup", nullptr},
              {"hidden_share", share}, {"ratio", share},
              {"ceiling", "share of the added gradient all-reduce delay hidden under backward"}};
}

int run_dp_bench(const DpOptions& o, bool json) {
  const bool mpi = launched_by_mpi();
  bench::JsonLines out("dp");
  const bool rank0 = !mpi || std::getenv("OMPI_COMM_WORLD_RANK") == nullptr ||
                     std::string(std::getenv("OMPI_COMM_WORLD_RANK")) == "0";
  const Json env = {{"model", o.profile.train.model},
                    {"micro_batch_per_rank", o.profile.train.micro_batch},
                    {"ranks", mpi ? Json(std::getenv("OMPI_COMM_WORLD_SIZE") ? std::atoi(std::getenv("OMPI_COMM_WORLD_SIZE")) : 0)
                                  : Json(o.ranks)},
                    {"ranks_are", mpi ? "MPI processes" : "LocalComm threads"},
                    {"reduce_bucket_size", o.profile.zero.reduce_bucket_size},
                    {"stage", 0}};
  if (rank0) json ? out.env(env) : (void)(std::cout << "strata bench dp " << env.dump() << "\n");
  auto summary = mpi ? mpi_figures(o, out, json && rank0) : local_figures(o, out, json);
  if (!summary.ok()) {
    std::cerr << "strata bench dp: " << summary.status() << "\n";
    return kExitFailed;
  }
  if (rank0) json ? out.summary(*summary) : (void)(std::cout << "summary " << summary->dump() << "\n");
  return kExitOk;
}

int bench_dp(int argc, char** argv) {
  cxxopts::Options opts("strata bench dp", "data-parallel training (ZeRO stage 0) against its ceilings");
  opts.add_options()("model", "model preset", cxxopts::value<std::string>()->default_value("default"))(
      "micro-batch", "sequences per micro-batch and rank", cxxopts::value<int>()->default_value("8"))(
      "ranks", "LocalComm ranks (threads) when not under mpirun", cxxopts::value<int>()->default_value("2"))(
      "steps", "timed steps per run", cxxopts::value<int>()->default_value("3"))(
      "rounds", "alternating rounds of the plain and the delayed run", cxxopts::value<int>()->default_value("3"))(
      "bucket-size", "zero.reduce_bucket_size", cxxopts::value<std::string>()->default_value("4MiB"))(
      "delay-ms", "delay added to every all-reduce for the hidden-communication figure",
      cxxopts::value<double>()->default_value("20"))(
      "json", "print JSON Lines instead of tables; see 'strata help bench'")("h,help", "this help");
  cxxopts::ParseResult a;
  try {
    a = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata bench dp: " << e.what() << "\n";
    return kExitUsage;
  }
  if (a.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  DpOptions o;
  auto base = Profile::from_toml_string("", "bench dp");
  auto bucket = parse_bytes(a["bucket-size"].as<std::string>());
  if (!a.unmatched().empty() || !base.ok() || !bucket.ok() || !model_preset(a["model"].as<std::string>(), &base->train.dims)) {
    std::cerr << "strata bench dp: bad arguments (see --help)\n";
    return kExitUsage;
  }
  o.profile = *base;
  o.profile.train.model = a["model"].as<std::string>();
  o.profile.train.micro_batch = a["micro-batch"].as<int>();
  o.profile.zero.reduce_bucket_size = *bucket;
  o.profile.memory.device_budget = 4ULL << 30;
  o.ranks = a["ranks"].as<int>();
  o.steps = std::max(1, a["steps"].as<int>());
  o.rounds = std::max(1, a["rounds"].as<int>());
  o.delay_ms = a["delay-ms"].as<double>();
  return run_dp_bench(o, a.count("json") > 0);
}

STRATA_COMMAND("bench dp", "data-parallel step: bytes and state per rank, hidden communication, weak scaling", bench_dp);

}  // namespace
}  // namespace strata::cli
