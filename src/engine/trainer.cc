// The one-rank Trainer of strata/trainer.h: parameter and gradient storage on the device, the
// training step, loss scaling and the weights interchange.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>


#include "engine/data_parallel.h"
#include "engine/loss_scaler.h"
#include "engine/pipeline.h"
#include "engine/value_swap.h"
#include "model/safetensors.h"
#include "strata/log.h"
#include "strata/trainer.h"

namespace strata {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Elements initialised per call (bounds the host memory of initialising a large parameter).
constexpr std::size_t kInitChunk = 1 << 20;

}  // namespace

struct Trainer::Impl final : ModuleHooks {
  explicit Impl(const Profile& p) : profile(p), scaler(p.precision) {}
  ~Impl() override {
    // Buffers must not be freed under work still queued on the stream, or under an update the
    // optimizer still runs in the background (it writes the parameters' device values).
    if (opt) opt->synchronize().ignore();
    if (stream) stream->synchronize().ignore();
    if (model) model->set_hooks(nullptr);
  }

  Status before_forward(Module& m, bool) override { return dp->before_forward(m, *opt, *stream); }
  Status after_forward(Module& m, bool) override { return dp->after_forward(m, *stream); }
  Status before_backward(Module& m) override { return dp->before_backward(m, *stream); }
  Status after_backward(Module& m) override {
    STRATA_RETURN_IF_ERROR(opt->after_backward(m, last_micro));
    return dp->after_backward(m, *stream);
  }

  Profile profile;
  TrainerOptions options;
  Device* device = nullptr;
  std::unique_ptr<Stream> stream;
  std::unique_ptr<Gpt> model;
  std::unique_ptr<StepOptimizer> opt;
  // The parameters' values and gradients, and their reduction over the data-parallel group.
  std::unique_ptr<engine::DataParallel> dp;
  DeviceBuffer tokens;   // (2, B, T) int32: inputs, then targets
  DeviceBuffer loss;     // (1) fp32
  PinnedBuffer staging;  // (A, 2, B, T) int32 of host tokens, then the loss read back
  engine::LossScaler scaler;
  std::int64_t steps_done = 0;
  bool last_micro = false;
  Communicator* group = nullptr;  // the data-parallel group, null for one rank
  Communicator* tp = nullptr;     // the tensor-parallel group, null for tp = 1
  Communicator* pp = nullptr;     // the pipeline's stages, null for pp = 1
  std::unique_ptr<engine::PipelineStage> stage;  // with pp
  // The first and the last stage, whose copies of the tied wte sum their gradients (pp > 1;
  // every stage takes part in making it, only those two use it).
  std::unique_ptr<Communicator> tied_group;

  std::size_t rows_tokens() const {
    return static_cast<std::size_t>(profile.train.micro_batch) * static_cast<std::size_t>(profile.train.dims.seq_len);
  }
  std::int32_t* host_tokens(int micro) {
    return staging.as<std::int32_t>().data() + static_cast<std::size_t>(micro) * 2 * rows_tokens();
  }
  float* host_loss() {
    return reinterpret_cast<float*>(host_tokens(profile.train.grad_accum));
  }

  // pp > 1: this stage's share of the schedule, and the tied group of the first and last stage.
  Status make_stage(const Profile& p) {
    STRATA_ASSIGN_OR_RETURN(pipeline::Schedule schedule, engine::schedule_of(p, pp->size()));
    STRATA_ASSIGN_OR_RETURN(stage, engine::PipelineStage::create(std::move(schedule), *model, *device, *pp, *stream,
                                                                 p.train.micro_batch, p.train.dims.seq_len));
    stage->set_timestamps(options.pipeline_timestamps);
    const bool ends = pp->rank() == 0 || pp->rank() == pp->size() - 1;
    STRATA_ASSIGN_OR_RETURN(tied_group, pp->split(ends ? 0 : 1, pp->rank()));
    return Status::OK();
  }
  // The stage's wte when another stage holds the same (the last stage's copy), else null.
  const Parameter* tied_copy() const {
    if (pp == nullptr || pp->rank() == 0) return nullptr;
    return model->find_parameter("wte.weight");
  }
  Status reduce_tied(Stream& s) {
    Parameter* wte = model->find_parameter("wte.weight");
    if (wte == nullptr) return Status::OK();
    STRATA_ASSIGN_OR_RETURN(DeviceView grad, dp->accumulated_grad(*wte, s));
    const CommBuffer g = CommBuffer::of(grad);
    return tied_group->all_reduce(g, g, ReduceOp::kSum, s);
  }

