// src/engine/data_parallel.h — where a Trainer's parameters and gradients live on its device and
// how they are reduced across its data-parallel group: the adapter between the model's module
// hooks and src/zero, which knows tensors by index only.
//
// Storage. The parameters are laid out in zero/flat_layout.h's flat space, each on a 256-byte
// boundary of both its value and its gradient; the values (the compute dtype) are one buffer.
//   - One rank, or ZeRO stage 0: the gradients are one buffer of the same layout, all-reduced
//     in byte buckets of zero.reduce_bucket_size as backward finishes them (zero/grad_buckets.h)
//     in the step's last micro-step; every rank then holds the whole mean gradient.
//   - Stages 1 and 2: the layout is cut into buckets of whole tensors of at most
//     zero.reduce_bucket_size bytes of gradients, each sharded over the ranks; the gradients are
//     reduce-scattered per bucket (zero/sharded_grads.h: stage 1 from a full gradient buffer at
//     the accumulation boundary, stage 2 from bucket slots every micro-step), and the optimizer
//     owns only this rank's slices (shard()). Every step's forward first all-gathers each
//     bucket of the updated values (zero/param_gather.h), just before the first module using
//     it runs and once the optimizer's update of this rank's slice of it is on the device.
//     zero.allgather_bucket_size is stage 3's: here a gather moves one reduce bucket.
//   - Stage 3: the buckets are cut at every module's parameters (and at
//     zero.allgather_bucket_size bytes of values), and each rank keeps only its slice of the
//     values (zero/param_fetch.h): a module's buckets are gathered before its forward and
//     before its backward and released after them, so a parameter is bound to device storage
//     only between its module's hooks. The gradients are stage 2's, on the same buckets
//     (zero.reduce_bucket_size is not used). With activation checkpointing the recompute of a
//     block gathers its buckets again, unless they are still kept from its recompute for its
//     backward (max_reuse_distance). It runs with one rank too (a one-rank communicator): then
//     the gather is a copy, and the window is what bounds the device's parameter memory.
// With one rank, stages 1 and 2 are stage 0: the one shard is the whole model.
//
// The loss is scaled by 1/dp in backward, so the sums are the global batch's mean gradient.
//
// Under a pipeline (`pipelined`, src/engine/pipeline.h) a stage's micro-batches run their
// backwards in the schedule's order, interleaved with forwards, so the gradients are not
// reduced as backward finishes them: they accumulate over the step's micro-batches in one full
// buffer of the stage's parameters (stages 2 and 3 keep stage 1's: the stage's gradients are
// 1/pp of the model's), and reduce_grads() reduces them once, after the stage's last backward:
// one all-reduce (stage 0) or reduce-scatter (stages 1 to 3) of Ψ_stage elements per step,
// whatever the number of micro-batches. The optimizer always gets pieces, so that it takes the
// gradients at step(); with parameter offload they stay on the device until then.
// Stage 3's parameters are gathered per module use as without a pipeline, along the step's
// recorded order of uses (every micro-batch's forward and backward of each chunk): a bucket
// whose next use lies within zero.max_reuse_distance gathered elements stays resident while
// zero.max_live_parameters has room. With both at least the stage's parameter count, every
// bucket is gathered once per step and kept through all its micro-batches (Ψ_stage (N-1)/N
// elements received per step); with less, a bucket is regathered at its uses, up to 2 m times
// per step (each micro-batch's forward and backward). GatherStats counts which happened.
//
// Thread-safety: one thread at a time (the trainer's).
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "model/param_users.h"
#include "strata/communicator.h"
#include "strata/model.h"
#include "strata/profile.h"
#include "strata/trainer.h"
#include "zero/flat_layout.h"
#include "zero/grad_buckets.h"
#include "zero/param_fetch.h"
#include "zero/param_gather.h"
#include "zero/sharded_grads.h"

namespace strata::engine {

class DataParallel {
 public:
  // Binds every parameter of `model` to storage on `device`, as one rank of `dp` (null: one
  // rank). Device memory that does not fit is an out-of-memory Status naming what needed it.
  // REQUIRES: model, device and dp outlive this object.
  // `time_stalls`: stage 3 times the training stream's waits for gathers.
  static Result<std::unique_ptr<DataParallel>> create(const Profile& profile, Module& model, DType value_dtype,
                                                      DType grad_dtype, Device& device, Communicator* dp,
                                                      bool time_stalls = false, bool pipelined = false);

  int size() const { return dp_ == nullptr ? 1 : dp_->size(); }
  int rank() const { return dp_ == nullptr ? 0 : dp_->rank(); }
  // The ZeRO stage that runs: profile's zero.stage with more than one rank, else 0.
  int stage() const { return stage_; }
  // ZeRO's device model-state bytes per parameter element for this stage, the profile's
  // dtypes and homes, with size() ranks N (the ZeRO paper's accounting: weights of v bytes,
  // gradients of g, Adam's two fp32 moments and an fp32 master unless the weights are fp32
  // themselves): stage 0 holds all of it, stage 1 shards the optimizer state over the N
  // ranks, stage 2 the gradients too, stage 3 the weights too. An offloaded optimizer (cpu,
  // nvme) keeps none of its state on the device; offloaded parameters keep neither their
  // weights nor, as their gradients leave bucket by bucket, gradients. Under a pipeline the
  // gradients are one whole buffer of the stage's parameters, whatever the stage.
  double state_bytes_per_element(const Profile& profile) const;
  // What this rank's optimizer owns (empty: everything).
  const OptimizerShard& shard() const { return shard_; }
  // Device bytes of the parameters' values and gradients (with stage 2's bucket slots).
  Trainer::ParameterBytes device_bytes() const;

