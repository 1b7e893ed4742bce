// The device StepOptimizer: fp32 master weights and Adam moments in device memory, updated by
// Device::adam_step per parameter. With an fp32 model the master weights are the parameters'
// device values themselves; with bf16/fp16 the step writes the rounded copy into them. The
// gradient norm and overflow check are engine/grad_norm.h's, shared with the offloaded Adam.
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

  Status attach(Module& model, Device& device, Stream& stream) override {
    device_ = &device;
    stream_ = &stream;
    params_.clear();
    std::size_t master_bytes = 0, moment_bytes = 0;
    auto round_up = [](std::size_t b) { return (b + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment; };
    for (Parameter* p : model.parameters()) {
      if (!p->bound()) return failed_precondition("device adam: parameter " + p->name() + " has no device storage");
      if (p->value().device() != &device) {
        return invalid_argument("device adam: parameter " + p->name() + " lives on another device");
      }
      if (p->value().dtype() != DType::kF32) master_bytes += round_up(p->numel() * 4);
      moment_bytes += round_up(p->numel() * 4);
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
    for (Parameter* p : model.parameters()) {
      State st;
      st.param = p;
      if (p->value().dtype() == DType::kF32) {
        st.master = p->value();
      } else {
        STRATA_ASSIGN_OR_RETURN(st.master, master_.view(DType::kF32, m_at, p->numel()));
        m_at += round_up(p->numel() * 4);
      }
      STRATA_ASSIGN_OR_RETURN(st.exp_avg, exp_avg_.view(DType::kF32, s_at, p->numel()));
      STRATA_ASSIGN_OR_RETURN(st.exp_avg_sq, exp_avg_sq_.view(DType::kF32, s_at, p->numel()));
      s_at += round_up(p->numel() * 4);
      params_.push_back(st);
    }
    STRATA_RETURN_IF_ERROR(device.fill(exp_avg_.view(DType::kF32), 0.0f, stream));
    STRATA_RETURN_IF_ERROR(device.fill(exp_avg_sq_.view(DType::kF32), 0.0f, stream));
    updates_ = 0;
    return stream.synchronize();
  }

  Status set_master(const Parameter& p, std::uint64_t first, std::span<const float> values) override {
    STRATA_ASSIGN_OR_RETURN(const State* st, find(p));
    STRATA_ASSIGN_OR_RETURN(DeviceView m, st->master.slice(first, values.size()));
    STRATA_RETURN_IF_ERROR(device_->copy_to_device(m.range(), std::as_bytes(values), *stream_));
    if (st->master.address() != p.value().address()) {
      STRATA_ASSIGN_OR_RETURN(DeviceView v, p.value().slice(first, values.size()));
      STRATA_RETURN_IF_ERROR(device_->cast(v, m, *stream_));
    }
    return stream_->synchronize();  // `values` may go away once this returns
  }

  Status get_master(const Parameter& p, std::uint64_t first, std::span<float> out) override {
    STRATA_ASSIGN_OR_RETURN(const State* st, find(p));
    STRATA_ASSIGN_OR_RETURN(DeviceView m, st->master.slice(first, out.size()));
    STRATA_RETURN_IF_ERROR(device_->copy_to_host(std::as_writable_bytes(out), m.range(), *stream_));
    return stream_->synchronize();
  }

  Result<UpdateResult> step(const UpdateRequest& req) override {
    if (device_ == nullptr) return failed_precondition("device adam: attach() a model first");
    if (!(req.loss_scale > 0) || !std::isfinite(req.loss_scale)) {
      return invalid_argument("device adam: loss_scale must be finite and positive");
    }
    // The squared norm of all gradients, read back once; it is also the overflow check.
    std::vector<DeviceView> grads;
    for (const State& st : params_) grads.push_back(st.param->grad());
    STRATA_RETURN_IF_ERROR(sumsq_.enqueue(grads, *stream_));
    STRATA_RETURN_IF_ERROR(stream_->synchronize());
    const engine::GradNorm norm = engine::finish_grad_norm(sumsq_.value(), req.loss_scale, req.grad_clip);
    UpdateResult r;
    r.grad_norm = norm.norm;
    r.finite = norm.finite;
    if (!r.finite) return r;
    AdamHyper h = hyper_;
    h.lr = req.lr;
    const AdamStep at{updates_ + 1, norm.grad_scale};
    for (const State& st : params_) {
      AdamTensors t;
      t.params = st.master;
      t.grads = st.param->grad();
      t.exp_avg = st.exp_avg;
      t.exp_avg_sq = st.exp_avg_sq;
      if (st.master.address() != st.param->value().address()) t.params_out = st.param->value();
      STRATA_RETURN_IF_ERROR(device_->adam_step(t, h, at, *stream_));
    }
    ++updates_;
    r.applied = true;
    return r;
  }

  std::int64_t updates() const override { return updates_; }
  std::uint64_t device_bytes() const override { return master_.size() + exp_avg_.size() + exp_avg_sq_.size(); }

  Status read_state(const Parameter& p, OptimizerState which, std::uint64_t first, std::span<float> out) override {
    if (which == OptimizerState::kMaster) return get_master(p, first, out);
    STRATA_ASSIGN_OR_RETURN(const State* st, find(p));
    STRATA_ASSIGN_OR_RETURN(DeviceView m, moment(*st, which).slice(first, out.size()));
    STRATA_RETURN_IF_ERROR(device_->copy_to_host(std::as_writable_bytes(out), m.range(), *stream_));
    return stream_->synchronize();
  }
  Status write_state(const Parameter& p, OptimizerState which, std::uint64_t first,
                     std::span<const float> values) override {
    if (which == OptimizerState::kMaster) return set_master(p, first, values);
    STRATA_ASSIGN_OR_RETURN(const State* st, find(p));
    STRATA_ASSIGN_OR_RETURN(DeviceView m, moment(*st, which).slice(first, values.size()));
    STRATA_RETURN_IF_ERROR(device_->copy_to_device(m.range(), std::as_bytes(values), *stream_));
    return stream_->synchronize();
  }
  Status set_updates(std::int64_t updates) override {
    if (updates < 0) return invalid_argument("device adam: the update count must not be negative");
    updates_ = updates;
    return Status::OK();
  }

 private:
  struct State {
    Parameter* param = nullptr;
    DeviceView master, exp_avg, exp_avg_sq;
  };

  static const DeviceView& moment(const State& st, OptimizerState which) {
    return which == OptimizerState::kExpAvg ? st.exp_avg : st.exp_avg_sq;
  }

  Result<const State*> find(const Parameter& p) const {
    for (const State& st : params_) {
      if (st.param == &p) return &st;
    }
    return invalid_argument("device adam: parameter " + p.name() + " is not attached");
  }

  AdamHyper hyper_;
  Device* device_ = nullptr;
  Stream* stream_ = nullptr;
  DeviceBuffer master_, exp_avg_, exp_avg_sq_;
  engine::GradSquaredNorm sumsq_;
  std::vector<State> params_;
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
