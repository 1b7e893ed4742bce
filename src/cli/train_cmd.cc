// `strata train`: trains the profile's GPT-2 on one rank and reports progress.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cxxopts.hpp>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>

#include "cli/command.h"
#include "cli/train_ranks.h"
#include "strata/checkpoint.h"
#include "strata/data.h"
#include "strata/device.h"
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

// One --log-json line; `tiers` (the optimizer's cumulative tier statistics as JSON, or empty
// when its state is not offloaded) becomes the "tiers" member.
std::string json_line(const StepStats& s, const std::string& tiers) {
  std::ostringstream o;
  o << "{\"step\":" << s.step << ",\"loss\":" << json_num(s.loss) << ",\"grad_norm\":" << json_num(s.grad_norm)
    << ",\"lr\":" << json_num(s.lr) << ",\"loss_scale\":" << json_num(s.loss_scale)
    << ",\"tokens_per_s\":" << json_num(s.tokens_per_s) << ",\"skipped\":" << (s.skipped ? "true" : "false");
  if (!tiers.empty()) o << ",\"tiers\":" << tiers;
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

// Prints "strata train: [what: ]status" and gives back `code`.
int fail(int code, const Status& st, const std::string& what = {}) {
  std::cerr << "strata train: " << (what.empty() ? "" : what + ": ") << st << "\n";
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

// Everything a run holds besides its trainer.
struct TrainRun {
  cxxopts::ParseResult args;
  Profile profile;
  TrainWorld world;
  DType export_dtype = DType::kF32;
  std::optional<TokenDataset> data;
  std::unique_ptr<Device> device;
  std::ofstream log;
  bool tty = false;
};

// What the loop measured, for the summary line.
struct RunTotals {
  std::int64_t start = 0;
  double elapsed = 0, first_loss = NAN, last_loss = NAN;
  std::uint64_t tokens = 0;
};

// Profile, ranks, export dtype, data, device and log file; on failure, the exit code.
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
  auto device = create_device(run.args["device"].as<std::string>(), device_options(run.profile.memory));
  if (!device.ok()) {
    return fail(device.status().code() == StatusCode::kInvalidArgument ? kExitUsage : kExitFailed, device.status());
  }
  run.device = std::move(*device);
  if (run.args.count("log-json")) {
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

void print_header(const TrainRun& run, Trainer& t) {
  const Profile& profile = run.profile;
  const TrainConfig& tc = profile.train;
  const ModelDims& d = tc.dims;
  std::cout << "model    GPT-2 '" << tc.model << "': " << d.n_layer << " layers, " << d.n_head << " heads, n_embd "
            << d.n_embd << ", vocab " << d.vocab << ", seq_len " << d.seq_len << " ("
            << fmt("%.2f", static_cast<double>(d.parameter_count()) / 1e6) << "M parameters, "
            << dtype_name(profile.precision.dtype) << (profile.activation.checkpointing ? ", checkpointed" : "") << ")\n"
            << "device   " << run.device->info().name << "\n"
            << "data     " << run.data->name() << " (" << run.data->size() << " tokens)\n"
            << "batch    " << tc.micro_batch << " x " << tc.grad_accum << " x " << d.seq_len << " = "
            << t.tokens_per_step() << " tokens per step; " << t.optimizer().name() << " " << profile.optimizer.type
            << " lr " << profile.optimizer.lr << ", " << tc.steps << " steps\n"
            << "memory   " << format_bytes_human(static_cast<double>(run.device->stats().used)) << " of "
            << format_bytes_human(static_cast<double>(run.device->info().capacity))
            << " device memory (weights, gradients, optimizer state, activations of "
            << format_bytes_human(static_cast<double>(Gpt::activation_bytes(t.model().config(), tc.micro_batch))) << ")\n";
}

// --import, --export-init and --resume, in that order.
int prepare_weights(TrainRun& run, Trainer& t) {
  const auto& args = run.args;
  if (args.count("import")) {
    if (Status st = t.import_weights(args["import"].as<std::string>()); !st.ok()) return fail(kExitUsage, st, "--import");
    std::cout << "weights  " << args["import"].as<std::string>() << "\n";
  }
  if (args.count("export-init")) {
    if (Status st = t.export_weights(args["export-init"].as<std::string>(), run.export_dtype); !st.ok()) {
      return fail(kExitFailed, st, "--export-init");
    }
  }
  if (args.count("resume")) {
    auto from = load_checkpoint(t, args["resume"].as<std::string>());
    if (!from.ok()) return fail(kExitUsage, from.status(), "--resume");
    std::cout << "resumed  " << *from << " at step " << t.steps_done() << "\n";
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
int after_step(TrainRun& run, Trainer& t, const StepStats& s, bool last) {
  if (run.log.is_open()) {
    const auto tiers = t.optimizer().tier_stats();
    run.log << json_line(s, tiers.has_value() ? tiers->to_json() : std::string()) << "\n";
    run.log.flush();
    if (!run.log) {
      std::cerr << "strata train: writing the --log-json file failed\n";
      return kExitFailed;
    }
  }
  const TrainConfig& tc = run.profile.train;
  if (!tc.checkpoint_dir.empty() && checkpoint_due(tc, t.steps_done(), last)) {
    auto saved = save_checkpoint(t, tc.checkpoint_dir);
    if (!saved.ok()) {
      if (run.tty) std::cout << "\n";
      return fail(kExitFailed, saved.status(), "checkpoint after step " + std::to_string(t.steps_done()));
    }
    if (!run.tty) std::cout << "checkpoint " << *saved << "\n";
  }
  return kExitOk;
}

// Steps until train.steps (counted from the start of training, so a resumed run finishes the
// same step), then waits for the last update (it may run in the background).
int run_steps(TrainRun& run, Trainer& t, RunTotals& totals) {
  const int steps = run.profile.train.steps;
  totals.start = t.steps_done();
  for (std::int64_t i = totals.start; i < steps; ++i) {
    auto s = t.train_step(*run.data);
    if (!s.ok()) {
      if (run.tty) std::cout << "\n";
      return fail(kExitFailed, s.status(), "step " + std::to_string(i + 1));
    }
    totals.elapsed += s->seconds;
    totals.tokens += s->tokens;
    if (i == totals.start) totals.first_loss = s->loss;
    totals.last_loss = s->loss;
    print_progress(run, *s, totals, i - totals.start + 1);
    if (int code = after_step(run, t, *s, i + 1 == steps); code != kExitOk) return code;
  }
  if (run.tty) std::cout << "\n";
  const auto t0 = std::chrono::steady_clock::now();
  if (Status st = t.optimizer().synchronize(); !st.ok()) {
    return fail(kExitFailed, st, "step " + std::to_string(t.steps_done()));
  }
  totals.elapsed += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return kExitOk;
}

// The summary line, the tier statistics and --export.
int finish_run(TrainRun& run, Trainer& t, const RunTotals& totals, int code) {
  const std::int64_t done = t.steps_done() - totals.start;
  if (done > 0 && code == kExitOk) {
    std::cout << "done     " << done << " steps in " << clock_time(totals.elapsed) << " ("
              << fmt("%.3f", totals.elapsed / static_cast<double>(done)) << " s/step, "
              << fmt("%.0f", static_cast<double>(totals.tokens) / totals.elapsed) << " tok/s); loss "
              << fmt("%.4f", totals.first_loss) << " -> " << fmt("%.4f", totals.last_loss) << "\n";
  }
  if (auto tiers = t.optimizer().tier_stats(); tiers.has_value()) std::cout << "tiers    " << tiers->to_json() << "\n";
  if (code == kExitOk && run.args.count("export")) {
    if (Status st = t.export_weights(run.args["export"].as<std::string>(), run.export_dtype); !st.ok()) {
      return fail(kExitFailed, st, "--export");
    }
    std::cout << "exported " << run.args["export"].as<std::string>() << "\n";
  }
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
  auto trainer = Trainer::create(run.profile, *run.device);
  if (!trainer.ok()) {
    const StatusCode c = trainer.status().code();
    return fail(c == StatusCode::kOutOfMemory || c == StatusCode::kInternal ? kExitFailed : kExitUsage, trainer.status());
  }
  Trainer& t = **trainer;
  print_header(run, t);
  if (int code = prepare_weights(run, t); code != kExitOk) return code;
  RunTotals totals;
  const int code = run_steps(run, t, totals);
  return finish_run(run, t, totals, code);
}

STRATA_COMMAND("train", "train the profile's GPT-2 (one rank until data parallelism lands; progress, JSON log, weights)", train);

}  // namespace
}  // namespace strata::cli
