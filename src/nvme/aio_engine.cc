#include "nvme/aio_engine.h"

#include <libaio.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "nvme/queued_engine.h"
#include "strata/log.h"

namespace strata::nvme {
namespace {

class AioEngine final : public QueuedEngine {
 public:
  explicit AioEngine(const NvmeConfig& config) : QueuedEngine(config, config.threads) {}

  ~AioEngine() override {
    shutdown();
    for (auto& c : contexts_) {
      if (c->thread.joinable()) c->thread.join();
    }
    for (auto& c : contexts_) {
      if (c->ctx_ready) io_destroy(c->ctx);
      if (c->efd >= 0) ::close(c->efd);
    }
  }

  Status init() {
    const NvmeConfig& c = config();
    if (!c.direct) {
      STRATA_LOG_ONCE(kWarn, "aio-buffered")
          << "nvme: libaio with direct = false performs each transfer inside io_submit (Linux AIO is only "
             "asynchronous with O_DIRECT); use engine = \"io_uring\" or \"posix\" for buffered I/O";
    }
    for (int i = 0; i < c.threads; ++i) {
      auto x = std::make_unique<Context>();
      x->index = i;
      x->efd = ::eventfd(0, EFD_CLOEXEC);
      if (x->efd < 0) return STRATA_ERRNO(errno, "eventfd for libaio context " + std::to_string(i), "");
      int ret = io_setup(c.queue_depth, &x->ctx);
      if (ret < 0) {
        Status s = STRATA_ERRNO(-ret, "io_setup(" + std::to_string(c.queue_depth) + ")", "");
        if (ret == -EAGAIN) {
          return s.with_context("the system-wide AIO limit /proc/sys/fs/aio-max-nr is exhausted; raise it, "
                                "lower nvme.queue_depth or nvme.threads, or set engine = \"io_uring\"");
        }
        return s.with_context("Linux AIO is not available; set engine = \"io_uring\" or engine = \"posix\" in [nvme]");
      }
      x->ctx_ready = true;
      x->records.resize(static_cast<std::size_t>(c.queue_depth));
      x->staging.resize(static_cast<std::size_t>(c.queue_depth));
      x->events.resize(static_cast<std::size_t>(c.queue_depth));
      for (int k = c.queue_depth - 1; k >= 0; --k) x->free.push_back(&x->records[static_cast<std::size_t>(k)]);
      contexts_.push_back(std::move(x));
    }
    for (auto& x : contexts_) {
      Context* ctx = x.get();
      ctx->thread = std::thread([this, ctx] { run(*ctx); });
    }
    return Status::OK();
  }

  std::string_view name() const override { return "libaio"; }

  IoCapabilities capabilities() const override {
    IoCapabilities caps;
    caps.asynchronous = true;
    caps.buffered_async = false;
    caps.direct_io = true;
    caps.registered_buffers = false;
    caps.sqpoll = false;
    caps.max_queue_depth = config().queue_depth;
    caps.threads = config().threads;
    return caps;
  }

  // Linux AIO has no registered buffers; the registration is accepted and has no effect.
  Status register_buffers(std::span<const std::span<std::byte>>) override { return Status::OK(); }

 private:
  struct Record {
    iocb cb{};
    IoPiece piece;
  };
  struct Context {
    int index = 0;
    io_context_t ctx{};
    bool ctx_ready = false;
    int efd = -1;
    std::vector<Record> records;
    std::vector<Record*> free;
    std::vector<IoPiece> staging;
    std::vector<io_event> events;
    std::vector<iocb*> to_submit;   // prepared, not yet accepted by io_submit
    int inflight = 0;               // records in use
    int in_kernel = 0;              // accepted by io_submit, not yet reaped
    std::thread thread;
  };

  void wake_worker(int worker) override {
    if (static_cast<std::size_t>(worker) >= contexts_.size()) return;
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(contexts_[static_cast<std::size_t>(worker)]->efd, &one, sizeof one);
  }

