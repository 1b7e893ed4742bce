// Pins and streams (tier_pin_streams.cc): a pin released in a stream's order stays pinned (unevictable, its bytes
// unchanged) until the work queued before the release has run; a stream made to wait for a
// pin's data runs its later work only once the data is there, and fails when the load fails
// or the pin is released unready; typed device views of a pin check their bounds.
#include <cerrno>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "offload/offload_test_util.h"
#include "offload/tier_manager.h"
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
using testing::Watchdog;

constexpr std::uint64_t KB = 1024;

struct QuietLogs {
  QuietLogs() : level(log_level()) { set_log_level(LogLevel::kError); }
  ~QuietLogs() { set_log_level(level); }
  LogLevel level;
};

RigOptions small_rig() {
  RigOptions o;
  o.tiers.device_budget = 256 * KB;
  o.tiers.host_budget = 1024 * KB;
  o.tiers.staging_buffers = 2;
  o.tiers.staging_buffer_size = 32 * KB;
  o.tiers.prefetch_bytes = 0;
  return o;
}

BlockId reg(TierManager& tm, const std::string& name, std::uint64_t bytes, Tier home = Tier::kHost) {
  auto id = tm.register_block({name, bytes, home, Tier::kDevice});
  EXPECT_TRUE(id.ok()) << id.status();
  return id.ok() ? *id : BlockId{};
}

void write_block(TierManager& tm, BlockId id, std::uint64_t version) {
  auto pin = tm.acquire(id, Tier::kHost, Access::kOverwrite);
  ASSERT_TRUE(pin.ok()) << pin.status();
  ASSERT_TRUE(pin->wait().ok());
  fill_pattern(pinned_bytes_mut(*pin), id.value, version);
}

std::unique_ptr<Stream> make_stream(Device& device, const std::string& name) {
  auto s = device.create_stream(name);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(s).value() : nullptr;
}

// A gate in a stream: work enqueued after hold() waits until open(). It blocks the device's
// host-function thread meanwhile, so the manager's own completions wait too.
struct Latch {
  std::promise<void> promise;
  std::shared_future<void> future = promise.get_future().share();
  Status hold(Stream& s) {
    return s.launch_host_func([f = future] { f.wait(); });
  }
  void open() { promise.set_value(); }
};

bool on_device(TierManager& tm, BlockId id) { return tm.info(id)->cached[static_cast<std::size_t>(Tier::kDevice)]; }

TEST(PinStreams, ReleaseAfterKeepsTheCopyPinnedUntilTheStreamsWorkHasRun) {
  Watchdog wd(std::chrono::seconds(60), "release_after");
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId a = reg(tm, "a", 64 * KB);
  write_block(tm, a, 7);
  auto pin = tm.acquire(a, Tier::kDevice);
  ASSERT_TRUE(pin.ok() && pin->wait().ok());
  const DeviceRange range = pin->device_range();
  const std::span<const std::byte> bytes(static_cast<const std::byte*>(range.address()), range.bytes());
  ASSERT_TRUE(check_pattern(bytes, a.value, 7));

  auto compute = make_stream(*rig->device, "compute");
  ASSERT_NE(compute, nullptr);
  Latch latch;
  ASSERT_TRUE(latch.hold(*compute).ok());
  ASSERT_TRUE(pin->release_after(*compute).ok());
  EXPECT_FALSE(pin->valid());
  EXPECT_EQ(tm.info(a)->pins, 1);
  EXPECT_EQ(tm.stats().pinned_copies, 1u);

  // Fill the rest of the device budget with three pins: a fourth block needs a's room, and a
  // is still pinned, so it is refused rather than evicting a.
  std::vector<BlockId> others;
  std::vector<Pin> pins;
  for (int i = 0; i < 4; ++i) others.push_back(reg(tm, "other." + std::to_string(i), 64 * KB));
  for (int i = 0; i < 3; ++i) {
    auto p = tm.acquire(others[static_cast<std::size_t>(i)], Tier::kDevice);
    ASSERT_TRUE(p.ok()) << p.status();
    pins.push_back(std::move(*p));
  }
  auto refused = tm.acquire(others[3], Tier::kDevice);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kOutOfMemory) << refused.status();
  EXPECT_TRUE(on_device(tm, a));
  EXPECT_TRUE(check_pattern(bytes, a.value, 7)) << "a's device copy changed while pinned";
  EXPECT_EQ(tm.stats().tiers[0].evictions, 0u);

  latch.open();
  ASSERT_TRUE(compute->synchronize().ok());
  EXPECT_EQ(tm.info(a)->pins, 0);
  // Now a is the one copy that can make room.
  auto fourth = tm.acquire(others[3], Tier::kDevice);
  ASSERT_TRUE(fourth.ok()) << fourth.status();
  ASSERT_TRUE(fourth->wait().ok());
  for (Pin& p : pins) ASSERT_TRUE(p.wait().ok());
  EXPECT_FALSE(on_device(tm, a));
  EXPECT_EQ(tm.stats().tiers[0].evictions, 1u);
  EXPECT_TRUE(check_pattern(pinned_bytes(*fourth), others[3].value, 0));
}

