// The offloaded optimizer: loss trajectories with the optimizer state on the device, in pinned
// host memory and on NVMe are the same (fp32 and bf16: bit for bit, asserted), whatever the
// pipeline settings; fp16 overflow skips the step and recovers on NVMe as on the device; the
// state moves through the tier manager within its budget; impossible set-ups (host budget,
// device budget, missing swap directory, one buffer) fail at start-up with the numbers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "strata/trainer.h"
#include "strata/units.h"

namespace strata {
namespace {

std::string scratch_root() {
  const char* env = std::getenv("STRATA_TEST_TMPDIR");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string("/tmp");
}

// A fresh directory removed at the end.
struct Scratch {
  std::string path;
  Scratch() {
    std::string tmpl = scratch_root() + "/strata-offload-adam-XXXXXX";
    char* made = ::mkdtemp(tmpl.data());
    if (made != nullptr) path = made;
  }
  ~Scratch() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

Profile tiny_profile(OffloadTarget target, const std::string& swap_dir = {}) {
  auto p = Profile::from_toml_string("", "test");
  EXPECT_TRUE(p.ok()) << p.status();
  Profile out = *p;
  out.train.model = "tiny";
  EXPECT_TRUE(model_preset("tiny", &out.train.dims));
  out.train.micro_batch = 4;
  out.train.seed = 42;
  out.optimizer.lr = 1e-3;
  out.optimizer.weight_decay = 0.01;
  out.offload_optimizer.device = target;
  if (!swap_dir.empty()) out.offload_optimizer.nvme_path = {swap_dir};
  // Small pinned buffers: the tiny model's state spans several chunks, so the pipeline runs.
  out.offload_optimizer.buffer_size = 64 * KiB;
  out.memory.host_budget = 256 * MiB;
  out.nvme.engine = "posix";  // any file system, O_DIRECT or not
  out.nvme.direct = false;
  out.nvme.registered_buffers = false;
  out.nvme.block_size = 64 * KiB;
  return out;
}

std::unique_ptr<Device> host(std::uint64_t capacity = 512ULL << 20) {
  DeviceOptions o;
  o.capacity = capacity;
  auto d = create_device("host", o);
  EXPECT_TRUE(d.ok()) << d.status();
  return std::move(*d);
}

const TokenDataset& licenses() {
  static const TokenDataset d = [] {
    auto r = TokenDataset::default_text();
    EXPECT_TRUE(r.ok()) << r.status();
    return *r;
  }();
  return d;
}

struct Trajectory {
  std::vector<double> loss;
  std::vector<bool> skipped;
  std::vector<double> scale;
  std::vector<float> weights;  // every master weight at the end
  std::optional<TierStats> tiers;
  std::string optimizer;
};

// `steps` steps with the optimizer the profile asks for, or with `optimizer` when given.
Trajectory run(const Profile& p, int steps, std::unique_ptr<StepOptimizer> optimizer = nullptr) {
  Trajectory out;
  auto dev = host();
  auto t = Trainer::create(p, *dev, std::move(optimizer));
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return out;
  out.optimizer = (*t)->optimizer().name();
  for (int i = 0; i < steps; ++i) {
    auto s = (*t)->train_step(licenses());
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) break;
    out.loss.push_back(s->loss);
    out.skipped.push_back(s->skipped);
    out.scale.push_back(s->loss_scale);
  }
  for (Parameter* prm : (*t)->model().parameters()) {
    std::vector<float> w(prm->numel());
    EXPECT_TRUE((*t)->optimizer().get_master(*prm, 0, w).ok());
    out.weights.insert(out.weights.end(), w.begin(), w.end());
  }
  out.tiers = (*t)->optimizer().tier_stats();
  return out;
}

void expect_bitwise(const Trajectory& a, const Trajectory& b) {
  ASSERT_EQ(a.loss.size(), b.loss.size());
  for (std::size_t i = 0; i < a.loss.size(); ++i) {
    EXPECT_EQ(a.loss[i], b.loss[i]) << "step " << i + 1 << ": " << a.optimizer << " vs " << b.optimizer;
  }
  ASSERT_EQ(a.weights.size(), b.weights.size());
  std::size_t differ = 0;
  for (std::size_t i = 0; i < a.weights.size(); ++i) differ += a.weights[i] != b.weights[i];
  EXPECT_EQ(differ, 0u) << "master weights differing between " << a.optimizer << " and " << b.optimizer;
}

TEST(OffloadAdam, FactoryHonoursTheProfileAndNamesWhatItRefuses) {
  Profile p = tiny_profile(OffloadTarget::kNone);
  auto d = make_step_optimizer(p);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ((*d)->name(), "device-adam");
  p.offload_optimizer.device = OffloadTarget::kCpu;
  auto c = make_step_optimizer(p);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->name(), "host-adam");
  p.offload_optimizer.device = OffloadTarget::kNvme;
  auto n = make_step_optimizer(p);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ((*n)->name(), "nvme-adam");
  p.optimizer.type = "sgd";
  auto bad = make_step_optimizer(p);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("optimizer.type"), std::string::npos) << bad.status();
}

