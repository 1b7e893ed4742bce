// MpiComm: one rank per process under an MPI launcher (OpenMPI), on one host or many.
//
// MPI runs with MPI_THREAD_MULTIPLE. Each communicator has two progress threads of its own, so
// no device thread ever waits on MPI and no communicator waits behind another: one runs its
// collectives, in enqueue order, with MPI's blocking collectives (OpenMPI's tuned algorithms;
// its non-blocking ones go through a slower generic library); the other starts tagged
// point-to-point transfers as their streams reach them (MPI_Isend/MPI_Irecv, matched by peer
// and tag, never by arrival order) and completes them as MPI reports. Every operation in
// flight is watched by the MpiRuntime (mpi_runtime.h): one that has not completed within
// `timeout` is reported naming it and the job is aborted, so a peer that stopped cannot hang
// the others. bf16 and fp16 reductions use the runtime's MPI operations.
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <thread>

#include "parallel/comm_backends.h"
#include "parallel/comm_internal.h"
#include "parallel/mpi_runtime.h"
#include "strata/log.h"

namespace strata::comm {

namespace {

// An operation handed to a progress thread.
struct MpiOp {
  Fingerprint fp;
  CommBuffer send, recv;
  std::span<double> host;
  int peer = -1, tag = 0, color = -1, key = 0;
  std::shared_ptr<HostSignal> done;
  std::shared_ptr<Event> reached;  // collectives: completes when the stream reaches the operation
  Clock::time_point ready;
  MPI_Comm split_out = MPI_COMM_NULL;
};

class MpiComm final : public Communicator {
 public:
  MpiComm(MpiRuntime& mpi, MPI_Comm comm, std::uint64_t group_id, CommOptions options)
      : mpi_(mpi), comm_(comm), group_(group_id), options_(options) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    find_node();
    watch_ = mpi_.add_slot([this] {
      std::lock_guard wl(watched_mu_);
      return "rank " + std::to_string(mpi_.world_rank()) + ": " + describe(watched_fp_);
    });
    collectives_ = std::thread([this] { run_collectives(); });
    transfers_ = std::thread([this] { run_transfers(); });
  }

  ~MpiComm() override {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    collectives_.join();
    transfers_.join();
    mpi_.remove_slot(watch_);
    MPI_Comm_free(&comm_);
  }

  std::string_view backend() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int node() const override { return node_; }
  int node_count() const override { return node_count_; }

