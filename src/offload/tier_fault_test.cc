// NVMe faults injected under the tier manager (FaultyEngine under the SwapStore) surface as
// Statuses on the pin or request that needed the bytes, and leave the block's other copies and
// every other block intact; a dirty copy whose write-back failed stays dirty where it was.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "offload/offload_test_util.h"
#include "offload/tier_manager.h"
#include "strata/log.h"

namespace strata::offload {
namespace {

using nvme::IoOp;
using testing::check_pattern;
using testing::fill_pattern;
using testing::pinned_bytes;
using testing::pinned_bytes_mut;
using testing::Rig;
using testing::RigOptions;
using testing::Watchdog;

constexpr std::uint64_t KB = 1024;
constexpr std::uint64_t kBlock = 40 * KB + 300;  // three 16 KB staging chunks, the last partial

struct QuietLogs {
  QuietLogs() : level(log_level()) { set_log_level(LogLevel::kError); }
  ~QuietLogs() { set_log_level(level); }
  LogLevel level;
};

class TierFaults : public ::testing::Test {
 protected:
  void make(std::uint64_t host_cache_blocks, bool checksums = false) {
    RigOptions o;
    o.faulty = true;
    o.checksums = checksums;
    o.tiers.device_budget = 2 * 44 * KB;
    o.tiers.staging_buffers = 2;
    o.tiers.staging_buffer_size = 16 * KB;
    o.tiers.host_budget = 2 * 16 * KB + host_cache_blocks * 44 * KB;
    o.tiers.prefetch_bytes = 0;
    rig_ = Rig::make(o);
    ASSERT_NE(rig_, nullptr);
    ASSERT_NE(rig_->faulty, nullptr);
  }
  TierManager& tm() { return *rig_->tiers; }
  nvme::FaultyEngine& faults() { return *rig_->faulty; }

  BlockId add(const std::string& name, std::uint64_t version) {
    auto id = tm().register_block({name, kBlock, Tier::kNvme});
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) return {};
    if (version != 0) {
      auto pin = tm().acquire(*id, Tier::kHost, Access::kOverwrite);
      EXPECT_TRUE(pin.ok()) << pin.status();
      if (pin.ok() && pin->wait().ok()) fill_pattern(pinned_bytes_mut(*pin), id->value, version);
    }
    versions_[id->value] = version;
    return *id;
  }
  Status read(BlockId id, Tier tier) {
    auto pin = tm().acquire(id, tier);
    if (!pin.ok()) return pin.status();
    STRATA_RETURN_IF_ERROR(pin->wait());
    if (!check_pattern(pinned_bytes(*pin), id.value, versions_[id.value])) {
      return data_corruption("test: wrong bytes in " + std::string(tier_name(tier)));
    }
    return Status::OK();
  }
  bool cached(BlockId id, Tier t) { return tm().info(id)->cached[static_cast<std::size_t>(t)]; }

