// The parameter storage and data-parallel reduction of engine/data_parallel.h.
#include "engine/data_parallel.h"

#include <algorithm>
#include <span>

#include "engine/value_swap.h"

namespace strata::engine {

Result<std::unique_ptr<DataParallel>> DataParallel::create(const Profile& profile, Module& model, DType value_dtype,
                                                           DType grad_dtype, Device& device, Communicator* dp,
                                                           bool time_stalls, bool pipelined) {
  std::unique_ptr<DataParallel> d(new DataParallel());
  d->dp_ = dp != nullptr && dp->size() > 1 ? dp : nullptr;
  d->stage_ = d->dp_ != nullptr || profile.zero.stage == 3 ? profile.zero.stage : 0;
  d->pipelined_ = pipelined;
  if (d->stage_ == 3 && d->dp_ == nullptr) {
    STRATA_ASSIGN_OR_RETURN(auto one, make_local_comms(1));
    d->one_rank_ = std::move(one[0]);
    d->dp_ = d->one_rank_.get();
  }
  d->value_dtype_ = value_dtype;
  d->grad_dtype_ = grad_dtype;
  d->params_ = model.parameters();
  d->users_ = model::ParamUsers(model);
  STRATA_RETURN_IF_ERROR(d->lay_out(profile, model));
  if (d->stage_ == 3) {
    STRATA_RETURN_IF_ERROR(d->make_fetch(profile, model, device, time_stalls));
  } else {
    auto values = device.allocate(std::max<std::uint64_t>(1, d->layout_.total() * dtype_size(value_dtype)));
    if (!values.ok()) {
      std::uint64_t count = 0;
      for (const Parameter* p : d->params_) count += p->numel();
      return values.status().with_context("trainer: " + std::to_string(count) + " parameters in " +
                                          std::string(dtype_name(value_dtype)));
    }
    d->values_ = std::move(*values);
  }
  STRATA_RETURN_IF_ERROR(d->make_reducers(profile, device));
  STRATA_RETURN_IF_ERROR(d->bind_storage(device));
  return d;
}

Status DataParallel::lay_out(const Profile& profile, Module& model) {
  std::vector<zero::FlatTensor> tensors;
  for (Parameter* p : params_) {
    index_[p] = tensors.size();
    tensors.push_back(zero::FlatTensor{p->name(), p->numel()});
  }
  // Stage 3 gathers whole modules: each module's parameters open a bucket.
  std::vector<bool> opens;
  if (stage_ == 3) {
    opens.assign(tensors.size(), false);
    std::vector<const Module*> stack{&model};
    while (!stack.empty()) {
      const Module* m = stack.back();
      stack.pop_back();
      if (!m->own_parameters().empty()) opens[index_.at(m->own_parameters().front())] = true;
      for (const Module* c : m->children()) stack.push_back(c);
    }
  }
  // Every value and gradient starts on a device-alignment boundary.
  const std::uint64_t align = kDeviceAlignment / std::min(dtype_size(value_dtype_), dtype_size(grad_dtype_));
  const bool sharded = stage_ >= 1;
  const std::uint64_t shards = sharded ? static_cast<std::uint64_t>(size()) : 1;
  std::uint64_t bucket = 0;
  if (stage_ == 3) {
    bucket = std::max<std::uint64_t>(1, profile.zero.allgather_bucket_size / dtype_size(value_dtype_));
  } else if (sharded) {
    bucket = std::max<std::uint64_t>(1, profile.zero.reduce_bucket_size / dtype_size(grad_dtype_));
  }
  auto layout = zero::FlatLayout::create(std::move(tensors), align, shards, bucket, opens);
  if (!layout.ok()) return layout.status().with_context("trainer");
  layout_ = std::move(*layout);
  return Status::OK();
}

Status DataParallel::make_fetch(const Profile& profile, Module& model, Device& device, bool time_stalls) {
  const ZeroConfig& z = profile.zero;
  zero::FetchOptions o;
  o.max_live = z.max_live_parameters;
  o.prefetch = z.prefetch_bucket_size / dtype_size(value_dtype_);
  o.reuse_distance = z.max_reuse_distance;
  o.persistence_threshold = z.param_persistence_threshold;
  param_home_ = profile.offload_param.device;
  o.host_home = param_home_ != OffloadTarget::kNone;
  o.time_stalls = time_stalls;
  // The largest module's gathered buckets must fit in the window at once.
  std::string largest = "(none)";
  std::vector<Module*> stack{&model};
  while (!stack.empty()) {
    Module* m = stack.back();
    stack.pop_back();
    for (Module* c : m->children()) stack.push_back(c);
    STRATA_ASSIGN_OR_RETURN(std::vector<std::size_t> buckets, buckets_of(*m));
    std::uint64_t use = 0;
    for (std::size_t b : buckets) {
      if (layout_.bucket(b).count > o.persistence_threshold) use += layout_.bucket(b).count;
    }
    if (use > o.largest_use) {
      o.largest_use = use;
      largest = m->name();
    }
  }
  if (o.largest_use > o.max_live) {
    return invalid_argument("ZeRO stage 3: module " + largest + " gathers " + std::to_string(o.largest_use) +
                            " parameters (its buckets, padded over " + std::to_string(size()) +
                            " ranks) at once, more than zero.max_live_parameters = " + std::to_string(o.max_live) +
                            ": raise zero.max_live_parameters to at least " + std::to_string(o.largest_use));
  }
  auto before = [this](std::size_t b) -> Status {
    if (optimizer_ == nullptr) return Status::OK();
    const auto [lo, hi] = layout_.bucket_tensors(b);
    return optimizer_->wait_for_update({params_.data() + lo, hi - lo});
  };
  STRATA_ASSIGN_OR_RETURN(fetch_, zero::ParamFetch::create(*dp_, device, layout_, value_dtype_, o, before));
  return Status::OK();
}

Status DataParallel::reserve_gather_window() const {
  if (fetch_ == nullptr || fetch_->largest_use() == 0) return Status::OK();  // every bucket persistent
  Status st = fetch_->reserve(fetch_->largest_use());
  if (st.ok()) return st;
  const std::uint64_t bytes = fetch_->largest_use() * dtype_size(value_dtype_);
  return st.with_context("ZeRO stage 3: the largest module's gathered parameters (" + std::to_string(fetch_->largest_use()) +
                         " elements, " + std::to_string(bytes) +
                         " B) do not fit on the device beside the shard, gradients and activations: raise "
                         "memory.device_budget, or shard over more ranks");
}

Status DataParallel::attach_optimizer(StepOptimizer& optimizer) {
  const std::string needs = "offload.param.device = \"cpu\" keeps the parameter shard and its gradients in the "
                            "optimizer's host memory, which " + optimizer.name() + " does not have: set "
                            "offload.optimizer.device = \"cpu\" or \"nvme\"";
  std::vector<std::vector<zero::HostSegment>> values(layout_.bucket_count());
  std::vector<std::vector<zero::HostGradSegment>> grads(layout_.bucket_count());
  engine::ValueSwap* swap = optimizer.value_swap();
  const bool homes = std::any_of(host_pieces_.begin(), host_pieces_.end(),
                                 [&](const HostPiece& h) { return shard_.pieces[h.piece].host_home; });
  if (homes && param_home_ == OffloadTarget::kNvme && swap == nullptr) {
    return invalid_argument("offload.param.device = \"nvme\" homes the parameter shard in NVMe swap, which " +
                            optimizer.name() + " does not keep: use the offloaded optimizer (offload.optimizer.device "
                            "= \"cpu\" or \"nvme\") or offload.param.device = \"cpu\"");
  }
  for (const HostPiece& h : host_pieces_) {
    const ParamPiece& piece = shard_.pieces[h.piece];
    if (piece.host_home && swap != nullptr) {
      for (zero::HostSegment& s : swap->segments(h.piece, h.at)) values[h.bucket].push_back(s);
    } else if (piece.host_home) {
      const std::span<const std::byte> v = optimizer.host_values(h.piece);
      if (v.size() != piece.size() * dtype_size(value_dtype_)) return invalid_argument(needs);
      zero::HostSegment s;
      s.at = h.at;
      s.bytes = v;
      values[h.bucket].push_back(s);
    }
    if (piece.host_grad) {
      const std::span<std::byte> g = optimizer.host_grads(h.piece);
      if (g.size() != piece.size() * dtype_size(grad_dtype_)) return invalid_argument(needs);
      grads[h.bucket].push_back({h.at, g});
    }
  }
  if (swap != nullptr) {
    // The largest module's slice and the gathers ahead of it are pinned at once.
    const std::uint64_t shards = static_cast<std::uint64_t>(size());
    const std::uint64_t window = (fetch_->largest_use() + fetch_->prefetch_window()) / shards;
    STRATA_RETURN_IF_ERROR(swap->check_window(window, "this rank's slice of the largest module's parameters and of the "
                                                      "zero.prefetch_bucket_size gathered ahead of it"));
    auto updated = [this, &optimizer](std::size_t b) {
      const auto [lo, hi] = layout_.bucket_tensors(b);
      return optimizer.updated({params_.data() + lo, hi - lo});
    };
    fetch_->set_swap(swap->fetch_pin_limit(), swap->read_ahead(), updated);
  }
  for (std::size_t b = 0; b < layout_.bucket_count(); ++b) {
    if (!values[b].empty()) fetch_->set_host_slice(b, std::move(values[b]));
    if (!grads[b].empty()) sharded_->set_host_slice(b, std::move(grads[b]));
  }
  return Status::OK();
}

GatherStats DataParallel::gather_stats() const { return fetch_ != nullptr ? fetch_->stats() : GatherStats{}; }

Status DataParallel::make_reducers(const Profile& profile, Device& device) {
  const std::uint64_t gs = dtype_size(grad_dtype_);
  const bool overlap = profile.zero.overlap_comm;
  if (stage_ >= 1) {
    // Stage 3's gradients are stage 2's; with parameter offload they go to the host as reduced.
    // Under a pipeline stage 2 accumulates in stage 1's full buffer (data_parallel.h).
    const int grads_stage = pipelined_ ? 1 : std::min(stage_, 2);
    const bool to_host = stage_ == 3 && profile.offload_param.device != OffloadTarget::kNone && !pipelined_;
    STRATA_ASSIGN_OR_RETURN(sharded_, zero::ShardedGrads::create(*dp_, device, layout_, grad_dtype_, grads_stage, overlap, to_host));
    return Status::OK();
  }
  auto grads = device.allocate(std::max<std::uint64_t>(1, layout_.total() * gs));
  if (!grads.ok()) return grads.status().with_context("trainer: parameter gradients");
  grads_ = std::move(*grads);
  if (dp_ == nullptr) return Status::OK();
  std::vector<std::pair<std::uint64_t, std::uint64_t>> tensor_bytes;
  for (std::size_t i = 0; i < layout_.tensor_count(); ++i) {
    tensor_bytes.emplace_back(layout_.offset(i) * gs, (layout_.offset(i) + layout_.tensor(i).numel) * gs);
  }
  zero::ByteBuckets cut = zero::cut_byte_buckets(grads_.size(), tensor_bytes, profile.zero.reduce_bucket_size, gs);
  const CommType type = comm_type_of(grad_dtype_);
  auto reduce = [this, ranges = cut.buckets, type, gs](std::size_t b, Stream& comm) -> Status {
    STRATA_ASSIGN_OR_RETURN(DeviceRange r, grads_.range(ranges[b].first, ranges[b].second));
    const CommBuffer buf{r, type, ranges[b].second / gs};
    return dp_->all_reduce(buf, buf, ReduceOp::kSum, comm);
  };
  STRATA_ASSIGN_OR_RETURN(all_reduce_, zero::GradBuckets::create(device, cut.buckets.size(), std::move(cut.of_tensor),
                                                                 overlap, std::move(reduce)));
  return Status::OK();
}

Status DataParallel::bind_storage(Device& device) {
  if (stage_ == 3) return add_pieces(device);  // bound only while gathered
  const std::uint64_t vs = dtype_size(value_dtype_), gs = dtype_size(grad_dtype_);
  // The padding between tensors is gathered with them: it stays zero.
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Stream> stream, device.create_stream("parameter storage"));
  STRATA_RETURN_IF_ERROR(device.fill(values_.view(value_dtype_), 0.0f, *stream));
  STRATA_RETURN_IF_ERROR(stream->synchronize());
  for (std::size_t i = 0; i < params_.size(); ++i) {
    Parameter* p = params_[i];
    STRATA_ASSIGN_OR_RETURN(DeviceView v, values_.view(value_dtype_, layout_.offset(i) * vs, p->numel()));
    DeviceView g;  // stage 2: bound while its bucket is open (before_backward)
    if (stage_ == 0) {
      STRATA_ASSIGN_OR_RETURN(g, grads_.view(grad_dtype_, layout_.offset(i) * gs, p->numel()));
    } else if (stage_ == 1 || pipelined_) {
      STRATA_ASSIGN_OR_RETURN(g, sharded_->tensor_grad(i, *stream));
    }
    STRATA_RETURN_IF_ERROR(p->bind(v, g));
  }
  if (stage_ == 0) {
    // Stage 0: the optimizer owns every parameter whole, its gradient final once all-reduced.
    if (dp_ != nullptr || pipelined_) {
      for (Parameter* p : params_) shard_.pieces.push_back(ParamPiece{p, 0, p->grad(), {}});
    }
    return Status::OK();
  }
  gather_ = std::make_unique<zero::ParamGather>(*dp_, layout_, values_, value_dtype_);
  return add_pieces(device);
}

