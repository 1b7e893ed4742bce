#include "nvme/posix_engine.h"

#include <unistd.h>

#include <cerrno>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "nvme/queued_engine.h"

namespace strata::nvme {
namespace {

class PosixEngine final : public QueuedEngine {
 public:
  explicit PosixEngine(const NvmeConfig& config)
      : QueuedEngine(config, config.threads * config.queue_depth),
        lanes_(static_cast<std::size_t>(config.threads * config.queue_depth)) {}

  ~PosixEngine() override {
    shutdown();
    for (Lane& l : lanes_) {
      if (l.thread.joinable()) l.thread.join();
    }
  }

  Status init() {
    for (std::size_t i = 0; i < lanes_.size(); ++i) {
      try {
        lanes_[i].thread = std::thread([this, i] { run(static_cast<int>(i)); });
      } catch (const std::system_error& e) {
        return unavailable("posix I/O engine: could not start thread " + std::to_string(i) + " of " +
                           std::to_string(lanes_.size()) + " (" + e.what() +
                           "); lower nvme.threads or nvme.queue_depth");
      }
    }
    return Status::OK();
  }

  std::string_view name() const override { return "posix"; }

  IoCapabilities capabilities() const override {
    IoCapabilities caps;
    caps.asynchronous = true;
    caps.buffered_async = true;
    caps.direct_io = true;
    caps.registered_buffers = false;
    caps.sqpoll = false;
    caps.max_queue_depth = config().queue_depth;
    caps.threads = config().threads;
    return caps;
  }

  Status register_buffers(std::span<const std::span<std::byte>>) override { return Status::OK(); }

 private:
  struct Lane {
    std::counting_semaphore<> wake{0};
    std::thread thread;
  };

  void wake_worker(int worker) override { lanes_[static_cast<std::size_t>(worker)].wake.release(); }

  void transfer(IoPiece& p) {
    for (;;) {
      ssize_t n = p.op == IoOp::kRead
                      ? ::pread(p.fd, p.next_data(), p.remaining(), static_cast<off_t>(p.next_offset()))
                      : ::pwrite(p.fd, p.next_data(), p.remaining(), static_cast<off_t>(p.next_offset()));
      std::int64_t result = n >= 0 ? static_cast<std::int64_t>(n) : -static_cast<std::int64_t>(errno);
      Status err;
      switch (advance_piece(p, result, &err)) {
        case PieceStep::kComplete:
          complete_piece(p, Status::OK());
          return;
        case PieceStep::kResubmitShort:
          count_short_transfer();
          break;
        case PieceStep::kResubmitRetry:
          count_retry();
          break;
        case PieceStep::kFailed:
          complete_piece(p, err);
          return;
      }
    }
  }

  void run(int index) {
    Lane& lane = lanes_[static_cast<std::size_t>(index)];
    IoPiece piece;
    for (;;) {
      if (take_pieces(index, 1, &piece) == 1) {
        transfer(piece);
        continue;
      }
      if (stopping()) return;
      lane.wake.acquire();
    }
  }

  std::vector<Lane> lanes_;
};

}  // namespace

Result<std::unique_ptr<IoEngine>> make_posix_engine(const NvmeConfig& config) {
  auto engine = std::make_unique<PosixEngine>(config);
  STRATA_RETURN_IF_ERROR(engine->init());
  return std::unique_ptr<IoEngine>(std::move(engine));
}

}  // namespace strata::nvme
