// Randomized properties of the tier manager: thousands of operations over hundreds of blocks
// with random sizes, homes, budgets, staging pools and prefetch settings. Throughout:
//   * every byte read is the last version written (content patterns, checked in full);
//   * no tier's charged bytes ever exceed its budget (and the device's own allocator agrees);
//   * refusals happen only as out-of-memory (budget) or failed-precondition (pin conflict)
//     Statuses with the budget named, never as a hang;
//   * with a working set exactly the size of the budget, nothing is refused and nothing hangs;
//   * the running totals the manager keeps (pinned, releasing, live, queued and resident copies
//     per tier, charged and home bytes) equal a full recount after every operation.
#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <thread>
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

// The running totals against a full recount (empty: they agree).
std::string recount(const TierManager& tm) { return TierManagerPeer::recount(tm); }

struct QuietLogs {
  QuietLogs() : level(log_level()) { set_log_level(LogLevel::kWarn); }
  ~QuietLogs() { set_log_level(level); }
  LogLevel level;
};

struct ModelBlock {
  BlockId id;
  std::uint64_t bytes = 0;
  Tier home = Tier::kHost;
  Tier fastest = Tier::kDevice;
  std::uint64_t version = 0;  // the content every read must see (0: zeros)
};

struct Held {
  Pin pin;
  std::size_t block = 0;
};

void expect_budgets_hold(const TierStats& s, const TierOptions& o, const char* where) {
  EXPECT_LE(s.tiers[0].peak, o.device_budget) << where;
  EXPECT_LE(s.tiers[1].peak, o.host_budget) << where;
  EXPECT_LE(s.tiers[2].peak, s.tiers[2].budget) << where;
}

bool is_budget_refusal(const Status& st) {
  return st.code() == StatusCode::kOutOfMemory &&
         (st.message().find("memory.device_budget") != std::string::npos ||
          st.message().find("memory.host_budget") != std::string::npos);
}

