// src/parallel/local_group.h — the state the ranks of one LocalComm group share: the
// rendezvous where each collective's ranks meet (and their fingerprints are compared), the
// mailbox that matches point-to-point transfers by (source, destination, tag), the group's
// abort, and a service thread that copies matched transfers and bounds every wait.
//
// A collective is two meetings: meet() returns once every rank has arrived with its buffers
// (each rank then does its share of the work, reading its peers' buffers directly) and leave()
// once every rank has finished, so no buffer is reused while a peer still reads it.
//
// Thread-safety: every member is safe from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>

#include "parallel/comm_internal.h"

namespace strata::comm {

class LocalGroup;

// What one rank brings to a collective.
struct Arrival {
  Fingerprint fp;
  CommBuffer send;
  CommBuffer recv;
  std::span<double> host;  // all_reduce_host
  int color = -1, key = 0;  // split
};

// One rank's half of a point-to-point transfer.
struct Transfer {
  CommKind kind = CommKind::kSend;
  int src = 0, dst = 0, tag = 0;
  CommBuffer buffer;
  std::shared_ptr<HostSignal> done;
  std::shared_ptr<CommCounters> counters;  // the posting rank's
  Clock::time_point posted;
};

struct SplitResult {
  std::shared_ptr<LocalGroup> group;  // null for a negative color
  int rank = -1;
};

class LocalGroup {
 public:
  // `world_ranks[r]` names rank r in messages; `nodes[r]` is its node.
  LocalGroup(std::vector<int> world_ranks, std::vector<int> nodes, CommOptions options);
  ~LocalGroup();
  LocalGroup(const LocalGroup&) = delete;
  LocalGroup& operator=(const LocalGroup&) = delete;

  int size() const { return static_cast<int>(world_.size()); }
  std::uint64_t id() const { return id_; }
  const CommOptions& options() const { return options_; }
  int world_rank(int rank) const { return world_[static_cast<std::size_t>(rank)]; }
  int node_of(int rank) const { return node_index_[static_cast<std::size_t>(rank)]; }
  int node_count() const { return node_count_; }
  // Ranks in the fixed reduction order (by node, then rank) and the size of each node's run.
  const std::vector<int>& reduction_order() const { return order_; }
  const std::vector<int>& node_sizes() const { return node_sizes_; }

  // Waits (bounded) until every rank arrived at the same collective; fails naming the ranks
  // that disagree or did not arrive (and aborts the group). The last rank to arrive runs
  // `on_all_arrived` under the group's lock first.
  Status meet(int rank, const Arrival& a, const std::function<void()>& on_all_arrived = {});
  // What rank r brought to the current collective. REQUIRES: between meet() and leave().
  const Arrival& arrival(int rank) const { return slots_[static_cast<std::size_t>(rank)]; }
  Status leave(int rank);

  // Split bookkeeping, written by on_all_arrived of a split.
  std::vector<SplitResult>& split_results() { return split_results_; }

  // Matches a send with the receive of the same (src, dst, tag), in posting order; the
  // service thread copies the bytes of a match and sets both signals.
  void post(Transfer t);

  void abort(const Status& why);
  Status aborted() const;

 private:
  // Waits until `gen` moves on; on timeout names the ranks whose `reached` flag is unset.
  Status wait_all(std::unique_lock<std::mutex>& lk, const std::atomic<std::uint64_t>& gen, const std::string& what,
                  const std::vector<char>& reached);
  Status disagreement() const;  // REQUIRES: mu_ held, every rank arrived
  void finish(Transfer& send, Transfer& recv);
  void service();
  Status overdue_transfer() const;  // REQUIRES: mu_ held

  const std::vector<int> world_;
  std::vector<int> node_index_;
  int node_count_ = 0;
  std::vector<int> order_;
  std::vector<int> node_sizes_;
  const CommOptions options_;
  const std::uint64_t id_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  Status aborted_;
  std::vector<Arrival> slots_;
  std::vector<char> present_;    // arrived at the current collective
  std::vector<char> left_mask_;  // finished the current collective
  int arrived_ = 0, left_ = 0;
  std::atomic<std::uint64_t> meet_gen_{0}, leave_gen_{0};  // written under mu_
  std::vector<SplitResult> split_results_;
  using Key = std::tuple<int, int, int>;  // src, dst, tag
  std::map<Key, std::deque<Transfer>> sends_, recvs_;
  std::deque<std::pair<Transfer, Transfer>> matched_;  // (send, recv) to copy
  std::condition_variable service_cv_;
  bool stop_ = false;
  std::thread service_;
};

}  // namespace strata::comm
