#include "offload/tier_manager.h"

#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "offload/offload_test_util.h"
#include "strata/log.h"
#include "strata/units.h"

namespace strata::offload {
namespace {

using testing::check_pattern;
using testing::fill_pattern;
using testing::pinned_bytes;
using testing::pinned_bytes_mut;
using testing::Rig;
using testing::RigOptions;
using testing::small_rig;

constexpr std::uint64_t KB = 1024;


BlockId reg(TierManager& tm, const std::string& name, std::uint64_t bytes, Tier home, Tier fastest = Tier::kDevice) {
  auto id = tm.register_block({name, bytes, home, fastest});
  EXPECT_TRUE(id.ok()) << id.status();
  return id.ok() ? *id : BlockId{};
}

// Writes pattern (id, version) into the block through a pin in `tier`.
void write_block(TierManager& tm, BlockId id, std::uint64_t version, Tier tier = Tier::kHost,
                 Access access = Access::kOverwrite) {
  auto pin = tm.acquire(id, tier, access);
  ASSERT_TRUE(pin.ok()) << pin.status();
  ASSERT_TRUE(pin->wait().ok());
  fill_pattern(pinned_bytes_mut(*pin), id.value, version);
  if (access == Access::kWrite) {
    ASSERT_TRUE(pin->mark_dirty().ok());
  }
}

std::uint64_t moved(const TierStats& s, Tier from, Tier to) {
  return s.bytes_moved[static_cast<std::size_t>(from)][static_cast<std::size_t>(to)];
}

bool read_matches(TierManager& tm, BlockId id, std::uint64_t version, Tier tier) {
  auto pin = tm.acquire(id, tier, Access::kRead);
  EXPECT_TRUE(pin.ok()) << pin.status();
  if (!pin.ok()) return false;
  Status st = pin->wait();
  EXPECT_TRUE(st.ok()) << st;
  return st.ok() && check_pattern(pinned_bytes(*pin), id.value, version);
}

TEST(TierManager, NewBlocksReadAsZerosInEveryTier) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId h = reg(tm, "host.block", 10000, Tier::kHost);
  BlockId n = reg(tm, "nvme.block", 70000, Tier::kNvme);
  BlockId d = reg(tm, "device.block", 5000, Tier::kDevice);
  EXPECT_TRUE(read_matches(tm, h, 0, Tier::kDevice));
  EXPECT_TRUE(read_matches(tm, h, 0, Tier::kHost));
  EXPECT_TRUE(read_matches(tm, n, 0, Tier::kHost));
  EXPECT_TRUE(read_matches(tm, n, 0, Tier::kDevice));
  EXPECT_TRUE(read_matches(tm, d, 0, Tier::kDevice));
  TierStats s = tm.stats();
  // The never-written nvme block is zero-filled in host memory (nothing read from disk); the
  // device copy then comes from that current host copy.
  EXPECT_EQ(s.zero_fills, 1u);
  EXPECT_EQ(moved(s, Tier::kNvme, Tier::kHost), 0u);
  EXPECT_EQ(moved(s, Tier::kNvme, Tier::kDevice), 0u);
  EXPECT_EQ(moved(s, Tier::kHost, Tier::kDevice), 10000u + 70000u);
}


// A host lease is charged to the host budget beside the blocks while it lives: it leaves less
// room for them, a lease beyond the room is refused with the numbers, and releasing it gives
// the room back.
TEST(TierManager, HostLeasesShareTheHostBudgetWithTheBlocks) {
  auto rig = Rig::make(small_rig());  // 1 MiB host budget, 64 KiB of it the staging pool
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  const std::uint64_t before = tm.stats().tiers[static_cast<int>(Tier::kHost)].used;
  auto lease = tm.lease_host("gradients", 600 * KB + 1);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->size(), 600 * KB + 1);
  std::memset(lease->data(), 7, lease->size());
  EXPECT_EQ(tm.stats().tiers[static_cast<int>(Tier::kHost)].used, before + 604 * KB) << "rounded up to 4 KiB";
  auto more = tm.lease_host("weights", 400 * KB);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), StatusCode::kOutOfMemory);
  EXPECT_NE(more.status().message().find("weights"), std::string::npos) << more.status();
  // A host-homed block that would fit the budget alone does not fit beside the lease.
  auto big = tm.register_block({"state", 400 * KB, Tier::kHost, Tier::kHost});
  EXPECT_FALSE(big.ok());
  lease->release();
  EXPECT_EQ(tm.stats().tiers[static_cast<int>(Tier::kHost)].used, before);
  EXPECT_TRUE(tm.register_block({"state", 400 * KB, Tier::kHost, Tier::kHost}).ok());
}

