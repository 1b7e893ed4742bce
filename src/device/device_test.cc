// Conformance tests of the Device seam, run against every backend: "host" always, "cuda"
// where a GPU exists (elsewhere each test skips with the backend's "no CUDA device" reason).
// Everything goes through copies, so the tests never rely on host-addressable device memory.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>

#include "device/device_reference.h"
#include "kernels/adam_math.h"
#include "kernels/numeric.h"
#include "strata/device.h"

namespace strata {
namespace {

using device::ref::HostTensor;

class DeviceTest : public ::testing::TestWithParam<std::string> {
 public:
  void SetUp() override { make(DeviceOptions{}); }

  // (Re)creates the device under test; skips when the backend cannot run here.
  void make(const DeviceOptions& opts) {
    dev_.reset();
    auto d = create_device(GetParam(), opts);
    if (!d.ok() && d.status().code() == StatusCode::kUnavailable) GTEST_SKIP() << d.status().message();
    ASSERT_TRUE(d.ok()) << d.status();
    dev_ = std::move(*d);
  }

  DeviceBuffer alloc(std::size_t bytes) {
    auto b = dev_->allocate(bytes);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(*b) : DeviceBuffer();
  }

  // A device copy of `t` (in a buffer of its own).
  DeviceBuffer upload(const HostTensor& t) {
    DeviceBuffer b = alloc(std::max<std::size_t>(t.bytes(), 1));
    EXPECT_TRUE(dev_->copy_to_device(b.range().subrange(0, t.bytes()).value(), t.storage(), dev_->default_stream()).ok());
    EXPECT_TRUE(dev_->default_stream().synchronize().ok());
    return b;
  }

  HostTensor download(const DeviceBuffer& b, DType t, std::size_t n) {
    HostTensor h(t, n);
    auto r = b.range(0, h.bytes());
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(dev_->copy_to_host(h.storage(), *r, dev_->default_stream()).ok());
    EXPECT_TRUE(dev_->default_stream().synchronize().ok());
    return h;
  }

  float read_scalar(const DeviceBuffer& b) { return download(b, DType::kF32, 1).get(0); }

  std::unique_ptr<Device> dev_;
};

HostTensor random_tensor(DType t, std::size_t n, std::uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  HostTensor h(t, n);
  for (std::size_t i = 0; i < n; ++i) h.set(i, dist(rng));
  return h;
}

std::vector<std::byte> random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng() & 0xff);
  return v;
}

bool same_bits(const HostTensor& a, const HostTensor& b) {
  return a.bytes() == b.bytes() && std::memcmp(a.data(), b.data(), a.bytes()) == 0;
}

// ---------------------------------------------------------------------------------------------
// Registry and memory

TEST(DeviceRegistry, UnknownNameListsKnownBackends) {
  auto d = create_device("tpu");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(d.status().message().find("tpu"), std::string::npos);
  EXPECT_NE(d.status().message().find("host, cuda"), std::string::npos) << d.status();
  EXPECT_EQ(device_backend_names(), (std::vector<std::string>{"host", "cuda"}));
}

TEST(DeviceRegistry, CudaIsEitherUsableOrSaysWhyNot) {
  auto d = create_device("cuda");
  if (d.ok()) {
    EXPECT_EQ((*d)->info().backend, "cuda");
    return;
  }
  EXPECT_EQ(d.status().code(), StatusCode::kUnavailable) << d.status();
  const std::string& m = d.status().message();
  EXPECT_TRUE(m.find("no CUDA device") != std::string::npos || m.find("without the CUDA toolkit") != std::string::npos) << m;
}

TEST(DeviceRegistry, ZeroCapacityIsRefused) {
  DeviceOptions o;
  o.capacity = 0;
  auto d = create_device("host", o);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("memory.device_budget"), std::string::npos);
}

TEST(DeviceRegistry, OptionsFollowTheProfile) {
  MemoryConfig m;
  m.device_budget = 3ULL << 30;
  m.host_device_bandwidth = 25'000'000'000ULL;
  DeviceOptions o = device_options(m);
  EXPECT_EQ(o.capacity, 3ULL << 30);
  EXPECT_EQ(o.copy_bandwidth, 25'000'000'000ULL);
}

TEST_P(DeviceTest, CapacityIsHardAndMemoryIsReusedAfterFree) {
  DeviceOptions o;
  o.capacity = 8 << 20;  // 8 MiB
  make(o);
  if (!dev_) return;
  auto a = dev_->allocate(5 << 20);
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = dev_->allocate(4 << 20);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kOutOfMemory);
  const std::string& m = b.status().message();
  EXPECT_NE(m.find("requested 4194304 B"), std::string::npos) << m;
  EXPECT_NE(m.find("capacity 8388608 B"), std::string::npos) << m;
  EXPECT_NE(m.find("used "), std::string::npos) << m;
  EXPECT_NE(m.find("memory.device_budget"), std::string::npos) << m;
  EXPECT_EQ(dev_->stats().allocation_failures, 1u);
  a->reset();
  auto c = dev_->allocate(4 << 20);
  EXPECT_TRUE(c.ok()) << c.status();
  auto d = dev_->allocate(4 << 20);
  EXPECT_TRUE(d.ok()) << d.status();
  EXPECT_GE(dev_->stats().peak_used, 8u << 20);
  c->reset();
  d->reset();
  // After everything is freed, the whole capacity is one block again.
  auto e = dev_->allocate(8 << 20);
  EXPECT_TRUE(e.ok()) << e.status();
}

