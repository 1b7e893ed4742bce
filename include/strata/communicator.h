// strata/communicator.h — the communication seam: collectives and tagged point-to-point
// transfers between the ranks of a job, ordered with device streams as NCCL's are.
//
// Backends, chosen by name through create_communicator() / `[parallel] comm`:
//   "local"  LocalComm — N ranks are N threads of one process, each with its own Device. One
//            address space: every rank reads its peers' buffers directly (no staging copy).
//            Reductions run in a fixed order (below), so results are bitwise reproducible
//            and the same for any thread timing.
//   "mpi"    MpiComm — one rank per process under an MPI launcher (OpenMPI), on one host or
//            many. Non-blocking MPI operations driven by the process's MPI progress thread.
//            Works on device memory the host can address (the host device).
//   "nccl"   NcclComm — GPUs; bootstrapped over MPI. Built when NCCL is found; unverified on
//            a GPU (its tests skip without one).
//   "auto"   mpi when started by an MPI launcher with more than one process, local otherwise.
// FaultyComm (tests) wraps any of them to delay, fail or drop chosen operations.
//
// Model of execution. Every operation that takes a Stream is *enqueued*: it returns at once;
// the operation starts once the work enqueued on the stream before it has completed, and work
// enqueued after it waits for it (it is a step of the stream, like a copy). No device thread
// blocks meanwhile: the communicator's own progress engine runs it. Collectives of one
// communicator run in the order they were enqueued on each rank, and every rank must enqueue
// the same collectives in the same order (as with NCCL and MPI); with check_collectives each
// carries a fingerprint (operation, sequence number, type, count, group) and ranks that
// disagree fail naming both sides instead of hanging. Point-to-point transfers are matched by
// (peer, tag) and are independent of the collectives' order: two transfers between the same
// ranks in flight at once never cross, whatever order their receives are posted in. Every wait
// on another rank is bounded by `timeout`; a rank that fails aborts its group, so the others
// fail at once naming it.
//
// Fixed reduction order of LocalComm (and the serial reference of the tests): for each
// element, the values of the ranks of each node are added in rank order in fp32 (int64 for
// integers) and rounded to the element type, then the nodes' partial results are added in
// node order and rounded. With one node (the default) that is one left fold in rank order.
// The hierarchical all-reduce follows the same order, so it equals the flat one bitwise.
//
// Counters. Every backend counts, per kind of operation: calls, payload bytes (the size of the
// caller's buffer as the kind defines it below), bytes sent and received, and seconds from
// start to completion. Bytes sent and received are those of the bandwidth-optimal (ring)
// algorithm, the convention of nccl-tests, whatever the backend does inside, so a layer above
// can assert its communication volume exactly: with N ranks and S payload bytes, all_reduce
// sends and receives 2 S (N-1)/N, reduce_scatter (payload = the input) and all_gather
// (payload = the output) S (N-1)/N, broadcast S from the root and to each other rank, send S.
//
// Thread-safety: a Communicator is used by its rank's threads; enqueue calls may come from
// several threads, but collectives must then be ordered by the caller (their enqueue order is
// their order). stats() may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "strata/device.h"
#include "strata/status.h"

namespace strata {

// Element types a communicator moves and reduces.
enum class CommType : std::uint8_t { kF32 = 0, kBF16, kF16, kI32, kI64 };
std::string_view comm_type_name(CommType t);
std::size_t comm_type_size(CommType t);
CommType comm_type_of(DType t);

enum class ReduceOp : std::uint8_t { kSum = 0, kMax, kMin };
std::string_view reduce_op_name(ReduceOp op);

// `count` elements of `type` at the start of `range` (a device range the host can address
// for local and mpi; device memory for nccl).
struct CommBuffer {
  DeviceRange range;
  CommType type = CommType::kF32;
  std::size_t count = 0;

