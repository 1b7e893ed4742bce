// The offloaded Adam's update pipeline: chunks of state through the tier manager, CPU Adam,
// the updated weights to the device or the parameter swap (engine/offload_adam.h).
#include <chrono>
#include <cstring>
#include <deque>

#include "engine/offload_adam.h"
#include "kernels/numeric.h"

namespace strata::engine {

std::size_t OffloadAdam::chunks_needed(std::span<Parameter* const> params) const {
  std::size_t needed = 0;
  for (Parameter* p : params) {
    auto it = index_.find(p);
    if (it == index_.end()) continue;
    for (std::size_t i : it->second) needed = std::max(needed, pieces_[i].last_chunk + 1);
  }
  return needed;
}

Status OffloadAdam::join() {
  if (!worker_.joinable()) return Status::OK();
  worker_.join();
  pass_delayed_ = false;
  std::lock_guard<std::mutex> lock(mu_);
  Status s = std::move(worker_status_);
  worker_status_ = Status::OK();
  return s.ok() ? s : s.with_context(name() + ": updating the optimizer state");
}

Status OffloadAdam::offload_grad(std::size_t i) {
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

void OffloadAdam::to_value_dtype(const float* src, std::byte* dst, std::size_t n) const {
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

Status OffloadAdam::upload_all(Stream& stream) {
  const std::size_t vs = dtype_size(value_dtype_);
  for (std::size_t i = 0; i < pieces_.size(); ++i) {
    const DeviceView& v = pieces_[i].value;
    if (v.empty()) continue;  // a host home
    STRATA_RETURN_IF_ERROR(device_->copy_to_device(v.range(), {values_host_.data() + layout_.offset(i) * vs, v.count() * vs}, stream));
  }
  upload_pending_ = false;
  return Status::OK();
}

namespace {

// Bytes a tier manager moved to or from NVMe so far.
std::uint64_t nvme_traffic(const TierStats& s) {
  const auto nvme = static_cast<std::size_t>(Tier::kNvme);
  std::uint64_t bytes = 0;
  for (std::size_t t = 0; t < static_cast<std::size_t>(kTierCount); ++t) {
    if (t != nvme) bytes += s.bytes_moved[nvme][t] + s.bytes_moved[t][nvme];
  }
  return bytes;
}

}  // namespace

std::uint64_t OffloadAdam::nvme_traffic_so_far() const {
  std::uint64_t bytes = tiers_ ? nvme_traffic(tiers_->stats()) : 0;
  if (value_swap_) bytes += nvme_traffic(value_swap_->stats());
  return bytes;
}

std::optional<UpdatePassStats> OffloadAdam::last_pass() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (last_pass_.passes == 0) return std::nullopt;
  return last_pass_;
}

Status OffloadAdam::update_all(const AdamHyper& h, const AdamStep& at, Pass mode, std::size_t slot) {
  const auto from = std::chrono::steady_clock::now();
  const std::uint64_t bytes = nvme_traffic_so_far();
  STRATA_RETURN_IF_ERROR(update_chunks(h, at, mode, slot));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - from).count();
  const std::uint64_t moved = nvme_traffic_so_far() - bytes;
  std::lock_guard<std::mutex> lock(mu_);
  ++last_pass_.passes;
  last_pass_.seconds = seconds;
  last_pass_.nvme_bytes = moved;
  return Status::OK();
}

Status OffloadAdam::update_chunks(const AdamHyper& h, const AdamStep& at, Pass mode, std::size_t slot) {
  const bool background = mode != Pass::kInline;
  const OptimizerOffloadConfig& oc = profile_.offload_optimizer;
  const bool nvme = home_ == Tier::kNvme;
  std::size_t ahead = 0;
  // flush() (synchronous writes) needs every write pin released, so without pipeline_write
  // the read-ahead is a prefetch hint after each flush instead of pins held ahead.
  if (nvme && oc.pipeline_read && oc.pipeline_write) ahead = static_cast<std::size_t>(std::max(1, oc.buffer_count - 2));
  const std::size_t gs = dtype_size(grad_dtype_);
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
    STRATA_RETURN_IF_ERROR(store_values(c, values, value_pin, mode, upload));
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

Status OffloadAdam::store_values(const Chunk& c, const std::byte* values, offload::Pin& value_pin, Pass mode,
                                 Stream& upload) {
  const std::size_t vs = dtype_size(value_dtype_);
  bool copied = false;
  for (const zero::FlatSegment& s : c.segments) {
    if (mode == Pass::kDelayed || pieces_[s.tensor].value.empty()) continue;  // uploaded later; a host home
    STRATA_ASSIGN_OR_RETURN(DeviceView dv, pieces_[s.tensor].value.slice(s.tensor_first, s.count));
    STRATA_RETURN_IF_ERROR(
        device_->copy_to_device(dv.range(), {values + (s.flat_first - c.first) * vs, s.count * vs}, upload));
    copied = true;
  }
  if (value_pin.valid()) STRATA_RETURN_IF_ERROR(value_pin.mark_dirty());  // written back once evicted
  return release_values(value_pin, copied ? &upload : nullptr);
}

Status OffloadAdam::release_values(offload::Pin& pin, Stream* copied_on) {
  if (!pin.valid()) return Status::OK();
  if (copied_on != nullptr) STRATA_RETURN_IF_ERROR(copied_on->synchronize());
  pin.release();
  return Status::OK();
}

Result<std::byte*> OffloadAdam::host_values_at(std::uint64_t first, std::uint64_t n, Access mode, offload::Pin& pin) {
  const std::size_t vs = dtype_size(value_dtype_);
  if (!value_swap_) return values_host_.data() + first * vs;
  const auto k = static_cast<std::size_t>(first / chunk_elems_);
  const Chunk& c = chunks_[k];
  const bool whole = mode == Access::kOverwrite && first == c.first && n == c.n;
  STRATA_ASSIGN_OR_RETURN(pin, value_swap_->pin_for_write(k, whole));
  STRATA_RETURN_IF_ERROR(pin.wait().with_context(name() + ": reading parameter values from NVMe"));
  return pin.host_bytes().data() + (first - c.first) * vs;
}

Status OffloadAdam::make_value_swap(Device& device) {
  std::vector<engine::ValueSwap::Range> chunks, pieces;
  for (const Chunk& c : chunks_) chunks.push_back({c.first, c.n});
  for (std::size_t i = 0; i < pieces_.size(); ++i) pieces.push_back({layout_.offset(i), pieces_[i].count});
  STRATA_ASSIGN_OR_RETURN(value_swap_, engine::ValueSwap::create(profile_, device, value_dtype_, std::move(chunks),
                                                                 std::move(pieces)));
  return Status::OK();
}

}  // namespace strata::engine