// fp32: the CPU Adam paths and the device Adam share kernels/adam_math.h and the gradient norm
// is computed on the device for every backend, so the trajectories agree to the bit.
TEST(OffloadAdam, Fp32TrajectoriesOnDeviceHostAndNvmeAreBitwiseEqual) {
  Scratch swap;
  ASSERT_FALSE(swap.path.empty());
  const int steps = 12;
  Trajectory dev = run(tiny_profile(OffloadTarget::kNone), steps);
  Trajectory cpu = run(tiny_profile(OffloadTarget::kCpu), steps);
  Trajectory nvm = run(tiny_profile(OffloadTarget::kNvme, swap.path), steps);
  EXPECT_EQ(cpu.optimizer, "host-adam");
  EXPECT_EQ(nvm.optimizer, "nvme-adam");
  ASSERT_EQ(dev.loss.size(), static_cast<std::size_t>(steps));
  EXPECT_LT(dev.loss.back(), dev.loss.front());
  expect_bitwise(dev, cpu);
  expect_bitwise(dev, nvm);
  Profile serial = tiny_profile(OffloadTarget::kCpu);
  serial.offload_optimizer.overlap_step = false;
  expect_bitwise(dev, run(serial, steps));

  // Every byte of state went through the tier manager: read from NVMe and written back.
  ASSERT_TRUE(nvm.tiers.has_value());
  const TierStats& ts = *nvm.tiers;
  const auto nv = static_cast<int>(Tier::kNvme), ho = static_cast<int>(Tier::kHost);
  EXPECT_GT(ts.bytes_moved[nv][ho], 0u) << ts.to_json();
  EXPECT_GT(ts.bytes_moved[ho][nv], 0u) << ts.to_json();
  EXPECT_LE(ts.tiers[ho].peak, ts.tiers[ho].budget) << ts.to_json();
  EXPECT_GT(ts.tiers[nv].home_bytes, 0u);
  // A host home moves nothing to NVMe.
  ASSERT_TRUE(cpu.tiers.has_value());
  EXPECT_EQ(cpu.tiers->bytes_moved[ho][nv], 0u);
  EXPECT_FALSE(dev.tiers.has_value());
}

TEST(OffloadAdam, PipelineSettingsDoNotChangeTheResult) {
  Scratch swap;
  ASSERT_FALSE(swap.path.empty());
  const int steps = 5;
  Profile base = tiny_profile(OffloadTarget::kNvme, swap.path);
  Trajectory ref = run(base, steps);
  for (int variant = 0; variant < 4; ++variant) {
    Profile p = base;
    if (variant == 0) p.offload_optimizer.buffer_count = 2;
    if (variant == 1) p.offload_optimizer.pipeline_read = false;
    if (variant == 2) p.offload_optimizer.pipeline_write = false;
    if (variant == 3) p.offload_optimizer.overlap_step = false;
    SCOPED_TRACE("variant " + std::to_string(variant));
    Trajectory r = run(p, steps);
    expect_bitwise(ref, r);
  }
  // Chunks far larger than the model (one chunk) as well.
  Profile one = base;
  one.offload_optimizer.buffer_size = 16 * MiB;
  expect_bitwise(ref, run(one, steps));
}

