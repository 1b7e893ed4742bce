// Tests of what only the host-emulated device does: the copy throttle, independent copy
// engines, page-locking refused by the memlock limit, the fp16 GEMM emulation and its options.
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
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

// The throttled links are slow enough (an 84 ms ideal copy) that the memcpy itself and
// scheduling delays on a loaded machine stay small against the sleep the throttle adds.
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
  const double h2d = seconds_since(t0) / ideal;

  t0 = Clock::now();
  ASSERT_TRUE(dev->copy_to_host(host->bytes(), buf->range(), s).ok());
  ASSERT_TRUE(s.synchronize().ok());
  const double d2h = seconds_since(t0) / ideal;
  // Never faster than the link; slower only by scheduling noise on a loaded machine.
  EXPECT_GE(h2d, 0.95);
  EXPECT_LE(h2d, 3.0);
  EXPECT_GE(d2h, 0.95);
  EXPECT_LE(d2h, 3.0);

  // Device-to-device copies are not throttled: a memcpy of kBytes takes a small fraction of
  // the throttled time; the margin is wide because other processes may share the cores.
  auto buf2 = dev->allocate(kBytes);
  ASSERT_TRUE(buf2.ok());
  t0 = Clock::now();
  ASSERT_TRUE(dev->copy_on_device(buf2->range(), buf->range(), s).ok());
  ASSERT_TRUE(s.synchronize().ok());
  EXPECT_LT(seconds_since(t0) / ideal, 3.0);
}

TEST(HostDevice, DirectionsAreIndependentLinks) {
  // An upload and a download on two streams share no engine: together they take about as long
  // as one (full duplex), not twice as long.
  constexpr std::uint64_t kBandwidth = 50'000'000;  // 50 MB/s
  constexpr std::size_t kBytes = 4'000'000;          // ideal: 0.08 s
  auto dev = host_device(kBandwidth);
  ASSERT_TRUE(dev);
  auto up = dev->allocate(kBytes), down = dev->allocate(kBytes);
  auto h1 = dev->allocate_pinned(kBytes), h2 = dev->allocate_pinned(kBytes);
  auto s1 = dev->create_stream("up"), s2 = dev->create_stream("down");
  ASSERT_TRUE(up.ok() && down.ok() && h1.ok() && h2.ok() && s1.ok() && s2.ok());
  std::memset(h1->data(), 2, kBytes);
  const double ideal = static_cast<double>(kBytes) / kBandwidth;
  auto t0 = Clock::now();
  ASSERT_TRUE(dev->copy_to_device(up->range(), h1->bytes(), **s1).ok());
  ASSERT_TRUE(dev->copy_to_host(h2->bytes(), down->range(), **s2).ok());
  ASSERT_TRUE(dev->synchronize().ok());
  const double ratio = seconds_since(t0) / ideal;
  EXPECT_GE(ratio, 0.95);
  EXPECT_LT(ratio, 1.75) << "the two directions were serialised";
  // Two uploads on two streams do share the one host-to-device link.
  t0 = Clock::now();
  ASSERT_TRUE(dev->copy_to_device(up->range(), h1->bytes(), **s1).ok());
  ASSERT_TRUE(dev->copy_to_device(down->range(), h1->bytes(), **s2).ok());
  ASSERT_TRUE(dev->synchronize().ok());
  EXPECT_GE(seconds_since(t0) / ideal, 1.9);
}

TEST(HostDevice, ComputeOverlapsCopies) {
  // A stream blocked behind a slow upload does not hold back compute on another stream.
  auto dev = host_device(100'000'000);  // 16 MiB takes ~0.17 s
  ASSERT_TRUE(dev);
  auto big = dev->allocate(16 << 20);
  auto small = dev->allocate(4096);
  auto host = dev->allocate_pinned(16 << 20);
  auto s1 = dev->create_stream(), s2 = dev->create_stream();
  ASSERT_TRUE(big.ok() && small.ok() && host.ok() && s1.ok() && s2.ok());
  ASSERT_TRUE(dev->copy_to_device(big->range(), host->bytes(), **s1).ok());
  ASSERT_TRUE(dev->fill(small->view(DType::kF32), 2.0f, **s2).ok());
  ASSERT_TRUE((*s2)->synchronize().ok());
  auto busy = (*s1)->query();
  ASSERT_TRUE(busy.ok());
  EXPECT_FALSE(*busy) << "the fill finished only after the upload";
  EXPECT_EQ(static_cast<float*>(small->address())[7], 2.0f);
  ASSERT_TRUE((*s1)->synchronize().ok());
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
