// `strata bench nvme`: sequential read and write throughput of each I/O engine over a grid of
// block sizes, queue depths and I/O threads, on one file in the directory under test; with
// --compare-fio, fio runs at the same settings on the same file and each row reports
// strata/fio — the ceiling measured in the same run.
//
// What a row measures. `threads` jobs each own an equal, contiguous region of the file and
// keep `queue_depth` requests of `block_size` bytes in flight, sequentially, refilling as
// requests complete (fio's --numjobs/--offset_increment/--iodepth). With --direct (the
// default) every transfer bypasses the page cache; buffered rows drop the file's cache
// before reads and include the final fdatasync in writes (fio: --invalidate, --end_fsync).
// A measurement ends when the region is done or --max-seconds have passed (fio --runtime).
// The posix engine runs threads x queue_depth synchronous lanes; fio runs psync with as
// many jobs. --mode mixed keeps reads and writes in flight at once (half the slots each, at
// sequential offsets; fio --rw=rw): the ceiling of a pass that reads state while it writes
// the state it updated, usually below either direction alone.
//
// Noise. Other work on the machine moves both sides, so each repetition runs strata and fio
// back to back, alternating which goes first; rows report medians and the median of the
// per-repetition ratios.
//
// --json (bench_json.h): a result per grid point and mode ("ratio" against fio only with
// --compare-fio); the summary is the best setting, its ratio against fio or, without fio,
// against the best row of each mode.
#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxopts.hpp>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_env.h"
#include "bench/bench_json.h"
#include "cli/command.h"
#include "nvme/file.h"
#include "nvme/io_engine.h"
#include "nvme/nvme_profile.h"
#include "strata/profile.h"
#include "strata/units.h"

extern char** environ;

