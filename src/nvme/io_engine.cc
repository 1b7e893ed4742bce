#include "nvme/io_engine.h"

#include <algorithm>
#include <string>

#include "nvme/aio_engine.h"
#include "nvme/posix_engine.h"
#include "nvme/uring_engine.h"
#include "strata/units.h"

namespace strata::nvme {

std::string_view io_op_name(IoOp op) { return op == IoOp::kRead ? "read" : "write"; }

// ---------------------------------------------------------------------------------------
// IoCompletion

Status IoCompletion::wait() const {
  std::unique_lock<std::mutex> lock(mu_);
  if (!armed_) return failed_precondition("waiting on an I/O completion that no request was submitted with");
  cv_.wait(lock, [&] { return done_; });
  return final_;
}

bool IoCompletion::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_ || finishing_;
}

std::uint64_t IoCompletion::bytes_transferred() const {
  std::lock_guard<std::mutex> lock(mu_);
  return transferred_;
}

std::uint64_t IoCompletion::bytes_expected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return expected_;
}

Status IoCompletion::arm(std::uint64_t ops, std::uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (done_ || finishing_) {
    return failed_precondition("an I/O completion was reused after it finished; completions are single-use");
  }
  armed_ = true;
  pending_ += ops;
  expected_ += bytes;
  return Status::OK();
}

void IoCompletion::finish(const Status& status, std::uint64_t bytes) {
  Status result;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_ == 0) return;  // more finishes than arms: ignored rather than finishing twice
    transferred_ += bytes;
    if (!status.ok() && first_error_.ok()) first_error_ = status;
    if (--pending_ > 0) return;
    finishing_ = true;
    result = first_error_;
    if (result.ok() && transferred_ != expected_) {
      result = io_error("short transfer: " + std::to_string(transferred_) + " of " + std::to_string(expected_) +
                        " bytes moved without an error from the I/O engine");
    }
  }
  if (finalizer_) {
    result = finalizer_(std::move(result));
    finalizer_ = nullptr;  // drops whatever the finalizer captured, on this thread
  }
  std::lock_guard<std::mutex> lock(mu_);
  final_ = std::move(result);
  done_ = true;
  cv_.notify_all();
}

// ---------------------------------------------------------------------------------------
// Registry

namespace {

struct EngineEntry {
  const char* name;
  Result<std::unique_ptr<IoEngine>> (*make)(const NvmeConfig&);
};

constexpr EngineEntry kEngines[] = {
    {"io_uring", &make_uring_engine},
    {"libaio", &make_aio_engine},
    {"posix", &make_posix_engine},
};

std::string known_names() {
  std::string s;
  for (const EngineEntry& e : kEngines) {
    if (!s.empty()) s += ", ";
    s += "\"";
    s += e.name;
    s += "\"";
  }
  return s;
}

}  // namespace

std::vector<std::string> io_engine_names() {
  std::vector<std::string> names;
  for (const EngineEntry& e : kEngines) names.emplace_back(e.name);
  return names;
}

Status validate_nvme_config(const NvmeConfig& c) {
  bool known = std::any_of(std::begin(kEngines), std::end(kEngines),
                           [&](const EngineEntry& e) { return c.engine == e.name; });
  if (!known) {
    return invalid_argument("nvme.engine: unknown I/O engine \"" + c.engine + "\"; known engines: " + known_names());
  }
  // Honour or refuse: a feature the chosen backend does not have is an error, not ignored.
  if (c.sqpoll && c.engine != "io_uring") {
    return invalid_argument("nvme.sqpoll: sqpoll is an io_uring feature; nvme.engine is \"" + c.engine + "\"");
  }
  if (c.registered_buffers && c.engine != "io_uring") {
    return invalid_argument(
        "nvme.registered_buffers: registered buffers are an io_uring feature; set registered_buffers = false for "
        "engine \"" + c.engine + "\"");
  }
  constexpr std::uint64_t kMinBlock = 4 * KiB;
  constexpr std::uint64_t kMaxBlock = 1 * GiB;
  if (c.block_size < kMinBlock || c.block_size > kMaxBlock || c.block_size % kMinBlock != 0) {
    return invalid_argument("nvme.block_size: " + format_bytes(c.block_size) +
                            " is not a multiple of 4KiB between 4KiB and 1GiB");
  }
  constexpr int kMaxQueueDepth = 4096;
  if (c.queue_depth < 1 || c.queue_depth > kMaxQueueDepth) {
    return invalid_argument("nvme.queue_depth: " + std::to_string(c.queue_depth) + " is not between 1 and " +
                            std::to_string(kMaxQueueDepth));
  }
  constexpr int kMaxThreads = 64;
  if (c.threads < 1 || c.threads > kMaxThreads) {
    return invalid_argument("nvme.threads: " + std::to_string(c.threads) + " is not between 1 and " +
                            std::to_string(kMaxThreads));
  }
  return Status::OK();
}

Result<std::unique_ptr<IoEngine>> make_io_engine(const NvmeConfig& config) {
  STRATA_RETURN_IF_ERROR(validate_nvme_config(config));
  for (const EngineEntry& e : kEngines) {
    if (config.engine == e.name) return e.make(config);
  }
  return internal_error("engine \"" + config.engine + "\" passed validation but has no factory");
}

}  // namespace strata::nvme
