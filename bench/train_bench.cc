// `strata bench train`: the training step of the profile's GPT-2 on one rank, split into
// forward, backward and optimizer time, and the model FLOP/s it reaches as a fraction of the
// device's GEMM GFLOP/s measured in the same run.
//
// * Step: warm-up steps, then measured steps with the trainer's phase timing (the stream is
//   synchronised after the forward passes, the backward passes and the optimizer step); the
//   median of each phase is reported.
// * Model FLOPs: gpt_training_flops() (6 per matmul parameter per token plus attention, the
//   PaLM count; recomputation and the masked half of causal attention are not counted). The
//   GEMM FLOPs the device actually ran per step are shown beside it.
// * Ceiling: Device::gemm in the model's dtype on the MLP's up-projection, the step's largest
//   product ((B*T, C) x (C, 4C)), enqueued in batches and timed to the median; measured before
//   and after the steps, the higher of the two is the ceiling (so a quieter moment only lowers
//   the reported fraction).
//
// --json (bench_json.h): results for the ceiling before, each measured step (ratio: its model
// FLOP/s over the ceiling) and the ceiling after; the summary holds the medians.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cxxopts.hpp>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_env.h"
#include "bench/bench_json.h"
#include "cli/command.h"
#include "strata/data.h"
#include "strata/device.h"
#include "strata/model.h"
#include "strata/profile.h"
#include "strata/trainer.h"
#include "strata/units.h"