  // Enqueues this stage's instructions of the step (pp > 1).
  Status run_pipeline(const TokenDataset& data, const BatchShape& shape) {
    const int A = profile.train.grad_accum;
    engine::PipelineStage::Step step;
    step.load = [&](int micro, std::span<std::int32_t> tok, std::span<std::int32_t> tgt) {
      return data.batch(steps_done, micro, shape, tok, tgt);
    };
    step.reduce_tied = [&] { return reduce_tied(*stream); };
    step.reduce_grads = [&] { return dp->reduce_grads(*stream); };
    step.loss_sum = *loss.view(DType::kF32, 0, 1);
    step.loss_weight = 1.0f / static_cast<float>(A);
    step.dloss = static_cast<float>(scaler.scale() / A / dp->size());
    return stage->run(step);
  }

  // Checks that a group is the profile's parallel.dp (or tp) ranks.
  Status check_group(Communicator* g, int want, const char* key) const {
    const int ranks = g == nullptr ? 1 : g->size();
    if (want != ranks) {
      return invalid_argument(std::string(key) + " = " + std::to_string(want) + " but the trainer runs as " +
                              std::string(ranks == 1 ? "one rank" : "one of " + std::to_string(ranks) + " ranks") +
                              " of its group; start dp x tp x pp ranks (strata train --ranks N, or mpirun -n N "
                              "strata train)");
    }
    return Status::OK();
  }
};

Result<DeviceView> ParamPiece::device_value() const {
  if (host_home) return DeviceView();
  if (!value.empty()) {
    if (value.count() != size() || value.dtype() != param->dtype()) {
      return invalid_argument("optimizer: the device values given for a piece of " + param->name() +
                              " do not match its gradient");
    }
    return value;
  }
  if (!param->bound()) return failed_precondition("optimizer: parameter " + param->name() + " has no device storage");
  return param->value().slice(first, size());
}

Trainer::Trainer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Trainer::~Trainer() = default;