  void prep(Context& x, Record* r) {
    IoPiece& p = r->piece;
    if (p.op == IoOp::kRead) {
      io_prep_pread(&r->cb, p.fd, p.next_data(), p.remaining(), static_cast<long long>(p.next_offset()));
    } else {
      io_prep_pwrite(&r->cb, p.fd, p.next_data(), p.remaining(), static_cast<long long>(p.next_offset()));
    }
    io_set_eventfd(&r->cb, x.efd);
    r->cb.data = r;
    x.to_submit.push_back(&r->cb);
  }

  void finish_record(Context& x, Record* r, const Status& s) {
    complete_piece(r->piece, s);
    x.free.push_back(r);
    --x.inflight;
  }

  void refill(Context& x) {
    auto room = static_cast<std::size_t>(config().queue_depth - x.inflight);
    if (room == 0) return;
    std::size_t n = take_pieces(x.index, room, x.staging.data());
    note_refill(x.inflight, n);
    for (std::size_t i = 0; i < n; ++i) {
      Record* r = x.free.back();
      x.free.pop_back();
      ++x.inflight;
      r->piece = std::move(x.staging[i]);
      prep(x, r);
    }
  }

  void submit_prepared(Context& x) {
    while (!x.to_submit.empty()) {
      int ret = io_submit(x.ctx, static_cast<long>(x.to_submit.size()), x.to_submit.data());
      if (ret > 0) {
        x.in_kernel += ret;
        x.to_submit.erase(x.to_submit.begin(), x.to_submit.begin() + ret);
        continue;
      }
      Record* first = static_cast<Record*>(x.to_submit.front()->data);
      if (ret == -EAGAIN || ret == -EINTR || ret == 0) {
        // Kernel resources are busy: retry once completions have been reaped (bounded).
        Status err;
        if (advance_piece(first->piece, -EAGAIN, &err) == PieceStep::kFailed) {
          x.to_submit.erase(x.to_submit.begin());
          finish_record(x, first, err);
          continue;
        }
        count_retry();
        return;
      }
      // io_submit rejected the first iocb; fail it and carry on with the rest.
      x.to_submit.erase(x.to_submit.begin());
      finish_record(x, first, piece_error(first->piece, -ret));
    }
  }

  void handle(Context& x, const io_event& ev) {
    auto* r = static_cast<Record*>(ev.data);
    --x.in_kernel;
    auto res = static_cast<long>(ev.res);
    Status err;
    switch (advance_piece(r->piece, res, &err)) {
      case PieceStep::kComplete:
        finish_record(x, r, Status::OK());
        return;
      case PieceStep::kResubmitShort:
        count_short_transfer();
        break;
      case PieceStep::kResubmitRetry:
        count_retry();
        break;
      case PieceStep::kFailed:
        finish_record(x, r, err);
        return;
    }
    prep(x, r);
  }

  void reap(Context& x) {
    for (;;) {
      timespec zero{0, 0};
      int n = io_getevents(x.ctx, 0, static_cast<long>(x.events.size()), x.events.data(), &zero);
      if (n == -EINTR) continue;
      if (n <= 0) return;
      for (int i = 0; i < n; ++i) handle(x, x.events[static_cast<std::size_t>(i)]);
    }
  }

  void run(Context& x) {
    for (;;) {
      refill(x);
      submit_prepared(x);
      if (stopping() && x.inflight == 0) break;
      if (x.in_kernel == 0 && !x.to_submit.empty()) {
        // io_submit asked us to come back later and nothing is in flight to wake us.
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        continue;
      }
      // Completions (io_set_eventfd) and new work (wake_worker) both bump the eventfd.
      std::uint64_t v;
      ssize_t n = ::read(x.efd, &v, sizeof v);
      if (n < 0 && errno != EINTR) {
        Status s = STRATA_ERRNO(errno, "read of the libaio eventfd", "");
        STRATA_LOG(kError) << s;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      reap(x);
    }
  }

  std::vector<std::unique_ptr<Context>> contexts_;
};

}  // namespace

Result<std::unique_ptr<IoEngine>> make_aio_engine(const NvmeConfig& config) {
  auto engine = std::make_unique<AioEngine>(config);
  STRATA_RETURN_IF_ERROR(engine->init());
  return std::unique_ptr<IoEngine>(std::move(engine));
}

}  // namespace strata::nvme
