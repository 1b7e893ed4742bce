// `strata bench pp`: pipeline-parallel training (src/engine/pipeline.h) on parallel.pp = 2
// stages with m micro-batches (train.grad_accum), each schedule in turn, each figure against
// its ceiling:
//   idle fraction: each stage's, measured from the timestamps its stream took around every
//     compute instruction of the last timed step ((makespan - busy) / makespan, the makespan
//     from the first instruction's start on any stage to the last one's end), against the
//     simulator's (src/parallel/pipeline_schedule.h) for the measured costs: each stage's
//     chunk's mean forward, backward (input-gradient half for zb-h1) and weight-gradient
//     durations, and an activation's trip between the stages (a ping-pong through the
//     communicator before the runs); the bar is a difference of at most 0.05;
//   activations (gpipe and 1f1b): stage 0's device peak (DeviceStats::peak_used) over a GPipe
//     run of one micro-batch, less the step's token buffers, in micro-batches' worth of one
//     activation slot (Gpt::activation_bytes); the ceiling is the schedule's: m for GPipe,
//     min(p, m) for 1F1B;
//   speed-up: one process (one thread, pp = 1, the same m micro-batches) over the slowest
//     stage's step time; the bar is 1.6 at m = 8 under `mpirun -n 2` with one thread per
//     process.
// Without mpirun the two stages are LocalComm threads of one process (the figures then share
// its cores).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cxxopts.hpp>
#include <iostream>
#include <thread>
#include <vector>

#include "bench/bench_json.h"
#include "cli/command.h"
#include "engine/pipeline.h"
#include "parallel/pipeline_schedule.h"
#include "strata/communicator.h"
#include "strata/trainer.h"

