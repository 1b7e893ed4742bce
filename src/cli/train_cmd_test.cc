// Runs `strata train` end to end on the tiny model: plain progress lines off a terminal, the
// --log-json lines, the safetensors options and the usage errors.
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <regex>
#include <string>

#include <gtest/gtest.h>

#include "core/remove_at_exit.h"
#include "core/run_command.h"

namespace {

using CliRun = strata::CommandRun;

CliRun run(const std::string& args) {
  std::string cmd = std::string(STRATA_CLI_PATH) + " " + args + " 2>&1 < /dev/null";
  return strata::run_command(cmd);
}

// Runs a shell command line as it is (stdout and stderr together).
CliRun run_shell(const std::string& cmd) {
  return strata::run_command(cmd + " 2>&1 < /dev/null");
}

std::string file_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::filesystem::path dir() {
  const char* base = std::getenv("STRATA_TEST_TMPDIR");
  auto d = std::filesystem::path(base ? base : std::filesystem::temp_directory_path().string()) /
           ("train_cmd_test." + std::to_string(::getpid()));
  std::filesystem::create_directories(d);
  strata::remove_at_exit(d);
  return d;
}

std::string tiny_profile(int steps) {
  const auto p = dir() / ("tiny" + std::to_string(steps) + ".toml");
  std::ofstream(p) << "[memory]\ndevice_budget = \"256MiB\"\n[train]\nmodel = \"tiny\"\nmicro_batch = 2\nsteps = "
                   << steps << "\n";
  return p.string();
}

TEST(TrainCmd, TrainsLogsAndExports) {
  const std::string log = (dir() / "log.jsonl").string();
  const std::string init = (dir() / "init.safetensors").string();
  const std::string final_w = (dir() / "final.safetensors").string();
  CliRun r = run("train --profile " + tiny_profile(3) + " --log-json " + log + " --export-init " + init + " --export " +
                 final_w);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("GPT-2 'tiny'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("step 3/3 loss "), std::string::npos) << r.out;  // plain lines off a terminal
  EXPECT_EQ(r.out.find('\r'), std::string::npos) << "no progress bar when stdout is not a terminal";
  EXPECT_NE(r.out.find("exported " + final_w), std::string::npos) << r.out;

  std::ifstream f(log);
  std::string line;
  int n = 0;
  double first_loss = 0;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    ++n;
    EXPECT_EQ(j["step"].get<int>(), n);
    for (const char* key : {"loss", "grad_norm", "lr", "loss_scale", "tokens_per_s"}) {
      ASSERT_TRUE(j.contains(key)) << line;
      EXPECT_TRUE(j[key].is_number()) << line;
    }
    if (n == 1) first_loss = j["loss"].get<double>();
  }
  EXPECT_EQ(n, 3);
  EXPECT_TRUE(std::filesystem::exists(init));
  EXPECT_TRUE(std::filesystem::exists(final_w));

  // Starting from the exported initial weights with another seed reproduces the first loss.
  const auto p2 = dir() / "seed.toml";
  std::ofstream(p2) << "[memory]\ndevice_budget = \"256MiB\"\n[train]\nmodel = \"tiny\"\nmicro_batch = 2\nsteps = 1\n"
                       "seed = 99\n";
  const std::string log2 = (dir() / "log2.jsonl").string();
  CliRun again = run("train --profile " + p2.string() + " --import " + init + " --log-json " + log2);
  ASSERT_EQ(again.exit_code, 0) << again.out;
  std::ifstream f2(log2);
  ASSERT_TRUE(std::getline(f2, line));
  EXPECT_EQ(nlohmann::json::parse(line)["loss"].get<double>(), first_loss);
}

TEST(TrainCmd, InputErrorsAreUsageErrors) {
  CliRun bad_opt = run("train --no-such-option");
  EXPECT_EQ(bad_opt.exit_code, 2);
  CliRun no_data = run("train --profile " + tiny_profile(1) + " --data /nonexistent/strata.txt");
  EXPECT_EQ(no_data.exit_code, 2);
  EXPECT_NE(no_data.out.find("/nonexistent/strata.txt"), std::string::npos) << no_data.out;
  CliRun bad_steps = run("train --profile " + tiny_profile(1) + " --steps -3");
  EXPECT_EQ(bad_steps.exit_code, 2) << bad_steps.out;
  CliRun bad_dtype = run("train --profile " + tiny_profile(1) + " --export-dtype fp8");
  EXPECT_EQ(bad_dtype.exit_code, 2) << bad_dtype.out;
  CliRun bad_device = run("train --profile " + tiny_profile(1) + " --device tpu");
  EXPECT_EQ(bad_device.exit_code, 2) << bad_device.out;
  EXPECT_NE(bad_device.out.find("host"), std::string::npos) << "lists the known backends: " << bad_device.out;
  const auto garbage = dir() / "garbage.safetensors";
  std::ofstream(garbage) << "not a safetensors file at all";
  CliRun bad_import = run("train --profile " + tiny_profile(1) + " --import " + garbage.string());
  EXPECT_EQ(bad_import.exit_code, 2) << bad_import.out;
  EXPECT_NE(bad_import.out.find("header length"), std::string::npos) << bad_import.out;
}

}  // namespace