TEST(OffloadAdam, Bf16AndGradientAccumulationMatchTheDevice) {
  Scratch swap;
  ASSERT_FALSE(swap.path.empty());
  auto set = [](Profile p) {
    p.precision.dtype = DType::kBF16;
    p.train.grad_accum = 2;
    p.train.micro_batch = 2;
    return p;
  };
  const int steps = 6;
  Trajectory dev = run(set(tiny_profile(OffloadTarget::kNone)), steps);
  Trajectory nvm = run(set(tiny_profile(OffloadTarget::kNvme, swap.path)), steps);
  expect_bitwise(dev, nvm);
}

// Gradients in the compute dtype (precision.grad_dtype = "bf16"): half the gradient memory on
// the device and in pinned host RAM; NVMe still matches the device to the bit, and it learns.
TEST(OffloadAdam, Bf16GradientsMatchTheDeviceAndLearn) {
  Scratch swap;
  ASSERT_FALSE(swap.path.empty());
  auto set = [](Profile p) {
    p.precision.dtype = DType::kBF16;
    p.precision.grad_dtype = DType::kBF16;
    return p;
  };
  const int steps = 8;
  Trajectory dev = run(set(tiny_profile(OffloadTarget::kNone)), steps);
  Trajectory nvm = run(set(tiny_profile(OffloadTarget::kNvme, swap.path)), steps);
  ASSERT_EQ(nvm.loss.size(), static_cast<std::size_t>(steps));
  EXPECT_LT(nvm.loss.back(), nvm.loss.front());
  expect_bitwise(dev, nvm);
}

TEST(OffloadAdam, Fp16OverflowSkipsTheStepAndRecoversOnNvme) {
  Scratch swap;
  ASSERT_FALSE(swap.path.empty());
  auto set = [](Profile p) {
    p.precision.dtype = DType::kF16;
    p.precision.dynamic_loss_scale = true;
    p.precision.initial_scale_power = 30;  // far above what fp16 gradients hold: overflows first
    p.precision.hysteresis = 1;
    p.precision.scale_window = 1000;
    return p;
  };
  const int steps = 24;
  Trajectory dev = run(set(tiny_profile(OffloadTarget::kNone)), steps);
  Trajectory nvm = run(set(tiny_profile(OffloadTarget::kNvme, swap.path)), steps);
  ASSERT_EQ(nvm.loss.size(), static_cast<std::size_t>(steps));
  EXPECT_TRUE(nvm.skipped.front()) << "the first step at scale 2^30 must overflow";
  EXPECT_FALSE(nvm.skipped.back()) << "the scale must come down until steps apply";
  EXPECT_LT(nvm.scale.back(), nvm.scale.front());
  EXPECT_LT(nvm.loss.back(), nvm.loss.front());
  EXPECT_EQ(dev.skipped, nvm.skipped);
  expect_bitwise(dev, nvm);
}

