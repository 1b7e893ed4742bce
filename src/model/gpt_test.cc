// The whole GPT-2: parameter names and shapes, counter-based initialisation, forward loss and
// gradients against the double-precision reference (finite differences), the tied head,
// activation checkpointing, hooks, low-precision forward and the error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "model/init_rng.h"
#include "model/model_test_util.h"
#include "model/nn_reference.h"
#include "strata/model.h"

namespace strata {
namespace {

using nn::ref::Params;
using nn::ref::Vec;
using testutil::close;
using testutil::DevTensor;
using testutil::download;
using testutil::random_ids;
using testutil::upload;
using testutil::upload_ids;

ModelDims tiny() {
  ModelDims d;
  EXPECT_TRUE(model_preset("tiny", &d));
  return d;
}

// Binds every parameter to its own device memory holding the initial values (plus, with
// `noise`, a small random perturbation so LayerNorm weights and biases are not exactly 1 and 0),
// gradients zeroed; keeps the values (as stored in dtype t) for the reference.
struct Store {
  std::vector<DevTensor> bufs;
  Params values;
  std::map<std::string, Parameter*> params;
};

Store bind(Device& dev, Gpt& gpt, std::uint64_t seed, bool noise, DType t = DType::kF32) {
  Store s;
  std::uint32_t k = 100;
  for (Parameter* p : gpt.parameters()) {
    std::vector<float> init(p->numel());
    init_parameter_values(*p, seed, 0, init);
    Vec v(init.begin(), init.end());
    if (noise) {
      const Vec n = testutil::random_vec(v.size(), k++, 0.05);
      for (std::size_t i = 0; i < v.size(); ++i) v[i] += n[i];
    }
    v = testutil::rounded(v, t);
    s.values[p->name()] = v;
    s.bufs.push_back(upload(dev, v, t));
    s.bufs.push_back(upload(dev, Vec(p->numel(), 0.0), gpt.config().grad_dtype));
    EXPECT_TRUE(p->bind(s.bufs[s.bufs.size() - 2].view, s.bufs.back().view).ok());
    s.params[p->name()] = p;
  }
  return s;
}

struct Batch {
  std::vector<std::int32_t> tokens, targets;
  DevTensor dtok, dtgt;
};

Batch make_batch(Device& dev, const ModelDims& d, int B, std::uint32_t seed) {
  Batch b;
  const auto n = static_cast<std::size_t>(B * d.seq_len);
  b.tokens = random_ids(n, d.vocab, seed);
  b.targets = random_ids(n, d.vocab, seed + 1);
  b.dtok = upload_ids(dev, b.tokens);
  b.dtgt = upload_ids(dev, b.targets);
  return b;
}

std::unique_ptr<Gpt> make_gpt(const GptConfig& c) {
  auto g = Gpt::create(c);
  EXPECT_TRUE(g.ok()) << g.status();
  return g.ok() ? std::move(*g) : nullptr;
}

// ---- structure ----

TEST(Gpt, ParameterNamesAndShapesAreHuggingFaceGpt2) {
  GptConfig c;
  c.dims = tiny();
  auto gpt = make_gpt(c);
  ASSERT_NE(gpt, nullptr);
  std::vector<std::string> want = {"wte.weight", "wpe.weight"};
  for (int i = 0; i < 2; ++i) {
    const std::string h = "h." + std::to_string(i) + ".";
    for (const char* n : {"ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                          "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                          "mlp.c_proj.weight", "mlp.c_proj.bias"}) {
      want.push_back(h + n);
    }
  }
  want.push_back("ln_f.weight");
  want.push_back("ln_f.bias");
  std::vector<std::string> got;
  std::uint64_t total = 0;
  for (const Parameter* p : gpt->parameters()) {
    got.push_back(p->name());
    total += p->numel();
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(total, c.dims.parameter_count());
  EXPECT_EQ(gpt->find_parameter("wte.weight")->shape(), (std::vector<std::int64_t>{256, 32}));
  EXPECT_EQ(gpt->find_parameter("wpe.weight")->shape(), (std::vector<std::int64_t>{32, 32}));
  EXPECT_EQ(gpt->find_parameter("h.1.attn.c_attn.weight")->shape(), (std::vector<std::int64_t>{32, 96}));
  EXPECT_EQ(gpt->find_parameter("h.1.mlp.c_proj.weight")->shape(), (std::vector<std::int64_t>{128, 32}));
  EXPECT_EQ(gpt->find_parameter("h.0.mlp.c_fc.bias")->shape(), (std::vector<std::int64_t>{128}));
  EXPECT_EQ(gpt->find_parameter("nope"), nullptr);
  // The model gives every parameter its compute and gradient dtypes.
  c.dtype = DType::kBF16;
  auto half = make_gpt(c);
  for (const Parameter* p : half->parameters()) {
    EXPECT_EQ(p->dtype(), DType::kBF16) << p->name();
    EXPECT_EQ(p->grad_dtype(), DType::kF32) << p->name();
  }
}

TEST(Gpt, ConfigIsValidated) {
  GptConfig c;
  c.dims = tiny();
  c.dims.n_head = 3;  // 32 % 3 != 0
  auto g = Gpt::create(c);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(g.status().message().find("not divisible by n_head"), std::string::npos) << g.status();
  c.dims = tiny();
  c.dtype = DType::kBF16;
  c.grad_dtype = DType::kF16;
  EXPECT_FALSE(Gpt::create(c).ok());
  c.dims.n_layer = 0;
  EXPECT_FALSE(Gpt::create(c).ok());
}

// ---- initialisation ----

TEST(Init, PhiloxMatchesTheRandom123KnownAnswers) {
  using A4 = std::array<std::uint32_t, 4>;
  EXPECT_EQ(rng::philox4x32_10({0, 0, 0, 0}, {0, 0}), (A4{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(rng::philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
            (A4{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(rng::philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
            (A4{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Init, ValuesAreKeyedBySeedNameAndIndexSoShardsAgree) {
  GptConfig c;
  c.dims = tiny();
  auto gpt = make_gpt(c);
  ASSERT_NE(gpt, nullptr);
  const Parameter& w = *gpt->find_parameter("h.0.attn.c_attn.weight");
  std::vector<float> full(w.numel()), shard(100), again(w.numel()), other_seed(w.numel());
  init_parameter_values(w, 7, 0, full);
  init_parameter_values(w, 7, 1234, shard);
  init_parameter_values(w, 7, 0, again);
  init_parameter_values(w, 8, 0, other_seed);
  EXPECT_EQ(full, again);
  for (std::size_t i = 0; i < shard.size(); ++i) ASSERT_EQ(shard[i], full[1234 + i]) << i;
  EXPECT_NE(full, other_seed);
  // A different name is a different stream.
  EXPECT_NE(init_normal(7, "h.0.attn.c_attn.weight", 5), init_normal(7, "h.1.attn.c_attn.weight", 5));
  EXPECT_EQ(full[5], static_cast<float>(static_cast<double>(init_normal(7, "h.0.attn.c_attn.weight", 5)) *
                                        static_cast<double>(w.init_std())));
}

// Every tp rank's shard, laid back where global_index() says, rebuilds the whole tensor's
// initial values: split by columns in three parts (c_attn), by rows (wte, c_proj) and replicated.
TEST(Init, TensorShardsInitialiseTheirPiecesOfTheWholeTensor) {
  const std::vector<std::int64_t> shape{8, 24};
  Parameter whole("h.0.attn.c_attn.weight", shape, ParamInit::kNormal, 0.02f);
  std::vector<float> want(whole.numel());
  init_parameter_values(whole, 3, 0, want);
  struct Cut {
    int dim, parts, size;
  };
  for (const Cut cut : {Cut{1, 3, 2}, Cut{1, 3, 4}, Cut{1, 1, 4}, Cut{0, 1, 2}, Cut{0, 1, 8}, Cut{-1, 1, 2}}) {
    std::vector<float> rebuilt(whole.numel(), -1.0f);
    std::size_t covered = 0;
    for (int r = 0; r < cut.size; ++r) {
      TensorShard t{shape, cut.dim, cut.parts, r, cut.size};
      ASSERT_TRUE(t.validate("w").ok()) << t.validate("w");
      Parameter p("h.0.attn.c_attn.weight", t, ParamInit::kNormal, 0.02f);
      ASSERT_EQ(p.numel() * static_cast<std::size_t>(cut.dim < 0 ? 1 : cut.size), whole.numel());
      std::vector<float> mine(p.numel());
      init_parameter_values(p, 3, 0, mine);
      for (std::size_t i = 0; i < mine.size(); ++i) {
        const std::uint64_t g = t.global_index(i);
        ASSERT_LT(g, rebuilt.size());
        if (cut.dim >= 0) {
          EXPECT_EQ(rebuilt[g], -1.0f) << "element " << g << " is in two shards";
        }
        rebuilt[g] = mine[i];
        ++covered;
      }
    }
    EXPECT_EQ(rebuilt, want) << "dim " << cut.dim << " parts " << cut.parts << " size " << cut.size;
    if (cut.dim >= 0) {
      EXPECT_EQ(covered, whole.numel());
    }
  }
  // Column 0 of rank 1's shard of c_attn at tp 2 is Q's column 4 of 8 (each part is 8 wide).
  TensorShard q{shape, 1, 3, 1, 2};
  EXPECT_EQ(q.local_shape(), (std::vector<std::int64_t>{8, 12}));
  EXPECT_EQ(q.global_index(0), 4u);
  EXPECT_EQ(q.global_index(4), 12u);   // K's column 4
  EXPECT_EQ(q.global_index(12), 28u);  // row 1, Q's column 4
  EXPECT_FALSE((TensorShard{shape, 1, 3, 0, 3}.validate("w").ok())) << "24 columns are not 3 parts of 3 shards";
  EXPECT_FALSE((TensorShard{shape, 2, 1, 0, 2}.validate("w").ok()));
  EXPECT_FALSE((TensorShard{shape, 0, 1, 2, 2}.validate("w").ok()));
  // A vocabulary of 7 rows padded to 8 for 2 ranks: the whole tensor is the 7 real rows.
  TensorShard padded{{8, 24}, 0, 1, 1, 2, 7};
  EXPECT_TRUE(padded.validate("wte").ok());
  EXPECT_EQ(padded.whole_numel(), 7u * 24u);
  EXPECT_EQ(padded.global_index(3 * 24), 7u * 24u) << "rank 1's last row is the padding";
  EXPECT_FALSE((TensorShard{shape, 1, 1, 0, 2, 7}.validate("w").ok())) << "padding along another dimension";
}

TEST(Init, DistributionsFollowGpt2) {
  ModelDims d;
  ASSERT_TRUE(model_preset("default", &d));
  GptConfig c;
  c.dims = d;
  auto gpt = make_gpt(c);
  ASSERT_NE(gpt, nullptr);
  auto stats = [](const Parameter& p) {
    std::vector<float> v(p.numel());
    init_parameter_values(p, 1234, 0, v);
    double s = 0, s2 = 0;
    for (float x : v) {
      s += x;
      s2 += static_cast<double>(x) * x;
    }
    const double n = static_cast<double>(v.size());
    return std::pair<double, double>{s / n, std::sqrt(s2 / n - (s / n) * (s / n))};
  };
  const double resid_std = 0.02 / std::sqrt(2.0 * d.n_layer);
  for (const Parameter* p : gpt->parameters()) {
    auto [mean, sd] = stats(*p);
    const std::string& n = p->name();
    if (n.find("ln_") != std::string::npos || n.rfind("ln_f", 0) == 0) {
      EXPECT_EQ(sd, 0.0) << n;
      EXPECT_EQ(mean, n.ends_with(".weight") ? 1.0 : 0.0) << n;
    } else if (n.ends_with(".bias")) {
      EXPECT_EQ(mean, 0.0) << n;
      EXPECT_EQ(sd, 0.0) << n;
    } else {
      const double want = n.find("c_proj.weight") != std::string::npos ? resid_std : 0.02;
      EXPECT_NEAR(sd, want, want * 0.03) << n;  // >= 32768 samples: the std error is < 0.5 %
      EXPECT_NEAR(mean, 0.0, want * 0.03) << n;
    }
  }
}

// ---- forward and backward against the reference ----

class GptModel : public ::testing::Test {
 protected:
  void SetUp() override {
    dev_ = testutil::make_host();
    ASSERT_NE(dev_, nullptr);
    loss_ = upload(*dev_, {0.0}, DType::kF32);
  }
  Stream& s() { return dev_->default_stream(); }
  double read_loss() { return download(*dev_, loss_.view)[0]; }
  void zero_loss() {
    ASSERT_TRUE(dev_->fill(loss_.view, 0.0f, s()).ok());
  }

  std::unique_ptr<Device> dev_;
  DevTensor loss_;
};

TEST_F(GptModel, LossAndEveryParameterGradientMatchTheReference) {
  GptConfig c;
  c.dims = tiny();
  const int B = 2;
  auto gpt = make_gpt(c);
  ASSERT_NE(gpt, nullptr);
  Store st = bind(*dev_, *gpt, 1234, true);
  ASSERT_TRUE(gpt->prepare(*dev_, B).ok());
  Batch b = make_batch(*dev_, c.dims, B, 7);
  ASSERT_TRUE(gpt->forward(b.dtok.range(), b.dtgt.range(), loss_.view, 1.0f, s()).ok());
  auto ref = [&] { return nn::ref::gpt_loss(st.values, c.dims, b.tokens, b.targets, B); };
  const double want = ref();
  EXPECT_NEAR(read_loss(), want, 1e-5 * want);
  EXPECT_NEAR(want, std::log(256.0), 0.5);  // an initialised model is close to uniform

  ASSERT_TRUE(gpt->backward(1.0f, s()).ok());
  ASSERT_TRUE(s().synchronize().ok());
  // Six elements per tensor, spread over it (first and last included). The loss gradients are
  // small (1e-5 .. 1e-1), so the absolute floor is relative to the largest gradient of the
  // tensor: 1e-3 of it, far above fp32 rounding of a 64-token step and far below any error in
  // a formula.
  for (const auto& [name, p] : st.params) {
    Vec& v = st.values[name];
    const Vec analytic = download(*dev_, p->grad());
    double scale = 0;
    for (double g : analytic) scale = std::max(scale, std::fabs(g));
    Vec got, numeric;
    for (int k = 0; k < 6; ++k) {
      const std::size_t i = static_cast<std::size_t>(k) * (v.size() - 1) / 5;
      const double keep = v[i], h = 1e-4;
      v[i] = keep + h;
      const double up = ref();
      v[i] = keep - h;
      const double down = ref();
      v[i] = keep;
      numeric.push_back((up - down) / (2 * h));
      got.push_back(analytic[i]);
    }
    EXPECT_TRUE(close(got, numeric, 1e-3 * scale + 1e-7, 5e-3)) << name;
  }
}

TEST_F(GptModel, TiedHeadGradientReachesTokensAbsentFromTheInput) {
  GptConfig c;
  c.dims = tiny();
  const int B = 1;
  auto gpt = make_gpt(c);
  ASSERT_NE(gpt, nullptr);
  Store st = bind(*dev_, *gpt, 99, true);
  ASSERT_TRUE(gpt->prepare(*dev_, B).ok());
  Batch b = make_batch(*dev_, c.dims, B, 3);
  std::vector<bool> present(256, false);
  for (auto t : b.tokens) present[static_cast<std::size_t>(t)] = true;
  int absent = 0;
  while (present[static_cast<std::size_t>(absent)]) ++absent;
  int seen = b.tokens[0];
  ASSERT_TRUE(gpt->forward(b.dtok.range(), b.dtgt.range(), loss_.view, 1.0f, s()).ok());
  ASSERT_TRUE(gpt->backward(1.0f, s()).ok());
  const Vec g = download(*dev_, st.params["wte.weight"]->grad());
  const std::int64_t C = c.dims.n_embd;
  // Row `absent` gets gradient only through the output head; row `seen` through both uses.
  Vec& wte = st.values["wte.weight"];
  for (int row : {absent, seen}) {
    Vec got, numeric;
    for (std::int64_t i = 0; i < C; i += 7) {
      const std::size_t k = static_cast<std::size_t>(row * C + i);
      const double keep = wte[k], h = 1e-4;
      wte[k] = keep + h;
      const double up = nn::ref::gpt_loss(st.values, c.dims, b.tokens, b.targets, B);
      wte[k] = keep - h;
      const double down = nn::ref::gpt_loss(st.values, c.dims, b.tokens, b.targets, B);
      wte[k] = keep;
      numeric.push_back((up - down) / (2 * h));
      got.push_back(g[k]);
    }
    double norm = 0;
    for (double x : got) norm += x * x;
    EXPECT_GT(norm, 0.0) << "row " << row;
    double scale = 0;
    for (double x : numeric) scale = std::max(scale, std::fabs(x));
    EXPECT_TRUE(close(got, numeric, 1e-3 * scale + 1e-7, 5e-3)) << "row " << row;
  }
}

// Runs one forward+backward and returns the loss and every gradient.
std::pair<double, std::map<std::string, Vec>> step(Device& dev, const GptConfig& c, int B, ModuleHooks* hooks = nullptr) {
  auto gpt = make_gpt(c);
  Store st = bind(dev, *gpt, 5, true, c.dtype);
  gpt->set_hooks(hooks);
  EXPECT_TRUE(gpt->prepare(dev, B).ok());
  Batch b = make_batch(dev, c.dims, B, 11);
  DevTensor loss = upload(dev, {0.0}, DType::kF32);
  EXPECT_TRUE(gpt->forward(b.dtok.range(), b.dtgt.range(), loss.view, 1.0f, dev.default_stream()).ok());
  EXPECT_TRUE(gpt->backward(1.0f, dev.default_stream()).ok());
  std::map<std::string, Vec> grads;
  for (const auto& [name, p] : st.params) grads[name] = download(dev, p->grad());
  return {download(dev, loss.view)[0], grads};
}

TEST_F(GptModel, ActivationCheckpointingGivesIdenticalGradients) {
  GptConfig c;
  c.dims = tiny();
  auto plain = step(*dev_, c, 2);
  c.checkpointing = true;
  auto ckpt = step(*dev_, c, 2);
  EXPECT_EQ(plain.first, ckpt.first);
  for (const auto& [name, g] : plain.second) EXPECT_EQ(g, ckpt.second[name]) << name;
  GptConfig small = c;
  EXPECT_LT(Gpt::activation_bytes(small, 2), Gpt::activation_bytes(GptConfig{c.dims}, 2));
}

TEST_F(GptModel, LowPrecisionForwardTracksFp32) {
  GptConfig c;
  c.dims = tiny();
  const double f32 = step(*dev_, c, 2).first;
  for (DType t : {DType::kBF16, DType::kF16}) {
    c.dtype = t;
    c.grad_dtype = DType::kF32;
    auto low = step(*dev_, c, 2);
    // Weights and activations rounded to 8 (bf16) or 11 (fp16) significant bits, fp32 sums:
    // the mean loss of ~5.5 moves by well under 1 %.
    EXPECT_NEAR(low.first, f32, 0.01 * f32) << dtype_name(t);
    // Gradients keep their direction: cosine similarity with fp32 > 0.999 for every tensor
    // (measured: > 0.99996 on the host device).
    auto ref = step(*dev_, GptConfig{c.dims}, 2).second;
    for (const auto& [name, g] : low.second) {
      const Vec& r = ref[name];
      double ab = 0, aa = 0, bb = 0;
      for (std::size_t i = 0; i < g.size(); ++i) {
        ab += g[i] * r[i];
        aa += g[i] * g[i];
        bb += r[i] * r[i];
      }
      if (bb == 0) continue;
      EXPECT_GT(ab / std::sqrt(aa * bb), 0.999) << name << " " << dtype_name(t);
    }
  }
}

// ---- hooks ----

class Recorder : public ModuleHooks {
 public:
  Status before_forward(Module& m, bool recompute) override { return log("F<", m, recompute); }
  Status after_forward(Module& m, bool recompute) override { return log("F>", m, recompute); }
  Status before_backward(Module& m) override { return log("B<", m, false); }
  Status after_backward(Module& m) override { return log("B>", m, false); }
  std::vector<std::string> events;
  std::string fail_at;

 private:
  Status log(const char* what, Module& m, bool recompute) {
    std::string e = std::string(what) + m.name() + (recompute ? " (recompute)" : "");
    events.push_back(e);
    if (e == fail_at) return io_error("hook failed at " + e);
    return Status::OK();
  }
};

TEST_F(GptModel, HooksRunAroundEveryModuleInOrder) {
  GptConfig c;
  c.dims = tiny();
  c.checkpointing = true;
  Recorder rec;
  step(*dev_, c, 1, &rec);
  const auto& e = rec.events;
  auto index_of = [&](const std::string& s) {
    auto it = std::find(e.begin(), e.end(), s);
    return it == e.end() ? -1 : static_cast<int>(it - e.begin());
  };
  // Every event the ordering checks below name must have happened.
  for (const char* ev : {"F>h.1", "F<ln_f", "F>lm_head", "F>", "B<lm_head", "B<ln_f", "F<h.1 (recompute)", "B<h.1",
                         "B>h.1", "F<h.0 (recompute)", "B>h.0", "B<embeddings"}) {
    EXPECT_GE(index_of(ev), 0) << "hook event " << ev << " never ran";
  }
  ASSERT_GE(e.size(), 8u);
  EXPECT_EQ(e[0], "F<");
  EXPECT_EQ(e[1], "F<embeddings");
  EXPECT_EQ(e[2], "F>embeddings");
  EXPECT_EQ(e[3], "F<h.0");
  EXPECT_EQ(e[4], "F<h.0.ln_1");
  EXPECT_LT(index_of("F>h.1"), index_of("F<ln_f"));
  EXPECT_LT(index_of("F>lm_head"), index_of("F>"));
  // Backward: head first, the blocks in reverse, each recomputed right before its backward.
  EXPECT_LT(index_of("B<lm_head"), index_of("B<ln_f"));
  EXPECT_LT(index_of("F<h.1 (recompute)"), index_of("B<h.1"));
  EXPECT_LT(index_of("B>h.1"), index_of("F<h.0 (recompute)"));
  EXPECT_LT(index_of("B>h.0"), index_of("B<embeddings"));
  EXPECT_EQ(e.back(), "B>");
  // The MLP output projection is not recomputed: its output is not needed in backward.
  EXPECT_EQ(index_of("F<h.0.mlp.c_proj (recompute)"), -1);
  EXPECT_GE(index_of("F<h.0.mlp.c_fc (recompute)"), 0);
}

TEST_F(GptModel, AFailingHookStopsThePassWithItsStatus) {
  GptConfig c;
  c.dims = tiny();
  auto gpt = make_gpt(c);
  Store st = bind(*dev_, *gpt, 5, false);
  Recorder rec;
  rec.fail_at = "F<h.1.attn";
  gpt->set_hooks(&rec);
  ASSERT_TRUE(gpt->prepare(*dev_, 1).ok());
  Batch b = make_batch(*dev_, c.dims, 1, 1);
  Status fs = gpt->forward(b.dtok.range(), b.dtgt.range(), loss_.view, 1.0f, s());
  EXPECT_EQ(fs.code(), StatusCode::kIoError);
  EXPECT_NE(fs.message().find("hook failed at F<h.1.attn"), std::string::npos);
  EXPECT_EQ(rec.events.back(), "F<h.1.attn");
  // No complete forward: backward refuses.
  EXPECT_EQ(gpt->backward(1.0f, s()).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(s().synchronize().ok());
}

// ---- errors ----

TEST_F(GptModel, MisuseIsReportedNotCrashed) {
  GptConfig c;
  c.dims = tiny();
  auto gpt = make_gpt(c);
  Batch b = make_batch(*dev_, c.dims, 1, 1);
  EXPECT_EQ(gpt->forward(b.dtok.range(), b.dtgt.range(), loss_.view, 1.0f, s()).code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(gpt->prepare(*dev_, 1).ok());
  Status unbound = gpt->forward(b.dtok.range(), b.dtgt.range(), loss_.view, 1.0f, s());
  EXPECT_EQ(unbound.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(unbound.message().find("wte.weight has no device storage bound"), std::string::npos) << unbound;
  Store st = bind(*dev_, *gpt, 5, false);
  Batch two = make_batch(*dev_, c.dims, 2, 1);
  Status wrong = gpt->forward(two.dtok.range(), two.dtgt.range(), loss_.view, 1.0f, s());
  EXPECT_EQ(wrong.code(), StatusCode::kInvalidArgument) << wrong;
  EXPECT_EQ(gpt->backward(1.0f, s()).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(gpt->prepare(*dev_, 0).code(), StatusCode::kInvalidArgument);
  // A parameter view of the wrong size is refused by bind().
  Parameter* w = gpt->find_parameter("h.0.ln_1.weight");
  Status bad_bind = w->bind(st.bufs[0].view, st.bufs[1].view);
  EXPECT_EQ(bad_bind.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_bind.message().find("h.0.ln_1.weight (32)"), std::string::npos) << bad_bind;
  // ... and so is a view of the wrong dtype.
  DevTensor half = upload(*dev_, Vec(32, 0.0), DType::kBF16);
  DevTensor grad = upload(*dev_, Vec(32, 0.0), DType::kF32);
  Status bad_dtype = w->bind(half.view, grad.view);
  EXPECT_EQ(bad_dtype.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_dtype.message().find("views are bf16 (value) and fp32 (gradient); expected fp32 and fp32"),
            std::string::npos)
      << bad_dtype;
}

TEST(GptMemory, ActivationsBeyondTheDeviceCapacityFailWithTheNumbers) {
  auto dev = testutil::make_host(8ULL << 20);
  ModelDims d;
  ASSERT_TRUE(model_preset("default", &d));
  GptConfig c;
  c.dims = d;
  auto gpt = make_gpt(c);
  Status st = gpt->prepare(*dev, 16);
  EXPECT_EQ(st.code(), StatusCode::kOutOfMemory) << st;
  EXPECT_NE(st.message().find("activations for micro_batch 16"), std::string::npos) << st;
  EXPECT_NE(st.message().find("activation checkpointing would need less"), std::string::npos) << st;
}

}  // namespace
}  // namespace strata