TEST(PinStreams, ReleaseAfterRefusesAStreamOfAnotherDeviceAndKeepsThePin) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId a = reg(tm, "a", 8 * KB);
  auto pin = tm.acquire(a, Tier::kDevice);
  ASSERT_TRUE(pin.ok() && pin->wait().ok());
  auto other = create_device("host", DeviceOptions{});
  ASSERT_TRUE(other.ok());
  auto foreign = make_stream(**other, "foreign");
  ASSERT_NE(foreign, nullptr);
  EXPECT_EQ(pin->release_after(*foreign).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(pin->ready_on(*foreign).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(pin->valid());
  EXPECT_EQ(tm.info(a)->pins, 1);
  pin->release();
  EXPECT_EQ(tm.info(a)->pins, 0);
  Pin empty;
  auto compute = make_stream(*rig->device, "compute");
  EXPECT_EQ(empty.release_after(*compute).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(empty.ready_on(*compute).code(), StatusCode::kFailedPrecondition);
}

TEST(PinStreams, ReadyOnAReadyPinEnqueuesNothing) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId a = reg(tm, "a", 8 * KB);
  auto pin = tm.acquire(a, Tier::kDevice);
  ASSERT_TRUE(pin.ok() && pin->wait().ok());
  auto compute = make_stream(*rig->device, "compute");
  ASSERT_NE(compute, nullptr);
  const auto before = compute->position();
  ASSERT_TRUE(before.has_value());
  ASSERT_TRUE(pin->ready_on(*compute).ok());
  EXPECT_EQ(compute->position(), before);
}

// A read pin's host-to-device copy queues behind a long copy of another stream on the
// (throttled) copy engine; a stream made to wait for the pin copies the pinned bytes out only
// after the load, and reads them whole.
TEST(PinStreams, AStreamWaitsForALoadInFlight) {
  Watchdog wd(std::chrono::seconds(60), "ready_on, read pin");
  RigOptions o = small_rig();
  o.copy_bandwidth = 2 * MiB;
  auto rig = Rig::make(o);
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId a = reg(tm, "a", 64 * KB + 12);
  write_block(tm, a, 3);
  auto blocker = make_stream(*rig->device, "blocker");
  ASSERT_NE(blocker, nullptr);
  auto scratch = rig->device->allocate(512 * KB);
  ASSERT_TRUE(scratch.ok());
  std::vector<std::byte> big(512 * KB);
  ASSERT_TRUE(rig->device->copy_to_device(scratch->range(), big, *blocker).ok());  // occupies the engine
  auto compute = make_stream(*rig->device, "compute");
  ASSERT_NE(compute, nullptr);
  auto pin = tm.acquire(a, Tier::kDevice);
  ASSERT_TRUE(pin.ok()) << pin.status();
  ASSERT_TRUE(pin->ready_on(*compute).ok());
  auto view = pin->device_view(DType::kF32, 0, (64 * KB + 12) / 4);
  ASSERT_TRUE(view.ok()) << view.status();
  std::vector<std::byte> out(view->bytes());
  ASSERT_TRUE(rig->device->copy_to_host(out, view->range(), *compute).ok());
  ASSERT_TRUE(compute->synchronize().ok());
  EXPECT_TRUE(check_pattern(out, a.value, 3)) << "the stream read the copy before its load completed";
  ASSERT_TRUE(pin->wait().ok());
  ASSERT_TRUE(pin->release_after(*compute).ok());
  ASSERT_TRUE(compute->synchronize().ok());
  EXPECT_EQ(tm.info(a)->pins, 0);
  ASSERT_TRUE(blocker->synchronize().ok());
}

// A write pin waits for the block's other transfers too, so a stream waits for it through the
// manager's signal; releasing the pin before it is ready fails the waiting stream instead of
// leaving it parked.
TEST(PinStreams, AStreamWaitsForAWritePinAndFailsWhenItIsReleasedUnready) {
  Watchdog wd(std::chrono::seconds(60), "ready_on, write pin");
  QuietLogs quiet;
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId a = reg(tm, "a", 32 * KB);
  BlockId b = reg(tm, "b", 32 * KB);
  write_block(tm, a, 5);
  write_block(tm, b, 6);
  auto gate = make_stream(*rig->device, "gate");
  auto first = make_stream(*rig->device, "first");
  auto second = make_stream(*rig->device, "second");
  Latch latch;
  ASSERT_TRUE(latch.hold(*gate).ok());
  auto wa = tm.acquire(a, Tier::kDevice, Access::kWrite);
  auto wb = tm.acquire(b, Tier::kDevice, Access::kWrite);
  ASSERT_TRUE(wa.ok() && wb.ok());
  ASSERT_TRUE(wa->ready_on(*first).ok());
  ASSERT_TRUE(wb->ready_on(*second).ok());
  auto view = wa->device_view(DType::kBF16, 0, 16 * KB);
  ASSERT_TRUE(view.ok()) << view.status();
  std::vector<std::byte> out(view->bytes());
  ASSERT_TRUE(rig->device->copy_to_host(out, view->range(), *first).ok());
  EXPECT_FALSE(*first->query());
  wb->release();  // unready: `second` must not wait forever
  latch.open();
  ASSERT_TRUE(first->synchronize().ok());
  EXPECT_TRUE(check_pattern(out, a.value, 5));
  Status failed = second->synchronize();
  EXPECT_EQ(failed.code(), StatusCode::kFailedPrecondition) << failed;
  EXPECT_NE(failed.message().find("'b'"), std::string::npos) << failed;
  ASSERT_TRUE(wa->wait().ok());
}

TEST(PinStreams, AFailedLoadFailsTheWaitingStream) {
  Watchdog wd(std::chrono::seconds(60), "ready_on, failed load");
  QuietLogs quiet;
  RigOptions o = small_rig();
  o.faulty = true;
  o.tiers.host_budget = 64 * KB + 64 * KB;  // the staging pool and one cached 64 KB copy
  auto rig = Rig::make(o);
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId a = reg(tm, "a", 60 * KB, Tier::kNvme);
  BlockId b = reg(tm, "b", 60 * KB, Tier::kNvme);
  write_block(tm, a, 1);
  write_block(tm, b, 2);  // writes a back and evicts its host copy
  ASSERT_TRUE(tm.flush().ok());
  ASSERT_FALSE(tm.info(a)->cached[static_cast<std::size_t>(Tier::kHost)]);
  rig->faulty->fail_nth(nvme::IoOp::kRead, 1, EIO, /*persistent=*/true);
  auto compute = make_stream(*rig->device, "compute");
  auto pin = tm.acquire(a, Tier::kHost);
  ASSERT_TRUE(pin.ok()) << pin.status();
  const Status on = pin->ready_on(*compute);
  const Status synced = compute->synchronize();
  // Either the load had failed by the time ready_on looked, or the stream failed with it.
  EXPECT_TRUE(on.code() == StatusCode::kIoError || synced.code() == StatusCode::kIoError) << on << " / " << synced;
  EXPECT_EQ(pin->wait().code(), StatusCode::kIoError);
  rig->faulty->clear_rules();
}

TEST(PinStreams, DeviceViewsAreTypedAndBoundsChecked) {
  auto rig = Rig::make(small_rig());
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  BlockId a = reg(tm, "weights", 10000);
  write_block(tm, a, 9);
  auto pin = tm.acquire(a, Tier::kDevice);
  ASSERT_TRUE(pin.ok() && pin->wait().ok());
  const auto* base = static_cast<const std::byte*>(pin->device_range().address());

  auto whole = pin->device_view(DType::kF32, 0, 2500);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->address(), base);
  EXPECT_EQ(whole->count(), 2500u);
  EXPECT_EQ(whole->bytes(), 10000u);
  EXPECT_EQ(whole->dtype(), DType::kF32);
  auto tail = pin->device_view(DType::kBF16, 4990, 10);
  ASSERT_TRUE(tail.ok()) << tail.status();
  EXPECT_EQ(tail->address(), base + 9980);
  EXPECT_TRUE(check_pattern(std::span<const std::byte>(base, 10000), a.value, 9));
  std::uint64_t word = 0;
  std::memcpy(&word, static_cast<const std::byte*>(whole->address()) + 8 * 100, 8);
  EXPECT_EQ(word, testing::pattern_word(a.value, 9, 100));
  EXPECT_TRUE(pin->device_view(DType::kF32, 2500, 0).ok());

  for (auto [first, count] : {std::pair<std::uint64_t, std::uint64_t>{2499, 2}, {2501, 0}, {0, 2501},
                              {~std::uint64_t{0}, 1}, {1, ~std::uint64_t{0}}}) {
    auto bad = pin->device_view(DType::kF32, first, count);
    ASSERT_FALSE(bad.ok()) << first << " + " << count;
    EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(bad.status().message().find("'weights'"), std::string::npos) << bad.status();
    EXPECT_NE(bad.status().message().find("2500 fp32 elements"), std::string::npos) << bad.status();
  }
  auto host = tm.acquire(a, Tier::kHost);
  ASSERT_TRUE(host.ok() && host->wait().ok());
  EXPECT_EQ(host->device_view(DType::kF32, 0, 1).status().code(), StatusCode::kFailedPrecondition);
  pin->release();
  EXPECT_EQ(pin->device_view(DType::kF32, 0, 1).status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace strata::offload