namespace strata::cli {
namespace {

using namespace strata::bench;  // NOLINT(google-build-using-namespace)


std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// GFLOP/s of Device::gemm on y (M, N) = x (M, K) @ w (K, N) in dtype t: median over 7 rounds
// of `per_round` products enqueued back to back.
Result<double> gemm_gflops(Device& dev, DType t, std::int64_t M, std::int64_t N, std::int64_t K) {
  const std::size_t es = dtype_size(t);
  STRATA_ASSIGN_OR_RETURN(DeviceBuffer a, dev.allocate(static_cast<std::size_t>(M * K) * es));
  STRATA_ASSIGN_OR_RETURN(DeviceBuffer b, dev.allocate(static_cast<std::size_t>(K * N) * es));
  STRATA_ASSIGN_OR_RETURN(DeviceBuffer c, dev.allocate(static_cast<std::size_t>(M * N) * es));
  STRATA_ASSIGN_OR_RETURN(auto stream, dev.create_stream("bench-gemm"));
  STRATA_RETURN_IF_ERROR(dev.fill(a.view(t), 0.01f, *stream));
  STRATA_RETURN_IF_ERROR(dev.fill(b.view(t), 0.02f, *stream));
  GemmArgs g;
  g.a = MatrixView{a.view(t), M, K, 0, 0};
  g.b = MatrixView{b.view(t), K, N, 0, 0};
  g.c = MatrixView{c.view(t), M, N, 0, 0};
  const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  STRATA_RETURN_IF_ERROR(dev.gemm(g, *stream));  // warm-up: plan creation, first touch
  STRATA_RETURN_IF_ERROR(stream->synchronize());
  const auto t1 = Clock::now();
  STRATA_RETURN_IF_ERROR(dev.gemm(g, *stream));
  STRATA_RETURN_IF_ERROR(stream->synchronize());
  const double one_s = std::max(1e-7, seconds_since(t1));
  // ~2 GFLOP per round, or ~50 ms where a product is so small that its call cost dominates
  // (the tiny model), whichever is fewer products.
  const int per_round = std::max(1, static_cast<int>(std::min(2e9 / flops, 0.05 / one_s)));
  std::vector<double> rates;
  for (int r = 0; r < 7; ++r) {
    const auto t0 = Clock::now();
    for (int i = 0; i < per_round; ++i) STRATA_RETURN_IF_ERROR(dev.gemm(g, *stream));
    STRATA_RETURN_IF_ERROR(stream->synchronize());
    rates.push_back(flops * per_round / std::chrono::duration<double>(Clock::now() - t0).count() / 1e9);
  }
  return median(rates);
}

int bench_train(int argc, char** argv) {
  cxxopts::Options opts("strata bench train",
                        "Time the training step (forward, backward, optimizer) and report model FLOP/s against "
                        "the device's GEMM GFLOP/s measured in the same run.");
  opts.add_options()
      ("profile", "offload profile; default: the built-in defaults (the 'default' model)", cxxopts::value<std::string>())
      ("steps", "measured steps", cxxopts::value<int>()->default_value("5"))
      ("warmup", "steps before measuring", cxxopts::value<int>()->default_value("2"))
      ("device", "device backend: host or cuda", cxxopts::value<std::string>()->default_value("host"))
      ("json", "print JSON Lines instead of tables; see 'strata help bench'")
      ("h,help", "show this help");
  cxxopts::ParseResult args;
  try {
    args = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata bench train: " << e.what() << "\n" << opts.help();
    return kExitUsage;
  }
  if (args.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  if (!args.unmatched().empty()) {
    std::cerr << "strata bench train: unexpected argument '" << args.unmatched().front() << "'\n";
    return kExitUsage;
  }
  const int steps = args["steps"].as<int>(), warmup = args["warmup"].as<int>();
  if (steps < 1 || warmup < 0) {
    std::cerr << "strata bench train: --steps must be at least 1 and --warmup at least 0\n";
    return kExitUsage;
  }
  auto loaded = args.count("profile") ? Profile::load(args["profile"].as<std::string>())
                                      : Profile::from_toml_string("", "built-in defaults");
  if (!loaded.ok()) {
    std::cerr << "strata bench train: " << loaded.status() << "\n";
    return kExitUsage;
  }
  const Profile& p = *loaded;
  auto data = p.train.data.empty() ? TokenDataset::default_text() : TokenDataset::open(p.train.data);
  if (!data.ok()) {
    std::cerr << "strata bench train: " << data.status() << "\n";
    return kExitUsage;
  }
  auto dev_r = create_device(args["device"].as<std::string>(), device_options(p.memory));
  if (!dev_r.ok()) {
    std::cerr << "strata bench train: " << dev_r.status() << "\n";
    return dev_r.status().code() == StatusCode::kInvalidArgument ? kExitUsage : kExitFailed;
  }
  Device& dev = **dev_r;
  const ModelDims& d = p.train.dims;
  const DType t = p.precision.dtype;
  const std::int64_t bt = static_cast<std::int64_t>(p.train.micro_batch) * d.seq_len;

  const bool json = args.count("json") > 0;
  JsonLines report("train");
  if (json) {
    report.env({{"device", dev.info().name},
                {"model", p.train.model},
                {"n_layer", d.n_layer},
                {"n_embd", d.n_embd},
                {"n_head", d.n_head},
                {"vocab", d.vocab},
                {"seq_len", d.seq_len},
                {"parameters", d.parameter_count()},
                {"dtype", dtype_name(t)},
                {"activation_checkpointing", p.activation.checkpointing},
                {"micro_batch", p.train.micro_batch},
                {"grad_accum", p.train.grad_accum},
                {"warmup", warmup},
                {"steps", steps}});
  } else {
    std::cout << "strata bench train\n"
              << "  cpu:      " << cpu_brand() << ", " << std::thread::hardware_concurrency() << " logical CPUs, "
              << omp_get_max_threads() << " OpenMP threads\n"
              << "  build:    " << build_kind() << "\n"
              << "  device:   " << dev.info().name << "\n"
              << "  model:    GPT-2 '" << p.train.model << "' (" << d.n_layer << " x " << d.n_embd << ", " << d.n_head
              << " heads, vocab " << d.vocab << ", seq_len " << d.seq_len << "; "
              << fixed(static_cast<double>(d.parameter_count()) / 1e6, 2) << "M parameters), " << dtype_name(t)
              << (p.activation.checkpointing ? ", activation checkpointing" : "") << "\n"
              << "  batch:    " << p.train.micro_batch << " x " << p.train.grad_accum << " x " << d.seq_len
              << " tokens per step; " << warmup << " warm-up + " << steps << " measured steps\n";
  }
  warn_if_not_release(std::cout, json);

  auto ceiling1 = gemm_gflops(dev, t, bt, 4 * d.n_embd, d.n_embd);
  if (!ceiling1.ok()) {
    std::cerr << "strata bench train: GEMM ceiling: " << ceiling1.status() << "\n";
    return kExitFailed;
  }

  TrainerOptions to;
  to.phase_timing = true;
  std::vector<double> fwd, bwd, opt, total, losses;
  std::vector<std::uint64_t> gemm_flops;
  std::uint64_t gemm_flops_per_step = 0;
  double loss_first = 0, loss_last = 0;
  {
    auto trainer = Trainer::create(p, dev, nullptr, to);
    if (!trainer.ok()) {
      std::cerr << "strata bench train: " << trainer.status() << "\n";
      return kExitFailed;
    }
    for (int i = 0; i < warmup + steps; ++i) {
      const std::uint64_t f0 = dev.stats().gemm_flops;
      auto s = (*trainer)->train_step(*data);
      if (!s.ok()) {
        std::cerr << "strata bench train: step " << i + 1 << ": " << s.status() << "\n";
        return kExitFailed;
      }
      if (i == 0) loss_first = s->loss;
      loss_last = s->loss;
      if (i < warmup) continue;
      gemm_flops_per_step = dev.stats().gemm_flops - f0;
      fwd.push_back(s->forward_s);
      bwd.push_back(s->backward_s);
      opt.push_back(s->optimizer_s);
      total.push_back(s->seconds);
      losses.push_back(s->loss);
      gemm_flops.push_back(gemm_flops_per_step);
    }
  }
  auto ceiling2 = gemm_gflops(dev, t, bt, 4 * d.n_embd, d.n_embd);
  if (!ceiling2.ok()) {
    std::cerr << "strata bench train: GEMM ceiling: " << ceiling2.status() << "\n";
    return kExitFailed;
  }
  const double ceiling = std::max(*ceiling1, *ceiling2);
  const double step_s = median(total);
  const double model_flops = gpt_training_flops(d, static_cast<std::uint64_t>(bt) * static_cast<std::uint64_t>(p.train.grad_accum));
  const double model_gflops = model_flops / step_s / 1e9;
  const double ms = 1e3;

  const double tokens = static_cast<double>(bt) * p.train.grad_accum;
  if (json) {
    const std::string ceiling_name = "Device::gemm GFLOP/s, " + std::string(dtype_name(t)) + " (" + std::to_string(bt) +
                                     " x " + std::to_string(d.n_embd) + ") @ (" + std::to_string(d.n_embd) + " x " +
                                     std::to_string(4 * d.n_embd) + "), the higher of before and after the steps";
    report.result({{"kind", "gemm_ceiling"}, {"when", "before"}, {"gflops", *ceiling1}});
    for (std::size_t i = 0; i < total.size(); ++i) {
      const double gflops = model_flops / total[i] / 1e9;
      report.result({{"kind", "step"},
                     {"step", warmup + static_cast<int>(i) + 1},
                     {"forward_s", fwd[i]},
                     {"backward_s", bwd[i]},
                     {"optimizer_s", opt[i]},
                     {"step_s", total[i]},
                     {"loss", losses[i]},
                     {"gemm_flops", gemm_flops[i]},
                     {"model_gflops", gflops},
                     {"ratio", gflops / ceiling},
                     {"ceiling", ceiling_name}});
    }
    report.result({{"kind", "gemm_ceiling"}, {"when", "after"}, {"gflops", *ceiling2}});
    report.summary({{"forward_s", median(fwd)},
                    {"backward_s", median(bwd)},
                    {"optimizer_s", median(opt)},
                    {"step_s", step_s},
                    {"tokens_per_s", tokens / step_s},
                    {"loss_first", loss_first},
                    {"loss_last", loss_last},
                    {"model_flops_per_step", model_flops},
                    {"gemm_flops_per_step", gemm_flops_per_step},
                    {"model_gflops", model_gflops},
                    {"ceiling_gflops", ceiling},
                    {"ratio", model_gflops / ceiling},
                    {"ceiling", ceiling_name}});
  } else {
    std::cout << "\nstep (median of " << steps << ")\n"
              << "  forward     " << fixed(median(fwd) * ms, 1) << " ms\n"
              << "  backward    " << fixed(median(bwd) * ms, 1) << " ms\n"
              << "  optimizer   " << fixed(median(opt) * ms, 1) << " ms\n"
              << "  step        " << fixed(step_s * ms, 1) << " ms  ("
              << fixed(tokens / step_s, 0) << " tokens/s; loss " << fixed(loss_first, 3)
              << " -> " << fixed(loss_last, 3) << ")\n"
              << "\nthroughput\n"
              << "  model FLOPs per step     " << fixed(model_flops / 1e9, 2) << " GFLOP\n"
              << "  GEMM FLOPs run per step  " << fixed(static_cast<double>(gemm_flops_per_step) / 1e9, 2)
              << " GFLOP (includes the masked half of attention" << (p.activation.checkpointing ? " and recomputation" : "")
              << ")\n"
              << "  model FLOP/s             " << fixed(model_gflops, 1) << " GFLOP/s\n"
              << "  GEMM ceiling             " << fixed(ceiling, 1) << " GFLOP/s (" << dtype_name(t) << " (" << bt << " x "
              << d.n_embd << ") @ (" << d.n_embd << " x " << 4 * d.n_embd << "); before " << fixed(*ceiling1, 1)
              << ", after " << fixed(*ceiling2, 1) << ")\n"
              << "  model FLOP/s / GEMM      " << fixed(100.0 * model_gflops / ceiling, 1) << " %\n";
  }
  return kExitOk;
}

STRATA_COMMAND("bench train", "training step time (forward, backward, optimizer) and model FLOP/s vs the GEMM ceiling",
               bench_train);

}  // namespace
}  // namespace strata::cli
