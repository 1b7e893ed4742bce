// `strata bench dp` (and `strata bench zero3`, the same at stage 3): data-parallel training
// (ZeRO stage 0 to 3: --stage), each figure against its ceiling:
//   bytes: what each rank sent per step (the communicator's counters) over ZeRO's formula for Ψ
//     parameters of g gradient and v weight bytes: stage 0 the all-reduce 2 Ψ g (N-1)/N; stage 1
//     the reduce-scatter Ψ g (N-1)/N and the all-gather Ψ v (N-1)/N; stage 2 the reduce-scatter
//     once per micro-step (grad_accum x Ψ g (N-1)/N) and the all-gather; plus the scalar
//     all-reduces (loss; squared norm with stages 1, 2). Above 1 by the layout's padding only;
//   state: the model-state bytes per rank (device bytes in use less activations, plus the
//     optimizer state homed in host memory with --optimizer cpu) over ZeRO's per-parameter count
//     for the run's dtypes (bf16 weights, fp32 state: stage 0 2 + 2 + 12, stage 1 2 + 2 + 12/N,
//     stage 2 2 + (2 + 12)/N), with stage 2's gradient bucket slots and the 1 MiB staging of
//     gathered state reads as the declared buffers;
//   stage 3 replaces `state` by the device's model state: device bytes less activations over
//     ZeRO-3's device share (v + g [unless --params cpu] + 12 or 8 [unless --optimizer cpu]) Ψ / N
//     (DataParallel::state_bytes_per_element) plus the declared buffers (Trainer::DeviceMemory:
//     gradient slots, staging, the gather window's peak, the padding and persistent parameters
//     beyond the share, the token and loss buffers), at most 1; and
//     adds `prefetch`: gathers issued on demand after the first step (ceiling 0), and the share
//     of the step the training stream waited for gathers (from timestamps the stream takes
//     around its waits), on the plain link and on a link throttled (--throttle) so that the
//     step's host-to-device bytes take 1/--throttle of its forward (timed in a run of its own):
//     every layer's gather no longer than its forward compute (bar: at most 10 %);
//   hidden: with every gradient collective delayed by --delay-ms (FaultyComm), the share of the
//     delay that backward hides: 1 - (step growth) / (delay added), ceiling 1;
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
#include "bench/bench_ranks.h"
#include "cli/command.h"
#include "parallel/faulty_comm.h"
#include "strata/communicator.h"
#include "strata/trainer.h"
#include "strata/units.h"