TEST_P(DeviceTest, ManySmallAllocationsFillAndDrain) {
  DeviceOptions o;
  o.capacity = 1 << 20;
  make(o);
  if (!dev_) return;
  std::vector<DeviceBuffer> bufs;
  for (;;) {
    auto b = dev_->allocate(1000);
    if (!b.ok()) {
      EXPECT_EQ(b.status().code(), StatusCode::kOutOfMemory);
      break;
    }
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b->address()) % kDeviceAlignment, 0u);
    bufs.push_back(std::move(*b));
    ASSERT_LT(bufs.size(), 2000u) << "capacity not enforced";
  }
  EXPECT_GE(bufs.size(), 900u);  // 1 MiB / 1024-byte blocks (rounded): ~1024, minus allocator granularity
  EXPECT_EQ(dev_->stats().live_allocations, bufs.size());
  // Free every other block; each freed hole takes a same-sized block again.
  std::size_t freed = 0;
  for (std::size_t i = 0; i < bufs.size(); i += 2, ++freed) bufs[i].reset();
  for (std::size_t i = 0; i < freed; ++i) {
    auto b = dev_->allocate(1000);
    ASSERT_TRUE(b.ok()) << "hole " << i << ": " << b.status();
    bufs.push_back(std::move(*b));
  }
  bufs.clear();
  EXPECT_EQ(dev_->stats().used, 0u);
  EXPECT_EQ(dev_->stats().live_allocations, 0u);
}

TEST_P(DeviceTest, ConcurrentAllocateAndFreeKeepAccounts) {
  DeviceOptions o;
  o.capacity = 16 << 20;
  make(o);
  if (!dev_) return;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<DeviceBuffer> mine;
      for (int i = 0; i < 500; ++i) {
        if (!mine.empty() && rng() % 2) {
          mine.erase(mine.begin() + static_cast<long>(rng() % mine.size()));
        } else {
          auto b = dev_->allocate(1 + rng() % 65536);
          if (b.ok()) {
            mine.push_back(std::move(*b));
          } else if (b.status().code() != StatusCode::kOutOfMemory) {
            ++failures;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(dev_->stats().used, 0u);
}

TEST_P(DeviceTest, ZeroSizedAndOutOfBoundsRequestsAreRefused) {
  auto z = dev_->allocate(0);
  EXPECT_EQ(z.status().code(), StatusCode::kInvalidArgument);
  DeviceBuffer b = alloc(100);
  EXPECT_FALSE(b.range(90, 11).ok());
  EXPECT_TRUE(b.range(90, 10).ok());
  EXPECT_FALSE(b.view(DType::kF32, 2, 1).ok()) << "misaligned offset";
  EXPECT_FALSE(b.view(DType::kF32, 4, 25).ok());
  EXPECT_TRUE(b.view(DType::kF32, 4, 24).ok());
  EXPECT_EQ(b.view(DType::kBF16).count(), 50u);
  EXPECT_FALSE(b.view(DType::kF32).slice(20, 6).ok());
  // A view of a freed buffer is refused, not used.
  DeviceRange r = b.range();
  b.reset();
  std::vector<std::byte> host(100);
  Status st = dev_->copy_to_device(r, host, dev_->default_stream());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("freed"), std::string::npos) << st;
  // A default view is refused too.
  EXPECT_FALSE(dev_->copy_to_device(DeviceRange(), std::span<const std::byte>(host.data(), 1), dev_->default_stream()).ok());
}

TEST_P(DeviceTest, PinnedMemoryIsPageAlignedAndCounted) {
  auto p = dev_->allocate_pinned(10000);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p->data()) % 4096, 0u);
  EXPECT_EQ(p->size(), 10000u);
  std::memset(p->data(), 0x5a, p->size());
  EXPECT_EQ(p->as<float>().size(), 2500u);
  EXPECT_EQ(dev_->stats().pinned_bytes, 10000u);
  EXPECT_EQ(dev_->stats().pinned_allocations, 1u);
  PinnedBuffer moved = std::move(*p);
  EXPECT_FALSE(*p);
  moved.reset();
  EXPECT_EQ(dev_->stats().pinned_bytes, 0u);
}

