// The offloaded StepOptimizer (ZeRO-Offload on one rank): fp32 master weights and both Adam
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
// Thread-safety: one caller thread at a time, as StepOptimizer; the worker thread is internal.
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cpu_adam/cpu_adam.h"
#include "engine/grad_norm.h"
#include "engine/value_swap.h"
#include "kernels/numeric.h"
#include "model/param_users.h"
#include "nvme/io_engine.h"
#include "nvme/swap_store.h"
#include "offload/tier_manager.h"
#include "strata/log.h"
#include "strata/trainer.h"
#include "strata/units.h"
#include "zero/flat_layout.h"

namespace strata {

std::string_view optimizer_state_name(OptimizerState which) {
  switch (which) {
    case OptimizerState::kMaster:
      return "master";
    case OptimizerState::kExpAvg:
      return "exp_avg";
    case OptimizerState::kExpAvgSq:
      return "exp_avg_sq";
  }
  return "unknown";
}

namespace {

constexpr std::uint64_t kParamAlign = 16;       // elements: 64 B of fp32
constexpr std::uint64_t kChunkQuantum = 1024;   // elements: 12 KiB of state, a multiple of 4 KiB
constexpr std::uint64_t kStateBytes = 12;       // master + exp_avg + exp_avg_sq, fp32
constexpr std::uint64_t kSlotBytes = 4ULL << 20; // swap slot: the I/O unit of a block

std::uint64_t round_up(std::uint64_t x, std::uint64_t q) { return (x + q - 1) / q * q; }

using model::ParamUsers;

class OffloadAdam final : public StepOptimizer {
 public:
  OffloadAdam(const Profile& profile, Tier home)
      : profile_(profile), hyper_(adam_hyper(profile.optimizer)), home_(home) {}

  ~OffloadAdam() override {
    join().ignore();
    if (copy_stream_) copy_stream_->synchronize().ignore();
    if (upload_stream_) upload_stream_->synchronize().ignore();
    if (stream_) stream_->synchronize().ignore();
    for (offload::HostLease& g : grads_host_) g.release();  // leases of the tier manager, before it
    values_host_.release();
    tiers_.reset();  // before the swap store and the engine it reads from
    if (store_) store_->close().ignore();
  }

  std::string name() const override { return home_ == Tier::kNvme ? "nvme-adam" : "host-adam"; }