namespace strata::cli {
namespace {

using namespace strata::bench;  // NOLINT(google-build-using-namespace)

using nvme::IoCompletion;
using nvme::IoEngine;
using nvme::IoOp;

// What a measurement moves: reads, writes, or both at once (the even request slots read and
// the odd ones write, at sequential offsets: what the offloaded optimizer's pass does, and
// fio's rw=rw 50/50); a mixed figure counts the bytes of both.
enum class Mode : std::uint8_t { kRead = 0, kWrite, kMixed };
constexpr std::size_t kModes = 3;
std::size_t mode_index(Mode m) { return static_cast<std::size_t>(m); }
const char* mode_name(Mode m) { return m == Mode::kRead ? "read" : m == Mode::kWrite ? "write" : "mixed"; }
IoOp op_of(Mode m, int slot) { return m == Mode::kRead || (m == Mode::kMixed && slot % 2 == 0) ? IoOp::kRead : IoOp::kWrite; }
using nvme::IoRequest;

// ------------------------------------------------------------------------------------------
// Environment

// ------------------------------------------------------------------------------------------
// Options

template <typename T>
bool parse_list(const std::string& text, std::vector<T>* out, const std::function<bool(const std::string&, T*)>& one) {
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    T v{};
    if (!one(item, &v)) return false;
    out->push_back(v);
  }
  return !out->empty();
}

bool parse_int(const std::string& s, int* out) {
  try {
    std::size_t pos = 0;
    int v = std::stoi(s, &pos);
    if (pos != s.size() || v < 1) return false;
    *out = v;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// ------------------------------------------------------------------------------------------
// Buffers

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<std::byte, FreeDeleter>;

// Memory for I/O buffers: 2 MiB-aligned with transparent huge pages requested, so that a
// block of up to 2 MiB is one physically contiguous DMA segment (a 1 MiB buffer of scattered
// 4 KiB pages needs 256 segments, more than many devices take per request, e.g. virtio-blk's
// 254, and the block layer then splits it). Every page is touched before timing, with a
// pattern that is not all zeros.
AlignedBuffer aligned_buffer(std::uint64_t size, bool huge_pages) {
  constexpr std::uint64_t kHuge = 2 * MiB;
  const std::uint64_t rounded = (size + kHuge - 1) / kHuge * kHuge;
  auto* p = static_cast<std::byte*>(std::aligned_alloc(kHuge, rounded));
  if (p != nullptr) {
    (void)::madvise(p, rounded, huge_pages ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    for (std::uint64_t i = 0; i < size; i += 8) {
      std::uint64_t v = (i * 0x9E3779B97F4A7C15ULL) ^ 0x5DEECE66DULL;
      std::memcpy(p + i, &v, std::min<std::uint64_t>(8, size - i));
    }
  }
  return AlignedBuffer(p);
}

// ------------------------------------------------------------------------------------------
// One grid point

struct Setting {
  std::string engine;
  std::uint64_t block_size = 0;
  int queue_depth = 0;
  int threads = 0;
};

struct Measurement {
  Status status;
  std::vector<double> strata;  // bytes/s per repetition
  std::vector<double> fio;     // bytes/s per repetition (with --compare-fio)
  std::vector<double> ratio;   // strata/fio per repetition
  double strata_median = 0;
  double fio_median = 0;
  double ratio_median = 0;
};

struct RunConfig {
  std::string file;
  std::uint64_t size = 0;  // bytes covered by every measurement (a multiple of block x jobs)
  bool direct = true;
  bool registered = true;
  bool sqpoll = false;
  double max_seconds = 5;
  bool huge_pages = true;  // strata's I/O buffers on transparent huge pages
  std::string fio = "fio";
};

// Jobs and in-flight requests per job for a setting: the posix engine has no queue, so its
// depth becomes more synchronous lanes (fio psync jobs).
int jobs_of(const Setting& s) { return s.engine == "posix" ? s.threads * s.queue_depth : s.threads; }
int depth_of(const Setting& s) { return s.engine == "posix" ? 1 : s.queue_depth; }

// Bytes the grid point covers: whole blocks, an equal whole number per job.
std::uint64_t covered_bytes(const Setting& s, std::uint64_t size) {
  const std::uint64_t per_job = size / static_cast<std::uint64_t>(jobs_of(s)) / s.block_size * s.block_size;
  return per_job * static_cast<std::uint64_t>(jobs_of(s));
}

NvmeConfig engine_config(const Setting& s, const RunConfig& rc) {
  NvmeConfig c;
  c.engine = s.engine;
  c.block_size = s.block_size;
  c.queue_depth = s.queue_depth;
  c.threads = s.threads;
  c.direct = rc.direct;
  c.registered_buffers = s.engine == "io_uring" && rc.registered;
  c.sqpoll = s.engine == "io_uring" && rc.sqpoll;
  c.checksums = false;
  return c;
}

// The engine, the file and the buffers of one grid point, reused by its repetitions.
class StrataRunner {
 public:
  Status open(const Setting& s, const RunConfig& rc) {
    setting_ = s;
    rc_ = rc;
    STRATA_ASSIGN_OR_RETURN(engine_, nvme::make_io_engine(engine_config(s, rc)));
    nvme::OpenOptions o;
    o.direct = rc.direct;
    STRATA_ASSIGN_OR_RETURN(fd_, nvme::open_data_file(AT_FDCWD, rc.file, o, rc.file));
    const int slots = jobs_of(s) * depth_of(s);
    arena_ = aligned_buffer(static_cast<std::uint64_t>(slots) * s.block_size, rc.huge_pages);
    if (arena_ == nullptr) {
      return out_of_memory("no memory for " + std::to_string(slots) + " buffers of " + format_bytes(s.block_size));
    }
    std::vector<std::span<std::byte>> spans;
    for (int i = 0; i < slots; ++i) {
      buffers_.push_back(arena_.get() + static_cast<std::uint64_t>(i) * s.block_size);
      spans.emplace_back(buffers_.back(), s.block_size);
    }
    if (engine_->capabilities().registered_buffers) {
      STRATA_RETURN_IF_ERROR(engine_->register_buffers(spans));
    }
    return Status::OK();
  }

  // Moves covered_bytes() (or what fits in max_seconds) as `mode` says; returns bytes/s.
  Result<double> run(Mode mode) {
    if (!rc_.direct) {
      if (mode != Mode::kWrite) {
        ::fdatasync(fd_.get());
        ::posix_fadvise(fd_.get(), 0, 0, POSIX_FADV_DONTNEED);
      }
    }
    const int jobs = jobs_of(setting_);
    const int depth = depth_of(setting_);
    const std::uint64_t bs = setting_.block_size;
    const std::uint64_t region = covered_bytes(setting_, rc_.size) / static_cast<std::uint64_t>(jobs);
    const std::uint64_t per_job = region / bs;
    struct Job {
      std::atomic<std::uint64_t> next{0};
    };
    std::vector<Job> job_state(static_cast<std::size_t>(jobs));
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> moved{0};
    // The clock stops at the last completion (on the I/O thread), not when this thread
    // wakes from drain(): a loaded machine may take milliseconds to schedule it.
    std::atomic<Clock::rep> last_done{0};
    std::mutex err_mu;
    Status first_error;
    auto note_error = [&](const Status& s) {
      std::lock_guard<std::mutex> lock(err_mu);
      if (first_error.ok()) first_error = s;
      stop = true;
    };
    const auto start = Clock::now();
    const auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(rc_.max_seconds));
    // Each slot is a chain: when its request completes, its finalizer (on the engine's I/O
    // thread) submits the job's next block into the same buffer.
    std::function<void(int)> issue = [&](int slot) {
      const int job = slot / depth;
      if (stop.load(std::memory_order_relaxed)) return;
      if (Clock::now() >= deadline) {
        stop = true;
        return;
      }
      const std::uint64_t i = job_state[static_cast<std::size_t>(job)].next.fetch_add(1);
      if (i >= per_job) return;
      const std::uint64_t offset = static_cast<std::uint64_t>(job) * region + i * bs;
      auto done = IoCompletion::make([&, slot](Status st) {
        if (st.ok()) {
          moved.fetch_add(bs, std::memory_order_relaxed);
          last_done.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
          issue(slot);
        } else {
          note_error(st);
        }
        return st;
      });
      std::byte* buf = buffers_[static_cast<std::size_t>(slot)];
      Status s = engine_->submit(IoRequest{op_of(mode, slot), fd_.get(), offset, buf, bs, std::move(done)});
      if (!s.ok()) note_error(s);
    };
    for (int slot = 0; slot < jobs * depth; ++slot) issue(slot);
    Status drained = engine_->drain();
    Clock::time_point end = Clock::time_point(Clock::duration(last_done.load()));
    if (!rc_.direct && mode != Mode::kRead) {
      ::fdatasync(fd_.get());  // buffered writes are done when they are on the device
      end = Clock::now();
    }
    const double seconds = std::chrono::duration<double>(end - start).count();
    if (!first_error.ok()) return first_error;
    if (!drained.ok()) return drained;
    if (moved.load() == 0 || seconds <= 0) return internal_error("no bytes were moved");
    return static_cast<double>(moved.load()) / seconds;
  }

 private:
  Setting setting_;
  RunConfig rc_;
  std::unique_ptr<IoEngine> engine_;
  nvme::UniqueFd fd_;
  AlignedBuffer arena_;
  std::vector<std::byte*> buffers_;  // one block per slot, inside arena_
};

// ------------------------------------------------------------------------------------------
// fio

// Runs argv[0] with the arguments and the environment plus `extra_env` ("NAME=value";
// GLIBC_TUNABLES is appended to, not replaced); returns its exit code and what it printed.
Result<int> run_process(const std::vector<std::string>& args, std::string* output,
                        const std::vector<std::string>& extra_env = {}) {
  std::vector<std::string> env_store;
  for (char** e = environ; *e != nullptr; ++e) env_store.emplace_back(*e);
  for (const std::string& add : extra_env) {
    const std::string name = add.substr(0, add.find('=') + 1);
    auto it = std::find_if(env_store.begin(), env_store.end(), [&](const std::string& e) { return e.rfind(name, 0) == 0; });
    if (it == env_store.end()) {
      env_store.push_back(add);
    } else if (name == "GLIBC_TUNABLES=") {
      *it += ":" + add.substr(name.size());
    } else {
      *it = add;
    }
  }
  std::vector<char*> envp;
  for (std::string& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return STRATA_ERRNO(errno, "pipe", "");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  int rc = ::posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  ::close(pipefd[1]);
  if (rc != 0) {
    ::close(pipefd[0]);
    return STRATA_ERRNO(rc, "run", args[0]);
  }
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) output->append(buf, static_cast<std::size_t>(n));
  }
  ::close(pipefd[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string fio_engine(const std::string& engine) { return engine == "posix" ? "psync" : engine; }

std::vector<std::string> fio_args(const Setting& s, const RunConfig& rc, Mode mode, const std::string& json_out) {
  const std::uint64_t per_job = covered_bytes(s, rc.size) / static_cast<std::uint64_t>(jobs_of(s));
  const auto runtime_ms = static_cast<long long>(rc.max_seconds * 1000);
  std::vector<std::string> a = {rc.fio,
                                "--name=strata-bench",
                                "--filename=" + rc.file,
                                std::string("--rw=") + (mode == Mode::kRead    ? "read"
                                                        : mode == Mode::kWrite ? "write"
                                                                               : "rw"),
                                "--bs=" + std::to_string(s.block_size),
                                "--iodepth=" + std::to_string(depth_of(s)),
                                "--ioengine=" + fio_engine(s.engine),
                                std::string("--direct=") + (rc.direct ? "1" : "0"),
                                "--numjobs=" + std::to_string(jobs_of(s)),
                                "--size=" + std::to_string(per_job),
                                "--offset_increment=" + std::to_string(per_job),
                                "--runtime=" + std::to_string(runtime_ms) + "ms",
                                "--thread",
                                "--group_reporting",
                                "--invalidate=1",
                                "--fallocate=none",
                                "--output-format=json",
                                "--output=" + json_out};
  if (s.engine == "io_uring" && rc.registered) a.push_back("--fixedbufs=1");
  if (s.engine == "io_uring" && rc.sqpoll) a.push_back("--sqthread_poll=1");
  if (!rc.direct && mode != Mode::kRead) a.push_back("--end_fsync=1");
  return a;
}

std::string shell_line(const std::vector<std::string>& args) {
  std::string s;
  for (const std::string& a : args) s += (s.empty() ? "" : " ") + a;
  return s;
}

Result<double> run_fio(const Setting& s, const RunConfig& rc, Mode mode, const std::string& json_out) {
  std::vector<std::string> args = fio_args(s, rc, mode, json_out);
  std::string output;
  // fio allocates its buffers with malloc; this glibc tunable puts them on transparent huge
  // pages, so both sides transfer from the same kind of memory.
  std::vector<std::string> env;
  if (rc.huge_pages) env.push_back("GLIBC_TUNABLES=glibc.malloc.hugetlb=1");
  STRATA_ASSIGN_OR_RETURN(int code, run_process(args, &output, env));
  std::ifstream in(json_out);
  std::stringstream text;
  text << in.rdbuf();
  std::remove(json_out.c_str());
  if (code != 0) {
    return io_error("fio exited with " + std::to_string(code) + ": " + output.substr(0, 400) + "\n  command: " +
                    shell_line(args));
  }
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, false);
  if (j.is_discarded() || !j.contains("jobs") || j["jobs"].empty()) {
    return io_error("fio wrote no readable JSON report; command: " + shell_line(args));
  }
  const nlohmann::json& job = j["jobs"][0];
  if (job.value("error", 0) != 0) {
    return io_error("fio reported error " + std::to_string(job.value("error", 0)) + "; command: " + shell_line(args));
  }
  double bw = 0;
  if (mode != Mode::kWrite) bw += job["read"].value("bw_bytes", 0.0);
  if (mode != Mode::kRead) bw += job["write"].value("bw_bytes", 0.0);
  if (bw <= 0) return io_error("fio moved no bytes; command: " + shell_line(args));
  return bw;
}

Result<std::string> fio_version(const std::string& fio) {
  std::string out;
  auto code = run_process({fio, "--version"}, &out);
  if (!code.ok()) return code.status().with_context("--compare-fio needs fio (Debian package fio)");
  if (*code != 0) return unavailable("'" + fio + " --version' failed: " + out);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

// ------------------------------------------------------------------------------------------
// The benchmark file

std::string g_cleanup_path;  // removed by the signal handler as well

extern "C" void on_signal(int sig) {
  if (!g_cleanup_path.empty()) ::unlink(g_cleanup_path.c_str());
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// Creates the file and writes it once in full, so every measurement overwrites or reads
// allocated blocks (first writes into fresh extents are slower on ext4 and xfs).
Status prepare_file(const RunConfig& rc) {
  nvme::OpenOptions o;
  o.create = true;
  o.direct = rc.direct;
  STRATA_ASSIGN_OR_RETURN(nvme::UniqueFd fd, nvme::open_data_file(AT_FDCWD, rc.file, o, rc.file));
  if (::fallocate(fd.get(), 0, 0, static_cast<off_t>(rc.size)) != 0 && errno != EOPNOTSUPP) {
    return STRATA_ERRNO(errno, "fallocate of " + format_bytes(rc.size) + " for", rc.file);
  }
  NvmeConfig c;
  c.engine = "io_uring";
  c.block_size = std::min<std::uint64_t>(rc.size, 1 * MiB);
  c.queue_depth = 8;
  c.direct = rc.direct;
  c.registered_buffers = false;
  STRATA_ASSIGN_OR_RETURN(auto engine, nvme::make_io_engine(c));
  constexpr std::uint64_t kChunk = 64 * MiB;
  AlignedBuffer buf = aligned_buffer(std::min(kChunk, rc.size), true);
  if (buf == nullptr) return out_of_memory("no memory for the fill buffer");
  for (std::uint64_t off = 0; off < rc.size; off += kChunk) {
    const std::uint64_t n = std::min(kChunk, rc.size - off);
    auto done = IoCompletion::make();
    STRATA_RETURN_IF_ERROR(engine->submit(IoRequest::write(fd.get(), off, {buf.get(), n}, done)));
    STRATA_RETURN_IF_ERROR(done->wait().with_context("filling the benchmark file"));
  }
  if (::fdatasync(fd.get()) != 0) return STRATA_ERRNO(errno, "fdatasync", rc.file);
  return Status::OK();
}

// ------------------------------------------------------------------------------------------
// Output

constexpr const char* kFioCeiling = "fio at the same setting on the same file (strata GB/s over fio's)";

std::string gbps(double bytes_per_second) {
  if (bytes_per_second <= 0) return "-";
  std::ostringstream os;
  os << std::fixed << std::setprecision(3) << bytes_per_second / 1e9;
  return os.str();
}

std::string fixed(double v, int digits) {
  if (v <= 0) return "-";
  std::ostringstream os;
  os << std::fixed << std::setprecision(digits) << v;
  return os.str();
}

// A result line: the setting and its figures; with fio, the ratio to fio at the same setting.
Json measurement_json(const Setting& s, const RunConfig& rc, const char* mode, const Measurement& m, bool with_fio) {
  Json j = {{"kind", "measurement"},
            {"engine", s.engine},
            {"block_size", s.block_size},
            {"queue_depth", s.queue_depth},
            {"threads", s.threads},
            {"mode", mode},
            {"direct", rc.direct},
            {"registered_buffers", s.engine == "io_uring" && rc.registered},
            {"sqpoll", s.engine == "io_uring" && rc.sqpoll},
            {"bytes", covered_bytes(s, rc.size)}};
  if (!m.status.ok()) {
    j["error"] = m.status.to_string();
    return j;
  }
  j["gbps"] = m.strata_median / 1e9;
  j["runs_gbps"] = Json::array();
  for (double v : m.strata) j["runs_gbps"].push_back(v / 1e9);
  if (with_fio) {
    j["fio_gbps"] = m.fio_median / 1e9;
    j["fio_runs_gbps"] = Json::array();
    for (double v : m.fio) j["fio_runs_gbps"].push_back(v / 1e9);
    j["ratio"] = m.ratio_median;
    j["ceiling"] = kFioCeiling;
    j["runs_ratio"] = m.ratio;
  }
  return j;
}

// The summary line: the best setting, its GB/s per mode and a ratio: with fio, its score over
// fio's at the same setting; without, over the score of the best row of each mode (below 1
// when no single setting is best at both).
Json best_json(const Setting& b, const RunConfig& rc, const std::vector<Mode>& modes,
               const std::vector<std::vector<Measurement>>& results, std::size_t best, double best_score,
               bool with_fio) {
  Json j = {{"kind", "best"},
            {"engine", b.engine},
            {"block_size", b.block_size},
            {"queue_depth", b.queue_depth},
            {"threads", b.threads},
            {"direct", rc.direct},
            {"score_gbps", best_score / 1e9}};
  double ceiling_inv = 0;
  for (Mode mode : modes) {
    const std::size_t k = mode_index(mode);
    const Measurement& m = results[best][k];
    const std::string name = mode_name(mode);
    j[name + "_gbps"] = m.strata_median / 1e9;
    double top = 0;
    for (const auto& row : results) top = std::max(top, row[k].strata_median);
    ceiling_inv += 1 / (with_fio ? m.fio_median : top);
  }
  const double ceiling = static_cast<double>(modes.size()) / ceiling_inv;
  j["ceiling_gbps"] = ceiling / 1e9;
  j["ratio"] = number_or_null(best_score / ceiling);
  j["ceiling"] = with_fio ? "fio at the best setting (harmonic mean over the modes)"
                          : "the best row of each mode (harmonic mean over the modes)";
  return j;
}

int bench_nvme(int argc, char** argv) {
  cxxopts::Options opts("strata bench nvme",
                        "Sequential read/write throughput of the I/O engines on one file, optionally against fio");
  // clang-format off
  opts.add_options()
      ("path", "directory on the drive to measure (a temporary file is created there)", cxxopts::value<std::string>())
      ("size", "bytes per measurement (units: 2GiB, 512MiB)", cxxopts::value<std::string>()->default_value("2GiB"))
      ("engines", "comma-separated engines", cxxopts::value<std::string>()->default_value("io_uring,libaio,posix"))
      ("block-sizes", "comma-separated block sizes", cxxopts::value<std::string>()->default_value("128KiB,1MiB,8MiB"))
      ("queue-depths", "comma-separated queue depths", cxxopts::value<std::string>()->default_value("1,4,16,64"))
      ("threads", "comma-separated I/O thread counts", cxxopts::value<std::string>()->default_value("1,2"))
      ("mode", "read, write, both (read, then write), mixed (reads and writes at once, as the optimizer's pass "
               "moves them) or all three", cxxopts::value<std::string>()->default_value("both"))
      ("buffered", "use the page cache instead of O_DIRECT")
      ("registered-buffers", "io_uring fixed buffers", cxxopts::value<bool>()->default_value("true"))
      ("sqpoll", "io_uring kernel submission polling")
      ("huge-pages", "put strata's I/O buffers on transparent huge pages (as a pinned pool should)",
       cxxopts::value<bool>()->default_value("true"))
      ("repeat", "repetitions per measurement, medians reported (default 1, or 3 with --compare-fio)",
       cxxopts::value<int>())
      ("max-seconds", "time limit per measurement", cxxopts::value<double>()->default_value("5"))
      ("json", "print JSON Lines instead of tables; see 'strata help bench'")
      ("emit-profile", "write the best setting as an [nvme] profile section to FILE", cxxopts::value<std::string>())
      ("compare-fio", "run fio at the same settings on the same file and report strata/fio")
      ("fio", "the fio executable", cxxopts::value<std::string>()->default_value("fio"))
      ("h,help", "show this help");
  // clang-format on
  cxxopts::ParseResult args;
  try {
    args = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata bench nvme: " << e.what() << "\n" << opts.help() << "\n";
    return kExitUsage;
  }
  if (args.count("help") > 0) {
    std::cout << opts.help() << "\n";
    return kExitOk;
  }
  auto usage = [&](const std::string& msg) {
    std::cerr << "strata bench nvme: " << msg << "\n";
    return kExitUsage;
  };
  if (args.count("path") == 0) return usage("--path DIR is required (a directory on the drive to measure)");

  RunConfig rc;
  std::vector<Setting> grid;
  std::vector<std::string> engines;
  std::vector<std::uint64_t> blocks;
  std::vector<int> depths;
  std::vector<int> threads;
  bool json = false;
  bool compare = false;
  std::vector<Mode> modes;
  int repeat = 1;
  try {
    const std::string dir = args["path"].as<std::string>();
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return usage("--path '" + dir + "' is not a directory");
    auto size = parse_bytes(args["size"].as<std::string>());
    if (!size.ok()) return usage("--size: " + size.status().message());
    rc.size = *size;
    rc.direct = args.count("buffered") == 0;
    rc.registered = args["registered-buffers"].as<bool>();
    rc.sqpoll = args.count("sqpoll") > 0;
    rc.huge_pages = args["huge-pages"].as<bool>();
    rc.max_seconds = args["max-seconds"].as<double>();
    if (!(rc.max_seconds > 0) || rc.max_seconds > 3600) return usage("--max-seconds must be in (0, 3600]");
    rc.fio = args["fio"].as<std::string>();
    json = args.count("json") > 0;
    compare = args.count("compare-fio") > 0;
    repeat = args.count("repeat") > 0 ? args["repeat"].as<int>() : (compare ? 3 : 1);
    if (repeat < 1 || repeat > 100) return usage("--repeat must be between 1 and 100");
    if (!parse_list<std::string>(args["engines"].as<std::string>(), &engines, [](const std::string& s, std::string* o) {
          *o = s;
          return !s.empty();
        })) {
      return usage("--engines: expected a comma-separated list");
    }
    for (const std::string& e : engines) {
      NvmeConfig c;
      c.engine = e;
      c.registered_buffers = false;
      Status v = nvme::validate_nvme_config(c);
      if (!v.ok()) return usage("--engines: " + v.message());
    }
    if (!parse_list<std::uint64_t>(args["block-sizes"].as<std::string>(), &blocks,
                                   [](const std::string& s, std::uint64_t* o) {
                                     auto r = parse_bytes(s);
                                     if (!r.ok()) return false;
                                     *o = *r;
                                     return true;
                                   })) {
      return usage("--block-sizes: expected sizes like 128KiB,1MiB");
    }
    if (!parse_list<int>(args["queue-depths"].as<std::string>(), &depths, parse_int)) {
      return usage("--queue-depths: expected positive integers like 1,4,16");
    }
    if (!parse_list<int>(args["threads"].as<std::string>(), &threads, parse_int)) {
      return usage("--threads: expected positive integers like 1,2");
    }
    const std::string mode = args["mode"].as<std::string>();
    if (mode == "read" || mode == "both" || mode == "all") modes.push_back(Mode::kRead);
    if (mode == "write" || mode == "both" || mode == "all") modes.push_back(Mode::kWrite);
    if (mode == "mixed" || mode == "all") modes.push_back(Mode::kMixed);
    if (modes.empty()) return usage("--mode must be read, write, both, mixed or all");
    for (const std::string& e : engines) {
      for (std::uint64_t b : blocks) {
        for (int q : depths) {
          for (int t : threads) {
            Setting s{e, b, q, t};
            Status v = nvme::validate_nvme_config(engine_config(s, rc));
            if (!v.ok()) return usage(v.message());
            if (covered_bytes(s, rc.size) == 0) {
              return usage("--size " + format_bytes(rc.size) + " is smaller than one " + format_bytes(b) +
                           " block per job (" + std::to_string(jobs_of(s)) + " jobs for " + e + " at queue depth " +
                           std::to_string(q) + " and " + std::to_string(t) + " threads)");
            }
            grid.push_back(s);
          }
        }
      }
    }
    rc.file = dir + (dir.back() == '/' ? "" : "/") + ".strata-bench-" + std::to_string(::getpid()) + ".dat";
  } catch (const std::exception& e) {
    return usage(e.what());
  }

  std::string fio_ver;
  if (compare) {
    auto v = fio_version(rc.fio);
    if (!v.ok()) {
      std::cerr << "strata bench nvme: " << v.status() << "\n";
      return kExitFailed;
    }
    fio_ver = *v;
  }
  {
    auto avail = nvme::free_bytes(args["path"].as<std::string>());
    if (avail.ok() && *avail < rc.size + 64 * MiB) {
      std::cerr << "strata bench nvme: the file needs " << format_bytes_human(static_cast<double>(rc.size))
                << " but only " << format_bytes_human(static_cast<double>(*avail)) << " are free under '"
                << args["path"].as<std::string>() << "'; lower --size\n";
      return kExitFailed;
    }
  }

  const nvme::StorageInfo storage = nvme::describe_storage(args["path"].as<std::string>());
  const std::string build = build_kind();
  JsonLines report("nvme");
  if (json) {
    report.env({{"kind", "environment"},
                {"path", args["path"].as<std::string>()},
                {"file_system", storage.fs_type},
                {"mount_point", storage.mount_point},
                {"device", storage.source},
                {"block_device", storage.block_device},
                {"model", storage.model},
                {"logical_block_size", storage.logical_block_size},
                {"scheduler", storage.scheduler},
                {"direct", rc.direct},
                {"size", rc.size},
                {"max_seconds", rc.max_seconds},
                {"repeat", repeat},
                {"huge_pages", rc.huge_pages},
                {"fio", fio_ver}});
  } else {
    std::cout << "strata bench nvme\n"
              << "  cpu:         " << cpu_brand() << ", " << std::thread::hardware_concurrency() << " logical CPUs\n"
              << "  kernel:      " << kernel_release() << "\n"
              << "  build:       " << build << "\n"
              << "  path:        " << args["path"].as<std::string>() << "\n"
              << "  file system: " << (storage.fs_type.empty() ? "unknown" : storage.fs_type) << " on "
              << (storage.source.empty() ? "?" : storage.source) << " (mounted at " << storage.mount_point << ")\n"
              << "  device:      " << (storage.block_device.empty() ? "unknown" : storage.block_device)
              << (storage.model.empty() ? "" : " " + storage.model) << ", logical block "
              << storage.logical_block_size << " B, physical " << storage.physical_block_size << " B, scheduler "
              << (storage.scheduler.empty() ? "?" : storage.scheduler) << (storage.rotational ? ", rotational" : "")
              << "\n"
              << "  I/O:         " << (rc.direct ? "O_DIRECT (page cache bypassed)" : "buffered (page cache)")
              << ", sequential, " << format_bytes_human(static_cast<double>(rc.size)) << " file, at most "
              << rc.max_seconds << " s per measurement, " << repeat << " repetition(s)\n"
              << "  io_uring:    registered buffers " << (rc.registered ? "on" : "off") << ", SQPOLL "
              << (rc.sqpoll ? "on" : "off") << "\n"
              << "  buffers:     strata " << (rc.huge_pages ? "2 MiB transparent huge pages" : "4 KiB pages (--huge-pages=false)")
              << (compare ? (rc.huge_pages ? "; fio malloc with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (the same)"
                                           : "; fio malloc (4 KiB pages)")
                          : "")
              << "\n"
              << "  ceiling:     "
              << (compare ? fio_ver + " at the same engine, block size, queue depth, jobs and O_DIRECT, on the same file"
                          : "none measured (add --compare-fio); rows are compared with the best row")
              << "\n";
  }
  warn_if_not_release(std::cout, json);
  std::cout << std::flush;

  g_cleanup_path = rc.file;
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  Status prepared = prepare_file(rc);
  if (!prepared.ok()) {
    ::unlink(rc.file.c_str());
    std::cerr << "strata bench nvme: " << prepared << "\n";
    return kExitFailed;
  }

  // Measurements, in grid order; each row's modes and repetitions interleave strata and fio.
  std::vector<std::vector<Measurement>> results(grid.size(), std::vector<Measurement>(kModes));
  bool any_failed = false;
  const std::string fio_json = rc.file + ".fio.json";
  if (!json) {
    std::cout << "\n" << std::left << std::setw(9) << "engine" << std::right << std::setw(8) << "block" << std::setw(5)
              << "QD" << std::setw(5) << "thr";
    for (Mode op : modes) {
      std::string m = mode_name(op);
      std::cout << std::setw(12) << (m + " GB/s");
      if (compare) std::cout << std::setw(10) << "fio" << std::setw(8) << "ratio";
    }
    std::cout << "\n" << std::flush;
  }
  for (std::size_t g = 0; g < grid.size(); ++g) {
    const Setting& s = grid[g];
    StrataRunner runner;
    Status opened = runner.open(s, rc);
    for (Mode op : modes) {
      Measurement& m = results[g][mode_index(op)];
      m.status = opened;
      for (int r = 0; r < repeat && m.status.ok(); ++r) {
        // Alternate who goes first so that a trend in the machine's load favours neither.
        const bool fio_first = compare && r % 2 == 1;
        double fio_bw = 0;
        if (fio_first) {
          auto f = run_fio(s, rc, op, fio_json);
          if (!f.ok()) {
            m.status = f.status();
            break;
          }
          fio_bw = *f;
        }
        auto bw = runner.run(op);
        if (!bw.ok()) {
          m.status = bw.status();
          break;
        }
        if (compare && !fio_first) {
          auto f = run_fio(s, rc, op, fio_json);
          if (!f.ok()) {
            m.status = f.status();
            break;
          }
          fio_bw = *f;
        }
        m.strata.push_back(*bw);
        if (compare) {
          m.fio.push_back(fio_bw);
          m.ratio.push_back(*bw / fio_bw);
        }
      }
      if (!m.status.ok()) {
        any_failed = true;
        continue;
      }
      m.strata_median = median(m.strata);
      m.fio_median = median(m.fio);
      m.ratio_median = median(m.ratio);
      if (json) report.result(measurement_json(s, rc, mode_name(op), m, compare));
    }
    if (!json) {
      std::cout << std::left << std::setw(9) << s.engine << std::right << std::setw(8) << format_bytes(s.block_size)
                << std::setw(5) << s.queue_depth << std::setw(5) << s.threads;
      for (Mode op : modes) {
        const Measurement& m = results[g][mode_index(op)];
        std::cout << std::setw(12) << (m.status.ok() ? gbps(m.strata_median) : "error");
        if (compare) std::cout << std::setw(10) << gbps(m.fio_median) << std::setw(8) << fixed(m.ratio_median, 3);
      }
      std::cout << "\n";
      for (Mode op : modes) {
        const Measurement& m = results[g][mode_index(op)];
        if (!m.status.ok()) std::cout << "    " << mode_name(op) << ": " << m.status << "\n";
      }
      std::cout << std::flush;
    }
  }
  ::unlink(rc.file.c_str());
  g_cleanup_path.clear();

  // The best setting: the highest throughput, or with both modes the highest harmonic mean
  // (the rate at which a block can be both written and read back, as swapping does).
  std::size_t best = grid.size();
  double best_score = 0;
  for (std::size_t g = 0; g < grid.size(); ++g) {
    double inv = 0;
    bool ok = true;
    for (Mode op : modes) {
      const Measurement& m = results[g][mode_index(op)];
      if (!m.status.ok() || m.strata_median <= 0) ok = false;
      else inv += 1 / m.strata_median;
    }
    if (!ok) continue;
    double score = static_cast<double>(modes.size()) / inv;
    if (score > best_score) {
      best_score = score;
      best = g;
    }
  }
  if (best == grid.size()) {
    std::cerr << "strata bench nvme: no measurement succeeded\n";
    return kExitFailed;
  }
  const Setting& b = grid[best];
  const NvmeConfig best_config = engine_config(b, rc);
  if (json) {
    report.summary(best_json(b, rc, modes, results, best, best_score, compare));
  } else {
    std::cout << "\nbest setting: engine " << b.engine << ", block " << format_bytes(b.block_size) << ", queue depth "
              << b.queue_depth << ", threads " << b.threads << " (";
    for (std::size_t k = 0; k < modes.size(); ++k) {
      const Measurement& m = results[best][mode_index(modes[k])];
      std::cout << (k ? ", " : "") << mode_name(modes[k]) << " " << gbps(m.strata_median) << " GB/s";
      if (compare) std::cout << " = " << fixed(m.ratio_median, 3) << " of fio";
    }
    std::cout << ")\n";
    if (!compare) {
      std::cout << "each row as a fraction of the best row:";
      for (Mode op : modes) {
        double top = 0;
        for (std::size_t g = 0; g < grid.size(); ++g) {
          top = std::max(top, results[g][mode_index(op)].strata_median);
        }
        const Measurement& m = results[best][mode_index(op)];
        std::cout << " " << mode_name(op) << " best " << gbps(top) << " GB/s (chosen row " << fixed(m.strata_median / top, 2)
                  << ")";
      }
      std::cout << "\n";
    } else {
      std::cout << "ratio = strata / fio throughput (median of " << repeat
                << " paired repetition(s), strata and fio alternating)\n";
    }
  }
  if (args.count("emit-profile") > 0) {
    std::ostringstream comment;
    comment << "Written by strata bench nvme on " << (storage.fs_type.empty() ? "?" : storage.fs_type) << " "
            << storage.source << " (" << (rc.direct ? "O_DIRECT" : "buffered") << ").\n";
    for (Mode op : modes) {
      const Measurement& m = results[best][mode_index(op)];
      comment << mode_name(op) << ": " << gbps(m.strata_median) << " GB/s";
      if (compare) comment << " (" << fixed(m.ratio_median, 3) << " of fio)";
      comment << "\n";
    }
    const std::string out = args["emit-profile"].as<std::string>();
    Status w = nvme::write_nvme_profile(out, best_config, comment.str());
    if (!w.ok()) {
      std::cerr << "strata bench nvme: " << w << "\n";
      return kExitFailed;
    }
    if (!json) std::cout << "wrote the [nvme] section to " << out << "\n";
  }
  return any_failed ? kExitFailed : kExitOk;
}

}  // namespace

STRATA_COMMAND("bench nvme", "NVMe read/write throughput per I/O engine and setting, optionally vs fio", bench_nvme);

}  // namespace strata::cli
