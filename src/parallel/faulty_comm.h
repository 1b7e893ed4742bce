// src/parallel/faulty_comm.h — a Communicator that wraps another and injects faults, for tests
// (as FaultyEngine wraps an IoEngine): it delays chosen kinds of operations, fails the Nth
// operation (the rank then aborts its group, as a rank that hit an error does), or makes the
// rank disappear after its Nth operation (later operations are dropped, as if the rank had
// stopped). Delays never block a device thread: the stream waits on a signal that a timer sets.
//
// Operations are counted in enqueue order from 1, over every kind (collectives, transfers and
// the blocking forms).
//
// Thread-safety: the rules may be changed between operations from the rank's threads; the
// wrapper is otherwise as safe as the communicator it wraps.
#pragma once

#include <chrono>
#include <memory>
#include <optional>

#include "strata/communicator.h"

namespace strata::parallel {

class FaultyComm final : public Communicator {
 public:
  explicit FaultyComm(std::unique_ptr<Communicator> inner);
  ~FaultyComm() override;

  // Every later operation of `kind` (all kinds when empty) of at least `min_bytes` payload
  // starts `delay` after its stream reached it.
  void delay(std::optional<CommKind> kind, std::chrono::milliseconds delay, std::uint64_t min_bytes = 0);
  // The `nth` operation fails with `why` instead of running, and the group is aborted.
  void fail_nth(std::uint64_t nth, Status why);
  // Operations after the `nth` are dropped: they return OK and never happen.
  void disappear_after(std::uint64_t nth);

  std::string_view backend() const override { return inner_->backend(); }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  int node() const override { return inner_->node(); }
  int node_count() const override { return inner_->node_count(); }
  Status all_reduce(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) override;
  Status reduce_scatter(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) override;
  Status all_gather(const CommBuffer& send, const CommBuffer& recv, Stream& stream) override;
  Status broadcast(const CommBuffer& buffer, int root, Stream& stream) override;
  Status send(const CommBuffer& buffer, int peer, int tag, Stream& stream) override;
  Status recv(const CommBuffer& buffer, int peer, int tag, Stream& stream) override;
  Status barrier() override;
  Status all_reduce_host(std::span<double> values, ReduceOp op) override;
  Result<std::unique_ptr<Communicator>> split(int color, int key) override;
  void abort(const Status& why) override { inner_->abort(why); }
  CommStats stats() const override { return inner_->stats(); }

 private:
  enum class Fate { kRun, kFail, kDrop };
  // Decides what happens to the next operation of `kind` and, for a delay, enqueues the wait.
  Result<Fate> before(CommKind kind, Stream* stream, std::uint64_t bytes = 0);
  Status fail(Stream* stream);

  struct State;
  std::unique_ptr<Communicator> inner_;
  std::unique_ptr<State> state_;
};

}  // namespace strata::parallel