  Status attach(Module& model, Device& device, Stream& stream, const OptimizerShard& shard) override {
    if (device_ != nullptr) return failed_precondition(name() + ": attach() may be called once");
    device_ = &device;
    stream_ = &stream;
    group_ = shard.group;
    grads_at_step_ = shard.sharded();
    const OptimizerOffloadConfig& oc = profile_.offload_optimizer;

    STRATA_RETURN_IF_ERROR(lay_out(model, device, shard));
    const std::uint64_t flat = layout_.total();
    const std::uint64_t max_block = cut_chunks();
    std::uint64_t state_bytes = 0;
    for (const Chunk& c : chunks_) state_bytes += c.stride * kStateBytes;

    // Pinned host memory: gradients and updated weights in the flat layout, plus the state
    // blocks the tier manager keeps (all of them with a host home, buffer_count with NVMe).
    const std::uint64_t grad_bytes = flat * dtype_size(grad_dtype_);
    // With parameters on NVMe the values live in a swap of their own (engine/value_swap.h)
    // with its own pinned buffers, offload.param.buffer_count x buffer_size.
    const bool swap_values = host_homes_ && profile_.offload_param.device == OffloadTarget::kNvme;
    const std::uint64_t value_bytes = swap_values ? 0 : flat * dtype_size(value_dtype_);
    const std::uint64_t value_pool =
        swap_values ? static_cast<std::uint64_t>(profile_.offload_param.buffer_count) * profile_.offload_param.buffer_size : 0;
    if (home_ == Tier::kNvme && oc.buffer_count < 2) {
      return invalid_argument("offload.optimizer.buffer_count = " + std::to_string(oc.buffer_count) +
                              ": the NVMe pipeline needs at least 2 pinned buffers (one updated, one in transfer)");
    }
    const std::uint64_t cached = home_ == Tier::kNvme
                                     ? std::min<std::uint64_t>(static_cast<std::uint64_t>(oc.buffer_count), chunks_.size()) * max_block
                                     : state_bytes;
    // The delayed update reads one step's gradients while the next backward writes the other's.
    const std::uint64_t grad_buffers = oc.delayed_update ? 2 : 1;
    const std::uint64_t pinned =
        grad_buffers * grad_bytes + value_bytes + value_pool + cached + std::min<std::uint64_t>(max_block, kSlotBytes);
    if (pinned > profile_.memory.host_budget) {
      return out_of_memory(name() + ": " + std::to_string(flat) + " parameters need " + format_bytes_human(pinned) +
                           " of pinned host memory (gradients " + format_bytes_human(grad_buffers * grad_bytes) + ", weights " +
                           format_bytes_human(value_bytes + value_pool) + ", optimizer state " + format_bytes_human(cached) +
                           (home_ == Tier::kNvme ? " in buffer_count buffers" : "") + ") but memory.host_budget is " +
                           format_bytes_human(profile_.memory.host_budget) +
                           (home_ == Tier::kNvme ? "; raise the budget or lower offload.optimizer.buffer_size"
                                                 : "; raise the budget or use offload.optimizer.device = \"nvme\""));
    }
    STRATA_ASSIGN_OR_RETURN(copy_stream_, device.create_stream("optimizer-grads"));
    STRATA_ASSIGN_OR_RETURN(upload_stream_, device.create_stream("optimizer-weights"));
    STRATA_ASSIGN_OR_RETURN(grad_ready_, device.create_event());
    STRATA_ASSIGN_OR_RETURN(sumsq_, engine::GradSquaredNorm::create(device));
    STRATA_ASSIGN_OR_RETURN(adam_, make_cpu_adam({}));

    // The tiers.
    offload::TierOptions to;
    to.device_budget = 0;  // the state is never acquired on the device
    // NVMe <-> host transfers use the pinned copies themselves; the manager's one staging
    // buffer (for NVMe <-> device, unused here) also sets the swap slot size of a block.
    to.staging_buffers = 1;
    to.staging_buffer_size = std::min<std::uint64_t>(round_up(max_block, 4096), kSlotBytes);
    // The gradient and weight staging are leases of the same manager: one host budget for all.
    to.host_budget = round_up(cached, 4096) + to.staging_buffer_size + grad_buffers * round_up(std::max<std::uint64_t>(grad_bytes, 1), 4096) +
                     round_up(std::max<std::uint64_t>(value_bytes, 1), 4096);
    // Eviction and read-ahead. Without overlap, passes alternate direction and least-recently-
    // used eviction writes back the chunk updated longest ago. With overlap every pass runs in
    // flat order, a cycle on which LRU misses every chunk; the manager's trace of the pass then
    // evicts the chunk used furthest ahead (Belady), and prefetches along the trace as soon as a
    // buffer frees, so the chunks that do not fit are read while forward and backward run.
    to.tracing = home_ == Tier::kNvme && oc.overlap_step && !oc.delayed_update;
    to.prefetch_bytes = to.tracing ? (static_cast<std::uint64_t>(oc.buffer_count) + 1) * round_up(max_block, 4096) : 0;
    if (home_ == Tier::kNvme) {
      if (oc.nvme_path.empty()) {
        return invalid_argument("offload.optimizer.nvme_path: device = \"nvme\" needs at least one swap directory");
      }
      STRATA_ASSIGN_OR_RETURN(engine_, nvme::make_io_engine(profile_.nvme));
      nvme::SwapStoreOptions so;
      so.paths = oc.nvme_path;
      // Extents are padded to the direct-I/O alignment on every path a block stripes over.
      so.capacity = state_bytes + chunks_.size() * oc.nvme_path.size() * 2 * 4096;
      auto store = nvme::SwapStore::create(so, *engine_);
      if (!store.ok()) return store.status().with_context(name() + ": optimizer state swap (" + format_bytes_human(state_bytes) + ")");
      store_ = std::move(*store);
    }
    STRATA_ASSIGN_OR_RETURN(tiers_, offload::TierManager::create(device, store_.get(), to));
    for (std::uint64_t i = 0; i < grad_buffers; ++i) {
      STRATA_ASSIGN_OR_RETURN(grads_host_[i], tiers_->lease_host(name() + " gradients", grad_bytes));
      std::memset(grads_host_[i].data(), 0, grads_host_[i].size());
    }
    if (swap_values) {
      STRATA_RETURN_IF_ERROR(make_value_swap(device));
    } else {
      STRATA_ASSIGN_OR_RETURN(values_host_, tiers_->lease_host(name() + " weights on their way to the device", value_bytes));
    }
    for (std::size_t k = 0; k < chunks_.size(); ++k) {
      offload::BlockSpec spec;
      spec.name = "optimizer.chunk." + std::to_string(k);
      spec.bytes = chunks_[k].stride * kStateBytes;
      spec.home = home_;
      spec.fastest = Tier::kHost;
      auto id = tiers_->register_block(spec);
      if (!id.ok()) return id.status().with_context(name() + ": optimizer state chunk " + std::to_string(k));
      chunks_[k].block = *id;
    }
    STRATA_LOG(kInfo) << name() << ": " << flat << " parameters, " << chunks_.size() << " chunks of " << chunk_elems_
                      << " (" << format_bytes_human(state_bytes) << " of fp32 state homed in " << tier_name(home_)
                      << "), " << format_bytes_human(to.host_budget) << " of pinned buffers, CPU Adam " << adam_->name();
    reset_users();
    return Status::OK();
  }

