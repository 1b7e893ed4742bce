// Every fault the FaultyEngine injects surfaces as a Status — at every position in a
// workload — and no read ever returns wrong bytes silently.
#include "nvme/faulty_engine.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "nvme/nvme_test_util.h"
#include "nvme/swap_store.h"
#include "strata/units.h"

namespace strata::nvme {
namespace {

using testing::AlignedBytes;
using testing::ScratchDir;
using testing::fill_random;

NvmeConfig config(const std::string& engine, bool direct, bool checksums) {
  NvmeConfig c;
  c.engine = engine;
  c.direct = direct;
  c.checksums = checksums;
  c.block_size = 16 * KiB;
  c.queue_depth = 4;
  c.registered_buffers = false;
  return c;
}

std::unique_ptr<FaultyEngine> faulty(const NvmeConfig& c) {
  auto inner = make_io_engine(c);
  EXPECT_TRUE(inner.ok()) << inner.status();
  return std::make_unique<FaultyEngine>(std::move(inner).value());
}

// A fixed workload over a swap store: slot sizes chosen so that slots span one request,
// several stripe units, and a partial tail (two requests under O_DIRECT).
const std::vector<std::uint64_t>& slot_sizes() {
  static const std::vector<std::uint64_t> sizes = {4096, 1000, 40 * KiB + 5, 16 * KiB, 70000};
  return sizes;
}

struct Workload {
  std::vector<SwapSlot> slots;
  std::vector<AlignedBytes> data;
};

Workload prepare(SwapStore& s, std::uint64_t seed) {
  Workload w;
  std::mt19937_64 rng(seed);
  for (std::uint64_t size : slot_sizes()) {
    auto slot = s.allocate(size);
    EXPECT_TRUE(slot.ok()) << slot.status();
    w.slots.push_back(*slot);
    w.data.emplace_back(size);
    fill_random(w.data.back().span(), rng);
  }
  return w;
}

// Writes every slot (all in flight together); returns each write's status.
std::vector<Status> write_all(SwapStore& s, const Workload& w) {
  std::vector<std::shared_ptr<IoCompletion>> cs;
  for (std::size_t i = 0; i < w.slots.size(); ++i) {
    auto c = s.write(w.slots[i], w.data[i].cspan());
    EXPECT_TRUE(c.ok()) << c.status();
    cs.push_back(*c);
  }
  std::vector<Status> out;
  for (auto& c : cs) out.push_back(c->wait());
  return out;
}

// Reads every slot; a read that reports OK must return exactly the bytes written.
std::vector<Status> read_all_and_check(SwapStore& s, const Workload& w, const std::vector<bool>& written) {
  std::vector<Status> out(w.slots.size());
  std::vector<AlignedBytes> bufs;
  std::vector<std::shared_ptr<IoCompletion>> cs(w.slots.size());
  for (std::size_t i = 0; i < w.slots.size(); ++i) {
    bufs.emplace_back(w.data[i].size());
    std::memset(bufs.back().data(), 0xEE, w.data[i].size());
    auto c = s.read(w.slots[i], bufs.back().span());
    if (!c.ok()) {
      out[i] = c.status();
      continue;
    }
    cs[i] = *c;
  }
  for (std::size_t i = 0; i < w.slots.size(); ++i) {
    if (cs[i] == nullptr) continue;
    out[i] = cs[i]->wait();
    if (out[i].ok()) {
      EXPECT_TRUE(written[i]) << "slot " << i << " read OK although its write failed";
      EXPECT_EQ(std::memcmp(bufs[i].data(), w.data[i].data(), w.data[i].size()), 0)
          << "slot " << i << " returned wrong bytes with an OK status";
    }
  }
  return out;
}

// How many requests the workload's writes (or reads) make, measured on a clean run.
std::uint64_t requests_per_pass(const std::string& engine, bool direct) {
  ScratchDir dir("count");
  auto e = faulty(config(engine, direct, false));
  auto store = SwapStore::create({{dir.path()}, 2 * MiB}, *e);
  EXPECT_TRUE(store.ok()) << store.status();
  Workload w = prepare(**store, 1);
  for (const Status& s : write_all(**store, w)) EXPECT_TRUE(s.ok()) << s;
  return e->stats().writes;
}

struct FaultCase {
  std::string engine;
  bool direct;
  bool checksums;
};

class EveryFault : public ::testing::TestWithParam<FaultCase> {};

TEST_P(EveryFault, FailedWritesSurfaceAndLeaveTheirSlotUnreadable) {
  const FaultCase fc = GetParam();
  ScratchDir probe("probe");
  if (fc.direct && !testing::supports_direct(probe.path())) GTEST_SKIP() << "no O_DIRECT";
  const std::uint64_t n = requests_per_pass(fc.engine, fc.direct);
  ASSERT_GE(n, slot_sizes().size());
  for (int err : {EIO, ENOSPC}) {
    for (std::uint64_t nth = 1; nth <= n; ++nth) {
      SCOPED_TRACE("write " + std::to_string(nth) + " fails with " + strerrorname_np(err));
      ScratchDir dir("wfault");
      auto e = faulty(config(fc.engine, fc.direct, fc.checksums));
      e->fail_nth(IoOp::kWrite, nth, err);
      auto store = SwapStore::create({{dir.path()}, 2 * MiB}, *e);
      ASSERT_TRUE(store.ok()) << store.status();
      Workload w = prepare(**store, nth);
      std::vector<Status> ws = write_all(**store, w);
      int failed = 0;
      std::vector<bool> written;
      for (const Status& s : ws) {
        written.push_back(s.ok());
        if (s.ok()) continue;
        ++failed;
        EXPECT_EQ(s.code(), err == ENOSPC ? StatusCode::kOutOfSpace : StatusCode::kIoError) << s;
        EXPECT_NE(s.message().find("injected fault"), std::string::npos) << s;
        EXPECT_NE(s.message().find((*store)->files()[0]), std::string::npos) << s;
      }
      EXPECT_EQ(failed, 1) << "exactly the slot holding the failed request fails";
      EXPECT_EQ(e->faults_injected(), 1u);
      std::vector<Status> rs = read_all_and_check(**store, w, written);
      for (std::size_t i = 0; i < rs.size(); ++i) {
        if (written[i]) {
          EXPECT_TRUE(rs[i].ok()) << rs[i];
        } else {
          EXPECT_EQ(rs[i].code(), StatusCode::kFailedPrecondition) << rs[i];
        }
      }
      Status d = e->drain();
      EXPECT_FALSE(d.ok()) << "drain reports the injected failure";
      EXPECT_TRUE(e->drain().ok());
    }
  }
}

TEST_P(EveryFault, FailedReadsSurfaceAndDoNotPoisonLaterReads) {
  const FaultCase fc = GetParam();
  ScratchDir probe("probe");
  if (fc.direct && !testing::supports_direct(probe.path())) GTEST_SKIP() << "no O_DIRECT";
  const std::uint64_t n = requests_per_pass(fc.engine, fc.direct);  // reads make as many requests
  for (std::uint64_t nth = 1; nth <= n; ++nth) {
    SCOPED_TRACE("read " + std::to_string(nth) + " fails with EIO");
    ScratchDir dir("rfault");
    auto e = faulty(config(fc.engine, fc.direct, fc.checksums));
    e->fail_nth(IoOp::kRead, nth, EIO);
    auto store = SwapStore::create({{dir.path()}, 2 * MiB}, *e);
    ASSERT_TRUE(store.ok()) << store.status();
    Workload w = prepare(**store, 100 + nth);
    for (const Status& s : write_all(**store, w)) ASSERT_TRUE(s.ok()) << s;
    std::vector<bool> all(w.slots.size(), true);
    std::vector<Status> rs = read_all_and_check(**store, w, all);
    int failed = 0;
    for (const Status& s : rs) {
      if (s.ok()) continue;
      ++failed;
      EXPECT_EQ(s.code(), StatusCode::kIoError) << s;
      EXPECT_NE(s.message().find("injected fault"), std::string::npos) << s;
    }
    EXPECT_EQ(failed, 1);
    // The data on disk is intact: the next pass reads everything back.
    for (const Status& s : read_all_and_check(**store, w, all)) EXPECT_TRUE(s.ok()) << s;
    e->drain().ignore();
  }
}

TEST_P(EveryFault, ShortTransfersAreErrorsNeverSilentSuccess) {
  const FaultCase fc = GetParam();
  ScratchDir probe("probe");
  if (fc.direct && !testing::supports_direct(probe.path())) GTEST_SKIP() << "no O_DIRECT";
  const std::uint64_t n = requests_per_pass(fc.engine, fc.direct);
  for (IoOp op : {IoOp::kWrite, IoOp::kRead}) {
    for (std::uint64_t nth = 1; nth <= n; ++nth) {
      SCOPED_TRACE(std::string("short ") + std::string(io_op_name(op)) + " " + std::to_string(nth));
      ScratchDir dir("short");
      auto e = faulty(config(fc.engine, fc.direct, fc.checksums));
      e->short_nth(op, nth, 1536);
      auto store = SwapStore::create({{dir.path()}, 2 * MiB}, *e);
      ASSERT_TRUE(store.ok()) << store.status();
      Workload w = prepare(**store, 200 + nth);
      std::vector<Status> ws = write_all(**store, w);
      std::vector<bool> written;
      int failed = 0;
      for (const Status& s : ws) {
        written.push_back(s.ok());
        if (!s.ok()) {
          ++failed;
          EXPECT_NE(s.message().find("short transfer"), std::string::npos) << s;
        }
      }
      std::vector<Status> rs = read_all_and_check(**store, w, written);
      for (std::size_t i = 0; i < rs.size(); ++i) {
        if (!written[i] || rs[i].ok()) continue;
        ++failed;
        EXPECT_NE(rs[i].message().find("short transfer"), std::string::npos) << rs[i];
      }
      EXPECT_EQ(failed, 1);
      EXPECT_EQ(e->faults_injected(), 1u);
      e->drain().ignore();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Engines, EveryFault,
                         ::testing::Values(FaultCase{"io_uring", true, false}, FaultCase{"io_uring", false, true},
                                           FaultCase{"libaio", true, true}, FaultCase{"posix", false, false}),
                         [](const ::testing::TestParamInfo<FaultCase>& i) {
                           return (i.param.engine == "io_uring" ? std::string("uring") : i.param.engine) +
                                  (i.param.direct ? "_direct" : "_buffered") + (i.param.checksums ? "_crc" : "");
                         });

TEST(FaultyEngine, PersistentNoSpaceFailsEveryLaterWrite) {
  ScratchDir dir("full");
  auto e = faulty(config("io_uring", false, false));
  e->fail_nth(IoOp::kWrite, 3, ENOSPC, /*persistent=*/true);
  auto store = SwapStore::create({{dir.path()}, 2 * MiB}, *e);
  ASSERT_TRUE(store.ok());
  std::vector<std::byte> data(4096, std::byte{1});
  int ok = 0;
  int full = 0;
  for (int i = 0; i < 8; ++i) {
    auto slot = (*store)->allocate(4096);
    ASSERT_TRUE(slot.ok());
    auto c = (*store)->write(*slot, data);
    ASSERT_TRUE(c.ok());
    Status st = (*c)->wait();
    if (st.ok()) {
      ++ok;
    } else {
      EXPECT_EQ(st.code(), StatusCode::kOutOfSpace) << st;
      ++full;
    }
  }
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(full, 6);
}

TEST(FaultyEngine, TheStoreRefusesToTouchSlotsWithOperationsInFlight) {
  ScratchDir dir("busy");
  auto e = faulty(config("io_uring", false, true));
  auto store = SwapStore::create({{dir.path()}, 2 * MiB}, *e);
  ASSERT_TRUE(store.ok());
  SwapStore& s = **store;
  AlignedBytes data(50000);
  std::mt19937_64 rng(9);
  fill_random(data.span(), rng);
  auto slot = s.allocate(data.size());
  ASSERT_TRUE(slot.ok());
  e->pause_completions();
  auto w = s.write(*slot, data.cspan());
  ASSERT_TRUE(w.ok());
  EXPECT_FALSE((*w)->done());
  EXPECT_EQ(s.release(*slot).code(), StatusCode::kFailedPrecondition);
  AlignedBytes out(data.size());
  EXPECT_EQ(s.read(*slot, out.span()).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.write(*slot, data.cspan()).status().code(), StatusCode::kFailedPrecondition);
  e->resume_completions();
  ASSERT_TRUE((*w)->wait().ok());
  e->pause_completions();
  auto r1 = s.read(*slot, out.span());
  AlignedBytes out2(data.size());
  auto r2 = s.read(*slot, out2.span());  // concurrent reads of one slot are fine
  ASSERT_TRUE(r1.ok() && r2.ok());
  EXPECT_EQ(s.release(*slot).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.write(*slot, data.cspan()).status().code(), StatusCode::kFailedPrecondition);
  e->resume_completions();
  ASSERT_TRUE((*r1)->wait().ok());
  ASSERT_TRUE((*r2)->wait().ok());
  EXPECT_EQ(std::memcmp(out.data(), data.data(), data.size()), 0);
  EXPECT_EQ(std::memcmp(out2.data(), data.data(), data.size()), 0);
  EXPECT_TRUE(s.release(*slot).ok());
}

TEST(FaultyEngine, DelayedCompletionsStillDeliverTheRightBytesAndCloseWaitsForThem) {
  ScratchDir dir("delay");
  auto e = faulty(config("libaio", false, true));
  e->delay_all(std::nullopt, std::chrono::milliseconds(5));
  auto store = SwapStore::create({{dir.path()}, 2 * MiB}, *e);
  ASSERT_TRUE(store.ok());
  SwapStore& s = **store;
  Workload w = prepare(s, 77);
  for (const Status& st : write_all(s, w)) ASSERT_TRUE(st.ok()) << st;
  std::vector<bool> all(w.slots.size(), true);
  for (const Status& st : read_all_and_check(s, w, all)) EXPECT_TRUE(st.ok()) << st;
  auto late = s.write(w.slots[0], w.data[0].cspan());
  ASSERT_TRUE(late.ok());
  EXPECT_TRUE(s.close().ok());
  EXPECT_TRUE((*late)->done()) << "close() returns only after the store's operations finished";
  EXPECT_TRUE((*late)->wait().ok());
  EXPECT_EQ(s.allocate(1).status().code(), StatusCode::kFailedPrecondition);
}

TEST(FaultyEngine, FaultsOnRawRequestsReachTheirCompletionAndDrain) {
  ScratchDir dir("raw");
  std::string path = dir.path() + "/f";
  int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 1 << 20), 0);
  auto e = faulty(config("posix", false, false));
  EXPECT_EQ(e->name(), "faulty(posix)");
  e->fail_nth(std::nullopt, 2, EIO);  // the second request of any kind
  AlignedBytes buf(64 * KiB);
  std::vector<std::shared_ptr<IoCompletion>> cs;
  std::vector<IoRequest> batch;
  for (int i = 0; i < 4; ++i) {
    cs.push_back(IoCompletion::make());
    batch.push_back(i % 2 == 0 ? IoRequest::write(fd, static_cast<std::uint64_t>(i) * 64 * KiB, buf.cspan(), cs.back())
                               : IoRequest::read(fd, static_cast<std::uint64_t>(i) * 64 * KiB, buf.span(), cs.back()));
  }
  ASSERT_TRUE(e->submit(batch).ok());
  EXPECT_TRUE(cs[0]->wait().ok());
  Status second = cs[1]->wait();
  EXPECT_EQ(second.code(), StatusCode::kIoError);
  EXPECT_NE(second.message().find(path), std::string::npos) << second;
  EXPECT_NE(second.message().find("at offset 65536"), std::string::npos) << second;
  EXPECT_TRUE(cs[2]->wait().ok());
  EXPECT_TRUE(cs[3]->wait().ok());
  Status d = e->drain();
  EXPECT_EQ(d.code(), StatusCode::kIoError);
  EXPECT_NE(d.message().find("1 injected"), std::string::npos) << d;
  ::close(fd);
}

}  // namespace
}  // namespace strata::nvme
