// LocalComm: the ranks of a group are threads of one process (strata/communicator.h).
//
// Each rank has a progress thread that runs its collectives in enqueue order: it meets the
// other ranks at the group's rendezvous, does its share of the work reading and writing its
// peers' buffers directly (an all-reduce is a reduce-scatter and an all-gather fused: rank r
// reduces slice r of every send buffer in the fixed order and writes it into every receive
// buffer; only rank r touches slice r, so in-place buffers are safe), then waits until every
// rank is done. Point-to-point transfers bypass the thread: the group's mailbox matches them.
#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "parallel/comm_backends.h"
#include "parallel/local_group.h"
#include "strata/log.h"

namespace strata::comm {

namespace {

// A collective waiting for its turn on the progress thread.
struct PendingOp {
  Arrival arrival;
  std::shared_ptr<HostSignal> done;
  // Completes when the stream reaches the operation; null for the blocking forms. The progress
  // thread waits for it itself, so back-to-back collectives pass from one to the next without
  // a hop through the device's threads.
  std::shared_ptr<Event> reached;
  Clock::time_point ready;
};

void make_split_groups(LocalGroup& parent);

class LocalComm final : public Communicator {
 public:
  LocalComm(std::shared_ptr<LocalGroup> group, int rank)
      : group_(std::move(group)), rank_(rank), counters_(std::make_shared<CommCounters>()) {
    worker_ = std::thread([this] { run(); });
  }

  ~LocalComm() override {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  std::string_view backend() const override { return "local"; }
  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }
  int node() const override { return group_->node_of(rank_); }
  int node_count() const override { return group_->node_count(); }

  Status all_reduce(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_collective(CommKind::kAllReduce, send, recv, size(), rank_));
    return enqueue(CommKind::kAllReduce, send, recv, op, -1, stream);
  }
  Status reduce_scatter(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_collective(CommKind::kReduceScatter, send, recv, size(), rank_));
    return enqueue(CommKind::kReduceScatter, send, recv, op, -1, stream);
  }
  Status all_gather(const CommBuffer& send, const CommBuffer& recv, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_collective(CommKind::kAllGather, send, recv, size(), rank_));
    return enqueue(CommKind::kAllGather, send, recv, ReduceOp::kSum, -1, stream);
  }
  Status broadcast(const CommBuffer& buffer, int root, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_buffer(buffer, "broadcast: the buffer"));
    if (root < 0 || root >= size()) return invalid_argument("broadcast: root " + std::to_string(root) + " is not a rank");
    return enqueue(CommKind::kBroadcast, buffer, buffer, ReduceOp::kSum, root, stream);
  }
  Status send(const CommBuffer& buffer, int peer, int tag, Stream& stream) override {
    return enqueue_p2p(CommKind::kSend, buffer, peer, tag, stream);
  }
  Status recv(const CommBuffer& buffer, int peer, int tag, Stream& stream) override {
    return enqueue_p2p(CommKind::kRecv, buffer, peer, tag, stream);
  }

  Status barrier() override {
    Arrival a;
    a.fp.kind = CommKind::kBarrier;
    return run_blocking(a);
  }
  Status all_reduce_host(std::span<double> values, ReduceOp op) override {
    Arrival a;
    a.fp.kind = CommKind::kAllReduce;
    a.fp.host = true;
    a.fp.count = values.size();
    a.fp.op = op;
    a.host = values;
    return run_blocking(a);
  }
  Result<std::unique_ptr<Communicator>> split(int color, int key) override;

  void abort(const Status& why) override { group_->abort(rank_failed(rank_, why)); }
  CommStats stats() const override { return counters_->snapshot(); }

 private:
  Status enqueue(CommKind kind, const CommBuffer& send, const CommBuffer& recv, ReduceOp op, int root, Stream& stream);
  Status enqueue_p2p(CommKind kind, const CommBuffer& buffer, int peer, int tag, Stream& stream);
  // Runs `a` on the progress thread in its turn and waits for it.
  Status run_blocking(Arrival a);
  std::shared_ptr<PendingOp> make_op(Arrival a);  // assigns the sequence number
  void post_ready(const std::shared_ptr<PendingOp>& op);
  void run();
  Status execute(const Arrival& a);
  void share(const Arrival& a);  // this rank's part of the data movement
  std::vector<double> reduce_host_values(const Arrival& a) const;

  std::shared_ptr<LocalGroup> group_;
  const int rank_;
  std::shared_ptr<CommCounters> counters_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t next_seq_ = 0;                              // guarded by mu_
  std::uint64_t next_run_ = 0;                              // guarded by mu_
  std::map<std::uint64_t, std::shared_ptr<PendingOp>> ready_;  // guarded by mu_
  bool stop_ = false;                                       // guarded by mu_
  SplitResult split_result_;                                // written by the progress thread
  std::thread worker_;
};