TEST(TierManager, BytesSurviveEveryRouteBetweenTiers) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  // 100 KB: four 32 KB staging chunks through two staging buffers, the last one partial.
  BlockId n = reg(tm, "nvme.block", 100 * KB + 123, Tier::kNvme);
  BlockId h = reg(tm, "host.block", 50 * KB + 7, Tier::kHost);
  write_block(tm, n, 1, Tier::kHost);        // host copy dirty
  EXPECT_TRUE(read_matches(tm, n, 1, Tier::kDevice));  // host -> device
  ASSERT_TRUE(tm.flush().ok());              // host -> nvme
  auto info = tm.info(n);
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(info->dirty);
  write_block(tm, n, 2, Tier::kDevice);      // device copy dirty, host copy stale and dropped
  info = tm.info(n);
  EXPECT_TRUE(info->dirty);
  EXPECT_FALSE(info->cached[static_cast<int>(Tier::kHost)]);
  EXPECT_TRUE(read_matches(tm, n, 2, Tier::kHost));    // device -> host
  write_block(tm, n, 3, Tier::kDevice, Access::kWrite);
  ASSERT_TRUE(tm.flush().ok());              // device -> nvme, staged
  write_block(tm, h, 4, Tier::kDevice);
  ASSERT_TRUE(tm.flush().ok());              // device -> host home
  EXPECT_TRUE(read_matches(tm, h, 4, Tier::kHost));
  TierStats s = tm.stats();
  EXPECT_GT(moved(s, Tier::kDevice, Tier::kNvme), 0u);
  EXPECT_GT(moved(s, Tier::kHost, Tier::kNvme), 0u);
  EXPECT_GT(moved(s, Tier::kDevice, Tier::kHost), 0u);
  EXPECT_GT(moved(s, Tier::kHost, Tier::kDevice), 0u);
  EXPECT_GT(s.staged_chunks, 0u);
  // Evict every cached copy (drop and re-create is not allowed to lose the NVMe bytes):
  // fill the device and host budgets with other blocks, then read n from NVMe.
  std::vector<BlockId> fillers;
  for (int i = 0; i < 6; ++i) fillers.push_back(reg(tm, "filler." + std::to_string(i), 60 * KB, Tier::kHost));
  for (BlockId f : fillers) EXPECT_TRUE(read_matches(tm, f, 0, Tier::kDevice));
  info = tm.info(n);
  EXPECT_FALSE(info->cached[static_cast<int>(Tier::kDevice)]);
  EXPECT_TRUE(read_matches(tm, n, 3, Tier::kDevice));  // nvme -> device, staged
  s = tm.stats();
  EXPECT_GT(moved(s, Tier::kNvme, Tier::kDevice), 0u);
}

