// Runs the built `strata` executable: exit codes and messages of the profile commands, usage
// errors, help and version.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
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

}  // namespace
