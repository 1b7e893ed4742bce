// src/zero/param_fetch.h — ZeRO stage 3: each data-parallel rank keeps only its slice of every
// bucket of the low-precision parameters (zero/flat_layout.h), and a bucket is all-gathered into
// a buffer of its own just before a module using it runs forward or backward, then given back.
//
// Home. This rank's slice of every bucket, in bucket order (shard_offset()); a persistent
// bucket — one with at most `persistence_threshold` elements, which the engine cuts per module
// (a LayerNorm's weight and bias) — is kept whole instead, its slice inside it, and gathered in
// place once per step on first use. With `host_home` (parameter offload) the slices of the
// other buckets are not on the device at all: they live in host memory (the offloaded
// optimizer's pinned weight buffer, set_host_slice()) and each gather copies them up first.
// Slices homed on NVMe (HostSegment::tiers) are pinned in host memory for the copy and released
// once the fetch stream has done it. Along the recorded order, beyond the gathers ahead, the
// blocks of the next buckets are pinned ahead (read NVMe -> host) up to `swap_read_ahead`
// bytes, each as soon as `updated(b)` says the optimizer is done with it (a pin must not hold
// a block the optimizer is about to write). The pins held at once stay within
// `swap_pin_limit` bytes: before pinning on demand, the fetch waits for its oldest copies, then
// gives up the farthest pins taken ahead. A pin whose data is not in host memory when its copy
// is enqueued makes the trainer wait for NVMe (`swap_waits`, the blocking fetches).
//
// Gathered buffers. acquire() makes buckets resident: a bucket not resident is gathered on the
// fetch stream (this rank's slice copied from home into its part of a buffer, then an in-place
// all-gather), and the training stream waits for that gather's event before the module's
// kernels. release() gives a bucket back after its module's kernels are enqueued: the buffer
// retires behind an event recorded on the training stream, and is reused (same size) or freed
// only once that event has completed, so a queued kernel never reads a buffer regathered under
// it. A released bucket that the recorded order uses again within `reuse_distance` gathered
// elements stays resident (the last block's modules between forward and backward, a recomputed
// block between its recompute and its backward), until room is needed.
//
// The window. The resident buckets (in use, kept, or prefetched) never hold more than
// `max_live` elements: an acquire evicts kept, then unused prefetched buckets to make room.
// That decision looks only at what was acquired and released, never at timing, so every rank
// gathers the same buckets in the same order. The buffers behind them — resident, retiring,
// and spare (retired, kept for a bucket of the same size) — are bounded by `max_live` too
// (`held` in the statistics): before allocating, spares are freed and then the oldest retiring
// buffer is waited for, which holds the trainer back until the training stream has caught up.
// create() refuses a `max_live` below the largest single acquire (`largest_use`).
//
// Prefetch. The order of acquires in a step is recorded; in the next step, as long as the
// acquires follow that order, the buckets after the current position are gathered ahead,
// while the elements gathered ahead and not yet used stay within `prefetch` and the resident
// buckets leave room without evicting anything. A bucket in use now and given back before
// its next use ahead stops the prefetch there, so that what follows it does not take the room
// its gather will need. begin_step() starts the step's first gathers. A step whose order
// departs from the recorded one stops prefetching at the first difference and fetches the
// rest on demand; its order is recorded for the next step, and the change is logged (the
// first as a warning, every one counted). Every rank runs the same model,
// so every rank departs at the same acquire: the collectives are issued in the same order on
// every rank whatever the order was, which is what keeps ranks from hanging.
//
// Updates. Every gather of a bucket first calls `before_gather(b)` (the engine waits there for
// the optimizer's update of this rank's slice of it) and runs behind the training stream's work
// enqueued before the step began (begin_step()), where the device optimizer's update lies.
//
// Thread-safety: one thread at a time (the trainer's).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "strata/communicator.h"
#include "strata/device.h"
#include "strata/trainer.h"
#include "offload/tier_handles.h"
#include "zero/flat_layout.h"

