// Runs the built `strata bench nvme` on a small file: the JSON lines it prints, the profile
// it emits (accepted by Profile::load and by `strata profile check`), fio comparison when
// fio is installed, cleanup of its file, and usage errors with exit code 2.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "nvme/nvme_test_util.h"
#include "strata/profile.h"
#include "core/run_command.h"

namespace strata::nvme {
namespace {

using CliRun = strata::CommandRun;

CliRun run(const std::string& args, bool with_stderr = true) {
  std::string cmd = std::string(STRATA_CLI_PATH) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  return strata::run_command(cmd);
}

bool bench_built() { return run("--help").out.find("bench nvme") != std::string::npos; }

bool fio_installed() { return std::system("fio --version >/dev/null 2>&1") == 0; }

std::vector<nlohmann::json> json_lines(const std::string& text) {
  std::vector<nlohmann::json> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text.size() : nl + 1;
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
    out.push_back(j);
  }
  return out;
}

TEST(BenchNvmeCli, JsonLinesProfileAndCleanup) {
  if (!bench_built()) GTEST_SKIP() << "strata was built without the bench commands";
  testing::ScratchDir dir("bench");
  const bool direct = testing::supports_direct(dir.path());
  const std::string profile = dir.path() + "/best.toml";
  const bool fio = fio_installed();
  CliRun r = run("bench nvme --path " + dir.path() + " --size 8MiB --engines io_uring,posix --block-sizes 128KiB,1MiB" +
                     " --queue-depths 1,4 --threads 1 --max-seconds 1 --repeat 1 --json --emit-profile " + profile +
                     (direct ? "" : " --buffered") + (fio ? " --compare-fio" : ""),
                 false);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::vector<nlohmann::json> lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 1u + 2 * 2 * 2 * 2 + 1) << r.out;  // environment, 8 rows x 2 modes, best
  EXPECT_EQ(lines.front()["kind"], "environment");
  EXPECT_FALSE(lines.front()["file_system"].get<std::string>().empty());
  EXPECT_EQ(lines.front()["direct"], direct);
  int reads = 0;
  for (std::size_t i = 1; i + 1 < lines.size(); ++i) {
    const nlohmann::json& m = lines[i];
    EXPECT_EQ(m["kind"], "measurement");
    ASSERT_FALSE(m.contains("error")) << m.dump();
    EXPECT_GT(m["gbps"].get<double>(), 0.0) << m.dump();
    EXPECT_EQ(m["bytes"].get<std::uint64_t>() % m["block_size"].get<std::uint64_t>(), 0u);
    reads += m["mode"] == "read" ? 1 : 0;
    if (fio) {
      const double ratio = m["ratio"].get<double>();
      EXPECT_NEAR(ratio, m["runs_gbps"][0].get<double>() / m["fio_runs_gbps"][0].get<double>(), 1e-6 * ratio);
    } else {
      EXPECT_FALSE(m.contains("ratio"));
    }
  }
  EXPECT_EQ(reads, 8);
  const nlohmann::json& best = lines.back();
  EXPECT_EQ(best["kind"], "best");

  auto loaded = Profile::load(profile);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->nvme.engine, best["engine"].get<std::string>());
  EXPECT_EQ(loaded->nvme.block_size, best["block_size"].get<std::uint64_t>());
  EXPECT_EQ(loaded->nvme.queue_depth, best["queue_depth"].get<int>());
  EXPECT_EQ(loaded->nvme.direct, direct);
  CliRun check = run("profile check " + profile);
  EXPECT_EQ(check.exit_code, 0) << check.out;

  // Only the emitted profile is left behind.
  std::vector<std::string> left;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) left.push_back(e.path().filename());
  EXPECT_EQ(left, std::vector<std::string>{"best.toml"});
}

TEST(BenchNvmeCli, TableNamesTheEnvironmentAndTheBestSetting) {
  if (!bench_built()) GTEST_SKIP() << "strata was built without the bench commands";
  testing::ScratchDir dir("bench");
  const bool direct = testing::supports_direct(dir.path());
  CliRun r = run("bench nvme --path " + dir.path() +
                 " --size 4MiB --engines libaio --block-sizes 1MiB --queue-depths 2 --threads 1,2 --mode read" +
                 " --max-seconds 1" + (direct ? "" : " --buffered"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  for (const char* want : {"file system:", "device:", "kernel:", "build:", "read GB/s", "best setting: engine libaio"}) {
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  }
  EXPECT_EQ(r.out.find("write GB/s"), std::string::npos) << "--mode read measures reads only";
}

// --mode mixed keeps reads and writes in flight together and counts both; with fio, fio runs
// --rw=rw beside it and its read and write bandwidths are summed.
TEST(BenchNvmeCli, MixedModeMovesReadsAndWritesAtOnce) {
  if (!bench_built()) GTEST_SKIP() << "strata was built without the bench commands";
  testing::ScratchDir dir("bench");
  const bool direct = testing::supports_direct(dir.path());
  const bool fio = fio_installed();
  CliRun r = run("bench nvme --path " + dir.path() + " --size 8MiB --engines io_uring --block-sizes 128KiB" +
                     " --queue-depths 4 --threads 1 --max-seconds 1 --repeat 1 --json --mode all" +
                     (direct ? "" : " --buffered") + (fio ? " --compare-fio" : ""),
                 false);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::vector<nlohmann::json> lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 1u + 3 + 1) << r.out;  // environment, read, write, mixed, best
  EXPECT_EQ(lines[1]["mode"], "read");
  EXPECT_EQ(lines[2]["mode"], "write");
  EXPECT_EQ(lines[3]["mode"], "mixed");
  ASSERT_FALSE(lines[3].contains("error")) << lines[3].dump();
  EXPECT_GT(lines[3]["gbps"].get<double>(), 0.0);
  if (fio) {
    EXPECT_GT(lines[3]["fio_gbps"].get<double>(), 0.0);
  }
  EXPECT_GT(lines.back()["mixed_gbps"].get<double>(), 0.0) << lines.back().dump();
}

TEST(BenchNvmeCli, UsageErrorsExitWithTwo) {
  if (!bench_built()) GTEST_SKIP() << "strata was built without the bench commands";
  testing::ScratchDir dir("bench");
  const std::string p = " --path " + dir.path();
  struct Case {
    std::string args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"", "--path"},
      {" --path /nonexistent-dir", "not a directory"},
      {p + " --engines spdk", "\"io_uring\", \"libaio\", \"posix\""},
      {p + " --block-sizes 1000", "nvme.block_size"},
      {p + " --block-sizes 12QB", "--block-sizes"},
      {p + " --queue-depths 0", "--queue-depths"},
      {p + " --threads x", "--threads"},
      {p + " --mode sideways", "--mode"},
      {p + " --size 1KiB --block-sizes 1MiB", "smaller than one"},
      {p + " --no-such-option", "no-such-option"},
      {p + " --repeat 0", "--repeat"},
  };
  for (const Case& c : cases) {
    CliRun r = run("bench nvme" + c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.says), std::string::npos) << c.args << "\n" << r.out;
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace strata::nvme
