// src/nvme/faulty_engine.h — an IoEngine wrapper that injects faults, so tests can prove that
// every I/O failure surfaces as a Status and that no read silently returns wrong bytes.
//
// Rules match requests (as submitted to this wrapper) by kind and by their 1-based position
// among requests of that kind counted since the engine was created:
//   - fail: the request fails with the given errno (EIO, ENOSPC, ...). A failing write is
//     torn like on a real device: its first half (rounded down to 512 bytes) is written
//     before the failure is reported; a failing read transfers nothing.
//   - short: only the first `keep` bytes are transferred (rounded down to 512 bytes under
//     O_DIRECT) and the request is reported with that byte count but no error, as a broken
//     driver would; the completion turns it into a short-transfer error.
//   - delay: completion of every matching request is held back by the given time.
//   - pause: completions are held until resume_completions(), so a test can look at state
//     while operations are certainly in flight (the inner engine's thread waits meanwhile).
// A rule may be persistent (every matching request from the nth on), like a full disk.
//
// Thread-safety: as IoEngine; rules may be added while requests are in flight.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "nvme/io_engine.h"

namespace strata::nvme {

class FaultyEngine final : public IoEngine {
 public:
  explicit FaultyEngine(std::unique_ptr<IoEngine> inner);
  ~FaultyEngine() override;

  // `op` nullopt matches both reads and writes (counted together).
  void fail_nth(std::optional<IoOp> op, std::uint64_t nth, int err, bool persistent = false);
  void short_nth(std::optional<IoOp> op, std::uint64_t nth, std::uint64_t keep_bytes);
  void delay_all(std::optional<IoOp> op, std::chrono::microseconds delay);
  void clear_rules();
  void pause_completions();
  void resume_completions();

  std::uint64_t faults_injected() const;

  std::string_view name() const override { return name_; }
  IoCapabilities capabilities() const override { return inner_->capabilities(); }
  const NvmeConfig& config() const override { return inner_->config(); }
  Status submit(std::span<const IoRequest> requests) override;
  Status drain() override;
  Status register_buffers(std::span<const std::span<std::byte>> buffers) override {
    return inner_->register_buffers(buffers);
  }
  IoStats stats() const override { return inner_->stats(); }

 private:
  enum class Kind : std::uint8_t { kFail, kShort, kDelay };
  struct Rule {
    Kind kind;
    std::optional<IoOp> op;
    std::uint64_t nth;
    bool persistent;
    int err;
    std::uint64_t keep;
    std::chrono::microseconds delay;
  };
  struct Decision {
    const Rule* fault = nullptr;  // fail or short
    std::chrono::microseconds delay{0};
  };

  Decision decide(IoOp op);  // REQUIRES: mu_ held
  void record_injected(const Status& s);

  std::unique_ptr<IoEngine> inner_;
  std::string name_;
  mutable std::mutex mu_;
  std::vector<Rule> rules_;             // guarded by mu_
  std::uint64_t reads_seen_ = 0;        // guarded by mu_
  std::uint64_t writes_seen_ = 0;       // guarded by mu_
  std::uint64_t injected_ = 0;          // guarded by mu_
  std::uint64_t injected_since_drain_ = 0;  // guarded by mu_
  Status first_injected_;               // guarded by mu_
  bool paused_ = false;                 // guarded by mu_
  std::condition_variable resume_cv_;
};

}  // namespace strata::nvme