  Status all_reduce(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_collective(CommKind::kAllReduce, send, recv, size_, rank_));
    return enqueue(make(CommKind::kAllReduce, send, recv, op, -1), stream);
  }
  Status reduce_scatter(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_collective(CommKind::kReduceScatter, send, recv, size_, rank_));
    return enqueue(make(CommKind::kReduceScatter, send, recv, op, -1), stream);
  }
  Status all_gather(const CommBuffer& send, const CommBuffer& recv, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_collective(CommKind::kAllGather, send, recv, size_, rank_));
    return enqueue(make(CommKind::kAllGather, send, recv, ReduceOp::kSum, -1), stream);
  }
  Status broadcast(const CommBuffer& buffer, int root, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_buffer(buffer, "broadcast: the buffer"));
    if (root < 0 || root >= size_) return invalid_argument("broadcast: root " + std::to_string(root) + " is not a rank");
    return enqueue(make(CommKind::kBroadcast, buffer, buffer, ReduceOp::kSum, root), stream);
  }
  Status send(const CommBuffer& buffer, int peer, int tag, Stream& stream) override {
    return enqueue_p2p(CommKind::kSend, buffer, peer, tag, stream);
  }
  Status recv(const CommBuffer& buffer, int peer, int tag, Stream& stream) override {
    return enqueue_p2p(CommKind::kRecv, buffer, peer, tag, stream);
  }

  Status barrier() override {
    auto op = make(CommKind::kBarrier, {}, {}, ReduceOp::kSum, -1);
    post_collective(op);
    return op->done->wait();
  }
  Status all_reduce_host(std::span<double> values, ReduceOp rop) override {
    auto op = make(CommKind::kAllReduce, {}, {}, rop, -1);
    op->fp.host = true;
    op->fp.count = values.size();
    op->host = values;
    post_collective(op);
    return op->done->wait();
  }
  Result<std::unique_ptr<Communicator>> split(int color, int key) override {
    auto op = make(CommKind::kBarrier, {}, {}, ReduceOp::kSum, -1);
    op->fp.split = true;
    op->color = color;
    op->key = key;
    post_collective(op);
    STRATA_RETURN_IF_ERROR(op->done->wait());
    if (op->split_out == MPI_COMM_NULL) return std::unique_ptr<Communicator>();
    MPI_Comm_set_errhandler(op->split_out, MPI_ERRORS_RETURN);
    const std::uint64_t id = (group_ * 1000003ULL + op->fp.seq) * 1000003ULL + static_cast<std::uint64_t>(color);
    return std::unique_ptr<Communicator>(std::make_unique<MpiComm>(mpi_, op->split_out, id, options_));
  }

  void abort(const Status& why) override { mpi_.abort_job(rank_failed(mpi_.world_rank(), why).message()); }
  CommStats stats() const override { return counters_.snapshot(); }

 private:
  std::shared_ptr<MpiOp> make(CommKind kind, const CommBuffer& send, const CommBuffer& recv, ReduceOp op, int root) {
    auto m = std::make_shared<MpiOp>();
    m->fp.kind = kind;
    m->fp.type = send.type;
    m->fp.count = send.count;
    m->fp.op = op;
    m->fp.root = root;
    m->fp.group = group_;
    m->send = send;
    m->recv = recv;
    m->done = HostSignal::make();
    return m;
  }

  Status host_addressable(const CommBuffer& b) const {
    if (b.count > static_cast<std::size_t>(INT32_MAX)) {
      return invalid_argument("comm = \"mpi\": " + std::to_string(b.count) + " elements in one operation exceed MPI's " +
                              "int count; split it (zero.reduce_bucket_size, zero.allgather_bucket_size)");
    }
    const Device* d = b.range.device();
    if (d != nullptr && !d->info().host_addressable) {
      return invalid_argument("comm = \"mpi\" moves memory the host can address; device '" + d->info().name +
                              "' is not: use comm = \"nccl\" on GPUs");
    }
    return Status::OK();
  }

  Status enqueue(std::shared_ptr<MpiOp> op, Stream& stream) {
    STRATA_RETURN_IF_ERROR(host_addressable(op->send));
    STRATA_RETURN_IF_ERROR(host_addressable(op->recv));
    // The progress thread waits for `reached` itself, so back-to-back collectives pass from one
    // to the next without a hop through the device's threads; when nothing was enqueued on the
    // stream since this communicator's previous collective, there is nothing to wait for but
    // that collective, which the progress thread runs first.
    if (!chain_.follows(stream)) {
      STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Event> reached, stream.device().create_event());
      op->reached = std::move(reached);
      STRATA_RETURN_IF_ERROR(stream.record(*op->reached));
    }
    STRATA_RETURN_IF_ERROR(stream.wait_host(op->done));
    chain_.note(stream);
    post_collective(op);
    return Status::OK();
  }

  Status enqueue_p2p(CommKind kind, const CommBuffer& buffer, int peer, int tag, Stream& stream) {
    STRATA_RETURN_IF_ERROR(check_buffer(buffer, std::string(comm_kind_name(kind)) + ": the buffer"));
    STRATA_RETURN_IF_ERROR(host_addressable(buffer));
    if (peer < 0 || peer >= size_ || peer == rank_) {
      return invalid_argument(std::string(comm_kind_name(kind)) + ": peer " + std::to_string(peer) +
                              " is not another rank of this communicator of " + std::to_string(size_));
    }
    if (tag < 0) return invalid_argument(std::string(comm_kind_name(kind)) + ": tag " + std::to_string(tag) + " is negative");
    auto op = std::make_shared<MpiOp>();
    op->fp.kind = kind;
    op->send = buffer;
    op->peer = peer;
    op->tag = tag;
    op->done = HostSignal::make();
    return enqueue_step(stream, [this, op] { post_transfer(op); }, op->done);
  }

  // Numbers the operation (enqueue order is collective order) and hands it to the progress thread.
  void post_collective(const std::shared_ptr<MpiOp>& op) {
    {
      std::lock_guard lk(mu_);
      op->fp.seq = next_seq_++;
      op->ready = Clock::now();
      ready_[op->fp.seq] = op;
    }
    cv_.notify_all();
  }

  void post_transfer(const std::shared_ptr<MpiOp>& op) {
    {
      std::lock_guard lk(mu_);
      op->ready = Clock::now();
      new_transfers_.push_back(op);
    }
    cv_.notify_all();
  }

  void run_collectives();
  Status run_collective(MpiOp& op);
  Status check_fingerprint(const Fingerprint& fp);
  void run_transfers();
  void find_node();
  void count(const MpiOp& op) {
    const double s = std::chrono::duration<double>(Clock::now() - op.ready).count();
    const Fingerprint& f = op.fp;
    const std::uint64_t payload = payload_bytes(f, op.send, op.recv, op.host.size_bytes());
    const int n = f.kind == CommKind::kSend || f.kind == CommKind::kRecv ? 2 : size_;
    counters_.add(f.kind, payload, ring_volume(f.kind, payload, n, f.root == rank_), s);
  }

  MpiRuntime& mpi_;
  MPI_Comm comm_;
  const std::uint64_t group_;
  const CommOptions options_;
  int rank_ = 0, size_ = 1, node_ = 0, node_count_ = 1;
  CommCounters counters_;
  StreamChain chain_;  // collectives enqueued back to back on one stream
  // The watchdog's view of the collective in flight (armed around each one).
  MpiRuntime::Slot* watch_ = nullptr;
  std::mutex watched_mu_;
  Fingerprint watched_fp_;  // guarded by watched_mu_

  std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t next_seq_ = 0, next_run_ = 0;                    // guarded by mu_
  std::map<std::uint64_t, std::shared_ptr<MpiOp>> ready_;       // guarded by mu_
  std::deque<std::shared_ptr<MpiOp>> new_transfers_;            // guarded by mu_
  bool stop_ = false;                                           // guarded by mu_
  std::thread collectives_, transfers_;
};

