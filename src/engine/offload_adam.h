// src/engine/offload_adam.h — The offloaded StepOptimizer (ZeRO-Offload on one rank): fp32 master weights and both Adam
// moments homed in pinned host memory ([offload.optimizer] device = "cpu") or in NVMe swap
// ("nvme"), updated by the CPU Adam (src/cpu_adam), every byte of state moved by a tier manager
// (src/offload) so that its budgets hold and its statistics are complete.
//
// Layout. The parameters (with a ZeRO shard, strata/trainer.h's OptimizerShard: this rank's
// pieces of them) are laid end to end in one flat index space (zero/flat_layout.h), each
// starting on a 16-element (64-byte) boundary
// so that every CPU Adam range is cache-line aligned; padding elements have zero gradients and
// stay zero. The flat space is cut into chunks of C elements (C from
// offload.optimizer.buffer_size: 12 C bytes of state per chunk); chunk k is one tier-manager
// block [master | exp_avg | exp_avg_sq], each array `stride` elements (C rounded up to 1024, so
// the block is a multiple of 4 KiB).
//
// Gradients. When a parameter's gradient is final (after_backward of the last micro-step has
// been called for every module that owns or ties it, as model/param_users.h counts) its device
// gradient is copied into a pinned host buffer in the flat layout (like the weight buffer, a
// lease of the same tier manager as the state, so one host budget covers the rank's pinned
// memory) on a copy stream of its own,
// while backward goes on. The global norm and the inf/nan check run on the device over the
// device gradients with the device Adam's code (engine/grad_norm.h), so the clip coefficient
// is the same to the bit whatever the optimizer's home. With a shard a gradient is final only
// once the engine has reduced it across the group, so step() moves the pieces' gradients, and
// the norm is summed over the group.
//
// The update pipeline. Chunk k is acquired from the tier manager for writing (an NVMe home is
// read into a pinned host copy), updated in place by CPU Adam with the gradient chunk read in
// the same pass (grad_scale = clip / loss_scale), marked dirty and released; the updated weights
// (fp32 as they are, or the bf16/fp16 copy CPU Adam writes in the same pass) go to the device
// by asynchronous copies on the training stream. The tier manager's host budget is exactly
// buffer_count blocks: while chunk k is updated, chunks k+1 .. k+L are being read (acquired
// ahead, pipeline_read) and chunk k-1 is being written back (the eviction that makes room for
// k+L, pipeline_write). Without pipeline_write each chunk is flushed before the next starts
// (and the next chunk's read is only a prefetch hint); without pipeline_read nothing is
// acquired ahead. Without overlap, passes alternate direction, so
// the chunks a step leaves in the buffers are the first the next step updates. With overlap
// every pass runs in flat order; the tier manager then evicts along its trace of the pass (the
// chunk used furthest ahead) and prefetches the chunks that do not fit as buffers free, so a
// step reads about (chunks - buffers + 1) chunks, not all of them. With a host home every
// block is resident and the pipeline degenerates to updates in place.
//
// Overlap with the next forward (offload.optimizer.overlap_step, the default). step() computes
// the norm (which is also the inf/nan check), then hands the pass to a worker thread and
// returns; the pass runs in flat order (the order forward uses the parameters), and after each
// chunk its weights are on the device (the worker's own upload stream; a host function queued
// behind the chunk's copies counts it done). The next step's before_forward(module) waits only
// until the chunks that hold the module's parameters are done, so NVMe traffic and the update
// run under forward's compute: a step costs about backward + max(forward, pass) instead of
// forward + backward + pass. (On the host-emulated device the pass's copies and I/O share the
// CPU with forward, so the gain there is small.) The arithmetic is the same as without overlap:
// the same chunks, the same gradients, the same step count. Every other entry point (state
// access, checkpoints, the next step, destruction) first waits for the pass, and an error in
// the pass is returned from whichever call waits first. Without overlap, step() runs the pass
// itself, alternating direction as above.
//
// The delayed update (offload.optimizer.delayed_update, ZeRO-Offload's DPU). After
// delayed_update_warmup updates applied as without overlap, step() uploads the weights of the
// previous pass (behind this step's backward on the training stream), computes the norm, and
// hands the pass to the worker without any upload: the next forward and backward run on the
// weights from before this update while the pass runs under both, and the next step() waits
// for it. So step s+1's gradients are computed at the weights of step s-1 and applied to the
// masters of step s (one step stale), and a step costs about max(forward + backward, pass).
// The gradients are double-buffered in pinned memory: the pass reads one step's while the next
// backward fills the other. synchronize() (end of training, checkpoints) also uploads the
// pass's weights, so a resumed run and the run that saved continue from the same weights.
//
// Parameters on NVMe (ZeRO-Infinity, offload.param.device = "nvme"). The compute-dtype values of
// the pieces with a host home have no weight buffer: they live in a parameter swap
// (engine/value_swap.h) whose block k holds chunk k's values; the pass pins it for writing
// while it updates the chunk and releases it before the next (the swap keeps room for one).
//
// The update pipeline is in offload_adam_pass.cc; attachment, state access, the step and the
// hooks are in offload_adam.cc.
//
// Thread-safety: one caller thread at a time, as StepOptimizer; the worker thread is internal.#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cpu_adam/cpu_adam.h"
#include "engine/grad_norm.h"
#include "engine/value_swap.h"
#include "model/param_users.h"
#include "nvme/io_engine.h"
#include "nvme/swap_store.h"
#include "offload/tier_manager.h"
#include "strata/trainer.h"
#include "zero/flat_layout.h"

