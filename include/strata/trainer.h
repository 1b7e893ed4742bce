// strata/trainer.h — training of the GPT-2 model on one rank or as one rank of a data-parallel
// group (TrainerOptions::dp; strata/engine.h wraps a Trainer with its device for users): a
// Trainer runs the step (forward, backward, optimizer) on a Device, and a StepOptimizer seam
// owns the optimizer state, so that where master weights and Adam moments live (device memory
// here; host RAM or NVMe with offload) is a choice of backend, not of the training loop. With
// dp ranks, zero.stage says what each keeps (src/engine/data_parallel.h): everything (0), its
// shard of the optimizer state (1), and of the gradients too (2).
//
// A training step (Trainer::train_step), all on one device stream:
//   1. zero the parameter gradients;
//   2. for each of grad_accum micro-batches: copy the tokens in (strata/data.h's sampling),
//      forward (loss += mean cross-entropy / grad_accum), backward with dloss =
//      loss_scale / (grad_accum x dp) — gradients accumulate in the parameters' gradient views
//      and are reduced over the ranks as backward finishes them (on a pipeline stage, step 2
//      is the stage's instructions of parallel.schedule instead, src/engine/pipeline.h: the
//      same micro-batches and dloss, their forwards and backwards interleaved, the tied
//      embedding's gradient summed with the other end's and every gradient reduced once
//      after the stage's last backward; the loss comes from the last stage);
//   3. StepOptimizer::step(): global gradient norm and inf/nan check, clip coefficient
//      min(1, grad_clip / (norm + 1e-6)) as torch.nn.utils.clip_grad_norm_, then AdamW with
//      grad_scale = clip / loss_scale, skipping the update when the gradients are not finite;
//   4. fp16 only: dynamic loss scaling (DeepSpeed's rule: on overflow skip the step and, once
//      `hysteresis` overflows have been tolerated, halve the scale down to min_loss_scale;
//      double it after `scale_window` clean steps). fp32 and bf16 train with scale 1.
// The learning rate is the profile's constant optimizer.lr; weight decay applies to every
// parameter (one parameter group, as torch.optim.AdamW(model.parameters())).
//
// Thread-safety: a Trainer and its optimizer are used by one thread at a time.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/communicator.h"
#include "strata/data.h"
#include "strata/device.h"
#include "strata/model.h"
#include "strata/offload.h"
#include "strata/optimizer.h"
#include "strata/profile.h"
#include "strata/status.h"