// One randomized run; returns the number of operations that did something.
void random_run(std::uint64_t seed, int ops, int blocks, bool uring_direct = false) {
  SCOPED_TRACE("seed " + std::to_string(seed) + (uring_direct ? " io_uring O_DIRECT" : " posix"));
  std::mt19937_64 rng(seed);
  auto pick = [&](std::uint64_t lo, std::uint64_t hi) { return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng); };
  RigOptions o;
  o.device_capacity = 4 * MiB;  // headroom over the budget: fragmentation is not what is tested
  o.swap_capacity = 48 * MiB;
  o.checksums = pick(0, 1) == 1;
  if (uring_direct) {
    o.engine = "io_uring";
    o.direct = true;
  }
  o.tiers.staging_buffers = static_cast<int>(pick(1, 4));
  o.tiers.staging_buffer_size = 4 * KB * pick(2, 16);
  o.tiers.device_budget = 4 * KB * pick(24, 160);     // 96 KB .. 640 KB
  o.tiers.host_budget = o.tiers.staging_buffers * o.tiers.staging_buffer_size + 4 * KB * pick(64, 320);
  o.tiers.prefetch_bytes = pick(0, 2) * 64 * KB;
  o.tiers.max_live_bytes = pick(0, 1) * o.tiers.device_budget;
  o.tiers.tracing = pick(0, 3) != 0;
  auto rig = Rig::make(o);
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;

  std::vector<ModelBlock> model;
  std::uint64_t device_homes = 0;
  std::uint64_t host_homes = 0;
  auto register_one = [&](int i) {
    ModelBlock m;
    const auto h = pick(0, 9);
    m.home = h == 0 ? Tier::kDevice : h < 5 ? Tier::kHost : Tier::kNvme;
    m.fastest = m.home == Tier::kDevice || pick(0, 4) != 0 ? Tier::kDevice : Tier::kHost;
    m.bytes = pick(1, 40 * KB);
    if (pick(0, 19) == 0) m.bytes = pick(100 * KB, 200 * KB);  // some larger than small budgets
    // Device homes stay resident for good: keep them to a quarter of the device budget so
    // that the rest of the run has room to move.
    if (m.home == Tier::kDevice) {
      m.bytes = std::min<std::uint64_t>(m.bytes, 8 * KB);
      if (device_homes + 8 * KB > o.tiers.device_budget / 4) m.home = Tier::kHost;
    }
    if (m.home == Tier::kDevice) device_homes += 8 * KB;
    // Likewise host homes: at most half the host budget, the rest is for cached copies.
    if (m.home == Tier::kHost && host_homes + m.bytes + 4 * KB > o.tiers.host_budget / 2) m.home = Tier::kNvme;
    if (m.home == Tier::kHost) host_homes += m.bytes + 4 * KB;
    auto id = tm.register_block({"b" + std::to_string(i), m.bytes, m.home, m.fastest});
    if (!id.ok()) {
      // Only a block that does not fit, or a full home tier, may be refused.
      EXPECT_TRUE(id.status().code() == StatusCode::kInvalidArgument || id.status().code() == StatusCode::kOutOfMemory)
          << id.status();
      EXPECT_NE(id.status().message().find("budget"), std::string::npos) << id.status();
      return;
    }
    m.id = *id;
    model.push_back(m);
  };
  for (int i = 0; i < blocks; ++i) register_one(i);
  ASSERT_GT(model.size(), 50u);

  std::vector<Held> held;
  auto pins_of = [&](std::size_t b, bool* write) {
    int n = 0;
    *write = false;
    for (const Held& h : held) {
      if (h.block == b) {
        ++n;
        *write = *write || h.pin.access() != Access::kRead;
      }
    }
    return n;
  };
  auto random_tier = [&](const ModelBlock& m) {
    const int lo = static_cast<int>(m.fastest);
    const int hi = std::min(static_cast<int>(m.home), 1);
    return static_cast<Tier>(pick(static_cast<std::uint64_t>(lo), static_cast<std::uint64_t>(std::max(lo, hi))));
  };
  std::uint64_t next_version = 1;
  int done = 0, refused = 0;
  std::vector<std::size_t> pattern;  // a fixed access order, replayed for the trace
  for (int i = 0; i < 24; ++i) pattern.push_back(static_cast<std::size_t>(pick(0, model.size() - 1)));

  auto stream_or = rig->device->create_stream("property");
  ASSERT_TRUE(stream_or.ok()) << stream_or.status();
  std::unique_ptr<Stream> stream = std::move(stream_or).value();
  DeviceLease device_lease;
  HostLease host_lease;
  auto toggle_leases = [&] {
    // Now and then a scratch lease on the device (it evicts to make room) or the host.
    const auto l = pick(0, 49);
    if (l == 0) {
      if (device_lease.valid()) {
        device_lease.release();
      } else {
        auto lease = tm.lease_device("scratch", pick(1, o.tiers.device_budget / 4));
        if (lease.ok()) {
          device_lease = std::move(*lease);
        } else {
          EXPECT_TRUE(is_budget_refusal(lease.status())) << lease.status();
        }
      }
    } else if (l == 1) {
      if (host_lease.data() != nullptr) {
        host_lease.release();
      } else {
        auto lease = tm.lease_host("staging", pick(1, 64 * KB));
        if (lease.ok()) host_lease = std::move(*lease);
        else EXPECT_EQ(lease.status().code(), StatusCode::kOutOfMemory) << lease.status();
      }
    }
  };
  for (int op = 0; op < ops; ++op) {
    ASSERT_EQ(recount(tm), "") << "before op " << op;
    toggle_leases();
    const auto kind = pick(0, 99);
    if (kind < 40 || (kind < 55 && held.size() < 4)) {
      // Acquire: read, write or overwrite.
      const std::size_t bi = static_cast<std::size_t>(pick(0, model.size() - 1));
      ModelBlock& m = model[bi];
      const Tier t = random_tier(m);
      const auto a = pick(0, 9);
      const Access access = a < 6 ? Access::kRead : a < 8 ? Access::kWrite : Access::kOverwrite;
      bool writer = false;
      const int pins = pins_of(bi, &writer);
      auto pin = tm.acquire(m.id, t, access);
      const bool conflict = (access == Access::kRead && writer) || (access != Access::kRead && pins > 0);
      if (conflict) {
        EXPECT_FALSE(pin.ok());
        EXPECT_EQ(pin.status().code(), StatusCode::kFailedPrecondition) << pin.status();
        continue;
      }
      if (!pin.ok()) {
        EXPECT_TRUE(is_budget_refusal(pin.status())) << pin.status();
        ++refused;
        continue;
      }
      Status st = pin->wait();
      if (!st.ok()) {
        EXPECT_TRUE(is_budget_refusal(st)) << st;
        ++refused;
        continue;
      }
      ++done;
      ASSERT_EQ(pinned_bytes(*pin).size(), m.bytes);
      if (access != Access::kOverwrite) {
        ASSERT_TRUE(check_pattern(pinned_bytes(*pin), m.id.value, m.version))
            << "block " << bi << " in " << tier_name(t) << " expected version " << m.version << " op " << op;
      }
      if (access != Access::kRead) {
        m.version = next_version++;
        fill_pattern(pinned_bytes_mut(*pin), m.id.value, m.version);
        if (access == Access::kWrite) {
          ASSERT_TRUE(pin->mark_dirty().ok());
        }
      }
      if (pick(0, 2) == 0) held.push_back(Held{std::move(*pin), bi});
    } else if (kind < 65) {
      if (!held.empty()) {
        const std::size_t i = static_cast<std::size_t>(pick(0, held.size() - 1));
        if (pick(0, 1) == 0) {  // in the order of a stream's work, which is done before the next op
          ASSERT_TRUE(held[i].pin.release_after(*stream).ok());
          EXPECT_FALSE(held[i].pin.valid());
          ASSERT_TRUE(stream->synchronize().ok());
        }
        held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
      }
    } else if (kind < 75) {
      const ModelBlock& m = model[static_cast<std::size_t>(pick(0, model.size() - 1))];
      EXPECT_TRUE(tm.prefetch(m.id, random_tier(m)).ok());
    } else if (kind < 78) {
      // The repeated pattern: Belady and prefetch along a known trace.
      held.clear();
      for (int rep = 0; rep < 3; ++rep) {
        for (std::size_t bi : pattern) {
          ModelBlock& m = model[bi];
          auto pin = tm.acquire(m.id, m.fastest, Access::kRead);
          if (!pin.ok()) {
            EXPECT_TRUE(is_budget_refusal(pin.status())) << pin.status();
            continue;
          }
          ASSERT_TRUE(pin->wait().ok());
          ASSERT_TRUE(check_pattern(pinned_bytes(*pin), m.id.value, m.version)) << "pattern block " << bi;
        }
        tm.end_step();
      }
    } else if (kind < 92) {
      tm.end_step();
    } else if (kind < 96) {
      bool any_writer = false;
      for (const Held& h : held) any_writer = any_writer || h.pin.access() != Access::kRead;
      Status st = tm.flush();
      if (any_writer) {
        EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st;
      } else {
        EXPECT_TRUE(st.ok()) << st;
      }
    } else {
      // Drop an unpinned block and register a new one in its place.
      const std::size_t bi = static_cast<std::size_t>(pick(0, model.size() - 1));
      bool writer = false;
      if (pins_of(bi, &writer) > 0) {
        EXPECT_EQ(tm.drop(model[bi].id).code(), StatusCode::kFailedPrecondition);
        continue;
      }
      ASSERT_TRUE(tm.drop(model[bi].id).ok());
      std::for_each(pattern.begin(), pattern.end(), [&](std::size_t& p) {
        if (p == bi) p = 0;
      });
      model.erase(model.begin() + static_cast<std::ptrdiff_t>(bi));
      for (Held& h : held) {
        if (h.block > bi) --h.block;
      }
      for (std::size_t& p : pattern) {
        if (p > bi) --p;
      }
      register_one(blocks + op);
    }
    if (op % 256 == 0) expect_budgets_hold(tm.stats(), o.tiers, "during the run");
  }
  ASSERT_EQ(recount(tm), "") << "after the operations";
  held.clear();
  device_lease.release();
  host_lease.release();
  ASSERT_EQ(recount(tm), "") << "after releasing everything";
  ASSERT_TRUE(tm.flush().ok());
  // Every block, read back from its fastest tier and from the host where allowed.
  for (const ModelBlock& m : model) {
    auto info = tm.info(m.id);
    ASSERT_TRUE(info.ok());
    EXPECT_FALSE(info->dirty) << info->name;
    for (Tier t : {m.fastest, std::min(m.home, Tier::kHost)}) {
      auto pin = tm.acquire(m.id, t, Access::kRead);
      // With nothing pinned, only the permanent home blocks (and the staging pool) can leave
      // too little room, and only then may the acquire be refused.
      const TierStats now = tm.stats();
      const std::uint64_t fixed = now.tiers[static_cast<std::size_t>(t)].home_bytes +
                                  (t == Tier::kHost ? o.tiers.staging_buffers * o.tiers.staging_buffer_size : 0);
      const std::uint64_t charge = (m.bytes + 4095) / 4096 * 4096;
      if (m.home != t && fixed + charge > now.tiers[static_cast<std::size_t>(t)].budget) {
        EXPECT_TRUE(!pin.ok() && is_budget_refusal(pin.status())) << info->name;
        continue;
      }
      ASSERT_TRUE(pin.ok()) << pin.status();
      ASSERT_TRUE(pin->wait().ok());
      EXPECT_TRUE(check_pattern(pinned_bytes(*pin), m.id.value, m.version)) << info->name << " in " << tier_name(t);
    }
  }
  ASSERT_EQ(recount(tm), "") << "at the end";
  TierStats s = tm.stats();
  expect_budgets_hold(s, o.tiers, "at the end");
  EXPECT_EQ(s.pinned_copies, 0u);
  // The device's allocator saw no more than the budget either.
  EXPECT_LE(rig->device->stats().peak_used, o.tiers.device_budget);
  EXPECT_GT(done, ops / 5) << "refused " << refused;
  EXPECT_GT(s.tiers[0].evictions + s.tiers[1].evictions, 0u);
  ::testing::Test::RecordProperty("seed_" + std::to_string(seed), s.to_json());
}

