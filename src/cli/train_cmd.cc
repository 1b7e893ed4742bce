// `strata train`: trains the profile's GPT-2 on one rank and reports progress.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cxxopts.hpp>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>
#include <vector>
#include <sstream>
#include <string>

#include "cli/command.h"
#include "cli/train_ranks.h"
#include "strata/checkpoint.h"
#include "strata/data.h"
#include "strata/device.h"
#include "strata/engine.h"
#include "strata/log.h"
#include "strata/profile.h"
#include "strata/trainer.h"
#include "strata/units.h"

namespace strata::cli {
namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string clock_time(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const auto t = static_cast<long>(s + 0.5);
  char buf[32];
  if (t >= 3600) {
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  }
  return buf;
}

// A JSON number, or null for inf/NaN (which JSON cannot spell).
std::string json_num(double v) {
  if (!std::isfinite(v)) return "null";
  return fmt("%.9g", v);
}

// The optimizer's last update pass as JSON, or empty when it has none.
std::string pass_json(const std::optional<UpdatePassStats>& pass) {
  if (!pass.has_value()) return {};
  return "{\"passes\":" + std::to_string(pass->passes) + ",\"seconds\":" + json_num(pass->seconds) +
         ",\"nvme_bytes\":" + std::to_string(pass->nvme_bytes) +
         ",\"nvme_bytes_per_s\":" + json_num(pass->nvme_bytes_per_s()) + "}";
}

// One --log-json line; `tiers` (the optimizer's cumulative tier statistics as JSON, or empty
// when its state is not offloaded) becomes the "tiers" member, `param_tiers` (the parameter
// swap's) "param_tiers" and `pass` (the last update pass that ended) "pass".
std::string json_line(const StepStats& s, const std::string& tiers, const std::string& param_tiers,
                      const std::string& pass) {
  std::ostringstream o;
  o << "{\"step\":" << s.step << ",\"loss\":" << json_num(s.loss) << ",\"grad_norm\":" << json_num(s.grad_norm)
    << ",\"lr\":" << json_num(s.lr) << ",\"loss_scale\":" << json_num(s.loss_scale)
    << ",\"tokens_per_s\":" << json_num(s.tokens_per_s) << ",\"skipped\":" << (s.skipped ? "true" : "false");
  if (!tiers.empty()) o << ",\"tiers\":" << tiers;
  if (!param_tiers.empty()) o << ",\"param_tiers\":" << param_tiers;
  if (!pass.empty()) o << ",\"pass\":" << pass;
  o << "}";
  return o.str();
}

std::string progress_bar(std::int64_t step, std::int64_t total, int width) {
  const int fill = total > 0 ? static_cast<int>(static_cast<double>(width) * static_cast<double>(step) / static_cast<double>(total)) : width;
  return "[" + std::string(static_cast<std::size_t>(fill), '#') + std::string(static_cast<std::size_t>(width - fill), '.') + "]";
}

cxxopts::Options train_options() {
  cxxopts::Options opts("strata train", "Train the profile's GPT-2 on the ranks of the profile's grid.");
  opts.add_options()
      ("profile", "offload profile (*.toml or *.json); default: the built-in defaults", cxxopts::value<std::string>())
      ("data", "token data: a text file (byte tokens) or a *.u16 file; default: train.data, else the built-in text",
       cxxopts::value<std::string>())
      ("steps", "optimizer steps (overrides train.steps)", cxxopts::value<long>())
      ("log-json", "write one JSON object per step to FILE", cxxopts::value<std::string>())
      ("export-init", "write the initial weights (safetensors) before the first step", cxxopts::value<std::string>())
      ("export", "write the trained weights (safetensors) at the end", cxxopts::value<std::string>())
      ("import", "start from the weights of a safetensors file", cxxopts::value<std::string>())
      ("checkpoint-dir", "save checkpoints in DIR (every train.checkpoint_every steps and at the end)",
       cxxopts::value<std::string>())
      ("resume", "continue from a checkpoint: a checkpoint directory or a --checkpoint-dir holding them",
       cxxopts::value<std::string>())
      ("export-dtype", "dtype of exported weights: fp32, bf16 or fp16", cxxopts::value<std::string>()->default_value("fp32"))
      ("device", "device backend: host or cuda", cxxopts::value<std::string>()->default_value("host"))
      ("ranks", "run N ranks as threads of this process (LocalComm); under mpirun each process is one rank",
       cxxopts::value<int>()->default_value("1"))
      ("h,help", "show this help");
  return opts;
}

// Prints "strata train: [rank R: ][what: ]status" (the rank in a job of several) and gives
// back `code`.
int fail(int code, const Status& st, const std::string& what = {}) {
  const int rank = log_rank();
  std::cerr << "strata train: " << (rank >= 0 ? "rank " + std::to_string(rank) + ": " : "")
            << (what.empty() ? "" : what + ": ") << st << "\n";
  return code;
}

// The profile, with the options that override its keys applied before the cross-key checks,
// so that those checks see what the run will use.
Result<Profile> load_profile(const cxxopts::ParseResult& args) {
  const ProfileEdit overrides = [&args](Profile& p) -> Status {
    if (args.count("steps")) {
      const long steps = args["steps"].as<long>();
      if (steps < 0 || steps > 1000000000L) {
        return invalid_argument("--steps " + std::to_string(steps) + " must be between 0 and 1000000000");
      }
      p.train.steps = static_cast<int>(steps);
    }
    if (args.count("data")) p.train.data = args["data"].as<std::string>();
    if (args.count("checkpoint-dir")) p.train.checkpoint_dir = args["checkpoint-dir"].as<std::string>();
    return Status::OK();
  };
  return args.count("profile") ? Profile::load(args["profile"].as<std::string>(), overrides)
                               : Profile::from_toml_string("", "built-in defaults", overrides);
}

// What the ranks of a run share: its options, profile, communicators, data and log file.
struct TrainRun {
  cxxopts::ParseResult args;
  Profile profile;
  TrainWorld world;
  DType export_dtype = DType::kF32;
  std::optional<TokenDataset> data;
  std::ofstream log;
  bool tty = false;
};

// One rank of the run: its engine (device and trainer). Only global rank 0 prints and logs;
// every rank takes part in checkpoints, imports and exports (the Engine's collectives), whose
// files one rank writes (with ZeRO stages 1 to 3 each rank its shard of a checkpoint).
struct Rank {
  TrainRun& run;
  Engine& engine;
  Device& device;
  Trainer& t;
  bool prints;
};

// What the loop measured, for the summary line.
struct RunTotals {
  std::int64_t start = 0;
  double elapsed = 0, first_loss = NAN, last_loss = NAN;
  std::uint64_t tokens = 0;
};

// Profile, ranks, export dtype, data and log file; on failure, the exit code.
int open_run(TrainRun& run) {
  Result<Profile> loaded = load_profile(run.args);
  if (!loaded.ok()) return fail(kExitUsage, loaded.status());
  run.profile = *loaded;
  // Under MPI every process fails the same way; only rank 0 says so.
  auto world = open_train_world(run.profile, run.args["ranks"].as<int>());
  if (!world.ok()) {
    const bool usage = world.status().code() == StatusCode::kInvalidArgument ||
                       world.status().code() == StatusCode::kUnavailable;
    if (launched_by_mpi() && launcher_rank() != 0) return usage ? kExitUsage : kExitFailed;
    return fail(usage ? kExitUsage : kExitFailed, world.status());
  }
  run.world = std::move(*world);
  if (!parse_dtype(run.args["export-dtype"].as<std::string>(), &run.export_dtype)) {
    std::cerr << "strata train: --export-dtype '" << run.args["export-dtype"].as<std::string>()
              << "' is not one of fp32, bf16, fp16\n";
    return kExitUsage;
  }
  const std::string& data_path = run.profile.train.data;
  Result<TokenDataset> data = data_path.empty() ? TokenDataset::default_text() : TokenDataset::open(data_path);
  if (!data.ok()) return fail(kExitUsage, data.status());
  if (Status st = data->check(run.profile.train.dims.vocab, run.profile.train.dims.seq_len); !st.ok()) {
    return fail(kExitUsage, st);
  }
  run.data.emplace(std::move(*data));
  if (run.args.count("log-json") && run.world.prints()) {
    const std::string path = run.args["log-json"].as<std::string>();
    run.log.open(path, std::ios::out | std::ios::trunc);
    if (!run.log) {
      std::cerr << "strata train: cannot open --log-json file '" << path << "'\n";
      return kExitUsage;
    }
  }
  run.tty = ::isatty(STDOUT_FILENO) == 1;
  return kExitOk;
}

void print_header(const Rank& r) {
  const TrainRun& run = r.run;
  Trainer& t = r.t;
  const Profile& profile = run.profile;
  const TrainConfig& tc = profile.train;
  const ModelDims& d = tc.dims;
  std::cout << "model    GPT-2 '" << tc.model << "': " << d.n_layer << " layers, " << d.n_head << " heads, n_embd "
            << d.n_embd << ", vocab " << d.vocab << ", seq_len " << d.seq_len << " ("
            << fmt("%.2f", static_cast<double>(d.parameter_count()) / 1e6) << "M parameters, "
            << dtype_name(profile.precision.dtype) << (profile.activation.checkpointing ? ", checkpointed" : "") << ")\n"
            << "device   " << r.device.info().name
            << (run.world.world_size > 1 ? " (each of " + std::to_string(run.world.world_size) + " ranks)" : "") << "\n"
            << "data     " << run.data->name() << " (" << run.data->size() << " tokens)\n"
            << "batch    " << (profile.parallel.dp > 1 ? std::to_string(profile.parallel.dp) + " x " : "")
            << tc.micro_batch << " x " << tc.grad_accum << " x " << d.seq_len << " = "
            << t.tokens_per_step() << " tokens per step; " << t.optimizer().name() << " " << profile.optimizer.type
            << " lr " << profile.optimizer.lr << ", " << tc.steps << " steps\n"
            << "memory   " << format_bytes_human(static_cast<double>(r.device.stats().used)) << " of "
            << format_bytes_human(static_cast<double>(r.device.info().capacity))
            << " device memory (weights, gradients, optimizer state, activations of "
            << format_bytes_human(static_cast<double>(Gpt::activation_bytes(t.model().config(), tc.micro_batch))) << ")\n";
}

// --import, --export-init and --resume, in that order; every rank imports and resumes.
int prepare_weights(Rank& r) {
  const auto& args = r.run.args;
  Trainer& t = r.t;
  if (args.count("import")) {
    if (Status st = r.engine.import_weights(args["import"].as<std::string>()); !st.ok()) return fail(kExitUsage, st, "--import");
    if (r.prints) std::cout << "weights  " << args["import"].as<std::string>() << "\n";
  }
  if (args.count("export-init")) {
    if (Status st = r.engine.export_weights(args["export-init"].as<std::string>(), r.run.export_dtype); !st.ok()) {
      return fail(kExitFailed, st, "--export-init");
    }
  }
  if (args.count("resume")) {
    auto from = r.engine.load_checkpoint(args["resume"].as<std::string>());
    if (!from.ok()) return fail(kExitUsage, from.status(), "--resume");
    if (r.prints) std::cout << "resumed  " << *from << " at step " << t.steps_done() << "\n";
  }
  return kExitOk;
}

void print_progress(const TrainRun& run, const StepStats& s, const RunTotals& totals, std::int64_t done_in_run) {
  const int steps = run.profile.train.steps;
  if (run.tty) {
    const double eta = totals.elapsed / static_cast<double>(done_in_run) * static_cast<double>(steps - s.step);
    const double tps = totals.elapsed > 0 ? static_cast<double>(totals.tokens) / totals.elapsed : 0;
    std::cout << "\r" << progress_bar(s.step, steps, 30) << " step " << s.step << "/" << steps << "  loss "
              << fmt("%.4f", s.loss) << "  " << fmt("%.0f", tps) << " tok/s  ETA " << clock_time(eta)
              << (s.skipped ? "  (skipped)" : "") << "   " << std::flush;
  } else {
    std::cout << "step " << s.step << "/" << steps << " loss " << fmt("%.4f", s.loss) << " grad_norm "
              << fmt("%.4g", s.grad_norm) << " lr " << fmt("%.3g", s.lr) << " loss_scale " << fmt("%.6g", s.loss_scale)
              << " " << fmt("%.0f", s.tokens_per_s) << " tok/s" << (s.skipped ? " skipped" : "")
              << std::endl;  // flushed: progress shows through pipes
  }
}

// The log line and the checkpoint due after a step; on failure, the exit code.
int after_step(Rank& r, const StepStats& s, bool last) {
  TrainRun& run = r.run;
  Trainer& t = r.t;
  if (r.prints && run.log.is_open()) {
    const auto tiers = t.optimizer().tier_stats();
    const auto param_tiers = t.parameter_tier_stats();  // parameters on NVMe
    run.log << json_line(s, tiers.has_value() ? tiers->to_json() : std::string(),
                         param_tiers.has_value() ? param_tiers->to_json() : std::string(),
                         pass_json(t.optimizer().last_pass()))
            << "\n";
    run.log.flush();
    if (!run.log) {
      std::cerr << "strata train: writing the --log-json file failed\n";
      return kExitFailed;
    }
  }
  const TrainConfig& tc = run.profile.train;
  if (!tc.checkpoint_dir.empty() && checkpoint_due(tc, t.steps_done(), last)) {
    auto saved = r.engine.save_checkpoint(tc.checkpoint_dir);
    if (!saved.ok()) {
      if (run.tty && r.prints) std::cout << "\n";
      return fail(kExitFailed, saved.status(), "checkpoint after step " + std::to_string(t.steps_done()));
    }
    if (!run.tty && r.prints) std::cout << "checkpoint " << *saved << "\n";
  }
  return kExitOk;
}

// Steps until train.steps (counted from the start of training, so a resumed run finishes the
// same step), then waits for the last update (it may run in the background).
int run_steps(Rank& r, RunTotals& totals) {
  TrainRun& run = r.run;
  Trainer& t = r.t;
  const int steps = run.profile.train.steps;
  totals.start = t.steps_done();
  for (std::int64_t i = totals.start; i < steps; ++i) {
    auto s = t.train_step(*run.data);
    if (!s.ok()) {
      if (run.tty && r.prints) std::cout << "\n";
      return fail(kExitFailed, s.status(), "step " + std::to_string(i + 1));
    }
    totals.elapsed += s->seconds;
    totals.tokens += s->tokens;
    if (i == totals.start) totals.first_loss = s->loss;
    totals.last_loss = s->loss;
    if (r.prints) print_progress(run, *s, totals, i - totals.start + 1);
    if (int code = after_step(r, *s, i + 1 == steps); code != kExitOk) return code;
  }
  if (run.tty && r.prints) std::cout << "\n";
  const auto t0 = std::chrono::steady_clock::now();
  if (Status st = t.optimizer().synchronize(); !st.ok()) {
    return fail(kExitFailed, st, "step " + std::to_string(t.steps_done()));
  }
  totals.elapsed += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return kExitOk;
}

// Each rank's device peak: its activations, the model state against ZeRO's formula for the
// stage and homes (Trainer::DeviceMemory) and the buffers; one line per rank, printed by
// global rank 0. A collective of the run's ranks (`world` null: one rank).
void print_memory(const Rank& r, Communicator* world) {
  constexpr std::size_t kFields = 10;
  const Trainer::DeviceMemory d = r.t.device_memory();
  const GptConfig& c = r.t.model().config();
  const std::size_t n = world == nullptr ? 1 : static_cast<std::size_t>(world->size());
  const std::size_t me = world == nullptr ? 0 : static_cast<std::size_t>(world->rank());
  const std::uint64_t buffers = d.buffer_bytes() - d.beyond_share();
  std::vector<double> all(kFields * n, 0.0);
  const double mine[kFields] = {static_cast<double>(r.t.dp_rank()), static_cast<double>(c.tp_rank),
                                static_cast<double>(c.pp_rank),     static_cast<double>(d.peak),
                                static_cast<double>(d.activations), static_cast<double>(d.model_state),
                                d.formula_bytes(),                  static_cast<double>(d.elements),
                                static_cast<double>(buffers),       static_cast<double>(d.parameters.gathered)};
  std::copy(mine, mine + kFields, all.begin() + static_cast<std::ptrdiff_t>(me * kFields));
  if (world != nullptr && !world->all_reduce_host(all, ReduceOp::kSum).ok()) return;  // a failed rank says why
  if (!r.prints) return;
  const auto mib = [](double b) { return fmt("%.2f", b / (1 << 20)); };
  std::cout << "memory   device peak per rank (MiB) = activations + model state + buffers; the model state against "
            << "ZeRO stage " << r.t.zero_stage() << "'s " << fmt("%.2f", d.state_per_element)
            << " B per parameter for these homes and dtypes\n";
  for (std::size_t i = 0; i < n; ++i) {
    const double* f = all.data() + i * kFields;
    std::cout << "  rank " << i << " (dp " << fmt("%.0f", f[0]) << " tp " << fmt("%.0f", f[1]) << " pp "
              << fmt("%.0f", f[2]) << "): " << mib(f[3]) << " = " << mib(f[4]) << " + " << mib(f[5]) << " (formula "
              << mib(f[6]) << " for " << fmt("%.0f", f[7]) << " parameters) + "
              << mib(f[8]) << " (gather window " << mib(f[9]) << "); accounted " << fmt("%.3f", (f[4] + f[5] + f[8]) / f[3])
              << "\n";
  }
}

// The summary line, the tier statistics and --export.
int finish_run(Rank& r, const RunTotals& totals, int code) {
  TrainRun& run = r.run;
  Trainer& t = r.t;
  if (code == kExitOk && run.args.count("export") && !r.prints) {
    return r.engine.export_weights(run.args["export"].as<std::string>(), run.export_dtype).ok() ? code : kExitFailed;
  }
  if (!r.prints) return code;
  const std::int64_t done = t.steps_done() - totals.start;
  if (done > 0 && code == kExitOk) {
    std::cout << "done     " << done << " steps in " << clock_time(totals.elapsed) << " ("
              << fmt("%.3f", totals.elapsed / static_cast<double>(done)) << " s/step, "
              << fmt("%.0f", static_cast<double>(totals.tokens) / totals.elapsed) << " tok/s); loss "
              << fmt("%.4f", totals.first_loss) << " -> " << fmt("%.4f", totals.last_loss) << "\n";
  }
  if (auto tiers = t.optimizer().tier_stats(); tiers.has_value()) std::cout << "tiers    " << tiers->to_json() << "\n";
  if (auto pass = t.optimizer().last_pass(); pass.has_value()) {
    std::cout << "pass     the last update pass: " << fmt("%.3f", pass->seconds) << " s, "
              << format_bytes_human(static_cast<double>(pass->nvme_bytes)) << " of NVMe traffic ("
              << fmt("%.2f", pass->nvme_bytes_per_s() / 1e9) << " GB/s)\n";
  }
  if (code == kExitOk && run.args.count("export")) {
    if (Status st = r.engine.export_weights(run.args["export"].as<std::string>(), run.export_dtype); !st.ok()) {
      return fail(kExitFailed, st, "--export");
    }
    std::cout << "exported " << run.args["export"].as<std::string>() << "\n";
  }
  return code;
}

// Runs local rank `i` of the run to its end; a rank that fails aborts its group, so that the
// others stop at their next collective instead of waiting for it.
int run_rank(TrainRun& run, std::size_t i) {
  Communicator* comm = run.world.ranks[i].get();
  const bool group = run.world.world_size > 1;
  if (group && !run.world.mpi) set_log_thread_rank(comm->rank());
  auto fail_rank = [&](int code, const Status& st) {
    if (group) comm->abort(st);
    return code;
  };
  auto engine = Engine::create(run.profile, group ? comm : nullptr, run.args["device"].as<std::string>());
  if (!engine.ok()) {
    // What the machine lacks (memory, disk space, working I/O) or a bug fails the run; the
    // rest is the profile's or the command line's to fix.
    const StatusCode c = engine.status().code();
    const bool machine = c == StatusCode::kOutOfMemory || c == StatusCode::kOutOfSpace || c == StatusCode::kIoError ||
                         c == StatusCode::kDataCorruption || c == StatusCode::kInternal;
    const int code = fail(machine ? kExitFailed : kExitUsage, engine.status());
    return fail_rank(code, engine.status());
  }
  Rank r{run, **engine, (*engine)->device(), (*engine)->trainer(), comm->rank() == 0};
  if (r.prints) print_header(r);
  if (int code = prepare_weights(r); code != kExitOk) {
    return fail_rank(code, invalid_argument("its --import, --export-init or --resume failed (its message says why)"));
  }
  RunTotals totals;
  const int stepped = run_steps(r, totals);
  if (stepped == kExitOk) print_memory(r, group ? comm : nullptr);
  const int code = finish_run(r, totals, stepped);
  if (code != kExitOk) return fail_rank(code, unavailable("it stopped training (its message says why)"));
  return code;
}

int train(int argc, char** argv) {
  cxxopts::Options opts = train_options();
  TrainRun run;
  try {
    run.args = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata train: " << e.what() << "\n" << opts.help();
    return kExitUsage;
  }
  if (run.args.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  if (!run.args.unmatched().empty()) {
    std::cerr << "strata train: unexpected argument '" << run.args.unmatched().front() << "'\n" << opts.help();
    return kExitUsage;
  }
  if (int code = open_run(run); code != kExitOk) return code;
  const std::size_t ranks = run.world.ranks.size();
  if (ranks == 1) return run_rank(run, 0);
  // Ranks as threads: each its own device and trainer; the worst exit code is the run's.
  std::vector<int> codes(ranks, kExitOk);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < ranks; ++i) threads.emplace_back([&, i] { codes[i] = run_rank(run, i); });
  for (auto& th : threads) th.join();
  return *std::max_element(codes.begin(), codes.end());
}

STRATA_COMMAND("train", "train the profile's GPT-2 on one rank or a dp x tp x pp grid (progress, JSON log, checkpoints, weights)",
               train);

}  // namespace
}  // namespace strata::cli