namespace strata {

namespace engine {
class ValueSwap;  // src/engine/value_swap.h
}

// ---------------------------------------------------------------------------------------------
// The optimizer seam

// What one update needs from the training loop.
struct UpdateRequest {
  double lr = 3e-4;
  double loss_scale = 1.0;  // the gradients hold loss_scale times the true gradient
  double grad_clip = 0.0;   // clip the global norm to this; 0 = off
};

// The optimizer tensors of a parameter (for checkpoints): fp32 master weights and Adam moments.
enum class OptimizerState : std::uint8_t { kMaster = 0, kExpAvg = 1, kExpAvgSq = 2 };
std::string_view optimizer_state_name(OptimizerState which);  // "master", "exp_avg", "exp_avg_sq"

struct UpdateResult {
  double grad_norm = 0.0;  // L2 norm of the true gradient before clipping (inf or NaN when not finite)
  bool finite = true;      // every gradient element is finite
  bool applied = false;    // false: the update was skipped because the gradients were not finite
};

// What ZeRO stage 3 gathered (src/zero/param_fetch.h), in elements of the flat layout (each
// bucket's padding included).
struct GatherStats {
  std::uint64_t max_live = 0;       // zero.max_live_parameters
  std::uint64_t held = 0;           // elements of gathered buffers now (resident, retiring, spare)
  std::uint64_t peak_held = 0;      // the most held at once
  std::uint64_t persistent = 0;     // elements of the buckets that stay whole (not in `held`)
  std::uint64_t gathers = 0;        // all-gathers issued, persistent ones included
  std::uint64_t gathered = 0;       // their elements
  std::uint64_t prefetched = 0;     // gathers issued ahead of need
  std::uint64_t on_demand = 0;      // gathers a module had to issue and wait for itself
  std::uint64_t reused = 0;         // uses served by a bucket kept gathered (max_reuse_distance)
  std::uint64_t order_changes = 0;  // steps whose module order departed from the recorded one
  // Parameters on NVMe (offload.param.device = "nvme"): block pins the gathers copied from,
  // those taken ahead (read NVMe -> host before the gather came), and those whose bytes were
  // not in host memory when the gather came, so that the trainer waited for NVMe.
  std::uint64_t swap_reads = 0;
  std::uint64_t swap_ahead = 0;
  std::uint64_t swap_waits = 0;
  double swap_wait_s = 0;  // the trainer's time in those waits
  // With TrainerOptions::time_gather_stalls: seconds the training stream waited for gathers,
  // from timestamps the stream itself takes around its waits.
  double stall_s = 0;
};

// A piece of one parameter that a rank's optimizer updates: elements [first, first +
// grad.count()) of `param`, whose reduced gradient `grad` holds, and whose device values (the
// compute copy the optimizer keeps in step with its masters) are `value`; an empty `value`
// means that slice of the parameter's bound value. ZeRO stage 3 binds a parameter only while
// it is gathered, so it names the shard's own storage here. With `host_home` (ZeRO-3's
// parameter offload) the piece has no device values at all: the optimizer keeps them in host
// memory only (host_values()), and the engine copies them to the device when it gathers. With
// `host_grad` (the same offload) it has no device gradient either: the engine writes the
// reduced gradient into the optimizer's host gradients (host_grads()) as backward produces it,
// `grad` is empty and `count` gives the piece's size.
struct ParamPiece {
  Parameter* param = nullptr;
  std::uint64_t first = 0;
  DeviceView grad;
  DeviceView value;
  bool host_home = false;
  bool host_grad = false;
  std::uint64_t count = 0;
  // The elements the piece covers.
  std::uint64_t size() const { return host_grad ? count : grad.count(); }
  // `value`, or the slice of the bound value, or empty with a host home; fails when none holds
  // the piece.
  Result<DeviceView> device_value() const;
};

// The part of the model a rank's optimizer owns. Empty (the default): every parameter whole,
// with the gradient bound to it, final once its last user's backward is done. With pieces, the
// gradients are final only when step() is called (a data-parallel engine reduces them after
// backward): with ZeRO stage 0 every parameter whole, with stages 1 to 3 (src/zero) this rank's
// pieces of them, and the data-parallel `group` whose ranks own the rest, over which the
// gradient norm is summed. An optimizer keeps state only for its pieces; their master weights
// and state may be read and written only there (set_master then updates the device values of
// those elements only: the engine all-gathers the rest). With tensor parallelism, `tp` is the
// group the split parameters' shards lie across: the norm sums their squares over it and
// counts the parameters every tp rank holds whole once. With pipeline parallelism, `pp` is the
// group of the stages, which hold the other parameters: the norm sums over it too, and counts
// `replicas` (the last stage's copy of the tied wte, whose gradient the engine made equal to the
// first stage's) on the other stage only.
struct OptimizerShard {
  std::vector<ParamPiece> pieces;
  Communicator* group = nullptr;
  Communicator* tp = nullptr;
  Communicator* pp = nullptr;
  std::vector<const Parameter*> replicas;
  bool sharded() const { return !pieces.empty(); }
};

// An offloaded optimizer's update pass, from its first chunk's read to its last chunk's
// update: its wall time and the bytes its swaps (the state's, and the parameters' with
// offload.param.device = "nvme") moved between NVMe and host meanwhile, whoever asked for
// them (forward's parameter reads too, when the pass overlaps it): nvme_bytes / seconds is the
// drive's throughput while the pass ran.
struct UpdatePassStats {
  std::int64_t passes = 0;      // passes ended so far
  double seconds = 0.0;         // the last one's
  std::uint64_t nvme_bytes = 0;  // moved during the last one
  double nvme_bytes_per_s() const { return seconds > 0 ? static_cast<double>(nvme_bytes) / seconds : 0.0; }
};

// Owns fp32 master weights and Adam moments for a model's parameters wherever it keeps them,
// and keeps the parameters' device values (the compute copy) in step with the masters.
class StepOptimizer {
 public:
  virtual ~StepOptimizer() = default;

