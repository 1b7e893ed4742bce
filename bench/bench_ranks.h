// The pattern of the benches that compare N MPI processes with one: every process runs
// together, then rank 0 runs alone while the others wait at a barrier.
//
// Thread-safety: called by one thread per process, on every process of `world`.
#pragma once

#include <vector>

#include "strata/communicator.h"
#include "strata/status.h"

namespace strata::bench {

template <typename R>
struct TogetherAndAlone {
  R together;         // this process's run among the N
  R alone;            // rank 0: its run alone; the others: a default R
  double slowest_s;   // the slowest process's step_s among the N (it sets the pace)
};

// `run(&world)` on every process, then `run(nullptr)` on rank 0 alone; R has a step_s. A
// process whose run fails aborts the world, so that no other waits for it.
template <typename R, typename Run>
Result<TogetherAndAlone<R>> together_then_alone(Communicator& world, const Run& run) {
  Result<R> together = run(&world);
  if (!together.ok()) world.abort(together.status());
  STRATA_RETURN_IF_ERROR(together.status());
  std::vector<double> slowest{together->step_s};
  STRATA_RETURN_IF_ERROR(world.all_reduce_host(slowest, ReduceOp::kMax));
  Result<R> alone = R{};
  if (world.rank() == 0) alone = run(nullptr);
  STRATA_RETURN_IF_ERROR(world.barrier());
  STRATA_RETURN_IF_ERROR(alone.status());
  return TogetherAndAlone<R>{*together, *alone, slowest[0]};
}

}  // namespace strata::bench
