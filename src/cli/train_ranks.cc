#include "cli/train_ranks.h"

#include <cstdlib>
#include <string>

namespace strata::cli {

int launcher_rank() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"}) {
    if (const char* v = std::getenv(var); v != nullptr && *v != '\0') return std::atoi(v);
  }
  return 0;
}

CommOptions comm_options(const Profile& p) {
  CommOptions o;
  o.check_collectives = p.parallel.check_collectives;
  o.timeout_s = p.parallel.comm_timeout;
  o.hierarchical_allreduce = p.parallel.hierarchical_allreduce;
  return o;
}

namespace {

std::string grid_text(const ParallelConfig& g) {
  return "dp " + std::to_string(g.dp) + " x tp " + std::to_string(g.tp) + " x pp " + std::to_string(g.pp);
}

}  // namespace

Result<TrainWorld> open_train_world(const Profile& p, int ranks_option) {
  const ParallelConfig& g = p.parallel;
  const int grid = g.dp * g.tp * g.pp;
  TrainWorld w;
  const bool under_launcher = launched_by_mpi() && (g.comm == "auto" || g.comm == "mpi");
  if (g.comm == "nccl") {
    return unavailable("parallel.comm = \"nccl\": strata train runs the host device; NCCL needs GPUs (use \"auto\")");
  }
  if (under_launcher) {
    if (ranks_option != 1) {
      return invalid_argument("--ranks " + std::to_string(ranks_option) +
                              " runs ranks as threads; under mpirun each process is one rank (drop --ranks)");
    }
    STRATA_ASSIGN_OR_RETURN(auto comm, make_mpi_world(comm_options(p)));
    w.world_size = comm->size();
    w.mpi = true;
    w.ranks.push_back(std::move(comm));
  } else {
    if (g.comm == "mpi") {
      return invalid_argument("parallel.comm = \"mpi\" but this process was not started by an MPI launcher with "
                              "more than one process; run 'mpirun -n N strata train ...' or set comm = \"auto\"");
    }
    if (ranks_option < 1) return invalid_argument("--ranks " + std::to_string(ranks_option) + " must be at least 1");
    STRATA_ASSIGN_OR_RETURN(w.ranks, make_local_comms(ranks_option, comm_options(p)));
    w.world_size = ranks_option;
  }
  if (w.world_size != grid) {
    return invalid_argument(std::string(w.mpi ? "the MPI job has " : "--ranks gives ") + std::to_string(w.world_size) +
                            " ranks but the grid " + grid_text(g) + " needs " + std::to_string(grid) +
                            "; the number of ranks must equal parallel.dp x tp x pp");
  }
  return w;
}

}  // namespace strata::cli