// ---------------------------------------------------------------------------------------------
// Copies, streams and events

TEST_P(DeviceTest, CopiesRoundTripOddSizesAndOffsets) {
  DeviceBuffer a = alloc(3 << 20);
  DeviceBuffer b = alloc(3 << 20);
  auto pinned = dev_->allocate_pinned(3 << 20);
  ASSERT_TRUE(pinned.ok());
  Stream& s = dev_->default_stream();
  std::uint32_t seed = 1;
  for (std::size_t n : {1ul, 3ul, 7ul, 255ul, 257ul, 4095ul, 4097ul, 65537ul, (1ul << 20) + 13}) {
    for (std::size_t off : {0ul, 1ul, 13ul}) {
      const auto src = random_bytes(n, seed++);
      std::vector<std::byte> back(n);
      ASSERT_TRUE(dev_->copy_to_device(a.range(off, n).value(), src, s).ok());
      ASSERT_TRUE(dev_->copy_on_device(b.range(off + 5, n).value(), a.range(off, n).value(), s).ok());
      ASSERT_TRUE(dev_->copy_to_host(back, b.range(off + 5, n).value(), s).ok());
      ASSERT_TRUE(s.synchronize().ok());
      EXPECT_EQ(back, src) << "n=" << n << " off=" << off;
      // Pinned staging, as the tier manager uses it.
      std::span<std::byte> stage = pinned->bytes().subspan(off, n);
      ASSERT_TRUE(dev_->copy_to_host(stage, a.range(off, n).value(), s).ok());
      ASSERT_TRUE(s.synchronize().ok());
      EXPECT_EQ(0, std::memcmp(stage.data(), src.data(), n));
    }
  }
  const DeviceStats st = dev_->stats();
  EXPECT_GT(st.bytes_to_device, 3ul << 20);
  EXPECT_GT(st.bytes_to_host, 3ul << 20);
  EXPECT_GT(st.bytes_on_device, 3ul << 20);
}