  // "device-adam", ...
  virtual std::string name() const = 0;

  // Takes charge of `model`'s parameters, which are bound to device storage on `device`, or of
  // the pieces of them `shard` names; allocates the state. Later calls enqueue on `stream`.
  virtual Status attach(Module& model, Device& device, Stream& stream, const OptimizerShard& shard = {}) = 0;

  // Master weights, elements [first, first + n) of `p`, in fp32. set_master also refreshes the
  // parameter's device value; both return once the copy is complete.
  virtual Status set_master(const Parameter& p, std::uint64_t first, std::span<const float> values) = 0;
  virtual Status get_master(const Parameter& p, std::uint64_t first, std::span<float> out) = 0;

  // Called after `module`'s backward in every micro-step, with `last` true in the step's last
  // micro-step, so a backend can start moving gradients while backward continues. A
  // parameter's gradient is final once the last module using it in backward order is done:
  // its own module, except for tied parameters (wte is used by lm_head, which runs first in
  // backward, and is final only after "embeddings").
  virtual Status after_backward(Module& module, bool last) {
    (void)module;
    (void)last;
    return Status::OK();
  }

  // Called before `module`'s forward (and its recompute): a backend whose update of the
  // previous step may still be running returns once the parameters `module` uses (its own and
  // tied ones) hold their updated values on the device.
  virtual Status before_forward(Module& module) {
    (void)module;
    return Status::OK();
  }
  // Returns once the device values of this rank's elements of `params` hold their update (an
  // update running in the background may still be busy with others): what a sharded engine
  // waits for before it all-gathers them.
  virtual Status wait_for_update(std::span<Parameter* const> params) {
    (void)params;
    return Status::OK();
  }
  // Whether wait_for_update(params) would return at once (it never waits).
  virtual bool updated(std::span<Parameter* const> params) {
    (void)params;
    return true;
  }
  // Where the compute-dtype values of shard piece `piece` (its index in attach()'s shard) live
  // in host memory, valid while attached: the updated weights once wait_for_update() says so.
  // Empty for an optimizer that keeps none there (the device Adam), which cannot serve pieces
  // with a host home.
  virtual std::span<const std::byte> host_values(std::size_t piece) const {
    (void)piece;
    return {};
  }
  // With offload.param.device = "nvme": the swap in which the optimizer homes the values of
  // the pieces with a host home (engine/value_swap.h), host_values() then being empty;
  // nullptr when it keeps none there.
  virtual engine::ValueSwap* value_swap() { return nullptr; }
  // Where the gradient of shard piece `piece` lives in host memory (its gradient dtype), for a
  // piece with a host gradient: the engine writes it there before step(). Empty for an
  // optimizer that keeps none (the device Adam).
  virtual std::span<std::byte> host_grads(std::size_t piece) {
    (void)piece;
    return {};
  }

  // One update from the gradients in the parameters' gradient views (see the file comment).
  // The device values are updated (or, when skipped, unchanged) in stream order, or, for a
  // backend that overlaps its update with the next forward, by the time before_forward
  // returns for the modules that use them (an error in that background work is returned by the
  // next call that waits for it).
  virtual Result<UpdateResult> step(const UpdateRequest& request) = 0;

  // Returns once any update still running in the background is complete, with its status.
  virtual Status synchronize() { return Status::OK(); }

  // Updates applied so far (skipped steps do not count); Adam's bias correction uses it.
  virtual std::int64_t updates() const = 0;
  // Device bytes the optimizer state occupies.
  virtual std::uint64_t device_bytes() const = 0;