TEST(TierManager, ABlockLargerThanABudgetIsRefusedAtRegistration) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  auto big = tm.register_block({"too.big.for.device", 300 * KB, Tier::kHost, Tier::kDevice});
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(big.status().message().find("memory.device_budget"), std::string::npos) << big.status();
  EXPECT_NE(big.status().message().find("too.big.for.device"), std::string::npos);
  // The same size used only on the host is fine.
  EXPECT_TRUE(tm.register_block({"host.only", 300 * KB, Tier::kHost, Tier::kHost}).ok());
  auto huge = tm.register_block({"too.big.for.host", 2048 * KB, Tier::kNvme, Tier::kHost});
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.status().message().find("memory.host_budget"), std::string::npos) << huge.status();
  // Wrong shapes.
  EXPECT_EQ(tm.register_block({"zero", 0, Tier::kHost}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tm.register_block({"", 10, Tier::kHost}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tm.register_block({"upside.down", 10, Tier::kDevice, Tier::kHost}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(TierManager, HomeBlocksBeyondTheBudgetAreRefusedWithTheNumbers) {
  auto o = small_rig();
  o.tiers.host_budget = 64 * KB + 2 * 32 * KB;  // the staging pool takes 64 KB
  auto rig = Rig::make(o);
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  reg(tm, "first", 40 * KB, Tier::kHost);
  auto second = tm.register_block({"second", 40 * KB, Tier::kHost});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kOutOfMemory);
  EXPECT_NE(second.status().message().find("memory.host_budget"), std::string::npos) << second.status();
  EXPECT_NE(second.status().message().find("staging pool"), std::string::npos) << second.status();
}

TEST(TierManager, PinnedDataFillingTheBudgetIsRefusedNotWaitedFor) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  std::vector<BlockId> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(reg(tm, "layer." + std::to_string(i), 64 * KB, Tier::kHost));
  std::vector<Pin> pins;
  for (int i = 0; i < 4; ++i) {  // 4 x 64 KB = the whole device budget
    auto p = tm.acquire(ids[static_cast<std::size_t>(i)], Tier::kDevice);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_TRUE(p->wait().ok());
    pins.push_back(std::move(*p));
  }
  auto fifth = tm.acquire(ids[4], Tier::kDevice);
  ASSERT_FALSE(fifth.ok());
  EXPECT_EQ(fifth.status().code(), StatusCode::kOutOfMemory);
  const std::string& msg = fifth.status().message();
  EXPECT_NE(msg.find("memory.device_budget"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layer.4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("256.00 KiB"), std::string::npos) << msg;
  EXPECT_EQ(tm.stats().budget_refusals, 1u);
  // Releasing one makes room by eviction.
  pins[0].release();
  auto again = tm.acquire(ids[4], Tier::kDevice);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->wait().ok());
  EXPECT_EQ(tm.stats().tiers[0].evictions, 1u);
  EXPECT_LE(tm.stats().tiers[0].peak, 256 * KB);
}

TEST(TierManager, WritePinsExcludeOtherPins) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId b = reg(tm, "shared", 8 * KB, Tier::kHost);
  auto r1 = tm.acquire(b, Tier::kDevice);
  auto r2 = tm.acquire(b, Tier::kHost);
  ASSERT_TRUE(r1.ok() && r2.ok());
  auto w = tm.acquire(b, Tier::kHost, Access::kWrite);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(w.status().message().find("2 pin(s)"), std::string::npos) << w.status();
  r1->release();
  r2->release();
  auto w2 = tm.acquire(b, Tier::kHost, Access::kWrite);
  ASSERT_TRUE(w2.ok()) << w2.status();
  auto r3 = tm.acquire(b, Tier::kDevice);
  ASSERT_FALSE(r3.ok());
  EXPECT_EQ(r3.status().code(), StatusCode::kFailedPrecondition);
  auto rp = tm.acquire(b, Tier::kDevice, Access::kRead);
  EXPECT_FALSE(rp.ok());
  // mark_dirty needs a write pin that is ready.
  ASSERT_TRUE(w2->wait().ok());
  EXPECT_TRUE(w2->mark_dirty().ok());
  w2->release();
  auto r4 = tm.acquire(b, Tier::kDevice);
  ASSERT_TRUE(r4.ok());
  ASSERT_TRUE(r4->wait().ok());
  EXPECT_EQ(r4->mark_dirty().code(), StatusCode::kFailedPrecondition);
}

TEST(TierManager, WrongTiersAreRefused) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId d = reg(tm, "on.device", 4 * KB, Tier::kDevice);
  BlockId h = reg(tm, "host.only", 4 * KB, Tier::kHost, Tier::kHost);
  EXPECT_EQ(tm.acquire(d, Tier::kHost).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tm.acquire(d, Tier::kNvme).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tm.acquire(h, Tier::kDevice).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tm.prefetch(h, Tier::kDevice).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tm.acquire(BlockId{12345}, Tier::kHost).status().code(), StatusCode::kNotFound);
}

TEST(TierManager, DirtyCopiesAreWrittenBackBeforeEviction) {
  auto o = small_rig();
  o.tiers.host_budget = 64 * KB + 3 * 64 * KB;  // staging + three 64 KB copies
  auto rig = Rig::make(o);
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  std::vector<BlockId> ids;
  for (int i = 0; i < 8; ++i) ids.push_back(reg(tm, "state." + std::to_string(i), 64 * KB - 100, Tier::kNvme, Tier::kHost));
  // Each write makes a dirty host copy; the fourth on needs room, so older ones go back to NVMe.
  for (int i = 0; i < 8; ++i) write_block(tm, ids[static_cast<std::size_t>(i)], 10 + static_cast<std::uint64_t>(i));
  TierStats s = tm.stats();
  EXPECT_GE(s.tiers[1].write_backs, 5u);
  EXPECT_LE(s.tiers[1].peak, o.tiers.host_budget);
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(read_matches(tm, ids[static_cast<std::size_t>(i)], 10 + static_cast<std::uint64_t>(i), Tier::kHost))
        << "block " << i;
  }
}

