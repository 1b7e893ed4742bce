// Device leases (tier_leases.cc): scratch device memory charged to the device budget beside
// the blocks. A lease evicts unpinned cached copies for its room (writing dirty ones back
// first), is refused with the numbers when homes, pins and leases fill the budget, leaves
// less room for blocks while it lives and gives its charge back when released.
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "offload/offload_test_util.h"
#include "offload/tier_manager.h"

namespace strata::offload {
namespace {

using testing::check_pattern;
using testing::fill_pattern;
using testing::pinned_bytes;
using testing::pinned_bytes_mut;
using testing::Rig;
using testing::RigOptions;
using testing::small_rig;
using testing::Watchdog;

constexpr std::uint64_t KB = 1024;


std::vector<BlockId> blocks(TierManager& tm, int n, std::uint64_t bytes, Tier home = Tier::kHost) {
  std::vector<BlockId> ids;
  for (int i = 0; i < n; ++i) {
    auto id = tm.register_block({"block." + std::to_string(i), bytes, home, Tier::kDevice});
    EXPECT_TRUE(id.ok()) << id.status();
    ids.push_back(id.ok() ? *id : BlockId{});
  }
  return ids;
}

Pin pin_on_device(TierManager& tm, BlockId id, Access access = Access::kRead) {
  auto pin = tm.acquire(id, Tier::kDevice, access);
  EXPECT_TRUE(pin.ok()) << pin.status();
  if (!pin.ok()) return Pin();
  EXPECT_TRUE(pin->wait().ok());
  return std::move(*pin);
}

std::uint64_t device_used(TierManager& tm) { return tm.stats().tiers[static_cast<std::size_t>(Tier::kDevice)].used; }

TEST(DeviceLeases, ALeaseIsChargedBesideTheBlocksAndGivesItsChargeBack) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  auto lease = tm.lease_device("gather buffer", 100 * KB + 1);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(lease->valid());
  EXPECT_EQ(lease->size(), 100 * KB + 1);
  EXPECT_EQ(lease->charge(), 104 * KB) << "rounded up to 4 KiB";
  EXPECT_EQ(device_used(tm), 104 * KB);
  EXPECT_GE(rig->device->stats().used, 100 * KB + 1);
  std::memset(lease->range().address(), 0x5a, lease->size());  // the host device's memory is addressable
  EXPECT_EQ(lease->view(DType::kF32).count(), (100 * KB + 1) / 4);
  auto part = lease->view(DType::kBF16, 10, 20);
  ASSERT_TRUE(part.ok()) << part.status();
  EXPECT_EQ(part->address(), static_cast<std::byte*>(lease->range().address()) + 20);
  EXPECT_FALSE(lease->view(DType::kF32, 25600, 2).ok());
  EXPECT_FALSE(lease->view(DType::kF32, ~std::uint64_t{0}, 1).ok());

  // Two 64 KB pins fit beside the lease (232 KB); a third does not, and the refusal says so.
  auto ids = blocks(tm, 3, 64 * KB);
  Pin a = pin_on_device(tm, ids[0]);
  Pin b = pin_on_device(tm, ids[1]);
  EXPECT_EQ(device_used(tm), 232 * KB);
  auto c = tm.acquire(ids[2], Tier::kDevice);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kOutOfMemory);
  EXPECT_NE(c.status().message().find("leases (104.00 KiB)"), std::string::npos) << c.status();

  // A moved lease keeps the charge; releasing it returns the charge once.
  DeviceLease moved = std::move(*lease);
  EXPECT_FALSE(lease->valid());
  EXPECT_TRUE(moved.valid());
  moved.release();
  EXPECT_FALSE(moved.valid());
  moved.release();
  EXPECT_EQ(device_used(tm), 128 * KB);
  Pin third = pin_on_device(tm, ids[2]);
  EXPECT_EQ(device_used(tm), 192 * KB);
  EXPECT_EQ(tm.stats().tiers[static_cast<std::size_t>(Tier::kDevice)].evictions, 0u);
}

TEST(DeviceLeases, ALeaseEvictsUnpinnedCopiesAndIsRefusedWhenPinsFillTheBudget) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  auto ids = blocks(tm, 4, 64 * KB);
  for (BlockId id : ids) pin_on_device(tm, id);  // cached, unpinned: the budget is full
  EXPECT_EQ(device_used(tm), 256 * KB);
  auto lease = tm.lease_device("reduce bucket", 128 * KB);
  ASSERT_TRUE(lease.ok()) << lease.status();
  TierStats s = tm.stats();
  EXPECT_EQ(s.tiers[0].evictions, 2u);
  EXPECT_EQ(s.tiers[0].used, 256 * KB);
  EXPECT_LE(s.tiers[0].peak, 256 * KB);
  int cached = 0;
  for (BlockId id : ids) cached += tm.info(id)->cached[0] ? 1 : 0;
  EXPECT_EQ(cached, 2);
  // Pin the two cached blocks: nothing is left to evict, so a further lease is refused.
  std::vector<Pin> pins;
  for (BlockId id : ids) {
    if (tm.info(id)->cached[0]) pins.push_back(pin_on_device(tm, id));
  }
  auto more = tm.lease_device("reduce bucket 2", 8 * KB);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), StatusCode::kOutOfMemory);
  const std::string& msg = more.status().message();
  EXPECT_NE(msg.find("reduce bucket 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("8.00 KiB"), std::string::npos) << msg;
  EXPECT_NE(msg.find("256.00 KiB"), std::string::npos) << msg;
  EXPECT_NE(msg.find("memory.device_budget"), std::string::npos) << msg;
  EXPECT_EQ(device_used(tm), 256 * KB);
  EXPECT_EQ(tm.lease_device("nothing", 0).status().code(), StatusCode::kInvalidArgument);
  // A lease larger than the budget is refused even with nothing else on the device.
  pins.clear();
  lease->release();
  auto huge = tm.lease_device("too big", 256 * KB + 1);
  EXPECT_EQ(huge.status().code(), StatusCode::kOutOfMemory);
}

TEST(DeviceLeases, DirtyCopiesAreWrittenBackBeforeALeaseTakesTheirRoom) {
  Watchdog wd(std::chrono::seconds(60), "lease with write-backs");
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  auto ids = blocks(tm, 4, 64 * KB - 100, Tier::kNvme);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    Pin w = pin_on_device(tm, ids[i], Access::kOverwrite);
    fill_pattern(pinned_bytes_mut(w), ids[i].value, 10 + i);
  }
  for (BlockId id : ids) EXPECT_TRUE(tm.info(id)->dirty);
  auto lease = tm.lease_device("scratch", 256 * KB);  // the whole budget: every copy goes home first
  ASSERT_TRUE(lease.ok()) << lease.status();
  TierStats s = tm.stats();
  EXPECT_EQ(s.tiers[0].write_backs, 4u);
  EXPECT_EQ(s.tiers[0].evictions, 4u);
  EXPECT_EQ(s.tiers[0].used, 256 * KB);
  lease->release();
  for (std::size_t i = 0; i < ids.size(); ++i) {
    EXPECT_FALSE(tm.info(ids[i])->dirty);
    Pin r = pin_on_device(tm, ids[i]);
    EXPECT_TRUE(check_pattern(pinned_bytes(r), ids[i].value, 10 + i)) << "block " << i;
  }
  EXPECT_EQ(TierManagerPeer::recount(tm), "");
}

}  // namespace
}  // namespace strata::offload