  // Any optimizer tensor, elements [first, first + n) of `p`, in fp32, wherever it lives
  // (checkpoints). Writing kMaster also refreshes the device value, as set_master. Both return
  // once the copy is complete. The defaults reach only the master weights.
  virtual Status read_state(const Parameter& p, OptimizerState which, std::uint64_t first, std::span<float> out) {
    if (which == OptimizerState::kMaster) return get_master(p, first, out);
    return unavailable("optimizer " + name() + " does not expose its " + std::string(optimizer_state_name(which)));
  }
  virtual Status write_state(const Parameter& p, OptimizerState which, std::uint64_t first,
                             std::span<const float> values) {
    if (which == OptimizerState::kMaster) return set_master(p, first, values);
    return unavailable("optimizer " + name() + " does not expose its " + std::string(optimizer_state_name(which)));
  }
  // Sets the count updates() reports (resuming from a checkpoint).
  virtual Status set_updates(std::int64_t updates) {
    (void)updates;
    return unavailable("optimizer " + name() + " cannot restore its update count");
  }
  // Statistics of the tier manager that moves the state; none for a backend without one.
  virtual std::optional<TierStats> tier_stats() const { return std::nullopt; }
  // The last update pass that ended; none for a backend that moves no state.
  virtual std::optional<UpdatePassStats> last_pass() const { return std::nullopt; }
};

// The optimizer the profile's [optimizer] section describes (adam or adamw), with master
// weights and moments in device memory, updated by Device::adam_step.
Result<std::unique_ptr<StepOptimizer>> make_device_adam(const OptimizerConfig& config);

// The optimizer the profile's [offload.optimizer] device asks for, never another: "none" is
// make_device_adam; "cpu" and "nvme" are make_offload_adam.
Result<std::unique_ptr<StepOptimizer>> make_step_optimizer(const Profile& profile);

// CPU Adam over fp32 master weights and moments homed in pinned host memory ("cpu") or in NVMe
// swap ("nvme"), moved by a tier manager; see src/engine/offload_adam.cc.
Result<std::unique_ptr<StepOptimizer>> make_offload_adam(const Profile& profile);

// The Adam settings of a profile's [optimizer] section (lr is per request).
AdamHyper adam_hyper(const OptimizerConfig& config);

// ---------------------------------------------------------------------------------------------
// The trainer

struct TrainerOptions {
  // Synchronise the stream after the forward passes, the backward passes and the optimizer
  // step so that StepStats splits the step time among them (benchmarks); costs a little
  // overlap.
  bool phase_timing = false;
  // The data-parallel group this trainer is one rank of (null: one rank). Its size must be
  // parallel.dp. Each rank reads its rows of the global batch (strata/data.h), the gradients are
  // reduced in buckets of zero.reduce_bucket_size as backward proceeds (zero.overlap_comm:
  // all-reduced with stage 0, reduce-scattered to their owners with stages 1 to 3), and the
  // ranks' updates agree; the loss is the global mean (src/engine/data_parallel.h).
  // REQUIRES: outlives the trainer.
  Communicator* dp = nullptr;
  // The tensor-parallel group this trainer is one rank of (null: tp = 1). Its size must be
  // parallel.tp. The model holds this rank's shards (strata/model.h's GptConfig, Megatron's
  // layers); every tp rank of a dp rank reads the same rows, and ZeRO shards each rank's
  // parameters over the dp group of its tp rank.
  // REQUIRES: outlives the trainer.
  Communicator* tp = nullptr;
  // The pipeline group this trainer is a stage of (null: pp = 1); its size must be parallel.pp.
  // The model holds this stage's chunks (strata/model.h's GptConfig); a step runs the
  // parallel.schedule's instructions for this stage (src/engine/pipeline.h).
  // REQUIRES: outlives the trainer.
  Communicator* pp = nullptr;
  // Pipeline stages: record when the stream ran each compute instruction of a step
  // (Trainer::pipeline_timeline(); two host functions per instruction).
  bool pipeline_timestamps = false;
  // ZeRO stage 3: time the training stream's waits for parameter gathers (GatherStats::stall_s;
  // two host functions per module use).
  bool time_gather_stalls = false;
};

// One compute instruction of a pipeline stage's latest step: 'F' forward, 'B' backward (whole, or
// its input-gradient half), 'W' the weight-gradient half of zero-bubble schedules; when the
// stream ran it, in seconds of std::chrono::steady_clock (one clock for the processes of a host).
struct PipelineTime {
  char op = 'F';
  int micro = 0, chunk = 0;
  double start = 0, end = 0;
};

// The loss scaler's state (engine/loss_scaler.h), saved in checkpoints.
struct LossScaleState {
  double scale = 1.0;
  int clean_steps = 0;     // consecutive clean steps since the last change
  int tolerance_left = 1;  // overflows still tolerated before the next halving
};

struct StepStats {
  std::int64_t step = 0;        // 1-based number of this step
  double loss = 0.0;            // mean cross-entropy over the step's tokens
  double grad_norm = 0.0;       // global gradient norm before clipping
  double lr = 0.0;
  double loss_scale = 1.0;      // the scale this step's backward used
  bool skipped = false;         // gradients were not finite; no update
  std::uint64_t tokens = 0;     // tokens trained on in this step
  double seconds = 0.0;         // wall time of the step
  double tokens_per_s = 0.0;
  double forward_s = 0.0;       // with TrainerOptions::phase_timing, else 0
  double backward_s = 0.0;
  double optimizer_s = 0.0;
};

class Trainer {
 public:
  // Builds the GPT of profile.train (dimensions, precision, activation checkpointing), binds
  // its parameters and gradients to device memory, prepares activations for
  // train.micro_batch, attaches `optimizer` (the device Adam of profile.optimizer when null)
  // and initialises the weights from the counter-based generator with train.seed.
  // Device memory that does not fit is an out-of-memory Status naming what needed it.
  static Result<std::unique_ptr<Trainer>> create(const Profile& profile, Device& device,
                                                 std::unique_ptr<StepOptimizer> optimizer = nullptr,
                                                 const TrainerOptions& options = {});
  ~Trainer();

