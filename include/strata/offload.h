// strata/offload.h — the vocabulary of the tier manager that users see: the three memory tiers,
// how a block is accessed, and the statistics a run reports about data movement.
//
// The tier manager itself (src/offload/tier_manager.h) places blocks of bytes in accelerator
// memory ("device"), pinned host RAM ("host") and NVMe swap ("nvme"), moves them ahead of need
// and keeps every tier under its budget. Its statistics are a plain struct so that an engine
// can return them with a step, and print as JSON for logs and benchmarks.
//
// Thread-safety: everything here is a plain value or a pure function.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace strata {

// Memory tiers, fastest first. The order matters: a block lives in a home tier and may have
// copies only in faster tiers (smaller values).
enum class Tier : std::uint8_t { kDevice = 0, kHost = 1, kNvme = 2 };
inline constexpr int kTierCount = 3;

// "device", "host", "nvme".
std::string_view tier_name(Tier tier);

// How a holder uses a block while it is pinned.
enum class Access : std::uint8_t {
  kRead = 0,   // the bytes are loaded; the holder only reads them
  kWrite,      // the bytes are loaded; the holder may change them and then calls mark_dirty()
  kOverwrite,  // nothing is loaded; the holder writes every byte (the copy is dirty at once)
};
std::string_view access_name(Access access);

// Per-tier figures. Bytes are the amounts charged against the budget (block sizes rounded up
// to 4 KiB; for the host tier this includes the pinned staging pool).
struct TierUsage {
  std::uint64_t budget = 0;        // hard limit
  std::uint64_t used = 0;          // bytes charged now
  std::uint64_t peak = 0;          // highest `used` ever
  std::uint64_t home_bytes = 0;    // bytes of blocks whose home is this tier
  std::uint64_t evictions = 0;     // cached copies removed to make room (or by request)
  std::uint64_t write_backs = 0;   // dirty copies in this tier written to the block's home
  std::uint64_t write_back_bytes = 0;
};

struct TierStats {
  // bytes_moved[from][to], indexed by Tier: completed transfers of block content. A load from
  // NVMe to the device through the staging pool counts as nvme -> device.
  std::array<std::array<std::uint64_t, kTierCount>, kTierCount> bytes_moved{};
  std::array<TierUsage, kTierCount> tiers{};

  std::uint64_t acquires = 0;            // pins requested
  std::uint64_t hits = 0;                // the copy was resident and current
  std::uint64_t in_flight_hits = 0;      // a load of the copy (usually a prefetch) was already under way
  std::uint64_t misses = 0;              // the acquire had to start the load itself
  std::uint64_t zero_fills = 0;          // loads of never-written blocks, served without reading
  std::uint64_t stalls = 0;              // waits that found the data not ready
  std::uint64_t stall_ns = 0;            // time spent in those waits
  std::uint64_t prefetches = 0;          // loads started ahead of use
  std::uint64_t prefetch_bytes = 0;
  std::uint64_t prefetches_unused = 0;   // prefetched copies evicted before anyone used them
  std::uint64_t queued_requests = 0;     // acquires that waited for space (write-backs in flight)
  std::uint64_t budget_refusals = 0;     // acquires refused because pinned data filled the budget
  std::uint64_t load_failures = 0;       // loads that ended in an error (the waiter got the Status)
  std::uint64_t write_back_failures = 0; // write-backs that ended in an error (the copy stayed dirty)
  std::uint64_t staged_chunks = 0;       // nvme <-> device chunks through the staging pool
  std::uint64_t staging_waits = 0;       // chunks that waited for a free staging buffer
  std::uint64_t trace_length = 0;        // accesses per step in the current trace (0: none yet)
  std::uint64_t trace_recordings = 0;    // traces completed (the first step, then each re-recording)
  std::uint64_t trace_divergences = 0;   // times the access order changed and the trace was dropped
  std::uint64_t steps = 0;               // end_step() calls
  std::uint64_t blocks = 0;              // registered blocks
  std::uint64_t pinned_copies = 0;       // copies pinned now

  // Fraction of acquires that did not start their own load: (hits + in_flight_hits) / acquires.
  double hit_rate() const;
  // One JSON object with every field; tiers and tier pairs by name.
  std::string to_json() const;
};

}  // namespace strata