Status DataParallel::add_pieces(Device& device) {
  // Gathered reads of the sharded state (checkpoints, exports) pass through this.
  auto staging = device.allocate(kGatherStagingBytes);
  if (!staging.ok()) return staging.status().with_context("trainer: the staging buffer of gathered state reads");
  gather_staging_ = std::move(*staging);
  // This rank's optimizer owns its slice of every bucket.
  shard_.group = dp_;
  const auto r = static_cast<std::uint64_t>(rank());
  for (std::size_t b = 0; b < layout_.bucket_count(); ++b) {
    const zero::FlatRange slice = layout_.slice(b, r);
    for (const zero::FlatSegment& s : layout_.segments(slice)) {
      // Stage 3: the home of this rank's slice (not the gathered parameter), on the device or,
      // with parameter offload, in the optimizer's host memory, as its gradient.
      ParamPiece piece{params_[s.tensor], s.tensor_first, {}, {}, fetch_ != nullptr && fetch_->host_slice(b),
                       sharded_->host_sink(), s.count};
      if (!piece.host_grad) {
        STRATA_ASSIGN_OR_RETURN(piece.grad, sharded_->shard_grad(b).slice(s.flat_first - slice.first, s.count));
      }
      if (piece.host_home || piece.host_grad) {
        host_pieces_.push_back({shard_.pieces.size(), b, s.flat_first - slice.first});
      }
      if (!piece.host_home && fetch_ != nullptr) {
        STRATA_ASSIGN_OR_RETURN(DeviceView home, fetch_->home_slice(b));
        STRATA_ASSIGN_OR_RETURN(piece.value, home.slice(s.flat_first - slice.first, s.count));
      }
      shard_.pieces.push_back(piece);
    }
  }
  return Status::OK();
}