TEST(TierManager, DropFreesTheBlockAndStaleIdsAreRefused) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  const std::uint64_t host_before = tm.stats().tiers[1].used;
  BlockId h = reg(tm, "temp", 20 * KB, Tier::kHost);
  BlockId n = reg(tm, "temp.nvme", 20 * KB, Tier::kNvme);
  {
    auto p = tm.acquire(h, Tier::kDevice);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(tm.drop(h).code(), StatusCode::kFailedPrecondition);
    ASSERT_TRUE(p->wait().ok());
  }
  write_block(tm, n, 5);
  ASSERT_TRUE(tm.drop(h).ok());
  ASSERT_TRUE(tm.drop(n).ok());
  EXPECT_EQ(tm.drop(h).code(), StatusCode::kNotFound);
  EXPECT_EQ(tm.acquire(n, Tier::kHost).status().code(), StatusCode::kNotFound);
  TierStats s = tm.stats();
  EXPECT_EQ(s.tiers[0].used, 0u);
  EXPECT_EQ(s.tiers[1].used, host_before);
  EXPECT_EQ(s.tiers[2].used, 0u);
  EXPECT_EQ(s.blocks, 0u);
  // The slot is reused with a new id; the old one stays stale.
  BlockId again = reg(tm, "again", 4 * KB, Tier::kHost);
  EXPECT_NE(again, h);
  EXPECT_EQ(tm.info(h).status().code(), StatusCode::kNotFound);
  // Dropping a block while its load is in flight frees it when the load finishes.
  BlockId busy = reg(tm, "busy", 64 * KB, Tier::kNvme);
  write_block(tm, busy, 9);
  ASSERT_TRUE(tm.flush().ok());
  {
    auto p = tm.acquire(busy, Tier::kDevice);
    ASSERT_TRUE(p.ok());
  }
  ASSERT_TRUE(tm.drop(busy).ok());
}

TEST(TierManager, FlushRefusesWhileAWritePinIsHeld) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId n = reg(tm, "w", 4 * KB, Tier::kNvme);
  auto w = tm.acquire(n, Tier::kHost, Access::kWrite);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(tm.flush().code(), StatusCode::kFailedPrecondition);
}

std::mutex g_log_mu;
std::vector<std::string> g_log_lines;
void capture_log(LogLevel, const std::string& line) {
  std::lock_guard lk(g_log_mu);
  g_log_lines.push_back(line);
}

TEST(TierManager, TheTraceIsRecordedReplayedAndReRecordedWhenTheOrderChanges) {
  auto o = small_rig();
  o.tiers.prefetch_bytes = 128 * KB;
  auto rig = Rig::make(o);
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  std::vector<BlockId> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(reg(tm, "l" + std::to_string(i), 32 * KB, Tier::kHost));
  auto step = [&](const std::vector<int>& order) {
    for (int i : order) EXPECT_TRUE(read_matches(tm, ids[static_cast<std::size_t>(i)], 0, Tier::kDevice));
    tm.end_step();
  };
  step({0, 1, 2, 3});
  EXPECT_EQ(tm.stats().trace_length, 4u);
  EXPECT_EQ(tm.stats().trace_recordings, 1u);
  step({0, 1, 2, 3});
  EXPECT_EQ(tm.stats().trace_divergences, 0u);
  set_log_sink(&capture_log);
  step({0, 2, 1, 3});
  set_log_sink(nullptr);
  TierStats s = tm.stats();
  EXPECT_EQ(s.trace_divergences, 1u);
  EXPECT_EQ(s.trace_recordings, 2u);
  EXPECT_EQ(s.trace_length, 4u);
  std::lock_guard lk(g_log_mu);
  bool found = false;
  for (const auto& line : g_log_lines) {
    if (line.find("access order changed") != std::string::npos && line.find("'l1'") != std::string::npos &&
        line.find("'l2'") != std::string::npos) {
      found = true;
    }
  }
  EXPECT_TRUE(found) << "no log line about the changed order";
}