// With overlap_step the update runs behind step() on a worker thread; before_forward(module)
// returns only once the module's parameters hold their updated values on the device. A slow
// host-device link (throttled copies) keeps the pass running long enough to tell: the values
// seen right after before_forward are the final ones.
TEST(OffloadAdam, OverlappedUpdateIsOnTheDeviceBeforeTheModuleRuns) {
  Scratch swap;
  ASSERT_FALSE(swap.path.empty());
  Profile p = tiny_profile(OffloadTarget::kNvme, swap.path);
  p.memory.host_device_bandwidth = 400 * 1000;  // bytes/s: ~0.4 s to upload the tiny model
  ASSERT_TRUE(p.offload_optimizer.overlap_step);
  DeviceOptions o = device_options(p.memory);
  o.capacity = 512ULL << 20;
  auto dev = create_device("host", o);
  ASSERT_TRUE(dev.ok()) << dev.status();
  auto t = Trainer::create(p, **dev);
  ASSERT_TRUE(t.ok()) << t.status();
  Gpt& model = (*t)->model();
  Parameter* last = model.parameters().back();
  std::function<Module*(Module&)> owner = [&](Module& m) -> Module* {
    for (Parameter* q : m.own_parameters()) {
      if (q == last) return &m;
    }
    for (Module* c : m.children()) {
      if (Module* f = owner(*c)) return f;
    }
    return nullptr;
  };
  Module* mod = owner(model);
  ASSERT_NE(mod, nullptr);
  auto stream = (*dev)->create_stream("test");
  ASSERT_TRUE(stream.ok());
  auto pinned = (*dev)->allocate_pinned(last->value().bytes());
  ASSERT_TRUE(pinned.ok());
  auto read_value = [&] {
    EXPECT_TRUE((*dev)->copy_to_host(pinned->bytes(), last->value().range(), **stream).ok());
    EXPECT_TRUE((*stream)->synchronize().ok());
    return std::vector<std::byte>(pinned->data(), pinned->data() + pinned->size());
  };
  const std::vector<std::byte> before = read_value();
  ASSERT_TRUE((*t)->train_step(licenses()).ok());
  StepOptimizer& opt = (*t)->optimizer();
  ASSERT_TRUE(opt.before_forward(*mod).ok());
  const std::vector<std::byte> seen = read_value();
  ASSERT_TRUE(opt.synchronize().ok());
  EXPECT_EQ(seen, read_value()) << "before_forward returned before " << last->name() << " was updated on the device";
  EXPECT_NE(seen, before) << "the step did not change " << last->name();
}

// With overlap every pass runs in flat order; the buffers must not thrash on that cycle (as
// least-recently-used eviction would, reading every chunk every step): the chunks that fit
// stay, and a steady-state step reads fewer chunks than there are.
TEST(OffloadAdam, OverlappedPassesReadOnlyTheChunksThatDoNotFit) {
  Scratch swap;
  ASSERT_FALSE(swap.path.empty());
  Profile p = tiny_profile(OffloadTarget::kNvme, swap.path);
  ASSERT_TRUE(p.offload_optimizer.overlap_step);
  p.offload_optimizer.buffer_count = 4;
  const std::uint64_t block = p.offload_optimizer.buffer_size / 12 / 1024 * 1024 * 12;  // bytes per chunk
  auto dev = host();
  auto t = Trainer::create(p, *dev);
  ASSERT_TRUE(t.ok()) << t.status();
  StepOptimizer& opt = (*t)->optimizer();
  auto reads = [&] {
    EXPECT_TRUE(opt.synchronize().ok());
    return opt.tier_stats()->bytes_moved[static_cast<int>(Tier::kNvme)][static_cast<int>(Tier::kHost)];
  };
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*t)->train_step(licenses()).ok());
  const std::uint64_t state = opt.tier_stats()->tiers[static_cast<int>(Tier::kNvme)].home_bytes;
  const std::uint64_t chunks = (state + block - 1) / block;
  ASSERT_GE(chunks, 6u) << "the tiny model's state must span more chunks than there are buffers";
  const std::uint64_t r0 = reads();
  const int steps = 6;
  for (int i = 0; i < steps; ++i) ASSERT_TRUE((*t)->train_step(licenses()).ok());
  const std::uint64_t per_step = (reads() - r0) / steps;
  // Belady on this cycle reads chunks - buffers + 1 per step; prefetches racing the pipeline
  // add a little. Least-recently-used eviction reads all of them.
  EXPECT_LE(per_step, (chunks - 1) * block) << "state " << state << " B in " << chunks << " chunks of " << block
                                                 << " B; " << per_step << " B read per step";
  // The last pass: timed, and its traffic within what the swap moved over the step.
  const std::optional<UpdatePassStats> pass = opt.last_pass();
  ASSERT_TRUE(pass.has_value());
  EXPECT_EQ(pass->passes, 3 + steps);
  EXPECT_GT(pass->seconds, 0.0);
  EXPECT_GE(pass->nvme_bytes, block) << "a pass reads at least one chunk that did not fit";
  const TierStats ts = *opt.tier_stats();
  const auto nvme = static_cast<int>(Tier::kNvme), hostt = static_cast<int>(Tier::kHost);
  EXPECT_LE(pass->nvme_bytes, ts.bytes_moved[nvme][hostt] + ts.bytes_moved[hostt][nvme]);
}