namespace {

std::string nvme_profile(int steps) {
  const auto swap = dir() / "swap";
  std::filesystem::create_directories(swap);
  const auto p = dir() / ("nvme" + std::to_string(steps) + ".toml");
  std::ofstream(p) << "[memory]\ndevice_budget = \"256MiB\"\n[offload.optimizer]\ndevice = \"nvme\"\nnvme_path = \""
                   << swap.string() << "\"\n[train]\nmodel = \"tiny\"\nmicro_batch = 2\nsteps = " << steps << "\n";
  return p.string();
}

std::vector<double> logged_losses(const std::string& path) {
  std::vector<double> losses;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) losses.push_back(nlohmann::json::parse(line).at("loss").get<double>());
  return losses;
}

TEST(TrainCmd, CheckpointAndResumeContinueTheSameRun) {
  const std::string whole = (dir() / "whole.jsonl").string();
  CliRun a = run("train --profile " + nvme_profile(4) + " --log-json " + whole);
  ASSERT_EQ(a.exit_code, 0) << a.out;
  EXPECT_NE(a.out.find("tiers    {"), std::string::npos) << "the offloaded run prints its tier statistics\n" << a.out;

  const std::string ck = (dir() / "ckpt").string();
  CliRun b = run("train --profile " + nvme_profile(2) + " --checkpoint-dir " + ck);
  ASSERT_EQ(b.exit_code, 0) << b.out;
  EXPECT_NE(b.out.find("checkpoint "), std::string::npos) << b.out;

  const std::string rest = (dir() / "rest.jsonl").string();
  CliRun c = run("train --profile " + nvme_profile(4) + " --resume " + ck + " --log-json " + rest);
  ASSERT_EQ(c.exit_code, 0) << c.out;
  EXPECT_NE(c.out.find("at step 2"), std::string::npos) << c.out;

  {
    std::ifstream in(whole);
    std::string line;
    ASSERT_TRUE(std::getline(in, line));
    const auto j = nlohmann::json::parse(line);
    ASSERT_TRUE(j.contains("tiers")) << "an offloaded run logs its tier statistics each step: " << line;
    EXPECT_TRUE(j.at("tiers").is_object()) << line;
    std::string last;
    while (std::getline(in, line)) last = line;
    // The overlapped pass of step 3 has ended (this state fits in its buffers: no traffic).
    const auto pass = nlohmann::json::parse(last).at("pass");
    EXPECT_GE(pass.at("passes").get<int>(), 3) << last;
    EXPECT_GT(pass.at("seconds").get<double>(), 0.0) << last;
    EXPECT_EQ(pass.at("nvme_bytes").get<std::uint64_t>(), 0u) << last;
  }
  EXPECT_NE(a.out.find("pass     the last update pass: "), std::string::npos) << a.out;

  std::vector<double> all = logged_losses(whole), tail = logged_losses(rest);
  ASSERT_EQ(all.size(), 4u);
  ASSERT_EQ(tail.size(), 2u);
  EXPECT_EQ(tail[0], all[2]);  // bitwise: the kernels are deterministic
  EXPECT_EQ(tail[1], all[3]);

  CliRun bad = run("train --profile " + nvme_profile(4) + " --resume " + (dir() / "no-such-checkpoint").string());
  EXPECT_EQ(bad.exit_code, 2) << bad.out;
  EXPECT_NE(bad.out.find("no-such-checkpoint"), std::string::npos) << bad.out;
}