namespace strata::engine {

class OffloadAdam final : public StepOptimizer {
 public:
  OffloadAdam(const Profile& profile, Tier home)
      : profile_(profile), hyper_(adam_hyper(profile.optimizer)), home_(home) {}

  ~OffloadAdam() override;

  std::string name() const override { return home_ == Tier::kNvme ? "nvme-adam" : "host-adam"; }

  Status attach(Module& model, Device& device, Stream& stream, const OptimizerShard& shard) override;
  Status set_master(const Parameter& p, std::uint64_t first, std::span<const float> values) override {
    return write_state(p, OptimizerState::kMaster, first, values);
  }
  Status get_master(const Parameter& p, std::uint64_t first, std::span<float> out) override {
    return read_state(p, OptimizerState::kMaster, first, out);
  }

  Status read_state(const Parameter& p, OptimizerState which, std::uint64_t first, std::span<float> out) override;
  Status write_state(const Parameter& p, OptimizerState which, std::uint64_t first,
                     std::span<const float> values) override;
  Status set_updates(std::int64_t updates) override;
  Status after_backward(Module& module, bool last) override;
  Status before_forward(Module& module) override;
  std::span<const std::byte> host_values(std::size_t piece) const override;
  engine::ValueSwap* value_swap() override { return value_swap_.get(); }
  std::span<std::byte> host_grads(std::size_t piece) override;
  Status wait_for_update(std::span<Parameter* const> params) override;
  bool updated(std::span<Parameter* const> params) override;


  // Waits for the pass; with the delayed update, the weights it computed then go to the device
  // too, so that the device holds the masters' values (end of training, checkpoints).
  Status synchronize() override;

  Result<UpdateResult> step(const UpdateRequest& req) override;
  std::int64_t updates() const override { return updates_; }
  std::uint64_t device_bytes() const override { return sumsq_.device_bytes(); }
  std::optional<UpdatePassStats> last_pass() const override;
  std::optional<TierStats> tier_stats() const override {
    if (!tiers_) return std::nullopt;
    return tiers_->stats();
  }

 private:
  using Access = strata::Access;
  using ParamUsers = model::ParamUsers;

  static constexpr std::uint64_t kParamAlign = 16;        // elements: 64 B of fp32
  static constexpr std::uint64_t kChunkQuantum = 1024;    // elements: 12 KiB of state, a multiple of 4 KiB
  static constexpr std::uint64_t kStateBytes = 12;        // master + exp_avg + exp_avg_sq, fp32
  static constexpr std::uint64_t kSlotBytes = 4ULL << 20;  // swap slot: the I/O unit of a block
  static std::uint64_t round_up(std::uint64_t x, std::uint64_t q) { return (x + q - 1) / q * q; }

  // Piece i of pieces_ is tensor i of layout_: elements [first, first + count) of param.
  struct PieceState {
    Parameter* param = nullptr;
    std::uint64_t first = 0;
    std::uint64_t count = 0;
    DeviceView grad, value;
    std::size_t last_chunk = 0;  // the chunk holding its last element
    bool grad_offloaded = false;
  };
  struct Chunk {
    std::uint64_t first = 0;   // flat element
    std::uint64_t n = 0;
    std::uint64_t stride = 0;  // elements per state array in the block
    offload::BlockId block;
    std::vector<zero::FlatSegment> segments;  // its share of each parameter
  };