// The delayed update's reference, independent of the offloaded pipeline: the device Adam
// (fp32: its masters are the parameters' device values), where after each delayed step the
// device values are set back to the masters as they were when step() was called, so the next
// forward and backward run one update behind; the masters go back before the next update.
class DelayedReference final : public StepOptimizer {
 public:
  DelayedReference(std::unique_ptr<StepOptimizer> inner, int warmup) : inner_(std::move(inner)), warmup_(warmup) {}
  std::string name() const override { return "delayed-reference"; }
  Status attach(Module& model, Device& device, Stream& stream, const OptimizerShard& shard) override {
    params_ = model.parameters();
    device_ = &device;
    stream_ = &stream;
    return inner_->attach(model, device, stream, shard);
  }
  Status set_master(const Parameter& p, std::uint64_t first, std::span<const float> v) override {
    STRATA_RETURN_IF_ERROR(synchronize());
    return inner_->set_master(p, first, v);
  }
  Status get_master(const Parameter& p, std::uint64_t first, std::span<float> out) override {
    STRATA_RETURN_IF_ERROR(synchronize());
    return inner_->get_master(p, first, out);
  }
  Result<UpdateResult> step(const UpdateRequest& req) override {
    if (inner_->updates() < warmup_) return inner_->step(req);
    STRATA_RETURN_IF_ERROR(synchronize());
    STRATA_ASSIGN_OR_RETURN(auto before, values());
    STRATA_ASSIGN_OR_RETURN(UpdateResult r, inner_->step(req));
    if (r.applied) {
      STRATA_ASSIGN_OR_RETURN(masters_, values());
      STRATA_RETURN_IF_ERROR(set_values(before));
      behind_ = true;
    }
    return r;
  }
  Status synchronize() override {
    if (!behind_) return Status::OK();
    behind_ = false;
    return set_values(masters_);
  }
  std::int64_t updates() const override { return inner_->updates(); }
  std::uint64_t device_bytes() const override { return inner_->device_bytes(); }

 private:
  using Values = std::vector<std::vector<float>>;
  Result<Values> values() {
    Values out;
    for (Parameter* p : params_) {
      std::vector<float> v(p->numel());
      STRATA_RETURN_IF_ERROR(device_->copy_to_host({reinterpret_cast<std::byte*>(v.data()), v.size() * 4}, p->value().range(), *stream_));
      STRATA_RETURN_IF_ERROR(stream_->synchronize());
      out.push_back(std::move(v));
    }
    return out;
  }
  Status set_values(const Values& v) {
    for (std::size_t i = 0; i < params_.size(); ++i) {
      STRATA_RETURN_IF_ERROR(device_->copy_to_device(
          params_[i]->value().range(), {reinterpret_cast<const std::byte*>(v[i].data()), v[i].size() * 4}, *stream_));
    }
    return stream_->synchronize();
  }

  std::unique_ptr<StepOptimizer> inner_;
  int warmup_;
  std::vector<Parameter*> params_;
  Device* device_ = nullptr;
  Stream* stream_ = nullptr;
  Values masters_;
  bool behind_ = false;  // the device values are one update behind masters_
};