std::shared_ptr<PendingOp> LocalComm::make_op(Arrival a) {
  auto op = std::make_shared<PendingOp>();
  op->arrival = a;
  op->arrival.fp.group = group_->id();
  op->done = HostSignal::make();
  return op;
}

// Numbers the operation (enqueue order is collective order) and hands it to the progress thread.
void LocalComm::post_ready(const std::shared_ptr<PendingOp>& op) {
  {
    std::lock_guard lk(mu_);
    op->arrival.fp.seq = next_seq_++;
    op->ready = Clock::now();
    ready_[op->arrival.fp.seq] = op;
  }
  cv_.notify_all();
}

Status LocalComm::enqueue(CommKind kind, const CommBuffer& send, const CommBuffer& recv, ReduceOp op, int root,
                          Stream& stream) {
  Arrival a;
  a.fp.kind = kind;
  a.fp.type = send.type;
  a.fp.count = send.count;
  a.fp.op = op;
  a.fp.root = root;
  a.send = send;
  a.recv = recv;
  auto pending = make_op(a);
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Event> reached, stream.device().create_event());
  pending->reached = std::move(reached);
  STRATA_RETURN_IF_ERROR(stream.record(*pending->reached));
  STRATA_RETURN_IF_ERROR(stream.wait_host(pending->done));
  post_ready(pending);
  return Status::OK();
}

Status LocalComm::run_blocking(Arrival a) {
  auto pending = make_op(a);
  post_ready(pending);
  return pending->done->wait();
}

Status LocalComm::enqueue_p2p(CommKind kind, const CommBuffer& buffer, int peer, int tag, Stream& stream) {
  const std::string what = std::string(comm_kind_name(kind)) + ": the buffer";
  STRATA_RETURN_IF_ERROR(check_buffer(buffer, what));
  if (peer < 0 || peer >= size() || peer == rank_) {
    return invalid_argument(std::string(comm_kind_name(kind)) + ": peer " + std::to_string(peer) +
                            " is not another rank of this communicator of " + std::to_string(size()));
  }
  Transfer t;
  t.kind = kind;
  t.src = kind == CommKind::kSend ? rank_ : peer;
  t.dst = kind == CommKind::kSend ? peer : rank_;
  t.tag = tag;
  t.buffer = buffer;
  t.done = HostSignal::make();
  t.counters = counters_;
  auto done = t.done;
  return enqueue_step(stream, [group = group_, t = std::move(t)]() mutable { group->post(std::move(t)); }, done);
}

void LocalComm::run() {
  set_log_thread_rank(group_->world_rank(rank_));
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || ready_.count(next_run_) != 0; });
    if (ready_.count(next_run_) == 0) return;  // stopping
    std::shared_ptr<PendingOp> op = std::move(ready_[next_run_]);
    ready_.erase(next_run_++);
    lk.unlock();
    // The collective runs even when the stream's earlier work failed (that failure reaches the
    // stream's owner): a rank that stayed away would make its peers wait for it.
    if (op->reached) op->reached->synchronize().ignore();
    Status st = execute(op->arrival);
    const double seconds = std::chrono::duration<double>(Clock::now() - op->ready).count();
    if (st.ok()) {
      const Fingerprint& f = op->arrival.fp;
      const std::uint64_t payload = payload_bytes(f, op->arrival.send, op->arrival.recv, op->arrival.host.size_bytes());
      counters_->add(f.kind, payload, ring_volume(f.kind, payload, size(), f.root == rank_), seconds);
    }
    op->done->set(st);
    lk.lock();
  }
}

Status LocalComm::execute(const Arrival& a) {
  if (a.fp.split) {
    STRATA_RETURN_IF_ERROR(group_->meet(rank_, a, [g = group_.get()] { make_split_groups(*g); }));
    split_result_ = group_->split_results()[static_cast<std::size_t>(rank_)];
    return group_->leave(rank_);
  }
  STRATA_RETURN_IF_ERROR(group_->meet(rank_, a));
  if (!a.host.empty()) {
    // Every rank reads every rank's values, so each writes its result only after all have read.
    std::vector<double> out = reduce_host_values(a);
    STRATA_RETURN_IF_ERROR(group_->leave(rank_));
    std::copy(out.begin(), out.end(), a.host.begin());
    return Status::OK();
  }
  share(a);
  return group_->leave(rank_);
}

std::vector<double> LocalComm::reduce_host_values(const Arrival& a) const {
  const auto& order = group_->reduction_order();
  std::vector<double> out(a.host.size());
  for (std::size_t i = 0; i < out.size(); ++i) {
    double acc = group_->arrival(order[0]).host[i];
    for (std::size_t k = 1; k < order.size(); ++k) {
      const double v = group_->arrival(order[k]).host[i];
      acc = a.fp.op == ReduceOp::kSum ? acc + v : a.fp.op == ReduceOp::kMax ? std::max(acc, v) : std::min(acc, v);
    }
    out[i] = acc;
  }
  return out;
}

