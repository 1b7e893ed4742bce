#include "nvme/uring_engine.h"

#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "nvme/queued_engine.h"
#include "strata/log.h"
#include "strata/units.h"

namespace strata::nvme {
namespace {

// A registered buffer: pieces that lie entirely inside [begin, end) use fixed operations.
struct FixedRegion {
  const std::byte* begin;
  const std::byte* end;
  int index;
};
using FixedTable = std::vector<FixedRegion>;  // sorted by begin

int find_fixed(const FixedTable& table, const std::byte* p, std::uint64_t len) {
  auto it = std::upper_bound(table.begin(), table.end(), p,
                             [](const std::byte* x, const FixedRegion& r) { return x < r.begin; });
  if (it == table.begin()) return -1;
  --it;
  if (p >= it->begin && p + len <= it->end) return it->index;
  return -1;
}

Status uring_unavailable(int err, std::string_view what) {
  return STRATA_ERRNO(err, std::string(what), "")
      .with_context("io_uring is not available on this system; set engine = \"libaio\" or engine = \"posix\" in [nvme]");
}

class UringEngine final : public QueuedEngine {
 public:
  explicit UringEngine(const NvmeConfig& config) : QueuedEngine(config, config.threads) {}

  ~UringEngine() override {
    shutdown();
    for (auto& r : rings_) {
      if (r->thread.joinable()) r->thread.join();
    }
    for (auto& r : rings_) {
      if (r->initialised) io_uring_queue_exit(&r->ring);
      if (r->efd >= 0) ::close(r->efd);
    }
  }

  Status init() {
    const NvmeConfig& c = config();
    for (int i = 0; i < c.threads; ++i) {
      auto r = std::make_unique<Ring>();
      r->index = i;
      r->efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (r->efd < 0) return STRATA_ERRNO(errno, "eventfd for io_uring ring " + std::to_string(i), "");
      r->records.resize(static_cast<std::size_t>(c.queue_depth));
      r->staging.resize(static_cast<std::size_t>(c.queue_depth));
      for (int k = c.queue_depth - 1; k >= 0; --k) r->free.push_back(&r->records[static_cast<std::size_t>(k)]);
      rings_.push_back(std::move(r));
    }
    // Each ring is created by its own I/O thread: with IORING_SETUP_SINGLE_ISSUER only the
    // creating task may submit to (and register with) it.
    std::vector<std::future<Status>> ready;
    for (auto& r : rings_) {
      Ring* ring = r.get();
      auto started = std::make_shared<std::promise<Status>>();
      ready.push_back(started->get_future());
      ring->thread = std::thread([this, ring, started] {
        Status s = setup_ring(*ring);
        started->set_value(s);
        if (s.ok()) run(*ring);
        std::lock_guard<std::mutex> lock(ring->command_mu);
        ring->exited = true;
        if (ring->has_command) {  // posted just before the exit: answer it rather than hang
          ring->has_command = false;
          ring->command();
        }
      });
    }
    Status result;
    for (auto& f : ready) {
      Status s = f.get();
      if (!s.ok() && result.ok()) result = s;
    }
    return result;
  }

  std::string_view name() const override { return "io_uring"; }

  IoCapabilities capabilities() const override {
    IoCapabilities caps;
    caps.asynchronous = true;
    caps.buffered_async = true;
    caps.direct_io = true;
    caps.registered_buffers = config().registered_buffers;
    caps.sqpoll = config().sqpoll;
    caps.max_queue_depth = config().queue_depth;
    caps.threads = config().threads;
    return caps;
  }