TEST(TierProperty, RandomOperationsKeepBytesAndBudgets) {
  QuietLogs quiet;
  Watchdog wd(std::chrono::seconds(300), "random operations");
  for (std::uint64_t seed : {1, 2, 3, 4, 5, 6}) {
    random_run(seed, 1500, 200);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// The same through io_uring with O_DIRECT: block sizes that are not multiples of 4 KiB, the
// pinned copies and staging buffers used in place.
TEST(TierProperty, RandomOperationsThroughIoUringWithDirectIo) {
  if (!testing::direct_io_supported()) GTEST_SKIP() << "the test scratch directory does not accept O_DIRECT";
  QuietLogs quiet;
  Watchdog wd(std::chrono::seconds(300), "random operations, io_uring");
  for (std::uint64_t seed : {11, 12}) {
    random_run(seed, 1000, 150, /*uring_direct=*/true);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// Working set == budget: eight 32 KB blocks fill the device budget exactly (and, for blocks
// used on the host, the host budget beside the staging pool). Rounds pin eight random blocks
// at once, write some, release all; the previous round's copies, dirty or not, must make way.
TEST(TierProperty, WorkingSetEqualToTheBudgetNeverStallsOrFails) {
  QuietLogs quiet;
  Watchdog wd(std::chrono::seconds(300), "working set == budget");
  std::mt19937_64 rng(77);
  constexpr int kSet = 8;
  constexpr std::uint64_t kCharge = 32 * KB;
  RigOptions o;
  o.device_capacity = 1 * MiB;
  o.tiers.device_budget = kSet * kCharge;
  o.tiers.staging_buffers = 2;
  o.tiers.staging_buffer_size = 16 * KB;
  o.tiers.host_budget = 2 * 16 * KB + kSet * kCharge;
  o.tiers.prefetch_bytes = 64 * KB;
  auto rig = Rig::make(o);
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  std::vector<ModelBlock> model;
  for (int i = 0; i < 40; ++i) {
    ModelBlock m;
    m.home = Tier::kNvme;
    m.fastest = i % 2 == 0 ? Tier::kDevice : Tier::kHost;
    m.bytes = kCharge - std::uniform_int_distribution<std::uint64_t>(0, 4095)(rng);
    auto id = tm.register_block({"w" + std::to_string(i), m.bytes, m.home, m.fastest});
    ASSERT_TRUE(id.ok()) << id.status();
    m.id = *id;
    model.push_back(m);
  }
  std::uint64_t next_version = 1;
  for (int round = 0; round < 60; ++round) {
    for (Tier tier : {Tier::kDevice, Tier::kHost}) {
      std::vector<std::size_t> candidates;
      for (std::size_t i = 0; i < model.size(); ++i) {
        if (static_cast<int>(model[i].fastest) <= static_cast<int>(tier)) candidates.push_back(i);
      }
      std::shuffle(candidates.begin(), candidates.end(), rng);
      candidates.resize(kSet);
      std::vector<Pin> pins;
      for (std::size_t bi : candidates) {
        const auto a = std::uniform_int_distribution<int>(0, 2)(rng);
        const Access access = a == 0 ? Access::kRead : a == 1 ? Access::kWrite : Access::kOverwrite;
        auto pin = tm.acquire(model[bi].id, tier, access);
        ASSERT_TRUE(pin.ok()) << "round " << round << ": " << pin.status();
        pins.push_back(std::move(*pin));
      }
      for (std::size_t k = 0; k < pins.size(); ++k) {
        ModelBlock& m = model[candidates[k]];
        Status st = pins[k].wait();
        ASSERT_TRUE(st.ok()) << "round " << round << ": " << st;
        if (pins[k].access() != Access::kOverwrite) {
          ASSERT_TRUE(check_pattern(pinned_bytes(pins[k]), m.id.value, m.version)) << "round " << round;
        }
        if (pins[k].access() != Access::kRead) {
          m.version = next_version++;
          fill_pattern(pinned_bytes_mut(pins[k]), m.id.value, m.version);
          if (pins[k].access() == Access::kWrite) {
            ASSERT_TRUE(pins[k].mark_dirty().ok());
          }
        }
      }
      tm.end_step();
      ASSERT_EQ(recount(tm), "") << "round " << round;
    }
  }
  EXPECT_EQ(recount(tm), "");
  TierStats s = tm.stats();
  EXPECT_EQ(s.budget_refusals, 0u);
  EXPECT_EQ(s.tiers[0].peak, o.tiers.device_budget);  // the budget was really used to the byte
  expect_budgets_hold(s, o.tiers, "working set == budget");
  EXPECT_GT(s.tiers[0].write_backs + s.tiers[1].write_backs, 0u);
  ASSERT_TRUE(tm.flush().ok());
  for (const ModelBlock& m : model) {
    auto pin = tm.acquire(m.id, Tier::kHost, Access::kRead);
    ASSERT_TRUE(pin.ok() && pin->wait().ok());
    EXPECT_TRUE(check_pattern(pinned_bytes(*pin), m.id.value, m.version));
  }
}

// Several threads on disjoint blocks, each holding one pin at a time, sharing the budgets
// (three pins always fit, so nothing may be refused).
TEST(TierProperty, ConcurrentThreadsShareTheBudgets) {
  QuietLogs quiet;
  Watchdog wd(std::chrono::seconds(300), "concurrent threads");
  RigOptions o;
  o.device_capacity = 2 * MiB;
  o.tiers.device_budget = 160 * KB;
  o.tiers.staging_buffers = 3;
  o.tiers.staging_buffer_size = 16 * KB;
  o.tiers.host_budget = 3 * 16 * KB + 2 * MiB;
  o.tiers.prefetch_bytes = 64 * KB;
  auto rig = Rig::make(o);
  ASSERT_NE(rig, nullptr);
  TierManager& tm = *rig->tiers;
  constexpr int kThreads = 3;
  constexpr int kPerThread = 30;
  std::vector<std::vector<ModelBlock>> blocks(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      ModelBlock m;
      m.home = i % 3 == 0 ? Tier::kHost : Tier::kNvme;
      m.bytes = 1 + (static_cast<std::uint64_t>(i) * 7919 + static_cast<std::uint64_t>(t) * 104729) % (48 * KB);
      auto id = tm.register_block({"t" + std::to_string(t) + "." + std::to_string(i), m.bytes, m.home});
      ASSERT_TRUE(id.ok()) << id.status();
      m.id = *id;
      blocks[static_cast<std::size_t>(t)].push_back(m);
    }
  }
  std::atomic<int> failures{0};
  std::mutex messages_mu;
  std::vector<std::string> messages;
  auto fail = [&](const std::string& what) {
    ++failures;
    std::lock_guard lk(messages_mu);
    if (messages.size() < 10) messages.push_back(what);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(1000 + static_cast<std::uint64_t>(t));
      std::uint64_t version = static_cast<std::uint64_t>(t) << 40;
      auto& mine = blocks[static_cast<std::size_t>(t)];
      for (int op = 0; op < 600; ++op) {
        ModelBlock& m = mine[std::uniform_int_distribution<std::size_t>(0, mine.size() - 1)(rng)];
        const Tier tier = std::uniform_int_distribution<int>(0, 1)(rng) == 0 ? Tier::kDevice : Tier::kHost;
        const auto a = std::uniform_int_distribution<int>(0, 3)(rng);
        const Access access = a < 2 ? Access::kRead : a == 2 ? Access::kWrite : Access::kOverwrite;
        if (std::uniform_int_distribution<int>(0, 4)(rng) == 0) {
          Status st = tm.prefetch(mine[0].id, Tier::kDevice);
          if (!st.ok()) fail("prefetch: " + st.to_string());
        }
        auto pin = tm.acquire(m.id, tier, access);
        if (!pin.ok()) {
          fail("acquire: " + pin.status().to_string());
          continue;
        }
        Status st = pin->wait();
        if (!st.ok()) {
          fail("wait: " + st.to_string());
          continue;
        }
        if (access != Access::kOverwrite && !check_pattern(pinned_bytes(*pin), m.id.value, m.version)) {
          fail("content of " + std::to_string(m.id.value) + " in " + std::string(tier_name(tier)));
        }
        if (access != Access::kRead) {
          m.version = ++version;
          fill_pattern(pinned_bytes_mut(*pin), m.id.value, m.version);
          if (access == Access::kWrite && !pin->mark_dirty().ok()) fail("mark_dirty");
        }
        if (t == 0 && op % 50 == 49) tm.end_step();
        if (op % 25 == 0) {
          const std::string diff = recount(tm);
          if (!diff.empty()) fail("totals: " + diff);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  for (const auto& m : messages) ADD_FAILURE() << m;
  ASSERT_TRUE(tm.flush().ok());
  for (const auto& mine : blocks) {
    for (const ModelBlock& m : mine) {
      auto pin = tm.acquire(m.id, Tier::kDevice, Access::kRead);
      ASSERT_TRUE(pin.ok() && pin->wait().ok());
      EXPECT_TRUE(check_pattern(pinned_bytes(*pin), m.id.value, m.version));
    }
  }
  TierStats s = tm.stats();
  expect_budgets_hold(s, o.tiers, "concurrent");
  EXPECT_EQ(s.budget_refusals, 0u);
  EXPECT_LE(rig->device->stats().peak_used, o.tiers.device_budget);
}

}  // namespace
}  // namespace strata::offload
