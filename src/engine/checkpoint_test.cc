// Checkpoints: resuming gives the same next steps as the uninterrupted run (bit for bit) with
// the optimizer on the device, in host memory and on NVMe; a save killed with SIGKILL at random
// points leaves the previous checkpoint loadable; corrupt, truncated, incomplete and mismatched
// checkpoints are refused naming the file and the problem; a full disk while creating the swap
// files or while checkpointing gives a clear error and leaves earlier state intact.
//
// The full-disk tests mount a small tmpfs in a private mount namespace (entered before any
// thread exists); without the privilege for that they skip. The kill test re-runs this program
// as the child (CheckpointKill.Child, enabled by an environment variable).
#include "strata/checkpoint.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "strata/communicator.h"
#include "strata/units.h"

extern char** environ;

namespace strata {
namespace {

namespace fs = std::filesystem;

constexpr const char* kChildEnv = "STRATA_CHECKPOINT_CHILD_DIR";
constexpr const char* kChildRanksEnv = "STRATA_CHECKPOINT_CHILD_RANKS";  // ranks of the child's run

std::string& namespace_problem() {
  static std::string problem = "not attempted";
  return problem;
}

class PrivateMounts : public ::testing::Environment {
 public:
  void SetUp() override {
    if (::unshare(CLONE_NEWNS) != 0) {
      namespace_problem() = std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno);
      return;
    }
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      namespace_problem() = std::string("making / private: ") + std::strerror(errno);
      return;
    }
    namespace_problem().clear();
  }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new PrivateMounts);

class Tmpfs {
 public:
  Tmpfs(const std::string& dir, std::uint64_t bytes) : dir_(dir) {
    const std::string opts = "size=" + std::to_string(bytes) + ",mode=0755";
    if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = std::string("mount -t tmpfs: ") + std::strerror(errno);
    }
  }
  ~Tmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool ok() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

std::string scratch_root() {
  const char* env = std::getenv("STRATA_TEST_TMPDIR");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string("/tmp");
}

struct Scratch {
  std::string path;
  Scratch() {
    std::string tmpl = scratch_root() + "/strata-checkpoint-XXXXXX";
    char* made = ::mkdtemp(tmpl.data());
    if (made != nullptr) path = made;
  }
  ~Scratch() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
  std::string sub(const std::string& name) const {
    fs::create_directories(path + "/" + name);
    return path + "/" + name;
  }
};

Profile tiny_profile(OffloadTarget target, const std::string& swap_dir = {}) {
  auto p = Profile::from_toml_string("", "test");
  EXPECT_TRUE(p.ok()) << p.status();
  Profile out = *p;
  out.train.model = "tiny";
  EXPECT_TRUE(model_preset("tiny", &out.train.dims));
  out.train.micro_batch = 4;
  out.train.seed = 7;
  out.optimizer.lr = 1e-3;
  out.offload_optimizer.device = target;
  if (!swap_dir.empty()) out.offload_optimizer.nvme_path = {swap_dir};
  out.offload_optimizer.buffer_size = 64 * KiB;
  out.memory.host_budget = 256 * MiB;
  out.nvme.engine = "posix";
  out.nvme.direct = false;
  out.nvme.registered_buffers = false;
  out.nvme.block_size = 64 * KiB;
  return out;
}

std::unique_ptr<Device> host() {
  DeviceOptions o;
  o.capacity = 512ULL << 20;
  auto d = create_device("host", o);
  EXPECT_TRUE(d.ok()) << d.status();
  return std::move(*d);
}

const TokenDataset& licenses() {
  static const TokenDataset d = [] {
    auto r = TokenDataset::default_text();
    EXPECT_TRUE(r.ok()) << r.status();
    return *r;
  }();
  return d;
}

std::vector<double> train(Trainer& t, int steps) {
  std::vector<double> out;
  for (int i = 0; i < steps; ++i) {
    auto s = t.train_step(licenses());
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) break;
    out.push_back(s->loss);
  }
  return out;
}

std::vector<float> weights(Trainer& t) {
  std::vector<float> all;
  for (Parameter* p : t.model().parameters()) {
    std::vector<float> w(p->numel());
    EXPECT_TRUE(t.optimizer().get_master(*p, 0, w).ok());
    all.insert(all.end(), w.begin(), w.end());
  }
  return all;
}