  Status register_buffers(std::span<const std::span<std::byte>> buffers) override {
    if (!config().registered_buffers) return Status::OK();
    if (busy()) return failed_precondition("register_buffers while I/O is in flight; drain() first");
    std::vector<iovec> iov;
    auto table = std::make_shared<FixedTable>();
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      if (buffers[i].empty()) return invalid_argument("register_buffers: buffer " + std::to_string(i) + " is empty");
      iov.push_back(iovec{buffers[i].data(), buffers[i].size()});
      table->push_back(FixedRegion{buffers[i].data(), buffers[i].data() + buffers[i].size(), static_cast<int>(i)});
      total += buffers[i].size();
    }
    std::sort(table->begin(), table->end(), [](const FixedRegion& a, const FixedRegion& b) { return a.begin < b.begin; });
    std::lock_guard<std::mutex> lock(fixed_mu_);
    const bool had = registered_;
    Status st = on_every_ring([&](Ring& r) -> Status {
      if (had) io_uring_unregister_buffers(&r.ring);
      if (iov.empty()) return Status::OK();
      int ret = io_uring_register_buffers(&r.ring, iov.data(), static_cast<unsigned>(iov.size()));
      if (ret == 0) return Status::OK();
      Status s = STRATA_ERRNO(-ret, "io_uring_register_buffers(" + std::to_string(iov.size()) + " buffers, " +
                                        format_bytes_human(static_cast<double>(total)) + ")",
                              "");
      return s.with_context(ret == -ENOMEM
                                ? "registering buffers needs locked memory: raise RLIMIT_MEMLOCK (ulimit -l) or set registered_buffers = false in [nvme]"
                                : "set registered_buffers = false in [nvme] if the kernel refuses fixed buffers");
    });
    registered_ = false;
    fixed_ = std::make_shared<FixedTable>();
    if (!st.ok()) {
      on_every_ring([](Ring& r) -> Status {
        io_uring_unregister_buffers(&r.ring);
        return Status::OK();
      }).ignore();
      return st;
    }
    if (iov.empty()) return Status::OK();
    registered_ = true;
    fixed_ = std::move(table);
    return Status::OK();
  }

 private:
  struct Ring {
    int index = 0;
    io_uring ring{};
    bool initialised = false;
    int efd = -1;
    std::vector<IoPiece> records;   // one record per in-flight submission
    std::vector<IoPiece*> free;
    std::vector<IoPiece> staging;   // pieces handed over by take_pieces
    int inflight = 0;
    std::thread thread;
    std::mutex command_mu;
    bool has_command = false;                 // guarded by command_mu
    bool exited = false;                      // guarded by command_mu: the thread left run()
    std::packaged_task<Status()> command;     // guarded by command_mu
  };

  // Creates the ring on the calling (I/O) thread. The flags follow fio's io_uring engine:
  // COOP_TASKRUN (no IPI per completion), SINGLE_ISSUER and DEFER_TASKRUN (completion work
  // runs only when this thread waits for it, so it is woken once per batch rather than
  // interrupted per request). Kernels without them get the plain ring; SQPOLL excludes
  // DEFER_TASKRUN.
  Status setup_ring(Ring& r) {
    const NvmeConfig& c = config();
    const unsigned entries = static_cast<unsigned>(c.queue_depth) + 1;  // + the wake-up poll
    std::vector<unsigned> attempts;
    if (c.sqpoll) {
      attempts = {IORING_SETUP_SQPOLL | IORING_SETUP_COOP_TASKRUN, IORING_SETUP_SQPOLL};
    } else {
      attempts = {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                  IORING_SETUP_COOP_TASKRUN, 0};
    }
    int ret = -EINVAL;
    for (std::size_t k = 0; k < attempts.size(); ++k) {
      io_uring_params params{};
      params.flags = attempts[k];
      if (c.sqpoll) params.sq_thread_idle = 50;  // ms of idleness before the kernel thread sleeps
      ret = io_uring_queue_init_params(entries, &r.ring, &params);
      if (ret != -EINVAL) {
        if (ret == 0 && k > 0) {
          STRATA_LOG_ONCE(kInfo, "uring-setup-flags")
              << "nvme: this kernel refused io_uring setup flags 0x" << std::hex << attempts[0]
              << "; rings run with flags 0x" << attempts[k] << std::dec
              << " (more wake-ups per completion, same results)";
        }
        break;
      }
    }
    if (ret < 0) {
      if (c.sqpoll && (ret == -EPERM || ret == -EINVAL)) {
        return STRATA_ERRNO(-ret, "io_uring_queue_init with SQPOLL", "")
            .with_context("the kernel refused io_uring SQPOLL; set sqpoll = false in [nvme]");
      }
      if (ret == -ENOMEM) {
        return STRATA_ERRNO(-ret, "io_uring_queue_init(" + std::to_string(entries) + " entries)", "")
            .with_context("io_uring could not allocate its rings; lower nvme.queue_depth or raise RLIMIT_MEMLOCK");
      }
      return uring_unavailable(-ret, "io_uring_queue_init");
    }
    r.initialised = true;
    return Status::OK();
  }