Result<std::unique_ptr<Trainer>> Trainer::create(const Profile& profile, Device& device,
                                                 std::unique_ptr<StepOptimizer> optimizer,
                                                 const TrainerOptions& options) {
  STRATA_RETURN_IF_ERROR(profile.validate());
  // Keys that nothing in this build reads yet are refused rather than ignored.
  STRATA_RETURN_IF_ERROR(profile.check_available());
  const TrainConfig& tc = profile.train;
  if (tc.micro_batch < 1 || tc.grad_accum < 1) {
    return invalid_argument("train.micro_batch and train.grad_accum must be at least 1");
  }
  auto impl = std::make_unique<Impl>(profile);
  Impl& m = *impl;
  m.options = options;
  m.device = &device;
  STRATA_ASSIGN_OR_RETURN(m.stream, device.create_stream("train"));
  STRATA_RETURN_IF_ERROR(m.check_group(options.dp, profile.parallel.dp, "parallel.dp"));
  STRATA_RETURN_IF_ERROR(m.check_group(options.tp, profile.parallel.tp, "parallel.tp"));
  STRATA_RETURN_IF_ERROR(m.check_group(options.pp, profile.parallel.pp, "parallel.pp"));
  GptConfig config = GptConfig::from_profile(profile);
  if (options.tp != nullptr) config.tp_rank = options.tp->rank();
  if (options.pp != nullptr) config.pp_rank = options.pp->rank();
  STRATA_ASSIGN_OR_RETURN(m.model, Gpt::create(config));
  const GptConfig& gc = m.model->config();

  m.group = options.dp != nullptr && options.dp->size() > 1 ? options.dp : nullptr;
  m.pp = options.pp != nullptr && options.pp->size() > 1 ? options.pp : nullptr;
  STRATA_ASSIGN_OR_RETURN(m.dp, engine::DataParallel::create(profile, *m.model, gc.dtype, gc.grad_dtype, device, m.group,
                                                                 options.time_gather_stalls, m.pp != nullptr));
  m.tp = options.tp != nullptr && options.tp->size() > 1 ? options.tp : nullptr;
  StageSlots slots;
  if (m.pp != nullptr) {
    STRATA_RETURN_IF_ERROR(m.make_stage(profile));
    slots = m.stage->slots();
  }
  STRATA_RETURN_IF_ERROR(m.model->prepare(device, tc.micro_batch, m.tp, slots));

  const std::size_t bt = m.rows_tokens();
  auto tokens = device.allocate(2 * bt * sizeof(std::int32_t));
  if (!tokens.ok()) return tokens.status().with_context("trainer: token buffer");
  m.tokens = std::move(*tokens);
  auto loss = device.allocate(sizeof(float));
  if (!loss.ok()) return loss.status().with_context("trainer: loss scalar");
  m.loss = std::move(*loss);
  STRATA_ASSIGN_OR_RETURN(
      m.staging,
      device.allocate_pinned(static_cast<std::size_t>(tc.grad_accum) * 2 * bt * sizeof(std::int32_t) + sizeof(float)));

  if (optimizer == nullptr) {
    STRATA_ASSIGN_OR_RETURN(optimizer, make_step_optimizer(profile));
  }
  m.opt = std::move(optimizer);
  OptimizerShard shard = m.dp->shard();
  shard.tp = m.tp;
  shard.pp = m.pp;
  if (const Parameter* copy = m.tied_copy()) shard.replicas.push_back(copy);
  STRATA_RETURN_IF_ERROR(m.opt->attach(*m.model, device, *m.stream, shard));
  STRATA_RETURN_IF_ERROR(m.dp->attach_optimizer(*m.opt));
  m.model->set_hooks(&m);
  STRATA_RETURN_IF_ERROR(m.dp->reserve_gather_window());

  // Initial weights from the counter-based generator, chunk by chunk.
  std::vector<float> chunk;
  for (Parameter* p : m.model->parameters()) {
    for (std::uint64_t first = 0; first < p->numel();) {
      const std::size_t n = std::min<std::uint64_t>(kInitChunk, p->numel() - first);
      chunk.resize(n);
      init_parameter_values(*p, tc.seed, first, chunk);
      STRATA_RETURN_IF_ERROR(m.dp->write_state(*m.opt, *p, OptimizerState::kMaster, first, chunk));
      first += n;
    }
  }
  STRATA_RETURN_IF_ERROR(m.stream->synchronize());
  STRATA_LOG(kDebug) << "trainer: " << gc.dims.parameter_count() << " parameters, ZeRO stage " << m.dp->stage() << ", "
                     << m.dp->device_bytes().total() << " B values and gradients, " << Gpt::activation_bytes(gc, tc.micro_batch)
                     << " B activations, optimizer " << m.opt->name() << " " << m.opt->device_bytes() << " B on "
                     << device.info().name;
  return std::unique_ptr<Trainer>(new Trainer(std::move(impl)));
}