  static CommBuffer of(const DeviceView& v) { return {v.range(), comm_type_of(v.dtype()), v.count()}; }
  std::size_t bytes() const { return count * comm_type_size(type); }
};

enum class CommKind : std::uint8_t {
  kAllReduce = 0, kReduceScatter, kAllGather, kBroadcast, kSend, kRecv, kBarrier, kCount
};
std::string_view comm_kind_name(CommKind k);

struct CommKindStats {
  std::uint64_t ops = 0;
  std::uint64_t payload_bytes = 0;
  std::uint64_t bytes_sent = 0;      // ring-algorithm volume (see above)
  std::uint64_t bytes_received = 0;
  double seconds = 0;                // start to completion, summed
};

struct CommStats {
  CommKindStats kinds[static_cast<int>(CommKind::kCount)];
  const CommKindStats& of(CommKind k) const { return kinds[static_cast<int>(k)]; }
  std::uint64_t bytes_sent() const;
  std::uint64_t bytes_received() const;
  std::string to_json() const;
};

struct CommOptions {
  bool check_collectives = false;  // fingerprint every collective ([parallel] check_collectives)
  double timeout_s = 300;          // bound on every wait for another rank
  // local: ranks per node, for the hierarchical all-reduce and its tests (0 = all on one node).
  int ranks_per_node = 0;
  bool hierarchical_allreduce = false;  // [parallel] hierarchical_allreduce
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual std::string_view backend() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The node this rank is on (0-based, in rank order of the nodes' first ranks) and how many
  // ranks of this communicator share it.
  virtual int node() const = 0;
  virtual int node_count() const = 0;

  // --- collectives (enqueued on `stream`) -----------------------------------------------------
  // recv[i] = op over ranks of send[i]. send and recv: same type and count; may be the same.
  virtual Status all_reduce(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) = 0;
  // recv = op over ranks of send[rank * n, (rank + 1) * n), n = recv.count; send.count = size * n.
  // In place (as NCCL's): recv may be exactly this rank's part of send; the rest of send is then
  // left undefined. Any other overlap of send and recv is refused, here and in all_gather.
  virtual Status reduce_scatter(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) = 0;
  // recv[r * n, (r + 1) * n) = send of rank r, n = send.count; recv.count = size * n.
  // In place: send may be exactly this rank's part of recv.
  virtual Status all_gather(const CommBuffer& send, const CommBuffer& recv, Stream& stream) = 0;
  // buffer of every rank = buffer of `root`.
  virtual Status broadcast(const CommBuffer& buffer, int root, Stream& stream) = 0;
  // --- point to point (enqueued on `stream`; matched by peer and tag) ---------------------------
  virtual Status send(const CommBuffer& buffer, int peer, int tag, Stream& stream) = 0;
  virtual Status recv(const CommBuffer& buffer, int peer, int tag, Stream& stream) = 0;

  // --- blocking, for host-side control values ---------------------------------------------------
  virtual Status barrier() = 0;
  // values (host memory) = op over ranks, element by element; the same order as all_reduce.
  virtual Status all_reduce_host(std::span<double> values, ReduceOp op) = 0;

  // Ranks with the same `color` form a new communicator, ordered by (key, rank). Collective:
  // every rank calls it. A negative color leaves the rank out (the result is null).
  virtual Result<std::unique_ptr<Communicator>> split(int color, int key) = 0;

  // Makes every rank of the group fail its pending and later operations with `why` (naming
  // this rank); for a rank that hit an error the others cannot see.
  virtual void abort(const Status& why) = 0;

  virtual CommStats stats() const = 0;

 protected:
  Communicator() = default;
};

// Ranks of one process: `n` LocalComm ranks sharing one group; rank r is element r.
// REQUIRES: n >= 1.
Result<std::vector<std::unique_ptr<Communicator>>> make_local_comms(int n, const CommOptions& options = {});

// The MPI world of this process (initialising MPI on first use). Unavailable when strata was
// built without MPI.
Result<std::unique_ptr<Communicator>> make_mpi_world(const CommOptions& options = {});

// True when this process was started by an MPI launcher with more than one process.
bool launched_by_mpi();

// The backends create_communicator knows: auto, local, mpi, nccl.
std::vector<std::string> comm_backend_names();

// One communicator of this process by backend name: "mpi" and "nccl" give the launcher's
// world; "local" gives a one-rank communicator (for N local ranks use make_local_comms);
// "auto" picks mpi under a launcher with more than one process, else local. An unknown name
// lists the known ones.
Result<std::unique_ptr<Communicator>> create_communicator(std::string_view backend, const CommOptions& options = {});

}  // namespace strata
