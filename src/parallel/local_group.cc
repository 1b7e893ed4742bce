#include "parallel/local_group.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "strata/log.h"

namespace strata::comm {

namespace {

std::atomic<std::uint64_t> next_group_id{1};

std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (std::size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

}  // namespace

LocalGroup::LocalGroup(std::vector<int> world_ranks, std::vector<int> nodes, CommOptions options)
    : world_(std::move(world_ranks)), options_(options), id_(next_group_id.fetch_add(1)) {
  const std::size_t n = world_.size();
  // Nodes are numbered in the order of their first rank.
  std::vector<int> seen;
  node_index_.resize(n);
  for (std::size_t r = 0; r < n; ++r) {
    auto it = std::find(seen.begin(), seen.end(), nodes[r]);
    node_index_[r] = static_cast<int>(it - seen.begin());
    if (it == seen.end()) seen.push_back(nodes[r]);
  }
  node_count_ = static_cast<int>(seen.size());
  for (int node = 0; node < node_count_; ++node) {
    int members = 0;
    for (std::size_t r = 0; r < n; ++r) {
      if (node_index_[r] == node) {
        order_.push_back(static_cast<int>(r));
        ++members;
      }
    }
    node_sizes_.push_back(members);
  }
  slots_.resize(n);
  present_.assign(n, 0);
  left_mask_.assign(n, 0);
  split_results_.resize(n);
  service_ = std::thread([this] { service(); });
}

LocalGroup::~LocalGroup() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  service_cv_.notify_all();
  service_.join();
}

Status LocalGroup::aborted() const {
  std::lock_guard lk(mu_);
  return aborted_;
}

Status LocalGroup::wait_all(std::unique_lock<std::mutex>& lk, const std::atomic<std::uint64_t>& gen,
                            const std::string& what, const std::vector<char>& reached) {
  const std::uint64_t mine = gen.load();
  // Peers usually arrive within microseconds, and a sleep and wake-up costs tens of them: poll
  // briefly first, yielding the core to whoever needs it (ranks may outnumber cores).
  lk.unlock();
  const auto spin_until = Clock::now() + std::chrono::microseconds(200);
  while (gen.load(std::memory_order_acquire) == mine && Clock::now() < spin_until) std::this_thread::yield();
  lk.lock();
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(options_.timeout_s));
  while (gen == mine && aborted_.ok()) {
    if (cv_.wait_until(lk, deadline) == std::cv_status::timeout && gen == mine && aborted_.ok()) {
      std::vector<int> missing;
      for (std::size_t r = 0; r < reached.size(); ++r) {
        if (!reached[r]) missing.push_back(world_[r]);
      }
      aborted_ = unavailable("local communicator: rank(s) " + rank_list(missing) + " did not reach " + what +
                             " within " + std::to_string(options_.timeout_s) + " s (a rank stopped, or the ranks " +
                             "enqueue different collectives)");
      cv_.notify_all();
    }
  }
  return aborted_;
}

Status LocalGroup::disagreement() const {
  const Fingerprint& first = slots_[0].fp;
  for (std::size_t r = 1; r < slots_.size(); ++r) {
    Fingerprint f = slots_[r].fp;
    if (!(f == first)) {
      return failed_precondition("collective mismatch: rank " + std::to_string(world_[0]) + " called " +
                                 describe(first) + " but rank " + std::to_string(world_[r]) + " called " + describe(f) +
                                 "; every rank must enqueue the same collectives in the same order");
    }
  }
  return Status::OK();
}

Status LocalGroup::meet(int rank, const Arrival& a, const std::function<void()>& on_all_arrived) {
  std::unique_lock lk(mu_);
  if (!aborted_.ok()) return aborted_;
  const auto r = static_cast<std::size_t>(rank);
  slots_[r] = a;
  present_[r] = 1;
  if (++arrived_ == size()) {
    // Fingerprints are always compared: ranks reading each other's buffers with different
    // counts would touch memory out of bounds.
    if (Status bad = disagreement(); !bad.ok()) {
      aborted_ = bad;
    } else if (on_all_arrived) {
      on_all_arrived();
    }
    ++meet_gen_;
    cv_.notify_all();
    return aborted_;
  }
  return wait_all(lk, meet_gen_, describe(a.fp), present_);
}

Status LocalGroup::leave(int rank) {
  std::unique_lock lk(mu_);
  left_mask_[static_cast<std::size_t>(rank)] = 1;
  if (++left_ == size()) {
    arrived_ = 0;
    left_ = 0;
    present_.assign(present_.size(), 0);
    left_mask_.assign(left_mask_.size(), 0);
    ++leave_gen_;
    cv_.notify_all();
    return aborted_;
  }
  return wait_all(lk, leave_gen_, "the end of " + describe(slots_[static_cast<std::size_t>(rank)].fp), left_mask_);
}