// Nodes: the ranks that share memory (MPI_COMM_TYPE_SHARED), numbered by their lowest rank.
void MpiComm::find_node() {
  MPI_Comm local;
  MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
  int leader = rank_;
  MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, local);
  MPI_Comm_free(&local);
  std::vector<int> leaders(static_cast<std::size_t>(size_));
  MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, comm_);
  std::vector<int> distinct = leaders;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  node_count_ = static_cast<int>(distinct.size());
  node_ = static_cast<int>(std::lower_bound(distinct.begin(), distinct.end(), leader) - distinct.begin());
}

void MpiComm::run_collectives() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || ready_.count(next_run_) != 0; });
    if (ready_.count(next_run_) == 0) return;
    std::shared_ptr<MpiOp> op = std::move(ready_[next_run_]);
    ready_.erase(next_run_++);
    lk.unlock();
    // It runs even when the stream's earlier work failed: a rank that stayed away would hang
    // its peers (the failure reaches the stream's owner).
    if (op->reached) op->reached->synchronize().ignore();
    {
      std::lock_guard wl(watched_mu_);
      watched_fp_ = op->fp;
    }
    watch_->arm(options_.timeout_s);
    Status st = run_collective(*op);
    watch_->disarm();
    if (st.ok()) count(*op);
    op->done->set(st);
    lk.lock();
  }
}

