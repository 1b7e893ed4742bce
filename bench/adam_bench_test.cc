// Runs the built `strata bench adam` on small chunks: its JSON document, every runnable
// path reported against the ceiling, and usage errors with exit code 2.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "strata/optimizer.h"

namespace {

struct CliRun {
  int exit_code = -1;
  std::string out;  // stdout
  std::string all;  // stdout and stderr
};

CliRun run(const std::string& args, bool with_stderr) {
  std::string cmd = std::string(STRATA_CLI_PATH) + " bench adam " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  CliRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.all = r.out;
  return r;
}

TEST(AdamBench, JsonReportsEveryRunnablePathAgainstTheCeiling) {
  for (const char* config : {"--grad-dtype fp32 --param-out none", "--grad-dtype bf16 --param-out bf16",
                             "--grad-dtype fp16 --param-out fp16"}) {
    CliRun r = run(std::string("--params 96K --threads 1,2 --repeat 2 --json ") + config, false);
    ASSERT_EQ(r.exit_code, 0) << config << "\n" << r.out;
    nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.out;
    EXPECT_EQ(j["bench"], "adam");
    EXPECT_EQ(j["params"], 96 * 1024);
    const bool copy = std::string(config).find("none") == std::string::npos;
    const bool half_grad = std::string(config).find("fp32") == std::string::npos;
    EXPECT_EQ(j["bytes_per_param"], 24 + (half_grad ? 2 : 4) + (copy ? 2 : 0)) << config;
    ASSERT_EQ(j["results"].size(), 2u);
    const std::vector<std::string> supported = strata::cpu_adam_isas_supported();
    for (const auto& t : j["results"]) {
      EXPECT_GT(t["ceiling"]["best"].get<double>(), 0.0);
      ASSERT_EQ(t["paths"].size(), supported.size());
      for (std::size_t k = 0; k < supported.size(); ++k) {
        EXPECT_EQ(t["paths"][k]["isa"], supported[k]);
        const double ratio = t["paths"][k]["ratio_best"].get<double>();
        EXPECT_GT(ratio, 0.0);
        EXPECT_NEAR(ratio, t["paths"][k]["best"].get<double>() / t["ceiling"]["best"].get<double>(), 1e-3 * ratio);
      }
    }
    EXPECT_EQ(j["skipped"].size(), 3 - supported.size());
  }
}

TEST(AdamBench, TableNamesTheEnvironmentAndTheRatio) {
  CliRun r = run("--params 64K --threads 1 --repeat 1 --isa scalar", true);
  ASSERT_EQ(r.exit_code, 0) << r.all;
  for (const char* want : {"cpu:", "build:", "ceiling", "scalar", "ratio"}) {
    EXPECT_NE(r.all.find(want), std::string::npos) << want << "\n" << r.all;
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
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.all;
    EXPECT_NE(r.all.find(want), std::string::npos) << args << "\n" << r.all;
  }
}

}  // namespace
