// The device StepOptimizer: fp32 master weights and Adam moments in device memory, updated by
// Device::adam_step per parameter, or per piece of one with a ZeRO shard (strata/trainer.h's
// OptimizerShard). With an fp32 model the master weights are the parameters' device values
// themselves; with bf16/fp16 the step writes the rounded copy into them. The gradient norm and
// overflow check are engine/grad_norm.h's, shared with the offloaded Adam.
#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/grad_norm.h"
#include "strata/log.h"
#include "strata/trainer.h"

namespace strata {

AdamHyper adam_hyper(const OptimizerConfig& c) {
  AdamHyper h;
  h.lr = c.lr;
  h.beta1 = c.beta1;
  h.beta2 = c.beta2;
  h.eps = c.eps;
  h.weight_decay = c.weight_decay;
  h.mode = c.type == "adam" ? AdamMode::kAdam : AdamMode::kAdamW;
  h.bias_correction = c.bias_correction;
  return h;
}

namespace {

class DeviceAdam final : public StepOptimizer {
 public:
  explicit DeviceAdam(const OptimizerConfig& c) : hyper_(adam_hyper(c)) {}

  std::string name() const override { return "device-adam"; }

  Status attach(Module& model, Device& device, Stream& stream, const OptimizerShard& shard) override {
    device_ = &device;
    stream_ = &stream;
    group_ = shard.group;
    tp_ = shard.tp;
    pp_ = shard.pp;
    replicas_ = shard.replicas;
    pieces_.clear();
    std::vector<ParamPiece> pieces = shard.pieces;
    if (!shard.sharded()) {
      for (Parameter* p : model.parameters()) pieces.push_back(ParamPiece{p, 0, p->grad(), {}});
    }
    std::size_t master_bytes = 0, moment_bytes = 0;
    auto round_up = [](std::size_t b) { return (b + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment; };
    for (const ParamPiece& pc : pieces) {
      const Parameter* p = pc.param;
      if (pc.first > p->numel() || pc.grad.count() > p->numel() - pc.first) {
        return invalid_argument("device adam: a piece of " + p->name() + " lies outside it");
      }
      if (pc.host_home || pc.host_grad) {
        return invalid_argument("device adam: " + p->name() + " has its values in host memory only (offload.param): "
                                "the update must run there too; set offload.optimizer.device = \"cpu\" or \"nvme\"");
      }
      auto value = pc.device_value();
      if (!value.ok()) return value.status().with_context("device adam");
      if (value->device() != &device) {
        return invalid_argument("device adam: parameter " + p->name() + " lives on another device");
      }
      if (value->dtype() != DType::kF32) master_bytes += round_up(pc.grad.count() * 4);
      moment_bytes += round_up(pc.grad.count() * 4);
    }
    auto alloc = [&](std::size_t bytes, const char* what) -> Result<DeviceBuffer> {
      auto b = device.allocate(std::max<std::size_t>(bytes, 1));
      if (!b.ok()) return b.status().with_context(std::string("device adam: ") + what);
      return b;
    };
    if (master_bytes > 0) {
      STRATA_ASSIGN_OR_RETURN(master_, alloc(master_bytes, "fp32 master weights"));
    }
    STRATA_ASSIGN_OR_RETURN(exp_avg_, alloc(moment_bytes, "first moments (exp_avg)"));
    STRATA_ASSIGN_OR_RETURN(exp_avg_sq_, alloc(moment_bytes, "second moments (exp_avg_sq)"));
    auto sumsq = engine::GradSquaredNorm::create(device);
    if (!sumsq.ok()) return sumsq.status().with_context("device adam");
    sumsq_ = std::move(*sumsq);
    std::size_t m_at = 0, s_at = 0;
    for (const ParamPiece& pc : pieces) {
      const std::uint64_t n = pc.grad.count();
      Piece st;
      st.param = pc.param;
      st.first = pc.first;
      st.grad = pc.grad;
      STRATA_ASSIGN_OR_RETURN(st.value, pc.device_value());
      if (st.value.dtype() == DType::kF32) {
        st.master = st.value;
      } else {
        STRATA_ASSIGN_OR_RETURN(st.master, master_.view(DType::kF32, m_at, n));
        m_at += round_up(n * 4);
      }
      STRATA_ASSIGN_OR_RETURN(st.exp_avg, exp_avg_.view(DType::kF32, s_at, n));
      STRATA_ASSIGN_OR_RETURN(st.exp_avg_sq, exp_avg_sq_.view(DType::kF32, s_at, n));
      s_at += round_up(n * 4);
      pieces_.push_back(st);
    }
    STRATA_RETURN_IF_ERROR(device.fill(exp_avg_.view(DType::kF32), 0.0f, stream));
    STRATA_RETURN_IF_ERROR(device.fill(exp_avg_sq_.view(DType::kF32), 0.0f, stream));
    updates_ = 0;
    return stream.synchronize();
  }

  Status set_master(const Parameter& p, std::uint64_t first, std::span<const float> values) override {
    return write_state(p, OptimizerState::kMaster, first, values);
  }

  Status get_master(const Parameter& p, std::uint64_t first, std::span<float> out) override {
    return read_state(p, OptimizerState::kMaster, first, out);
  }

  Result<UpdateResult> step(const UpdateRequest& req) override {
    if (device_ == nullptr) return failed_precondition("device adam: attach() a model first");
    if (!(req.loss_scale > 0) || !std::isfinite(req.loss_scale)) {
      return invalid_argument("device adam: loss_scale must be finite and positive");
    }
    // The squared norm of all gradients (summed over the group's shards), read back once; it is
    // also the overflow check.
    const engine::NormViews grads = engine::norm_views(pieces_, tp_, replicas_);
    STRATA_RETURN_IF_ERROR(sumsq_.enqueue(grads.whole, *stream_, group_, grads.split, tp_, pp_));
    STRATA_RETURN_IF_ERROR(stream_->synchronize());
    const engine::NormedUpdate u =
        engine::normed_update(engine::finish_grad_norm(sumsq_.value(), req.loss_scale, req.grad_clip), hyper_, req, updates_);
    if (!u.result.finite) return u.result;
    const AdamHyper& h = u.hyper;
    const AdamStep& at = u.step;
    for (const Piece& st : pieces_) {
      AdamTensors t;
      t.params = st.master;
      t.grads = st.grad;
      t.exp_avg = st.exp_avg;
      t.exp_avg_sq = st.exp_avg_sq;
      if (st.master.address() != st.value.address()) t.params_out = st.value;
      STRATA_RETURN_IF_ERROR(device_->adam_step(t, h, at, *stream_));
    }
    ++updates_;
    return u.result;
  }

  std::int64_t updates() const override { return updates_; }
  std::uint64_t device_bytes() const override {
    return master_.size() + exp_avg_.size() + exp_avg_sq_.size() + sumsq_.device_bytes();
  }

  Status read_state(const Parameter& p, OptimizerState which, std::uint64_t first, std::span<float> out) override {
    auto read = [&](const Piece& st, std::uint64_t at, std::uint64_t len) -> Status {
      STRATA_ASSIGN_OR_RETURN(DeviceView m, tensor(st, which).slice(first + at - st.first, len));
      return device_->copy_to_host(std::as_writable_bytes(out.subspan(at, len)), m.range(), *stream_);
    };
    STRATA_RETURN_IF_ERROR(for_pieces(p, first, out.size(), read));
    return stream_->synchronize();
  }
  Status write_state(const Parameter& p, OptimizerState which, std::uint64_t first,
                     std::span<const float> values) override {
    auto write = [&](const Piece& st, std::uint64_t at, std::uint64_t len) -> Status {
      const std::uint64_t off = first + at - st.first;
      STRATA_ASSIGN_OR_RETURN(DeviceView m, tensor(st, which).slice(off, len));
      STRATA_RETURN_IF_ERROR(device_->copy_to_device(m.range(), std::as_bytes(values.subspan(at, len)), *stream_));
      if (which != OptimizerState::kMaster || st.master.address() == st.value.address()) return Status::OK();
      STRATA_ASSIGN_OR_RETURN(DeviceView v, st.value.slice(off, len));
      return device_->cast(v, m, *stream_);
    };
    STRATA_RETURN_IF_ERROR(for_pieces(p, first, values.size(), write));
    return stream_->synchronize();  // `values` may go away once this returns
  }
  Status set_updates(std::int64_t updates) override {
    if (updates < 0) return invalid_argument("device adam: the update count must not be negative");
    updates_ = updates;
    return Status::OK();
  }

 private:
  // Elements [first, first + value.count()) of param, and where their state lives.
  struct Piece {
    Parameter* param = nullptr;
    std::uint64_t first = 0;
    DeviceView grad, value, master, exp_avg, exp_avg_sq;
  };

  static const DeviceView& tensor(const Piece& st, OptimizerState which) {
    return which == OptimizerState::kMaster ? st.master : which == OptimizerState::kExpAvg ? st.exp_avg : st.exp_avg_sq;
  }

  // Runs fn(piece, offset into the caller's range, count) over the pieces holding elements
  // [first, first + n) of p; elements no piece holds are an error naming them.
  template <typename Fn>
  Status for_pieces(const Parameter& p, std::uint64_t first, std::uint64_t n, Fn fn) const {
    if (device_ == nullptr) return failed_precondition("device adam: attach() a model first");
    std::uint64_t covered = 0;
    for (const Piece& st : pieces_) {
      if (st.param != &p) continue;
      const std::uint64_t lo = std::max(first, st.first), hi = std::min(first + n, st.first + st.value.count());
      if (lo >= hi) continue;
      STRATA_RETURN_IF_ERROR(fn(st, lo - first, hi - lo));
      covered += hi - lo;
    }
    if (covered != n) {
      return invalid_argument("device adam: elements [" + std::to_string(first) + ", " + std::to_string(first + n) +
                              ") of " + p.name() + " are not all this rank's to update (" + std::to_string(covered) +
                              " are)");
    }
    return Status::OK();
  }

  AdamHyper hyper_;
  Device* device_ = nullptr;
  Stream* stream_ = nullptr;
  Communicator* group_ = nullptr;
  Communicator* tp_ = nullptr;
  Communicator* pp_ = nullptr;
  std::vector<const Parameter*> replicas_;
  DeviceBuffer master_, exp_avg_, exp_avg_sq_;
  engine::GradSquaredNorm sumsq_;
  std::vector<Piece> pieces_;
  std::int64_t updates_ = 0;
};

}  // namespace

Result<std::unique_ptr<StepOptimizer>> make_device_adam(const OptimizerConfig& config) {
  if (config.type != "adam" && config.type != "adamw") {
    return invalid_argument("optimizer.type = \"" + config.type + "\": the device optimizer knows adam and adamw");
  }
  return std::unique_ptr<StepOptimizer>(new DeviceAdam(config));
}

}  // namespace strata