void LocalComm::share(const Arrival& a) {
  const int n = size();
  const auto& order = group_->reduction_order();
  const std::span<const int> nodes(group_->node_sizes());
  const std::size_t elem = comm_type_size(a.fp.type);
  auto byte_at = [](const CommBuffer& b, std::size_t elems, std::size_t esize) {
    return static_cast<std::byte*>(b.range.address()) + elems * esize;
  };
  switch (a.fp.kind) {
    case CommKind::kAllReduce: {
      const std::size_t count = a.fp.count;
      // Slices start on 4 KiB boundaries of the element space (aligned stores, whole pages).
      const std::size_t align = std::max<std::size_t>(1, 4096 / elem);
      const std::size_t slice =
          ((count + static_cast<std::size_t>(n) - 1) / static_cast<std::size_t>(n) + align - 1) / align * align;
      const std::size_t begin = std::min(count, slice * static_cast<std::size_t>(rank_));
      const std::size_t end = std::min(count, begin + slice);
      if (begin == end) return;
      std::vector<const void*> src;
      for (int r : order) src.push_back(group_->arrival(r).send.range.address());
      // Slice r of every receive buffer, written in the same pass that reduces it.
      std::vector<void*> dsts;
      for (int r = 0; r < n; ++r) dsts.push_back(group_->arrival(r).recv.range.address());
      reduce_fixed_order(a.fp.type, a.fp.op, dsts, src, begin, end, nodes);
      return;
    }
    case CommKind::kReduceScatter: {
      const std::size_t per = a.recv.count;
      std::vector<const void*> src;
      for (int r : order) src.push_back(byte_at(group_->arrival(r).send, per * static_cast<std::size_t>(rank_), elem));
      void* const dst[] = {a.recv.range.address()};
      reduce_fixed_order(a.fp.type, a.fp.op, dst, src, 0, per, nodes);
      return;
    }
    case CommKind::kAllGather: {
      // Each rank pushes its part into every rank's receive buffer, reading it once.
      const std::size_t per = a.send.count;
      std::vector<void*> dsts;
      for (int r = 0; r < n; ++r) {
        std::byte* dst = byte_at(group_->arrival(r).recv, per * static_cast<std::size_t>(rank_), elem);
        if (dst != a.send.range.address()) dsts.push_back(dst);
      }
      copy_to_all(dsts, a.send.range.address(), per * elem);
      return;
    }
    case CommKind::kBroadcast: {
      const CommBuffer& root = group_->arrival(a.fp.root).send;
      if (rank_ != a.fp.root && root.range.address() != a.send.range.address()) {
        copy_bulk(a.send.range.address(), root.range.address(), a.send.bytes());
      }
      return;
    }
    default: return;
  }
}

Result<std::unique_ptr<Communicator>> LocalComm::split(int color, int key) {
  Arrival a;
  a.fp.kind = CommKind::kBarrier;
  a.fp.split = true;
  a.color = color;
  a.key = key;
  STRATA_RETURN_IF_ERROR(run_blocking(a));
  SplitResult mine = split_result_;
  if (mine.group == nullptr) return std::unique_ptr<Communicator>();
  return std::unique_ptr<Communicator>(std::make_unique<LocalComm>(mine.group, mine.rank));
}

// Runs under the rendezvous lock of `parent` once every rank brought its (color, key).
void make_split_groups(LocalGroup& parent) {
  const int n = parent.size();
  std::map<int, std::vector<std::pair<int, int>>> members;  // color -> (key, rank)
  for (int r = 0; r < n; ++r) {
    const Arrival& a = parent.arrival(r);
    if (a.color >= 0) members[a.color].emplace_back(a.key, r);
  }
  auto& results = parent.split_results();
  results.assign(static_cast<std::size_t>(n), SplitResult{});
  for (auto& [color, list] : members) {
    std::sort(list.begin(), list.end());
    std::vector<int> world, nodes;
    for (auto& [k, r] : list) {
      world.push_back(parent.world_rank(r));
      nodes.push_back(parent.node_of(r));
    }
    auto group = std::make_shared<LocalGroup>(std::move(world), std::move(nodes), parent.options());
    for (std::size_t i = 0; i < list.size(); ++i) {
      results[static_cast<std::size_t>(list[i].second)] = SplitResult{group, static_cast<int>(i)};
    }
  }
}

}  // namespace

Result<std::vector<std::unique_ptr<Communicator>>> make_local_group(int n, const CommOptions& options) {
  if (n < 1) return invalid_argument("a local communicator needs at least one rank; found " + std::to_string(n));
  const int per_node = options.ranks_per_node > 0 ? options.ranks_per_node : n;
  std::vector<int> world(static_cast<std::size_t>(n)), nodes(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) {
    world[static_cast<std::size_t>(r)] = r;
    nodes[static_cast<std::size_t>(r)] = r / per_node;
  }
  auto group = std::make_shared<LocalGroup>(std::move(world), std::move(nodes), options);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < n; ++r) comms.push_back(std::make_unique<LocalComm>(group, r));
  return comms;
}

}  // namespace strata::comm
