#include "nvme/queued_engine.h"

#include <algorithm>
#include <string>

namespace strata::nvme {

namespace {

std::uint64_t ceil_div(std::uint64_t a, std::uint64_t b) { return (a + b - 1) / b; }

Status check_request(const IoRequest& r, std::size_t index, const NvmeConfig& config) {
  auto where = [&] { return "request " + std::to_string(index) + " (" + std::string(io_op_name(r.op)) + ")"; };
  if (r.completion == nullptr) return invalid_argument(where() + " has no completion");
  if (r.completion->done()) {
    return failed_precondition(where() + " reuses a completion that already finished; completions are single-use");
  }
  if (r.fd < 0) return invalid_argument(where() + " has no file descriptor");
  if (r.length == 0) return invalid_argument(where() + " has length 0");
  if (r.data == nullptr) return invalid_argument(where() + " has no buffer");
  if (r.offset > static_cast<std::uint64_t>(INT64_MAX) - r.length) {
    return invalid_argument(where() + " ends beyond the largest file offset");
  }
  if (config.direct) {
    constexpr std::uint64_t kMinAlign = 512;
    auto addr = reinterpret_cast<std::uintptr_t>(r.data);
    if (r.offset % kMinAlign != 0 || r.length % kMinAlign != 0 || addr % kMinAlign != 0) {
      return invalid_argument(where() + " at offset " + std::to_string(r.offset) + " with length " +
                              std::to_string(r.length) +
                              " is not aligned for O_DIRECT: offset, length and buffer address must be "
                              "multiples of the logical block size (at least 512)");
    }
  }
  return Status::OK();
}

}  // namespace

QueuedEngine::QueuedEngine(NvmeConfig config, int workers)
    : config_(std::move(config)), idle_(static_cast<std::size_t>(workers), 0) {}

Status QueuedEngine::submit(std::span<const IoRequest> requests) {
  const std::uint64_t bs = config_.block_size;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    STRATA_RETURN_IF_ERROR(check_request(requests[i], i, config_));
  }
  std::vector<int> to_wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return failed_precondition("submit to an I/O engine that is shutting down");
    if (!engine_failure_.ok()) return engine_failure_.with_context("submit to a failed I/O engine");
    // Arm every completion before any piece can finish, so a completion shared by several
    // requests of the batch cannot finish early.
    for (std::size_t i = 0; i < requests.size(); ++i) {
      const IoRequest& r = requests[i];
      Status armed = r.completion->arm(ceil_div(r.length, bs), r.length);
      if (!armed.ok()) {
        // Requests armed before this one belong to completions the caller gets back as
        // errors; undo them by failing what was armed.
        for (std::size_t j = 0; j < i; ++j) {
          const IoRequest& u = requests[j];
          Status undo = failed_precondition("batch rejected: " + armed.message());
          for (std::uint64_t k = 0; k < ceil_div(u.length, bs); ++k) u.completion->finish(undo, 0);
        }
        return armed.with_context("request " + std::to_string(i));
      }
    }
    std::uint64_t added = 0;
    for (const IoRequest& r : requests) {
      queue_.push_back(Pending{r, 0});
      added += ceil_div(r.length, bs);
      if (r.op == IoOp::kRead) {
        reads_.fetch_add(1, std::memory_order_relaxed);
      } else {
        writes_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    outstanding_ += added;
    // Wake at most one idle I/O thread per new piece, starting where the last wake-up
    // stopped, so a single request does not stir every thread of a large pool.
    const std::size_t n = idle_.size();
    for (std::size_t k = 0; k < n && to_wake.size() < added; ++k) {
      std::size_t w = (next_wake_ + k) % n;
      if (idle_[w] != 0) {
        idle_[w] = 0;
        to_wake.push_back(static_cast<int>(w));
        next_wake_ = (w + 1) % n;
      }
    }
  }
  for (int w : to_wake) wake_worker(w);
  return Status::OK();
}

std::size_t QueuedEngine::take_pieces(int worker, std::size_t room, IoPiece* out) {
  const std::uint64_t bs = config_.block_size;
  std::size_t n = 0;
  std::lock_guard<std::mutex> lock(mu_);
  while (n < room && !queue_.empty()) {
    Pending& p = queue_.front();
    std::uint64_t len = std::min(bs, p.request.length - p.next);
    IoPiece& piece = out[n++];
    piece.op = p.request.op;
    piece.fd = p.request.fd;
    piece.offset = p.request.offset + p.next;
    piece.data = p.request.data + p.next;
    piece.length = len;
    piece.done = 0;
    piece.fixed_index = -1;
    piece.retries = 0;
    piece.completion = p.request.completion;
    p.next += len;
    if (p.next == p.request.length) queue_.pop_front();
  }
  idle_[static_cast<std::size_t>(worker)] = n < room ? 1 : 0;
  pieces_.fetch_add(n, std::memory_order_relaxed);
  return n;
}

void QueuedEngine::complete_piece(IoPiece& piece, const Status& status) {
  if (status.ok()) {
    if (piece.op == IoOp::kRead) {
      bytes_read_.fetch_add(piece.done, std::memory_order_relaxed);
    } else {
      bytes_written_.fetch_add(piece.done, std::memory_order_relaxed);
    }
  } else {
    failed_.fetch_add(1, std::memory_order_relaxed);
  }
  // Release the piece's reference before the finalizer's effects can observe it.
  std::shared_ptr<IoCompletion> completion = std::move(piece.completion);
  completion->finish(status, piece.done);
  completion.reset();
  std::lock_guard<std::mutex> lock(mu_);
  if (!status.ok()) {
    if (failures_since_drain_++ == 0) first_failure_since_drain_ = status;
  }
  if (--outstanding_ == 0) drained_cv_.notify_all();
}

Status QueuedEngine::drain() {
  std::unique_lock<std::mutex> lock(mu_);
  drained_cv_.wait(lock, [&] { return outstanding_ == 0; });
  if (failures_since_drain_ == 0) return Status::OK();
  Status first = first_failure_since_drain_;
  std::uint64_t n = failures_since_drain_;
  failures_since_drain_ = 0;
  first_failure_since_drain_ = Status::OK();
  return first.with_context("drain: " + std::to_string(n) + " I/O operation(s) failed; the first");
}

IoStats QueuedEngine::stats() const {
  IoStats s;
  s.reads = reads_.load(std::memory_order_relaxed);
  s.writes = writes_.load(std::memory_order_relaxed);
  s.bytes_read = bytes_read_.load(std::memory_order_relaxed);
  s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  s.pieces = pieces_.load(std::memory_order_relaxed);
  s.short_transfers = short_transfers_.load(std::memory_order_relaxed);
  s.retries = retries_.load(std::memory_order_relaxed);
  s.fixed_buffer_pieces = fixed_pieces_.load(std::memory_order_relaxed);
  s.failed = failed_.load(std::memory_order_relaxed);
  s.max_in_flight = max_in_flight_.load(std::memory_order_relaxed);
  s.topped_up = topped_up_.load(std::memory_order_relaxed);
  return s;
}

bool QueuedEngine::busy() const {
  std::lock_guard<std::mutex> lock(mu_);
  return outstanding_ != 0;
}

void QueuedEngine::shutdown() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    closed_ = true;
    drained_cv_.wait(lock, [&] { return outstanding_ == 0; });
  }
  stopping_.store(true, std::memory_order_release);
  for (std::size_t w = 0; w < idle_.size(); ++w) wake_worker(static_cast<int>(w));
}

void QueuedEngine::fail_engine(const Status& status) {
  std::deque<Pending> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (engine_failure_.ok()) engine_failure_ = status;
    dropped.swap(queue_);
  }
  const std::uint64_t bs = config_.block_size;
  for (Pending& p : dropped) {
    while (p.next < p.request.length) {
      IoPiece piece;
      piece.op = p.request.op;
      piece.fd = p.request.fd;
      piece.offset = p.request.offset + p.next;
      piece.data = p.request.data + p.next;
      piece.length = std::min(bs, p.request.length - p.next);
      piece.completion = p.request.completion;
      p.next += piece.length;
      complete_piece(piece, status);
    }
  }
}

}  // namespace strata::nvme