namespace strata::cli {
namespace {

using bench::Json;

struct DpOptions {
  std::string name = "dp";  // the bench's name: dp or zero3
  Profile profile;  // of one rank; parallel.dp set per run; zero.stage, precision and offload as asked
  int ranks = 2;
  int steps = 3;
  int rounds = 3;
  double delay_ms = 20;
  double throttle = 1;  // stage 3: the throttled link carries the step's copies in 1/throttle of its forward
};

struct RankResult {
  double step_s = 0;               // median step time
  std::uint64_t sent = 0;          // bytes sent per step
  std::uint64_t grad_collectives = 0;  // gradient reductions per step (the delayed ones)
  std::uint64_t state_bytes = 0, host_state_bytes = 0, bucket_bytes = 0, activation_bytes = 0, params = 0;
  double state_per_element = 0;    // ZeRO's device model-state bytes per parameter (Trainer::DeviceMemory)
  std::uint64_t to_device = 0;     // host-to-device bytes per step
  GatherStats first, last;         // stage 3: after the warm-up step and after the timed ones
  double stall_share = 0;          // stage 3: the stream's wait for gathers over the step time
  double swap_wait_share = 0;      // parameters on NVMe: the trainer's wait for NVMe over the step time
  std::uint64_t param_nvme_read = 0;  // parameters on NVMe: bytes read from NVMe per step
  double step_total_s = 0;         // the timed steps together
  double forward_s = 0;            // with phase timing: median forward time
};

bool swapped(const Profile& p) { return p.offload_param.device == OffloadTarget::kNvme; }

// The collective that reduces gradients at `stage`.
CommKind grad_kind(int stage) { return stage == 0 ? CommKind::kAllReduce : CommKind::kReduceScatter; }

std::unique_ptr<Device> bench_device(const Profile& p) {
  DeviceOptions o = device_options(p.memory);
  o.compute_threads = 1;
  return std::move(*create_device("host", o));
}

// Bytes of parameters read from NVMe so far (none unless they live there).
std::uint64_t param_nvme_read(const Trainer& t) {
  const std::optional<TierStats> s = t.parameter_tier_stats();
  return s ? s->bytes_moved[static_cast<int>(Tier::kNvme)][static_cast<int>(Tier::kHost)] : 0;
}

// One rank: a warm-up step, then `steps` timed ones.
Result<RankResult> run_rank(const DpOptions& o, Communicator* dp, std::uint64_t link_bandwidth = 0,
                            bool phase_timing = false) {
  Profile p = o.profile;
  p.parallel.dp = dp == nullptr ? 1 : dp->size();
  p.memory.host_device_bandwidth = link_bandwidth;
  auto dev = bench_device(p);
  TrainerOptions to;
  to.dp = dp;
  to.time_gather_stalls = p.zero.stage == 3;
  to.phase_timing = phase_timing;
  STRATA_ASSIGN_OR_RETURN(auto t, Trainer::create(p, *dev, nullptr, to));
  STRATA_ASSIGN_OR_RETURN(TokenDataset data, TokenDataset::default_text());
  STRATA_RETURN_IF_ERROR(t->train_step(data).status());
  RankResult r;
  r.first = t->gather_stats();
  const std::uint64_t to_device = dev->stats().bytes_to_device;
  const std::uint64_t nvme_read = param_nvme_read(*t);
  const CommStats before = dp == nullptr ? CommStats{} : dp->stats();
  std::vector<double> times, compute;
  for (int i = 0; i < o.steps; ++i) {
    STRATA_ASSIGN_OR_RETURN(StepStats st, t->train_step(data));
    times.push_back(st.seconds);
    compute.push_back(st.forward_s);
  }
  r.step_s = bench::median(times);
  r.forward_s = bench::median(compute);
  const auto steps = static_cast<std::uint64_t>(o.steps);
  r.last = t->gather_stats();
  r.to_device = (dev->stats().bytes_to_device - to_device) / steps;
  double total_s = 0;
  for (double x : times) total_s += x;
  r.stall_share = total_s > 0 ? (r.last.stall_s - r.first.stall_s) / total_s : 0;
  r.swap_wait_share = total_s > 0 ? (r.last.swap_wait_s - r.first.swap_wait_s) / total_s : 0;
  r.param_nvme_read = (param_nvme_read(*t) - nvme_read) / steps;
  r.step_total_s = total_s;
  if (dp != nullptr) {
    const CommStats after = dp->stats();
    r.sent = (after.bytes_sent() - before.bytes_sent()) / steps;
    const CommKind k = grad_kind(t->zero_stage());
    r.grad_collectives = (after.of(k).ops - before.of(k).ops) / steps - (t->zero_stage() == 0 ? 1 : 0);  // less the loss
  }
  const Trainer::DeviceMemory memory = t->device_memory();
  r.params = memory.elements;
  r.activation_bytes = memory.activations;
  r.state_bytes = dev->stats().used - r.activation_bytes;
  r.bucket_bytes = memory.buffer_bytes();
  r.state_per_element = memory.state_per_element;
  if (auto tiers = t->optimizer().tier_stats(); tiers.has_value()) {
    r.host_state_bytes = tiers->tiers[static_cast<int>(Tier::kHost)].home_bytes;
  }
  return r;
}

// `n` LocalComm ranks as threads, each through a FaultyComm delaying its all-reduces by `delay`.
Result<std::vector<RankResult>> run_threads(const DpOptions& o, int n, double delay_ms, std::uint64_t link_bandwidth = 0,
                                            bool phase_timing = false) {
  STRATA_ASSIGN_OR_RETURN(auto comms, make_local_comms(n));
  std::vector<std::unique_ptr<parallel::FaultyComm>> wrapped;
  for (auto& c : comms) {
    wrapped.push_back(std::make_unique<parallel::FaultyComm>(std::move(c)));
    // Gradient buckets only: the loss and norm (4 bytes each) are not gradient collectives.
    if (delay_ms > 0) {
      wrapped.back()->delay(grad_kind(o.profile.zero.stage), std::chrono::milliseconds(static_cast<int>(delay_ms)), 1024);
    }
  }
  std::vector<Result<RankResult>> out(static_cast<std::size_t>(n), internal_error("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      out[static_cast<std::size_t>(r)] = run_rank(o, wrapped[static_cast<std::size_t>(r)].get(), link_bandwidth, phase_timing);
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

Json counters_row(const RankResult& r, int n, const Profile& p) {
  const auto N = static_cast<double>(n);
  const double psi = static_cast<double>(r.params);
  const double g = static_cast<double>(dtype_size(p.precision.grad_dtype)), v = static_cast<double>(dtype_size(p.precision.dtype));
  const int stage = p.zero.stage;
  const double scalars = stage == 0 ? 4 : 8;  // the loss; with a shard also the squared norm
  const double grads = stage == 0 ? 2 * psi * g : stage == 1 ? psi * g : p.train.grad_accum * psi * g;
  // Stage 3 gathers every parameter for forward and again for backward, the persistent ones once.
  const double persistent = static_cast<double>(r.last.persistent);
  const double gather = stage == 0 ? 0 : stage < 3 ? psi * v : (2 * psi - persistent) * v;
  const double formula = (grads + gather + 2 * scalars) * (N - 1) / N;
  return {{"measure", "bytes_per_step"},
          {"stage", stage},
          {"ranks", n},
          {"bytes_sent", r.sent},
          {"formula_bytes", formula},
          {"ratio", static_cast<double>(r.sent) / formula},
          {"ceiling", "bytes sent per step over ZeRO's formula for the stage (padding makes it exceed 1)"}};
}

// Stage 3: what the device holds of the model state, against ZeRO-3's per-parameter share.
Json device_state_row(const RankResult& r) {
  const double per_param = r.state_per_element;
  const double formula = per_param * static_cast<double>(r.params);
  return {{"measure", "device_model_state_bytes"},
          {"stage", 3},
          {"device_bytes_model_state", r.state_bytes},
          {"device_bytes_activations", r.activation_bytes},
          {"declared_buffer_bytes", r.bucket_bytes},
          {"gather_window_peak_elements", r.last.peak_held},
          {"max_live_parameters", r.last.max_live},
          {"formula_bytes_per_parameter", per_param},
          {"formula_bytes", formula},
          {"ratio", static_cast<double>(r.state_bytes) / (formula + static_cast<double>(r.bucket_bytes))},
          {"ceiling", "device bytes less activations, over ZeRO-3's device share per parameter for the homes in use "
                      "((v + g + optimizer) / N) plus the declared buffers (gradient slots, staging, persistent "
                      "buckets, the gather window's peak, tokens and loss); at most 1"}};
}

// Parameters on NVMe: the block pins of the gathers after the first step, how many were taken
// ahead, how many the trainer waited for and for how long, and the bytes read back.
Json swap_figures(const RankResult& plain, const RankResult& throttled, int steps) {
  const GatherStats& a = plain.first;
  const GatherStats& b = plain.last;
  const double reads = static_cast<double>(b.swap_reads - a.swap_reads);
  return {{"swap_reads_per_step", reads / steps},
          {"swap_read_ahead_share", reads > 0 ? static_cast<double>(b.swap_ahead - a.swap_ahead) / reads : 0.0},
          {"swap_waits_after_first_step", b.swap_waits - a.swap_waits},
          {"swap_wait_share", plain.swap_wait_share},
          {"throttled_swap_waits_after_first_step", throttled.last.swap_waits - throttled.first.swap_waits},
          {"throttled_swap_wait_share", throttled.swap_wait_share},
          {"param_nvme_read_bytes_per_step", plain.param_nvme_read},
          {"param_nvme_read_bytes_per_s",
           plain.step_total_s > 0 ? static_cast<double>(plain.param_nvme_read) * steps / plain.step_total_s : 0.0}};
}

Json prefetch_row(const RankResult& plain, const RankResult& throttled, std::uint64_t bandwidth, int steps,
                  bool swapped) {
  Json row = {{"measure", "prefetch"},
          {"on_demand_after_first_step", plain.last.on_demand - plain.first.on_demand},
          {"prefetched_per_step", static_cast<double>(plain.last.prefetched - plain.first.prefetched) / steps},
          {"stall_share", plain.stall_share},
          {"throttled_link_bytes_per_s", bandwidth},
          {"throttled_to_device_bytes_per_step", throttled.to_device},
          {"throttled_stall_share", throttled.stall_share},
          {"throttled_on_demand_after_first_step", throttled.last.on_demand - throttled.first.on_demand},
          {"ratio", throttled.stall_share},
          {"ceiling", "share of the step the training stream waited for parameter gathers with the link throttled "
                      "so that all of a step's copies take as long as its forward (bar 0.10); gathers "
                      "on demand after the first step (bar 0)"}};
  if (!swapped) return row;
  row.update(swap_figures(plain, throttled, steps));
  // The trainer's waits for NVMe may fall inside the stream's (then they are counted twice).
  row["ratio"] = throttled.stall_share + throttled.swap_wait_share;
  row["ceiling"] = "share of the step waited for parameters, the stream's waits for gathers plus the trainer's for "
                   "NVMe (an upper bound), with the link throttled so that a step's copies take as long as its "
                   "forward (bar 0.10); block reads the trainer waited for after the first step (bar 0)";
  return row;
}

Json state_row(const RankResult& r, int n, const Profile& p) {
  // Weights, gradients, fp32 moments and an fp32 master (which, for fp32 weights, is the
  // weights themselves, so not sharded); stage 1 shards the optimizer state, stage 2 the
  // gradients too.
  const double N = static_cast<double>(n);
  const double v = static_cast<double>(dtype_size(p.precision.dtype)), g = static_cast<double>(dtype_size(p.precision.grad_dtype));
  const double optim = 8 + (p.precision.dtype == DType::kF32 ? 0 : 4);
  const int stage = p.zero.stage;
  const double per_param = v + (stage == 2 ? g / N : g) + (stage == 0 ? optim : optim / N);
  const double formula = per_param * static_cast<double>(r.params);
  const double measured = static_cast<double>(r.state_bytes + r.host_state_bytes);
  return {{"measure", "model_state_bytes"},
          {"stage", stage},
          {"device_bytes_model_state", r.state_bytes},
          {"host_bytes_optimizer_state", r.host_state_bytes},
          {"device_bytes_activations", r.activation_bytes},
          {"declared_buffer_bytes", r.bucket_bytes},
          {"formula_bytes_per_parameter", per_param},
          {"formula_bytes", formula},
          {"ratio", (measured - static_cast<double>(r.bucket_bytes)) / formula},
          {"ceiling", "model-state bytes per rank (device less activations, plus host-homed optimizer state) less "
                      "the declared buffers (gradient bucket slots, gathered-read staging), over ZeRO's per-parameter "
                      "count for the stage and dtypes"}};
}

Json state_of(const RankResult& r, int n, const Profile& p) {
  return p.zero.stage == 3 ? device_state_row(r) : state_row(r, n, p);
}

void print_row(const Json& row) {
  std::cout << "  " << row.dump() << "\n";
}

// Under mpirun: the N-process run, then rank 0 alone with the same per-rank batch.
Result<Json> mpi_figures(const DpOptions& o, bench::JsonLines& out, bool json) {
  STRATA_ASSIGN_OR_RETURN(auto world, make_mpi_world());
  const int n = world->size();
  STRATA_ASSIGN_OR_RETURN(auto runs, bench::together_then_alone<RankResult>(
                                         *world, [&](Communicator* dp) { return run_rank(o, dp); }));
  if (world->rank() != 0) return Json();
  const RankResult& together = runs.together;
  const RankResult& alone = runs.alone;
  const double scaling = static_cast<double>(n) * alone.step_s / runs.slowest_s;
  std::vector<Json> rows = {counters_row(together, n, o.profile), state_of(together, n, o.profile),
                       Json{{"measure", "weak_scaling"},
                            {"processes", n},
                            {"step_s", runs.slowest_s},
                            {"one_process_step_s", alone.step_s},
                            {"speedup", scaling},
                            {"ratio", scaling / n},
                            {"ceiling", "tokens/s of N processes over N x one process's (same per-rank batch)"}}};
  if (o.profile.zero.stage == 3) rows.push_back(prefetch_row(together, together, 0, o.steps, swapped(o.profile)));
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
    added = static_cast<double>(plain[0].grad_collectives) * o.delay_ms / 1e3;
    plain_s.push_back(plain[0].step_s);
    slow_s.push_back(slow[0].step_s);
    hidden.push_back(1.0 - (slow[0].step_s - plain[0].step_s) / added);
  }
  // Below 0 the delayed run grew by more than the delay (noise on a loaded machine): none hidden.
  const double share = std::max(0.0, bench::median(hidden));
  std::vector<Json> rows = {counters_row(first, o.ranks, o.profile), state_of(first, o.ranks, o.profile),
                       Json{{"measure", "hidden_communication"},
                            {"step_s", bench::median(plain_s)},
                            {"delayed_step_s", bench::median(slow_s)},
                            {"delay_added_s", added},
                            {"ratio_per_round", hidden},
                            {"ratio", share},
                            {"gradient_collectives_per_step", first.grad_collectives},
                            {"ceiling", "share of the delay added to every gradient collective that backward hides "
                                        "(1 = all; median of rounds)"}}};
  if (o.profile.zero.stage == 3) {
    // The link at which all of a step's copies take 1/throttle of its forward (timed with the
    // stream synchronised after it): every layer's gather no longer than its forward compute.
    STRATA_ASSIGN_OR_RETURN(auto timed, run_threads(o, o.ranks, 0, 0, true));
    const auto bandwidth = static_cast<std::uint64_t>(o.throttle * static_cast<double>(timed[0].to_device) / timed[0].forward_s);
    STRATA_ASSIGN_OR_RETURN(auto throttled, run_threads(o, o.ranks, 0, bandwidth));
    rows.push_back(prefetch_row(first, throttled[0], bandwidth, o.steps, swapped(o.profile)));
  }
  for (const Json& r : rows) json ? out.result(r) : print_row(r);
  Json summary{{"bytes_ratio", rows[0]["ratio"]}, {"state_ratio", rows[1]["ratio"]}, {"speedup", nullptr},
               {"hidden_share", share}, {"ratio", share},
               {"ceiling", "share of the added gradient all-reduce delay hidden under backward"}};
  if (o.profile.zero.stage == 3) {
    summary["throttled_stall_share"] = rows.back()["throttled_stall_share"];
    summary["on_demand_after_first_step"] = rows.back()["on_demand_after_first_step"];
    summary["ratio"] = rows.back()["ratio"];
    if (swapped(o.profile)) summary["swap_waits_after_first_step"] = rows.back()["swap_waits_after_first_step"];
    summary["ceiling"] = "share of the step waited for parameter gathers on a link as fast as forward needs (bar 0.10)";
  }
  return summary;
}

int run_dp_bench(const DpOptions& o, bool json) {
  const bool mpi = launched_by_mpi();
  bench::JsonLines out(o.name);
  const bool rank0 = !mpi || std::getenv("OMPI_COMM_WORLD_RANK") == nullptr ||
                     std::string(std::getenv("OMPI_COMM_WORLD_RANK")) == "0";
  const Json env = {{"model", o.profile.train.model},
                    {"micro_batch_per_rank", o.profile.train.micro_batch},
                    {"ranks", mpi ? Json(std::getenv("OMPI_COMM_WORLD_SIZE") ? std::atoi(std::getenv("OMPI_COMM_WORLD_SIZE")) : 0)
                                  : Json(o.ranks)},
                    {"ranks_are", mpi ? "MPI processes" : "LocalComm threads"},
                    {"reduce_bucket_size", o.profile.zero.reduce_bucket_size},
                    {"stage", o.profile.zero.stage},
                    {"dtype", std::string(dtype_name(o.profile.precision.dtype))},
                    {"optimizer", std::string(offload_target_name(o.profile.offload_optimizer.device))},
                    {"parameters", std::string(offload_target_name(o.profile.offload_param.device))},
                    {"param_buffers", swapped(o.profile) ? Json(std::to_string(o.profile.offload_param.buffer_count) + " x " +
                                                                format_bytes(o.profile.offload_param.buffer_size))
                                                         : Json(nullptr)},
                    {"max_in_cpu", swapped(o.profile) ? Json(o.profile.offload_param.max_in_cpu) : Json(nullptr)},
                    {"max_live_parameters", o.profile.zero.max_live_parameters},
                    {"prefetch_bucket_size", o.profile.zero.prefetch_bucket_size},
                    {"max_reuse_distance", o.profile.zero.max_reuse_distance},
                    {"overlap_step", o.profile.offload_optimizer.overlap_step}};
  if (rank0) json ? out.env(env) : (void)(std::cout << "strata bench " << o.name << " " << env.dump() << "\n");
  auto summary = mpi ? mpi_figures(o, out, json && rank0) : local_figures(o, out, json);
  if (!summary.ok()) {
    std::cerr << "strata bench " << o.name << ": " << summary.status() << "\n";
    return kExitFailed;
  }
  if (rank0) json ? out.summary(*summary) : (void)(std::cout << "summary " << summary->dump() << "\n");
  return kExitOk;
}

// `strata bench dp` and `strata bench zero3`: the same options, stage 0 or 3 by default.
int bench_data_parallel(int argc, char** argv, const std::string& name, int default_stage) {
  cxxopts::Options opts("strata bench " + name, "data-parallel training (ZeRO stage 0 to 3) against its ceilings");
  opts.add_options()("model", "model preset", cxxopts::value<std::string>()->default_value("default"))(
      "micro-batch", "sequences per micro-batch and rank", cxxopts::value<int>()->default_value("16"))(
      "ranks", "LocalComm ranks (threads) when not under mpirun", cxxopts::value<int>()->default_value("2"))(
      "steps", "timed steps per run", cxxopts::value<int>()->default_value("3"))(
      "rounds", "alternating rounds of the plain and the delayed run", cxxopts::value<int>()->default_value("3"))(
      "bucket-size", "zero.reduce_bucket_size", cxxopts::value<std::string>()->default_value("2MiB"))(
      "stage", "ZeRO stage: 0 to 3", cxxopts::value<int>()->default_value(std::to_string(default_stage)))(
      "dtype", "weights' dtype: fp32 or bf16 (gradients alike; optimizer state fp32)",
      cxxopts::value<std::string>()->default_value("fp32"))(
      "optimizer", "optimizer state: device, cpu (pinned host memory, CPU Adam) or nvme (swap under --nvme-path)",
      cxxopts::value<std::string>()->default_value("device"))(
      "params", "stage 3: parameter shards on the device, cpu (the optimizer's pinned weights) or nvme (a swap "
      "under --nvme-path); both need --optimizer cpu or nvme",
      cxxopts::value<std::string>()->default_value("device"))(
      "optimizer-buffer-size", "--optimizer cpu or nvme: offload.optimizer.buffer_size (the state chunk; with --params "
      "nvme its values form one parameter block)", cxxopts::value<std::string>()->default_value("64MiB"))(
      "nvme-path", "the swap directory of --optimizer nvme and --params nvme", cxxopts::value<std::string>()->default_value("/tmp"))(
      "param-buffers", "--params nvme: offload.param.buffer_count", cxxopts::value<int>()->default_value("5"))(
      "param-buffer-size", "--params nvme: offload.param.buffer_size", cxxopts::value<std::string>()->default_value("64MiB"))(
      "max-in-cpu", "--params nvme: offload.param.max_in_cpu", cxxopts::value<std::string>()->default_value("1GiB"))(
      "max-live", "stage 3: zero.max_live_parameters", cxxopts::value<std::uint64_t>()->default_value("1000000000"))(
      "prefetch", "stage 3: zero.prefetch_bucket_size", cxxopts::value<std::string>()->default_value("50MiB"))(
      "reuse-distance", "stage 3: zero.max_reuse_distance (elements)",
      cxxopts::value<std::uint64_t>()->default_value("1000000000"))(
      "no-overlap-step", "--optimizer cpu: run the update in the step instead of under the next forward")(
      "persistence", "stage 3: zero.param_persistence_threshold (elements)",
      cxxopts::value<std::uint64_t>()->default_value("100000"))(
      "throttle", "stage 3: the throttled link carries a step's copies in 1/this of its forward",
      cxxopts::value<double>()->default_value("1"))(
      "delay-ms", "delay added to every gradient collective for the hidden-communication figure",
      cxxopts::value<double>()->default_value("20"))(
      "json", "print JSON Lines instead of tables; see 'strata help bench'")("h,help", "this help");
  cxxopts::ParseResult a;
  try {
    a = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata bench " << name << ": " << e.what() << "\n";
    return kExitUsage;
  }
  if (a.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  DpOptions o;
  o.name = name;
  auto base = Profile::from_toml_string("", "bench " + name);
  auto bucket = parse_bytes(a["bucket-size"].as<std::string>());
  auto prefetch = parse_bytes(a["prefetch"].as<std::string>());
  auto param_buffer = parse_bytes(a["param-buffer-size"].as<std::string>());
  auto optimizer_buffer = parse_bytes(a["optimizer-buffer-size"].as<std::string>());
  auto max_in_cpu = parse_bytes(a["max-in-cpu"].as<std::string>());
  if (!a.unmatched().empty() || !base.ok() || !bucket.ok() || !prefetch.ok() || !param_buffer.ok() || !max_in_cpu.ok() || !optimizer_buffer.ok() ||
      !model_preset(a["model"].as<std::string>(), &base->train.dims)) {
    std::cerr << "strata bench " << name << ": bad arguments (see --help)\n";
    return kExitUsage;
  }
  o.profile = *base;
  o.profile.train.model = a["model"].as<std::string>();
  o.profile.train.micro_batch = a["micro-batch"].as<int>();
  o.profile.zero.reduce_bucket_size = *bucket;
  o.profile.zero.stage = a["stage"].as<int>();
  o.profile.zero.prefetch_bucket_size = *prefetch;
  o.profile.zero.max_live_parameters = a["max-live"].as<std::uint64_t>();
  o.profile.zero.param_persistence_threshold = a["persistence"].as<std::uint64_t>();
  o.profile.zero.max_reuse_distance = a["reuse-distance"].as<std::uint64_t>();
  o.profile.offload_optimizer.overlap_step = a.count("no-overlap-step") == 0;
  const std::string dtype = a["dtype"].as<std::string>(), optimizer = a["optimizer"].as<std::string>();
  const std::string params = a["params"].as<std::string>();
  if (o.profile.zero.stage < 0 || o.profile.zero.stage > 3 || (dtype != "fp32" && dtype != "bf16") ||
      (optimizer != "device" && optimizer != "cpu" && optimizer != "nvme") ||
      (params != "device" && params != "cpu" && params != "nvme") || (params != "device" && o.profile.zero.stage != 3)) {
    std::cerr << "strata bench " << name << ": --stage is 0 to 3; --dtype fp32 or bf16; --optimizer device, cpu or nvme; "
              << "--params device, cpu or nvme (stage 3)\n";
    return kExitUsage;
  }
  o.profile.precision.dtype = o.profile.precision.grad_dtype = dtype == "bf16" ? DType::kBF16 : DType::kF32;
  const std::string swap = a["nvme-path"].as<std::string>();
  if (optimizer != "device") {
    o.profile.offload_optimizer.device = optimizer == "cpu" ? OffloadTarget::kCpu : OffloadTarget::kNvme;
    if (optimizer == "nvme") o.profile.offload_optimizer.nvme_path = {swap};
    o.profile.offload_optimizer.buffer_size = *optimizer_buffer;
    o.profile.memory.host_budget = 16ULL << 30;
  }
  if (params != "device") o.profile.offload_param.device = params == "cpu" ? OffloadTarget::kCpu : OffloadTarget::kNvme;
  if (params == "nvme") {
    o.profile.offload_param.nvme_path = {swap};
    o.profile.offload_param.buffer_count = a["param-buffers"].as<int>();
    o.profile.offload_param.buffer_size = *param_buffer;
    o.profile.offload_param.max_in_cpu = *max_in_cpu;
  }
  o.profile.memory.device_budget = 4ULL << 30;
  o.ranks = a["ranks"].as<int>();
  o.steps = std::max(1, a["steps"].as<int>());
  o.rounds = std::max(1, a["rounds"].as<int>());
  o.delay_ms = a["delay-ms"].as<double>();
  o.throttle = std::max(1.0, a["throttle"].as<double>());
  return run_dp_bench(o, a.count("json") > 0);
}

int bench_dp(int argc, char** argv) { return bench_data_parallel(argc, argv, "dp", 0); }
int bench_zero3(int argc, char** argv) { return bench_data_parallel(argc, argv, "zero3", 3); }

STRATA_COMMAND("bench dp", "data-parallel step: bytes and state per rank, hidden communication, weak scaling", bench_dp);
STRATA_COMMAND("bench zero3", "ZeRO-3 step: traffic, device model state, prefetch stalls on a throttled link", bench_zero3);

}  // namespace
}  // namespace strata::cli
