// The offloaded Adam's attachment, state access, step and hooks (engine/offload_adam.h).
#include "engine/offload_adam.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "strata/log.h"
#include "strata/units.h"

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

namespace engine {

OffloadAdam::~OffloadAdam() {
  join().ignore();
  if (copy_stream_) copy_stream_->synchronize().ignore();
  if (upload_stream_) upload_stream_->synchronize().ignore();
  if (stream_) stream_->synchronize().ignore();
  for (offload::HostLease& g : grads_host_) g.release();  // leases of the tier manager, before it
  values_host_.release();
  tiers_.reset();  // before the swap store and the engine it reads from
  if (store_) store_->close().ignore();
}

Status OffloadAdam::attach(Module& model, Device& device, Stream& stream, const OptimizerShard& shard) {
  if (device_ != nullptr) return failed_precondition(name() + ": attach() may be called once");
  device_ = &device;
  stream_ = &stream;
  group_ = shard.group;
  tp_ = shard.tp;
  pp_ = shard.pp;
  replicas_ = shard.replicas;
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

Status OffloadAdam::read_state(const Parameter& p, OptimizerState which, std::uint64_t first, std::span<float> out) {
  return access(p, which, first, out.size(), Access::kRead, [&](float* state, std::uint64_t at, std::uint64_t n) {
    std::memcpy(out.data() + at, state, n * sizeof(float));
  });
}

Status OffloadAdam::write_state(const Parameter& p, OptimizerState which, std::uint64_t first,
                   std::span<const float> values) {
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

Status OffloadAdam::set_updates(std::int64_t updates) {
  if (updates < 0) return invalid_argument(name() + ": the update count must not be negative");
  STRATA_RETURN_IF_ERROR(join());
  updates_ = updates;
  return Status::OK();
}

Status OffloadAdam::after_backward(Module& module, bool last) {
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

Status OffloadAdam::before_forward(Module& module) {
  std::vector<Parameter*> used = module.own_parameters();
  used.insert(used.end(), module.tied_parameters().begin(), module.tied_parameters().end());
  return wait_for_update(used);
}

std::span<const std::byte> OffloadAdam::host_values(std::size_t piece) const {
  if (piece >= pieces_.size() || value_swap_ != nullptr) return {};
  const std::size_t vs = dtype_size(value_dtype_);
  return {values_host_.data() + layout_.offset(piece) * vs, pieces_[piece].count * vs};
}

std::span<std::byte> OffloadAdam::host_grads(std::size_t piece) {
  if (piece >= pieces_.size() || !host_grads_) return {};
  const std::size_t gs = dtype_size(grad_dtype_);
  return {grads_host_[grad_slot_].data() + layout_.offset(piece) * gs, pieces_[piece].count * gs};
}

Status OffloadAdam::wait_for_update(std::span<Parameter* const> params) {
  const std::size_t needed = chunks_needed(params);
  if (needed == 0) return Status::OK();
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !running_ || done_ >= needed; });
    if (running_) return Status::OK();
  }
  return join();  // the pass has ended: its status (an error stops the forward)
}

bool OffloadAdam::updated(std::span<Parameter* const> params) {
  const std::size_t needed = chunks_needed(params);
  std::lock_guard<std::mutex> lock(mu_);
  return !running_ || done_ >= needed;
}

Status OffloadAdam::synchronize() {
  STRATA_RETURN_IF_ERROR(join());
  if (!upload_pending_) return Status::OK();
  STRATA_RETURN_IF_ERROR(upload_all(*stream_));
  return stream_->synchronize();
}

Result<UpdateResult> OffloadAdam::step(const UpdateRequest& req) {
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
    const NormViews grads = norm_views(pieces_, tp_, replicas_);
    STRATA_RETURN_IF_ERROR(sumsq_.enqueue(grads.whole, *stream_, group_, grads.split, tp_, pp_));
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
    STRATA_ASSIGN_OR_RETURN(sum_squares, host_grad_squares());
  }
  const NormedUpdate u = normed_update(finish_grad_norm(sum_squares, req.loss_scale, req.grad_clip), hyper_, req, updates_);
  if (!u.result.finite) return u.result;
  const AdamHyper h = u.hyper;
  const AdamStep at = u.step;
  const OptimizerOffloadConfig& oc = profile_.offload_optimizer;
  const bool delayed = oc.delayed_update && updates_ >= oc.delayed_update_warmup;
  const Pass mode = delayed ? Pass::kDelayed
                    : oc.overlap_step && !oc.delayed_update ? Pass::kOverlapped
                                                            : Pass::kInline;
  const std::size_t slot = grad_slot_;
  ++updates_;
  if (mode == Pass::kInline) {
    STRATA_RETURN_IF_ERROR(update_all(h, at, mode, slot));
    return u.result;
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
  return u.result;
}

Result<double> OffloadAdam::host_grad_squares() const {
  const std::span<const std::byte> all = grads_host_[grad_slot_].bytes();
  if (tp_ == nullptr) return engine::host_sum_squares(all, grad_dtype_, group_);
  // Split parameters' squares summed over tp, then the whole ones once (engine/grad_norm.h).
  const std::size_t gs = dtype_size(grad_dtype_);
  double split = 0, whole = 0;
  for (std::size_t i = 0; i < pieces_.size(); ++i) {
    const std::span<const std::byte> g = all.subspan(layout_.offset(i) * gs, pieces_[i].count * gs);
    STRATA_ASSIGN_OR_RETURN(const double s, engine::host_sum_squares(g, grad_dtype_));
    (pieces_[i].param->shard().split() ? split : whole) += s;
  }
  std::array<double, 1> v{split};
  STRATA_RETURN_IF_ERROR(tp_->all_reduce_host(v, ReduceOp::kSum));
  v[0] += whole;
  if (group_ != nullptr) STRATA_RETURN_IF_ERROR(group_->all_reduce_host(v, ReduceOp::kSum));
  if (pp_ != nullptr) STRATA_RETURN_IF_ERROR(pp_->all_reduce_host(v, ReduceOp::kSum));
  return v[0];
}

Status OffloadAdam::lay_out(Module& model, Device& device, const OptimizerShard& shard) {
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

std::uint64_t OffloadAdam::cut_chunks() {
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

}  // namespace engine

Result<std::unique_ptr<StepOptimizer>> make_offload_adam(const Profile& profile) {
  const OptimizerConfig& c = profile.optimizer;
  if (c.type != "adam" && c.type != "adamw") {
    return invalid_argument("optimizer.type = \"" + c.type + "\": the offloaded optimizer knows adam and adamw");
  }
  switch (profile.offload_optimizer.device) {
    case OffloadTarget::kCpu:
      return std::unique_ptr<StepOptimizer>(new engine::OffloadAdam(profile, Tier::kHost));
    case OffloadTarget::kNvme:
      return std::unique_ptr<StepOptimizer>(new engine::OffloadAdam(profile, Tier::kNvme));
    default:
      return invalid_argument("offload.optimizer.device = \"none\": the offloaded optimizer needs \"cpu\" or \"nvme\"");
  }
}

Result<std::unique_ptr<StepOptimizer>> make_step_optimizer(const Profile& profile) {
  if (profile.offload_optimizer.device == OffloadTarget::kNone) return make_device_adam(profile.optimizer);
  return make_offload_adam(profile);
}

}  // namespace strata