Trainer::ParameterBytes DataParallel::device_bytes() const {
  Trainer::ParameterBytes b;
  b.values = values_.size();
  b.gradients = grads_.size() + (sharded_ != nullptr ? sharded_->gradient_bytes() : 0);
  b.buckets = sharded_ != nullptr ? sharded_->slot_bytes() : 0;
  b.staging = gather_staging_.size();
  if (fetch_ != nullptr) {
    b.values = fetch_->home_bytes();
    b.gathered = fetch_->stats().peak_held * dtype_size(value_dtype_);
  }
  return b;
}

double DataParallel::state_bytes_per_element(const Profile& profile) const {
  const double N = size();
  const double v = static_cast<double>(dtype_size(value_dtype_)), g = static_cast<double>(dtype_size(grad_dtype_));
  const bool params_home = profile.offload_param.device == OffloadTarget::kNone;
  const double adam = profile.offload_optimizer.device != OffloadTarget::kNone ? 0.0 : value_dtype_ == DType::kF32 ? 8.0 : 12.0;
  const double values = stage_ == 3 ? (params_home ? v / N : 0.0) : v;
  double grads = stage_ >= 2 ? g / N : g;
  if (stage_ == 3 && !params_home) grads = 0;
  if (pipelined_) grads = g;
  return values + grads + (stage_ >= 1 ? adam / N : adam);
}