  Status set_master(const Parameter& p, std::uint64_t first, std::span<const float> values) override {
    return write_state(p, OptimizerState::kMaster, first, values);
  }
  Status get_master(const Parameter& p, std::uint64_t first, std::span<float> out) override {
    return read_state(p, OptimizerState::kMaster, first, out);
  }

  Status read_state(const Parameter& p, OptimizerState which, std::uint64_t first, std::span<float> out) override {
    return access(p, which, first, out.size(), Access::kRead, [&](float* state, std::uint64_t at, std::uint64_t n) {
      std::memcpy(out.data() + at, state, n * sizeof(float));
    });
  }

  Status write_state(const Parameter& p, OptimizerState which, std::uint64_t first,
                     std::span<const float> values) override {
    STRATA_RETURN_IF_ERROR(access(p, which, first, values.size(), Access::kWrite,
                                  [&](float* state, std::uint64_t at, std::uint64_t n) {
                                    std::memcpy(state, values.data() + at, n * sizeof(float));
                                  }));
    if (which != OptimizerState::kMaster) return Status::OK();
    // The device value follows the master (rounded for bf16/fp16), staged in the weight buffer
    // (or the parameter swap's block, chunk by chunk, released once copied).
    const std::size_t vs = dtype_size(value_dtype_);
    auto upload = [&](std::size_t i, std::uint64_t at, std::uint64_t len) -> Status {
      const PieceState& st = pieces_[i];
      for (std::uint64_t done = 0; done < len;) {
        const std::uint64_t off = first + at + done - st.first;
        const std::uint64_t flat = layout_.offset(i) + off;
        const std::uint64_t part = std::min(len - done, chunk_end(flat) - flat);
        offload::Pin pin;
        STRATA_ASSIGN_OR_RETURN(std::byte* dst, host_values_at(flat, part, Access::kWrite, pin));
        to_value_dtype(values.data() + at + done, dst, part);
        if (pin.valid()) STRATA_RETURN_IF_ERROR(pin.mark_dirty());
        const bool copied = !st.value.empty();  // else a host home: the buffer or the swap is its home
        if (copied) {
          STRATA_ASSIGN_OR_RETURN(DeviceView dv, st.value.slice(off, part));
          STRATA_RETURN_IF_ERROR(device_->copy_to_device(dv.range(), {dst, part * vs}, *stream_));
        }
        STRATA_RETURN_IF_ERROR(release_values(pin, copied ? stream_ : nullptr));
        done += part;
      }
      return Status::OK();
    };
    Status st = for_pieces(p, first, values.size(), upload);
    Status synced = stream_->synchronize();  // the copies have read the staged bytes
    return st.ok() ? synced : st;
  }

  Status set_updates(std::int64_t updates) override {
    if (updates < 0) return invalid_argument(name() + ": the update count must not be negative");
    STRATA_RETURN_IF_ERROR(join());
    updates_ = updates;
    return Status::OK();
  }

