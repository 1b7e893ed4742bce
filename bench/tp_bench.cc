// `strata bench tp`: tensor-parallel training (Megatron's layers, src/model/layers.h), each
// figure against its ceiling:
//   collectives: the tp group's all-reduces in one step of one micro-batch (the communicator's
//     counters) against the layers' count: per block 2 of (B, T, C) in forward and 2 in backward,
//     the embedding's in forward and the head's input gradient in backward (also (B, T, C)),
//     the cross-entropy's 3 of (B, T), and the gradient norm's scalar; ratio 1 when they agree
//     (activation checkpointing off: a recomputed block would add its forward's 2);
//   sequence parallelism (--sequence-parallel, a second run): per block 4 reduce-scatters and
//     4 all-gathers of (B, T, C) in place of the 4 all-reduces (with the embedding's, ln_f's and
//     the head's: 4 L + 2 of each), and the bytes each rank sent against the run without it:
//     the same volume, plus the all-reduce of each LayerNorm's gradients (2C elements);
//   state: a rank's parameter elements (what its optimizer keeps master, moments and gradients
//     for) over the one-rank model's split parameters / tp plus its whole ones (vocabulary
//     padding makes it exceed 1 by a little), and the device Adam's bytes (its statistics) over
//     8 bytes (two fp32 moments; 12 with an fp32 master beside low-precision weights) per
//     element of that count;
//   speedup (under `mpirun -n N`, one thread per process for the GEMMs and the nn ops,
//     parallel.tp = N): the step time of one
//     process alone (tp = 1) over the N processes' with the same global batch; the bar is 1.5
//     at N = 2 for a model whose block GEMMs dominate (--n-embd 1024).
// Without mpirun the ranks are LocalComm threads (--tp N) and there is no speed-up figure.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cxxopts.hpp>
#include <iostream>
#include <thread>
#include <vector>

#include "bench/bench_json.h"
#include "bench/bench_ranks.h"
#include "cli/command.h"
#include "strata/communicator.h"
#include "strata/trainer.h"
#include "strata/units.h"