// With `delayed` (offload.optimizer.delayed_update) a checkpoint brings the device up to the
// masters, so the uninterrupted run saves one at the same step too and goes on from it.
void resume_equivalence(OffloadTarget target, bool delayed = false) {
  Scratch s;
  ASSERT_FALSE(s.path.empty());
  const std::string swap = target == OffloadTarget::kNvme ? s.sub("swap") : "";
  Profile p = tiny_profile(target, swap);
  p.precision.dtype = DType::kF16;  // the loss scaler's state must survive as well
  p.precision.initial_scale_power = 12;
  p.precision.scale_window = 2;
  p.offload_optimizer.delayed_update = delayed;
  p.offload_optimizer.delayed_update_warmup = 2;
  auto dev = host();
  std::vector<double> straight;
  std::vector<float> straight_w;
  {
    auto t = Trainer::create(p, *dev);
    ASSERT_TRUE(t.ok()) << t.status();
    straight = train(**t, 5);
    if (delayed) {
      ASSERT_TRUE(save_checkpoint(**t, s.path + "/straight").ok());
    }
    for (double l : train(**t, 3)) straight.push_back(l);
    straight_w = weights(**t);
  }
  std::string saved;
  {
    auto t = Trainer::create(p, *dev);
    ASSERT_TRUE(t.ok()) << t.status();
    train(**t, 5);
    auto r = save_checkpoint(**t, s.path + "/ckpt");
    ASSERT_TRUE(r.ok()) << r.status();
    saved = *r;
    EXPECT_EQ(fs::path(saved).filename().string(), "step-00000005");
  }
  auto t = Trainer::create(p, *dev);
  ASSERT_TRUE(t.ok()) << t.status();
  auto l = load_checkpoint(**t, s.path + "/ckpt");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(*l, saved);
  EXPECT_EQ((*t)->steps_done(), 5);
  const std::vector<double> resumed = train(**t, 3);
  ASSERT_EQ(resumed.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(resumed[static_cast<std::size_t>(i)], straight[static_cast<std::size_t>(5 + i)]) << "step " << 6 + i;
  EXPECT_EQ(weights(**t), straight_w);
}

TEST(Checkpoint, ResumeIsBitwiseTheUninterruptedRunOnDevice) { resume_equivalence(OffloadTarget::kNone); }
TEST(Checkpoint, ResumeIsBitwiseTheUninterruptedRunOnHost) { resume_equivalence(OffloadTarget::kCpu); }
TEST(Checkpoint, ResumeIsBitwiseTheUninterruptedRunOnNvme) { resume_equivalence(OffloadTarget::kNvme); }
TEST(Checkpoint, ResumeIsBitwiseTheUninterruptedRunWithTheDelayedUpdate) {
  resume_equivalence(OffloadTarget::kNvme, /*delayed=*/true);
}

TEST(Checkpoint, DueEveryNStepsAndAtTheEnd) {
  TrainConfig tc;
  EXPECT_FALSE(checkpoint_due(tc, 10, true)) << "no directory, no checkpoint";
  tc.checkpoint_dir = "x";
  EXPECT_TRUE(checkpoint_due(tc, 10, true));
  EXPECT_FALSE(checkpoint_due(tc, 10, false));
  tc.checkpoint_every = 5;
  EXPECT_TRUE(checkpoint_due(tc, 10, false));
  EXPECT_FALSE(checkpoint_due(tc, 11, false));
}

TEST(Checkpoint, KeepsTheNewestAndIgnoresLeftoverTemporaries) {
  Scratch s;
  auto dev = host();
  auto t = Trainer::create(tiny_profile(OffloadTarget::kNone), *dev);
  ASSERT_TRUE(t.ok());
  const std::string dir = s.path + "/ckpt";
  for (int i = 0; i < 4; ++i) {
    train(**t, 1);
    ASSERT_TRUE(save_checkpoint(**t, dir, {2}).ok());
  }
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step-00000003", "step-00000004"}));
  // A temporary of a killed save is neither loaded nor kept.
  fs::create_directories(dir + "/.step-00000009.tmp-1");
  auto latest = latest_checkpoint(dir);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, dir + "/step-00000004");
  train(**t, 1);
  ASSERT_TRUE(save_checkpoint(**t, dir).ok());
  EXPECT_FALSE(fs::exists(dir + "/.step-00000009.tmp-1"));
}

class Refusal : public ::testing::Test {
 protected:
  void SetUp() override {
    dev_ = host();
    auto t = Trainer::create(tiny_profile(OffloadTarget::kNone), *dev_);
    ASSERT_TRUE(t.ok());
    train(**t, 2);
    auto r = save_checkpoint(**t, s_.path + "/ckpt");
    ASSERT_TRUE(r.ok()) << r.status();
    ckpt_ = *r;
  }
  Status load(const Profile& p) {
    auto t = Trainer::create(p, *dev_);
    EXPECT_TRUE(t.ok());
    auto r = load_checkpoint(**t, ckpt_);
    if (r.ok()) return Status::OK();
    // Nothing was changed: the trainer is still at step 0.
    EXPECT_EQ((*t)->steps_done(), 0);
    return r.status();
  }
  Status load() { return load(tiny_profile(OffloadTarget::kNone)); }
  Scratch s_;
  std::unique_ptr<Device> dev_;
  std::string ckpt_;
};

