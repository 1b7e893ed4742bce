// NcclComm: collectives and transfers between GPUs through NCCL, bootstrapped over MPI (rank
// 0's unique id is broadcast to the job), one GPU per rank (the process's local rank modulo
// the GPUs it sees).
//
// UNVERIFIED ON A GPU: this backend compiles in every build with CUDA, NCCL and MPI, but no
// machine strata's tests have run on had a GPU; its tests skip with "no CUDA device". Treat it
// as unverified until scripts/gpu_check.sh has passed on hardware.
//
// Operations are NCCL calls on the stream's own cudaStream_t, so they are ordered with the
// kernels around them by CUDA itself and no host thread waits. NCCL pairs the transfers between
// two ranks in the order they were enqueued (it has no tags): a receive from a peer must be
// enqueued in the order the peer enqueued its sends, which the pipeline schedules do; the tag
// is checked on the host over MPI when check_collectives is on. Host-side control values, the
// barrier and split go through the MPI communicator the bootstrap made.
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdlib>

#include "device/backends.h"
#include "parallel/comm_backends.h"
#include "parallel/comm_internal.h"

namespace strata::comm {

namespace {

// The one place where an NCCL result becomes a Status.
Status nccl_status(ncclResult_t r, std::string_view what) {
  if (r == ncclSuccess) return Status::OK();
  return unavailable("NCCL " + std::string(what) + " failed: " + ncclGetErrorString(r));
}

ncclDataType_t nccl_type(CommType t) {
  switch (t) {
    case CommType::kF32: return ncclFloat32;
    case CommType::kBF16: return ncclBfloat16;
    case CommType::kF16: return ncclFloat16;
    case CommType::kI32: return ncclInt32;
    case CommType::kI64: return ncclInt64;
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::kSum ? ncclSum : op == ReduceOp::kMax ? ncclMax : ncclMin; }

class NcclComm final : public Communicator {
 public:
  NcclComm(std::unique_ptr<Communicator> control, ncclComm_t comm, CommOptions options)
      : control_(std::move(control)), comm_(comm), options_(options) {}
  ~NcclComm() override { ncclCommDestroy(comm_); }

  std::string_view backend() const override { return "nccl"; }
  int rank() const override { return control_->rank(); }
  int size() const override { return control_->size(); }
  int node() const override { return control_->node(); }
  int node_count() const override { return control_->node_count(); }

  Status all_reduce(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_collective(CommKind::kAllReduce, send, recv, size(), rank()));
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, handle(stream));
    STRATA_RETURN_IF_ERROR(nccl_status(ncclAllReduce(send.range.address(), recv.range.address(), send.count,
                                                     nccl_type(send.type), nccl_op(op), comm_, s), "all_reduce"));
    return count(CommKind::kAllReduce, send.bytes());
  }
  Status reduce_scatter(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_collective(CommKind::kReduceScatter, send, recv, size(), rank()));
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, handle(stream));
    STRATA_RETURN_IF_ERROR(nccl_status(ncclReduceScatter(send.range.address(), recv.range.address(), recv.count,
                                                         nccl_type(send.type), nccl_op(op), comm_, s), "reduce_scatter"));
    return count(CommKind::kReduceScatter, send.bytes());
  }
  Status all_gather(const CommBuffer& send, const CommBuffer& recv, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_collective(CommKind::kAllGather, send, recv, size(), rank()));
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, handle(stream));
    STRATA_RETURN_IF_ERROR(nccl_status(ncclAllGather(send.range.address(), recv.range.address(), send.count,
                                                     nccl_type(send.type), comm_, s), "all_gather"));
    return count(CommKind::kAllGather, recv.bytes());
  }
  Status broadcast(const CommBuffer& buffer, int root, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_buffer(buffer, "broadcast: the buffer"));
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, handle(stream));
    STRATA_RETURN_IF_ERROR(nccl_status(ncclBroadcast(buffer.range.address(), buffer.range.address(), buffer.count,
                                                     nccl_type(buffer.type), root, comm_, s), "broadcast"));
    return count(CommKind::kBroadcast, buffer.bytes(), root == rank());
  }
  Status send(const CommBuffer& buffer, int peer, int tag, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_buffer(buffer, "send: the buffer"));
    STRATA_RETURN_IF_ERROR(check_tag(CommKind::kSend, peer, tag));
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, handle(stream));
    STRATA_RETURN_IF_ERROR(nccl_status(ncclSend(buffer.range.address(), buffer.count, nccl_type(buffer.type), peer, comm_, s), "send"));
    return count(CommKind::kSend, buffer.bytes());
  }
  Status recv(const CommBuffer& buffer, int peer, int tag, Stream& stream) override {
    STRATA_RETURN_IF_ERROR(check_buffer(buffer, "recv: the buffer"));
    STRATA_RETURN_IF_ERROR(check_tag(CommKind::kRecv, peer, tag));
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, handle(stream));
    STRATA_RETURN_IF_ERROR(nccl_status(ncclRecv(buffer.range.address(), buffer.count, nccl_type(buffer.type), peer, comm_, s), "recv"));
    return count(CommKind::kRecv, buffer.bytes());
  }

  Status barrier() override { return control_->barrier(); }
  Status all_reduce_host(std::span<double> values, ReduceOp op) override { return control_->all_reduce_host(values, op); }
  Result<std::unique_ptr<Communicator>> split(int color, int key) override {
    STRATA_ASSIGN_OR_RETURN(auto control, control_->split(color, key));
    ncclComm_t sub = nullptr;
    STRATA_RETURN_IF_ERROR(nccl_status(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, nullptr), "split"));
    if (control == nullptr) return std::unique_ptr<Communicator>();
    return std::unique_ptr<Communicator>(std::make_unique<NcclComm>(std::move(control), sub, options_));
  }
  void abort(const Status& why) override {
    ncclCommAbort(comm_);
    control_->abort(why);
  }
  CommStats stats() const override { return counters_.snapshot(); }

 private:
  static Result<cudaStream_t> handle(Stream& stream) {
    void* h = device::cuda_stream_handle(stream);
    if (h == nullptr) {
      return invalid_argument("comm = \"nccl\" enqueues on CUDA streams; this stream belongs to device '" +
                              stream.device().info().name + "' (use comm = \"local\" or \"mpi\" there)");
    }
    return static_cast<cudaStream_t>(h);
  }

  // NCCL cannot match tags; with check_collectives the sender tells the receiver its tag over
  // MPI so that a receive posted for another transfer fails instead of taking this one.
  Status check_tag(CommKind kind, int peer, int tag) {
    if (peer < 0 || peer >= size() || peer == rank()) {
      return invalid_argument(std::string(comm_kind_name(kind)) + ": peer " + std::to_string(peer) + " is not another rank");
    }
    if (!options_.check_collectives) return Status::OK();
    int theirs = tag;
    if (kind == CommKind::kSend) {
      if (MPI_Send(&theirs, 1, MPI_INT, peer, 0, MPI_COMM_WORLD) == MPI_SUCCESS) return Status::OK();
      return unavailable("send to rank " + std::to_string(peer) + ": the tag exchange over MPI failed");
    }
    if (MPI_Recv(&theirs, 1, MPI_INT, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
      return unavailable("recv from rank " + std::to_string(peer) + ": the tag exchange over MPI failed");
    }
    if (theirs != tag) {
      return failed_precondition("recv from rank " + std::to_string(peer) + " with tag " + std::to_string(tag) +
                                 " would take the transfer it sent with tag " + std::to_string(theirs) +
                                 "; with NCCL, receives from a peer must follow the order of its sends");
    }
    return Status::OK();
  }

  Status count(CommKind kind, std::uint64_t payload, bool root = false) {
    const int n = kind == CommKind::kSend || kind == CommKind::kRecv ? 2 : size();
    counters_.add(kind, payload, ring_volume(kind, payload, n, root), 0);
    return Status::OK();
  }

  std::unique_ptr<Communicator> control_;
  ncclComm_t comm_;
  const CommOptions options_;
  CommCounters counters_;
};

}  // namespace

Result<std::unique_ptr<Communicator>> make_nccl_comm(const CommOptions& options) {
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
    return unavailable("comm = \"nccl\": no CUDA device (cudaGetDeviceCount found none)");
  }
  STRATA_ASSIGN_OR_RETURN(auto control, make_mpi_comm(options));
  int local = 0;
  if (const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) local = std::atoi(v);
  if (cudaSetDevice(local % gpus) != cudaSuccess) {
    return unavailable("comm = \"nccl\": cudaSetDevice(" + std::to_string(local % gpus) + ") failed");
  }
  ncclUniqueId id;
  if (control->rank() == 0) STRATA_RETURN_IF_ERROR(nccl_status(ncclGetUniqueId(&id), "unique id"));
  if (MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS) {
    return unavailable("comm = \"nccl\": broadcasting NCCL's unique id over MPI failed");
  }
  ncclComm_t comm = nullptr;
  STRATA_RETURN_IF_ERROR(nccl_status(ncclCommInitRank(&comm, control->size(), id, control->rank()), "init"));
  return std::unique_ptr<Communicator>(std::make_unique<NcclComm>(std::move(control), comm, options));
}

}  // namespace strata::comm