  QuietLogs quiet_;
  Watchdog watchdog_{std::chrono::seconds(120), "tier fault test"};
  std::unique_ptr<Rig> rig_;
  std::map<std::uint64_t, std::uint64_t> versions_;
};

TEST_F(TierFaults, AFailedReadFailsThePinAndLeavesEveryBlockIntact) {
  make(/*host_cache_blocks=*/2);
  BlockId a = add("a", 1), b = add("b", 2), c = add("c", 3);  // writing c evicted a
  ASSERT_TRUE(tm().flush().ok());
  ASSERT_TRUE(read(c, Tier::kHost).ok());  // c stays cached: b is the least recently used
  ASSERT_FALSE(cached(a, Tier::kHost));
  faults().fail_nth(IoOp::kRead, 1, EIO, /*persistent=*/true);
  for (Tier t : {Tier::kHost, Tier::kDevice}) {  // direct into the host copy; staged to the device
    Status st = read(a, t);
    EXPECT_EQ(st.code(), StatusCode::kIoError) << st;
    EXPECT_NE(st.message().find("load of block 'a' into " + std::string(tier_name(t))), std::string::npos) << st;
    EXPECT_NE(st.message().find("injected"), std::string::npos) << st;
    EXPECT_FALSE(cached(a, t));
  }
  // c is served from its cached copy while the disk fails.
  EXPECT_TRUE(read(c, Tier::kDevice).ok());
  TierStats s = tm().stats();
  EXPECT_EQ(s.load_failures, 2u);
  faults().clear_rules();
  // Every block reads back intact, in both tiers; the staging buffers all came back.
  for (int round = 0; round < 3; ++round) {
    for (BlockId id : {a, b, c}) {
      for (Tier t : {Tier::kDevice, Tier::kHost}) EXPECT_TRUE(read(id, t).ok()) << tm().info(id)->name;
    }
  }
  EXPECT_LE(tm().stats().tiers[1].peak, tm().stats().tiers[1].budget);
}

TEST_F(TierFaults, AShortReadIsAnErrorNotWrongBytes) {
  make(/*host_cache_blocks=*/1);
  BlockId a = add("a", 1), b = add("b", 2);
  ASSERT_TRUE(tm().flush().ok());
  ASSERT_TRUE(read(b, Tier::kHost).ok());  // evicts a from host memory
  ASSERT_FALSE(cached(a, Tier::kHost));
  // A short-read rule matches one request position (counted since the engine was made);
  // covering the first 200 makes every read from now on come back with 100 bytes.
  for (std::uint64_t n = 1; n <= 200; ++n) faults().short_nth(IoOp::kRead, n, 100);
  Status st = read(a, Tier::kDevice);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.code(), StatusCode::kDataCorruption) << "short reads must not pass as data: " << st;
  EXPECT_NE(st.message().find("load of block 'a'"), std::string::npos) << st;
  faults().clear_rules();
  EXPECT_TRUE(read(a, Tier::kDevice).ok());
  EXPECT_TRUE(read(b, Tier::kDevice).ok());
}

TEST_F(TierFaults, AFailedWriteBackKeepsTheDirtyCopyAndFailsTheRequestThatNeededRoom) {
  make(/*host_cache_blocks=*/2);
  BlockId x = add("x", 11), y = add("y", 12);  // both dirty in host memory
  ASSERT_TRUE(tm().info(x)->dirty);
  faults().fail_nth(IoOp::kWrite, 1, ENOSPC, /*persistent=*/true);
  // z needs room in host memory: the least recently used dirty copy (x) must go to NVMe first.
  auto z = tm().register_block({"z", kBlock, Tier::kNvme});
  ASSERT_TRUE(z.ok());
  versions_[z->value] = 0;
  Status st = read(*z, Tier::kHost);
  ASSERT_EQ(st.code(), StatusCode::kOutOfSpace) << st;
  EXPECT_NE(st.message().find("write-back of block 'x' from host to nvme"), std::string::npos) << st;
  EXPECT_NE(st.message().find("stays dirty in host"), std::string::npos) << st;
  auto info = tm().info(x);
  EXPECT_TRUE(info->dirty);
  EXPECT_TRUE(info->cached[1]);
  EXPECT_GE(tm().stats().write_back_failures, 1u);
  // Flushing fails the same way and loses nothing.
  Status f = tm().flush();
  EXPECT_EQ(f.code(), StatusCode::kOutOfSpace) << f;
  EXPECT_TRUE(read(x, Tier::kHost).ok());
  EXPECT_TRUE(read(y, Tier::kHost).ok());
  EXPECT_TRUE(read(x, Tier::kDevice).ok());
  // The disk recovers: the dirty copies go home and come back intact from NVMe.
  faults().clear_rules();
  ASSERT_TRUE(tm().flush().ok());
  EXPECT_FALSE(tm().info(x)->dirty);
  EXPECT_TRUE(read(*z, Tier::kHost).ok());
  BlockId w = add("w", 0);
  EXPECT_TRUE(read(w, Tier::kHost).ok());
  ASSERT_FALSE(cached(x, Tier::kHost));
  EXPECT_TRUE(read(x, Tier::kHost).ok());
  EXPECT_TRUE(read(y, Tier::kHost).ok());
  EXPECT_TRUE(read(y, Tier::kDevice).ok());
}