TEST_F(Refusal, FlippedByteFailsTheChecksumNamingTheFile) {
  {
    std::fstream f(ckpt_ + "/exp_avg_sq.f32", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1000);
    f.put('\x5a');
  }
  Status st = load();
  EXPECT_EQ(st.code(), StatusCode::kDataCorruption) << st;
  EXPECT_NE(st.message().find("exp_avg_sq.f32"), std::string::npos) << st;
  EXPECT_NE(st.message().find("CRC-32C"), std::string::npos) << st;
}

TEST_F(Refusal, TruncatedFileNamesBothSizes) {
  fs::resize_file(ckpt_ + "/master.f32", 4096);
  Status st = load();
  EXPECT_EQ(st.code(), StatusCode::kDataCorruption) << st;
  EXPECT_NE(st.message().find("master.f32 has 4096 bytes"), std::string::npos) << st;
}

TEST_F(Refusal, MissingOrGarbledManifest) {
  fs::remove(ckpt_ + "/exp_avg.f32");
  Status missing = load();
  EXPECT_NE(missing.message().find("exp_avg.f32 is missing"), std::string::npos) << missing;
  {
    std::ofstream f(ckpt_ + "/manifest.json", std::ios::trunc);
    f << "{\"format\": \"strata-checkpoint\", ";
  }
  Status garbled = load();
  EXPECT_EQ(garbled.code(), StatusCode::kDataCorruption) << garbled;
  EXPECT_NE(garbled.message().find("manifest.json is not valid JSON"), std::string::npos) << garbled;
  fs::remove(ckpt_ + "/manifest.json");
  Status none = load();
  EXPECT_NE(none.message().find("manifest.json"), std::string::npos) << none;
}

TEST_F(Refusal, AnotherModelOrDtypeOrOptimizerIsAMismatch) {
  Profile other = tiny_profile(OffloadTarget::kNone);
  other.train.dims.n_embd = 64;
  Status dims = load(other);
  EXPECT_EQ(dims.code(), StatusCode::kFailedPrecondition) << dims;
  EXPECT_NE(dims.message().find("model n_embd is 32 in the checkpoint and 64 in the profile"), std::string::npos) << dims;
  Profile bf = tiny_profile(OffloadTarget::kNone);
  bf.precision.dtype = DType::kBF16;
  Status dt = load(bf);
  EXPECT_NE(dt.message().find("precision.dtype is fp32 in the checkpoint and bf16"), std::string::npos) << dt;
  Profile adam = tiny_profile(OffloadTarget::kNone);
  adam.optimizer.type = "adam";
  Status ot = load(adam);
  EXPECT_NE(ot.message().find("optimizer.type is adamw in the checkpoint and adam"), std::string::npos) << ot;
  // The optimizer's home does not matter: a device checkpoint resumes with the state on NVMe.
  Profile nv = tiny_profile(OffloadTarget::kNvme, s_.sub("swap"));
  EXPECT_TRUE(load(nv).ok());
}

#define SKIP_WITHOUT_MOUNTS()                                                                            \
  if (!namespace_problem().empty()) {                                                                    \
    GTEST_SKIP() << "needs a private mount namespace (root or CAP_SYS_ADMIN): " << namespace_problem(); \
  }

TEST(FullDisk, SwapCreationFailsAtStartWithTheNumbers) {
  SKIP_WITHOUT_MOUNTS();
  Scratch s;
  const std::string dir = s.sub("mnt");
  Tmpfs m(dir, 128 * KiB);  // the tiny model's state is ~420 KiB
  if (!m.ok()) GTEST_SKIP() << m.error();
  auto dev = host();
  auto t = Trainer::create(tiny_profile(OffloadTarget::kNvme, dir), *dev);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kOutOfSpace) << t.status();
  EXPECT_NE(t.status().message().find(dir), std::string::npos) << t.status();
  EXPECT_NE(t.status().message().find("free"), std::string::npos) << t.status();
  EXPECT_TRUE(fs::is_empty(dir)) << "nothing may be left behind";
}