namespace strata::cli {
namespace {

using bench::Json;

struct TpOptions {
  Profile profile;  // parallel.tp set per run
  int tp = 2;
  int steps = 3;
  bool sequence_parallel = false;  // also measure a run with it
};

struct TpRun {
  double step_s = 0;                 // median of the timed steps
  CommStats first;                   // the tp group's counters over the first step
  std::uint64_t elements = 0;        // this rank's parameter elements
  std::uint64_t optimizer_bytes = 0;  // the device Adam's master and moments (its statistics)
  std::uint64_t ops(CommKind k) const { return first.of(k).ops; }
  std::uint64_t payload(CommKind k) const { return first.of(k).payload_bytes; }
};

// after - before, kind by kind.
CommStats minus(const CommStats& after, const CommStats& before) {
  CommStats d;
  for (int k = 0; k < static_cast<int>(CommKind::kCount); ++k) {
    const CommKindStats &a = after.kinds[k], &b = before.kinds[k];
    d.kinds[k] = {a.ops - b.ops, a.payload_bytes - b.payload_bytes, a.bytes_sent - b.bytes_sent,
                  a.bytes_received - b.bytes_received, a.seconds - b.seconds};
  }
  return d;
}

std::unique_ptr<Device> bench_device(const Profile& p) {
  DeviceOptions o = device_options(p.memory);
  o.compute_threads = 1;
  return std::move(*create_device("host", o));
}

// One rank of tp (tp = null: alone): a counted step, then `steps` timed ones.
Result<TpRun> run_rank(const TpOptions& o, Communicator* tp, bool sequence_parallel = false) {
  Profile p = o.profile;
  p.parallel.tp = tp == nullptr ? 1 : tp->size();
  p.parallel.sequence_parallel = sequence_parallel;
  auto dev = bench_device(p);
  TrainerOptions to;
  to.tp = tp;
  STRATA_ASSIGN_OR_RETURN(auto t, Trainer::create(p, *dev, nullptr, to));
  STRATA_ASSIGN_OR_RETURN(TokenDataset data, TokenDataset::default_text());
  const CommStats before = tp == nullptr ? CommStats{} : tp->stats();
  STRATA_RETURN_IF_ERROR(t->train_step(data).status());
  TpRun r;
  if (tp != nullptr) r.first = minus(tp->stats(), before);
  std::vector<double> times;
  for (int i = 0; i < o.steps; ++i) {
    STRATA_ASSIGN_OR_RETURN(StepStats st, t->train_step(data));
    times.push_back(st.seconds);
  }
  r.step_s = bench::median(times);
  for (const Parameter* q : t->model().parameters()) r.elements += q->numel();
  r.optimizer_bytes = t->optimizer().device_bytes();
  return r;
}

Json collectives_row(const TpRun& r, const Profile& p) {
  const ModelDims& d = p.train.dims;
  const std::uint64_t n = static_cast<std::uint64_t>(p.train.micro_batch) * static_cast<std::uint64_t>(d.seq_len);
  const std::uint64_t act = n * static_cast<std::uint64_t>(d.n_embd) * dtype_size(p.precision.dtype);
  const std::uint64_t blocks = 4ULL * static_cast<std::uint64_t>(d.n_layer) + 2;  // + embedding, head dx
  const std::uint64_t ops = blocks + 3 + 1;
  const std::uint64_t bytes = blocks * act + 3 * n * 4 + 4;
  const std::uint64_t got = r.payload(CommKind::kAllReduce);
  return Json{{"measure", "collectives_per_step"},
              {"all_reduces", r.ops(CommKind::kAllReduce)},
              {"formula_all_reduces", ops},
              {"per_block", 4},
              {"bytes", got},
              {"formula_bytes", bytes},
              {"ratio", static_cast<double>(got) / static_cast<double>(bytes)},
              {"ceiling", "all-reduced bytes per step over the layers' count (4 of B.T.C per block, the embedding's "
                          "and the head's, 3 of B.T for the cross-entropy, the norm's scalar)"}};
}

Json sequence_parallel_row(const TpRun& sp, const TpRun& plain, const Profile& p) {
  const ModelDims& d = p.train.dims;
  const std::uint64_t L = static_cast<std::uint64_t>(d.n_layer), pairs = 4 * L + 2;
  const std::uint64_t act = static_cast<std::uint64_t>(p.train.micro_batch) * static_cast<std::uint64_t>(d.seq_len) *
                            static_cast<std::uint64_t>(d.n_embd) * dtype_size(p.precision.dtype);
  const double ratio = static_cast<double>(sp.first.bytes_sent()) / static_cast<double>(plain.first.bytes_sent());
  return Json{{"measure", "sequence_parallel_collectives"},
              {"reduce_scatters", sp.ops(CommKind::kReduceScatter)},
              {"all_gathers", sp.ops(CommKind::kAllGather)},
              {"formula_each", pairs},
              {"reduce_scatter_bytes", sp.payload(CommKind::kReduceScatter)},
              {"all_gather_bytes", sp.payload(CommKind::kAllGather)},
              {"formula_bytes_each", pairs * act},
              {"all_reduces", sp.ops(CommKind::kAllReduce)},
              {"bytes_sent", sp.first.bytes_sent()},
              {"bytes_sent_without", plain.first.bytes_sent()},
              {"ratio", ratio},
              {"ceiling", "bytes each rank sent per step with sequence parallelism over without (1, plus the "
                          "LayerNorm gradients' all-reduces)"}};
}

Json state_row(const TpRun& r, int tp, const Profile& p) {
  const ModelDims& d = p.train.dims;
  const std::uint64_t C = static_cast<std::uint64_t>(d.n_embd), L = static_cast<std::uint64_t>(d.n_layer);
  // Split: c_attn (weight, bias), attn c_proj weight, c_fc (weight, bias), mlp c_proj weight, wte.
  const std::uint64_t split = L * (3 * C * C + 3 * C + C * C + 4 * C * C + 4 * C + 4 * C * C) +
                              static_cast<std::uint64_t>(d.vocab) * C;
  const std::uint64_t whole = d.parameter_count() - split;
  const double formula = static_cast<double>(split) / tp + static_cast<double>(whole);
  // Two fp32 moments, and an fp32 master unless the weights are fp32 themselves.
  const double adam_bytes = p.precision.dtype == DType::kF32 ? 8 : 12;
  return Json{{"measure", "parameter_elements_per_rank"},
              {"elements", r.elements},
              {"one_rank_elements", d.parameter_count()},
              {"formula_elements", formula},
              {"optimizer_bytes", r.optimizer_bytes},
              {"formula_optimizer_bytes", adam_bytes * formula},
              {"optimizer_ratio", static_cast<double>(r.optimizer_bytes) / (adam_bytes * formula)},
              {"ratio", static_cast<double>(r.elements) / formula},
              {"ceiling", "a rank's parameter elements (and so its master, moments and gradients) over the split "
                          "parameters / tp plus the whole ones (padding above 1)"}};
}

// Under mpirun: the N-process tp run, then rank 0 alone at tp = 1.
Result<Json> mpi_figures(const TpOptions& o, bench::JsonLines& out, bool json) {
  STRATA_ASSIGN_OR_RETURN(auto world, make_mpi_world());
  const int n = world->size();
  STRATA_ASSIGN_OR_RETURN(auto runs, bench::together_then_alone<TpRun>(
                                         *world, [&](Communicator* tp) { return run_rank(o, tp); }));
  if (world->rank() != 0) return Json();
  const TpRun& together = runs.together;
  const TpRun& alone = runs.alone;
  const double speedup = alone.step_s / runs.slowest_s;
  std::vector<Json> rows = {collectives_row(together, o.profile), state_row(together, n, o.profile),
                            Json{{"measure", "speedup"},
                                 {"processes", n},
                                 {"step_s", runs.slowest_s},
                                 {"one_process_step_s", alone.step_s},
                                 {"ratio", speedup},
                                 {"ceiling", "one process's step time over N tp processes' (same global batch; "
                                             "bar 1.5 at N = 2)"}}};
  for (const Json& r : rows) json ? out.result(r) : (void)(std::cout << "  " << r.dump() << "\n");
  return Json{{"collectives_ratio", rows[0]["ratio"]}, {"state_ratio", rows[1]["ratio"]}, {"speedup", speedup},
              {"ratio", speedup}, {"ceiling", "one process's step time over N tp processes'"}};
}

// `o.tp` LocalComm ranks as threads; rank 0's run.
Result<TpRun> run_threads(const TpOptions& o, bool sequence_parallel) {
  STRATA_ASSIGN_OR_RETURN(auto comms, make_local_comms(o.tp));
  std::vector<Result<TpRun>> runs(static_cast<std::size_t>(o.tp), internal_error("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < o.tp; ++r) {
    threads.emplace_back([&, r] {
      const auto i = static_cast<std::size_t>(r);
      runs[i] = run_rank(o, comms[i].get(), sequence_parallel);
      if (!runs[i].ok()) comms[i]->abort(runs[i].status());
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : runs) STRATA_RETURN_IF_ERROR(r.status());
  return std::move(runs[0]);
}

// LocalComm threads: the counters and the state, no timing figure.
Result<Json> local_figures(const TpOptions& o, bench::JsonLines& out, bool json) {
  STRATA_ASSIGN_OR_RETURN(TpRun plain, run_threads(o, false));
  std::vector<Json> rows = {collectives_row(plain, o.profile), state_row(plain, o.tp, o.profile)};
  if (o.sequence_parallel) {
    STRATA_ASSIGN_OR_RETURN(TpRun sp, run_threads(o, true));
    rows.push_back(sequence_parallel_row(sp, plain, o.profile));
  }
  for (const Json& r : rows) json ? out.result(r) : (void)(std::cout << "  " << r.dump() << "\n");
  Json summary{{"collectives_ratio", rows[0]["ratio"]}, {"state_ratio", rows[1]["ratio"]}, {"speedup", nullptr},
               {"ratio", rows[0]["ratio"]}, {"ceiling", "all-reduced bytes per step over the layers' count"}};
  if (o.sequence_parallel) summary["sequence_parallel_bytes_ratio"] = rows.back()["ratio"];
  return summary;
}

int bench_tp(int argc, char** argv) {
  cxxopts::Options opts("strata bench tp", "tensor-parallel step: collectives, state per rank, speed-up");
  opts.add_options()("model", "model preset", cxxopts::value<std::string>()->default_value("default"))(
      "n-layer", "override the preset's n_layer", cxxopts::value<int>())(
      "n-head", "override the preset's n_head", cxxopts::value<int>())(
      "n-embd", "override the preset's n_embd", cxxopts::value<int>())(
      "micro-batch", "sequences per micro-batch (the global batch: every tp rank reads it)",
      cxxopts::value<int>()->default_value("4"))(
      "tp", "LocalComm ranks (threads) when not under mpirun", cxxopts::value<int>()->default_value("2"))(
      "steps", "timed steps per run", cxxopts::value<int>()->default_value("3"))(
      "sequence-parallel", "threads: also run with parallel.sequence_parallel and compare its collectives")(
      "json", "print JSON Lines instead of tables; see 'strata help bench'")("h,help", "this help");
  cxxopts::ParseResult a;
  try {
    a = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata bench tp: " << e.what() << "\n";
    return kExitUsage;
  }
  if (a.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  TpOptions o;
  auto base = Profile::from_toml_string("", "bench tp");
  if (!a.unmatched().empty() || !base.ok() || !model_preset(a["model"].as<std::string>(), &base->train.dims)) {
    std::cerr << "strata bench tp: bad arguments (see --help)\n";
    return kExitUsage;
  }
  o.profile = *base;
  ModelDims& d = o.profile.train.dims;
  if (a.count("n-layer")) d.n_layer = a["n-layer"].as<int>();
  if (a.count("n-head")) d.n_head = a["n-head"].as<int>();
  if (a.count("n-embd")) d.n_embd = a["n-embd"].as<int>();
  o.profile.train.model = a["model"].as<std::string>();
  o.profile.train.micro_batch = a["micro-batch"].as<int>();
  o.profile.train.grad_accum = 1;
  o.tp = a["tp"].as<int>();
  o.steps = a["steps"].as<int>();
  o.sequence_parallel = a.count("sequence-parallel") > 0;
  const bool mpi = launched_by_mpi();
  if (o.tp < 2 || o.steps < 1 || d.n_head % (mpi ? 1 : o.tp) != 0) {
    std::cerr << "strata bench tp: --tp must be at least 2 and divide n_head; --steps at least 1\n";
    return kExitUsage;
  }
  const bool json = a.count("json") > 0;
  // One thread per rank for the device's kernels and the nn ops alike: the speed-up compares
  // N ranks of one thread with one rank of one thread.
  omp_set_num_threads(1);
  const char* world_rank = std::getenv("OMPI_COMM_WORLD_RANK");
  const bool rank0 = !mpi || world_rank == nullptr || std::string(world_rank) == "0";
  bench::JsonLines out("tp");
  const Json env = {{"model", o.profile.train.model},
                    {"n_layer", d.n_layer},
                    {"n_head", d.n_head},
                    {"n_embd", d.n_embd},
                    {"micro_batch", o.profile.train.micro_batch},
                    {"ranks_are", mpi ? "MPI processes" : "LocalComm threads"},
                    {"sequence_parallel", o.sequence_parallel},
                    {"dtype", std::string(dtype_name(o.profile.precision.dtype))}};
  if (rank0) json ? out.env(env) : (void)(std::cout << "strata bench tp " << env.dump() << "\n");
  auto summary = mpi ? mpi_figures(o, out, json && rank0) : local_figures(o, out, json);
  if (!summary.ok()) {
    std::cerr << "strata bench tp: " << summary.status() << "\n";
    return kExitFailed;
  }
  if (rank0) json ? out.summary(*summary) : (void)(std::cout << "summary " << summary->dump() << "\n");
  return kExitOk;
}

}  // namespace

STRATA_COMMAND("bench tp", "tensor-parallel step: collectives per block, state per rank, speed-up over one process",
               bench_tp);

}  // namespace strata::cli
