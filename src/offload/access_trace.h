// src/offload/access_trace.h — the order in which a training step uses its blocks.
//
// Training repeats the same step, so the first step's accesses predict every later step's.
// The trace records them (block, tier, access) during the first step; from then on each
// access is checked against the trace and advances a cursor. With the cursor, the tier
// manager knows what comes next (to prefetch it) and how far away each resident copy's next
// use is (to evict the one used furthest in the future: Belady's optimal policy, which is
// exact here because the future is known). The trace wraps: after its last access the next
// step's first access follows.
//
// When an access departs from the trace (a different block, tier or access kind, a step
// that runs longer or ends earlier), the trace is dropped and the current step is recorded
// as the new trace, starting with the accesses of this step that did match. The caller logs
// the Divergence.
//
// Thread-safety: none; the tier manager calls it under its own lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "strata/offload.h"

namespace strata::offload {

struct TraceEntry {
  std::uint64_t block = 0;  // BlockId::value
  Tier tier = Tier::kDevice;
  Access access = Access::kRead;
  bool operator==(const TraceEntry&) const = default;
};

class AccessTrace {
 public:
  // Returned by distance_to_next_use() for a copy the trace never uses.
  static constexpr std::size_t kNoUse = static_cast<std::size_t>(-1);
  // A recording longer than this is abandoned (a program that never ends its steps).
  static constexpr std::size_t kMaxLength = std::size_t{1} << 22;

  struct Divergence {
    std::size_t position = 0;                // access index within the step where it happened
    std::optional<TraceEntry> expected;      // what the trace predicted (none: the step ran longer)
    std::optional<TraceEntry> got;           // what happened instead (none: the step ended early)
    std::size_t dropped_length = 0;          // accesses in the dropped trace
  };

  // Checks or records one access.
  std::optional<Divergence> observe(const TraceEntry& entry);
  // Marks the end of a step. A recording becomes the trace; a replay that stopped early is a
  // divergence, and what this step did becomes the trace.
  std::optional<Divergence> end_step();
  // Forgets everything; the next step records again.
  void reset();

  bool replaying() const { return !trace_.empty(); }
  std::size_t size() const { return trace_.size(); }
  // Index of the next expected access within the trace. REQUIRES: replaying().
  std::size_t cursor() const { return cursor_; }
  std::uint64_t recordings() const { return recordings_; }
  std::uint64_t divergences() const { return divergences_; }
  // True when a recording was abandoned for length since the last reset.
  bool overflowed() const { return overflowed_; }

  // The entry `ahead` accesses after the cursor (0 = the next one), wrapping into the next
  // step. REQUIRES: replaying() and ahead < size().
  const TraceEntry& upcoming(std::size_t ahead) const;
  // Accesses from the cursor until the next use of (block, tier): 0 when it is the very next
  // access; kNoUse when the trace never uses it. Without a trace, kNoUse.
  std::size_t distance_to_next_use(std::uint64_t block, Tier tier) const;

 private:
  struct Key {
    std::uint64_t block;
    Tier tier;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    std::size_t operator()(const Key& k) const {
      return std::hash<std::uint64_t>()(k.block * 4 + static_cast<std::uint64_t>(k.tier));
    }
  };

  void install(std::vector<TraceEntry> trace);
  Divergence diverge(std::optional<TraceEntry> got);

  std::vector<TraceEntry> trace_;      // the replayed trace; empty while recording
  std::vector<TraceEntry> recording_;  // accesses of the step being recorded
  std::unordered_map<Key, std::vector<std::size_t>, KeyHash> positions_;  // sorted, per copy
  std::size_t cursor_ = 0;
  std::uint64_t recordings_ = 0;
  std::uint64_t divergences_ = 0;
  bool overflowed_ = false;
};

}  // namespace strata::offload