  Status after_backward(Module& module, bool last) override {
    // Host gradients: the engine is about to write this step's into the buffer an overlapped
    // pass of the previous step reads (it has normally ended: forward waited for every chunk).
    if (host_grads_) return join();
    // With a shard the gradients are final only once reduced across the group: step() moves them.
    if (!last || grads_at_step_) return Status::OK();
    // An overlapped pass still reads the pinned gradients of the previous step (it has
    // normally ended: forward waited for every chunk). A delayed pass reads the other buffer
    // and runs on through this backward.
    if (!pass_delayed_) STRATA_RETURN_IF_ERROR(join());
    auto visit = [&](Parameter* p) -> Status {
      auto it = index_.find(p);
      if (it == index_.end() || !users_.finish_use(*p)) return Status::OK();
      for (std::size_t i : it->second) STRATA_RETURN_IF_ERROR(offload_grad(i));  // its last user is done
      return Status::OK();
    };
    for (Parameter* p : module.own_parameters()) STRATA_RETURN_IF_ERROR(visit(p));
    for (Parameter* p : module.tied_parameters()) STRATA_RETURN_IF_ERROR(visit(p));
    return Status::OK();
  }

  Status before_forward(Module& module) override {
    std::vector<Parameter*> used = module.own_parameters();
    used.insert(used.end(), module.tied_parameters().begin(), module.tied_parameters().end());
    return wait_for_update(used);
  }

  std::span<const std::byte> host_values(std::size_t piece) const override {
    if (piece >= pieces_.size() || value_swap_ != nullptr) return {};
    const std::size_t vs = dtype_size(value_dtype_);
    return {values_host_.data() + layout_.offset(piece) * vs, pieces_[piece].count * vs};
  }

  engine::ValueSwap* value_swap() override { return value_swap_.get(); }

  std::span<std::byte> host_grads(std::size_t piece) override {
    if (piece >= pieces_.size() || !host_grads_) return {};
    const std::size_t gs = dtype_size(grad_dtype_);
    return {grads_host_[grad_slot_].data() + layout_.offset(piece) * gs, pieces_[piece].count * gs};
  }