  Gpt& model();
  StepOptimizer& optimizer();
  Device& device();
  const Profile& profile() const;
  // Steps completed; the next train_step() is step steps_done() + 1 and samples data step
  // steps_done() (0-based, strata/data.h).
  std::int64_t steps_done() const;
  double loss_scale() const;
  LossScaleState loss_scale_state() const;
  // Continues a run from a checkpoint: the next train_step() is step steps_done + 1 (and
  // samples data step steps_done) with this loss-scaler state.
  Status restore_progress(std::int64_t steps_done, const LossScaleState& scale);
  // Tokens per step: micro_batch x grad_accum x seq_len.
  std::uint64_t tokens_per_step() const;

  // One training step on `data` (checked against the model's vocabulary and seq_len).
  Result<StepStats> train_step(const TokenDataset& data);

  // The data-parallel group this trainer is one rank of, and the ZeRO stage that runs
  // (zero.stage with more than one rank; 0 for one rank, whose one shard is the whole model).
  int dp_rank() const;
  int dp_size() const;
  int zero_stage() const;
  // Device bytes of the parameters' values and gradients.
  struct ParameterBytes {
    std::uint64_t values = 0;     // every parameter, in the compute dtype
    std::uint64_t gradients = 0;  // every gradient, or (ZeRO stage 2) this rank's shard of them
    std::uint64_t buckets = 0;    // ZeRO stage 2: the slots of the gradient buckets open in backward
    std::uint64_t staging = 0;    // ZeRO stages 1-3: the buffer gathered state reads pass through
    std::uint64_t gathered = 0;   // ZeRO stage 3: the most bytes of gathered parameters held at once
    std::uint64_t total() const { return values + gradients + buckets + staging + gathered; }
  };
  ParameterBytes parameter_bytes() const;
  // This rank's device memory: the most it has held, what holds it, and ZeRO's model-state
  // share for the stage, dtypes and homes in use (src/engine/data_parallel.h states it).
  struct DeviceMemory {
    std::uint64_t peak = 0;          // the device's most bytes in use since it was made
    std::uint64_t activations = 0;   // the model's activation allocation (every pipeline slot)
    ParameterBytes parameters;       // values, gradients and the ZeRO stage's buffers
    // The values, gradients and optimizer state on the device, as allocated.
    std::uint64_t model_state = 0;
    std::uint64_t batch = 0;         // the token and loss buffers (a pipeline stage's too)
    std::uint64_t elements = 0;      // parameter elements of the model part this rank runs
    double state_per_element = 0;    // ZeRO's device model-state bytes per element
    // ZeRO's model-state bytes: state_per_element x elements.
    double formula_bytes() const { return state_per_element * static_cast<double>(elements); }
    // What the model state takes beyond the formula: each tensor's alignment to 256 bytes in
    // the layout, the shards' rounding, ZeRO stage 3's persistent parameters (whole on every
    // rank) and the optimizer's scalars.
    std::uint64_t beyond_share() const {
      return static_cast<std::uint64_t>(std::max(0.0, static_cast<double>(model_state) - formula_bytes()));
    }
    // What the formula leaves out: the gradient bucket slots, the staging, the gather window's
    // peak, beyond_share() and the batch.
    std::uint64_t buffer_bytes() const {
      return parameters.buckets + parameters.staging + parameters.gathered + beyond_share() + batch;
    }
  };
  DeviceMemory device_memory() const;
  // ZeRO stage 3's parameter gathers since the trainer was made (all zero for other stages).
  GatherStats gather_stats() const;
  // With the parameters on NVMe (offload.param.device = "nvme"): their swap's tier figures.
  std::optional<TierStats> parameter_tier_stats() const;
  // The data-parallel group (null for one rank), and the elements [first, second) of p whose
  // optimizer state this rank holds (all of them unless ZeRO stages 1 to 3 shard it).
  Communicator* dp_group() const;
  std::pair<std::uint64_t, std::uint64_t> owned_elements(const Parameter& p) const;