Gpt& Trainer::model() { return *impl_->model; }
StepOptimizer& Trainer::optimizer() { return *impl_->opt; }
Device& Trainer::device() { return *impl_->device; }
const Profile& Trainer::profile() const { return impl_->profile; }
std::int64_t Trainer::steps_done() const { return impl_->steps_done; }
double Trainer::loss_scale() const { return impl_->scaler.scale(); }
LossScaleState Trainer::loss_scale_state() const {
  const engine::LossScaler& s = impl_->scaler;
  return LossScaleState{s.scale(), s.clean_steps(), s.tolerance_left()};
}
Status Trainer::restore_progress(std::int64_t steps_done, const LossScaleState& scale) {
  if (steps_done < 0) return invalid_argument("trainer: steps done must not be negative");
  if (!(scale.scale > 0) || !std::isfinite(scale.scale)) {
    return invalid_argument("trainer: the loss scale must be finite and positive, not " + std::to_string(scale.scale));
  }
  impl_->steps_done = steps_done;
  impl_->scaler.restore(scale.scale, scale.clean_steps, scale.tolerance_left);
  return Status::OK();
}
std::uint64_t Trainer::tokens_per_step() const {
  return static_cast<std::uint64_t>(impl_->profile.train.grad_accum) * impl_->rows_tokens() *
         static_cast<std::uint64_t>(impl_->dp->size());
}

Result<StepStats> Trainer::train_step(const TokenDataset& data) {
  Impl& m = *impl_;
  const TrainConfig& tc = m.profile.train;
  STRATA_RETURN_IF_ERROR(data.check(tc.dims.vocab, tc.dims.seq_len));
  Device& dev = *m.device;
  Stream& s = *m.stream;
  const int ranks = m.dp->size();
  const BatchShape shape{tc.micro_batch, tc.grad_accum, tc.dims.seq_len, ranks, m.dp->rank()};
  const std::size_t bt = m.rows_tokens();
  const int A = tc.grad_accum;

  StepStats st;
  st.step = m.steps_done + 1;
  st.lr = m.profile.optimizer.lr;
  st.loss_scale = m.scaler.scale();
  st.tokens = tokens_per_step();
  const auto t0 = Clock::now();
  auto phase = [&](double* acc, Clock::time_point since) -> Status {
    if (!m.options.phase_timing) return Status::OK();
    STRATA_RETURN_IF_ERROR(s.synchronize());
    *acc += seconds_since(since);
    return Status::OK();
  };

  STRATA_RETURN_IF_ERROR(m.dp->begin_step(*m.opt, s));
  STRATA_RETURN_IF_ERROR(dev.fill(*m.loss.view(DType::kF32, 0, 1), 0.0f, s));
  const DeviceRange tok = *m.tokens.range(0, bt * 4);
  const DeviceRange tgt = *m.tokens.range(bt * 4, bt * 4);
  if (m.stage != nullptr) STRATA_RETURN_IF_ERROR(m.run_pipeline(data, shape));
  for (int a = 0; a < A && m.stage == nullptr; ++a) {
    std::int32_t* host = m.host_tokens(a);
    STRATA_RETURN_IF_ERROR(data.batch(m.steps_done, a, shape, {host, bt}, {host + bt, bt}));
    STRATA_RETURN_IF_ERROR(dev.copy_to_device(*m.tokens.range(0, 2 * bt * 4),
                                              {reinterpret_cast<const std::byte*>(host), 2 * bt * 4}, s));
    m.last_micro = a == A - 1;
    STRATA_RETURN_IF_ERROR(m.dp->begin_micro(a, m.last_micro, s));
    auto tf = Clock::now();
    STRATA_RETURN_IF_ERROR(m.model->forward(tok, tgt, *m.loss.view(DType::kF32, 0, 1), 1.0f / static_cast<float>(A), s));
    STRATA_RETURN_IF_ERROR(phase(&st.forward_s, tf));
    auto tb = Clock::now();
    // With dp ranks the gradients are summed over them: each carries 1/dp of the mean.
    STRATA_RETURN_IF_ERROR(m.model->backward(static_cast<float>(m.scaler.scale() / A / ranks), s));
    STRATA_RETURN_IF_ERROR(m.dp->end_micro(s));
    STRATA_RETURN_IF_ERROR(phase(&st.backward_s, tb));
  }
  if (m.group != nullptr) {
    const CommBuffer loss{m.loss.range(), CommType::kF32, 1};
    STRATA_RETURN_IF_ERROR(m.group->all_reduce(loss, loss, ReduceOp::kSum, s));
  }
  if (m.pp != nullptr) {  // only the last stage's is not zero
    const CommBuffer loss{m.loss.range(), CommType::kF32, 1};
    STRATA_RETURN_IF_ERROR(m.pp->all_reduce(loss, loss, ReduceOp::kSum, s));
  }
  STRATA_RETURN_IF_ERROR(dev.copy_to_host({reinterpret_cast<std::byte*>(m.host_loss()), sizeof(float)}, m.loss.range(), s));
  auto to = Clock::now();
  UpdateRequest req;
  req.lr = m.profile.optimizer.lr;
  req.loss_scale = m.scaler.scale();
  req.grad_clip = m.profile.optimizer.grad_clip;
  STRATA_ASSIGN_OR_RETURN(UpdateResult r, m.opt->step(req));
  STRATA_RETURN_IF_ERROR(s.synchronize());
  if (m.options.phase_timing) st.optimizer_s = seconds_since(to);
  st.seconds = seconds_since(t0);

  st.loss = static_cast<double>(*m.host_loss()) / ranks;  // the mean over the ranks' rows
  st.grad_norm = r.grad_norm;
  st.skipped = !r.applied;
  st.tokens_per_s = st.seconds > 0 ? static_cast<double>(st.tokens) / st.seconds : 0.0;
  m.scaler.update(r.finite);
  if (!r.finite) {
    STRATA_LOG(kInfo) << "step " << st.step << ": gradients not finite at loss scale " << st.loss_scale
                      << "; update skipped" << (m.scaler.dynamic() ? ", scale now " + std::to_string(m.scaler.scale()) : "");
  }
  ++m.steps_done;
  return st;
}

