// Runs the built `strata bench adam` on small chunks: its JSON lines, every runnable path
// reported against the ceiling, and usage errors with exit code 2.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "strata/optimizer.h"
#include "core/run_command.h"

namespace {

using CliRun = strata::CommandRun;

CliRun run(const std::string& args, bool with_stderr) {
  return strata::run_command(std::string(STRATA_CLI_PATH) + " bench adam " + args + (with_stderr ? " 2>&1" : " 2>/dev/null"));
}

std::vector<nlohmann::json> json_lines(const std::string& text) {
  std::vector<nlohmann::json> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t nl = text.find('\n', pos);
    const std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text.size() : nl + 1;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
    out.push_back(j);
  }
  return out;
}

TEST(AdamBench, JsonReportsEveryRunnablePathAgainstTheCeiling) {
  for (const char* config : {"--grad-dtype fp32 --param-out none", "--grad-dtype bf16 --param-out bf16",
                             "--grad-dtype fp16 --param-out fp16"}) {
    CliRun r = run(std::string("--params 96K --threads 1,2 --repeat 2 --json ") + config, false);
    ASSERT_EQ(r.exit_code, 0) << config << "\n" << r.out;
    const std::vector<nlohmann::json> lines = json_lines(r.out);
    const std::vector<std::string> supported = strata::cpu_adam_isas_supported();
    ASSERT_EQ(lines.size(), 1 + 2 * supported.size() + 1) << r.out;  // env, threads x paths, summary
    for (const auto& line : lines) EXPECT_EQ(line["bench"], "adam");
    const nlohmann::json& env = lines.front();
    EXPECT_EQ(env["record"], "env");
    EXPECT_EQ(env["params"], 96 * 1024);
    const bool copy = std::string(config).find("none") == std::string::npos;
    const bool half_grad = std::string(config).find("fp32") == std::string::npos;
    EXPECT_EQ(env["bytes_per_param"], 24 + (half_grad ? 2 : 4) + (copy ? 2 : 0)) << config;
    EXPECT_EQ(env["skipped"].size(), 3 - supported.size());
    for (std::size_t i = 1; i + 1 < lines.size(); ++i) {
      const nlohmann::json& m = lines[i];
      EXPECT_EQ(m["record"], "result");
      EXPECT_EQ(m["threads"], i <= supported.size() ? 1 : 2);
      EXPECT_EQ(m["isa"], supported[(i - 1) % supported.size()]);
      EXPECT_GT(m["ceiling_best"].get<double>(), 0.0);
      EXPECT_FALSE(m["ceiling"].get<std::string>().empty());
      const double ratio = m["ratio_best"].get<double>();
      EXPECT_GT(ratio, 0.0);
      EXPECT_NEAR(ratio, m["best"].get<double>() / m["ceiling_best"].get<double>(), 1e-3 * ratio);
      EXPECT_EQ(m["ratio"], m["ratio_median"]);
    }
    const nlohmann::json& summary = lines.back();
    EXPECT_EQ(summary["record"], "summary");
    EXPECT_EQ(summary["threads"], 2);
    EXPECT_GT(summary["ratio"].get<double>(), 0.0);
    EXPECT_GT(summary["params_per_s"].get<double>(), 0.0);
  }
}

TEST(AdamBench, TableNamesTheEnvironmentAndTheRatio) {
  CliRun r = run("--params 64K --threads 1 --repeat 1 --isa scalar", true);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  for (const char* want : {"cpu:", "build:", "ceiling", "scalar", "ratio"}) {
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  }
}

TEST(AdamBench, UsageErrorsExitWith2AndSayWhy) {
  const std::pair<const char*, const char*> cases[] = {
      {"--params 0", "--params"},          {"--params 12X", "--params"},       {"--threads 0", "--threads"},
      {"--threads 1,x", "--threads"},      {"--grad-dtype fp8", "--grad-dtype"}, {"--param-out fp32", "--param-out"},
      {"--isa sse9", "--isa"},             {"--repeat 0", "--repeat"},         {"--no-such-flag", "no-such-flag"},
      {"--params 64G", "RAM"},
  };
  for (const auto& [args, want] : cases) {
    CliRun r = run(args, true);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.out;
    EXPECT_NE(r.out.find(want), std::string::npos) << args << "\n" << r.out;
  }
}

}  // namespace