  // Stage 3: checks that the largest module's gathered buckets fit on the device beside
  // everything allocated so far (the trainer calls it last in its set-up); OK otherwise.
  Status reserve_gather_window() const;
  // Stage 3 with parameter offload: the shard's host home is the optimizer's host weights, and
  // its gradients go to the optimizer's host gradients; both exist once it is attached. OK
  // without parameter offload.
  Status attach_optimizer(StepOptimizer& optimizer);
  GatherStats gather_stats() const;

  // The step's hooks, in the order the trainer calls them.
  Status begin_step(StepOptimizer& optimizer, Stream& stream);
  Status begin_micro(int micro, bool last, Stream& stream);
  Status before_forward(Module& module, StepOptimizer& optimizer, Stream& stream);
  Status after_forward(Module& module, Stream& stream);
  Status before_backward(Module& module, Stream& stream);
  Status after_backward(Module& module, Stream& stream);
  // After each micro-step's backward; in the last, `stream` then waits for every reduction.
  Status end_micro(Stream& stream);
  // Pipelined: every gradient is final; reduces them over the group (nothing with one rank),
  // and `stream` waits for the reductions.
  Status reduce_grads(Stream& stream);
  // Pipelined: p's gradient accumulated over the step's micro-batches on this rank (before
  // reduce_grads()), whole, in the full buffer.
  Result<DeviceView> accumulated_grad(const Parameter& p, Stream& stream);

  // Optimizer tensor `which` of elements [first, first + out.size()) of p, whichever ranks own
  // them: with stages 1 to 3 a collective (each owner broadcasts its part), which every rank
  // of the group must call with the same arguments.
  Status read_state(StepOptimizer& optimizer, const Parameter& p, OptimizerState which, std::uint64_t first,
                    std::span<float> out, Stream& stream);
  // The elements [first, second) of p this rank's optimizer holds: all of them, or its slice.
  std::pair<std::uint64_t, std::uint64_t> owned_elements(const Parameter& p) const;
  // Stages 1 and 2: every bucket of the values all-gathered now, once the optimizer's update
  // is done (a collective); nothing for stage 0.
  Status gather_parameters(StepOptimizer& optimizer, Stream& stream);
  // Writes the elements this rank owns of the given ones (every rank is given all of them).
  Status write_state(StepOptimizer& optimizer, const Parameter& p, OptimizerState which, std::uint64_t first,
                     std::span<const float> values);

 private:
  DataParallel() = default;
  Status lay_out(const Profile& profile, Module& model);
  Status bind_storage(Device& device);
  Status make_reducers(const Profile& profile, Device& device);
  Status make_fetch(const Profile& profile, Module& model, Device& device, bool time_stalls);
  Status add_pieces(Device& device);
  // Stage 3: the buckets `module` uses, in order, once each.
  Result<std::vector<std::size_t>> buckets_of(Module& module);
  Status acquire(Module& module, bool with_grads, Stream& stream);
  Status release(Module& module, Stream& stream);
  Result<std::size_t> index_of(const Parameter& p) const;
  // The elements [first, second) of tensor i, within [first, first + n), that rank r owns.
  std::pair<std::uint64_t, std::uint64_t> owned(std::size_t i, std::uint64_t first, std::uint64_t n, int r) const;
  // Runs fn(parameter, index) over the parameters `module` uses (own, then tied).
  template <typename Fn>
  Status for_used(Module& module, Fn fn);

  Communicator* dp_ = nullptr;
  std::unique_ptr<Communicator> one_rank_;  // stage 3 without a group
  StepOptimizer* optimizer_ = nullptr;      // stage 3: the latest step's, for its updates
  int stage_ = 0;
  OffloadTarget param_home_ = OffloadTarget::kNone;  // stage 3: offload.param.device
  bool last_micro_ = false;
  bool pipelined_ = false;
  DType value_dtype_ = DType::kF32, grad_dtype_ = DType::kF32;
  std::vector<Parameter*> params_;
  std::unordered_map<const Parameter*, std::size_t> index_;
  zero::FlatLayout layout_;
  DeviceBuffer values_;
  DeviceBuffer grads_;  // one rank and stage 0
  model::ParamUsers users_;
  std::unique_ptr<zero::GradBuckets> all_reduce_;  // stage 0 with dp ranks
  std::unique_ptr<zero::ShardedGrads> sharded_;    // stages 1 to 3
  std::unique_ptr<zero::ParamGather> gather_;      // stages 1 and 2
  std::unique_ptr<zero::ParamFetch> fetch_;        // stage 3
  OptimizerShard shard_;
  struct HostPiece {
    std::size_t piece = 0;   // in shard_.pieces
    std::size_t bucket = 0;
    std::uint64_t at = 0;    // within the bucket's slice
  };
  std::vector<HostPiece> host_pieces_;  // stage 3 with parameter offload: pieces with a host home or gradient
  static constexpr std::size_t kGatherStagingBytes = 1 << 20;
  DeviceBuffer gather_staging_;  // stages 1-3: read_state's broadcasts
};

}  // namespace strata::engine