// The options that override profile keys are applied before the profile's cross-key checks:
// a check sees the value the run will use, never the document's alone.
TEST(TrainCmd, OverridingOptionsApplyBeforeTheCrossKeyChecks) {
  // --checkpoint-dir satisfies "checkpoint_every needs checkpoint_dir".
  const auto every = dir() / "every.toml";
  std::ofstream(every) << "[memory]\ndevice_budget = \"256MiB\"\n[train]\nmodel = \"tiny\"\nmicro_batch = 2\n"
                       << "steps = 2\ncheckpoint_every = 1\n";
  CliRun refused = run("train --profile " + every.string());
  EXPECT_EQ(refused.exit_code, 2) << refused.out;
  EXPECT_NE(refused.out.find("checkpoint_every needs train.checkpoint_dir"), std::string::npos) << refused.out;
  const auto ck = dir() / "override-ckpt";
  CliRun saved = run("train --profile " + every.string() + " --checkpoint-dir " + ck.string());
  ASSERT_EQ(saved.exit_code, 0) << saved.out;
  EXPECT_NE(saved.out.find("checkpoint "), std::string::npos) << saved.out;
  EXPECT_TRUE(std::filesystem::exists(ck)) << saved.out;

  // --steps replaces train.steps, also an out-of-range one, which is then reported as the option's.
  CliRun steps = run("train --profile " + tiny_profile(50) + " --steps 1");
  ASSERT_EQ(steps.exit_code, 0) << steps.out;
  EXPECT_NE(steps.out.find("step 1/1 "), std::string::npos) << steps.out;
  CliRun bad_steps = run("train --profile " + tiny_profile(1) + " --steps 2000000000");
  EXPECT_EQ(bad_steps.exit_code, 2) << bad_steps.out;
  EXPECT_NE(bad_steps.out.find("--steps 2000000000"), std::string::npos) << bad_steps.out;

  // --data replaces a train.data that does not exist.
  const auto text = dir() / "override-data.txt";
  {
    std::ofstream t(text);
    for (int i = 0; i < 200; ++i) t << "the quick brown fox jumps over the lazy dog " << i << "\n";
  }
  const auto missing = dir() / "missing-data.toml";
  std::ofstream(missing) << "[memory]\ndevice_budget = \"256MiB\"\n[train]\nmodel = \"tiny\"\nmicro_batch = 2\n"
                         << "steps = 1\ndata = \"/nonexistent/strata-data.txt\"\n";
  CliRun data = run("train --profile " + missing.string() + " --data " + text.string());
  ASSERT_EQ(data.exit_code, 0) << data.out;
  EXPECT_NE(data.out.find(text.filename().string()), std::string::npos) << "reports the data it read: " << data.out;
}

// `two` (a 4-step profile of 2 ranks) as 2 threads and `one` on one rank log the same losses
// within 1e-6 relative (DIR/<stem>2.jsonl and <stem>1.jsonl); the threads' losses, and their
// output in `out` when given.
std::vector<double> two_ranks_train_as_one(const std::filesystem::path& two, const std::filesystem::path& one,
                                           const std::string& stem, std::string* out = nullptr) {
  const std::string log2 = (dir() / (stem + "2.jsonl")).string(), log1 = (dir() / (stem + "1.jsonl")).string();
  CliRun a = run("train --profile " + two.string() + " --ranks 2 --log-json " + log2);
  EXPECT_EQ(a.exit_code, 0) << a.out;
  CliRun b = run("train --profile " + one.string() + " --log-json " + log1);
  EXPECT_EQ(b.exit_code, 0) << b.out;
  if (out != nullptr) *out = a.out;
  const std::vector<double> l2 = logged_losses(log2), l1 = logged_losses(log1);
  EXPECT_EQ(l2.size(), 4u);
  EXPECT_EQ(l1.size(), 4u);
  for (std::size_t i = 0; i < l1.size() && i < l2.size(); ++i) {
    EXPECT_NEAR(l2[i], l1[i], 1e-6 * l1[i]) << stem << " step " << i + 1;
  }
  return l2;
}