namespace strata::zero {

struct FetchOptions {
  std::uint64_t max_live = 1000000000;             // gathered elements held at once
  std::uint64_t prefetch = 0;                      // elements gathered ahead of need
  std::uint64_t reuse_distance = 0;                // kept when used again within this many elements
  std::uint64_t persistence_threshold = 0;         // buckets this small stay whole
  std::uint64_t largest_use = 0;                   // the most elements one acquire needs
  bool host_home = false;                          // non-persistent slices live in host memory
  std::uint64_t swap_pin_limit = 0;                // bytes of swap blocks pinned at once (HostSegment::tiers)
  std::uint64_t swap_read_ahead = 0;               // of them, bytes pinned ahead of the gathers
  bool time_stalls = false;                        // measure the training stream's waits (stall_s)
};

// Part of this rank's slice of a bucket in host memory, its elements from `at`: resident
// `bytes`, or, with `tiers`, bytes [offset, offset + size) of a block of that tier manager
// homed on NVMe (engine/value_swap.h), pinned in host memory for each gather.
struct HostSegment {
  std::uint64_t at = 0;
  std::span<const std::byte> bytes;
  offload::TierManager* tiers = nullptr;
  offload::BlockId block;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::uint64_t pinned = 0;  // the bytes a pin of the block holds
  std::uint64_t length() const { return tiers != nullptr ? size : bytes.size(); }
};


class ParamFetch {
 public:
  // Waits until this rank's slice of bucket b holds the latest update.
  using BeforeGather = std::function<Status(std::size_t b)>;

  // Allocates the home on `device` (values in `dtype`); its contents are undefined until the
  // optimizer writes them. REQUIRES: dp, device and layout outlive this object;
  // layout.shards() == dp.size().
  static Result<std::unique_ptr<ParamFetch>> create(Communicator& dp, Device& device, const FlatLayout& layout,
                                                    DType dtype, const FetchOptions& options, BeforeGather before);
  ~ParamFetch();

  bool persistent(std::size_t b) const { return persistent_[b]; }
  // This rank's slice of bucket b in its device home: layout.slice(b, rank).count elements;
  // fails for a bucket whose slice lives in host memory.
  Result<DeviceView> home_slice(std::size_t b) const;
  bool host_slice(std::size_t b) const { return options_.host_home && !persistent_[b]; }
  // Where the host slice of bucket b lives; every element of its tensors must be covered
  // before the first gather (a slice of padding only has none). REQUIRES: host_slice(b); the
  // memory outlives this object.
  void set_host_slice(std::size_t b, std::vector<HostSegment> segments);
  // Device bytes of the home (this rank's slices kept on the device, the persistent buckets).
  std::uint64_t home_bytes() const { return home_elements_ * dtype_size(dtype_); }
  std::uint64_t largest_use() const { return options_.largest_use; }
  std::uint64_t prefetch_window() const { return options_.prefetch; }
  // Slices homed on NVMe: the pins' limits, and whether bucket b's update is done (never waits).
  void set_swap(std::uint64_t pin_limit, std::uint64_t read_ahead, std::function<bool(std::size_t b)> updated);

  // A new step: the update of every bucket is now behind `stream`; persistent buckets are
  // stale, resident ones are dropped, and the step's first buckets are prefetched.
  Status begin_step(Stream& stream);
  // Ends the step's acquires: `stream` waits for every gather issued (nothing reads a home
  // after this), and the order is recorded for the next step.
  Status end_step(Stream& stream);
  // Every gathered value is stale (master weights were set): drops what is resident.
  Status invalidate(Stream& stream);

  // Allocates a spare buffer of `elements` now (the engine checks at start-up that the largest
  // module's buckets fit beside everything else); a device error names the numbers.
  Status reserve(std::uint64_t elements);

  // Makes buckets resident for a module's use on `stream` (see above).
  Status acquire(const std::vector<std::size_t>& buckets, Stream& stream);
  // The gathered storage of tensor i of a resident bucket: layout.tensor(i).numel elements.
  Result<DeviceView> tensor_view(std::size_t i) const;
  // The module's kernels using them are enqueued on `stream`; returns, per bucket, whether it
  // is still resident afterwards (persistent or kept for reuse).
  Result<std::vector<bool>> release(const std::vector<std::size_t>& buckets, Stream& stream);

  GatherStats stats() const;