// With check_collectives every rank first shares its fingerprint; ranks that disagree fail
// naming both sides (the same message on every rank).
Status MpiComm::check_fingerprint(const Fingerprint& fp) {
  const std::int64_t mine[7] = {static_cast<std::int64_t>(fp.kind), static_cast<std::int64_t>(fp.seq),
                                static_cast<std::int64_t>(fp.type), static_cast<std::int64_t>(fp.count),
                                static_cast<std::int64_t>(fp.op), fp.root,
                                (fp.split ? 1 : 0) | (fp.host ? 2 : 0)};
  std::vector<std::int64_t> all(7 * static_cast<std::size_t>(size_));
  STRATA_RETURN_IF_ERROR(mpi_status(MPI_Allgather(mine, 7, MPI_INT64_T, all.data(), 7, MPI_INT64_T, comm_), "fingerprint exchange"));
  auto decode = [&](int r) {
    const std::int64_t* v = all.data() + 7 * static_cast<std::size_t>(r);
    Fingerprint f;
    f.kind = static_cast<CommKind>(v[0]);
    f.seq = static_cast<std::uint64_t>(v[1]);
    f.type = static_cast<CommType>(v[2]);
    f.count = static_cast<std::uint64_t>(v[3]);
    f.op = static_cast<ReduceOp>(v[4]);
    f.root = static_cast<int>(v[5]);
    f.split = (v[6] & 1) != 0;
    f.host = (v[6] & 2) != 0;
    f.group = fp.group;
    return f;
  };
  const Fingerprint first = decode(0);
  for (int r = 1; r < size_; ++r) {
    if (!(decode(r) == first)) {
      return failed_precondition("collective mismatch: rank 0 called " + describe(first) + " but rank " +
                                 std::to_string(r) + " called " + describe(decode(r)) +
                                 "; every rank must enqueue the same collectives in the same order");
    }
  }
  return Status::OK();
}

Status MpiComm::run_collective(MpiOp& op) {
  const Fingerprint& f = op.fp;
  if (options_.check_collectives) STRATA_RETURN_IF_ERROR(check_fingerprint(f));
  const MPI_Datatype type = mpi_.datatype(f.type);
  const auto n = static_cast<int>(op.send.count);
  void* sbuf = op.send.range.address();
  void* rbuf = op.recv.range.address();
  switch (f.kind) {
    case CommKind::kBarrier:
      if (f.split) {
        return mpi_status(MPI_Comm_split(comm_, op.color < 0 ? MPI_UNDEFINED : op.color, op.key, &op.split_out), "split");
      }
      return mpi_status(MPI_Barrier(comm_), "barrier");
    case CommKind::kAllReduce:
      if (f.host) {
        return mpi_status(MPI_Allreduce(MPI_IN_PLACE, op.host.data(), static_cast<int>(op.host.size()), MPI_DOUBLE,
                                        mpi_.op(CommType::kF32, f.op), comm_), "all_reduce of host values");
      }
      return mpi_status(MPI_Allreduce(sbuf == rbuf ? MPI_IN_PLACE : sbuf, rbuf, n, type, mpi_.op(f.type, f.op), comm_),
                        "all_reduce");
    case CommKind::kReduceScatter: {
      const int per = static_cast<int>(op.recv.count);
      if (!is_rank_part(op.recv, op.send, rank_)) {
        return mpi_status(MPI_Reduce_scatter_block(sbuf, rbuf, per, type, mpi_.op(f.type, f.op), comm_), "reduce_scatter");
      }
      // In place, MPI leaves the result at the start of the buffer; it belongs at this rank's part.
      STRATA_RETURN_IF_ERROR(
          mpi_status(MPI_Reduce_scatter_block(MPI_IN_PLACE, sbuf, per, type, mpi_.op(f.type, f.op), comm_), "reduce_scatter"));
      if (rbuf != sbuf) std::memcpy(rbuf, sbuf, op.recv.bytes());  // slices are disjoint: rank > 0
      return Status::OK();
    }
    case CommKind::kAllGather:
      return mpi_status(MPI_Allgather(is_rank_part(op.send, op.recv, rank_) ? MPI_IN_PLACE : sbuf, n, type, rbuf, n, type, comm_),
                        "all_gather");
    case CommKind::kBroadcast:
      return mpi_status(MPI_Bcast(sbuf, n, type, f.root, comm_), "broadcast");
    default: return internal_error("mpi communicator: not a collective: " + describe(f));
  }
}