TEST_F(TierFaults, AFailedStagedWriteBackFromTheDeviceKeepsTheDeviceCopy) {
  make(/*host_cache_blocks=*/0);
  auto big = tm().register_block({"needs.host", kBlock, Tier::kNvme});
  EXPECT_EQ(big.status().code(), StatusCode::kInvalidArgument) << "the host budget only holds the staging pool";
  BlockSpec spec{"d", kBlock, Tier::kNvme, Tier::kDevice, /*host_copies=*/false};
  auto d = tm().register_block(spec);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(tm().acquire(*d, Tier::kHost).status().code(), StatusCode::kInvalidArgument);
  {
    auto pin = tm().acquire(*d, Tier::kDevice, Access::kOverwrite);
    ASSERT_TRUE(pin.ok() && pin->wait().ok());
    fill_pattern(pinned_bytes_mut(*pin), d->value, 21);
    versions_[d->value] = 21;
  }
  faults().fail_nth(IoOp::kWrite, 1, EIO, /*persistent=*/true);
  Status f = tm().flush();  // device -> staging -> nvme
  EXPECT_EQ(f.code(), StatusCode::kIoError) << f;
  EXPECT_NE(f.message().find("write-back of block 'd' from device to nvme"), std::string::npos) << f;
  EXPECT_TRUE(tm().info(*d)->dirty);
  EXPECT_TRUE(read(*d, Tier::kDevice).ok());
  // Filling the device budget needs d's room: the request fails, d stays.
  spec.name = "e";
  auto e = tm().register_block(spec);
  spec.name = "g";
  auto g = tm().register_block(spec);
  ASSERT_TRUE(e.ok() && g.ok());
  versions_[e->value] = versions_[g->value] = 0;
  auto pe = tm().acquire(*e, Tier::kDevice);
  ASSERT_TRUE(pe.ok());
  ASSERT_TRUE(pe->wait().ok());
  Status sg = read(*g, Tier::kDevice);
  EXPECT_EQ(sg.code(), StatusCode::kIoError) << sg;
  pe->release();
  faults().clear_rules();
  ASSERT_TRUE(tm().flush().ok());
  EXPECT_TRUE(read(*g, Tier::kDevice).ok());
  EXPECT_TRUE(read(*e, Tier::kDevice).ok());
  ASSERT_FALSE(cached(*d, Tier::kDevice));
  EXPECT_TRUE(read(*d, Tier::kDevice).ok());  // from NVMe, staged
}

TEST_F(TierFaults, CorruptedSwapBytesAreDetectedNotReturned) {
  make(/*host_cache_blocks=*/2, /*checksums=*/true);
  BlockId a = add("a", 1), b = add("b", 2);
  add("c", 3);  // evicts a
  ASSERT_TRUE(tm().flush().ok());
  ASSERT_TRUE(read(b, Tier::kHost).ok());  // b stays cached; a is only on NVMe
  ASSERT_FALSE(cached(a, Tier::kHost));
  // Flip every byte of the swap files behind the store's back.
  for (const std::string& f : rig_->swap->files()) {
    int fd = ::open(f.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0) << f;
    std::vector<unsigned char> buf(64 * KB);
    off_t off = 0;
    for (;;) {
      ssize_t n = ::pread(fd, buf.data(), buf.size(), off);
      if (n <= 0) break;
      for (ssize_t i = 0; i < n; ++i) buf[static_cast<std::size_t>(i)] ^= 0x5a;
      ASSERT_EQ(::pwrite(fd, buf.data(), static_cast<std::size_t>(n), off), n);
      off += n;
    }
    ::close(fd);
  }
  for (Tier t : {Tier::kHost, Tier::kDevice}) {
    Status st = read(a, t);
    EXPECT_EQ(st.code(), StatusCode::kDataCorruption) << st;
    EXPECT_NE(st.message().find("load of block 'a'"), std::string::npos) << st;
    EXPECT_EQ(st.message().find("test: wrong bytes"), std::string::npos) << "wrong bytes were returned: " << st;
  }
  EXPECT_TRUE(read(b, Tier::kHost).ok());
  EXPECT_TRUE(read(b, Tier::kDevice).ok());
}

}  // namespace
}  // namespace strata::offload