  Status wait_for_update(std::span<Parameter* const> params) override {
    const std::size_t needed = chunks_needed(params);
    if (needed == 0) return Status::OK();
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !running_ || done_ >= needed; });
      if (running_) return Status::OK();
    }
    return join();  // the pass has ended: its status (an error stops the forward)
  }

  bool updated(std::span<Parameter* const> params) override {
    const std::size_t needed = chunks_needed(params);
    std::lock_guard<std::mutex> lock(mu_);
    return !running_ || done_ >= needed;
  }

  // Waits for the pass; with the delayed update, the weights it computed then go to the device
  // too, so that the device holds the masters' values (end of training, checkpoints).
  Status synchronize() override {
    STRATA_RETURN_IF_ERROR(join());
    if (!upload_pending_) return Status::OK();
    STRATA_RETURN_IF_ERROR(upload_all(*stream_));
    return stream_->synchronize();
  }

  Result<UpdateResult> step(const UpdateRequest& req) override {
    if (device_ == nullptr) return failed_precondition(name() + ": attach() a model first");
    STRATA_RETURN_IF_ERROR(join());
    if (!(req.loss_scale > 0) || !std::isfinite(req.loss_scale)) {
      return invalid_argument(name() + ": loss_scale must be finite and positive");
    }
    // The delayed update of the previous step has ended: its weights go to the device behind
    // this step's backward, before the next forward.
    if (upload_pending_) STRATA_RETURN_IF_ERROR(upload_all(*stream_));
    if (accessed_) {
      tiers_->restart_trace();  // state accesses (initialisation, checkpoints) are not the pass's pattern
      accessed_ = false;
    }
    // The squared norm of all gradients on the device, as the device Adam computes it
    // (engine/grad_norm.h), so the clip coefficient is the same to the bit; of the host
    // gradients on the host where the engine delivered them there (after the stream's work).
    if (!host_grads_) {
      std::vector<DeviceView> grads;
      for (const PieceState& st : pieces_) grads.push_back(st.grad);
      STRATA_RETURN_IF_ERROR(sumsq_.enqueue(grads, *stream_, group_));
    }
    // Gradients no hook has moved yet (a sharded run, a model run without hooks, a module skipped).
    for (std::size_t i = 0; i < pieces_.size(); ++i) {
      if (!pieces_[i].grad_offloaded) STRATA_RETURN_IF_ERROR(offload_grad(i));
    }
    reset_users();
    STRATA_RETURN_IF_ERROR(stream_->synchronize());
    STRATA_RETURN_IF_ERROR(copy_stream_->synchronize());
    double sum_squares = sumsq_.value();
    if (host_grads_) {
      STRATA_ASSIGN_OR_RETURN(sum_squares, engine::host_sum_squares(grads_host_[grad_slot_].bytes(), grad_dtype_, group_));
    }
    const engine::GradNorm norm = engine::finish_grad_norm(sum_squares, req.loss_scale, req.grad_clip);
    UpdateResult r;
    r.grad_norm = norm.norm;
    r.finite = norm.finite;
    if (!r.finite) return r;
    AdamHyper h = hyper_;
    h.lr = req.lr;
    const AdamStep at{updates_ + 1, norm.grad_scale};
    r.applied = true;
    const OptimizerOffloadConfig& oc = profile_.offload_optimizer;
    const bool delayed = oc.delayed_update && updates_ >= oc.delayed_update_warmup;
    const Pass mode = delayed ? Pass::kDelayed
                      : oc.overlap_step && !oc.delayed_update ? Pass::kOverlapped
                                                              : Pass::kInline;
    const std::size_t slot = grad_slot_;
    ++updates_;
    if (mode == Pass::kInline) {
      STRATA_RETURN_IF_ERROR(update_all(h, at, mode, slot));
      return r;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      running_ = true;
      // A delayed pass holds nothing forward needs: the device keeps the weights from before
      // this update until the next step() uploads them.
      done_ = delayed ? chunks_.size() : 0;
    }
    if (delayed) {
      pass_delayed_ = true;
      pass_slot_ = slot;
      grad_slot_ = 1 - grad_slot_;  // the next backward fills the other buffer meanwhile
    }
    worker_ = std::thread([this, h, at, mode, slot] {
      Status s = update_all(h, at, mode, slot);
      if (s.ok() && mode == Pass::kDelayed) upload_pending_ = true;
      // Every weight copy (and a failure among them) is in before the pass counts as ended.
      Status copies = upload_stream_->synchronize();
      if (s.ok()) s = std::move(copies);
      std::lock_guard<std::mutex> lock(mu_);
      worker_status_ = std::move(s);
      running_ = false;
      cv_.notify_all();
    });
    return r;
  }

  std::int64_t updates() const override { return updates_; }
  std::uint64_t device_bytes() const override { return sumsq_.device_bytes(); }
  std::optional<TierStats> tier_stats() const override {
    if (!tiers_) return std::nullopt;
    return tiers_->stats();
  }

 private:
  using Access = strata::Access;

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
  Status lay_out(Module& model, Device& device, const OptimizerShard& shard) {
    std::vector<ParamPiece> pieces = shard.pieces;
    if (!shard.sharded()) {
      for (Parameter* p : model.parameters()) pieces.push_back(ParamPiece{p, 0, p->grad(), {}});
    }
    std::vector<zero::FlatTensor> tensors;
    for (const ParamPiece& pc : pieces) {
      Parameter* p = pc.param;
      auto value = pc.device_value();
      if (!value.ok()) return value.status().with_context(name() + ": a piece of " + p->name());
      if (pc.host_home) host_homes_ = true;
      if (!pc.host_home && value->device() != &device) {
        return invalid_argument(name() + ": parameter " + p->name() + " lives on another device");
      }
      if ((pc.host_home || pc.host_grad) && profile_.offload_optimizer.delayed_update) {
        return invalid_argument(name() + ": offload.optimizer.delayed_update computes the next forward on the weights "
                                "from before the update, but with offload.param the update overwrites the only copy of "
                                "them: turn one of the two off");
      }
      const DType grad_dtype = pc.host_grad ? p->grad_dtype() : pc.grad.dtype();
      if (pieces_.empty()) {
        value_dtype_ = p->dtype();
        grad_dtype_ = grad_dtype;
        host_grads_ = pc.host_grad;
      } else if (p->dtype() != value_dtype_ || grad_dtype != grad_dtype_) {
        return invalid_argument(name() + ": parameter " + p->name() + " has dtypes other than the first parameter's");
      } else if (pc.host_grad != host_grads_) {
        return invalid_argument(name() + ": either every piece's gradient is delivered to host memory or none");
      }
      PieceState st;
      st.param = p;
      st.first = pc.first;
      st.count = pc.size();
      st.grad = pc.grad;
      st.value = *value;
      index_[p].push_back(pieces_.size());
      pieces_.push_back(st);
      tensors.push_back(zero::FlatTensor{p->name(), st.count});
    }
    if (pieces_.empty()) return invalid_argument(name() + ": the model has no parameters");
    // One space for this rank's elements: nothing is padded beyond each piece's alignment.
    auto layout = zero::FlatLayout::create(std::move(tensors), kParamAlign);
    if (!layout.ok()) return layout.status().with_context(name());
    layout_ = std::move(*layout);
    // A parameter's gradient is final once every module owning or tying it has run backward.
    users_ = ParamUsers(model);
    return Status::OK();
  }

  // Cuts the flat space into chunks of offload.optimizer.buffer_size bytes of state (at least
  // kChunkQuantum elements); returns the bytes of the largest chunk's block.
  std::uint64_t cut_chunks() {
    const std::uint64_t buffer = profile_.offload_optimizer.buffer_size;
    const std::uint64_t chunk = std::max(kChunkQuantum, buffer / kStateBytes / kChunkQuantum * kChunkQuantum);
    const std::uint64_t flat = layout_.total();
    std::uint64_t max_block = 0;
    for (std::uint64_t first = 0; first < flat; first += chunk) {
      Chunk c;
      c.first = first;
      c.n = std::min(chunk, flat - first);
      c.stride = round_up(c.n, kChunkQuantum);
      c.segments = layout_.segments({c.first, c.n});
      max_block = std::max(max_block, c.stride * kStateBytes);
      chunks_.push_back(std::move(c));
    }
    chunk_elems_ = chunk;
    for (std::size_t i = 0; i < pieces_.size(); ++i) {
      const std::uint64_t n = pieces_[i].count;
      pieces_[i].last_chunk = static_cast<std::size_t>((layout_.offset(i) + std::max<std::uint64_t>(n, 1) - 1) / chunk);
    }
    return max_block;
  }

  // How many chunks from the first the pass must have done for `params` to hold their update.
  std::size_t chunks_needed(std::span<Parameter* const> params) const {
    std::size_t needed = 0;
    for (Parameter* p : params) {
      auto it = index_.find(p);
      if (it == index_.end()) continue;
      for (std::size_t i : it->second) needed = std::max(needed, pieces_[i].last_chunk + 1);
    }
    return needed;
  }

  // Waits for the pass running on the worker thread, if any; returns its status once.
  Status join() {
    if (!worker_.joinable()) return Status::OK();
    worker_.join();
    pass_delayed_ = false;
    std::lock_guard<std::mutex> lock(mu_);
    Status s = std::move(worker_status_);
    worker_status_ = Status::OK();
    return s.ok() ? s : s.with_context(name() + ": updating the optimizer state");
  }

  void reset_users() {
    users_.reset();
    for (PieceState& st : pieces_) st.grad_offloaded = false;
  }

  // Device gradient -> pinned host buffer on the copy stream, after the work enqueued so far
  // on the training stream (the backward that finished the gradient).
  Status offload_grad(std::size_t i) {
    PieceState& st = pieces_[i];
    if (host_grads_) {  // the engine delivered it
      st.grad_offloaded = true;
      return Status::OK();
    }
    if (pass_delayed_ && grad_slot_ == pass_slot_) {
      return internal_error(name() + ": the gradient buffer of " + st.param->name() + " is still read by the delayed update");
    }
    const std::size_t gs = dtype_size(grad_dtype_);
    STRATA_RETURN_IF_ERROR(stream_->record(*grad_ready_));
    STRATA_RETURN_IF_ERROR(copy_stream_->wait(*grad_ready_));
    STRATA_RETURN_IF_ERROR(device_->copy_to_host({grads_host_[grad_slot_].data() + layout_.offset(i) * gs, st.count * gs},
                                                 st.grad.range(), *copy_stream_));
    st.grad_offloaded = true;
    return Status::OK();
  }

  void to_value_dtype(const float* src, std::byte* dst, std::size_t n) const {
    if (value_dtype_ == DType::kF32) {
      std::memcpy(dst, src, n * sizeof(float));
    } else if (value_dtype_ == DType::kBF16) {
      auto* d = reinterpret_cast<std::uint16_t*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = num::f32_to_bf16(src[i]);
    } else {
      auto* d = reinterpret_cast<std::uint16_t*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = num::f32_to_f16(src[i]);
    }
  }

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
  Status upload_all(Stream& stream) {
    const std::size_t vs = dtype_size(value_dtype_);
    for (std::size_t i = 0; i < pieces_.size(); ++i) {
      const DeviceView& v = pieces_[i].value;
      if (v.empty()) continue;  // a host home
      STRATA_RETURN_IF_ERROR(device_->copy_to_device(v.range(), {values_host_.data() + layout_.offset(i) * vs, v.count() * vs}, stream));
    }
    upload_pending_ = false;
    return Status::OK();
  }

  // The chunk pipeline (see the file comment) over the gradients in buffer `slot`.
  Status update_all(const AdamHyper& h, const AdamStep& at, Pass mode, std::size_t slot) {
    const bool background = mode != Pass::kInline;
    const OptimizerOffloadConfig& oc = profile_.offload_optimizer;
    const bool nvme = home_ == Tier::kNvme;
    std::size_t ahead = 0;
    // flush() (synchronous writes) needs every write pin released, so without pipeline_write
    // the read-ahead is a prefetch hint after each flush instead of pins held ahead.
    if (nvme && oc.pipeline_read && oc.pipeline_write) ahead = static_cast<std::size_t>(std::max(1, oc.buffer_count - 2));
    const std::size_t gs = dtype_size(grad_dtype_);
    const std::size_t vs = dtype_size(value_dtype_);
    // Every other step runs backwards, so the chunks the previous step left in the buffers are
    // the first ones needed (chunks are independent: the order does not change the result).
    const std::size_t count = chunks_.size();
    const bool reverse = reverse_ && mode != Pass::kOverlapped;
    auto order = [&](std::size_t i) { return reverse ? count - 1 - i : i; };
    reverse_ = !reverse_;
    Stream& upload = background ? *upload_stream_ : *stream_;
    std::deque<offload::Pin> pins;
    std::size_t next = 0;
    for (std::size_t i = 0; i < count; ++i) {
      while (next < count && next <= i + ahead) {
        STRATA_ASSIGN_OR_RETURN(offload::Pin pin, tiers_->acquire(chunks_[order(next)].block, Tier::kHost, Access::kWrite));
        pins.push_back(std::move(pin));
        ++next;
      }
      const std::size_t k = order(i);
      offload::Pin& pin = pins.front();
      STRATA_RETURN_IF_ERROR(pin.wait().with_context(name() + ": reading optimizer state chunk " + std::to_string(k)));
      const Chunk& c = chunks_[k];
      float* base = reinterpret_cast<float*>(pin.host_bytes().data());
      AdamChunk ac;
      ac.n = c.n;
      ac.params = base;
      ac.exp_avg = base + c.stride;
      ac.exp_avg_sq = base + 2 * c.stride;
      ac.grads = grads_host_[slot].data() + c.first * gs;
      ac.grad_dtype = grad_dtype_;
      offload::Pin value_pin;
      STRATA_ASSIGN_OR_RETURN(std::byte* values, host_values_at(c.first, c.n, Access::kOverwrite, value_pin));
      if (value_dtype_ != DType::kF32) {
        ac.param_copy = values;
        ac.param_copy_dtype = value_dtype_;
      }
      STRATA_RETURN_IF_ERROR(adam_->step(h, at, ac));
      if (value_dtype_ == DType::kF32) std::memcpy(values, base, c.n * sizeof(float));
      STRATA_RETURN_IF_ERROR(pin.mark_dirty());
      pins.pop_front();  // released: evictable, written back when its buffer is needed
      if (nvme && !oc.pipeline_write) {
        STRATA_RETURN_IF_ERROR(tiers_->flush().with_context(name() + ": writing optimizer state chunk " + std::to_string(k)));
        if (oc.pipeline_read && i + 1 < count) STRATA_RETURN_IF_ERROR(tiers_->prefetch(chunks_[order(i + 1)].block, Tier::kHost));
      }
      bool copied = false;
      for (const zero::FlatSegment& s : c.segments) {
        if (mode == Pass::kDelayed || pieces_[s.tensor].value.empty()) continue;  // uploaded later; a host home
        STRATA_ASSIGN_OR_RETURN(DeviceView dv, pieces_[s.tensor].value.slice(s.tensor_first, s.count));
        STRATA_RETURN_IF_ERROR(
            device_->copy_to_device(dv.range(), {values + (s.flat_first - c.first) * vs, s.count * vs}, upload));
        copied = true;
      }
      if (value_pin.valid()) STRATA_RETURN_IF_ERROR(value_pin.mark_dirty());  // written back once evicted
      STRATA_RETURN_IF_ERROR(release_values(value_pin, copied ? &upload : nullptr));
      if (mode == Pass::kOverlapped) {
        // Counted done once its copies have run, without holding the pass up.
        STRATA_RETURN_IF_ERROR(upload.launch_host_func([this, i] {
          std::lock_guard<std::mutex> lock(mu_);
          done_ = i + 1;
          cv_.notify_all();
        }));
      }
    }
    tiers_->end_step();
    return Status::OK();
  }

  // Releases a pin of the parameter swap (none: nothing) once the copies enqueued from it on
  // `copied_on` (if any) are done: the swap keeps room for one written block only, so the
  // next one's pin must not wait behind a queued release.
  Status release_values(offload::Pin& pin, Stream* copied_on) {
    if (!pin.valid()) return Status::OK();
    if (copied_on != nullptr) STRATA_RETURN_IF_ERROR(copied_on->synchronize());
    pin.release();
    return Status::OK();
  }

  // The flat elements [first, first + n) in the value dtype, in host memory: in the pinned
  // weight buffer, or in the parameter swap's block of their chunk (which they must not leave),
  // pinned in `pin` for `mode` until the caller releases it.
  Result<std::byte*> host_values_at(std::uint64_t first, std::uint64_t n, Access mode, offload::Pin& pin) {
    const std::size_t vs = dtype_size(value_dtype_);
    if (!value_swap_) return values_host_.data() + first * vs;
    const auto k = static_cast<std::size_t>(first / chunk_elems_);
    const Chunk& c = chunks_[k];
    const bool whole = mode == Access::kOverwrite && first == c.first && n == c.n;
    STRATA_ASSIGN_OR_RETURN(pin, value_swap_->pin_for_write(k, whole));
    STRATA_RETURN_IF_ERROR(pin.wait().with_context(name() + ": reading parameter values from NVMe"));
    return pin.host_bytes().data() + (first - c.first) * vs;
  }

  // The end of the chunk holding flat element `flat`.
  std::uint64_t chunk_end(std::uint64_t flat) const { return (flat / chunk_elems_ + 1) * chunk_elems_; }

  Status make_value_swap(Device& device) {
    std::vector<engine::ValueSwap::Range> chunks, pieces;
    for (const Chunk& c : chunks_) chunks.push_back({c.first, c.n});
    for (std::size_t i = 0; i < pieces_.size(); ++i) pieces.push_back({layout_.offset(i), pieces_[i].count});
    STRATA_ASSIGN_OR_RETURN(value_swap_, engine::ValueSwap::create(profile_, device, value_dtype_, std::move(chunks),
                                                                   std::move(pieces)));
    return Status::OK();
  }

  Profile profile_;
  AdamHyper hyper_;
  Tier home_;
  Device* device_ = nullptr;
  Stream* stream_ = nullptr;
  DType value_dtype_ = DType::kF32;
  DType grad_dtype_ = DType::kF32;
  Communicator* group_ = nullptr;  // with a shard: the group the gradient norm is summed over
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
  std::mutex mu_;
  std::condition_variable cv_;
  bool running_ = false;
  std::size_t done_ = 0;
  bool pass_delayed_ = false;    // the running pass is a delayed one (caller thread only)
  std::size_t pass_slot_ = 0;    // the gradient buffer it reads
  bool upload_pending_ = false;
  bool host_grads_ = false;  // the engine delivers every piece's gradient to grads_host_ (ZeRO-3 offload)  // a delayed pass's weights are not on the device yet
  Status worker_status_;
};

}  // namespace

Result<std::unique_ptr<StepOptimizer>> make_offload_adam(const Profile& profile) {
  const OptimizerConfig& c = profile.optimizer;
  if (c.type != "adam" && c.type != "adamw") {
    return invalid_argument("optimizer.type = \"" + c.type + "\": the offloaded optimizer knows adam and adamw");
  }
  switch (profile.offload_optimizer.device) {
    case OffloadTarget::kCpu:
      return std::unique_ptr<StepOptimizer>(new OffloadAdam(profile, Tier::kHost));
    case OffloadTarget::kNvme:
      return std::unique_ptr<StepOptimizer>(new OffloadAdam(profile, Tier::kNvme));
    default:
      return invalid_argument("offload.optimizer.device = \"none\": the offloaded optimizer needs \"cpu\" or \"nvme\"");
  }
}

Result<std::unique_ptr<StepOptimizer>> make_step_optimizer(const Profile& profile) {
  if (profile.offload_optimizer.device == OffloadTarget::kNone) return make_device_adam(profile.optimizer);
  return make_offload_adam(profile);
}

}  // namespace strata