// The ranks of a run: --ranks N threads or the processes of an MPI job, N = dp x tp x pp; dp
// ranks train the one-rank run of the global batch; a pipeline needs at least pp micro-batches.
TEST(TrainCmd, RanksMustMatchTheGridAndDataParallelRanksTrainTheGlobalBatch) {
  CliRun two = run("train --profile " + tiny_profile(1) + " --ranks 2");
  EXPECT_EQ(two.exit_code, 2) << two.out;
  EXPECT_NE(two.out.find("--ranks gives 2 ranks but the grid dp 1 x tp 1 x pp 1 needs 1"), std::string::npos) << two.out;
  CliRun zero = run("train --profile " + tiny_profile(1) + " --ranks 0");
  EXPECT_EQ(zero.exit_code, 2) << zero.out;
  const auto pp2 = dir() / "pp2.toml";
  std::ofstream(pp2) << "[memory]\ndevice_budget = \"256MiB\"\n[parallel]\npp = 2\n[train]\nmodel = \"tiny\"\n";
  CliRun grid = run("train --profile " + pp2.string() + " --ranks 2");
  EXPECT_EQ(grid.exit_code, 2) << grid.out;
  EXPECT_NE(grid.out.find("train.grad_accum = 1, fewer than its pp = 2 stages"), std::string::npos) << grid.out;

  // dp 2 of micro_batch 2 against one rank of micro_batch 4: the same losses (within 1e-6).
  const auto dp2 = dir() / "dp2.toml";
  const auto one = dir() / "dp1.toml";
  const std::string common = "[memory]\ndevice_budget = \"256MiB\"\n[train]\nmodel = \"tiny\"\nsteps = 4\n";
  std::ofstream(dp2) << common << "micro_batch = 2\n[parallel]\ndp = 2\n";
  std::ofstream(one) << common << "micro_batch = 4\n";
  std::string out;
  const std::vector<double> l2 = two_ranks_train_as_one(dp2, one, "dp", &out);
  EXPECT_EQ(out.find("step 1/4"), out.rfind("step 1/4")) << "only rank 0 reports:\n" << out;

  // The same two ranks as MPI processes report the threads' losses (a two-rank sum is exact
  // in either order).
  if (run_shell("command -v mpirun").exit_code != 0) return;
  const std::string logm = (dir() / "dp2-mpi.jsonl").string();
  // (Without leak checks under the sanitizers: OpenMPI's unloaded plugins leave one-time
  // allocations without symbols; see src/parallel/CMakeLists.txt.)
  CliRun m = run_shell("mpirun --allow-run-as-root --oversubscribe -x ASAN_OPTIONS=detect_leaks=0 -n 2 " +
                       std::string(STRATA_CLI_PATH) + " train --profile " + dp2.string() + " --log-json " + logm);
  ASSERT_EQ(m.exit_code, 0) << m.out;
  EXPECT_EQ(logged_losses(logm), l2);
}

// A grid of two ranks (`two`, a 4-step profile) against the one-rank run of the same model
// (`one`): as two threads the one-rank losses within 1e-6; the same initial weights exported
// byte for byte (the same model whatever the grid) and imported back; a checkpoint after 2
// steps (whole tensors, written by global rank 0) that one rank and the grid both resume,
// continuing the uninterrupted run; and as two MPI processes the threads' losses (a two-rank
// sum is exact in either order).
void expect_grid_trains_as_one_rank(const std::filesystem::path& two, const std::filesystem::path& one,
                                    const std::string& stem) {
  const std::vector<double> l2 = two_ranks_train_as_one(two, one, stem);
  ASSERT_EQ(l2.size(), 4u);

  const std::string init2 = (dir() / (stem + "2-init.safetensors")).string();
  const std::string init1 = (dir() / (stem + "1-init.safetensors")).string();
  ASSERT_EQ(run("train --profile " + two.string() + " --ranks 2 --steps 1 --export-init " + init2).exit_code, 0);
  ASSERT_EQ(run("train --profile " + one.string() + " --steps 1 --export-init " + init1).exit_code, 0);
  EXPECT_EQ(file_bytes(init2), file_bytes(init1));
  const std::string log_imported = (dir() / (stem + "2-imported.jsonl")).string();
  ASSERT_EQ(run("train --profile " + two.string() + " --ranks 2 --import " + init1 + " --log-json " + log_imported)
                .exit_code, 0);
  EXPECT_EQ(logged_losses(log_imported), l2);

  const std::string ck = (dir() / (stem + "-ck")).string();
  ASSERT_EQ(run("train --profile " + two.string() + " --ranks 2 --steps 2 --checkpoint-dir " + ck).exit_code, 0);
  const std::string rest1 = (dir() / (stem + "-rest1.jsonl")).string(), rest2 = (dir() / (stem + "-rest2.jsonl")).string();
  CliRun r1 = run("train --profile " + one.string() + " --resume " + ck + " --log-json " + rest1);
  ASSERT_EQ(r1.exit_code, 0) << r1.out;
  CliRun r2 = run("train --profile " + two.string() + " --ranks 2 --resume " + ck + " --log-json " + rest2);
  ASSERT_EQ(r2.exit_code, 0) << r2.out;
  for (const std::string& rest : {rest1, rest2}) {
    const std::vector<double> tail = logged_losses(rest);
    ASSERT_EQ(tail.size(), 2u) << rest;
    for (std::size_t i = 0; i < 2; ++i) EXPECT_NEAR(tail[i], l2[2 + i], 1e-6 * l2[2 + i]) << rest << " step " << i + 3;
  }

  if (run_shell("command -v mpirun").exit_code != 0) return;
  const std::string logm = (dir() / (stem + "2-mpi.jsonl")).string();
  CliRun m = run_shell("mpirun --allow-run-as-root --oversubscribe -x ASAN_OPTIONS=detect_leaks=0 -n 2 " +
                       std::string(STRATA_CLI_PATH) + " train --profile " + two.string() + " --log-json " + logm);
  ASSERT_EQ(m.exit_code, 0) << m.out;
  EXPECT_EQ(logged_losses(logm), l2);
}