  // Runs `fn` on every ring's own I/O thread (registration must come from the issuer) and
  // returns the first failure.
  Status on_every_ring(const std::function<Status(Ring&)>& fn) {
    Status result;
    for (auto& r : rings_) {
      std::future<Status> done;
      {
        std::lock_guard<std::mutex> lock(r->command_mu);
        if (r->exited) {
          if (result.ok()) result = io_error("io_uring ring " + std::to_string(r->index) + " has stopped after an error");
          continue;
        }
        r->command = std::packaged_task<Status()>([&fn, ring = r.get()] { return fn(*ring); });
        done = r->command.get_future();
        r->has_command = true;
      }
      wake_worker(r->index);
      Status s = done.get();
      if (!s.ok() && result.ok()) result = s;
    }
    return result;
  }

  void run_command(Ring& r) {
    std::packaged_task<Status()> task;
    {
      std::lock_guard<std::mutex> lock(r.command_mu);
      if (!r.has_command) return;
      task = std::move(r.command);
      r.has_command = false;
    }
    task();
  }

  void wake_worker(int worker) override {
    if (static_cast<std::size_t>(worker) >= rings_.size()) return;  // init() failed part-way
    std::uint64_t one = 1;
    // A failed write can only mean the counter is saturated, which already wakes the ring.
    [[maybe_unused]] ssize_t n = ::write(rings_[static_cast<std::size_t>(worker)]->efd, &one, sizeof one);
  }

  io_uring_sqe* get_sqe(Ring& r) {
    for (;;) {
      io_uring_sqe* sqe = io_uring_get_sqe(&r.ring);
      if (sqe != nullptr) return sqe;
      // The SQ ring is full of prepared entries: hand them to the kernel and try again.
      int ret = config().sqpoll ? io_uring_sqring_wait(&r.ring) : io_uring_submit(&r.ring);
      if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) return nullptr;
    }
  }

  void arm_wakeup(Ring& r) {
    io_uring_sqe* sqe = get_sqe(r);
    if (sqe == nullptr) return;  // the ring is broken; run() notices on the next submit
    io_uring_prep_poll_add(sqe, r.efd, POLLIN);
    io_uring_sqe_set_data(sqe, &r.efd);
  }

  // Prepares the outstanding part of a record. Returns false if no SQE could be had.
  bool prep(Ring& r, IoPiece* p) {
    io_uring_sqe* sqe = get_sqe(r);
    if (sqe == nullptr) return false;
    auto len = static_cast<unsigned>(p->remaining());
    if (p->op == IoOp::kRead) {
      if (p->fixed_index >= 0) {
        io_uring_prep_read_fixed(sqe, p->fd, p->next_data(), len, p->next_offset(), p->fixed_index);
      } else {
        io_uring_prep_read(sqe, p->fd, p->next_data(), len, p->next_offset());
      }
    } else {
      if (p->fixed_index >= 0) {
        io_uring_prep_write_fixed(sqe, p->fd, p->next_data(), len, p->next_offset(), p->fixed_index);
      } else {
        io_uring_prep_write(sqe, p->fd, p->next_data(), len, p->next_offset());
      }
    }
    io_uring_sqe_set_data(sqe, p);
    return true;
  }

