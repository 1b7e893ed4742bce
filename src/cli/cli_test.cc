// Runs the built `strata` executable: exit codes and messages of the profile commands and of
// `plan pipeline`, usage errors, help and version.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include <gtest/gtest.h>

#include "core/remove_at_exit.h"
#include "core/run_command.h"

namespace {

using CliRun = strata::CommandRun;

CliRun run(const std::string& args) {
  std::string cmd = std::string(STRATA_CLI_PATH) + " " + args + " 2>&1";
  return strata::run_command(cmd);
}

std::filesystem::path temp_file(const std::string& name, const std::string& content) {
  auto dir = std::filesystem::temp_directory_path() / ("strata_cli_test_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  strata::remove_at_exit(dir);

  auto p = dir / name;
  std::ofstream(p) << content;
  return p;
}

TEST(Cli, VersionAndHelp) {
  CliRun v = run("--version");
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_EQ(v.out.rfind("strata ", 0), 0u) << v.out;
  CliRun h = run("--help");
  EXPECT_EQ(h.exit_code, 0);
  EXPECT_NE(h.out.find("profile check"), std::string::npos) << h.out;
  CliRun hc = run("help profile check");
  EXPECT_EQ(hc.exit_code, 0);
  EXPECT_NE(hc.out.find("FILE"), std::string::npos) << hc.out;
  EXPECT_EQ(run("").exit_code, 2);
}

TEST(Cli, UsageErrors) {
  CliRun u = run("frobnicate");
  EXPECT_EQ(u.exit_code, 2);
  EXPECT_NE(u.out.find("unknown command 'frobnicate'"), std::string::npos) << u.out;
  CliRun o = run("profile check --no-such-option");
  EXPECT_EQ(o.exit_code, 2);
  EXPECT_NE(o.out.find("no-such-option"), std::string::npos) << o.out;
  CliRun m = run("profile check");
  EXPECT_EQ(m.exit_code, 2);
  EXPECT_NE(m.out.find("missing FILE"), std::string::npos) << m.out;
  EXPECT_EQ(run("help frobnicate").exit_code, 2);
}

TEST(Cli, DefaultsPassCheck) {
  CliRun d = run("profile defaults");
  ASSERT_EQ(d.exit_code, 0);
  auto f = temp_file("defaults.toml", d.out);
  CliRun c = run("profile check " + f.string());
  EXPECT_EQ(c.exit_code, 0) << c.out;
  EXPECT_NE(c.out.find("[offload.optimizer]"), std::string::npos);
  // The normalised output is itself a valid profile, in TOML and in JSON.
  auto g = temp_file("normalised.toml", c.out);
  CliRun c2 = run("profile check " + g.string());
  EXPECT_EQ(c2.exit_code, 0) << c2.out;
  EXPECT_EQ(c2.out, c.out);
  CliRun j = run("profile check --json " + f.string());
  ASSERT_EQ(j.exit_code, 0) << j.out;
  auto jf = temp_file("normalised.json", j.out);
  CliRun c3 = run("profile check " + jf.string());
  EXPECT_EQ(c3.exit_code, 0) << c3.out;
  EXPECT_EQ(c3.out, c.out);
}

TEST(Cli, ShippedProfilesPassCheck) {
  for (const auto& entry : std::filesystem::directory_iterator(STRATA_SOURCE_DIR "/profiles")) {
    CliRun c = run("profile check " + entry.path().string());
    EXPECT_EQ(c.exit_code, 0) << entry.path() << ": " << c.out;
  }
}

TEST(Cli, BadProfileExitsTwoWithTheCause) {
  auto f = temp_file("bad.toml", "[nvme]\nqueue_depht = 8\n");
  CliRun c = run("profile check " + f.string());
  EXPECT_EQ(c.exit_code, 2);
  EXPECT_NE(c.out.find("bad.toml:2:15: nvme.queue_depht: unknown key; did you mean 'nvme.queue_depth'?"), std::string::npos)
      << c.out;
  CliRun missing = run("profile check /nonexistent/p.toml");
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.out.find("/nonexistent/p.toml"), std::string::npos) << missing.out;
}

// F = B = W = 1: 1F1B's whole backward costs 2, so each stage idles (p - 1) 3 / ((m + p - 1) 3),
// 3/11 with p = 4 and m = 8.
TEST(Cli, PlanPipelinePrintsTheBubble) {
  CliRun c = run("plan pipeline --schedule 1f1b --pp 4 --micro-batches 8");
  ASSERT_EQ(c.exit_code, 0) << c.out;
  EXPECT_NE(c.out.find("schedule 1f1b, pp 4, micro-batches 8, virtual stages 1; costs F 1, B 1, W 1"),
            std::string::npos) << c.out;
  EXPECT_NE(c.out.find("a whole backward costs B + W = 2"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("  stage 3  ...FBBFBBFBBFBBFBBFBBFBBFBB......\n"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("  stage 0  F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7\n"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("stage 0: idle 0.2727, peak in-flight activations 4 (4.00 micro-batches)"), std::string::npos)
      << c.out;
  EXPECT_NE(c.out.find("stage 3: idle 0.2727, peak in-flight activations 1 (1.00 micro-batches)"), std::string::npos)
      << c.out;
  EXPECT_NE(c.out.find("bubble fraction: 0.2727\n"), std::string::npos) << c.out;
  // ZB-H1 at the same shape idles a third as long: 3 of 27 units.
  CliRun z = run("plan pipeline --schedule zb-h1 --pp 4 --micro-batches 8");
  ASSERT_EQ(z.exit_code, 0) << z.out;
  EXPECT_NE(z.out.find("makespan 27\n"), std::string::npos) << z.out;
  EXPECT_NE(z.out.find("bubble fraction: 0.1111\n"), std::string::npos) << z.out;
  // Interleaved names the chunk of each unit.
  CliRun i = run("plan pipeline --schedule interleaved --pp 2 --micro-batches 4 --virtual-stages 2");
  ASSERT_EQ(i.exit_code, 0) << i.out;
  EXPECT_NE(i.out.find("  stage 1  F0.0 F1.0 F0.1 B0.1"), std::string::npos) << i.out;
}

TEST(Cli, PlanPipelineJson) {
  CliRun c = run("plan pipeline --schedule 1f1b --pp 4 --micro-batches 8 --json");
  ASSERT_EQ(c.exit_code, 0) << c.out;
  const nlohmann::json j = nlohmann::json::parse(c.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << c.out;
  EXPECT_EQ(j["schedule"], "1f1b");
  EXPECT_EQ(j["pp"], 4);
  EXPECT_EQ(j["micro_batches"], 8);
  EXPECT_EQ(j["virtual_stages"], 1);
  EXPECT_EQ(j["costs"]["weight"], 1.0);
  EXPECT_NEAR(j["bubble_fraction"].get<double>(), 3.0 / 11.0, 1e-12);
  EXPECT_EQ(j["makespan"], 33.0);
  ASSERT_EQ(j["stages"].size(), 4u);
  for (int r = 0; r < 4; ++r) {
    const nlohmann::json& st = j["stages"][r];
    EXPECT_EQ(st["stage"], r);
    EXPECT_NEAR(st["idle_fraction"].get<double>(), 3.0 / 11.0, 1e-12);
    EXPECT_EQ(st["peak_in_flight"], 4 - r);
    EXPECT_EQ(st["peak_in_flight_micro_batches"], 4.0 - r);
    EXPECT_EQ(st["instructions"].size(), 16u);
    ASSERT_EQ(st["busy"].size(), 16u);
    EXPECT_EQ(st["busy"][0], nlohmann::json::parse("[" + std::to_string(r) + ".0, " + std::to_string(r + 1) +
                                                   ".0, \"F\", 0, 0]"));
  }
  EXPECT_EQ(j["stages"][3]["instructions"][1], "B0");
  EXPECT_EQ(j["stages"][3]["busy"][1][1], 6.0);  // its whole backward: B + W = 2 units, from 4
}

TEST(Cli, PlanPipelineUsageErrors) {
  struct Bad {
    const char* args;
    const char* needle;
  };
  const Bad bad[] = {
      {"--schedule zb --pp 2 --micro-batches 4", "--schedule: unknown pipeline schedule 'zb'; known: gpipe, 1f1b"},
      {"--pp 2 --micro-batches 4", "missing --schedule"},
      {"--schedule 1f1b --micro-batches 4", "missing --pp"},
      {"--schedule 1f1b --pp two --micro-batches 4", "--pp: 'two' is not an integer"},
      {"--schedule 1f1b --pp 0 --micro-batches 4", "--pp: must be at least 1"},
      {"--schedule 1f1b --pp 4 --micro-batches 2", "--micro-batches"},
      {"--schedule 1f1b --pp 2 --micro-batches 4 --virtual-stages 2", "--virtual-stages"},
      {"--schedule 1f1b --pp 2 --micro-batches 4 --forward-cost -1", "--forward-cost: '-1' is not a non-negative"},
      {"--schedule 1f1b --pp 2 --micro-batches 4 --no-such-option", "no-such-option"},
  };
  for (const Bad& b : bad) {
    CliRun c = run(std::string("plan pipeline ") + b.args);
    EXPECT_EQ(c.exit_code, 2) << b.args << ": " << c.out;
    EXPECT_NE(c.out.find(b.needle), std::string::npos) << b.args << ": " << c.out;
  }
}

}  // namespace