  // Optimizer tensor `which` of elements [first, first + out.size()) of p, in fp32, wherever
  // and on whichever rank it lives. With ZeRO stages 1 to 3 a collective of the data-parallel
  // group: every rank calls it with the same arguments.
  Status read_state(const Parameter& p, OptimizerState which, std::uint64_t first, std::span<float> out);
  // Writes the elements of the given ones that this rank holds (every rank is given them all);
  // writing kMaster also refreshes the device values, on every rank by the next step.
  Status write_state(const Parameter& p, OptimizerState which, std::uint64_t first, std::span<const float> values);

  // Makes every parameter's device value the updated one on every rank (ZeRO stages 1 and 2
  // all-gather the slices the other ranks updated, which the next step's forward would do
  // anyway; stage 3 drops what it holds gathered, since it gathers on use); a collective.
  // Nothing to do otherwise.
  Status gather_parameters();

  // Weights as safetensors with Hugging Face GPT-2 names and whole-tensor shapes, from the fp32
  // master weights, written as F32, BF16 or F16: the same file whatever the grid. With ZeRO
  // stages 1 to 3 or tensor parallelism a collective: every rank calls it and global rank 0 of
  // the grid writes the file.
  Status export_weights(const std::string& path, DType dtype = DType::kF32);
  // Replaces the master weights (and device values) with a safetensors file's; the file must
  // match the whole model (see model/safetensors.h), and each tp rank takes its shards of it.
  // The optimizer moments are left as they are.
  Status import_weights(const std::string& path);

  // Whole-tensor access to the fp32 state, whatever the grid (exports, imports, checkpoints).
  // read_whole_state: the whole tensor `p` is this rank's part of (without wte's padding rows),
  // on every rank; a collective over the dp group (ZeRO shards) and the tp group where they
  // hold parts of it. write_whole_state: from the whole tensor, each rank keeps its elements.
  Status read_whole_state(const Parameter& p, OptimizerState which, std::vector<float>* whole);
  Status write_whole_state(const Parameter& p, OptimizerState which, std::span<const float> whole);
  // read_model_state: the whole tensor named `name`, wherever it lives: with pipeline stages a
  // collective of every rank of the grid (each passes the same name), the stage holding it
  // (the first stage for the tied wte) reading it as read_whole_state does and the others
  // adding zeros over the pp group. write_model_state: every rank keeps its elements, if it
  // holds the tensor (both copies of the tied wte).
  Status read_model_state(const std::string& name, OptimizerState which, std::vector<float>* whole);
  Status write_model_state(const std::string& name, OptimizerState which, std::span<const float> whole);
  // The model with every tensor whole (tp = 1, pp = 1): the names and shapes of exchange files
  // and checkpoints.
  Result<std::unique_ptr<Gpt>> whole_model() const;
  // The tensor-parallel and pipeline groups (null for tp = 1, pp = 1).
  Communicator* tp_group() const;
  Communicator* pp_group() const;
  // With TrainerOptions::pipeline_timestamps, the latest step's compute instructions of this
  // stage, in order (empty without a pipeline).
  std::vector<PipelineTime> pipeline_timeline() const;

 private:

  struct Impl;
  explicit Trainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata
