// src/nvme/io_engine.h — the IoEngine seam: asynchronous reads and writes of buffers at file
// offsets, submitted in batches, each request finishing through an IoCompletion.
//
// Backends (one per file): UringEngine (liburing), AioEngine (libaio), PosixEngine
// (pread/pwrite on a thread pool). They are chosen by name through make_io_engine(), which
// reads the profile's [nvme] section; FaultyEngine wraps any of them for tests.
//
// Contract shared by every backend:
//   - A request larger than `block_size` is split into block_size pieces; up to
//     `queue_depth` pieces are in flight per I/O thread and the queue is refilled as pieces
//     complete. Short transfers are resubmitted from where they stopped; EAGAIN and EINTR
//     are retried. A request therefore either moves all its bytes (OK) or fails with a
//     Status naming the operation, the file and the offset.
//   - Requests are not ordered against each other. Two in-flight requests must not touch
//     overlapping file ranges when one of them writes.
//   - drain() waits for every request submitted so far (including ones submitted by
//     completion finalizers meanwhile); destroying an engine drains it first.
//
// Thread-safety: every IoEngine member may be called from any thread, and submit() may be
// called from inside a completion finalizer. drain() must not be called from a finalizer
// (it would wait for itself). IoCompletion is safe to wait on from several threads.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/profile.h"
#include "strata/status.h"

namespace strata::nvme {

enum class IoOp : std::uint8_t { kRead, kWrite };
std::string_view io_op_name(IoOp op);

// The completion of one request or of a group of requests submitted in the same batch.
// It finishes when all of its operations have finished; its status is the first failure,
// or a short-transfer error when fewer bytes moved than were requested, or OK.
class IoCompletion {
 public:
  // Runs exactly once, on the thread that finishes the last operation, before waiters wake.
  // It receives the operations' status and returns the completion's final status, so a
  // caller can verify what was read (checksums) or chain more work (submit again).
  using Finalizer = std::function<Status(Status)>;

  IoCompletion() = default;
  explicit IoCompletion(Finalizer finalizer) : finalizer_(std::move(finalizer)) {}
  IoCompletion(const IoCompletion&) = delete;
  IoCompletion& operator=(const IoCompletion&) = delete;

  static std::shared_ptr<IoCompletion> make(Finalizer finalizer = {}) {
    return std::make_shared<IoCompletion>(std::move(finalizer));
  }

  // Blocks until finished; returns the final status.
  // REQUIRES: the completion has been armed by a submit (else it returns failed_precondition
  // instead of blocking forever).
  Status wait() const;
  bool done() const;
  std::uint64_t bytes_transferred() const;
  std::uint64_t bytes_expected() const;

  // --- for engines ---
  // Announces `ops` more operations moving `bytes` in total. Every operation of a batch is
  // armed before any is started, so a completion shared by several requests cannot finish
  // early. Fails when the completion has already finished (completions are single-use).
  Status arm(std::uint64_t ops, std::uint64_t bytes);
  // One operation finished with `status` after moving `bytes`.
  void finish(const Status& status, std::uint64_t bytes);

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::uint64_t pending_ = 0;
  std::uint64_t expected_ = 0;
  std::uint64_t transferred_ = 0;
  bool armed_ = false;
  bool finishing_ = false;
  bool done_ = false;
  Status first_error_;
  Status final_;
  Finalizer finalizer_;
};

// One asynchronous read or write. The engine does not own `fd` or the buffer: both must stay
// valid until the completion finishes.
struct IoRequest {
  IoOp op = IoOp::kRead;
  int fd = -1;
  std::uint64_t offset = 0;
  std::byte* data = nullptr;  // read: destination; write: source (never modified)
  std::uint64_t length = 0;
  std::shared_ptr<IoCompletion> completion;  // required

  static IoRequest read(int fd, std::uint64_t offset, std::span<std::byte> into,
                        std::shared_ptr<IoCompletion> completion) {
    return IoRequest{IoOp::kRead, fd, offset, into.data(), into.size(), std::move(completion)};
  }
  static IoRequest write(int fd, std::uint64_t offset, std::span<const std::byte> from,
                         std::shared_ptr<IoCompletion> completion) {
    // The engine only reads from a write's buffer; the pointer is non-const because the
    // same field serves reads.
    return IoRequest{IoOp::kWrite, fd, offset, const_cast<std::byte*>(from.data()), from.size(),
                     std::move(completion)};
  }
};

// What a backend supports, so callers do not have to guess.
struct IoCapabilities {
  bool asynchronous = true;        // submit() returns before the transfer happens
  bool buffered_async = true;      // stays asynchronous without O_DIRECT (libaio does not)
  bool direct_io = true;           // works on O_DIRECT descriptors
  bool registered_buffers = false; // can use buffers registered with register_buffers()
  bool sqpoll = false;             // kernel-side submission polling is active
  int max_queue_depth = 0;         // pieces in flight per I/O thread
  int threads = 0;                 // I/O threads (rings, contexts or pool lanes)
};

struct IoStats {
  std::uint64_t reads = 0;              // requests
  std::uint64_t writes = 0;
  std::uint64_t bytes_read = 0;
  std::uint64_t bytes_written = 0;
  std::uint64_t pieces = 0;             // block_size pieces submitted to the OS
  std::uint64_t short_transfers = 0;    // resubmitted after moving part of a piece
  std::uint64_t retries = 0;            // EAGAIN / EINTR resubmissions
  std::uint64_t fixed_buffer_pieces = 0;// pieces that used a registered buffer
  std::uint64_t failed = 0;             // pieces that ended in an error
  // Queue occupancy (io_uring and libaio rings): the most pieces one ring ever had in flight
  // (never above queue_depth), and the pieces submitted while others of the same ring were
  // still in flight, i.e. the queue topped up as completions arrived rather than in waves.
  std::uint64_t max_in_flight = 0;
  std::uint64_t topped_up = 0;
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;

  // Registry name: "io_uring", "libaio", "posix" (or "faulty(<inner>)").
  virtual std::string_view name() const = 0;
  virtual IoCapabilities capabilities() const = 0;
  virtual const NvmeConfig& config() const = 0;

  // Queues a batch. On error nothing of the batch was queued and the Status says which
  // request was wrong; completions are left unarmed, except when a completion that already
  // finished is reused (a caller bug), in which case the batch's other completions fail too.
  // Requests of one batch may share a completion; requests of different batches may not.
  // With config().direct, offsets, lengths and buffer addresses must be multiples of 512
  // (the smallest logical block size); the file system may demand more.
  virtual Status submit(std::span<const IoRequest> requests) = 0;
  Status submit(const IoRequest& request) { return submit(std::span<const IoRequest>(&request, 1)); }

  // Waits until everything submitted so far has finished. Returns OK, or an error that
  // counts the failed operations since the previous drain and quotes the first one (each
  // failure was also delivered to its own completion).
  virtual Status drain() = 0;

  // Registers long-lived buffers (the pinned pool) once, so pieces that fall inside them use
  // fixed-buffer operations. Replaces any previous registration. Backends without the
  // capability accept and ignore the call.
  // REQUIRES: no request in flight; the buffers outlive the engine or the next registration.
  virtual Status register_buffers(std::span<const std::span<std::byte>> buffers) = 0;

  virtual IoStats stats() const = 0;
};

// Names the registry knows, in the order they are documented.
std::vector<std::string> io_engine_names();

// Checks an [nvme] section without creating anything (ranges, block size alignment).
Status validate_nvme_config(const NvmeConfig& config);

// Creates the engine named by config.engine. An unknown name is an error listing the known
// ones; a backend the kernel refuses (io_uring disabled, AIO limits) is an error naming the
// cause and the alternative engines. There is no silent fallback.
Result<std::unique_ptr<IoEngine>> make_io_engine(const NvmeConfig& config);

}  // namespace strata::nvme