// tp = 2: the tiny GPT with 4 heads, its vocabulary of 257 padded to 258.
TEST(TrainCmd, TensorParallelRanksTrainTheOneRankModel) {
  const auto tp2 = dir() / "tp2.toml";
  const auto one = dir() / "tp1.toml";
  const std::string common = "[memory]\ndevice_budget = \"256MiB\"\n[train]\nmodel = \"tiny\"\nn_head = 4\nvocab = 257\n"
                             "micro_batch = 2\nsteps = 4\n";
  std::ofstream(tp2) << common << "[parallel]\ntp = 2\n";
  std::ofstream(one) << common;
  expect_grid_trains_as_one_rank(tp2, one, "tp");
}

// pp = 2: the tiny GPT's two blocks on two stages, 1F1B over 2 micro-batches, against one rank
// with grad_accum 2 (the tied wte exported once, from the first stage).
TEST(TrainCmd, PipelineRanksTrainTheOneRankModel) {
  const auto pp2 = dir() / "pp2-1f1b.toml";
  const auto one = dir() / "pp1.toml";
  const std::string common = "[memory]\ndevice_budget = \"256MiB\"\n[train]\nmodel = \"tiny\"\nmicro_batch = 2\n"
                             "grad_accum = 2\nsteps = 4\n";
  std::ofstream(pp2) << common << "[parallel]\npp = 2\nschedule = \"1f1b\"\n";
  std::ofstream(one) << common;
  expect_grid_trains_as_one_rank(pp2, one, "pp");
}

