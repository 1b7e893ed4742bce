// Tests of what only the host-emulated device does: the copy throttle, independent copy
// engines, page-locking refused by the memlock limit, the fp16 GEMM emulation and its options.
// Nothing here asserts that something was fast: the throttle is checked by lower bounds, and
// overlap by holding one engine inside a copy (GatedSource) while another finishes.
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "strata/device.h"
#include "strata/log.h"

namespace strata {
namespace {

using Clock = std::chrono::steady_clock;

std::unique_ptr<Device> host_device(std::uint64_t bandwidth = 0, std::uint64_t capacity = 64 << 20) {
  DeviceOptions o;
  o.capacity = capacity;
  o.copy_bandwidth = bandwidth;
  auto d = create_device("host", o);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? std::move(*d) : nullptr;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

TEST(HostDevice, InfoDescribesTheEmulation) {
  auto dev = host_device(25'000'000'000ULL);
  ASSERT_TRUE(dev);
  EXPECT_EQ(dev->info().backend, "host");
  EXPECT_TRUE(dev->info().host_addressable);
  EXPECT_EQ(dev->info().capacity, 64u << 20);
  EXPECT_EQ(dev->info().copy_bandwidth, 25'000'000'000ULL);
  EXPECT_NE(dev->info().notes.find("throttled"), std::string::npos) << dev->info().notes;
}

// A host buffer whose bytes cannot be read until the test opens it: how these tests hold one
// copy engine inside one copy for as long as they need, without counting on timing. The pages
// are mapped without access, so the engine's memcpy faults; SIGSEGV goes to the faulting
// thread, whose handler waits for open() and returns, and the copy then resumes where it
// faulted (open() made the pages readable first). Any other fault is left to the handler that
// was installed before. One gate at a time; open() runs on destruction too, so that nothing
// waits on the engine for ever when a test fails early (declare the gate after the streams).
// Thread-safety: the handler touches only the static atomics; open() from the test thread.
class GatedSource {
 public:
  explicit GatedSource(std::size_t bytes, unsigned char fill) : bytes_(bytes) {
    const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    mapped_ = (bytes + page - 1) / page * page;
    void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    data_ = static_cast<std::byte*>(p);
    std::memset(data_, fill, mapped_);
    struct sigaction sa {};
    sa.sa_sigaction = &GatedSource::on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    begin_ = reinterpret_cast<std::uintptr_t>(data_);
    end_ = begin_ + mapped_;
    open_ = false;
    entered_ = false;
    left_ = false;
    ok_ = sigaction(SIGSEGV, &sa, &previous_) == 0 && mprotect(data_, mapped_, PROT_NONE) == 0;
  }
  // The pages stay mapped (readable): when a test fails early, the copy that reads them may
  // not have run yet, and the streams that wait for it are destroyed after the gate.
  ~GatedSource() {
    if (data_ == nullptr) return;
    open();
    // A thread in the handler returns once it sees open_; the handler stays installed until
    // then.
    while (entered_ && !left_) std::this_thread::yield();
    sigaction(SIGSEGV, &previous_, nullptr);
    begin_ = end_ = 0;
  }
  GatedSource(const GatedSource&) = delete;
  GatedSource& operator=(const GatedSource&) = delete;

  bool ok() const { return ok_; }
  std::span<const std::byte> bytes() const { return {data_, bytes_}; }
  // A thread is blocked reading the bytes (or was, and has been let go).
  bool entered() const { return entered_; }
  void open() {
    if (open_) return;
    mprotect(data_, mapped_, PROT_READ);
    open_ = true;
  }

 private:
  static void on_fault(int sig, siginfo_t* info, void*) {
    const auto a = reinterpret_cast<std::uintptr_t>(info->si_addr);
    if (a < begin_ || a >= end_) {
      // Not the gate: reinstall the previous disposition; the access faults again under it.
      sigaction(sig, &previous_, nullptr);
      return;
    }
    entered_ = true;
    const timespec nap{0, 200'000};
    while (!open_) nanosleep(&nap, nullptr);  // async-signal-safe
    left_ = true;
  }

  static inline std::atomic<std::uintptr_t> begin_{0}, end_{0};
  static inline std::atomic<bool> open_{true}, entered_{false}, left_{false};
  static inline struct sigaction previous_ {};
  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0, mapped_ = 0;
  bool ok_ = false;
};

// Polls `done` until it holds. This is not a bound on how fast the device is: under a correct
// implementation `done` becomes true whatever the machine's load (microseconds of work that
// depends on nothing held); the guard only turns a deadlock, which is what a broken
// implementation gives, into a failure instead of a hung test.
bool eventually(const std::function<bool()>& done) {
  const auto guard = Clock::now() + std::chrono::seconds(60);
  while (!done()) {
    if (Clock::now() > guard) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

bool finished(Stream& s) {
  auto q = s.query();
  return q.ok() && *q;
}

// A throttled copy ends no earlier than its deadline (bytes over bandwidth after the copy
// began, sleep_until on a steady clock), so the lower bounds hold on any machine; how much
// later it ends is scheduling, which is not asserted.
// A stream's position moves with every operation enqueued on it, and only then; two streams
// never share one.
TEST(HostDevice, StreamPositionCountsWhatIsEnqueued) {
  auto dev = host_device();
  auto a = dev->create_stream("a");
  auto b = dev->create_stream("b");
  ASSERT_TRUE(a.ok() && b.ok());
  const auto p0 = (*a)->position();
  ASSERT_TRUE(p0.has_value());
  EXPECT_EQ((*a)->position(), p0) << "nothing was enqueued";
  EXPECT_NE((*b)->position()->stream, p0->stream);
  auto buf = dev->allocate(1024);
  ASSERT_TRUE(buf.ok());
  ASSERT_TRUE(dev->fill(buf->view(DType::kF32), 1.0f, **a).ok());
  const auto p1 = (*a)->position();
  EXPECT_EQ(p1->enqueued, p0->enqueued + 1);
  ASSERT_TRUE(dev->fill(buf->view(DType::kF32), 2.0f, **b).ok());
  EXPECT_EQ((*a)->position(), p1) << "work on another stream does not move it";
  ASSERT_TRUE((*a)->synchronize().ok());
  EXPECT_EQ((*a)->position(), p1) << "completing work does not move it";
  ASSERT_TRUE((*b)->synchronize().ok());
}

TEST(HostDevice, ThrottledCopyTakesBytesOverBandwidth) {
  constexpr std::uint64_t kBandwidth = 100'000'000;  // 100 MB/s
  constexpr std::size_t kBytes = 8'000'000;          // ideal: 0.08 s
  auto dev = host_device(kBandwidth);
  ASSERT_TRUE(dev);
  auto buf = dev->allocate(kBytes);
  auto host = dev->allocate_pinned(kBytes);
  ASSERT_TRUE(buf.ok() && host.ok());
  std::memset(host->data(), 1, kBytes);
  const double ideal = static_cast<double>(kBytes) / kBandwidth;
  Stream& s = dev->default_stream();

  auto t0 = Clock::now();
  ASSERT_TRUE(dev->copy_to_device(buf->range(), host->bytes(), s).ok());
  ASSERT_TRUE(s.synchronize().ok());
  EXPECT_GE(seconds_since(t0) / ideal, 0.95) << "an upload beat the link";

  t0 = Clock::now();
  ASSERT_TRUE(dev->copy_to_host(host->bytes(), buf->range(), s).ok());
  ASSERT_TRUE(s.synchronize().ok());
  EXPECT_GE(seconds_since(t0) / ideal, 0.95) << "a download beat the link";
}

TEST(HostDevice, DeviceToDeviceCopiesAreNotThrottled) {
  // On a link of 4 KiB/s a throttled copy of 1 MiB would sleep for 256 s; an unthrottled one
  // is a memcpy. The copy must finish while the guard of eventually() (60 s) runs: a bound
  // four times below the throttle and a hundred thousand times above the memcpy, so the
  // verdict does not depend on the machine. (A throttled copy fails the test after its 256 s,
  // inside ctest's timeout.)
  constexpr std::size_t kBytes = 1 << 20;
  auto dev = host_device(4096);
  ASSERT_TRUE(dev);
  auto a = dev->allocate(kBytes), b = dev->allocate(kBytes);
  ASSERT_TRUE(a.ok() && b.ok());
  std::memset(a->address(), 5, kBytes);
  Stream& s = dev->default_stream();
  ASSERT_TRUE(dev->copy_on_device(b->range(), a->range(), s).ok());
  EXPECT_TRUE(eventually([&] { return finished(s); })) << "the device-to-device copy waited for the link";
  ASSERT_TRUE(s.synchronize().ok());
  EXPECT_EQ(static_cast<unsigned char*>(b->address())[kBytes - 1], 5);
}

TEST(HostDevice, DirectionsAreIndependentLinks) {
  // An upload and a download share no engine (PCIe is full duplex): a download completes
  // while an upload is held inside its copy by a GatedSource, however loaded the machine.
  constexpr std::uint64_t kBandwidth = 50'000'000;  // 50 MB/s
  constexpr std::size_t kBytes = 4'000'000;          // ideal: 0.08 s
  constexpr std::size_t kHeld = 64 << 10;
  auto dev = host_device(kBandwidth);
  ASSERT_TRUE(dev);
  auto up = dev->allocate(kBytes), down = dev->allocate(kBytes), held = dev->allocate(kHeld);
  auto h1 = dev->allocate_pinned(kBytes), h2 = dev->allocate_pinned(kBytes);
  auto s1 = dev->create_stream("up"), s2 = dev->create_stream("down"), s3 = dev->create_stream("up2");
  ASSERT_TRUE(up.ok() && down.ok() && held.ok() && h1.ok() && h2.ok() && s1.ok() && s2.ok() && s3.ok());
  std::memset(h1->data(), 2, kBytes);
  std::memset(down->address(), 3, kBytes);
  {
    GatedSource gate(kHeld, 7);
    ASSERT_TRUE(gate.ok()) << "cannot map a gated source: " << std::strerror(errno);
    ASSERT_TRUE(dev->copy_to_device(held->range(), gate.bytes(), **s1).ok());
    ASSERT_TRUE(eventually([&] { return gate.entered(); })) << "the held upload never started";
    // Queued behind the held upload on the one host-to-device engine.
    ASSERT_TRUE(dev->copy_to_device(up->range(), h1->bytes(), **s3).ok());
    ASSERT_TRUE(dev->copy_to_host(h2->bytes(), down->range(), **s2).ok());
    EXPECT_TRUE(eventually([&] { return finished(**s2); }))
        << "the download did not finish while an upload was held: the directions share an engine";
    EXPECT_FALSE(finished(**s1)) << "the gate did not hold the upload";
    EXPECT_FALSE(finished(**s3)) << "a second upload ran while the host-to-device link was busy";
    gate.open();
    ASSERT_TRUE(dev->synchronize().ok());
  }
  EXPECT_EQ(static_cast<unsigned char*>(held->address())[kHeld - 1], 7);
  EXPECT_EQ(h2->data()[kBytes - 1], std::byte{3});
  EXPECT_EQ(static_cast<unsigned char*>(up->address())[kBytes - 1], 2);
  // Two uploads on two streams take the one host-to-device link in turn: each ends no earlier
  // than its own deadline, so together they take at least twice the ideal (a lower bound,
  // deterministic like those above).
  const double ideal = static_cast<double>(kBytes) / kBandwidth;
  const auto t0 = Clock::now();
  ASSERT_TRUE(dev->copy_to_device(up->range(), h1->bytes(), **s1).ok());
  ASSERT_TRUE(dev->copy_to_device(down->range(), h1->bytes(), **s2).ok());
  ASSERT_TRUE(dev->synchronize().ok());
  EXPECT_GE(seconds_since(t0) / ideal, 1.9);
}

TEST(HostDevice, ComputeOverlapsCopies) {
  // A stream blocked behind an upload does not hold back compute on another stream: a fill
  // completes while the upload is held inside its copy by a GatedSource.
  auto dev = host_device(100'000'000);
  ASSERT_TRUE(dev);
  constexpr std::size_t kHeld = 64 << 10;
  auto big = dev->allocate(kHeld);
  auto small = dev->allocate(4096);
  auto s1 = dev->create_stream(), s2 = dev->create_stream();
  ASSERT_TRUE(big.ok() && small.ok() && s1.ok() && s2.ok());
  GatedSource gate(kHeld, 9);
  ASSERT_TRUE(gate.ok()) << "cannot map a gated source: " << std::strerror(errno);
  ASSERT_TRUE(dev->copy_to_device(big->range(), gate.bytes(), **s1).ok());
  ASSERT_TRUE(eventually([&] { return gate.entered(); })) << "the held upload never started";
  ASSERT_TRUE(dev->fill(small->view(DType::kF32), 2.0f, **s2).ok());
  EXPECT_TRUE(eventually([&] { return finished(**s2); })) << "the fill waited for the upload on another stream";
  EXPECT_FALSE(finished(**s1)) << "the gate did not hold the upload";
  EXPECT_EQ(static_cast<float*>(small->address())[7], 2.0f);
  gate.open();
  ASSERT_TRUE((*s1)->synchronize().ok());
  EXPECT_EQ(static_cast<unsigned char*>(big->address())[kHeld - 1], 9);
}

// Drops CAP_IPC_LOCK from the effective set (root ignores RLIMIT_MEMLOCK otherwise) and lowers
// the memlock limit, restoring both on destruction.
class MemlockLimit {
 public:
  explicit MemlockLimit(rlim_t bytes) {
    getrlimit(RLIMIT_MEMLOCK, &old_);
    header_.version = _LINUX_CAPABILITY_VERSION_3;
    header_.pid = 0;
    if (syscall(SYS_capget, &header_, caps_) == 0) {
      std::memcpy(saved_, caps_, sizeof(caps_));
      caps_[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
      caps_ok_ = syscall(SYS_capset, &header_, caps_) == 0;
    }
    rlimit lim = old_;
    lim.rlim_cur = bytes;
    limit_ok_ = setrlimit(RLIMIT_MEMLOCK, &lim) == 0;
  }
  ~MemlockLimit() {
    setrlimit(RLIMIT_MEMLOCK, &old_);
    if (caps_ok_) syscall(SYS_capset, &header_, saved_);
  }
  bool ok() const { return limit_ok_; }

 private:
  rlimit old_{};
  __user_cap_header_struct header_{};
  __user_cap_data_struct caps_[2]{};
  __user_cap_data_struct saved_[2]{};
  bool caps_ok_ = false;
  bool limit_ok_ = false;
};

std::mutex g_log_mu;
std::vector<std::string> g_log_lines;
void capture(LogLevel, const std::string& line) {
  std::lock_guard lk(g_log_mu);
  g_log_lines.push_back(line);
}

TEST(HostDevice, RefusedMlockWarnsOnceCountsAndStillWorks) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer replaces mlock() with a no-op that always succeeds";
#endif
  auto dev = host_device();
  ASSERT_TRUE(dev);
  set_log_sink(&capture);
  std::vector<PinnedBuffer> bufs;
  {
    MemlockLimit limit(64 * 1024);
    if (!limit.ok()) {
      set_log_sink(nullptr);
      GTEST_SKIP() << "cannot lower RLIMIT_MEMLOCK here";
    }
    for (int i = 0; i < 3; ++i) {
      auto p = dev->allocate_pinned(1 << 20);
      ASSERT_TRUE(p.ok()) << p.status();
      EXPECT_FALSE(p->locked());
      std::memset(p->data(), 3, p->size());  // usable
      bufs.push_back(std::move(*p));
    }
  }
  set_log_sink(nullptr);
  EXPECT_EQ(dev->stats().mlock_failures, 3u);
  int warnings = 0;
  for (const auto& l : g_log_lines) warnings += l.find("mlock") != std::string::npos ? 1 : 0;
  EXPECT_EQ(warnings, 1) << "one warning per process, then only the counter";
  // With the limit restored, pinned memory is locked again.
  auto p = dev->allocate_pinned(1 << 20);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->locked());
  EXPECT_EQ(dev->stats().mlock_failures, 3u);
}

TEST(HostDevice, RefusesCapacityBeyondRamAndBadThreadCounts) {
  DeviceOptions o;
  o.capacity = 1ULL << 50;
  auto d = create_device("host", o);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(d.status().message().find("RAM"), std::string::npos) << d.status();
  o.capacity = 1 << 20;
  o.compute_threads = -1;
  EXPECT_FALSE(create_device("host", o).ok());
  o.compute_threads = 1;
  auto one = create_device("host", o);
  ASSERT_TRUE(one.ok());
  EXPECT_NE((*one)->info().name.find("1 compute threads"), std::string::npos) << (*one)->info().name;
}

TEST(HostDevice, FreedBlockIsReusedInPlace) {
  auto dev = host_device();
  ASSERT_TRUE(dev);
  auto a = dev->allocate(1 << 20), b = dev->allocate(1 << 20), c = dev->allocate(1 << 20);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  void* hole = b->address();
  b->reset();
  auto d = dev->allocate(1000 * 1000);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->address(), hole);
}

TEST(HostDevice, Fp16GemmIsEmulatedAndCounted) {
  auto dev = host_device();
  ASSERT_TRUE(dev);
  auto a = dev->allocate(2 * 64), b = dev->allocate(2 * 64), c = dev->allocate(2 * 64);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  auto mv = [](DeviceBuffer& buf) {
    MatrixView m;
    m.data = buf.view(DType::kF16);
    m.rows = 8;
    m.cols = 8;
    return m;
  };
  ASSERT_TRUE(dev->fill(a->view(DType::kF16), 0.5f, dev->default_stream()).ok());
  ASSERT_TRUE(dev->fill(b->view(DType::kF16), 2.0f, dev->default_stream()).ok());
  ASSERT_TRUE(dev->gemm({mv(*a), mv(*b), mv(*c)}, dev->default_stream()).ok());
  ASSERT_TRUE(dev->default_stream().synchronize().ok());
  EXPECT_EQ(static_cast<std::uint16_t*>(c->address())[0], 0x4800) << "8 * 0.5 * 2 = 8 in fp16";
  // Either oneDNN ran fp16 natively or the emulation did and counted itself.
  EXPECT_LE(dev->stats().emulated_gemms, 1u);
  EXPECT_EQ(dev->stats().gemm_flops, 2u * 8 * 8 * 8);
}

TEST(HostDevice, FailedHostFunctionWorkDoesNotStallLaterStreams) {
  // A host function that throws becomes a stream error reported once by synchronize().
  auto dev = host_device();
  ASSERT_TRUE(dev);
  Stream& s = dev->default_stream();
  ASSERT_TRUE(s.launch_host_func([] { throw std::runtime_error("boom"); }).ok());
  std::atomic<bool> after{false};
  ASSERT_TRUE(s.launch_host_func([&] { after = true; }).ok());
  Status st = s.synchronize();
  EXPECT_EQ(st.code(), StatusCode::kInternal);
  EXPECT_NE(st.message().find("boom"), std::string::npos) << st;
  EXPECT_TRUE(after.load());
  EXPECT_TRUE(s.synchronize().ok()) << "the error is reported once";
}

}  // namespace
}  // namespace strata