TEST(TierManager, APrefetchHintLoadsIntoFreeRoomOnly) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  std::vector<BlockId> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(reg(tm, "p" + std::to_string(i), 64 * KB, Tier::kNvme));
    write_block(tm, ids.back(), 1 + static_cast<std::uint64_t>(i));
  }
  ASSERT_TRUE(tm.flush().ok());
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(tm.prefetch(ids[static_cast<std::size_t>(i)], Tier::kDevice).ok());
  // The device budget is full of prefetched copies: the fifth hint evicts nothing.
  ASSERT_TRUE(tm.prefetch(ids[4], Tier::kDevice).ok());
  TierStats s = tm.stats();
  EXPECT_EQ(s.prefetches, 4u);
  EXPECT_EQ(s.tiers[0].evictions, 0u);
  EXPECT_FALSE(tm.info(ids[4])->cached[0]);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(read_matches(tm, ids[static_cast<std::size_t>(i)], 1 + static_cast<std::uint64_t>(i), Tier::kDevice));
  s = tm.stats();
  EXPECT_EQ(s.misses, 5u);  // the five overwrites in host memory; the device reads all hit
  EXPECT_EQ(s.prefetches_unused, 0u);
}

TEST(TierManager, StatisticsPrintAsJson) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId n = reg(tm, "j", 12 * KB, Tier::kNvme);
  write_block(tm, n, 1);
  ASSERT_TRUE(tm.flush().ok());
  auto j = nlohmann::json::parse(tm.stats().to_json());
  EXPECT_EQ(j["bytes_moved"]["host_to_nvme"].get<std::uint64_t>(), 12 * KB);
  EXPECT_EQ(j["tiers"]["device"]["budget"].get<std::uint64_t>(), 256 * KB);
  EXPECT_EQ(j["tiers"]["host"]["write_backs"].get<std::uint64_t>(), 1u);
  EXPECT_EQ(j["acquires"].get<std::uint64_t>(), 1u);
  EXPECT_TRUE(j.contains("stall_seconds"));
  EXPECT_TRUE(j.contains("hit_rate"));
}

TEST(TierManager, OptionsComeFromTheProfile) {
  Profile p;
  p.memory.device_budget = 3 * GiB;
  p.memory.host_budget = 5 * GiB;
  p.offload_param.buffer_count = 7;
  p.offload_param.buffer_size = 16 * MiB;
  p.zero.prefetch_bucket_size = 10 * MiB;
  p.zero.max_live_parameters = 1000;
  TierOptions o = tier_options(p, DType::kBF16);
  EXPECT_EQ(o.device_budget, 3 * GiB);
  EXPECT_EQ(o.host_budget, 5 * GiB);
  EXPECT_EQ(o.staging_buffers, 7);
  EXPECT_EQ(o.staging_buffer_size, 16 * MiB);
  EXPECT_EQ(o.prefetch_bytes, 10 * MiB);
  EXPECT_EQ(o.max_live_bytes, 2000u);
}

TEST(TierManager, CreationChecksTheBudgets) {
  DeviceOptions d;
  d.capacity = 1 * MiB;
  auto dev = create_device("host", d);
  ASSERT_TRUE(dev.ok());
  TierOptions o;
  o.device_budget = 2 * MiB;
  auto tm = TierManager::create(**dev, nullptr, o);
  ASSERT_FALSE(tm.ok());
  EXPECT_NE(tm.status().message().find("capacity"), std::string::npos) << tm.status();
  o.device_budget = 1 * MiB;
  auto ok = TierManager::create(**dev, nullptr, o);
  ASSERT_TRUE(ok.ok()) << ok.status();
  auto n = (*ok)->register_block({"needs.nvme", 4096, Tier::kNvme});
  EXPECT_EQ(n.status().code(), StatusCode::kFailedPrecondition);
}

TEST(TierManager, StagingPoolLargerThanTheHostBudgetIsRefused) {
  auto o = small_rig();
  o.tiers.host_budget = 32 * KB;  // the pool is 2 x 32 KB
  auto rig = std::make_unique<Rig>();
  RigOptions ro = o;
  ro.tiers.host_budget = 1024 * KB;
  auto base = Rig::make(ro);  // for a device and a swap store
  ASSERT_NE(base, nullptr);
  auto tm = TierManager::create(*base->device, base->swap.get(), o.tiers);
  ASSERT_FALSE(tm.ok());
  EXPECT_NE(tm.status().message().find("staging pool"), std::string::npos) << tm.status();
  EXPECT_NE(tm.status().message().find("memory.host_budget"), std::string::npos) << tm.status();
}

}  // namespace
}  // namespace strata::offload