Result<std::size_t> DataParallel::index_of(const Parameter& p) const {
  auto it = index_.find(&p);
  if (it == index_.end()) return internal_error("trainer: parameter '" + p.name() + "' has no storage");
  return it->second;
}

template <typename Fn>
Status DataParallel::for_used(Module& module, Fn fn) {
  for (const auto* list : {&module.own_parameters(), &module.tied_parameters()}) {
    for (Parameter* p : *list) {
      STRATA_ASSIGN_OR_RETURN(std::size_t i, index_of(*p));
      STRATA_RETURN_IF_ERROR(fn(p, i));
    }
  }
  return Status::OK();
}

Result<std::vector<std::size_t>> DataParallel::buckets_of(Module& module) {
  std::vector<std::size_t> buckets;
  STRATA_RETURN_IF_ERROR(for_used(module, [&](Parameter*, std::size_t i) -> Status {
    const std::size_t b = layout_.bucket_of(i);
    if (std::find(buckets.begin(), buckets.end(), b) == buckets.end()) buckets.push_back(b);
    return Status::OK();
  }));
  return buckets;
}

Status DataParallel::acquire(Module& module, bool with_grads, Stream& stream) {
  STRATA_ASSIGN_OR_RETURN(std::vector<std::size_t> buckets, buckets_of(module));
  if (buckets.empty()) return Status::OK();
  STRATA_RETURN_IF_ERROR(fetch_->acquire(buckets, stream));
  return for_used(module, [&](Parameter* p, std::size_t i) -> Status {
    STRATA_ASSIGN_OR_RETURN(DeviceView v, fetch_->tensor_view(i));
    DeviceView g;
    if (with_grads) {
      STRATA_ASSIGN_OR_RETURN(g, sharded_->tensor_grad(i, stream));
    }
    return p->bind(v, g);
  });
}