Trajectory run_reference(const Profile& p, int warmup, int steps) {
  auto inner = make_device_adam(p.optimizer);
  EXPECT_TRUE(inner.ok()) << inner.status();
  if (!inner.ok()) return {};
  return run(p, steps, std::make_unique<DelayedReference>(std::move(*inner), warmup));
}

// The delayed update (offload.optimizer.delayed_update): on NVMe and in host memory it follows
// the reference above to the bit (fp32), it is really delayed (it departs from the undelayed
// run right after the warm-up), and it learns.
TEST(OffloadAdam, DelayedUpdateMatchesTheDelayedReferenceAndLearns) {
  Scratch swap;
  ASSERT_FALSE(swap.path.empty());
  const int steps = 12, warmup = 3;
  auto delayed = [&](Profile p) {
    p.offload_optimizer.delayed_update = true;
    p.offload_optimizer.delayed_update_warmup = warmup;
    return p;
  };
  Trajectory ref = run_reference(tiny_profile(OffloadTarget::kNone), warmup, steps);
  Trajectory nvm = run(delayed(tiny_profile(OffloadTarget::kNvme, swap.path)), steps);
  Trajectory cpu = run(delayed(tiny_profile(OffloadTarget::kCpu)), steps);
  Trajectory undelayed = run(tiny_profile(OffloadTarget::kNvme, swap.path), steps);
  ASSERT_EQ(nvm.loss.size(), static_cast<std::size_t>(steps));
  expect_bitwise(ref, nvm);
  expect_bitwise(ref, cpu);
  // The first warmup + 1 forwards see the same weights as without delay; the next does not.
  for (int i = 0; i <= warmup; ++i) EXPECT_EQ(nvm.loss[i], undelayed.loss[i]) << "step " << i + 1;
  EXPECT_NE(nvm.loss[warmup + 1], undelayed.loss[warmup + 1]) << "the update after the warm-up was not delayed";
  EXPECT_LT(nvm.loss.back(), nvm.loss.front());
  EXPECT_LT(nvm.loss.back(), nvm.loss[warmup + 1]);
}

// With the delayed update, the masters hold every update, and synchronize() brings the device
// values to them; a delayed pass needs the second gradient buffer in the host budget.
TEST(OffloadAdam, DelayedUpdateSynchronizesTheDeviceAndCountsItsSecondGradientBuffer) {
  Scratch swap;
  ASSERT_FALSE(swap.path.empty());
  Profile p = tiny_profile(OffloadTarget::kNvme, swap.path);
  p.offload_optimizer.delayed_update = true;
  p.offload_optimizer.delayed_update_warmup = 0;
  auto dev = host();
  auto t = Trainer::create(p, *dev);
  ASSERT_TRUE(t.ok()) << t.status();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*t)->train_step(licenses()).ok());
  Parameter* w = (*t)->model().parameters().front();
  auto device_value = [&] {
    std::vector<float> v(w->numel());
    auto s = dev->create_stream("read");
    EXPECT_TRUE(s.ok());
    EXPECT_TRUE(dev->copy_to_host({reinterpret_cast<std::byte*>(v.data()), v.size() * 4}, w->value().range(), **s).ok());
    EXPECT_TRUE((*s)->synchronize().ok());
    return v;
  };
  std::vector<float> master(w->numel());
  ASSERT_TRUE((*t)->optimizer().get_master(*w, 0, master).ok());
  EXPECT_NE(device_value(), master) << "the device must still hold the weights from before the last update";
  ASSERT_TRUE((*t)->optimizer().synchronize().ok());
  EXPECT_EQ(device_value(), master);

  // The same profile with a host budget that holds one gradient buffer but not two.
  Profile tight = p;
  tight.offload_optimizer.delayed_update = false;
  std::uint64_t lo = 64 * KiB, hi = 256 * MiB;  // smallest budget that works without delay
  while (hi - lo > 4 * KiB) {
    const std::uint64_t mid = (lo + hi) / 2;
    tight.memory.host_budget = mid;
    auto d = host();
    (Trainer::create(tight, *d).ok() ? hi : lo) = mid;
  }
  tight.memory.host_budget = hi;
  tight.offload_optimizer.delayed_update = true;
  auto d = host();
  auto refused = Trainer::create(tight, *d);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kOutOfMemory) << refused.status();
}