 private:
  struct Buffer {
    DeviceBuffer memory;
    std::unique_ptr<Event> retired;  // recorded on the training stream at release
    std::uint64_t elements = 0;
  };
  ParamFetch() = default;
  std::uint64_t count(std::size_t b) const { return layout_->bucket(b).count; }
  Status gather(std::size_t b, bool ahead);
  // Bucket b's slice from its home into `own`, this rank's part of its gathered buffer.
  Status copy_slice(std::size_t b, DeviceRange own);
  // Segment s of a slice homed on NVMe into `to`: pinned (`ahead`, or now), copied, released
  // behind the copy.
  Status copy_swapped(const HostSegment& s, offload::Pin ahead, DeviceRange to);
  // Forgets the pins of finished copies; with `wait`, waits for copies, then gives up pins
  // taken ahead, until `bytes` more fit in the limit.
  Status make_pin_room(std::uint64_t bytes, bool wait);
  // Pins the swapped slices of the next buckets ahead (see above).
  Status read_ahead();
  // Bucket b's pins taken ahead (none if it has none), no longer counted as ahead.
  std::vector<offload::Pin> take_read_ahead(std::size_t b);
  void drop_read_ahead(std::size_t b);
  void drop_all_read_ahead();
  // Whether `need` more resident elements fit beside the resident ones, evicting kept buckets
  // used again later than recorded `position` (farthest first); `on_demand`, any kept bucket
  // and then unused prefetched ones. Decided on what was acquired and released only, never on
  // timing, so that every rank gathers the same buckets in the same order.
  Result<bool> fit(std::uint64_t need, bool on_demand, std::size_t position);
  // Frees spare buffers and waits for retiring ones until `need` more elements of buffers fit.
  Status free_memory(std::uint64_t need);
  Result<Buffer> take_buffer(std::size_t b);
  Result<Buffer> allocate(std::uint64_t elements);
  // Moves the retiring buffers whose event has completed to the spares.
  void reclaim();
  // Bucket b's buffer starts retiring (its event already recorded).
  void retire(std::size_t b);
  void follow_order(std::size_t b);
  void order_changed(const std::string& how);
  bool used_again_soon(std::size_t b) const;
  Status prefetch();

  Communicator* dp_ = nullptr;
  Device* device_ = nullptr;
  const FlatLayout* layout_ = nullptr;
  DType dtype_ = DType::kF32;
  FetchOptions options_;
  BeforeGather before_;
  std::unique_ptr<Stream> fetch_;        // the gathers' stream
  std::unique_ptr<Event> step_start_;    // the training stream at begin_step()
  DeviceBuffer home_;
  std::uint64_t home_elements_ = 0;
  std::vector<std::uint64_t> home_at_;   // per bucket, its place in home_ (elements)
  std::vector<bool> persistent_;
  std::vector<std::vector<HostSegment>> host_;  // per bucket with a host slice
  // Swap pins released behind the fetch stream: each one's bytes, done once its event is.
  struct SwapRead {
    std::unique_ptr<Event> done;
    std::uint64_t bytes = 0;
  };
  std::deque<SwapRead> swap_reads_;
  std::uint64_t swap_pinned_ = 0;          // bytes of swap_reads_
  std::vector<std::uint64_t> swap_bytes_;  // per bucket, the bytes its swapped slice pins
  std::vector<std::vector<offload::Pin>> swap_ahead_;  // per bucket, its segments pinned ahead
  std::deque<std::size_t> swap_ahead_order_;           // those buckets, nearest first
  std::uint64_t swap_ahead_bytes_ = 0;
  std::function<bool(std::size_t)> updated_;
  std::vector<bool> stale_;              // persistent buckets not gathered this step
  std::vector<std::unique_ptr<Event>> ready_;  // per bucket, behind its latest gather
  std::vector<std::unique_ptr<Buffer>> resident_;  // per bucket: its gathered buffer, or null
  std::vector<bool> in_use_;             // acquired and not released
  std::vector<bool> kept_;               // released but resident for reuse
  std::vector<bool> ahead_;              // gathered by a prefetch and not acquired yet
  std::deque<Buffer> retiring_;          // released; their event not yet known complete
  std::vector<Buffer> spare_;            // retired and complete, kept for reuse
  std::uint64_t live_ = 0;               // elements of the resident buckets
  std::uint64_t ahead_elements_ = 0;
  // The order of acquires: the recorded step's, and this step's so far.
  std::vector<std::size_t> recorded_, current_;
  std::vector<std::uint64_t> recorded_prefix_;  // elements before each recorded position
  std::vector<std::size_t> recorded_next_;      // the next position of the same bucket, or none
  std::vector<std::size_t> acquired_at_;        // per bucket, its recorded position this time
  std::vector<std::size_t> next_use_;           // per kept bucket, the recorded position of its next use
  std::size_t at_ = 0;                          // position in recorded_ of the next acquire
  bool following_ = false;                      // this step has matched recorded_ so far
  GatherStats stats_;
  // time_stalls: written by host functions on the training stream, one after another.
  std::atomic<std::int64_t> stall_from_ns_{0};
  std::atomic<std::int64_t> stalled_ns_{0};
};

}  // namespace strata::zero