Status DataParallel::release(Module& module, Stream& stream) {
  STRATA_ASSIGN_OR_RETURN(std::vector<std::size_t> buckets, buckets_of(module));
  if (buckets.empty()) return Status::OK();
  STRATA_ASSIGN_OR_RETURN(std::vector<bool> resident, fetch_->release(buckets, stream));
  return for_used(module, [&](Parameter* p, std::size_t i) -> Status {
    const auto at = std::find(buckets.begin(), buckets.end(), layout_.bucket_of(i)) - buckets.begin();
    if (!resident[static_cast<std::size_t>(at)]) p->unbind();
    return Status::OK();
  });
}

Status DataParallel::begin_step(StepOptimizer& optimizer, Stream& stream) {
  if (!grads_.empty()) STRATA_RETURN_IF_ERROR(stream.device().fill(grads_.view(grad_dtype_), 0.0f, stream));
  // The previous step updated every rank's slices (or, skipped, left them equal: gathering
  // them again is harmless); so did anything since that set master weights.
  if (gather_ != nullptr) gather_->mark_all();
  optimizer_ = &optimizer;
  // Pipelined: the micro-batches accumulate from zero, none of them the reducing one.
  if (pipelined_ && sharded_ != nullptr) STRATA_RETURN_IF_ERROR(sharded_->begin_micro(0, false, stream));
  if (fetch_ != nullptr) return fetch_->begin_step(stream);
  return Status::OK();
}

