#include "offload/access_trace.h"

#include <algorithm>
#include <utility>

namespace strata::offload {

std::optional<AccessTrace::Divergence> AccessTrace::observe(const TraceEntry& entry) {
  if (!trace_.empty()) {
    if (cursor_ < trace_.size() && trace_[cursor_] == entry) {
      ++cursor_;
      return std::nullopt;
    }
    Divergence d = diverge(entry);
    recording_.push_back(entry);
    return d;
  }
  if (overflowed_) return std::nullopt;  // waiting for the step to end before recording again
  if (recording_.size() >= kMaxLength) {
    recording_.clear();
    recording_.shrink_to_fit();
    overflowed_ = true;
    return std::nullopt;
  }
  recording_.push_back(entry);
  return std::nullopt;
}

std::optional<AccessTrace::Divergence> AccessTrace::end_step() {
  if (!trace_.empty()) {
    if (cursor_ == trace_.size()) {
      cursor_ = 0;
      return std::nullopt;
    }
    Divergence d = diverge(std::nullopt);
    install(std::exchange(recording_, {}));
    return d;
  }
  overflowed_ = false;
  install(std::exchange(recording_, {}));
  return std::nullopt;
}

void AccessTrace::reset() {
  trace_.clear();
  recording_.clear();
  positions_.clear();
  cursor_ = 0;
  overflowed_ = false;
}

const TraceEntry& AccessTrace::upcoming(std::size_t ahead) const {
  return trace_[(cursor_ + ahead) % trace_.size()];
}

std::size_t AccessTrace::distance_to_next_use(std::uint64_t block, Tier tier) const {
  if (trace_.empty()) return kNoUse;
  auto it = positions_.find(Key{block, tier});
  if (it == positions_.end()) return kNoUse;
  const std::vector<std::size_t>& pos = it->second;
  auto next = std::lower_bound(pos.begin(), pos.end(), cursor_);
  if (next != pos.end()) return *next - cursor_;
  return pos.front() + trace_.size() - cursor_;  // first use in the next step
}

void AccessTrace::install(std::vector<TraceEntry> trace) {
  trace_ = std::move(trace);
  positions_.clear();
  cursor_ = 0;
  for (std::size_t i = 0; i < trace_.size(); ++i) positions_[Key{trace_[i].block, trace_[i].tier}].push_back(i);
  if (!trace_.empty()) ++recordings_;
}

AccessTrace::Divergence AccessTrace::diverge(std::optional<TraceEntry> got) {
  Divergence d;
  d.position = cursor_;
  if (cursor_ < trace_.size()) d.expected = trace_[cursor_];
  d.got = got;
  d.dropped_length = trace_.size();
  // The accesses of this step so far did follow the trace: they start the new recording.
  recording_.assign(trace_.begin(), trace_.begin() + static_cast<std::ptrdiff_t>(cursor_));
  trace_.clear();
  positions_.clear();
  cursor_ = 0;
  ++divergences_;
  return d;
}

}  // namespace strata::offload