void MpiComm::run_transfers() {
  struct Active {
    std::shared_ptr<MpiOp> op;
    MPI_Request request = MPI_REQUEST_NULL;
    std::uint64_t watch = 0;
  };
  std::list<Active> active;
  // Polls back off from 20 us to 200 us while nothing completes: a transfer posted long
  // before its partner (a pipeline's sends) must not keep a core busy polling.
  auto idle_poll = std::chrono::microseconds(20);
  std::unique_lock lk(mu_);
  for (;;) {
    if (active.empty()) cv_.wait(lk, [&] { return stop_ || !new_transfers_.empty(); });
    if (stop_ && active.empty() && new_transfers_.empty()) return;
    std::deque<std::shared_ptr<MpiOp>> fresh;
    fresh.swap(new_transfers_);
    lk.unlock();
    for (auto& op : fresh) {
      Active a{op};
      const MPI_Datatype type = mpi_.datatype(op->send.type);
      const int n = static_cast<int>(op->send.count);
      const int code = op->fp.kind == CommKind::kSend
                           ? MPI_Isend(op->send.range.address(), n, type, op->peer, op->tag, comm_, &a.request)
                           : MPI_Irecv(op->send.range.address(), n, type, op->peer, op->tag, comm_, &a.request);
      if (Status st = mpi_status(code, comm_kind_name(op->fp.kind)); !st.ok()) {
        op->done->set(st);
        continue;
      }
      a.watch = mpi_.watch(
          [rank = mpi_.world_rank(), kind = op->fp.kind, peer = op->peer, tag = op->tag] {
            return "rank " + std::to_string(rank) + ": " + std::string(comm_kind_name(kind)) + " with rank " +
                   std::to_string(peer) + " (tag " + std::to_string(tag) + ")";
          },
          options_.timeout_s);
      active.push_back(std::move(a));
    }
    bool progressed = false;
    for (auto it = active.begin(); it != active.end();) {
      int flag = 0;
      MPI_Status status;
      Status st = mpi_status(MPI_Test(&it->request, &flag, &status), "test of a transfer");
      if (!flag && st.ok()) {
        ++it;
        continue;
      }
      mpi_.unwatch(it->watch);
      if (st.ok() && it->op->fp.kind == CommKind::kRecv) {
        int got = 0;
        MPI_Get_count(&status, mpi_.datatype(it->op->send.type), &got);
        if (got != static_cast<int>(it->op->send.count)) {
          st = invalid_argument("recv from rank " + std::to_string(it->op->peer) + " (tag " + std::to_string(it->op->tag) +
                                ") got " + std::to_string(got) + " elements; " + std::to_string(it->op->send.count) +
                                " expected");
        }
      }
      if (st.ok()) count(*it->op);
      it->op->done->set(st);
      it = active.erase(it);
      progressed = true;
    }
    if (progressed || !fresh.empty()) idle_poll = std::chrono::microseconds(20);
    if (!active.empty() && !progressed) {
      std::this_thread::sleep_for(idle_poll);
      idle_poll = std::min(idle_poll * 2, std::chrono::microseconds(200));
    }
    lk.lock();
  }
}

}  // namespace

Result<std::unique_ptr<Communicator>> make_mpi_comm(const CommOptions& options) {
  STRATA_ASSIGN_OR_RETURN(MpiRuntime* mpi, MpiRuntime::get());
  // A communicator of its own (a duplicate of the world), so that two world communicators of
  // one process never interleave their collectives.
  MPI_Comm world;
  STRATA_RETURN_IF_ERROR(mpi_status(MPI_Comm_dup(MPI_COMM_WORLD, &world), "communicator duplicate"));
  MPI_Comm_set_errhandler(world, MPI_ERRORS_RETURN);
  return std::unique_ptr<Communicator>(std::make_unique<MpiComm>(*mpi, world, 0, options));
}

}  // namespace strata::comm
