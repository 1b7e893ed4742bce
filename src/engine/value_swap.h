// src/engine/value_swap.h — ValueSwap: the compute-dtype values of an offloaded optimizer's
// pieces homed in NVMe swap (ZeRO-Infinity's parameter offload, offload.param.device = "nvme"),
// so that host memory holds only a window of them.
//
// Blocks. The values of the optimizer's flat space (engine/offload_adam.h) are cut as its
// state is: block k holds the values of state chunk k, so that the update pass writes each
// block whole, once, while the chunk's state is in host memory (kOverwrite: nothing is read
// from NVMe for it). Every block has its NVMe home in a swap store of its own on
// offload.param.nvme_path and is cached in pinned host memory: the pool of
// offload.param.buffer_count x buffer_size bytes is the host budget of the swap's tier
// manager, and a block must fit in one buffer.
//
// The two levels of the prefetch. The ZeRO-3 fetch (zero/param_fetch.h) knows the order its
// buckets are used in from the recorded step: it pins the blocks of the buckets ahead in host
// memory (NVMe -> host, up to read_ahead() bytes: offload.param.max_in_cpu) as soon as their
// update is done, and gathers the nearer ones to the device (host -> device, up to
// zero.prefetch_bucket_size). The manager's own tracing is off: what is not pinned is evicted
// least recently used first, and the pass's writes never read NVMe.
//
// Pins. The fetch keeps its pins below `fetch_pin_limit()` bytes (it waits for its own copies
// to finish, or gives up pins taken ahead, before pinning more), leaving one block for the
// optimizer's write (which releases each block before it pins the next), so the pool is
// never exhausted mid-step; check_window() refuses at
// start-up a pool that cannot hold the largest module's values and the device prefetch window
// beside that block, with the numbers, and warns where the pool holds them but not also
// max_in_cpu read ahead: under load the fetch then gives up pins taken ahead to make room for
// its copies and waits for NVMe reads (the pool's rule: write block + window + max_in_cpu).
//
// Thread-safety: as TierManager (every member may be called from any thread).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "nvme/io_engine.h"
#include "nvme/swap_store.h"
#include "offload/tier_manager.h"
#include "strata/profile.h"
#include "zero/param_fetch.h"

namespace strata::engine {

class ValueSwap {
 public:
  // Elements [first, first + n) of the optimizer's flat space: a state chunk, or a piece.
  struct Range {
    std::uint64_t first = 0;
    std::uint64_t n = 0;
  };

  // Creates the swap files and registers one block per chunk; fails naming the key to change
  // when a block exceeds offload.param.buffer_size, when fewer than two buffers are asked for,
  // or when the swap directories cannot hold the values.
  static Result<std::unique_ptr<ValueSwap>> create(const Profile& profile, Device& device, DType dtype,
                                                   std::vector<Range> chunks, std::vector<Range> pieces);
  ~ValueSwap();

  // Pins chunk k's values in host memory for the optimizer's write: kOverwrite when the
  // caller writes every element, kWrite (the old values read first) otherwise.
  Result<offload::Pin> pin_for_write(std::size_t k, bool whole);
  // The parts of the blocks that hold the values of the optimizer's piece `piece`, for the
  // fetch; their `at` counts elements from the piece's first plus `at`.
  std::vector<zero::HostSegment> segments(std::size_t piece, std::uint64_t at) const;

  // The bytes of pins the fetch may hold at once: the pool less one block (the write's).
  std::uint64_t fetch_pin_limit() const;
  // The bytes the fetch pins ahead of its gathers: offload.param.max_in_cpu, within the limit.
  std::uint64_t read_ahead() const { return std::min(max_in_cpu_, fetch_pin_limit()); }
  // Fails when `elements` values (the largest module's, plus the prefetch window's) spread
  // over blocks do not fit in the pool beside the write's block, and warns when they do but
  // max_in_cpu does not fit beside them too; `what` names them.
  Status check_window(std::uint64_t elements, const std::string& what) const;

  TierStats stats() const { return tiers_->stats(); }

 private:
  ValueSwap() = default;
  Status open(const Profile& profile, Device& device);

  DType dtype_ = DType::kBF16;
  std::vector<Range> chunks_, pieces_;
  std::vector<offload::BlockId> blocks_;
  std::uint64_t chunk_elems_ = 0;   // elements of every chunk but the last
  std::uint64_t block_bytes_ = 0;   // of the largest block, rounded to 4 KiB
  std::uint64_t pool_bytes_ = 0;    // offload.param.buffer_count x buffer_size
  std::uint64_t buffer_bytes_ = 0;  // offload.param.buffer_size
  std::uint64_t max_in_cpu_ = 0;    // offload.param.max_in_cpu
  // Destroyed in reverse order: the tier manager, then the swap store, then its engine.
  std::unique_ptr<nvme::IoEngine> engine_;
  std::unique_ptr<nvme::SwapStore> store_;
  std::unique_ptr<offload::TierManager> tiers_;
};

}  // namespace strata::engine
