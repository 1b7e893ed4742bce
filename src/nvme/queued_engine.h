// src/nvme/queued_engine.h — what the three backends share: validation of a batch, the
// queue of accepted requests, carving requests into block_size pieces for the I/O threads,
// accounting for drain(), waking idle I/O threads, and statistics. A backend only turns
// pieces into kernel operations and reports their results.
//
// Each I/O thread w calls take_pieces(w, room, ...) whenever it has room for more pieces in
// flight; when the queue runs dry while it still had room, the thread is marked idle and the
// next submit() calls wake_worker(w). That keeps every thread's queue full without waves and
// without a wake-up per request while the thread is busy.
//
// Thread-safety: all members are safe from any thread. Backends call the protected helpers
// from their I/O threads and never hold their own locks while calling complete_piece()
// (which runs completion finalizers that may submit again).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <span>
#include <vector>

#include "nvme/io_engine.h"
#include "nvme/io_piece.h"

namespace strata::nvme {

class QueuedEngine : public IoEngine {
 public:
  const NvmeConfig& config() const final { return config_; }
  Status submit(std::span<const IoRequest> requests) final;
  Status drain() final;
  IoStats stats() const final;

 protected:
  // REQUIRES: validate_nvme_config(config) is OK. `workers` I/O threads will call
  // take_pieces with indices 0..workers-1.
  QueuedEngine(NvmeConfig config, int workers);

  // Wakes I/O thread `worker` (new work arrived or stop was requested). Called without
  // engine locks held; a spurious wake-up must be harmless.
  virtual void wake_worker(int worker) = 0;

  // Moves up to `room` pieces from the queue into `out`; returns how many. When fewer than
  // `room` were available the worker is marked idle until the next submit or stop.
  std::size_t take_pieces(int worker, std::size_t room, IoPiece* out);

  // Reports a finished piece (status OK means all of it moved): feeds its completion,
  // statistics and drain accounting. Must not be called with backend locks held.
  void complete_piece(IoPiece& piece, const Status& status);

  // Called when the backend resubmits part of a piece.
  void count_short_transfer() { short_transfers_.fetch_add(1, std::memory_order_relaxed); }
  void count_retry() { retries_.fetch_add(1, std::memory_order_relaxed); }
  void count_fixed_buffer() { fixed_pieces_.fetch_add(1, std::memory_order_relaxed); }
  // Called by a ring backend after it submitted `added` pieces on top of `before` in flight.
  void note_refill(int before, std::size_t added) {
    if (added == 0) return;
    if (before > 0) topped_up_.fetch_add(added, std::memory_order_relaxed);
    const auto now = static_cast<std::uint64_t>(before) + added;
    std::uint64_t seen = max_in_flight_.load(std::memory_order_relaxed);
    while (now > seen && !max_in_flight_.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
    }
  }

  // Stops accepting requests, waits for everything accepted, then asks the I/O threads to
  // exit (stopping() becomes true and every worker is woken). Backends call this first in
  // their destructor, then join their threads.
  void shutdown();
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }

  // True while any accepted piece has not completed.
  bool busy() const;

  // Fails every queued piece with `status` and refuses later submissions; for a backend
  // whose kernel object broke (it stays alive so in-flight work can still drain).
  void fail_engine(const Status& status);

 private:
  struct Pending {
    IoRequest request;
    std::uint64_t next = 0;  // first byte not yet handed to an I/O thread
  };

  NvmeConfig config_;
  mutable std::mutex mu_;
  std::condition_variable drained_cv_;
  std::deque<Pending> queue_;
  std::vector<char> idle_;            // per worker: waiting for work (guarded by mu_)
  std::size_t next_wake_ = 0;         // guarded by mu_
  std::uint64_t outstanding_ = 0;     // pieces accepted and not yet completed (guarded by mu_)
  bool closed_ = false;               // guarded by mu_
  Status engine_failure_;             // guarded by mu_
  std::uint64_t failures_since_drain_ = 0;  // guarded by mu_
  Status first_failure_since_drain_;  // guarded by mu_
  std::atomic<bool> stopping_{false};

  std::atomic<std::uint64_t> reads_{0}, writes_{0}, bytes_read_{0}, bytes_written_{0};
  std::atomic<std::uint64_t> pieces_{0}, short_transfers_{0}, retries_{0}, fixed_pieces_{0}, failed_{0};
  std::atomic<std::uint64_t> max_in_flight_{0}, topped_up_{0};
};

}  // namespace strata::nvme