TEST(OffloadAdam, StateAccessRoundTripsEveryTensor) {
  Scratch swap;
  ASSERT_FALSE(swap.path.empty());
  auto dev = host();
  auto t = Trainer::create(tiny_profile(OffloadTarget::kNvme, swap.path), *dev);
  ASSERT_TRUE(t.ok()) << t.status();
  StepOptimizer& opt = (*t)->optimizer();
  for (Parameter* p : (*t)->model().parameters()) {
    for (OptimizerState which : {OptimizerState::kMaster, OptimizerState::kExpAvg, OptimizerState::kExpAvgSq}) {
      std::vector<float> v(p->numel());
      for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 97) * 0.25f + static_cast<float>(which);
      ASSERT_TRUE(opt.write_state(*p, which, 0, v).ok());
      std::vector<float> back(p->numel(), -1.0f);
      ASSERT_TRUE(opt.read_state(*p, which, 0, back).ok());
      ASSERT_EQ(v, back) << p->name() << " " << optimizer_state_name(which);
    }
  }
  // Out of range and foreign parameters are refused.
  Parameter* first = (*t)->model().parameters().front();
  std::vector<float> two(2);
  auto oob = opt.read_state(*first, OptimizerState::kExpAvg, first->numel() - 1, two);
  EXPECT_EQ(oob.code(), StatusCode::kInvalidArgument) << oob;
}

TEST(OffloadAdam, TooSmallHostBudgetFailsAtStartWithTheNumbers) {
  Profile p = tiny_profile(OffloadTarget::kCpu);
  p.memory.host_budget = 64 * KiB;
  auto dev = host();
  auto t = Trainer::create(p, *dev);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kOutOfMemory) << t.status();
  EXPECT_NE(t.status().message().find("memory.host_budget is 64.00 KiB"), std::string::npos) << t.status();
  EXPECT_NE(t.status().message().find("pinned host memory"), std::string::npos) << t.status();
}

TEST(OffloadAdam, TooSmallDeviceBudgetForTheParametersFailsAtStartWithTheNumbers) {
  Scratch swap;
  Profile p = tiny_profile(OffloadTarget::kNvme, swap.path);
  auto dev = host(64 * KiB);  // the tiny model's fp32 weights alone need ~150 KiB
  auto t = Trainer::create(p, *dev);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kOutOfMemory) << t.status();
  const std::string& m = t.status().message();
  EXPECT_NE(m.find("parameters"), std::string::npos) << m;
  EXPECT_NE(m.find("65536"), std::string::npos) << "the capacity must be named: " << m;
}

TEST(OffloadAdam, NvmeWithoutSwapDirectoryOrWithOneBufferIsRefused) {
  auto dev = host();
  Profile none = tiny_profile(OffloadTarget::kNvme);
  auto a = Trainer::create(none, *dev);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("offload.optimizer.nvme_path"), std::string::npos) << a.status();
  Scratch swap;
  Profile one = tiny_profile(OffloadTarget::kNvme, swap.path);
  one.offload_optimizer.buffer_count = 1;
  auto b = Trainer::create(one, *dev);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("offload.optimizer.buffer_count = 1"), std::string::npos) << b.status();
}

TEST(OffloadAdam, SwapFilesAreRemovedWhenTheTrainerGoes) {
  Scratch swap;
  ASSERT_FALSE(swap.path.empty());
  {
    auto dev = host();
    auto t = Trainer::create(tiny_profile(OffloadTarget::kNvme, swap.path), *dev);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE((*t)->train_step(licenses()).ok());
    EXPECT_FALSE(std::filesystem::is_empty(swap.path)) << "the swap directory must exist while training";
  }
  EXPECT_TRUE(std::filesystem::is_empty(swap.path));
}

}  // namespace
}  // namespace strata
