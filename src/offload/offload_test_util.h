// src/offload/offload_test_util.h — helpers for the tier manager tests only: a host device, an
// NVMe tier (I/O engine, optionally wrapped in a FaultyEngine, and a SwapStore in a scratch
// directory) and a TierManager on top; deterministic block contents; a watchdog that turns a
// hang into a failure; a recount of the manager's running totals from its records.
//
// Thread-safety: fill_pattern/check_pattern are reentrant; the rest is per test.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "nvme/faulty_engine.h"
#include "nvme/io_engine.h"
#include "nvme/swap_store.h"
#include "offload/tier_manager.h"
#include "offload/tier_manager_internal.h"
#include "strata/device.h"

namespace strata::offload::testing {

inline std::string scratch_root() {
  const char* env = std::getenv("STRATA_TEST_TMPDIR");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string("/tmp");
}

// A fresh directory, removed with its contents at the end.
class ScratchDir {
 public:
  ScratchDir() {
    std::filesystem::create_directories(scratch_root());
    std::string tmpl = scratch_root() + "/strata-tiers-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp in " << scratch_root() << " failed";
      return;
    }
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Bytes of block `block` at content `version`: a splitmix64 stream, so a wrong offset, a
// stale version or another block's bytes all show.
inline std::uint64_t pattern_word(std::uint64_t block, std::uint64_t version, std::uint64_t i) {
  std::uint64_t z = (block * 0x9E3779B97F4A7C15ULL) ^ (version * 0xBF58476D1CE4E5B9ULL) ^ (i * 0x94D049BB133111EBULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline void fill_pattern(std::span<std::byte> out, std::uint64_t block, std::uint64_t version) {
  for (std::size_t i = 0; i < out.size(); i += 8) {
    std::uint64_t w = pattern_word(block, version, i / 8);
    std::memcpy(out.data() + i, &w, std::min<std::size_t>(8, out.size() - i));
  }
}

// True when `in` holds pattern (block, version); version 0 means zeros (never written).
inline bool check_pattern(std::span<const std::byte> in, std::uint64_t block, std::uint64_t version) {
  for (std::size_t i = 0; i < in.size(); i += 8) {
    std::uint64_t w = version == 0 ? 0 : pattern_word(block, version, i / 8);
    if (std::memcmp(in.data() + i, &w, std::min<std::size_t>(8, in.size() - i)) != 0) return false;
  }
  return true;
}

// Aborts the test program with a message when not disarmed in time (a hang is a failure,
// not a timeout of the whole suite).
class Watchdog {
 public:
  Watchdog(std::chrono::seconds limit, std::string what) : what_(std::move(what)) {
    thread_ = std::thread([this, limit] {
      std::unique_lock lk(mu_);
      if (!cv_.wait_for(lk, limit, [&] { return done_; })) {
        std::fprintf(stderr, "watchdog: '%s' did not finish within %lld s (deadlock?)\n", what_.c_str(),
                     static_cast<long long>(limit.count()));
        std::abort();
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard lk(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

struct RigOptions {
  std::uint64_t device_capacity = 64ULL << 20;
  std::uint64_t copy_bandwidth = 0;
  std::uint64_t swap_capacity = 64ULL << 20;
  bool nvme = true;
  bool faulty = false;     // wrap the engine in a FaultyEngine
  bool checksums = false;
  std::string engine = "posix";
  bool direct = false;     // O_DIRECT (callers check direct_io_supported() first)
  TierOptions tiers;
};

// The small rig most tier tests use: a 256 KiB device budget, a 1 MiB host budget (two 32 KiB
// staging buffers of it) and no prefetch.
inline RigOptions small_rig() {
  RigOptions o;
  o.tiers.device_budget = 256 << 10;
  o.tiers.host_budget = 1024 << 10;
  o.tiers.staging_buffers = 2;
  o.tiers.staging_buffer_size = 32 << 10;
  o.tiers.prefetch_bytes = 0;
  return o;
}

// Device + NVMe tier + tier manager, torn down in the right order.
struct Rig {
  std::unique_ptr<ScratchDir> dir;
  std::unique_ptr<Device> device;
  std::unique_ptr<nvme::IoEngine> engine;
  nvme::FaultyEngine* faulty = nullptr;  // owned by `engine` when present
  std::unique_ptr<nvme::SwapStore> swap;
  std::unique_ptr<TierManager> tiers;

  ~Rig() {
    tiers.reset();
    if (swap) swap->close().ignore();
    swap.reset();
    engine.reset();
  }

  static std::unique_ptr<Rig> make(const RigOptions& o) {
    auto rig = std::make_unique<Rig>();
    DeviceOptions d;
    d.capacity = o.device_capacity;
    d.copy_bandwidth = o.copy_bandwidth;
    d.compute_threads = 1;
    auto dev = create_device("host", d);
    EXPECT_TRUE(dev.ok()) << dev.status();
    if (!dev.ok()) return nullptr;
    rig->device = std::move(dev).value();
    if (o.nvme) {
      rig->dir = std::make_unique<ScratchDir>();
      NvmeConfig c;
      c.engine = o.engine;
      c.direct = o.direct;  // off by default: the scratch directory may be on tmpfs
      c.block_size = 64 * 1024;
      c.queue_depth = 8;
      c.checksums = o.checksums;
      c.registered_buffers = o.engine == "io_uring";
      auto eng = nvme::make_io_engine(c);
      EXPECT_TRUE(eng.ok()) << eng.status();
      if (!eng.ok()) return nullptr;
      rig->engine = std::move(eng).value();
      if (o.faulty) {
        auto f = std::make_unique<nvme::FaultyEngine>(std::move(rig->engine));
        rig->faulty = f.get();
        rig->engine = std::move(f);
      }
      auto store = nvme::SwapStore::create({{rig->dir->path()}, o.swap_capacity}, *rig->engine);
      EXPECT_TRUE(store.ok()) << store.status();
      if (!store.ok()) return nullptr;
      rig->swap = std::move(store).value();
    }
    auto tm = TierManager::create(*rig->device, rig->swap.get(), o.tiers);
    EXPECT_TRUE(tm.ok()) << tm.status();
    if (!tm.ok()) return nullptr;
    rig->tiers = std::move(tm).value();
    return rig;
  }
};

// True when files under the test scratch root accept O_DIRECT (tmpfs before Linux 6.6 does not).
inline bool direct_io_supported() {
  ScratchDir dir;
  if (dir.path().empty()) return false;
  const std::string f = dir.path() + "/probe";
  int fd = ::open(f.c_str(), O_CREAT | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

// Reads a pinned copy's bytes on the host (the host device's memory is host-addressable).
inline std::span<const std::byte> pinned_bytes(const Pin& pin) {
  if (pin.tier() == Tier::kHost) return pin.host_bytes();
  DeviceRange r = pin.device_range();
  return {static_cast<const std::byte*>(r.address()), r.bytes()};
}

inline std::span<std::byte> pinned_bytes_mut(const Pin& pin) {
  if (pin.tier() == Tier::kHost) return pin.host_bytes();
  DeviceRange r = pin.device_range();
  return {static_cast<std::byte*>(r.address()), r.bytes()};
}

}  // namespace strata::offload::testing

namespace strata::offload {

// Recounts, by walking every block under the manager's lock, what the manager keeps as running
// totals (per-tier pinned, releasing, coming, live, queued and resident copies; charged and
// home bytes; the block count), each from its definition rather than from the manager's
// predicates, and says where they differ (empty: nowhere).
struct TierManagerPeer {
  using Block = TierManager::Block;

  static std::string recount(const TierManager& tm) {
    std::lock_guard lk(tm.mu_);
    std::ostringstream diff;
    auto expect = [&](const std::string& what, std::uint64_t kept, std::uint64_t counted) {
      if (kept != counted) diff << what << ": kept " << kept << ", recounted " << counted << "; ";
    };
    for (Tier t : {Tier::kDevice, Tier::kHost}) {
      const std::string tier(tier_name(t));
      const TierManager::Totals::PerTier& kept = tm.totals_->tier(t);
      TierManager::Totals::PerTier want;
      std::set<const Block*> resident;
      for (const Block* b : tm.live_) {
        const TierManager::Copy& c = b->copy(t);
        const bool pinned = c.pins() > 0;
        want.pinned_copies += pinned ? 1 : 0;
        if (c.home()) continue;
        const CopyState s = c.state();
        if (pinned && s != CopyState::kAbsent) want.pinned_bytes += b->charge;
        if (!pinned && c.evicting()) want.releasing_bytes += b->charge;
        if (!pinned && (s == CopyState::kLoading || c.readers() > 0 || c.evicting())) ++want.coming_copies;
        if (pinned || s == CopyState::kLoading || s == CopyState::kQueued || c.prefetched_unused()) want.live_bytes += b->charge;
        if (pinned && s == CopyState::kQueued) ++want.queued_pins;
        if (s == CopyState::kValid) resident.insert(b);
      }
      expect(tier + " pinned copies", kept.pinned_copies, want.pinned_copies);
      expect(tier + " pinned bytes", kept.pinned_bytes, want.pinned_bytes);
      expect(tier + " releasing bytes", kept.releasing_bytes, want.releasing_bytes);
      expect(tier + " coming copies", kept.coming_copies, want.coming_copies);
      expect(tier + " live bytes", kept.live_bytes, want.live_bytes);
      expect(tier + " queued pins", kept.queued_pins, want.queued_pins);
      const std::set<const Block*> listed(kept.resident.begin(), kept.resident.end());
      expect(tier + " resident copies", kept.resident.size(), resident.size());
      if (listed != resident) diff << tier << " resident copies: the list holds other blocks than the recount; ";
    }
    for (Tier t : {Tier::kDevice, Tier::kHost, Tier::kNvme}) recount_bytes(tm, t, expect);
    expect("blocks", tm.stats_.blocks, tm.live_.size());
    for (std::size_t i = 0; i < tm.live_.size(); ++i) {
      if (tm.live_[i]->live_index != i) diff << "block '" << tm.live_[i]->name << "' has a wrong place in the live list; ";
    }
    return diff.str();
  }

 private:
  template <typename Expect>
  static void recount_bytes(const TierManager& tm, Tier t, Expect& expect) {
    const std::string tier(tier_name(t));
    std::uint64_t home = 0;
    std::uint64_t cached = 0;
    auto add = [&](const Block& b) {
      if (b.home == t) home += b.charge;
      if (t != Tier::kNvme && !b.copy(t).home() && b.copy(t).charged) cached += b.charge;
    };
    for (const Block* b : tm.live_) add(*b);
    for (const auto& z : tm.zombies_) add(*z);
    const TierUsage& u = tm.stats_.tiers[static_cast<std::size_t>(t)];
    const std::uint64_t leased = t == Tier::kHost ? tm.leased_host_ : t == Tier::kDevice ? tm.leased_device_ : 0;
    const std::uint64_t pool = t == Tier::kHost ? tm.staging_.total_bytes() : 0;
    expect(tier + " home bytes", u.home_bytes, home);
    expect(tier + " used bytes", u.used, home + cached + leased + pool);
  }
};

}  // namespace strata::offload
