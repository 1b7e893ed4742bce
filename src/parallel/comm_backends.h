// src/parallel/comm_backends.h — the constructors of the communicator backends, for the
// registry in communicator.cc. Each backend lives in its own file.
#pragma once

#include <memory>
#include <vector>

#include "strata/communicator.h"

namespace strata::comm {

// local_comm.cc: n ranks of one process sharing a group.
Result<std::vector<std::unique_ptr<Communicator>>> make_local_group(int n, const CommOptions& options);

// mpi_comm.cc (when built with MPI): the world of this process's MPI job.
Result<std::unique_ptr<Communicator>> make_mpi_comm(const CommOptions& options);

// nccl_comm.cc (when built with NCCL and MPI): the world over NCCL, bootstrapped over MPI.
Result<std::unique_ptr<Communicator>> make_nccl_comm(const CommOptions& options);

}  // namespace strata::comm