// The README's run of the whole grid (profiles/grid-3d.toml: 2 x 2 x 2 ranks, ZeRO-3, the
// parameters and the optimizer state on NVMe) as eight MPI processes, three steps: the losses
// of one rank training the same global batch with everything on the device, within 1e-6.
TEST(TrainCmd, TheWholeGridWithEverythingOnNvmeTrainsTheOneRankModel) {
  if (run_shell("command -v mpirun").exit_code != 0) GTEST_SKIP() << "mpirun is not installed";
  const std::string grid = std::string(STRATA_SOURCE_DIR) + "/profiles/grid-3d.toml";
  const auto one = dir() / "grid-3d-one.toml";
  std::ofstream(one) << "[memory]\ndevice_budget = \"512MiB\"\n[optimizer]\ntype = \"adamw\"\nlr = 0.001\n"
                        "weight_decay = 0.0\ngrad_clip = 1.0\n[train]\nmodel = \"default\"\nmicro_batch = 4\n"
                        "grad_accum = 2\nseed = 1234\n";
  const std::string log8 = (dir() / "grid-3d.jsonl").string(), log1 = (dir() / "grid-3d-one.jsonl").string();
  CliRun m = run_shell("mpirun --allow-run-as-root --oversubscribe -x ASAN_OPTIONS=detect_leaks=0 -n 8 " +
                       std::string(STRATA_CLI_PATH) + " train --profile " + grid + " --steps 3 --log-json " + log8);
  ASSERT_EQ(m.exit_code, 0) << m.out;
  ASSERT_EQ(run("train --profile " + one.string() + " --steps 3 --log-json " + log1).exit_code, 0);
  const std::vector<double> l8 = logged_losses(log8), l1 = logged_losses(log1);
  ASSERT_EQ(l8.size(), 3u);
  ASSERT_EQ(l1.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_NEAR(l8[i], l1[i], 1e-6 * l1[i]) << "step " << i + 1;
  EXPECT_LT(l8.back(), l8.front()) << "the loss falls";
  // Each rank's device peak: its activations, its model state (at least ZeRO-3's formula for
  // the stage's gradient buffer, the one model state left on the device) and its buffers.
  const std::regex line(R"(rank (\d) \(dp \d tp \d pp \d\): [0-9.]+ = [0-9.]+ \+ ([0-9.]+) \(formula ([0-9.]+) for \d+ )"
                        R"(parameters\) \+ [0-9.]+ \(gather window [0-9.]+\); accounted ([0-9.]+))");
  int ranks = 0;
  for (auto it = std::sregex_iterator(m.out.begin(), m.out.end(), line); it != std::sregex_iterator(); ++it, ++ranks) {
    const std::smatch& k = *it;
    EXPECT_EQ(std::stoi(k[1]), ranks) << m.out;
    EXPECT_GE(std::stod(k[2]), std::stod(k[3])) << "model state below the formula: " << k[0];
    EXPECT_LE(std::stod(k[2]), 1.01 * std::stod(k[3])) << k[0];
    EXPECT_EQ(k[4], "1.000") << "device memory the accounting does not know of: " << k[0];
  }
  EXPECT_EQ(ranks, 8) << m.out;
}

// `strata checkpoint info` names the grid that saved a checkpoint and what it holds; `verify`
// passes it, and fails naming the file once one byte of it changes.
TEST(TrainCmd, CheckpointInfoNamesTheGridAndVerifyFindsACorruptFile) {
  const auto pp2 = dir() / "pp2-info.toml";
  std::ofstream(pp2) << "[memory]\ndevice_budget = \"256MiB\"\n[train]\nmodel = \"tiny\"\nmicro_batch = 2\n"
                        "grad_accum = 2\nsteps = 2\n[parallel]\npp = 2\n";
  const std::string ck = (dir() / "info-ck").string();
  ASSERT_EQ(run("train --profile " + pp2.string() + " --ranks 2 --checkpoint-dir " + ck).exit_code, 0);
  CliRun info = run("checkpoint info " + ck + " --json");
  ASSERT_EQ(info.exit_code, 0) << info.out;
  const nlohmann::json j = nlohmann::json::parse(info.out.substr(info.out.find('{')));
  EXPECT_EQ(j["step"], 2);
  EXPECT_EQ(j["saved_by"]["dp"], 1);
  EXPECT_EQ(j["saved_by"]["pp"], 2);
  EXPECT_EQ(j["saved_by"]["zero_stage"], 0);
  EXPECT_EQ(j["tensors"], 28);  // the whole tiny GPT: 2 + 12 x 2 blocks + ln_f's 2
  EXPECT_EQ(j["files"].size(), 3u);
  CliRun text = run("checkpoint info " + ck);
  EXPECT_NE(text.out.find("saved by dp 1 x tp 1 x pp 2, ZeRO stage 0"), std::string::npos) << text.out;
  EXPECT_EQ(run("checkpoint verify " + ck).exit_code, 0);
  const std::string master = ck + "/step-00000002/master.f32";
  {
    std::fstream f(master, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('x');
  }
  CliRun bad = run("checkpoint verify " + ck);
  EXPECT_EQ(bad.exit_code, 1) << bad.out;
  EXPECT_NE(bad.out.find(master + " fails its CRC-32C checksum"), std::string::npos) << bad.out;
  CliRun none = run("checkpoint info " + (dir() / "no-such-ck").string());
  EXPECT_EQ(none.exit_code, 1) << none.out;
  EXPECT_NE(none.out.find("does not exist"), std::string::npos) << none.out;
}

// A ZeRO stage (with the `zero` lines of its profile) and the optimizer state in NVMe swap, as
// 2 threads and as 2 MPI processes: the losses of one rank with the global batch, the same
// initial weights exported, a sharded checkpoint (every rank writes its part) that one rank
// resumes, and the processes' final weights equal to the threads'.
void expect_zero_trains_checks_and_resumes(const std::string& zero) {
  const auto d = dir();
  const std::string swap = (d / "swap").string();
  std::filesystem::create_directories(swap);
  const std::string common = "[memory]\ndevice_budget = \"256MiB\"\n[train]\nmodel = \"tiny\"\nsteps = 4\n";
  const std::string offload = "[offload.optimizer]\ndevice = \"nvme\"\nnvme_path = [\"" + swap +
                              "\"]\nbuffer_size = \"64KiB\"\n[nvme]\nengine = \"posix\"\ndirect = false\n"
                              "registered_buffers = false\nblock_size = \"64KiB\"\n";
  const auto z2 = d / "z2.toml", one = d / "z1.toml";
  std::ofstream(z2) << common << "micro_batch = 2\ncheckpoint_every = 2\n[parallel]\ndp = 2\n" << zero << offload;
  std::ofstream(one) << common << "micro_batch = 4\n" << offload;
  const std::string ck2 = (d / "ck-z2").string(), log2 = (d / "z2.jsonl").string(), log1 = (d / "z1.jsonl").string();
  CliRun a = run("train --profile " + z2.string() + " --ranks 2 --checkpoint-dir " + ck2 + " --log-json " + log2 +
                 " --export-init " + (d / "init2.safetensors").string() + " --export " + (d / "end2.safetensors").string());
  ASSERT_EQ(a.exit_code, 0) << a.out;
  EXPECT_NE(a.out.find("checkpoint " + ck2 + "/step-00000004"), std::string::npos) << a.out;
  CliRun b = run("train --profile " + one.string() + " --log-json " + log1 + " --export-init " +
                 (d / "init1.safetensors").string());
  ASSERT_EQ(b.exit_code, 0) << b.out;
  const std::vector<double> l2 = logged_losses(log2), l1 = logged_losses(log1);
  ASSERT_EQ(l2.size(), 4u);
  ASSERT_EQ(l1.size(), 4u);
  for (std::size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l2[i], l1[i], 1e-6 * l1[i]) << "step " << i + 1;
  EXPECT_EQ(file_bytes(d / "init2.safetensors"), file_bytes(d / "init1.safetensors"))
      << "the gathered initial weights differ";

  // One rank resumes the two ranks' checkpoint of step 2 and trains steps 3 and 4 as they did.
  const std::string log_r = (d / "resumed.jsonl").string();
  CliRun r = run("train --profile " + one.string() + " --resume " + ck2 + "/step-00000002 --log-json " + log_r);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const std::vector<double> lr = logged_losses(log_r);
  ASSERT_EQ(lr.size(), 2u) << r.out;
  for (std::size_t i = 0; i < 2; ++i) EXPECT_NEAR(lr[i], l2[2 + i], 1e-6 * l2[2 + i]) << "step " << 3 + i;

  if (run_shell("command -v mpirun").exit_code != 0) return;
  const std::string logm = (d / "z2-mpi.jsonl").string();
  CliRun m = run_shell("mpirun --allow-run-as-root --oversubscribe -x ASAN_OPTIONS=detect_leaks=0 -n 2 " +
                       std::string(STRATA_CLI_PATH) + " train --profile " + z2.string() + " --checkpoint-dir " +
                       (d / "ck-mpi").string() + " --log-json " + logm + " --export " + (d / "end-mpi.safetensors").string());
  ASSERT_EQ(m.exit_code, 0) << m.out;
  const std::vector<double> lm = logged_losses(logm);
  ASSERT_EQ(lm.size(), 4u);
  for (std::size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(lm[i], l2[i], 1e-6 * l2[i]) << "mpi step " << i + 1;
  // A two-rank sum is exact in either order: the processes end with the threads' weights.
  EXPECT_EQ(file_bytes(d / "end-mpi.safetensors"), file_bytes(d / "end2.safetensors")) << "the gathered final weights differ";
}

TEST(TrainCmd, ZeroStageTwoWithNvmeStateTrainsChecksAndResumesAcrossWorldSizes) {
  expect_zero_trains_checks_and_resumes("[zero]\nstage = 2\n");
}

// Stage 3 with the parameter shards in host memory: each Linear gathered per use.
TEST(TrainCmd, ZeroStageThreeWithHostParametersTrainsChecksAndResumesAcrossWorldSizes) {
  expect_zero_trains_checks_and_resumes(
      "[zero]\nstage = 3\nparam_persistence_threshold = 256\nmax_live_parameters = 20000\n"
      "[offload.param]\ndevice = \"cpu\"\n");
}

// Stage 3 with the parameter shards in NVMe swap, read ahead into eight 64 KiB buffers.
TEST(TrainCmd, ZeroStageThreeWithNvmeParametersTrainsChecksAndResumesAcrossWorldSizes) {
  const std::string swap = (dir() / "param-swap").string();
  std::filesystem::create_directories(swap);
  expect_zero_trains_checks_and_resumes(
      "[zero]\nstage = 3\nparam_persistence_threshold = 256\nmax_live_parameters = 20000\n"
      "prefetch_bucket_size = \"32KiB\"\n[offload.param]\ndevice = \"nvme\"\nnvme_path = [\"" + swap +
      "\"]\nbuffer_count = 8\nbuffer_size = \"64KiB\"\nmax_in_cpu = \"96KiB\"\n");
}

TEST(TrainCmd, UnderMpirunTheGridIsCheckedAndOnlyRankZeroReports) {
  if (run_shell("command -v mpirun").exit_code != 0) GTEST_SKIP() << "mpirun is not installed";
  CliRun r = run_shell("mpirun --allow-run-as-root --oversubscribe -n 2 " + std::string(STRATA_CLI_PATH) +
                       " train --profile " + tiny_profile(1));
  EXPECT_NE(r.exit_code, 0) << r.out;
  const std::string msg = "the MPI job has 2 ranks but the grid dp 1 x tp 1 x pp 1 needs 1";
  const auto first = r.out.find(msg);
  ASSERT_NE(first, std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(msg, first + 1), std::string::npos) << "printed by one rank only:\n" << r.out;
}

// On a terminal (a pseudo-terminal from util-linux `script`): the progress bar, redrawn in
// place with step, loss, tokens/s and ETA.
TEST(TrainCmd, ShowsAProgressBarOnATerminal) {
  if (std::system("script --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "util-linux script is not installed";
  const std::string inner = std::string(STRATA_CLI_PATH) + " train --profile " + tiny_profile(3);
  CliRun r = run_shell("script -qfec '" + inner + "' /dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find('\r'), std::string::npos) << "the bar is redrawn in place:\n" << r.out;
  EXPECT_NE(r.out.find("] step 3/3  loss "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" tok/s  ETA "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("step 3/3 loss "), std::string::npos) << "no plain lines on a terminal:\n" << r.out;
}

// `strata bench offload` end to end on the tiny model (skipped when the bench commands are not
// built): JSON lines with the environment, each round and the summary (the step, the ceiling
// and the ratio), and usage errors.
TEST(BenchOffload, ReportsStepAgainstItsCeilingAsJson) {
  if (run("--help").out.find("bench offload") == std::string::npos) GTEST_SKIP() << "bench commands not built";
  const auto swap = dir() / "bench-swap";
  std::filesystem::create_directories(swap);
  for (const std::string extra : {"", " --delayed-update"}) {
    SCOPED_TRACE("flags:" + extra);
    const std::string cmd = "bench offload --model tiny --micro-batch 2 --steps 1 --rounds 2 --buffer-size 64KiB"
                            " --engine posix --direct=false --json --nvme-path " + swap.string() + extra;
    const CliRun run_out = strata::run_command(std::string(STRATA_CLI_PATH) + " " + cmd + " 2>/dev/null");
    const std::string& out = run_out.out;
    ASSERT_EQ(run_out.exit_code, 0) << out;
    std::vector<nlohmann::json> lines;
    std::istringstream text(out);
    for (std::string line; std::getline(text, line);) lines.push_back(nlohmann::json::parse(line));
    ASSERT_EQ(lines.size(), 1u + 2 + 1) << out;  // env, one result per round, summary
    EXPECT_EQ(lines.front().at("record"), "env");
    EXPECT_EQ(lines.front().at("delayed_update").get<bool>(), !extra.empty());
    EXPECT_EQ(lines[1].at("record"), "result");
    EXPECT_GT(lines[1].at("ratio").get<double>(), 0.0);
    const auto& r = lines.back();
    EXPECT_EQ(r.at("record"), "summary");
    EXPECT_FALSE(r.at("tiers").empty());
    EXPECT_GT(r.at("step_s").get<double>(), 0.0);
    EXPECT_GT(r.at("compute_s").get<double>(), 0.0);
    EXPECT_GT(r.at("nvme_read_bytes_per_step").get<double>(), 0.0) << "the tiny state spans more chunks than buffers";
    EXPECT_GT(r.at("nvme_write_bytes_per_step").get<double>(), 0.0);
    EXPECT_EQ(r.at("ratio_per_round").size(), 2u);
    EXPECT_GT(r.at("ratio").get<double>(), 0.0);
    EXPECT_GT(r.at("forward_backward_under_swap_traffic_s").get<double>(), 0.0);
    EXPECT_EQ(r.at("ratio_to_compute_under_swap_traffic_per_round").size(), 2u);
    EXPECT_TRUE(std::filesystem::is_empty(swap)) << "the swap files must be removed";
  }

  CliRun bad = run("bench offload --steps 0");
  EXPECT_EQ(bad.exit_code, 2) << bad.out;
  CliRun model = run("bench offload --model no-such-model");
  EXPECT_EQ(model.exit_code, 2) << model.out;
}

}  // namespace