int Trainer::dp_rank() const { return impl_->dp->rank(); }
int Trainer::dp_size() const { return impl_->dp->size(); }
int Trainer::zero_stage() const { return impl_->dp->stage(); }
Trainer::ParameterBytes Trainer::parameter_bytes() const { return impl_->dp->device_bytes(); }
Trainer::DeviceMemory Trainer::device_memory() const {
  const Impl& m = *impl_;
  DeviceMemory d;
  d.peak = m.device->stats().peak_used;
  d.activations = Gpt::activation_bytes(m.model->config(), m.profile.train.micro_batch,
                                        m.stage != nullptr ? m.stage->slots() : StageSlots{});
  d.parameters = m.dp->device_bytes();
  const auto aligned = [](std::uint64_t b) { return (b + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment; };
  d.batch = aligned(m.tokens.size()) + aligned(m.loss.size()) + (m.stage != nullptr ? aligned(m.stage->batch_bytes()) : 0);
  for (const Parameter* p : m.model->parameters()) d.elements += p->numel();
  d.state_per_element = m.dp->state_bytes_per_element(m.profile);
  d.model_state = d.parameters.values + d.parameters.gradients + aligned(m.opt->device_bytes());
  return d;
}

GatherStats Trainer::gather_stats() const { return impl_->dp->gather_stats(); }
std::optional<TierStats> Trainer::parameter_tier_stats() const {
  const engine::ValueSwap* swap = impl_->opt->value_swap();
  if (swap == nullptr) return std::nullopt;
  return swap->stats();
}
Communicator* Trainer::dp_group() const { return impl_->group; }
std::pair<std::uint64_t, std::uint64_t> Trainer::owned_elements(const Parameter& p) const {
  return impl_->dp->owned_elements(p);
}

Status Trainer::read_state(const Parameter& p, OptimizerState which, std::uint64_t first, std::span<float> out) {
  Impl& m = *impl_;
  STRATA_RETURN_IF_ERROR(m.opt->synchronize());
  return m.dp->read_state(*m.opt, p, which, first, out, *m.stream);
}

Status Trainer::write_state(const Parameter& p, OptimizerState which, std::uint64_t first, std::span<const float> values) {
  Impl& m = *impl_;
  return m.dp->write_state(*m.opt, p, which, first, values);
}

Status Trainer::read_whole_state(const Parameter& p, OptimizerState which, std::vector<float>* whole) {
  Impl& m = *impl_;
  std::vector<float> mine(p.numel());
  for (std::uint64_t first = 0; first < p.numel(); first += kInitChunk) {
    const std::size_t n = std::min<std::uint64_t>(kInitChunk, p.numel() - first);
    STRATA_RETURN_IF_ERROR(read_state(p, which, first, {mine.data() + first, n}));
  }
  if (m.tp == nullptr || !p.shard().split()) {
    *whole = std::move(mine);
    return Status::OK();
  }
  // Every tp rank places its elements where they lie in the whole tensor; the sum of the
  // ranks' disjoint pieces (zeros elsewhere) is exact.
  std::uint64_t n = 1;
  for (std::int64_t d : p.shard().global_shape) n *= static_cast<std::uint64_t>(d);
  std::vector<double> acc(n, 0.0);
  for (std::size_t i = 0; i < mine.size(); ++i) acc[p.shard().global_index(i)] = mine[i];
  STRATA_RETURN_IF_ERROR(m.tp->all_reduce_host(acc, ReduceOp::kSum));
  // wte's padding rows lie beyond the whole model's tensor.
  const std::uint64_t real = p.shard().whole_numel();
  whole->assign(acc.begin(), acc.begin() + static_cast<std::ptrdiff_t>(real));
  return Status::OK();
}

Status Trainer::write_whole_state(const Parameter& p, OptimizerState which, std::span<const float> whole) {
  const std::uint64_t real = p.shard().whole_numel();
  if (whole.size() != real) {
    return invalid_argument("trainer: " + std::to_string(whole.size()) + " values for the whole " + p.name() + " of " +
                            std::to_string(real) + " elements");
  }
  if (!p.shard().split()) return write_state(p, which, 0, whole);
  // This rank's elements; a split wte's padding rows (the shard's tail) keep their values.
  std::vector<float> mine;
  for (std::size_t i = 0; i < p.numel() && p.shard().global_index(i) < real; ++i) {
    mine.push_back(whole[p.shard().global_index(i)]);
  }
  return write_state(p, which, 0, mine);
}


Status Trainer::read_model_state(const std::string& name, OptimizerState which, std::vector<float>* whole) {
  Impl& m = *impl_;
  const Parameter* p = m.model->find_parameter(name);
  if (m.pp == nullptr) {
    if (p == nullptr) return not_found("trainer: no parameter " + name);
    return read_whole_state(*p, which, whole);
  }
  // The holding stage reads it; the pp group's sum of it and zeros is exact.
  const bool holder = p != nullptr && p != m.tied_copy();
  std::vector<float> mine;
  Status read = holder ? read_whole_state(*p, which, &mine) : Status::OK();
  std::vector<double> acc{read.ok() ? 0.0 : 1.0, holder ? static_cast<double>(mine.size()) : 0.0};
  STRATA_RETURN_IF_ERROR(m.pp->all_reduce_host(acc, ReduceOp::kSum));
  if (!read.ok()) return read;
  if (acc[0] != 0) return unavailable("trainer: another pipeline stage could not read " + name + " (its message says why)");
  std::vector<double> sum(static_cast<std::size_t>(acc[1]), 0.0);
  std::copy(mine.begin(), mine.end(), sum.begin());
  STRATA_RETURN_IF_ERROR(m.pp->all_reduce_host(sum, ReduceOp::kSum));
  whole->assign(sum.begin(), sum.end());
  return Status::OK();
}

Status Trainer::write_model_state(const std::string& name, OptimizerState which, std::span<const float> whole) {
  const Parameter* p = impl_->model->find_parameter(name);
  if (p == nullptr) return impl_->pp != nullptr ? Status::OK() : not_found("trainer: no parameter " + name);
  return write_whole_state(*p, which, whole);
}

Result<std::unique_ptr<Gpt>> Trainer::whole_model() const {
  GptConfig whole = impl_->model->config();
  whole.tp_rank = 0;
  whole.tp_size = 1;
  whole.pp_rank = 0;
  whole.pp_size = 1;
  whole.virtual_stages = 1;
  return Gpt::create(whole);
}

Status Trainer::export_weights(const std::string& path, DType dtype) {
  Impl& m = *impl_;
  // The whole tensors in model order: each gathered over the dp group (ZeRO shards), the tp
  // group (tensor shards) and the pp group (stages) by every rank, written by global rank 0.
  // The whole model gives the names and shapes.
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Gpt> shapes, whole_model());
  std::vector<float> whole;
  const Parameter* cached = nullptr;
  auto gather = [&](const Parameter& q) -> Status {
    cached = &q;
    return read_model_state(q.name(), OptimizerState::kMaster, &whole);
  };
  const std::vector<Parameter*> params = shapes->parameters();
  const bool writer = m.dp->rank() == 0 && (m.tp == nullptr || m.tp->rank() == 0) && (m.pp == nullptr || m.pp->rank() == 0);
  const bool collective = m.dp->stage() >= 1 || m.tp != nullptr || m.pp != nullptr;
  if (!writer) {
    if (!collective) return Status::OK();
    Status failed;
    for (const Parameter* q : params) {
      if (Status st = gather(*q); !st.ok() && failed.ok()) failed = st;
    }
    return failed;
  }
  Status written = safetensors::export_gpt(path, *shapes, dtype, [&](const Parameter& q, std::uint64_t first, std::span<float> out) {
    if (cached != &q) STRATA_RETURN_IF_ERROR(gather(q));
    std::copy_n(whole.data() + first, out.size(), out.data());
    return Status::OK();
  });
  // A write that failed part of the way: the other ranks still gather every parameter.
  auto next = cached == nullptr ? params.begin() : std::find(params.begin(), params.end(), cached) + 1;
  for (; collective && !written.ok() && next != params.end(); ++next) gather(**next).ignore();
  return written;
}