Result<DeviceView> DataParallel::accumulated_grad(const Parameter& p, Stream& stream) {
  if (!pipelined_) return failed_precondition("data parallel: accumulated_grad() is the pipelined engine's");
  STRATA_ASSIGN_OR_RETURN(std::size_t i, index_of(p));
  if (sharded_ != nullptr) return sharded_->tensor_grad(i, stream);
  return grads_.view(grad_dtype_, layout_.offset(i) * dtype_size(grad_dtype_), p.numel());
}

Status DataParallel::reduce_grads(Stream& stream) {
  if (!pipelined_) return failed_precondition("data parallel: reduce_grads() is the pipelined engine's");
  if (fetch_ != nullptr) STRATA_RETURN_IF_ERROR(fetch_->end_step(stream));
  if (sharded_ != nullptr) {
    STRATA_RETURN_IF_ERROR(sharded_->begin_micro(1, true, stream));
    for (std::size_t i = 0; i < params_.size(); ++i) STRATA_RETURN_IF_ERROR(sharded_->tensor_final(i, stream));
    return sharded_->end_micro(stream);
  }
  if (all_reduce_ == nullptr) return Status::OK();
  all_reduce_->begin();
  for (std::size_t i = 0; i < params_.size(); ++i) STRATA_RETURN_IF_ERROR(all_reduce_->tensor_final(i, stream));
  return all_reduce_->finish(stream);
}

Status DataParallel::begin_micro(int micro, bool last, Stream& stream) {
  last_micro_ = last;
  users_.reset();
  if (sharded_ != nullptr) return sharded_->begin_micro(micro, last, stream);
  if (all_reduce_ != nullptr && last) all_reduce_->begin();
  return Status::OK();
}

Status DataParallel::before_forward(Module& module, StepOptimizer& optimizer, Stream& stream) {
  STRATA_RETURN_IF_ERROR(optimizer.before_forward(module));
  if (fetch_ != nullptr) return acquire(module, false, stream);
  if (gather_ == nullptr) return Status::OK();
  return for_used(module, [&](Parameter*, std::size_t i) -> Status {
    const std::size_t b = layout_.bucket_of(i);
    if (!gather_->pending(b)) return Status::OK();
    const auto [lo, hi] = layout_.bucket_tensors(b);
    STRATA_RETURN_IF_ERROR(optimizer.wait_for_update({params_.data() + lo, hi - lo}));
    return gather_->gather(b, stream);
  });
}

Status DataParallel::after_forward(Module& module, Stream& stream) {
  return fetch_ != nullptr ? release(module, stream) : Status::OK();
}

Status DataParallel::before_backward(Module& module, Stream& stream) {
  if (fetch_ != nullptr) return acquire(module, true, stream);
  if (stage_ != 2 || pipelined_) return Status::OK();
  return for_used(module, [&](Parameter* p, std::size_t i) -> Status {
    STRATA_ASSIGN_OR_RETURN(DeviceView g, sharded_->tensor_grad(i, stream));
    return p->bind_grad(g);
  });
}

Status DataParallel::after_backward(Module& module, Stream& stream) {
  STRATA_RETURN_IF_ERROR(for_used(module, [&](Parameter* p, std::size_t i) -> Status {
    if (!users_.finish_use(*p)) return Status::OK();
    if (sharded_ != nullptr) return sharded_->tensor_final(i, stream);
    if (all_reduce_ != nullptr && last_micro_) return all_reduce_->tensor_final(i, stream);
    return Status::OK();
  }));
  return fetch_ != nullptr ? release(module, stream) : Status::OK();
}

Status DataParallel::end_micro(Stream& stream) {
  if (fetch_ != nullptr && last_micro_) STRATA_RETURN_IF_ERROR(fetch_->end_step(stream));
  if (sharded_ != nullptr) return sharded_->end_micro(stream);
  if (all_reduce_ != nullptr && last_micro_) return all_reduce_->finish(stream);
  return Status::OK();
}

