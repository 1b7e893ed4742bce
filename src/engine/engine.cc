// The Engine of strata/engine.h: a rank's device and trainer, with saving and exporting made
// collectives that every rank returns the same outcome from.
#include "strata/engine.h"

#include <algorithm>
#include <vector>

#include "parallel/process_grid.h"

namespace strata {
namespace {

// This rank's place among the ranks of its node: how many ranks before it share its node.
Result<int> local_rank(Communicator& comm) {
  std::vector<double> nodes(static_cast<std::size_t>(comm.size()), 0.0);
  nodes[static_cast<std::size_t>(comm.rank())] = comm.node();
  STRATA_RETURN_IF_ERROR(comm.all_reduce_host(nodes, ReduceOp::kSum));
  return static_cast<int>(std::count(nodes.begin(), nodes.begin() + comm.rank(), static_cast<double>(comm.node())));
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::create(const Profile& profile, Communicator* comm, std::string_view device) {
  std::unique_ptr<Engine> e(new Engine());
  e->comm_ = comm != nullptr && comm->size() > 1 ? comm : nullptr;
  const ParallelConfig& g = profile.parallel;
  if (e->comm_ != nullptr && (g.tp > 1 || g.pp > 1)) {
    // Collective over the world, before anything can fail on one rank alone.
    STRATA_ASSIGN_OR_RETURN(e->grid_, parallel::ProcessGrid::create(*e->comm_, {g.dp, g.tp, g.pp}));
  }
  int local = 0;
  if (e->comm_ != nullptr) {
    STRATA_ASSIGN_OR_RETURN(local, local_rank(*e->comm_));
  }
  const Profile mine = profile.for_rank(e->rank(), local);
  // Every rank learns whether every rank could start, so that none waits for a rank that
  // never arrives at the first collective.
  Status made;
  auto dev = create_device(device, device_options(mine.memory));
  if (dev.ok()) {
    e->device_ = std::move(*dev);
    TrainerOptions options;
    options.dp = e->grid_ ? &e->grid_->dp() : e->comm_;
    options.tp = e->grid_ ? &e->grid_->tp() : nullptr;
    options.pp = e->grid_ ? &e->grid_->pp() : nullptr;
    auto trainer = Trainer::create(mine, *e->device_, nullptr, options);
    if (trainer.ok()) e->trainer_ = std::move(*trainer);
    made = trainer.status();
  } else {
    made = dev.status();
  }
  STRATA_RETURN_IF_ERROR(e->agree(made, "starting"));
  return e;
}

Engine::~Engine() {
  trainer_.reset();  // before the device it lives on
}

int Engine::rank() const { return comm_ == nullptr ? 0 : comm_->rank(); }
int Engine::ranks() const { return comm_ == nullptr ? 1 : comm_->size(); }
Trainer& Engine::trainer() { return *trainer_; }
Device& Engine::device() { return *device_; }

Result<StepStats> Engine::train_step(const TokenDataset& data) { return trainer_->train_step(data); }
Status Engine::synchronize() { return trainer_->optimizer().synchronize(); }

Status Engine::agree(const Status& mine, const std::string& what) {
  if (comm_ == nullptr) return mine;
  // Each rank's status code (0: OK), so that every rank fails with the failing rank's kind.
  std::vector<double> codes(static_cast<std::size_t>(comm_->size()), 0.0);
  codes[static_cast<std::size_t>(comm_->rank())] = static_cast<double>(mine.code());
  STRATA_RETURN_IF_ERROR(comm_->all_reduce_host(codes, ReduceOp::kSum));
  for (std::size_t r = 0; r < codes.size(); ++r) {
    if (codes[r] == 0) continue;
    if (!mine.ok()) return mine;
    return Status(static_cast<StatusCode>(codes[r]), what + " failed on rank " + std::to_string(r) + " (its message says why)");
  }
  return Status::OK();
}

Result<std::string> Engine::agree_on(Result<std::string> mine, const std::string& what) {
  STRATA_RETURN_IF_ERROR(agree(mine.status(), what));
  return mine;
}

Result<std::string> Engine::save_checkpoint(const std::string& dir, const CheckpointOptions& options) {
  // Tensor shards or pipeline stages: every rank gathers, global rank 0 writes (the save is a
  // collective).
  if (grid_ != nullptr) return agree_on(strata::save_checkpoint(*trainer_, dir, options), "the checkpoint");
  // Sharded state: every rank writes its part (the save agrees by itself). Otherwise rank 0
  // holds everything and writes alone.
  if (trainer_->zero_stage() >= 1 && trainer_->dp_group() != nullptr) return strata::save_checkpoint(*trainer_, dir, options);
  // Every rank ends its running update first: with the delayed update that also puts its
  // weights on the device, on every rank alike, not on the saving rank alone.
  STRATA_RETURN_IF_ERROR(agree(synchronize(), "finishing the running update for the checkpoint"));
  Result<std::string> saved = std::string();
  if (rank() == 0) saved = strata::save_checkpoint(*trainer_, dir, options);
  STRATA_RETURN_IF_ERROR(agree(saved.status(), "the checkpoint"));
  if (comm_ == nullptr) return saved;
  // The path is rank 0's: every rank computes the same name.
  return rank() == 0 ? saved : Result<std::string>(dir + "/" + checkpoint_name(trainer_->steps_done()));
}

Result<std::string> Engine::load_checkpoint(const std::string& path) {
  return agree_on(strata::load_checkpoint(*trainer_, path), "resuming from " + path);
}

Status Engine::export_weights(const std::string& path, DType dtype) {
  Status mine;
  if (trainer_->zero_stage() >= 1 || grid_ != nullptr || rank() == 0) mine = trainer_->export_weights(path, dtype);
  return agree(mine, "exporting " + path);
}

Status Engine::import_weights(const std::string& path) {
  return agree(trainer_->import_weights(path), "importing " + path);
}

}  // namespace strata