TEST(FullDisk, CheckpointFailsCleanlyAndThePreviousOneStaysLoadable) {
  SKIP_WITHOUT_MOUNTS();
  Scratch s;
  const std::string dir = s.sub("mnt");
  Tmpfs m(dir, 700 * KiB);  // one checkpoint (~420 KiB) fits, a second beside it does not
  if (!m.ok()) GTEST_SKIP() << m.error();
  auto dev = host();
  Profile p = tiny_profile(OffloadTarget::kNvme, s.sub("swap"));
  auto t = Trainer::create(p, *dev);
  ASSERT_TRUE(t.ok()) << t.status();
  train(**t, 2);
  auto first = save_checkpoint(**t, dir);
  ASSERT_TRUE(first.ok()) << first.status();
  train(**t, 1);
  auto second = save_checkpoint(**t, dir);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kOutOfSpace) << second.status();
  EXPECT_NE(second.status().message().find("earlier checkpoints are intact"), std::string::npos) << second.status();
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"step-00000002"}) << "the temporary directory must be gone";
  auto t2 = Trainer::create(p, *dev);
  ASSERT_TRUE(t2.ok());
  auto l = load_checkpoint(**t2, dir);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ((*t2)->steps_done(), 2);
  // Training goes on from the loaded state.
  EXPECT_EQ(train(**t2, 1).size(), 1u);
}

// ---- the kill test ----

// One rank of the child's run: resume from the newest checkpoint if any, then alternate a step
// and a save for ever; rank 0 reports "S <step>" before and "D <step> <microseconds>" after
// each save. With more than one rank: ZeRO stage 2, every rank writing its shard.
void child_rank(const std::string& dir, Communicator* comm) {
  auto dev = host();
  Profile p = tiny_profile(OffloadTarget::kNvme, dir + "/swap");
  TrainerOptions o;
  if (comm != nullptr) {
    o.dp = comm;
    p.parallel.dp = comm->size();
    p.zero.stage = 2;
    p.train.micro_batch = 4 / comm->size();
  }
  auto t = Trainer::create(p, *dev, nullptr, o);
  ASSERT_TRUE(t.ok()) << t.status();
  const bool reports = comm == nullptr || comm->rank() == 0;
  const std::string ck = dir + "/ckpt";
  if (latest_checkpoint(ck).ok()) {
    ASSERT_TRUE(load_checkpoint(**t, ck).ok());
  }
  for (;;) {
    ASSERT_TRUE((*t)->train_step(licenses()).ok());
    if (reports) std::printf("S %lld\n", static_cast<long long>((*t)->steps_done()));
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = save_checkpoint(**t, ck);
    ASSERT_TRUE(r.ok()) << r.status();
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
    if (reports) std::printf("D %lld %lld\n", static_cast<long long>((*t)->steps_done()), static_cast<long long>(us));
    std::fflush(stdout);
  }
}

// Run as a child process (see child_rank), one rank or several as LocalComm threads.
TEST(CheckpointKill, Child) {
  const char* dir = std::getenv(kChildEnv);
  if (dir == nullptr) GTEST_SKIP() << "runs only as the child of CheckpointKill.SaveKilledAtRandomPoints";
  fs::create_directories(std::string(dir) + "/swap");
  const char* ranks_env = std::getenv(kChildRanksEnv);
  const int ranks = ranks_env != nullptr ? std::atoi(ranks_env) : 1;
  if (ranks <= 1) return child_rank(dir, nullptr);
  auto comms = make_local_comms(ranks);
  ASSERT_TRUE(comms.ok()) << comms.status();
  std::vector<std::thread> threads;
  for (auto& c : *comms) threads.emplace_back([&, comm = c.get()] { child_rank(dir, comm); });
  for (auto& t : threads) t.join();
}

struct ChildProcess {
  pid_t pid = -1;
  FILE* out = nullptr;
  ~ChildProcess() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (out != nullptr) std::fclose(out);
  }
};

bool spawn_child(const std::string& dir, int ranks, ChildProcess* c) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return false;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  std::vector<std::string> env_s;
  for (char** e = environ; *e != nullptr; ++e) env_s.emplace_back(*e);
  env_s.push_back(std::string(kChildEnv) + "=" + dir);
  env_s.push_back(std::string(kChildRanksEnv) + "=" + std::to_string(ranks));
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe", filter = "--gtest_filter=CheckpointKill.Child";
  char* argv[] = {exe.data(), filter.data(), nullptr};
  const int rc = posix_spawn(&c->pid, exe.c_str(), &fa, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    c->pid = -1;
    return false;
  }
  c->out = ::fdopen(fds[0], "r");
  return c->out != nullptr;
}