void LocalGroup::finish(Transfer& send, Transfer& recv) {
  Status st;
  if (send.buffer.bytes() != recv.buffer.bytes() || send.buffer.type != recv.buffer.type) {
    st = invalid_argument("point-to-point mismatch: rank " + std::to_string(world_[static_cast<std::size_t>(send.src)]) +
                          " sends " + std::to_string(send.buffer.count) + " " +
                          std::string(comm_type_name(send.buffer.type)) + " elements with tag " +
                          std::to_string(send.tag) + " but rank " +
                          std::to_string(world_[static_cast<std::size_t>(recv.dst)]) + " receives " +
                          std::to_string(recv.buffer.count) + " " + std::string(comm_type_name(recv.buffer.type)));
  } else {
    std::memcpy(recv.buffer.range.address(), send.buffer.range.address(), send.buffer.bytes());
  }
  const double waited = std::chrono::duration<double>(Clock::now() - std::min(send.posted, recv.posted)).count();
  if (st.ok()) {
    const std::uint64_t bytes = send.buffer.bytes();
    send.counters->add(CommKind::kSend, bytes, ring_volume(CommKind::kSend, bytes, 2, true), waited);
    recv.counters->add(CommKind::kRecv, bytes, ring_volume(CommKind::kRecv, bytes, 2, false), waited);
  }
  send.done->set(st);
  recv.done->set(st);
}

void LocalGroup::post(Transfer t) {
  std::unique_lock lk(mu_);
  if (!aborted_.ok()) {
    Status why = aborted_;
    lk.unlock();
    t.done->set(why);
    return;
  }
  const Key key{t.src, t.dst, t.tag};
  auto& mine = t.kind == CommKind::kSend ? sends_ : recvs_;
  auto& theirs = t.kind == CommKind::kSend ? recvs_ : sends_;
  auto it = theirs.find(key);
  if (it == theirs.end() || it->second.empty()) {
    t.posted = Clock::now();
    mine[key].push_back(std::move(t));
    return;
  }
  Transfer other = std::move(it->second.front());
  it->second.pop_front();
  if (it->second.empty()) theirs.erase(it);
  t.posted = Clock::now();
  // The copy runs on the group's service thread, not on the device thread that posted it.
  if (t.kind == CommKind::kSend) {
    matched_.emplace_back(std::move(t), std::move(other));
  } else {
    matched_.emplace_back(std::move(other), std::move(t));
  }
  lk.unlock();
  service_cv_.notify_one();
}

void LocalGroup::abort(const Status& why) {
  std::vector<Transfer> pending;
  {
    std::lock_guard lk(mu_);
    if (aborted_.ok()) aborted_ = why;
    for (auto* box : {&sends_, &recvs_}) {
      for (auto& [key, q] : *box) {
        for (auto& t : q) pending.push_back(std::move(t));
      }
      box->clear();
    }
  }
  cv_.notify_all();
  for (Transfer& t : pending) t.done->set(why);
}

// Copies matched transfers, and bounds the waits of unmatched ones (collectives bound their
// own waits).
void LocalGroup::service() {
  std::unique_lock lk(mu_);
  while (!stop_ || !matched_.empty()) {
    if (matched_.empty()) service_cv_.wait_for(lk, std::chrono::milliseconds(200));
    while (!matched_.empty()) {
      auto [send, recv] = std::move(matched_.front());
      matched_.pop_front();
      lk.unlock();
      finish(send, recv);
      lk.lock();
    }
    if (stop_ || !aborted_.ok()) continue;
    if (Status late = overdue_transfer(); !late.ok()) {
      lk.unlock();
      abort(late);
      lk.lock();
    }
  }
}

Status LocalGroup::overdue_transfer() const {
  const auto limit = std::chrono::duration<double>(options_.timeout_s);
  for (const auto* box : {&sends_, &recvs_}) {
    for (const auto& [key, q] : *box) {
      if (q.empty() || Clock::now() - q.front().posted < limit) continue;
      const Transfer& t = q.front();
      return unavailable(std::string(t.kind == CommKind::kSend ? "send" : "receive") + " between rank " +
                         std::to_string(world_[static_cast<std::size_t>(t.src)]) + " and rank " +
                         std::to_string(world_[static_cast<std::size_t>(t.dst)]) + " (tag " + std::to_string(t.tag) +
                         ") found no partner within " + std::to_string(options_.timeout_s) + " s");
    }
  }
  return Status::OK();
}

}  // namespace strata::comm
