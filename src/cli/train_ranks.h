// src/cli/train_ranks.h — the ranks `strata train` runs: N threads of this process with
// LocalComm (--ranks N), or this process as one rank of an MPI job (mpirun -n N strata train).
// The number of ranks must equal parallel.dp x tp x pp. Only global rank 0 prints progress and
// the summary and writes --log-json.
#pragma once

#include <memory>
#include <vector>

#include "strata/communicator.h"
#include "strata/profile.h"

namespace strata::cli {

struct TrainWorld {
  // The communicators of the ranks this process runs: one per thread for LocalComm, one (this
  // process's rank) under MPI.
  std::vector<std::unique_ptr<Communicator>> ranks;
  int world_size = 1;
  bool mpi = false;
  // True when this process prints: it holds global rank 0.
  bool prints() const { return ranks.empty() || ranks.front()->rank() == 0; }
};

// This process's rank in its MPI launcher's world (from the launcher's environment), or 0.
int launcher_rank();

// The communicator options a profile asks for.
CommOptions comm_options(const Profile& p);

// Opens the job's communicators: under an MPI launcher (parallel.comm "auto" or "mpi") this
// process's rank of the launcher's world, else `ranks_option` LocalComm ranks. Fails when the
// count is not dp x tp x pp, naming both, and (until tensor and pipeline parallelism land) for
// tp or pp above 1.
Result<TrainWorld> open_train_world(const Profile& p, int ranks_option);

}  // namespace strata::cli