// Whether the temporary directory of a save by `pid` is in `ckpt`: that save is between its
// mkdir and its rename. (A save first removes what killed saves left; the pid makes sure.)
bool save_in_progress(const std::string& ckpt, pid_t pid) {
  const std::string suffix = ".tmp-" + std::to_string(pid);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(ckpt, ec)) {
    const std::string n = e.path().filename().string();
    if (n.starts_with(".step-") && n.ends_with(suffix)) return true;
  }
  return false;
}

// The child is killed at random moments of a save. Whether a moment falls inside the save's
// write (mkdir of the temporary directory .. rename) depends on how long saves take under the
// machine's load, so nothing here counts on the odds: at the random moment the child is stopped
// (SIGSTOP, and waitpid until it is), the directory is looked at while nothing in the child can
// move, and only then is it killed. Rounds go on until at least kMinInSave kills have been seen
// inside a save, with kMinRounds rounds at least (as many random points as before) and a cap.
// With `ranks` > 1 the child's ranks save with ZeRO stage 2 (each writing its shard), and one
// rank resumes what they left.
void kill_saves_at_random_points(int ranks) {
  Scratch s;
  ASSERT_FALSE(s.path.empty());
  constexpr int kMinRounds = 10;
  constexpr int kMinInSave = 2;
  constexpr int kMaxRounds = 50;
  std::mt19937_64 rng(12345);
  long long save_us = 2000;  // refined from the child's reports
  long long last_done = 0;
  int kills_during_save = 0;
  int round = 0;
  for (; round < kMaxRounds && (round < kMinRounds || kills_during_save < kMinInSave); ++round) {
    ChildProcess c;
    ASSERT_TRUE(spawn_child(s.path, ranks, &c)) << std::strerror(errno);
    // Let one save finish (the first round needs a checkpoint to protect), then stop the
    // child at a random moment of the next save.
    char line[256];
    bool armed = false;
    bool stopped = false;
    while (std::fgets(line, sizeof line, c.out) != nullptr) {
      long long step = 0, us = 0;
      if (std::sscanf(line, "D %lld %lld", &step, &us) == 2) {
        last_done = step;
        save_us = std::max(100LL, us);
        armed = true;
      } else if (armed && std::sscanf(line, "S %lld", &step) == 1) {
        std::uniform_int_distribution<long long> when(0, save_us * 11 / 10);
        std::this_thread::sleep_for(std::chrono::microseconds(when(rng)));
        ::kill(c.pid, SIGSTOP);
        stopped = true;
        break;
      }
    }
    int status = 0;
    if (stopped) {
      ASSERT_EQ(::waitpid(c.pid, &status, WUNTRACED), c.pid);
      ASSERT_TRUE(WIFSTOPPED(status)) << "round " << round << ": the child ended before it could be stopped (status "
                                      << status << ")";
      // Was the save cut off in the middle? The child cannot finish or start one now.
      if (save_in_progress(s.path + "/ckpt", c.pid)) ++kills_during_save;
      ::kill(c.pid, SIGKILL);
    }
    ASSERT_EQ(::waitpid(c.pid, &status, 0), c.pid);
    c.pid = -1;
    ASSERT_TRUE(WIFSIGNALED(status)) << "the child ended by itself (status " << status << "); its output ended early";
    auto dev = host();
    auto t = Trainer::create(tiny_profile(OffloadTarget::kNvme, s.sub("swap")), *dev);
    ASSERT_TRUE(t.ok()) << t.status();
    auto l = load_checkpoint(**t, s.path + "/ckpt");
    ASSERT_TRUE(l.ok()) << "round " << round << ": " << l.status();
    EXPECT_GE((*t)->steps_done(), last_done) << "a completed save was lost";
    EXPECT_EQ(train(**t, 1).size(), 1u);
  }
  // The kills must include some in the middle of writing, or the test proved little.
  EXPECT_GE(kills_during_save, kMinInSave) << "in " << round << " rounds only " << kills_during_save
                                            << " kills landed between the mkdir and the rename of a save (saves took about "
                                            << save_us << " us)";
  std::printf("kills inside a save: %d of %d\n", kills_during_save, round);
}

TEST(CheckpointKill, SaveKilledAtRandomPointsLeavesThePreviousCheckpointLoadable) {
  if (std::getenv(kChildEnv) != nullptr) GTEST_SKIP() << "this is the child";
  kill_saves_at_random_points(1);
}

TEST(CheckpointKill, ShardedSaveOfTwoRanksKilledAtRandomPointsLeavesThePreviousCheckpointLoadable) {
  if (std::getenv(kChildEnv) != nullptr) GTEST_SKIP() << "this is the child";
  kill_saves_at_random_points(2);
}

}  // namespace
}  // namespace strata
