#include "nvme/faulty_engine.h"

#include <thread>

#include "nvme/io_piece.h"

namespace strata::nvme {
namespace {

constexpr std::uint64_t kSector = 512;

Status injected_error(const IoRequest& r, int err) {
  IoPiece p;
  p.op = r.op;
  p.fd = r.fd;
  p.offset = r.offset;
  p.data = r.data;
  p.length = r.length;
  return piece_error(p, err).with_context("injected fault");
}

}  // namespace

FaultyEngine::FaultyEngine(std::unique_ptr<IoEngine> inner)
    : inner_(std::move(inner)), name_("faulty(" + std::string(inner_->name()) + ")") {}

FaultyEngine::~FaultyEngine() { inner_->drain().ignore(); }

void FaultyEngine::fail_nth(std::optional<IoOp> op, std::uint64_t nth, int err, bool persistent) {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.push_back(Rule{Kind::kFail, op, nth, persistent, err, 0, {}});
}

void FaultyEngine::short_nth(std::optional<IoOp> op, std::uint64_t nth, std::uint64_t keep_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.push_back(Rule{Kind::kShort, op, nth, false, 0, keep_bytes, {}});
}

void FaultyEngine::delay_all(std::optional<IoOp> op, std::chrono::microseconds delay) {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.push_back(Rule{Kind::kDelay, op, 1, true, 0, 0, delay});
}

void FaultyEngine::clear_rules() {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.clear();
}

void FaultyEngine::pause_completions() {
  std::lock_guard<std::mutex> lock(mu_);
  paused_ = true;
}

void FaultyEngine::resume_completions() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    paused_ = false;
  }
  resume_cv_.notify_all();
}

std::uint64_t FaultyEngine::faults_injected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return injected_;
}

FaultyEngine::Decision FaultyEngine::decide(IoOp op) {
  std::uint64_t& seen = op == IoOp::kRead ? reads_seen_ : writes_seen_;
  ++seen;
  const std::uint64_t any = reads_seen_ + writes_seen_;
  Decision d;
  for (const Rule& rule : rules_) {
    if (rule.op.has_value() && *rule.op != op) continue;
    std::uint64_t n = rule.op.has_value() ? seen : any;
    bool hit = rule.persistent ? n >= rule.nth : n == rule.nth;
    if (!hit) continue;
    if (rule.kind == Kind::kDelay) {
      d.delay += rule.delay;
    } else if (d.fault == nullptr) {
      d.fault = &rule;
    }
  }
  return d;
}

void FaultyEngine::record_injected(const Status& s) {
  std::lock_guard<std::mutex> lock(mu_);
  ++injected_;
  if (injected_since_drain_++ == 0) first_injected_ = s;
}

Status FaultyEngine::submit(std::span<const IoRequest> requests) {
  struct Plan {
    Kind kind = Kind::kDelay;  // kDelay with zero delay = pass through
    bool faulty = false;
    int err = 0;
    std::uint64_t forward = 0;  // bytes handed to the inner engine
    std::chrono::microseconds delay{0};
  };
  const bool direct = inner_->config().direct;
  std::vector<Plan> plans(requests.size());
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (std::size_t i = 0; i < requests.size(); ++i) {
      const IoRequest& r = requests[i];
      if (r.completion == nullptr) return invalid_argument("request " + std::to_string(i) + " has no completion");
      if (r.completion->done()) {
        return failed_precondition("request " + std::to_string(i) + " reuses a completion that already finished");
      }
      Decision d = decide(r.op);
      Plan& p = plans[i];
      p.delay = d.delay;
      p.forward = r.length;
      if (d.fault != nullptr) {
        p.faulty = true;
        p.kind = d.fault->kind;
        p.err = d.fault->err;
        if (p.kind == Kind::kFail) {
          p.forward = r.op == IoOp::kWrite ? (r.length / 2) / kSector * kSector : 0;
        } else {
          std::uint64_t keep = std::min(d.fault->keep, r.length - 1);
          p.forward = direct ? keep / kSector * kSector : keep;
        }
      }
    }
  }
  // Arm every outer completion first (one operation per request) so none can finish early.
  for (std::size_t i = 0; i < requests.size(); ++i) {
    Status armed = requests[i].completion->arm(1, requests[i].length);
    if (!armed.ok()) return armed.with_context("request " + std::to_string(i));
  }
  std::vector<IoRequest> forwarded;
  std::vector<std::size_t> settle_now;  // requests that never reach the inner engine
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const IoRequest& r = requests[i];
    const Plan& p = plans[i];
    if (p.forward == 0) {
      settle_now.push_back(i);
      continue;
    }
    Status injected = p.faulty && p.kind == Kind::kFail ? injected_error(r, p.err) : Status::OK();
    bool is_short = p.faulty && p.kind == Kind::kShort;
    // The finalizer runs inside the inner completion's finish(); `self` lets it read how many
    // bytes the inner engine moved without the completion owning itself.
    auto self = std::make_shared<IoCompletion*>(nullptr);
    auto inner = IoCompletion::make(
        [this, outer = r.completion, injected, is_short, delay = p.delay, self](Status st) {
          {
            std::unique_lock<std::mutex> lock(mu_);
            resume_cv_.wait(lock, [&] { return !paused_; });
          }
          if (delay.count() > 0) std::this_thread::sleep_for(delay);
          std::uint64_t moved = (*self)->bytes_transferred();
          if (!injected.ok()) {
            record_injected(injected);
            outer->finish(injected, moved);
          } else {
            if (is_short) {
              std::lock_guard<std::mutex> lock(mu_);
              ++injected_;
            }
            outer->finish(st, moved);
          }
          return st;
        });
    *self = inner.get();
    forwarded.push_back(IoRequest{r.op, r.fd, r.offset, r.data, p.forward, std::move(inner)});
  }
  Status s = forwarded.empty() ? Status::OK() : inner_->submit(forwarded);
  if (!s.ok()) {
    for (const IoRequest& r : requests) r.completion->finish(s, 0);
    return s;
  }
  for (std::size_t i : settle_now) {
    const IoRequest& r = requests[i];
    const Plan& p = plans[i];
    if (p.faulty && p.kind == Kind::kFail) {
      Status e = injected_error(r, p.err);
      record_injected(e);
      r.completion->finish(e, 0);
    } else {
      // A short transfer that kept nothing: reported as success with 0 bytes moved.
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++injected_;
      }
      r.completion->finish(Status::OK(), 0);
    }
  }
  return Status::OK();
}

Status FaultyEngine::drain() {
  Status inner = inner_->drain();
  std::lock_guard<std::mutex> lock(mu_);
  if (injected_since_drain_ == 0) return inner;
  Status first = first_injected_;
  std::uint64_t n = injected_since_drain_;
  injected_since_drain_ = 0;
  first_injected_ = Status::OK();
  if (!inner.ok()) return inner;
  return first.with_context("drain: " + std::to_string(n) + " injected I/O failure(s); the first");
}

}  // namespace strata::nvme
