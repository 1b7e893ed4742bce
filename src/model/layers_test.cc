// Gradient checks of every GPT layer: the layer's forward against the double-precision
// reference, and its fp32 backward against central finite differences of that reference
// (in double, so the numeric gradient is exact to ~1e-9 and the tolerance only has to cover
// the fp32 arithmetic of the layer: |analytic - numeric| <= 1e-4 * scale + 2e-3 * |numeric|,
// where scale is the largest numeric gradient of the tensor; a wrong formula is off by O(1)).
#include "model/layers.h"

#include <gtest/gtest.h>

#include <functional>

#include "model/model_test_util.h"
#include "model/nn_reference.h"

namespace strata::model {
namespace {

using nn::ref::Params;
using nn::ref::Vec;
using testutil::BlockBuffers;
using testutil::close;
using testutil::DevTensor;
using testutil::download;
using testutil::random_ids;
using testutil::random_vec;
using testutil::rounded;
using testutil::upload;
using testutil::upload_ids;

constexpr DType kF32 = DType::kF32;

// Central differences of f with respect to every element of `x` listed in `which` (all when empty).
Vec numeric_grad(Vec& x, const std::function<double()>& f, std::vector<std::size_t> which = {}) {
  if (which.empty()) {
    for (std::size_t i = 0; i < x.size(); ++i) which.push_back(i);
  }
  Vec g;
  for (std::size_t i : which) {
    const double keep = x[i];
    const double h = 1e-4 * std::max(1.0, std::fabs(keep));
    x[i] = keep + h;
    const double up = f();
    x[i] = keep - h;
    const double down = f();
    x[i] = keep;
    g.push_back((up - down) / (2 * h));
  }
  return g;
}

Vec pick(const Vec& v, const std::vector<std::size_t>& which) {
  if (which.empty()) return v;
  Vec out;
  for (std::size_t i : which) out.push_back(v[i]);
  return out;
}

::testing::AssertionResult grad_close(const Vec& analytic, const Vec& numeric) {
  double scale = 0;
  for (double v : numeric) scale = std::max(scale, std::fabs(v));
  return close(analytic, numeric, 1e-4 * scale + 1e-9, 2e-3);
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Binds every parameter of `m` to fresh device memory holding random values (LayerNorm weights
// around 1), with zeroed fp32 gradients; keeps the double values for the reference.
class Bound {
 public:
  Bound(Device& dev, Module& m, std::uint32_t seed) : dev_(dev) {
    for (Parameter* p : m.parameters()) {
      Vec v = random_vec(p->numel(), seed++, 0.5);
      if (p->init() == ParamInit::kOnes) {
        for (double& x : v) x += 1.0;
      }
      v = rounded(v, kF32);
      values[p->name()] = v;
      bufs_.push_back(upload(dev, v, kF32));
      bufs_.push_back(upload(dev, Vec(p->numel(), 0.0), kF32));
      EXPECT_TRUE(p->bind(bufs_[bufs_.size() - 2].view, bufs_.back().view).ok());
      params_[p->name()] = p;
    }
  }
  Vec grad(const std::string& name) { return download(dev_, params_.at(name)->grad()); }

  Params values;

 private:
  Device& dev_;
  std::vector<DevTensor> bufs_;
  std::map<std::string, Parameter*> params_;
};

class LayerGrad : public ::testing::Test {
 protected:
  void SetUp() override {
    dev_ = testutil::make_host();
    ASSERT_NE(dev_, nullptr);
    auto ops = nn::make_nn_ops(*dev_);
    ASSERT_TRUE(ops.ok());
    nn_ = std::move(*ops);
  }
  Ctx ctx() { return Ctx{*dev_, *nn_, dev_->default_stream()}; }
  DevTensor zeros(std::size_t n, DType t = kF32) { return upload(*dev_, Vec(n, 0.0), t); }
  DevTensor vec(const Vec& v) { return upload(*dev_, v, kF32); }

  // Checks every listed parameter's gradient against central differences of f.
  void check_params(Bound& bound, const std::vector<std::string>& names, const std::function<double()>& f,
                    std::size_t max_elems = 0) {
    for (const std::string& name : names) {
      Vec& v = bound.values.at(name);
      std::vector<std::size_t> which;
      if (max_elems != 0 && v.size() > max_elems) {
        for (std::size_t k = 0; k < max_elems; ++k) which.push_back(k * (v.size() - 1) / (max_elems - 1));
      }
      const Vec numeric = numeric_grad(v, f, which);
      EXPECT_TRUE(grad_close(pick(bound.grad(name), which), numeric)) << name;
    }
  }

  std::unique_ptr<Device> dev_;
  std::unique_ptr<nn::NnOps> nn_;
};

TEST_F(LayerGrad, LayerNorm) {
  const std::int64_t N = 6, C = 20;
  LayerNorm ln("ln", C);
  Bound bound(*dev_, ln, 1);
  Vec x = random_vec(N * C, 2, 1.5);
  for (std::int64_t i = 0; i < C; ++i) x[i] += 4.0;
  x = rounded(x, kF32);
  const Vec R = random_vec(N * C, 3);
  auto dx = vec(x);
  auto out = zeros(N * C), mean = zeros(N), rstd = zeros(N);
  ASSERT_TRUE(ln.forward(ctx(), out.view, mean.view, rstd.view, dx.view, N, false).ok());
  auto ref = [&] { return nn::ref::layernorm(x, bound.values["ln.weight"], bound.values["ln.bias"], N, C); };
  EXPECT_TRUE(close(download(*dev_, out.view), ref(), 1e-5, 1e-5));

  // dx accumulates: start from ones and subtract them afterwards.
  auto din = vec(Vec(N * C, 1.0));
  auto dout = vec(R);
  ASSERT_TRUE(ln.backward(ctx(), din.view, dout.view, dx.view, mean.view, rstd.view, N).ok());
  Vec got = download(*dev_, din.view);
  for (double& g : got) g -= 1.0;
  auto f = [&] { return dot(ref(), R); };
  EXPECT_TRUE(grad_close(got, numeric_grad(x, f)));
  check_params(bound, {"ln.weight", "ln.bias"}, f);
}

TEST_F(LayerGrad, Linear) {
  const std::int64_t N = 5, in = 12, out = 7;
  Linear lin("fc", in, out, 0.02f);
  Bound bound(*dev_, lin, 10);
  Vec x = rounded(random_vec(N * in, 11), kF32);
  const Vec res = rounded(random_vec(N * out, 12), kF32);
  const Vec R = random_vec(N * out, 13);
  auto dx = vec(x), dres = vec(res), y = zeros(N * out);
  ASSERT_TRUE(lin.forward(ctx(), y.view, dx.view, N, false, dres.view).ok());
  auto ref = [&] {
    Vec v = nn::ref::linear(x, bound.values["fc.weight"], bound.values["fc.bias"], N, in, out);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] += res[i];
    return v;
  };
  EXPECT_TRUE(close(download(*dev_, y.view), ref(), 1e-5, 1e-5));

  auto dy = vec(R), gx = vec(Vec(N * in, 9.0));  // dx is overwritten, whatever it held
  ASSERT_TRUE(lin.backward(ctx(), gx.view, dy.view, dx.view, N).ok());
  auto f = [&] { return dot(ref(), R); };
  EXPECT_TRUE(grad_close(download(*dev_, gx.view), numeric_grad(x, f)));
  check_params(bound, {"fc.weight", "fc.bias"}, f);
}

void set(Device& dev, const DeviceView& v, const Vec& values) {
  const std::vector<std::byte> bytes = testutil::encode(values, v.dtype());
  ASSERT_TRUE(dev.copy_to_device(v.range(), bytes, dev.default_stream()).ok());
  ASSERT_TRUE(dev.default_stream().synchronize().ok());
}

TEST_F(LayerGrad, Attention) {
  const std::int64_t B = 2, T = 5, C = 12, NH = 3, N = B * T;
  Attention attn("attn", C, NH, 0.01f);
  Bound bound(*dev_, attn, 20);
  BlockBuffers bb(*dev_, B, T, C, NH);
  Vec ln1 = rounded(random_vec(N * C, 21), kF32);
  const Vec x = rounded(random_vec(N * C, 22), kF32);
  const Vec R = random_vec(N * C, 23);
  set(*dev_, bb.a.ln1, ln1);
  auto dx = vec(x);
  ASSERT_TRUE(attn.forward(ctx(), bb.a, dx.view, B, T, false).ok());
  auto ref = [&] {
    const Params& p = bound.values;
    const Vec qkv = nn::ref::linear(ln1, p.at("attn.c_attn.weight"), p.at("attn.c_attn.bias"), N, C, 3 * C);
    const Vec y = nn::ref::attention(qkv, B, T, C, NH);
    Vec res2 = nn::ref::linear(y, p.at("attn.c_proj.weight"), p.at("attn.c_proj.bias"), N, C, C);
    for (std::size_t i = 0; i < res2.size(); ++i) res2[i] += x[i];
    return res2;
  };
  EXPECT_TRUE(close(download(*dev_, bb.a.res2), ref(), 1e-5, 1e-5));

  set(*dev_, bb.g.dres, R);
  ASSERT_TRUE(attn.backward(ctx(), bb.a, bb.g, B, T).ok());
  auto f = [&] { return dot(ref(), R); };
  EXPECT_TRUE(grad_close(download(*dev_, bb.g.dln), numeric_grad(ln1, f)));
  check_params(bound, {"attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias"}, f);
}

TEST_F(LayerGrad, Mlp) {
  const std::int64_t N = 6, C = 8;
  Mlp mlp("mlp", C, 0.01f);
  Bound bound(*dev_, mlp, 30);
  BlockBuffers bb(*dev_, 1, N, C, 1);
  Vec ln2 = rounded(random_vec(N * C, 31), kF32);
  const Vec res2 = rounded(random_vec(N * C, 32), kF32);
  const Vec R = random_vec(N * C, 33);
  set(*dev_, bb.a.ln2, ln2);
  set(*dev_, bb.a.res2, res2);
  auto out = zeros(N * C);
  ASSERT_TRUE(mlp.forward(ctx(), bb.a, out.view, N, false).ok());
  auto ref = [&] {
    const Params& p = bound.values;
    Vec h = nn::ref::linear(ln2, p.at("mlp.c_fc.weight"), p.at("mlp.c_fc.bias"), N, C, 4 * C);
    for (double& v : h) v = nn::ref::gelu(v);
    Vec o = nn::ref::linear(h, p.at("mlp.c_proj.weight"), p.at("mlp.c_proj.bias"), N, 4 * C, C);
    for (std::size_t i = 0; i < o.size(); ++i) o[i] += res2[i];
    return o;
  };
  EXPECT_TRUE(close(download(*dev_, out.view), ref(), 1e-5, 1e-5));

  set(*dev_, bb.g.dres, R);
  ASSERT_TRUE(mlp.backward(ctx(), bb.a, bb.g, N).ok());
  auto f = [&] { return dot(ref(), R); };
  EXPECT_TRUE(grad_close(download(*dev_, bb.g.dln), numeric_grad(ln2, f)));
  check_params(bound, {"mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"}, f);
}

TEST_F(LayerGrad, Block) {
  const std::int64_t B = 2, T = 4, C = 8, NH = 2, N = B * T;
  Block blk(0, C, NH, 2);
  Bound bound(*dev_, blk, 40);
  BlockBuffers bb(*dev_, B, T, C, NH);
  Vec x = rounded(random_vec(N * C, 41), kF32);
  const Vec R = random_vec(N * C, 42);
  auto dx = vec(x), out = zeros(N * C);
  ASSERT_TRUE(blk.forward(ctx(), bb.a, dx.view, out.view, B, T, false).ok());
  auto ref = [&] { return nn::ref::block(bound.values, 0, x, B, T, C, NH); };
  EXPECT_TRUE(close(download(*dev_, out.view), ref(), 1e-5, 1e-5));

  set(*dev_, bb.g.dres, R);
  ASSERT_TRUE(blk.backward(ctx(), bb.a, bb.g, dx.view, B, T).ok());
  auto f = [&] { return dot(ref(), R); };
  EXPECT_TRUE(grad_close(download(*dev_, bb.g.dres), numeric_grad(x, f)));
  std::vector<std::string> names;
  for (const Parameter* p : blk.parameters()) names.push_back(p->name());
  EXPECT_EQ(names.size(), 12u);
  check_params(bound, names, f);
}

TEST_F(LayerGrad, Embeddings) {
  const std::int64_t B = 2, T = 4, C = 6, V = 9, N = B * T;
  Embeddings emb(V, T, C);
  Bound bound(*dev_, emb, 50);
  auto tokens = random_ids(N, V, 51);
  tokens[3] = tokens[5];
  const Vec R = random_vec(N * C, 52);
  auto dtok = upload_ids(*dev_, tokens);
  auto out = zeros(N * C);
  ASSERT_TRUE(emb.forward(ctx(), out.view, dtok.range(), B, T, false).ok());
  auto ref = [&] { return nn::ref::embedding(tokens, bound.values["wte.weight"], bound.values["wpe.weight"], N, T, C); };
  EXPECT_TRUE(close(download(*dev_, out.view), ref(), 1e-6, 1e-6));
  auto dout = vec(R);
  ASSERT_TRUE(emb.backward(ctx(), dout.view, dtok.range(), B, T).ok());
  check_params(bound, {"wte.weight", "wpe.weight"}, [&] { return dot(ref(), R); });
}

TEST_F(LayerGrad, TiedHeadAndCrossEntropy) {
  const std::int64_t N = 6, C = 8, V = 11;
  Embeddings emb(V, 4, C);
  LmHead head(emb.wte, V);
  EXPECT_TRUE(head.own_parameters().empty());
  ASSERT_EQ(head.tied_parameters().size(), 1u);
  EXPECT_EQ(head.tied_parameters()[0]->name(), "wte.weight");
  Bound bound(*dev_, emb, 60);
  Vec x = rounded(random_vec(N * C, 61), kF32);
  const auto targets = random_ids(N, V, 62);
  auto dx = vec(x), dt = upload_ids(*dev_, targets);
  auto logits = zeros(N * V), losses = zeros(N), loss_sum = vec({0.5});
  ASSERT_TRUE(head.forward(ctx(), logits.view, losses.view, loss_sum.view, 2.0f, dx.view, dt.range(), N, false, {}).ok());
  auto ref = [&] {
    const Vec& wte = bound.values["wte.weight"];
    Vec lg(static_cast<std::size_t>(N * V), 0.0);
    for (std::int64_t n = 0; n < N; ++n) {
      for (std::int64_t v = 0; v < V; ++v) {
        for (std::int64_t i = 0; i < C; ++i) lg[n * V + v] += x[n * C + i] * wte[v * C + i];
      }
    }
    const Vec l = nn::ref::crossentropy(lg, targets, N, V);
    double s = 0;
    for (double v : l) s += v;
    return s / static_cast<double>(N);
  };
  EXPECT_TRUE(close(download(*dev_, loss_sum.view), {0.5 + 2.0 * ref()}, 1e-5, 1e-5));

  auto gx = zeros(N * C);
  ASSERT_TRUE(head.backward(ctx(), gx.view, logits.view, dx.view, dt.range(), 3.0f, N, {}).ok());
  auto f = [&] { return 3.0 * ref(); };
  EXPECT_TRUE(grad_close(download(*dev_, gx.view), numeric_grad(x, f)));
  check_params(bound, {"wte.weight"}, f);
}

}  // namespace
}  // namespace strata::model
