// src/parallel/hierarchical_allreduce.h — DeepSpeed's two-level all-reduce over any backend:
// a reduce-scatter among the ranks of each node, an all-reduce of each shard across the nodes
// (between the ranks with the same place in their node), and an all-gather inside the node.
// Across nodes each rank moves 2 (S / r) (n - 1) / n bytes for S bytes, r ranks per node and n
// nodes, where a flat ring moves up to 2 S (R - 1) / R over the slow links. On LocalComm the
// result equals the flat all-reduce bitwise (both follow the node-grouped fixed order); with
// MPI it is within the rounding of a different order. Elements beyond the largest multiple of
// r (fewer than r) are reduced by a flat all-reduce.
//
// Thread-safety: as its communicators; made collectively by every rank of `world`.
#pragma once

#include <memory>

#include "strata/communicator.h"

namespace strata::parallel {

class HierarchicalAllReduce {
 public:
  // Collective over `world` (two splits). REQUIRES: world outlives this object.
  static Result<std::unique_ptr<HierarchicalAllReduce>> create(Communicator& world);

  // recv = sum (or max, min) over the world of send, enqueued on `stream`. send and recv may
  // be the same; a scratch shard is taken from the stream's device for the call.
  Status all_reduce(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream);

  Communicator& node_comm() const { return *node_; }
  Communicator& cross_comm() const { return *cross_; }

 private:
  HierarchicalAllReduce() = default;
  Communicator* world_ = nullptr;
  std::unique_ptr<Communicator> node_, cross_;
};

}  // namespace strata::parallel
