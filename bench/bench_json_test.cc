// Runs every `strata bench` subcommand with --json at its smallest sizes: stdout is JSON Lines
// and nothing else, every line names its bench and record, the first is the environment and
// the last the summary with a numeric ratio (bench_json.h). Also `strata help bench`, which
// documents that shape, and the group's usage errors.
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/remove_at_exit.h"
#include "core/run_command.h"

namespace {

using CliRun = strata::CommandRun;

CliRun run(const std::string& args, bool with_stderr) {
  const std::string cmd = std::string(STRATA_CLI_PATH) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null") + " </dev/null";
  return strata::run_command(cmd);
}

bool bench_built() { return run("--help", true).out.find("bench adam") != std::string::npos; }

std::filesystem::path scratch(const std::string& name) {
  const char* base = std::getenv("STRATA_TEST_TMPDIR");
  const auto root = std::filesystem::path(base ? base : std::filesystem::temp_directory_path().string()) /
                    ("bench_json_test." + std::to_string(::getpid()));
  static const bool registered = [&] {
    std::filesystem::create_directories(root);
    strata::remove_at_exit(root);
    return true;
  }();
  (void)registered;
  const auto d = root / name;
  std::filesystem::create_directories(d);
  return d;
}

// Every subcommand at sizes that keep each run to a few seconds on two shared cores.
struct Case {
  std::string bench;
  std::string args;
  bool may_miss_bar;  // exit 1 with a full report means a bar was not met
  bool file_system;   // touches a file system, so its env line names it
};

std::vector<Case> cases() {
  const std::string tiny = (scratch("train") / "tiny.toml").string();
  std::ofstream(tiny) << "[memory]\ndevice_budget = \"256MiB\"\n[train]\nmodel = \"tiny\"\nmicro_batch = 1\n";
  return {
      {"adam", "--params 64K --threads 1 --repeat 1", false, false},
      {"comm", "--ranks 2 --min-size 256KiB --max-size 1MiB --rounds 1 --min-time 0.002", false, false},
      {"dp", "--model tiny --micro-batch 1 --steps 1 --rounds 1 --bucket-size 16KiB --delay-ms 1", false, false},
      {"zero3", "--model tiny --micro-batch 1 --steps 2 --rounds 1 --delay-ms 1 --persistence 256 --max-live 20000"
                " --prefetch 64KiB --params cpu --optimizer cpu",
       false, false},
      {"zero3", "--model tiny --micro-batch 1 --steps 2 --rounds 1 --delay-ms 1 --persistence 256 --max-live 20000"
                " --prefetch 32KiB --params nvme --optimizer nvme --optimizer-buffer-size 64KiB --param-buffers 8"
                " --param-buffer-size 64KiB --max-in-cpu 96KiB --nvme-path " + scratch("zero3").string(),
       false, false},
      {"tp", "--model tiny --n-head 4 --micro-batch 1 --steps 1 --sequence-parallel", false, false},
      {"pp", "--model tiny --n-layer 4 --micro-batch 1 --micro-batches 4 --steps 1", false, false},
      {"device", "--copy-size 1MiB --models tiny --dtypes fp32 --micro-batch 1 --min-time 0.01", false, false},
      {"nvme", "--path " + scratch("nvme").string() +
                   " --size 1MiB --engines posix --block-sizes 1MiB --queue-depths 1 --threads 1 --max-seconds 1 --buffered",
       false, true},
      {"offload", "--model tiny --micro-batch 1 --steps 1 --rounds 1 --buffer-size 64KiB --engine posix --direct=false"
                  " --nvme-path " + scratch("offload").string(),
       false, true},
      {"tiers", "--home both --layers 4 --layer-size 64KiB --steps 2 --budget-layers 3 --lookahead 1 --repeats 1"
                " --compute-ms 0.2 --engine posix --buffered --buffer-count 2 --buffer-size 64KiB --path " +
                    scratch("tiers").string(),
       true, true},
      {"train", "--profile " + tiny + " --steps 1 --warmup 0", false, false},
  };
}

TEST(BenchJson, EverySubcommandWritesEnvResultsAndASummary) {
  if (!bench_built()) GTEST_SKIP() << "strata was built without the bench commands";
  for (const Case& c : cases()) {
    SCOPED_TRACE("bench " + c.bench + " " + c.args);
    const CliRun r = run("bench " + c.bench + " " + c.args + " --json", false);
    if (c.may_miss_bar) {
      ASSERT_TRUE(r.exit_code == 0 || r.exit_code == 1) << r.exit_code << "\n" << r.out;
    } else {
      ASSERT_EQ(r.exit_code, 0) << r.out;
    }
    ASSERT_FALSE(r.out.empty());
    ASSERT_EQ(r.out.back(), '\n') << "every line ends with a newline";
    std::vector<nlohmann::json> lines;
    std::size_t pos = 0;
    while (pos < r.out.size()) {
      const std::size_t nl = r.out.find('\n', pos);
      const std::string line = r.out.substr(pos, nl - pos);
      pos = nl + 1;
      nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      ASSERT_FALSE(j.is_discarded()) << "not a JSON line: '" << line << "'";
      ASSERT_TRUE(j.is_object()) << line;
      EXPECT_EQ(j.value("bench", ""), c.bench) << line;
      ASSERT_TRUE(j.contains("record")) << line;
      lines.push_back(std::move(j));
    }
    ASSERT_GE(lines.size(), 3u) << "env, at least one result, summary:\n" << r.out;

    const nlohmann::json& env = lines.front();
    EXPECT_EQ(env["record"], "env");
    for (const char* key : {"build", "cpu", "logical_cpus", "openmp_threads", "kernel", "load_1min"}) {
      EXPECT_TRUE(env.contains(key)) << key << " missing from " << env.dump();
    }
    EXPECT_FALSE(env["build"].get<std::string>().empty());
    if (c.file_system) {
      EXPECT_FALSE(env.value("file_system", "").empty()) << env.dump();
    }
    for (std::size_t i = 1; i + 1 < lines.size(); ++i) {
      const nlohmann::json& m = lines[i];
      EXPECT_EQ(m["record"], "result") << m.dump();
      // A ratio always comes with the ceiling it is against.
      EXPECT_EQ(m.contains("ratio"), m.contains("ceiling")) << m.dump();
      if (m.contains("ratio")) {
        EXPECT_TRUE(m["ratio"].is_number()) << m.dump();
      }
    }
    const nlohmann::json& summary = lines.back();
    EXPECT_EQ(summary["record"], "summary");
    ASSERT_TRUE(summary.contains("ratio")) << summary.dump();
    ASSERT_TRUE(summary["ratio"].is_number()) << summary.dump();
    EXPECT_GE(summary["ratio"].get<double>(), 0.0) << summary.dump();
    ASSERT_TRUE(summary.contains("ceiling")) << summary.dump();
    EXPECT_FALSE(summary["ceiling"].get<std::string>().empty()) << summary.dump();
  }
}

TEST(BenchJson, HelpBenchDocumentsTheShape) {
  if (!bench_built()) GTEST_SKIP() << "strata was built without the bench commands";
  const CliRun h = run("help bench", true);
  ASSERT_EQ(h.exit_code, 0) << h.out;
  for (const char* want : {"--json", "JSON Lines", "\"bench\"", "\"record\"", "\"env\"", "\"result\"", "\"summary\"",
                           "\"ratio\"", "\"ceiling\"", "adam", "device", "nvme", "offload", "tiers", "train"}) {
    EXPECT_NE(h.out.find(want), std::string::npos) << want << "\n" << h.out;
  }
  EXPECT_EQ(run("bench --help", true).out, h.out);
  // Every subcommand takes --json and points at that help.
  for (const char* b : {"adam", "comm", "device", "dp", "nvme", "offload", "pp", "tiers", "tp", "train", "zero3"}) {
    const CliRun sub = run(std::string("help bench ") + b, true);
    EXPECT_EQ(sub.exit_code, 0) << b << "\n" << sub.out;
    std::string words;  // the help with its line wrapping undone
    for (char ch : sub.out) {
      if (!std::isspace(static_cast<unsigned char>(ch))) words += ch;
      else if (!words.empty() && words.back() != ' ') words += ' ';
    }
    EXPECT_NE(words.find("--json print JSON Lines"), std::string::npos) << b << "\n" << sub.out;
    EXPECT_NE(words.find("strata help bench"), std::string::npos) << b << "\n" << sub.out;
  }
}

TEST(BenchJson, GroupUsageErrorsExitWith2) {
  if (!bench_built()) GTEST_SKIP() << "strata was built without the bench commands";
  const CliRun bare = run("bench", true);
  EXPECT_EQ(bare.exit_code, 2) << bare.out;
  EXPECT_NE(bare.out.find("subcommands:"), std::string::npos) << bare.out;
  const CliRun unknown = run("bench frobnicate", true);
  EXPECT_EQ(unknown.exit_code, 2) << unknown.out;
  EXPECT_NE(unknown.out.find("unknown subcommand 'frobnicate'"), std::string::npos) << unknown.out;
}

}  // namespace
