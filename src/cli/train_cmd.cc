// `strata train`: trains the profile's GPT-2 on one rank and reports progress.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cxxopts.hpp>
#include <fstream>
#include <iostream>
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

int train(int argc, char** argv) {
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
  cxxopts::ParseResult args;
  try {
    args = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata train: " << e.what() << "\n" << opts.help();
    return kExitUsage;
  }
  if (args.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  if (!args.unmatched().empty()) {
    std::cerr << "strata train: unexpected argument '" << args.unmatched().front() << "'\n" << opts.help();
    return kExitUsage;
  }

  // Profile. The options that override profile keys are applied before the cross-key checks,
  // so those checks see what the run will use.
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
  Result<Profile> loaded = args.count("profile") ? Profile::load(args["profile"].as<std::string>(), overrides)
                                                 : Profile::from_toml_string("", "built-in defaults", overrides);
  if (!loaded.ok()) {
    std::cerr << "strata train: " << loaded.status() << "\n";
    return kExitUsage;
  }
  Profile profile = *loaded;

  // The ranks of the job. Under MPI every process fails the same way; only rank 0 says so.
  auto world = open_train_world(profile, args["ranks"].as<int>());
  if (!world.ok()) {
    if (!launched_by_mpi() || launcher_rank() == 0) std::cerr << "strata train: " << world.status() << "\n";
    return world.status().code() == StatusCode::kInvalidArgument || world.status().code() == StatusCode::kUnavailable
               ? kExitUsage
               : kExitFailed;
  }
  DType export_dtype;
  if (!parse_dtype(args["export-dtype"].as<std::string>(), &export_dtype)) {
    std::cerr << "strata train: --export-dtype '" << args["export-dtype"].as<std::string>()
              << "' is not one of fp32, bf16, fp16\n";
    return kExitUsage;
  }

  // Data.
  const std::string& data_path = profile.train.data;
  Result<TokenDataset> data = data_path.empty() ? TokenDataset::default_text() : TokenDataset::open(data_path);
  if (!data.ok()) {
    std::cerr << "strata train: " << data.status() << "\n";
    return kExitUsage;
  }
  if (Status st = data->check(profile.train.dims.vocab, profile.train.dims.seq_len); !st.ok()) {
    std::cerr << "strata train: " << st << "\n";
    return kExitUsage;
  }

  // Device and trainer.
  auto device = create_device(args["device"].as<std::string>(), device_options(profile.memory));
  if (!device.ok()) {
    std::cerr << "strata train: " << device.status() << "\n";
    return device.status().code() == StatusCode::kInvalidArgument ? kExitUsage : kExitFailed;
  }
  std::ofstream log;
  if (args.count("log-json")) {
    const std::string path = args["log-json"].as<std::string>();
    log.open(path, std::ios::out | std::ios::trunc);
    if (!log) {
      std::cerr << "strata train: cannot open --log-json file '" << path << "'\n";
      return kExitUsage;
    }
  }
  int code = kExitOk;
  {
    auto trainer = Trainer::create(profile, **device);
    if (!trainer.ok()) {
      std::cerr << "strata train: " << trainer.status() << "\n";
      return trainer.status().code() == StatusCode::kOutOfMemory || trainer.status().code() == StatusCode::kInternal
                 ? kExitFailed
                 : kExitUsage;
    }
    Trainer& t = **trainer;
    const TrainConfig& tc = profile.train;
    const ModelDims& d = tc.dims;
    std::cout << "model    GPT-2 '" << tc.model << "': " << d.n_layer << " layers, " << d.n_head << " heads, n_embd "
              << d.n_embd << ", vocab " << d.vocab << ", seq_len " << d.seq_len << " ("
              << fmt("%.2f", static_cast<double>(d.parameter_count()) / 1e6) << "M parameters, "
              << dtype_name(profile.precision.dtype) << (profile.activation.checkpointing ? ", checkpointed" : "")
              << ")\n"
              << "device   " << (*device)->info().name << "\n"
              << "data     " << data->name() << " (" << data->size() << " tokens)\n"
              << "batch    " << tc.micro_batch << " x " << tc.grad_accum << " x " << d.seq_len << " = "
              << t.tokens_per_step() << " tokens per step; " << t.optimizer().name() << " " << profile.optimizer.type
              << " lr " << profile.optimizer.lr << ", " << tc.steps << " steps\n"
              << "memory   " << format_bytes_human(static_cast<double>((*device)->stats().used)) << " of "
              << format_bytes_human(static_cast<double>((*device)->info().capacity))
              << " device memory (weights, gradients, optimizer state, activations of "
              << format_bytes_human(static_cast<double>(Gpt::activation_bytes(t.model().config(), tc.micro_batch)))
              << ")\n";

    if (args.count("import")) {
      if (Status st = t.import_weights(args["import"].as<std::string>()); !st.ok()) {
        std::cerr << "strata train: --import: " << st << "\n";
        return kExitUsage;
      }
      std::cout << "weights  " << args["import"].as<std::string>() << "\n";
    }
    if (args.count("export-init")) {
      if (Status st = t.export_weights(args["export-init"].as<std::string>(), export_dtype); !st.ok()) {
        std::cerr << "strata train: --export-init: " << st << "\n";
        return kExitFailed;
      }
    }

    if (args.count("resume")) {
      auto from = load_checkpoint(t, args["resume"].as<std::string>());
      if (!from.ok()) {
        std::cerr << "strata train: --resume: " << from.status() << "\n";
        return kExitUsage;
      }
      std::cout << "resumed  " << *from << " at step " << t.steps_done() << "\n";
    }

    const bool tty = ::isatty(STDOUT_FILENO) == 1;
    double elapsed = 0, first_loss = NAN, last_loss = NAN;
    std::uint64_t tokens = 0;
    // train.steps counts from the start of training, so a resumed run finishes the same step.
    const std::int64_t start = t.steps_done();
    for (std::int64_t i = start; i < tc.steps; ++i) {
      auto s = t.train_step(*data);
      if (!s.ok()) {
        if (tty) std::cout << "\n";
        std::cerr << "strata train: step " << i + 1 << ": " << s.status() << "\n";
        code = kExitFailed;
        break;
      }
      elapsed += s->seconds;
      tokens += s->tokens;
      if (i == start) first_loss = s->loss;
      last_loss = s->loss;
      const double eta = elapsed / static_cast<double>(i - start + 1) * static_cast<double>(tc.steps - i - 1);
      const double tps = elapsed > 0 ? static_cast<double>(tokens) / elapsed : 0;
      if (tty) {
        std::cout << "\r" << progress_bar(s->step, tc.steps, 30) << " step " << s->step << "/" << tc.steps << "  loss "
                  << fmt("%.4f", s->loss) << "  " << fmt("%.0f", tps) << " tok/s  ETA " << clock_time(eta)
                  << (s->skipped ? "  (skipped)" : "") << "   " << std::flush;
      } else {
        std::cout << "step " << s->step << "/" << tc.steps << " loss " << fmt("%.4f", s->loss) << " grad_norm "
                  << fmt("%.4g", s->grad_norm) << " lr " << fmt("%.3g", s->lr) << " loss_scale "
                  << fmt("%.6g", s->loss_scale) << " " << fmt("%.0f", s->tokens_per_s) << " tok/s"
                  << (s->skipped ? " skipped" : "") << std::endl;  // flushed: progress shows through pipes
      }
      if (log.is_open()) {
        const auto tiers = t.optimizer().tier_stats();
        log << json_line(*s, tiers.has_value() ? tiers->to_json() : std::string()) << "\n";
        log.flush();
        if (!log) {
          std::cerr << "strata train: writing the --log-json file failed\n";
          code = kExitFailed;
          break;
        }
      }
      if (!tc.checkpoint_dir.empty() && checkpoint_due(tc, t.steps_done(), i + 1 == tc.steps)) {
        auto saved = save_checkpoint(t, tc.checkpoint_dir);
        if (!saved.ok()) {
          if (tty) std::cout << "\n";
          std::cerr << "strata train: checkpoint after step " << t.steps_done() << ": " << saved.status() << "\n";
          code = kExitFailed;
          break;
        }
        if (!tty) std::cout << "checkpoint " << *saved << "\n";
      }
    }
    if (tty) std::cout << "\n";
    if (code == kExitOk) {
      // The last update may still run in the background (offload.optimizer.overlap_step).
      const auto t0 = std::chrono::steady_clock::now();
      if (Status st = t.optimizer().synchronize(); !st.ok()) {
        std::cerr << "strata train: step " << t.steps_done() << ": " << st << "\n";
        code = kExitFailed;
      }
      elapsed += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    if (t.steps_done() > start && code == kExitOk) {
      std::cout << "done     " << t.steps_done() - start << " steps in " << clock_time(elapsed) << " ("
                << fmt("%.3f", elapsed / static_cast<double>(t.steps_done() - start)) << " s/step, "
                << fmt("%.0f", static_cast<double>(tokens) / elapsed) << " tok/s); loss " << fmt("%.4f", first_loss)
                << " -> " << fmt("%.4f", last_loss) << "\n";
    }
    if (auto tiers = t.optimizer().tier_stats(); tiers.has_value()) {
      std::cout << "tiers    " << tiers->to_json() << "\n";
    }
    if (code == kExitOk && args.count("export")) {
      if (Status st = t.export_weights(args["export"].as<std::string>(), export_dtype); !st.ok()) {
        std::cerr << "strata train: --export: " << st << "\n";
        return kExitFailed;
      }
      std::cout << "exported " << args["export"].as<std::string>() << "\n";
    }
  }
  return code;
}

STRATA_COMMAND("train", "train the profile's GPT-2 (one rank until data parallelism lands; progress, JSON log, weights)", train);

}  // namespace
}  // namespace strata::cli
