// A program a user writes against an installed strata (DESIGN.md, "The C++ API a user sees"):
// a profile, a communicator from the environment (the MPI ranks under mpirun, else one local
// rank), an Engine, a few training steps and a checkpoint. Built and run by CI against the
// installed package; exit 0 when the library behaves.
//
//   consumer [PROFILE] [CHECKPOINT_DIR]
// Without a profile it trains the tiny model with the optimizer state in pinned host memory;
// without a directory it checkpoints into a fresh one under $TMPDIR (or /tmp) and removes it.
#include <strata/strata.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace {

constexpr const char* kTiny = R"(
[memory]
device_budget = "256MiB"
[train]
model = "tiny"
micro_batch = 4
steps = 3
[offload.optimizer]
device = "cpu"
)";

int fail(const strata::Status& s) {
  std::cerr << "consumer: " << s << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  auto profile = argc > 1 ? strata::Profile::load(argv[1]) : strata::Profile::from_toml_string(kTiny, "tiny");
  if (!profile) return fail(profile.status());
  auto comm = strata::create_communicator("auto");
  if (!comm) return fail(comm.status());
  profile->parallel.dp = (*comm)->size();  // every rank started is a data-parallel rank
  auto engine = strata::Engine::create(*profile, comm->get());
  if (!engine) return fail(engine.status());
  auto data = strata::TokenDataset::default_text();
  if (!data) return fail(data.status());
  for (int step = 0; step < profile->train.steps; ++step) {
    auto stats = (*engine)->train_step(*data);
    if (!stats) return fail(stats.status());
    if ((*engine)->rank() == 0) std::cout << "step " << stats->step << " loss " << stats->loss << "\n";
  }
  // Every rank saves into the same directory: one named after rank 0's process.
  std::vector<double> owner = {(*engine)->rank() == 0 ? static_cast<double>(::getpid()) : 0.0};
  if (auto st = (*comm)->all_reduce_host(owner, strata::ReduceOp::kMax); !st.ok()) return fail(st);
  const char* tmp = std::getenv("TMPDIR");
  const std::filesystem::path dir =
      argc > 2 ? std::filesystem::path(argv[2])
               : std::filesystem::path(tmp != nullptr ? tmp : "/tmp") /
                     ("strata-consumer-" + std::to_string(static_cast<long>(owner[0])));
  auto saved = (*engine)->save_checkpoint(dir.string());
  if (!saved) return fail(saved.status());
  if ((*engine)->rank() == 0) std::cout << "strata " << strata::version() << ": checkpoint " << *saved << "\n";
  if (argc <= 2 && (*engine)->rank() == 0) std::filesystem::remove_all(dir);
  return 0;
}