  // The flat layout of `model`'s parameters, or of the shard's pieces of them (see the file
  // comment), and the modules using each.
  Status lay_out(Module& model, Device& device, const OptimizerShard& shard);

  // Cuts the flat space into chunks of offload.optimizer.buffer_size bytes of state (at least
  // kChunkQuantum elements); returns the bytes of the largest chunk's block.
  std::uint64_t cut_chunks();

  // How many chunks from the first the pass must have done for `params` to hold their update.
  std::size_t chunks_needed(std::span<Parameter* const> params) const;

  // Waits for the pass running on the worker thread, if any; returns its status once.
  Status join();

  void reset_users() {
    users_.reset();
    for (PieceState& st : pieces_) st.grad_offloaded = false;
  }

  // Device gradient -> pinned host buffer on the copy stream, after the work enqueued so far
  // on the training stream (the backward that finished the gradient).
  Status offload_grad(std::size_t i);

  void to_value_dtype(const float* src, std::byte* dst, std::size_t n) const;

  // Runs fn(piece index, offset into the caller's range, count) over the pieces holding
  // elements [first, first + n) of p; elements no piece holds (another rank's) are an error.
  template <typename Fn>
  Status for_pieces(const Parameter& p, std::uint64_t first, std::uint64_t n, Fn fn) const {
    auto it = index_.find(&p);
    if (it == index_.end()) return invalid_argument(name() + ": parameter " + p.name() + " is not attached");
    if (first > p.numel() || n > p.numel() - first) {
      return invalid_argument(name() + ": elements [" + std::to_string(first) + ", " + std::to_string(first + n) +
                              ") are outside parameter " + p.name() + " (" + std::to_string(p.numel()) + ")");
    }
    std::uint64_t covered = 0;
    for (std::size_t i : it->second) {
      const PieceState& st = pieces_[i];
      const std::uint64_t lo = std::max(first, st.first), hi = std::min(first + n, st.first + st.count);
      if (lo >= hi) continue;
      STRATA_RETURN_IF_ERROR(fn(i, lo - first, hi - lo));
      covered += hi - lo;
    }
    if (covered != n) {
      return invalid_argument(name() + ": elements [" + std::to_string(first) + ", " + std::to_string(first + n) +
                              ") of " + p.name() + " are not all this rank's to update (" + std::to_string(covered) +
                              " are)");
    }
    return Status::OK();
  }

  // Runs `fn(state pointer, offset into the caller's span, count)` over the pieces of
  // elements [first, first + n) of `p`'s tensor `which`, chunk by chunk.
  template <typename Fn>
  Status access(const Parameter& p, OptimizerState which, std::uint64_t first, std::uint64_t n, Access mode, Fn fn) {
    if (device_ == nullptr) return failed_precondition(name() + ": attach() a model first");
    STRATA_RETURN_IF_ERROR(join());
    if (!accessed_) {
      tiers_->restart_trace();  // these accesses are not the pass's order: no replay, no warning
      accessed_ = true;
    }
    auto each_chunk = [&](std::size_t i, std::uint64_t at, std::uint64_t len) -> Status {
      const std::uint64_t base = layout_.offset(i) + first + at - pieces_[i].first;
      for (std::uint64_t done = 0; done < len;) {
        const std::size_t k = static_cast<std::size_t>((base + done) / chunk_elems_);
        const Chunk& c = chunks_[k];
        const std::uint64_t off = base + done - c.first;
        const std::uint64_t piece = std::min(len - done, c.n - off);
        STRATA_ASSIGN_OR_RETURN(offload::Pin pin, tiers_->acquire(c.block, Tier::kHost, mode));
        STRATA_RETURN_IF_ERROR(pin.wait());
        float* state = reinterpret_cast<float*>(pin.host_bytes().data()) + static_cast<std::uint64_t>(which) * c.stride + off;
        fn(state, at + done, piece);
        if (mode != Access::kRead) STRATA_RETURN_IF_ERROR(pin.mark_dirty());
        pin.release();
        done += piece;
      }
      return Status::OK();
    };
    return for_pieces(p, first, n, each_chunk);
  }

  // How a pass runs (see the file comment). kInline: in step(), weights to the device on the
  // training stream. kOverlapped: on the worker thread, in flat order, each chunk's weights on
  // the device (upload stream) before it counts as done. kDelayed: on the worker thread, the
  // weights left in the pinned buffer for the next step() to upload.
  enum class Pass { kInline, kOverlapped, kDelayed };

  // Every parameter's value from the pinned weight buffer to the device, on `stream`.
  Status upload_all(Stream& stream);