namespace strata::cli {
namespace {

using bench::Json;

constexpr int kStages = 2;

struct PpOptions {
  Profile profile;  // parallel.pp, schedule and virtual_stages set per run
  int micro_batches = 8;
  int steps = 3;
};

// One stage's run (or, alone, one rank's), with what rank 0 reports of all stages.
struct PpRun {
  double step_s = 0;                              // median of the timed steps (the slowest stage's)
  std::vector<std::vector<PipelineTime>> stages;  // every stage's last timed step
  std::uint64_t stage0_peak = 0;                  // stage 0's DeviceStats::peak_used
};

std::unique_ptr<Device> bench_device(const Profile& p) {
  DeviceOptions o = device_options(p.memory);
  o.compute_threads = 1;
  return std::move(*create_device("host", o));
}

Profile pipeline_profile(const PpOptions& o, PipelineSchedule s, int m, int stages) {
  Profile p = o.profile;
  p.parallel.pp = stages;
  p.parallel.schedule = s;
  p.parallel.virtual_stages = s == PipelineSchedule::kInterleaved ? 2 : 1;
  p.train.grad_accum = m;
  return p;
}

// Every stage's timeline on every stage (a collective of `pp`): op, micro, chunk, start, end.
Result<std::vector<std::vector<PipelineTime>>> gather_timelines(Communicator& pp, const std::vector<PipelineTime>& mine) {
  std::vector<double> count{static_cast<double>(mine.size())};
  STRATA_RETURN_IF_ERROR(pp.all_reduce_host(count, ReduceOp::kMax));
  const std::size_t n = static_cast<std::size_t>(count[0]), stages = static_cast<std::size_t>(pp.size());
  std::vector<double> all(stages * n * 5, 0.0);
  for (std::size_t i = 0; i < mine.size(); ++i) {
    double* at = &all[(static_cast<std::size_t>(pp.rank()) * n + i) * 5];
    at[0] = mine[i].op;
    at[1] = mine[i].micro;
    at[2] = mine[i].chunk;
    at[3] = mine[i].start;
    at[4] = mine[i].end;
  }
  STRATA_RETURN_IF_ERROR(pp.all_reduce_host(all, ReduceOp::kSum));
  std::vector<std::vector<PipelineTime>> out(stages);
  for (std::size_t s = 0; s < stages; ++s) {
    for (std::size_t i = 0; i < n; ++i) {
      const double* at = &all[(s * n + i) * 5];
      if (at[0] == 0) continue;  // a shorter list's padding
      out[s].push_back(PipelineTime{static_cast<char>(at[0]), static_cast<int>(at[1]), static_cast<int>(at[2]), at[3], at[4]});
    }
  }
  return out;
}

// A stage of `pp` (null: one rank alone): a warm-up step, then `steps` timed ones.
Result<PpRun> run_rank(const PpOptions& o, Communicator* pp, PipelineSchedule s, int m) {
  const Profile p = pipeline_profile(o, s, m, pp == nullptr ? 1 : pp->size());
  auto dev = bench_device(p);
  TrainerOptions to;
  to.pp = pp;
  to.pipeline_timestamps = true;
  STRATA_ASSIGN_OR_RETURN(auto t, Trainer::create(p, *dev, nullptr, to));
  STRATA_ASSIGN_OR_RETURN(TokenDataset data, TokenDataset::default_text());
  STRATA_RETURN_IF_ERROR(t->train_step(data).status());
  std::vector<double> times;
  for (int i = 0; i < o.steps; ++i) {
    STRATA_ASSIGN_OR_RETURN(StepStats st, t->train_step(data));
    times.push_back(st.seconds);
  }
  PpRun r;
  r.step_s = bench::median(times);
  if (pp == nullptr) return r;
  std::vector<double> step{r.step_s};
  STRATA_RETURN_IF_ERROR(pp->all_reduce_host(step, ReduceOp::kMax));
  std::vector<double> peak{pp->rank() == 0 ? static_cast<double>(dev->stats().peak_used) : 0.0};
  STRATA_RETURN_IF_ERROR(pp->all_reduce_host(peak, ReduceOp::kSum));
  r.step_s = step[0];
  r.stage0_peak = static_cast<std::uint64_t>(peak[0]);
  STRATA_ASSIGN_OR_RETURN(r.stages, gather_timelines(*pp, t->pipeline_timeline()));
  return r;
}

// The measured costs of each stage's chunks: the mean durations of their forwards, backwards
// (input-gradient halves) and weight-gradient halves (the stages differ: the embeddings on the
// first, the head and loss on the last, and so may their chunks), and a transfer's.
pipeline::PartCosts measured_costs(const PpRun& r, int chunks, double transfer_s) {
  pipeline::PartCosts costs(r.stages.size(), std::vector<pipeline::Costs>(static_cast<std::size_t>(chunks)));
  for (std::size_t s = 0; s < r.stages.size(); ++s) {
    for (int c = 0; c < chunks; ++c) {
      double sum[3] = {0, 0, 0};
      int n[3] = {0, 0, 0};
      for (const PipelineTime& t : r.stages[s]) {
        if (t.chunk != c) continue;
        const int k = t.op == 'F' ? 0 : t.op == 'B' ? 1 : 2;
        sum[k] += t.end - t.start;
        ++n[k];
      }
      pipeline::Costs& pc = costs[s][static_cast<std::size_t>(c)];
      pc.forward = n[0] ? sum[0] / n[0] : 0;
      pc.backward = n[1] ? sum[1] / n[1] : 0;
      pc.weight = n[2] ? sum[2] / n[2] : 0;
      pc.transfer = transfer_s;
    }
  }
  return costs;
}

Json costs_json(const pipeline::PartCosts& costs, std::size_t stage) {
  Json chunks = Json::array();
  for (const pipeline::Costs& c : costs[stage]) {
    chunks.push_back(Json{{"forward_s", c.forward}, {"backward_s", c.backward}, {"weight_s", c.weight}});
  }
  return chunks;
}

Result<std::vector<Json>> idle_rows(const PpRun& r, const Profile& p, double transfer_s) {
  STRATA_ASSIGN_OR_RETURN(pipeline::Schedule schedule, engine::schedule_of(p, p.parallel.pp));
  const pipeline::PartCosts costs = measured_costs(r, p.parallel.virtual_stages, transfer_s);
  STRATA_ASSIGN_OR_RETURN(pipeline::Simulation sim, pipeline::simulate(schedule, costs));
  double first = 1e300, last = 0;
  for (const auto& stage : r.stages) {
    for (const PipelineTime& t : stage) {
      first = std::min(first, t.start);
      last = std::max(last, t.end);
    }
  }
  std::vector<Json> rows;
  for (std::size_t s = 0; s < r.stages.size(); ++s) {
    double busy = 0;
    for (const PipelineTime& t : r.stages[s]) busy += t.end - t.start;
    const double measured = last > first ? (last - first - busy) / (last - first) : 0;
    const double simulated = sim.stages[s].idle_fraction;
    rows.push_back(Json{{"measure", "idle_fraction"},
                        {"schedule", pipeline_schedule_name(p.parallel.schedule)},
                        {"stage", s},
                        {"measured", measured},
                        {"simulated", simulated},
                        {"difference", measured - simulated},
                        {"costs", costs_json(costs, s)},
                        {"transfer_s", transfer_s},
                        {"ratio", simulated > 0 ? measured / simulated : 0.0},
                        {"ceiling", "the simulator's idle fraction for the measured costs (bar: within 0.05)"}});
  }
  return rows;
}

// Stage 0's activation slots held at the device peak, from its statistics against a run of
// one micro-batch (one slot), less the token buffers of the other micro-batches.
Json activation_row(const PpRun& r, const PpRun& one, const Profile& p) {
  GptConfig c = GptConfig::from_profile(p);
  c.pp_rank = 0;
  const int B = p.train.micro_batch, m = p.train.grad_accum;
  const double slot = static_cast<double>(Gpt::activation_bytes(c, B, {{2}}) - Gpt::activation_bytes(c, B, {{1}}));
  const double tokens = 2.0 * B * p.train.dims.seq_len * sizeof(std::int32_t) * (m - 1);
  const double held = 1 + (static_cast<double>(r.stage0_peak) - static_cast<double>(one.stage0_peak) - tokens) / slot;
  const bool gpipe = p.parallel.schedule == PipelineSchedule::kGPipe;
  const double ceiling = gpipe ? m : std::min(p.parallel.pp, m);
  return Json{{"measure", "stage0_activations"},
              {"schedule", pipeline_schedule_name(p.parallel.schedule)},
              {"peak_bytes", r.stage0_peak},
              {"one_micro_batch_peak_bytes", one.stage0_peak},
              {"slot_bytes", slot},
              {"micro_batches_held", held},
              {"formula", ceiling},
              {"ratio", held / ceiling},
              {"ceiling", gpipe ? "m micro-batches' activations (GPipe)" : "min(p, m) micro-batches' activations (1F1B)"}};
}

const std::vector<PipelineSchedule>& schedules() {
  static const std::vector<PipelineSchedule> all = {PipelineSchedule::kGPipe, PipelineSchedule::k1F1B,
                                                    PipelineSchedule::kInterleaved, PipelineSchedule::kZbH1};
  return all;
}

// Every schedule's run on the stages of `pp` (a collective), and the reference of one
// micro-batch; rank 0 gets the runs.
struct StageRuns {
  std::vector<PpRun> runs;  // in schedules() order
  PpRun one;
  double transfer_s = 0;    // one activation's trip from one stage to the other
};

// One activation's (micro_batch x seq_len x n_embd) trip between the two stages through the
// communicator on device streams: half the mean round trip of 20 ping-pongs (a collective of
// `pp`; every rank gets rank 0's figure).
Result<double> transfer_seconds(const PpOptions& o, Communicator& pp) {
  const Profile& p = o.profile;
  auto dev = bench_device(p);
  const std::size_t n = static_cast<std::size_t>(p.train.micro_batch) * static_cast<std::size_t>(p.train.dims.seq_len) *
                        static_cast<std::size_t>(p.train.dims.n_embd);
  STRATA_ASSIGN_OR_RETURN(DeviceBuffer buf, dev->allocate(n * sizeof(float)));
  STRATA_ASSIGN_OR_RETURN(auto stream, dev->create_stream("ping-pong"));
  STRATA_RETURN_IF_ERROR(dev->fill(*buf.view(DType::kF32, 0, n), 1.0f, *stream));
  const CommBuffer b{buf.range(), CommType::kF32, n};
  const int peer = 1 - pp.rank();
  constexpr int kRounds = 20;
  double seconds = 0;
  for (int i = 0; i <= kRounds; ++i) {  // round 0 warms the path up
    const auto t0 = std::chrono::steady_clock::now();
    if (pp.rank() == 0) {
      STRATA_RETURN_IF_ERROR(pp.send(b, peer, 2 * i, *stream));
      STRATA_RETURN_IF_ERROR(pp.recv(b, peer, 2 * i + 1, *stream));
    } else {
      STRATA_RETURN_IF_ERROR(pp.recv(b, peer, 2 * i, *stream));
      STRATA_RETURN_IF_ERROR(pp.send(b, peer, 2 * i + 1, *stream));
    }
    STRATA_RETURN_IF_ERROR(stream->synchronize());
    if (i > 0) seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  std::vector<double> one_way{pp.rank() == 0 ? seconds / (2 * kRounds) : 0.0};
  STRATA_RETURN_IF_ERROR(pp.all_reduce_host(one_way, ReduceOp::kSum));
  return one_way[0];
}

Result<StageRuns> run_stages(const PpOptions& o, Communicator& pp) {
  StageRuns out;
  STRATA_ASSIGN_OR_RETURN(out.transfer_s, transfer_seconds(o, pp));
  for (PipelineSchedule s : schedules()) {
    STRATA_ASSIGN_OR_RETURN(PpRun r, run_rank(o, &pp, s, o.micro_batches));
    out.runs.push_back(std::move(r));
  }
  STRATA_ASSIGN_OR_RETURN(out.one, run_rank(o, &pp, PipelineSchedule::kGPipe, 1));
  return out;
}

// Rank 0's rows and summary from the stages' runs and the one-process run.
Result<Json> report(const PpOptions& o, const StageRuns& st, const PpRun& alone, bool processes, bench::JsonLines& out,
                    bool json) {
  std::vector<Json> rows;
  double worst = 0, best_speedup = 0, speedup_1f1b = 0;
  for (std::size_t i = 0; i < schedules().size(); ++i) {
    const PipelineSchedule s = schedules()[i];
    const Profile p = pipeline_profile(o, s, o.micro_batches, kStages);
    if (s != PipelineSchedule::kGPipe) {
      STRATA_ASSIGN_OR_RETURN(std::vector<Json> idle, idle_rows(st.runs[i], p, st.transfer_s));
      for (Json& r : idle) {
        worst = std::max(worst, std::abs(r["difference"].get<double>()));
        rows.push_back(std::move(r));
      }
    }
    if (s == PipelineSchedule::kGPipe || s == PipelineSchedule::k1F1B) rows.push_back(activation_row(st.runs[i], st.one, p));
    const double speedup = alone.step_s / st.runs[i].step_s;
    best_speedup = std::max(best_speedup, speedup);
    if (s == PipelineSchedule::k1F1B) speedup_1f1b = speedup;
    rows.push_back(Json{{"measure", "speedup"},
                        {"schedule", pipeline_schedule_name(s)},
                        {"stages_are", processes ? "MPI processes" : "LocalComm threads"},
                        {"step_s", st.runs[i].step_s},
                        {"one_process_step_s", alone.step_s},
                        {"ratio", speedup},
                        {"ceiling", "one process's step time over the pipeline's (the same m micro-batches; bar 1.6 "
                                    "at pp = 2, m = 8, one thread per process)"}});
  }
  for (const Json& r : rows) json ? out.result(r) : (void)(std::cout << "  " << r.dump() << "\n");
  return Json{{"largest_idle_difference", worst}, {"speedup_1f1b", speedup_1f1b}, {"best_speedup", best_speedup},
              {"ratio", best_speedup},
              {"ceiling", "one process's step time over the fastest schedule's on pp = 2 stages"}};
}

// Under mpirun -n 2: the stages are the processes; then rank 0 alone.
Result<Json> mpi_figures(const PpOptions& o, bench::JsonLines& out, bool json) {
  STRATA_ASSIGN_OR_RETURN(auto world, make_mpi_world());
  if (world->size() != kStages) return invalid_argument("bench pp runs under mpirun -n 2 (two stages)");
  Result<StageRuns> st = run_stages(o, *world);
  if (!st.ok()) world->abort(st.status());
  STRATA_RETURN_IF_ERROR(st.status());
  Result<PpRun> alone = PpRun{};
  if (world->rank() == 0) alone = run_rank(o, nullptr, PipelineSchedule::k1F1B, o.micro_batches);
  STRATA_RETURN_IF_ERROR(world->barrier());
  STRATA_RETURN_IF_ERROR(alone.status());
  if (world->rank() != 0) return Json();
  return report(o, *st, *alone, true, out, json);
}

// Two LocalComm threads, then one rank alone.
Result<Json> local_figures(const PpOptions& o, bench::JsonLines& out, bool json) {
  STRATA_ASSIGN_OR_RETURN(auto comms, make_local_comms(kStages));
  std::vector<Result<StageRuns>> runs(kStages, internal_error("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < kStages; ++r) {
    threads.emplace_back([&, r] {
      const auto i = static_cast<std::size_t>(r);
      runs[i] = run_stages(o, *comms[i]);
      if (!runs[i].ok()) comms[i]->abort(runs[i].status());
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : runs) STRATA_RETURN_IF_ERROR(r.status());
  STRATA_ASSIGN_OR_RETURN(PpRun alone, run_rank(o, nullptr, PipelineSchedule::k1F1B, o.micro_batches));
  return report(o, *runs[0], alone, false, out, json);
}

int bench_pp(int argc, char** argv) {
  cxxopts::Options opts("strata bench pp", "pipeline-parallel step: idle fractions, activations, speed-up");
  opts.add_options()("model", "model preset", cxxopts::value<std::string>()->default_value("default"))(
      "n-layer", "override the preset's n_layer (a multiple of 4: two stages of two chunks)", cxxopts::value<int>())(
      "n-embd", "override the preset's n_embd", cxxopts::value<int>())(
      "micro-batch", "sequences per micro-batch", cxxopts::value<int>()->default_value("4"))(
      "micro-batches", "micro-batches per step (train.grad_accum)", cxxopts::value<int>()->default_value("8"))(
      "steps", "timed steps per run", cxxopts::value<int>()->default_value("3"))(
      "json", "print JSON Lines instead of tables; see 'strata help bench'")("h,help", "this help");
  cxxopts::ParseResult a;
  try {
    a = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata bench pp: " << e.what() << "\n";
    return kExitUsage;
  }
  if (a.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  PpOptions o;
  auto base = Profile::from_toml_string("", "bench pp");
  if (!a.unmatched().empty() || !base.ok() || !model_preset(a["model"].as<std::string>(), &base->train.dims)) {
    std::cerr << "strata bench pp: bad arguments (see --help)\n";
    return kExitUsage;
  }
  o.profile = *base;
  ModelDims& d = o.profile.train.dims;
  if (a.count("n-layer")) d.n_layer = a["n-layer"].as<int>();
  if (a.count("n-embd")) d.n_embd = a["n-embd"].as<int>();
  o.profile.train.model = a["model"].as<std::string>();
  o.profile.train.micro_batch = a["micro-batch"].as<int>();
  o.micro_batches = a["micro-batches"].as<int>();
  o.steps = a["steps"].as<int>();
  if (o.steps < 1 || o.micro_batches < kStages || d.n_layer % (2 * kStages) != 0) {
    std::cerr << "strata bench pp: --steps must be at least 1, --micro-batches at least 2, and n_layer a multiple "
                 "of 4 (two stages of two interleaved chunks)\n";
    return kExitUsage;
  }
  const bool json = a.count("json") > 0;
  // One thread per stage for the device's kernels and the nn ops alike.
  omp_set_num_threads(1);
  const bool mpi = launched_by_mpi();
  const char* world_rank = std::getenv("OMPI_COMM_WORLD_RANK");
  const bool rank0 = !mpi || world_rank == nullptr || std::string(world_rank) == "0";
  bench::JsonLines out("pp");
  const Json env = {{"model", o.profile.train.model},
                    {"n_layer", d.n_layer},
                    {"n_embd", d.n_embd},
                    {"micro_batch", o.profile.train.micro_batch},
                    {"micro_batches", o.micro_batches},
                    {"stages", kStages},
                    {"stages_are", mpi ? "MPI processes" : "LocalComm threads"},
                    {"dtype", std::string(dtype_name(o.profile.precision.dtype))}};
  if (rank0) json ? out.env(env) : (void)(std::cout << "strata bench pp " << env.dump() << "\n");
  auto summary = mpi ? mpi_figures(o, out, json && rank0) : local_figures(o, out, json);
  if (!summary.ok()) {
    std::cerr << "strata bench pp: " << summary.status() << "\n";
    return kExitFailed;
  }
  if (rank0) json ? out.summary(*summary) : (void)(std::cout << "summary " << summary->dump() << "\n");
  return kExitOk;
}

}  // namespace

STRATA_COMMAND("bench pp", "pipeline-parallel step: idle fractions against the simulator, activations, speed-up",
               bench_pp);

}  // namespace strata::cli