  void release(Ring& r, IoPiece* p) {
    r.free.push_back(p);
    --r.inflight;
  }

  void finish_record(Ring& r, IoPiece* p, const Status& s) {
    complete_piece(*p, s);
    release(r, p);
  }

  void refill(Ring& r) {
    auto room = static_cast<std::size_t>(config().queue_depth - r.inflight);
    if (room == 0) return;
    std::size_t n = take_pieces(r.index, room, r.staging.data());
    if (n == 0) return;
    note_refill(r.inflight, n);
    std::shared_ptr<const FixedTable> fixed;
    {
      std::lock_guard<std::mutex> lock(fixed_mu_);
      fixed = fixed_;
    }
    for (std::size_t i = 0; i < n; ++i) {
      IoPiece* p = r.free.back();
      r.free.pop_back();
      ++r.inflight;
      *p = std::move(r.staging[i]);
      if (fixed != nullptr && !fixed->empty()) {
        p->fixed_index = find_fixed(*fixed, p->data, p->length);
        if (p->fixed_index >= 0) count_fixed_buffer();
      }
      if (!prep(r, p)) finish_record(r, p, io_error("io_uring: no submission queue entry available (ring broken)"));
    }
  }

  void handle(Ring& r, io_uring_cqe* cqe) {
    void* data = io_uring_cqe_get_data(cqe);
    if (data == &r.efd) {
      std::uint64_t v;
      while (::read(r.efd, &v, sizeof v) > 0) {
      }
      arm_wakeup(r);
      return;
    }
    auto* p = static_cast<IoPiece*>(data);
    Status err;
    switch (advance_piece(*p, cqe->res, &err)) {
      case PieceStep::kComplete:
        finish_record(r, p, Status::OK());
        return;
      case PieceStep::kResubmitShort:
        count_short_transfer();
        break;
      case PieceStep::kResubmitRetry:
        count_retry();
        break;
      case PieceStep::kFailed:
        finish_record(r, p, err);
        return;
    }
    if (!prep(r, p)) finish_record(r, p, io_error("io_uring: no submission queue entry available (ring broken)"));
  }

  void run(Ring& r) {
    arm_wakeup(r);
    int failures = 0;
    for (;;) {
      run_command(r);
      refill(r);
      if (stopping() && r.inflight == 0) break;
      int ret = io_uring_submit_and_wait(&r.ring, 1);
      if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME) {
        Status s = STRATA_ERRNO(-ret, "io_uring_submit_and_wait on ring " + std::to_string(r.index), "");
        if (failures == 0) {
          STRATA_LOG(kError) << s;
        }
        fail_engine(s);
        if (++failures > 100) {
          // The ring is unusable: fail what is still recorded and stop this thread. The
          // destructor's io_uring_queue_exit cancels anything the kernel still holds.
          for (IoPiece& rec : r.records) {
            if (rec.completion != nullptr) complete_piece(rec, s);
          }
          return;
        }
      }
      unsigned head;
      unsigned count = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&r.ring, head, cqe) {
        handle(r, cqe);
        ++count;
      }
      io_uring_cq_advance(&r.ring, count);
    }
  }

  std::vector<std::unique_ptr<Ring>> rings_;
  std::mutex fixed_mu_;
  std::shared_ptr<const FixedTable> fixed_;  // guarded by fixed_mu_
  bool registered_ = false;                  // guarded by fixed_mu_
};

}  // namespace

Result<std::unique_ptr<IoEngine>> make_uring_engine(const NvmeConfig& config) {
  auto engine = std::make_unique<UringEngine>(config);
  STRATA_RETURN_IF_ERROR(engine->init());
  return std::unique_ptr<IoEngine>(std::move(engine));
}

}  // namespace strata::nvme