std::pair<std::uint64_t, std::uint64_t> DataParallel::owned(std::size_t i, std::uint64_t first, std::uint64_t n,
                                                            int r) const {
  const zero::FlatRange s = layout_.slice(layout_.bucket_of(i), static_cast<std::uint64_t>(r));
  const std::uint64_t at = layout_.offset(i);
  const std::uint64_t lo = std::max(at + first, s.first), hi = std::min(at + first + n, s.end());
  return lo < hi ? std::pair{lo - at, hi - at} : std::pair{first, first};
}

std::pair<std::uint64_t, std::uint64_t> DataParallel::owned_elements(const Parameter& p) const {
  auto i = index_of(p);
  if (stage_ == 0 || !i.ok()) return {0, p.numel()};
  return owned(*i, 0, p.numel(), rank());
}

Status DataParallel::read_state(StepOptimizer& optimizer, const Parameter& p, OptimizerState which, std::uint64_t first,
                                std::span<float> out, Stream& stream) {
  if (stage_ == 0) return optimizer.read_state(p, which, first, out);
  STRATA_ASSIGN_OR_RETURN(std::size_t i, index_of(p));
  Device& device = stream.device();
  // Every owner broadcasts its part through the staging buffer, piece by piece. A rank whose
  // own read fails still sends (zeros) and receives every piece, so that the ranks' collectives
  // stay in step, and returns its error at the end.
  Status failed;
  const std::size_t piece = gather_staging_.size() / sizeof(float);
  for (int r = 0; r < size(); ++r) {
    const auto [lo, hi] = owned(i, first, out.size(), r);
    for (std::uint64_t at = lo; at < hi; at += piece) {
      const std::span<float> part = out.subspan(at - first, std::min<std::uint64_t>(piece, hi - at));
      STRATA_ASSIGN_OR_RETURN(DeviceRange range, gather_staging_.range(0, part.size_bytes()));
      if (r == rank()) {
        Status st = optimizer.read_state(p, which, at, part);
        if (!st.ok()) {
          if (failed.ok()) failed = st.with_context("trainer: reading " + p.name() + " for the other ranks");
          std::fill(part.begin(), part.end(), 0.0f);
        }
        STRATA_RETURN_IF_ERROR(device.copy_to_device(range, std::as_bytes(part), stream));
      }
      STRATA_RETURN_IF_ERROR(dp_->broadcast({range, CommType::kF32, part.size()}, r, stream));
      STRATA_RETURN_IF_ERROR(device.copy_to_host(std::as_writable_bytes(part), range, stream));
      STRATA_RETURN_IF_ERROR(stream.synchronize());
    }
  }
  return failed;
}

Status DataParallel::gather_parameters(StepOptimizer& optimizer, Stream& stream) {
  if (fetch_ != nullptr) {
    // Stage 3 gathers on use: what is gathered now is stale.
    STRATA_RETURN_IF_ERROR(optimizer.synchronize());
    STRATA_RETURN_IF_ERROR(fetch_->invalidate(stream));
    return stream.synchronize();
  }
  if (gather_ == nullptr) return Status::OK();
  STRATA_RETURN_IF_ERROR(optimizer.synchronize());
  gather_->mark_all();
  STRATA_RETURN_IF_ERROR(gather_->gather_all(stream));
  return stream.synchronize();
}

Status DataParallel::write_state(StepOptimizer& optimizer, const Parameter& p, OptimizerState which, std::uint64_t first,
                                 std::span<const float> values) {
  if (stage_ == 0) return optimizer.write_state(p, which, first, values);
  STRATA_ASSIGN_OR_RETURN(std::size_t i, index_of(p));
  const auto [lo, hi] = owned(i, first, values.size(), rank());
  if (lo == hi) return Status::OK();
  return optimizer.write_state(p, which, lo, values.subspan(lo - first, hi - lo));
}

}  // namespace strata::engine