  // The chunk pipeline (see the file comment) over the gradients in buffer `slot`.
  // One pass over every chunk, timed into last_pass_.
  Status update_all(const AdamHyper& h, const AdamStep& at, Pass mode, std::size_t slot);
  Status update_chunks(const AdamHyper& h, const AdamStep& at, Pass mode, std::size_t slot);
  std::uint64_t nvme_traffic_so_far() const;
  // The squared norm of gradients the engine delivered to host memory, over the groups.
  Result<double> host_grad_squares() const;

  // Chunk c's updated values (`values`, in the weight buffer or the swap's block pinned in
  // `value_pin`) to the device homes of its pieces that have one, on `upload` (not for a
  // delayed pass: its step() uploads them); then the swap's block is marked written and released.
  Status store_values(const Chunk& c, const std::byte* values, offload::Pin& value_pin, Pass mode, Stream& upload);

  // Releases a pin of the parameter swap (none: nothing) once the copies enqueued from it on
  // `copied_on` (if any) are done: the swap keeps room for one written block only, so the
  // next one's pin must not wait behind a queued release.
  Status release_values(offload::Pin& pin, Stream* copied_on);

  // The flat elements [first, first + n) in the value dtype, in host memory: in the pinned
  // weight buffer, or in the parameter swap's block of their chunk (which they must not leave),
  // pinned in `pin` for `mode` until the caller releases it.
  Result<std::byte*> host_values_at(std::uint64_t first, std::uint64_t n, Access mode, offload::Pin& pin);

  // The end of the chunk holding flat element `flat`.
  std::uint64_t chunk_end(std::uint64_t flat) const { return (flat / chunk_elems_ + 1) * chunk_elems_; }

  Status make_value_swap(Device& device);

  Profile profile_;
  AdamHyper hyper_;
  Tier home_;
  Device* device_ = nullptr;
  Stream* stream_ = nullptr;
  DType value_dtype_ = DType::kF32;
  DType grad_dtype_ = DType::kF32;
  Communicator* group_ = nullptr;  // with a shard: the group the gradient norm is summed over
  Communicator* tp_ = nullptr;     // the tensor-parallel group of split parameters' shards
  Communicator* pp_ = nullptr;     // the pipeline's stages
  std::vector<const Parameter*> replicas_;  // counted in the norm by another stage
  bool grads_at_step_ = false;      // with a shard: the gradients are final when step() is called
  std::vector<PieceState> pieces_;
  std::unordered_map<const Parameter*, std::vector<std::size_t>> index_;  // its pieces
  zero::FlatLayout layout_;
  ParamUsers users_;
  std::vector<Chunk> chunks_;
  std::uint64_t chunk_elems_ = 0;
  offload::HostLease grads_host_[2];  // flat, grad dtype; the second only with the delayed update
  std::size_t grad_slot_ = 0;   // the buffer the next backward's gradients go to
  offload::HostLease values_host_;  // flat, value dtype: the weights on their way to the device
  bool host_homes_ = false;         // some piece's values have no device home (ZeRO-3 offload)
  std::unique_ptr<engine::ValueSwap> value_swap_;  // their home with offload.param.device = "nvme"
  std::unique_ptr<Stream> copy_stream_;
  std::unique_ptr<Stream> upload_stream_;  // the worker's weight copies
  std::unique_ptr<Event> grad_ready_;
  engine::GradSquaredNorm sumsq_;
  std::unique_ptr<Optimizer> adam_;
  // Destroyed in reverse order: the tier manager, then the swap store, then its engine.
  std::unique_ptr<nvme::IoEngine> engine_;
  std::unique_ptr<nvme::SwapStore> store_;
  std::unique_ptr<offload::TierManager> tiers_;
  std::int64_t updates_ = 0;
  bool accessed_ = true;  // state accessed outside a pass since the trace last restarted
  bool reverse_ = false;  // the direction of the next step's pass over the chunks
  // The pass on the worker thread: done_ chunks (in flat order) are on the device.
  std::thread worker_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  UpdatePassStats last_pass_;  // under mu_
  bool running_ = false;
  std::size_t done_ = 0;
  bool pass_delayed_ = false;    // the running pass is a delayed one (caller thread only)
  std::size_t pass_slot_ = 0;    // the gradient buffer it reads
  bool upload_pending_ = false;  // a delayed pass's weights are not on the device yet
  bool host_grads_ = false;  // the engine delivers every piece's gradient to grads_host_ (ZeRO-3 offload)
  Status worker_status_;
};

}  // namespace strata::engine