Status Trainer::gather_parameters() {
  Impl& m = *impl_;
  return m.dp->gather_parameters(*m.opt, *m.stream);
}

Status Trainer::import_weights(const std::string& path) {
  Impl& m = *impl_;
  // Whole tensors from the file, one at a time; each rank keeps its elements of those it holds.
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Gpt> shapes, whole_model());
  std::vector<float> whole;
  return safetensors::import_gpt(path, *shapes, [&](const Parameter& q, std::uint64_t first, std::span<const float> v) {
    const Parameter* p = m.model->find_parameter(q.name());
    if (p == nullptr) return Status::OK();  // another pipeline stage's
    if (!p->shard().split()) return write_state(*p, OptimizerState::kMaster, first, v);
    whole.resize(q.numel());
    std::copy(v.begin(), v.end(), whole.begin() + static_cast<std::ptrdiff_t>(first));
    if (first + v.size() < q.numel()) return Status::OK();
    return write_whole_state(*p, OptimizerState::kMaster, whole);
  });
}

Communicator* Trainer::tp_group() const { return impl_->tp; }
Communicator* Trainer::pp_group() const { return impl_->pp; }
std::vector<PipelineTime> Trainer::pipeline_timeline() const {
  return impl_->stage != nullptr ? impl_->stage->timeline() : std::vector<PipelineTime>{};
}

}  // namespace strata
