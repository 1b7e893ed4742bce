// strata/engine.h — what a user drives to train: one rank of a run, on its own device, as one
// of the ranks of a communicator (null or one rank: training alone, the 1x1x1 grid). The grid
// is data parallelism with ZeRO stages 0 to 3 (strata/trainer.h, src/engine/data_parallel.h),
// tensor parallelism (parallel.tp) and pipeline stages (parallel.pp, src/engine/pipeline.h):
// the communicator is split into dp, tp and pp groups (src/parallel/process_grid.h); the
// optimizer state on the device, in pinned host memory or on NVMe, as the profile says. Weight
// exports and the checkpoints of tensor- or pipeline-parallel grids are written in
// whole-tensor terms (the same file on every grid, each tensor gathered and written by global
// rank 0).
//
// The Engine owns the rank's Device and its Trainer, the one training loop (`strata train`
// runs through an Engine too). Every rank of the communicator calls every method, in the same
// order: saving and exporting are collectives whatever the ZeRO stage (one rank writes the
// files; with stages 1 to 3 each rank writes its own shard of a checkpoint, see
// strata/checkpoint.h), and every rank returns the same outcome.
//
//   auto profile = strata::Profile::load("offload.toml");
//   auto comm = strata::create_communicator("auto");       // MPI ranks, or one local rank
//   auto engine = strata::Engine::create(*profile, comm->get());
//   auto data = strata::TokenDataset::open("tokens.bin");
//   for (int step = 0; step < profile->train.steps; ++step) {
//     auto stats = (*engine)->train_step(*data);           // forward, backward, update
//     if (!stats) return 1;                                 // a Status says what and why
//   }
//   return (*engine)->save_checkpoint("ckpt/").ok() ? 0 : 1;
//
// Thread-safety: one thread at a time per Engine; the ranks of a LocalComm group are threads,
// one Engine each.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "strata/checkpoint.h"
#include "strata/communicator.h"
#include "strata/device.h"
#include "strata/profile.h"
#include "strata/status.h"
#include "strata/trainer.h"

namespace strata {

namespace parallel {
class ProcessGrid;
}

class Engine {
 public:
  // The rank's device (`device`: a create_device() backend name, sized by profile.memory) and
  // trainer. The grid's dp x tp x pp must be the communicator's size. The rank runs
  // profile.for_rank(rank, rank within its node): its own swap paths where they hold {rank}.
  // REQUIRES: comm, when given, outlives the engine.
  static Result<std::unique_ptr<Engine>> create(const Profile& profile, Communicator* comm = nullptr,
                                                std::string_view device = "host");
  ~Engine();

  Result<StepStats> train_step(const TokenDataset& data);
  // Returns once any update still running in the background is complete.
  Status synchronize();

  // Saves a checkpoint in DIR (strata/checkpoint.h); returns its path on every rank.
  Result<std::string> save_checkpoint(const std::string& dir, const CheckpointOptions& options = {});
  // Every rank restores its part from a checkpoint saved with any number of ranks.
  Result<std::string> load_checkpoint(const std::string& path);
  // Weights as safetensors (Trainer::export_weights), written by rank 0.
  Status export_weights(const std::string& path, DType dtype = DType::kF32);
  Status import_weights(const std::string& path);

  // This rank's place: 0 .. ranks() - 1.
  int rank() const;
  int ranks() const;
  Trainer& trainer();
  Device& device();

 private:
  Engine() = default;
  // Every rank's `mine`, agreed: OK on every rank, or on every rank the error of the lowest
  // failing rank (its own message on that rank; its status code and rank on the others).
  Status agree(const Status& mine, const std::string& what);

  // `mine`, or every rank's agreed failure (agree()).
  Result<std::string> agree_on(Result<std::string> mine, const std::string& what);

  Communicator* comm_ = nullptr;  // null: one rank
  std::unique_ptr<parallel::ProcessGrid> grid_;  // with tp or pp > 1: the world split into dp, tp and pp
  std::unique_ptr<Device> device_;
  std::unique_ptr<Trainer> trainer_;
};

}  // namespace strata