TEST_P(DeviceTest, CopySizeMismatchAndOverlapAreRefused) {
  DeviceBuffer a = alloc(1024);
  std::vector<std::byte> h(100);
  EXPECT_EQ(dev_->copy_to_device(a.range(0, 99).value(), h, dev_->default_stream()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dev_->copy_to_host(h, a.range(0, 101).value(), dev_->default_stream()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dev_->copy_on_device(a.range(0, 100).value(), a.range(50, 100).value(), dev_->default_stream()).code(),
            StatusCode::kInvalidArgument);
}

TEST_P(DeviceTest, OneStreamRunsInEnqueueOrder) {
  // Many writes of different contents to one buffer, each followed by a read into its own host
  // vector: every read sees exactly the write before it.
  Stream& s = dev_->default_stream();
  constexpr int kRounds = 64;
  constexpr std::size_t kN = 4099;
  DeviceBuffer buf = alloc(kN);
  std::vector<std::vector<std::byte>> src, dst(kRounds, std::vector<std::byte>(kN));
  for (int i = 0; i < kRounds; ++i) src.push_back(random_bytes(kN, 100 + i));
  std::vector<int> order;
  for (int i = 0; i < kRounds; ++i) {
    ASSERT_TRUE(dev_->copy_to_device(buf.range(), src[i], s).ok());
    ASSERT_TRUE(dev_->copy_to_host(dst[i], buf.range(), s).ok());
    ASSERT_TRUE(s.launch_host_func([&order, i] { order.push_back(i); }).ok());
  }
  ASSERT_TRUE(s.synchronize().ok());
  for (int i = 0; i < kRounds; ++i) EXPECT_EQ(dst[i], src[i]) << "round " << i;
  ASSERT_EQ(order.size(), static_cast<std::size_t>(kRounds));
  for (int i = 0; i < kRounds; ++i) EXPECT_EQ(order[i], i);
  auto q = s.query();
  ASSERT_TRUE(q.ok());
  EXPECT_TRUE(*q);
}

TEST_P(DeviceTest, EventsOrderWorkAcrossStreamsUnderConcurrency) {
  // Each of several threads owns a producer and a consumer stream. The producer stalls in a
  // host function, then uploads round i's data and records an event; the consumer waits on the
  // event and copies the buffer out. Without the wait the consumer would read stale data.
  constexpr int kThreads = 4;
  constexpr int kRounds = 12;
  constexpr std::size_t kN = 1 << 16;
  std::atomic<int> mismatches{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto prod = dev_->create_stream("producer");
      auto cons = dev_->create_stream("consumer");
      auto ev = dev_->create_event();
      auto buf = dev_->allocate(kN);
      if (!prod.ok() || !cons.ok() || !ev.ok() || !buf.ok()) {
        ++errors;
        return;
      }
      std::vector<std::vector<std::byte>> src, dst(kRounds, std::vector<std::byte>(kN));
      for (int i = 0; i < kRounds; ++i) src.push_back(random_bytes(kN, 1000 * t + i));
      for (int i = 0; i < kRounds; ++i) {
        Status st = (*prod)->launch_host_func([] { std::this_thread::sleep_for(std::chrono::milliseconds(2)); });
        if (st.ok()) st = dev_->copy_to_device(buf->range(), src[i], **prod);
        if (st.ok()) st = (*prod)->record(**ev);
        if (st.ok()) st = (*cons)->wait(**ev);
        if (st.ok()) st = dev_->copy_to_host(dst[i], buf->range(), **cons);
        // The next round's upload must not overwrite the buffer before this read is done.
        if (st.ok()) st = (*cons)->record(**ev);
        if (st.ok()) st = (*prod)->wait(**ev);
        if (!st.ok()) ++errors;
      }
      if (!(*cons)->synchronize().ok() || !(*prod)->synchronize().ok()) ++errors;
      for (int i = 0; i < kRounds; ++i) {
        if (dst[i] != src[i]) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_P(DeviceTest, EventQueryAndSynchronize) {
  auto ev = dev_->create_event();
  ASSERT_TRUE(ev.ok());
  auto q0 = (*ev)->query();
  ASSERT_TRUE(q0.ok());
  EXPECT_TRUE(*q0) << "a never-recorded event is complete";
  EXPECT_TRUE((*ev)->synchronize().ok());
  auto s = dev_->create_stream();
  ASSERT_TRUE(s.ok());
  std::atomic<bool> release{false};
  ASSERT_TRUE((*s)->launch_host_func([&] {
    while (!release.load()) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }).ok());
  ASSERT_TRUE((*s)->record(**ev).ok());
  auto q1 = (*ev)->query();
  ASSERT_TRUE(q1.ok());
  EXPECT_FALSE(*q1) << "the recorded work is held back";
  auto sq = (*s)->query();
  ASSERT_TRUE(sq.ok());
  EXPECT_FALSE(*sq);
  // A second stream waiting on the event is held back too.
  auto s2 = dev_->create_stream();
  ASSERT_TRUE(s2.ok());
  std::atomic<bool> ran{false};
  ASSERT_TRUE((*s2)->wait(**ev).ok());
  ASSERT_TRUE((*s2)->launch_host_func([&] { ran = true; }).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(ran.load());
  release = true;
  EXPECT_TRUE((*ev)->synchronize().ok());
  auto q2 = (*ev)->query();
  ASSERT_TRUE(q2.ok());
  EXPECT_TRUE(*q2);
  EXPECT_TRUE((*s2)->synchronize().ok());
  EXPECT_TRUE(ran.load());
  EXPECT_TRUE(dev_->synchronize().ok());
}

TEST_P(DeviceTest, ForeignStreamsAndEventsAreRefused) {
  auto other = create_device("host");
  ASSERT_TRUE(other.ok());
  DeviceBuffer a = alloc(64);
  std::vector<std::byte> h(64);
  Status st = dev_->copy_to_device(a.range(), h, (*other)->default_stream());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("another device"), std::string::npos) << st;
  auto ob = (*other)->allocate(64);
  ASSERT_TRUE(ob.ok());
  st = dev_->copy_to_device(ob->range(), h, dev_->default_stream());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  auto oe = (*other)->create_event();
  ASSERT_TRUE(oe.ok());
  EXPECT_EQ(dev_->default_stream().wait(**oe).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dev_->default_stream().record(**oe).code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// GEMM against the double-precision reference

struct GemmCase {
  DType in, out;
  bool ta, tb;
  std::int64_t m, n, k, batch;
  std::int64_t pad;  // extra leading-dimension elements
  float alpha, beta;
};

void run_gemm_case(DeviceTest* t, Device& dev, const GemmCase& gc, std::uint32_t seed) {
  auto mat = [&](std::int64_t rows, std::int64_t cols) {
    MatrixView m;
    m.rows = rows;
    m.cols = cols;
    m.ld = cols + gc.pad;
    m.batch_stride = rows * m.ld + 3;  // gaps between the matrices of a batch
    return m;
  };
  MatrixView am = gc.ta ? mat(gc.k, gc.m) : mat(gc.m, gc.k);
  MatrixView bm = gc.tb ? mat(gc.n, gc.k) : mat(gc.k, gc.n);
  MatrixView cm = mat(gc.m, gc.n);
  auto count = [&](const MatrixView& m) {
    return static_cast<std::size_t>((gc.batch - 1) * m.batch_stride + (m.rows - 1) * m.ld + m.cols);
  };
  HostTensor ha = random_tensor(gc.in, count(am), seed);
  HostTensor hb = random_tensor(gc.in, count(bm), seed + 1);
  HostTensor hc = random_tensor(gc.out, count(cm), seed + 2);
  DeviceBuffer da = t->upload(ha), db = t->upload(hb), dc = t->upload(hc);
  am.data = da.view(gc.in, 0, ha.count()).value();
  bm.data = db.view(gc.in, 0, hb.count()).value();
  cm.data = dc.view(gc.out, 0, hc.count()).value();
  GemmArgs g{am, bm, cm, gc.ta, gc.tb, gc.alpha, gc.beta, gc.batch};
  ASSERT_TRUE(dev.gemm(g, dev.default_stream()).ok());
  HostTensor got = t->download(dc, gc.out, hc.count());
  HostTensor want = hc;
  device::ref::gemm(ha, am, hb, bm, want, cm, gc.ta, gc.tb, gc.alpha, gc.beta, gc.batch);
  // fp32 accumulation of K products of magnitude <= 1: error grows like K * 2^-24; an output
  // stored in bf16/fp16 adds one rounding of the result (2^-9 / 2^-12 relative).
  const double out_rel = gc.out == DType::kF32 ? 0.0 : gc.out == DType::kBF16 ? 1.0 / 256 : 1.0 / 2048;
  const double abs_tol = 1e-5 * static_cast<double>(gc.k) * (std::fabs(gc.alpha) + std::fabs(gc.beta) + 1.0);
  int bad = 0;
  for (std::size_t i = 0; i < want.count() && bad < 5; ++i) {
    const double w = want.get(i), x = got.get(i);
    if (std::fabs(w - x) > abs_tol + out_rel * std::fabs(w)) {
      ++bad;
      ADD_FAILURE() << "gemm " << dtype_name(gc.in) << "->" << dtype_name(gc.out) << " ta=" << gc.ta << " tb=" << gc.tb
                    << " m=" << gc.m << " n=" << gc.n << " k=" << gc.k << " batch=" << gc.batch << " alpha=" << gc.alpha
                    << " beta=" << gc.beta << ": element " << i << " is " << x << ", want " << w;
    }
  }
}

TEST_P(DeviceTest, GemmMatchesReferenceForEveryTransposeAndDtype) {
  std::uint32_t seed = 7;
  for (DType in : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (DType out : {DType::kF32, in}) {
      for (bool ta : {false, true}) {
        for (bool tb : {false, true}) {
          run_gemm_case(this, *dev_, {in, out, ta, tb, 17, 23, 31, 1, 0, 1.0f, 0.0f}, seed++);
          run_gemm_case(this, *dev_, {in, out, ta, tb, 9, 5, 64, 3, 2, 0.5f, 1.0f}, seed++);
          // Padding and batch gaps with beta = 0: C's gaps are not the product's to write.
          run_gemm_case(this, *dev_, {in, out, ta, tb, 6, 7, 5, 2, 3, 1.0f, 0.0f}, seed++);
          if (out == DType::kF32) run_gemm_case(this, *dev_, {in, out, ta, tb, 33, 65, 7, 2, 1, -1.25f, 0.5f}, seed++);
          if (HasFailure()) return;
        }
      }
    }
  }
}

TEST_P(DeviceTest, GemmAtModelShapes) {
  // The default model's QKV projection (C = 256 -> 3C) and its weight gradient, for 256 of the
  // B*T = 1024 token rows (the reference is a plain triple loop).
  run_gemm_case(this, *dev_, {DType::kF32, DType::kF32, false, false, 256, 768, 256, 1, 0, 1.0f, 0.0f}, 99);
  run_gemm_case(this, *dev_, {DType::kBF16, DType::kF32, true, false, 256, 768, 256, 1, 0, 1.0f, 1.0f}, 98);
  // Attention scores: (B*H) x (T, hd) @ (T, hd)^T with the 1/sqrt(hd) scale.
  run_gemm_case(this, *dev_, {DType::kF32, DType::kF32, false, true, 128, 128, 64, 4, 0, 0.125f, 0.0f}, 97);
}

TEST_P(DeviceTest, GemmRefusesBadShapes) {
  DeviceBuffer a = alloc(4 * 100), b = alloc(4 * 100), c = alloc(4 * 100);
  auto mv = [](const DeviceBuffer& buf, std::int64_t r, std::int64_t co, DType t = DType::kF32) {
    MatrixView m;
    m.data = buf.view(t);
    m.rows = r;
    m.cols = co;
    return m;
  };
  Stream& s = dev_->default_stream();
  GemmArgs g{mv(a, 4, 5), mv(b, 6, 3), mv(c, 4, 3)};
  Status st = dev_->gemm(g, s);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("do not chain"), std::string::npos) << st;
  g = GemmArgs{mv(a, 10, 10), mv(b, 10, 11), mv(c, 10, 11)};
  st = dev_->gemm(g, s);
  EXPECT_NE(st.message().find("view holds"), std::string::npos) << st;
  g = GemmArgs{mv(a, 4, 5, DType::kBF16), mv(b, 5, 3), mv(c, 4, 3)};
  EXPECT_EQ(dev_->gemm(g, s).code(), StatusCode::kInvalidArgument);
  g = GemmArgs{mv(a, 4, 5), mv(b, 5, 3), mv(c, 4, 3, DType::kBF16)};
  EXPECT_EQ(dev_->gemm(g, s).code(), StatusCode::kInvalidArgument) << "fp32 inputs, bf16 output";
  g = GemmArgs{mv(a, 4, 5), mv(b, 5, 3), mv(a, 4, 3)};
  EXPECT_EQ(dev_->gemm(g, s).code(), StatusCode::kInvalidArgument) << "C overlaps A";
  g = GemmArgs{mv(a, 4, 5), mv(b, 5, 3), mv(c, 4, 3)};
  g.batch = 0;
  EXPECT_EQ(dev_->gemm(g, s).code(), StatusCode::kInvalidArgument);
  g.batch = 1;
  g.a.ld = 2;
  EXPECT_EQ(dev_->gemm(g, s).code(), StatusCode::kInvalidArgument) << "ld < cols";
}

// ---------------------------------------------------------------------------------------------
// Element-wise primitives against the scalar reference

constexpr DType kAllTypes[] = {DType::kF32, DType::kBF16, DType::kF16};
constexpr std::size_t kSizes[] = {1, 15, 16, 17, 1000, 100003};

TEST_P(DeviceTest, FillMatchesReference) {
  for (DType t : kAllTypes) {
    for (std::size_t n : kSizes) {
      HostTensor h(t, n);
      DeviceBuffer b = upload(h);
      ASSERT_TRUE(dev_->fill(b.view(t, 0, n).value(), 0.3f, dev_->default_stream()).ok());
      HostTensor want(t, n);
      device::ref::fill(want, 0.3f);
      EXPECT_TRUE(same_bits(download(b, t, n), want)) << dtype_name(t) << " n=" << n;
    }
  }
}

TEST_P(DeviceTest, CastMatchesReferenceForEveryPair) {
  for (DType from : kAllTypes) {
    for (DType to : kAllTypes) {
      for (std::size_t n : kSizes) {
        // Values beyond fp16's range and below its normal range exercise overflow and subnormals.
        HostTensor src = random_tensor(from, n, static_cast<std::uint32_t>(n), -1e5f, 1e5f);
        if (n > 3) {
          src.set(0, std::numeric_limits<float>::infinity());
          src.set(1, std::nanf(""));
          src.set(2, 3e-6f);
        }
        DeviceBuffer ds = upload(src);
        DeviceBuffer dd = alloc(n * dtype_size(to));
        ASSERT_TRUE(dev_->cast(dd.view(to, 0, n).value(), ds.view(from, 0, n).value(), dev_->default_stream()).ok());
        HostTensor want(to, n);
        device::ref::cast(want, src);
        EXPECT_TRUE(same_bits(download(dd, to, n), want)) << dtype_name(from) << "->" << dtype_name(to) << " n=" << n;
      }
    }
  }
}

TEST_P(DeviceTest, ScaleMatchesReference) {
  for (DType t : kAllTypes) {
    for (std::size_t n : kSizes) {
      HostTensor h = random_tensor(t, n, 3, -100.0f, 100.0f);
      DeviceBuffer b = upload(h);
      ASSERT_TRUE(dev_->scale(b.view(t, 0, n).value(), 0.7f, dev_->default_stream()).ok());
      device::ref::scale(h, 0.7f);
      EXPECT_TRUE(same_bits(download(b, t, n), h)) << dtype_name(t) << " n=" << n;
    }
  }
}

TEST_P(DeviceTest, AxpyMatchesReferenceForEveryPair) {
  for (DType yt : kAllTypes) {
    for (DType xt : kAllTypes) {
      for (std::size_t n : kSizes) {
        HostTensor y = random_tensor(yt, n, 5), x = random_tensor(xt, n, 6);
        DeviceBuffer dy = upload(y), dx = upload(x);
        ASSERT_TRUE(dev_->axpy(dy.view(yt, 0, n).value(), -0.37f, dx.view(xt, 0, n).value(), dev_->default_stream()).ok());
        device::ref::axpy(y, -0.37f, x);
        EXPECT_TRUE(same_bits(download(dy, yt, n), y)) << dtype_name(yt) << "+=" << dtype_name(xt) << " n=" << n;
      }
    }
  }
}

TEST_P(DeviceTest, CheckFiniteFindsEveryInfAndNan) {
  DeviceBuffer flag = alloc(4);
  Stream& s = dev_->default_stream();
  for (DType t : kAllTypes) {
    for (std::size_t n : kSizes) {
      for (int kind = 0; kind < 4; ++kind) {  // clean, +inf, -inf, NaN
        for (std::size_t pos : {std::size_t{0}, n / 2, n - 1}) {
          HostTensor h = random_tensor(t, n, 11);
          if (kind == 1) h.set(pos, std::numeric_limits<float>::infinity());
          if (kind == 2) h.set(pos, -std::numeric_limits<float>::infinity());
          if (kind == 3) h.set(pos, std::nanf(""));
          DeviceBuffer b = upload(h);
          ASSERT_TRUE(dev_->fill(flag.view(DType::kF32), 0.0f, s).ok());
          ASSERT_TRUE(dev_->check_finite(b.view(t, 0, n).value(), flag.view(DType::kF32), s).ok());
          EXPECT_EQ(read_scalar(flag), device::ref::any_nonfinite(h) ? 1.0f : 0.0f)
              << dtype_name(t) << " n=" << n << " kind=" << kind << " pos=" << pos;
          if (kind == 0) break;
        }
      }
    }
  }
  // The flag accumulates: a clean tensor after a dirty one leaves it set.
  HostTensor bad = random_tensor(DType::kF32, 10, 1);
  bad.set(3, std::nanf(""));
  HostTensor good = random_tensor(DType::kF32, 10, 2);
  DeviceBuffer db = upload(bad), dg = upload(good);
  ASSERT_TRUE(dev_->fill(flag.view(DType::kF32), 0.0f, s).ok());
  ASSERT_TRUE(dev_->check_finite(db.view(DType::kF32), flag.view(DType::kF32), s).ok());
  ASSERT_TRUE(dev_->check_finite(dg.view(DType::kF32), flag.view(DType::kF32), s).ok());
  EXPECT_EQ(read_scalar(flag), 1.0f);
  // The flag must be one fp32 element.
  EXPECT_EQ(dev_->check_finite(dg.view(DType::kF32), dg.view(DType::kF32), s).code(), StatusCode::kInvalidArgument);
}

TEST_P(DeviceTest, SumSquaresMatchesReference) {
  DeviceBuffer acc = alloc(4);
  Stream& s = dev_->default_stream();
  for (DType t : kAllTypes) {
    for (std::size_t n : {1ul, 17ul, 1000ul, 100003ul, 1ul << 20}) {
      HostTensor h = random_tensor(t, n, 13, -2.0f, 2.0f);
      DeviceBuffer b = upload(h);
      ASSERT_TRUE(dev_->fill(acc.view(DType::kF32), 0.5f, s).ok());
      ASSERT_TRUE(dev_->sum_squares(b.view(t, 0, n).value(), acc.view(DType::kF32), s).ok());
      const double want = 0.5 + device::ref::sum_squares(h);
      // fp32 partial sums: relative error bounded by ~ log2(n) * 2^-24 for a tree-shaped sum,
      // n * 2^-24 for a serial one; 1e-4 covers a serial run of 2^20 terms.
      EXPECT_NEAR(read_scalar(acc), want, 1e-4 * want) << dtype_name(t) << " n=" << n;
    }
  }
}

TEST_P(DeviceTest, AdamStepMatchesTheSharedScalarMathBitForBit) {
  Stream& s = dev_->default_stream();
  for (DType gt : kAllTypes) {
    for (int out = 0; out < 3; ++out) {  // none, bf16, fp16 copy
      for (bool adamw : {true, false}) {
        for (std::size_t n : {1ul, 17ul, 100003ul}) {
          HostTensor p = random_tensor(DType::kF32, n, 21), g = random_tensor(gt, n, 22);
          HostTensor m = random_tensor(DType::kF32, n, 23, -0.1f, 0.1f), v = random_tensor(DType::kF32, n, 24, 0.0f, 0.01f);
          const DType ot = out == 1 ? DType::kBF16 : DType::kF16;
          DeviceBuffer dp = upload(p), dg = upload(g), dm = upload(m), dv = upload(v);
          DeviceBuffer dout = alloc(2 * n);
          AdamHyper h;
          h.lr = 1e-3;
          h.weight_decay = 0.01;
          h.mode = adamw ? AdamMode::kAdamW : AdamMode::kAdam;
          AdamStep at;
          at.grad_scale = 0.5;
          AdamTensors tensors{dp.view(DType::kF32), dg.view(gt, 0, n).value(), dm.view(DType::kF32), dv.view(DType::kF32),
                              out == 0 ? DeviceView() : dout.view(ot, 0, n).value()};
          HostTensor po(ot, n);
          for (std::int64_t step = 1; step <= 3; ++step) {
            at.step = step;
            ASSERT_TRUE(dev_->adam_step(tensors, h, at, s).ok());
            adam::Hyper ah;
            ah.lr = h.lr;
            ah.beta1 = h.beta1;
            ah.beta2 = h.beta2;
            ah.eps = h.eps;
            ah.weight_decay = h.weight_decay;
            ah.mode = adamw ? adam::Mode::kAdamW : adam::Mode::kAdam;
            const adam::Constants k = adam::make_constants(ah, step, at.grad_scale);
            for (std::size_t i = 0; i < n; ++i) {
              float pi = p.get(i), mi = m.get(i), vi = v.get(i);
              adam::update(k, g.get(i), pi, mi, vi);
              p.set(i, pi);
              m.set(i, mi);
              v.set(i, vi);
              po.set(i, pi);
            }
          }
          const std::string what = std::string("grads ") + std::string(dtype_name(gt)) + " out " + std::to_string(out) +
                                   (adamw ? " adamw" : " adam") + " n=" + std::to_string(n);
          EXPECT_TRUE(same_bits(download(dp, DType::kF32, n), p)) << what;
          EXPECT_TRUE(same_bits(download(dm, DType::kF32, n), m)) << what;
          EXPECT_TRUE(same_bits(download(dv, DType::kF32, n), v)) << what;
          if (out != 0) {
            EXPECT_TRUE(same_bits(download(dout, ot, n), po)) << what;
          }
        }
      }
    }
  }
}

TEST_P(DeviceTest, AdamStepFollowsTheTextbookFormula) {
  // Independent of adam_math.h: one AdamW step from m = v = 0 in double precision.
  const std::size_t n = 1000;
  HostTensor p = random_tensor(DType::kF32, n, 31), g = random_tensor(DType::kF32, n, 32);
  HostTensor zeros(DType::kF32, n);
  DeviceBuffer dp = upload(p), dg = upload(g), dm = upload(zeros), dv = upload(zeros);
  AdamHyper h;
  h.lr = 0.01;
  h.weight_decay = 0.1;
  ASSERT_TRUE(dev_->adam_step({dp.view(DType::kF32), dg.view(DType::kF32), dm.view(DType::kF32), dv.view(DType::kF32), {}}, h,
                              AdamStep{}, dev_->default_stream())
                  .ok());
  HostTensor got = download(dp, DType::kF32, n);
  for (std::size_t i = 0; i < n; ++i) {
    const double pd = p.get(i) * (1.0 - h.lr * h.weight_decay);
    const double gi = g.get(i);
    const double m = (1 - h.beta1) * gi, v = (1 - h.beta2) * gi * gi;
    const double mhat = m / (1 - h.beta1), denom = std::sqrt(v) / std::sqrt(1 - h.beta2) + h.eps;
    const double want = pd - h.lr * mhat / denom;
    ASSERT_NEAR(got.get(i), want, 1e-6 + 1e-5 * std::fabs(want)) << i;
  }
}

TEST_P(DeviceTest, AdamStepRefusesBadArguments) {
  DeviceBuffer a = alloc(400), b = alloc(400), c = alloc(400), d = alloc(400);
  AdamTensors t{a.view(DType::kF32), b.view(DType::kF32), c.view(DType::kF32), d.view(DType::kF32), {}};
  AdamHyper h;
  AdamStep at;
  at.step = 0;
  Status st = dev_->adam_step(t, h, at, dev_->default_stream());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("step"), std::string::npos) << st;
  at.step = 1;
  h.beta1 = 1.0;
  EXPECT_EQ(dev_->adam_step(t, h, at, dev_->default_stream()).code(), StatusCode::kInvalidArgument);
  h.beta1 = 0.9;
  at.grad_scale = std::nan("");
  EXPECT_EQ(dev_->adam_step(t, h, at, dev_->default_stream()).code(), StatusCode::kInvalidArgument);
  at.grad_scale = 1.0;
  t.exp_avg = b.view(DType::kF32);
  st = dev_->adam_step(t, h, at, dev_->default_stream());
  EXPECT_NE(st.message().find("overlap"), std::string::npos) << st;
  t.exp_avg = c.view(DType::kBF16);
  EXPECT_EQ(dev_->adam_step(t, h, at, dev_->default_stream()).code(), StatusCode::kInvalidArgument);
  t.exp_avg = c.view(DType::kF32);
  t.params_out = d.view(DType::kF32);
  EXPECT_EQ(dev_->adam_step(t, h, at, dev_->default_stream()).code(), StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Backends, DeviceTest, ::testing::Values("host", "cuda"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace strata
