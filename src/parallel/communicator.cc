// The communicator registry: backends by name, the MPI launcher check.
#include <cstdlib>
#include <string>

#include "parallel/comm_backends.h"
#include "strata/communicator.h"

namespace strata {

namespace {

// The size of the job an MPI launcher started this process in, or 0 outside a launcher.
int launcher_world_size() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"}) {
    if (const char* v = std::getenv(var); v != nullptr && *v != '\0') return std::atoi(v);
  }
  return 0;
}

}  // namespace

bool launched_by_mpi() { return launcher_world_size() > 1; }

std::vector<std::string> comm_backend_names() { return {"auto", "local", "mpi", "nccl"}; }

Result<std::vector<std::unique_ptr<Communicator>>> make_local_comms(int n, const CommOptions& options) {
  return comm::make_local_group(n, options);
}

Result<std::unique_ptr<Communicator>> make_mpi_world(const CommOptions& options) {
#ifdef STRATA_HAVE_MPI
  return comm::make_mpi_comm(options);
#else
  (void)options;
  return unavailable("comm = \"mpi\": this strata was built without MPI (install libopenmpi-dev and reconfigure)");
#endif
}

Result<std::unique_ptr<Communicator>> create_communicator(std::string_view backend, const CommOptions& options) {
  if (backend == "auto") backend = launched_by_mpi() ? "mpi" : "local";
  if (backend == "local") {
    STRATA_ASSIGN_OR_RETURN(auto comms, comm::make_local_group(1, options));
    return std::move(comms.front());
  }
  if (backend == "mpi") return make_mpi_world(options);
  if (backend == "nccl") {
#if defined(STRATA_HAVE_NCCL) && defined(STRATA_HAVE_MPI)
    return comm::make_nccl_comm(options);
#else
    return unavailable("comm = \"nccl\": this strata was built without NCCL and MPI (the CUDA toolkit's NCCL and "
                       "libopenmpi-dev)");
#endif
  }
  std::string known;
  for (const std::string& n : comm_backend_names()) known += (known.empty() ? "" : ", ") + n;
  return invalid_argument("unknown communicator backend '" + std::string(backend) + "'; known: " + known);
}

}  // namespace strata
