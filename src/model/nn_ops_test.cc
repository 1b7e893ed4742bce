// The host nn backend against the double-precision scalar references, in fp32, bf16 and fp16,
// and the argument checks of the nn op seam.
#include "model/nn_ops.h"

#include <gtest/gtest.h>

#include "model/model_test_util.h"
#include "model/nn_reference.h"

namespace strata::nn {
namespace {

using testutil::close;
using testutil::download;
using testutil::random_ids;
using testutil::random_vec;
using testutil::round_to;
using testutil::rounded;
using testutil::upload;
using testutil::upload_ids;

// Tolerances of an op's output in dtype t computed in fp32 from inputs exactly representable in t:
// the fp32 error, plus one rounding of the result to t.
double rtol_of(DType t) { return t == DType::kF32 ? 2e-5 : t == DType::kBF16 ? 8e-3 : 1e-3; }
double atol_of(DType t) { return t == DType::kF32 ? 1e-5 : t == DType::kBF16 ? 2e-2 : 3e-3; }

class NnOpsTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    dev_ = testutil::make_host();
    ASSERT_NE(dev_, nullptr);
    auto ops = make_nn_ops(*dev_);
    ASSERT_TRUE(ops.ok()) << ops.status();
    ops_ = std::move(*ops);
  }
  Stream& s() { return dev_->default_stream(); }
  DType t() const { return GetParam(); }

  std::unique_ptr<Device> dev_;
  std::unique_ptr<NnOps> ops_;
};

TEST_P(NnOpsTest, EmbeddingForwardAndBackward) {
  const std::int64_t B = 3, T = 5, C = 70, V = 11, P = 7, N = B * T;  // C spans two column blocks
  auto tokens = random_ids(N, V, 1);
  tokens[0] = tokens[1] = tokens[7];  // repeated ids accumulate
  const auto wte = rounded(random_vec(V * C, 2), t());
  const auto wpe = rounded(random_vec(P * C, 3), t());
  auto dtok = upload_ids(*dev_, tokens);
  auto dwte = upload(*dev_, wte, t());
  auto dwpe = upload(*dev_, wpe, t());
  auto out = upload(*dev_, std::vector<double>(N * C, 0.0), t());
  ASSERT_TRUE(ops_->embedding_forward(out.view, dtok.range(), dwte.view, dwpe.view, N, T, C, s()).ok());
  EXPECT_TRUE(close(download(*dev_, out.view), ref::embedding(tokens, wte, wpe, N, T, C), atol_of(t()), rtol_of(t())));

  for (DType g : {DType::kF32, t()}) {
    const auto dout = rounded(random_vec(N * C, 4), t());
    auto gwte0 = rounded(random_vec(V * C, 5, 0.1), g);
    auto gwpe0 = rounded(random_vec(P * C, 6, 0.1), g);
    auto ddout = upload(*dev_, dout, t());
    auto gwte = upload(*dev_, gwte0, g);
    auto gwpe = upload(*dev_, gwpe0, g);
    ASSERT_TRUE(ops_->embedding_backward(gwte.view, gwpe.view, ddout.view, dtok.range(), N, T, C, s()).ok());
    ref::embedding_backward(gwte0, gwpe0, dout, tokens, N, T, C);
    EXPECT_TRUE(close(download(*dev_, gwte.view), gwte0, atol_of(g), rtol_of(g))) << dtype_name(g);
    EXPECT_TRUE(close(download(*dev_, gwpe.view), gwpe0, atol_of(g), rtol_of(g))) << dtype_name(g);
  }
}

TEST_P(NnOpsTest, LayerNormForwardAndBackward) {
  const std::int64_t N = 9, C = 100;
  auto x = random_vec(N * C, 10, 2.0);
  for (std::int64_t i = 0; i < C; ++i) x[i] += 3.0;  // a row with a large mean
  x = rounded(x, t());
  const auto w = rounded(random_vec(C, 11), t());
  const auto b = rounded(random_vec(C, 12), t());
  auto dx = upload(*dev_, x, t());
  auto dw = upload(*dev_, w, t());
  auto db = upload(*dev_, b, t());
  auto out = upload(*dev_, std::vector<double>(N * C), t());
  auto mean = upload(*dev_, std::vector<double>(N), DType::kF32);
  auto rstd = upload(*dev_, std::vector<double>(N), DType::kF32);
  ASSERT_TRUE(ops_->layernorm_forward(out.view, mean.view, rstd.view, dx.view, dw.view, db.view, N, C, s()).ok());
  ref::Vec rmean, rrstd;
  const auto want = ref::layernorm(x, w, b, N, C, &rmean, &rrstd);
  // LayerNorm divides by a standard deviation, so the output error scales with |w| * |x|/std.
  EXPECT_TRUE(close(download(*dev_, out.view), want, 4 * atol_of(t()), rtol_of(t())));
  EXPECT_TRUE(close(download(*dev_, mean.view), rmean, 1e-5, 1e-5));
  EXPECT_TRUE(close(download(*dev_, rstd.view), rrstd, 1e-5, 1e-4));

  for (DType g : {DType::kF32, t()}) {
    const auto dout = rounded(random_vec(N * C, 13), t());
    auto dinp0 = rounded(random_vec(N * C, 14, 0.5), t());
    auto gw0 = rounded(random_vec(C, 15, 0.5), g);
    auto gb0 = rounded(random_vec(C, 16, 0.5), g);
    auto ddout = upload(*dev_, dout, t());
    auto ddinp = upload(*dev_, dinp0, t());
    auto gw = upload(*dev_, gw0, g);
    auto gb = upload(*dev_, gb0, g);
    ASSERT_TRUE(ops_->layernorm_backward(ddinp.view, gw.view, gb.view, ddout.view, dx.view, dw.view, mean.view,
                                         rstd.view, N, C, s())
                    .ok());
    ref::layernorm_backward(dinp0, gw0, gb0, dout, x, w, N, C);
    EXPECT_TRUE(close(download(*dev_, ddinp.view), dinp0, 8 * atol_of(t()), 2 * rtol_of(t()))) << dtype_name(g);
    EXPECT_TRUE(close(download(*dev_, gw.view), gw0, 8 * atol_of(g), 2 * rtol_of(g))) << dtype_name(g);
    EXPECT_TRUE(close(download(*dev_, gb.view), gb0, 4 * atol_of(g), rtol_of(g))) << dtype_name(g);
  }
}

TEST_P(NnOpsTest, BiasBroadcastAndBackward) {
  const std::int64_t N = 6, OC = 130;
  const auto b = rounded(random_vec(OC, 20), t());
  auto db = upload(*dev_, b, t());
  auto out = upload(*dev_, std::vector<double>(N * OC, 7.0), t());
  ASSERT_TRUE(ops_->bias_broadcast(out.view, db.view, N, OC, s()).ok());
  std::vector<double> want(N * OC);
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t j = 0; j < OC; ++j) want[n * OC + j] = b[j];
  }
  EXPECT_EQ(download(*dev_, out.view), want);
  // bias_add: out += bias, computed in fp32 and rounded once.
  const auto base = rounded(random_vec(N * OC, 23), t());
  auto acc = upload(*dev_, base, t());
  ASSERT_TRUE(ops_->bias_add(acc.view, db.view, N, OC, s()).ok());
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t j = 0; j < OC; ++j) want[n * OC + j] = round_to(base[n * OC + j] + b[j], t());
  }
  EXPECT_EQ(download(*dev_, acc.view), want);
  EXPECT_FALSE(ops_->bias_add(acc.view, db.view, N + 1, OC, s()).ok());

  for (DType g : {DType::kF32, t()}) {
    const auto dout = rounded(random_vec(N * OC, 21), t());
    auto gb0 = rounded(random_vec(OC, 22), g);
    auto ddout = upload(*dev_, dout, t());
    auto gb = upload(*dev_, gb0, g);
    ASSERT_TRUE(ops_->bias_backward(gb.view, ddout.view, N, OC, s()).ok());
    for (std::int64_t n = 0; n < N; ++n) {
      for (std::int64_t j = 0; j < OC; ++j) gb0[j] += dout[n * OC + j];
    }
    EXPECT_TRUE(close(download(*dev_, gb.view), gb0, atol_of(g), rtol_of(g))) << dtype_name(g);
  }
}

TEST_P(NnOpsTest, GeluForwardAndBackward) {
  auto x = random_vec(1000, 30, 3.0);
  x[0] = 0.0;
  x[1] = 12.0;
  x[2] = -12.0;
  x = rounded(x, t());
  const auto dout = rounded(random_vec(1000, 31), t());
  auto dx = upload(*dev_, x, t());
  auto out = upload(*dev_, std::vector<double>(x.size()), t());
  ASSERT_TRUE(ops_->gelu_forward(out.view, dx.view, s()).ok());
  std::vector<double> want(x.size()), dwant(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    want[i] = ref::gelu(x[i]);
    dwant[i] = ref::gelu_grad(x[i]) * dout[i];
  }
  EXPECT_TRUE(close(download(*dev_, out.view), want, atol_of(t()), rtol_of(t())));
  // In place: dinp is dout.
  auto dd = upload(*dev_, dout, t());
  ASSERT_TRUE(ops_->gelu_backward(dd.view, dx.view, dd.view, s()).ok());
  EXPECT_TRUE(close(download(*dev_, dd.view), dwant, atol_of(t()), rtol_of(t())));
}

TEST_P(NnOpsTest, AddInPlace) {
  const auto a = rounded(random_vec(300, 40), t());
  const auto b = rounded(random_vec(300, 41), t());
  auto da = upload(*dev_, a, t());
  auto db = upload(*dev_, b, t());
  ASSERT_TRUE(ops_->add(da.view, da.view, db.view, s()).ok());
  std::vector<double> want(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) want[i] = a[i] + b[i];
  EXPECT_TRUE(close(download(*dev_, da.view), want, atol_of(t()), rtol_of(t())));
}

TEST_P(NnOpsTest, CausalSoftmaxForwardAndBackward) {
  const std::int64_t BH = 4, T = 13;
  auto pre = rounded(random_vec(BH * T * T, 50, 3.0), t());
  pre[T + 1] = 60.0;  // a large score: the max shift must keep exp finite
  auto dpre = upload(*dev_, pre, t());
  ASSERT_TRUE(ops_->softmax_causal_forward(dpre.view, dpre.view, BH, T, s()).ok());
  const auto att_got = download(*dev_, dpre.view);
  const auto att = ref::softmax_causal(pre, BH, T);
  EXPECT_TRUE(close(att_got, att, atol_of(t()) / 4, rtol_of(t())));

  // Backward from the backend's own probabilities (what the model does), in place over datt.
  const auto datt = rounded(random_vec(BH * T * T, 51), t());
  auto dd = upload(*dev_, datt, t());
  ASSERT_TRUE(ops_->softmax_causal_backward(dd.view, dpre.view, dd.view, BH, T, s()).ok());
  EXPECT_TRUE(close(download(*dev_, dd.view), ref::softmax_causal_backward(att_got, datt, BH, T), atol_of(t()),
                    2 * rtol_of(t())));
}

TEST_P(NnOpsTest, CrossEntropyForwardAndBackward) {
  const std::int64_t N = 7, V = 300;
  const auto logits = rounded(random_vec(N * V, 60, 4.0), t());
  const auto targets = random_ids(N, V, 61);
  auto dl = upload(*dev_, logits, t());
  auto dt = upload_ids(*dev_, targets);
  auto losses = upload(*dev_, std::vector<double>(N), DType::kF32);
  ASSERT_TRUE(ops_->crossentropy_forward(losses.view, dl.view, dt.range(), N, V, s()).ok());
  EXPECT_TRUE(close(download(*dev_, losses.view), ref::crossentropy(logits, targets, N, V), 1e-4, 1e-5));
  ASSERT_TRUE(ops_->crossentropy_backward(dl.view, dl.view, dt.range(), 0.25f, N, V, s()).ok());
  EXPECT_TRUE(close(download(*dev_, dl.view), ref::crossentropy_backward(logits, targets, 0.25, N, V),
                    atol_of(t()) / 8, rtol_of(t())));
}

// The vocab-parallel embedding: vocabulary 11 split over two shards of 6 rows (the last one a
// padding row no token names); the shards' outputs, with wpe added on the first only, sum to
// the whole embedding, and each shard's gradient rows are the whole gradient's.
TEST_P(NnOpsTest, EmbeddingShardsSumToTheWholeEmbedding) {
  const std::int64_t B = 2, T = 5, C = 70, V = 11, Vr = 6, P = 5, N = B * T;
  auto tokens = random_ids(N, V, 70);
  tokens[0] = 0;
  tokens[1] = static_cast<std::int32_t>(V - 1);
  auto wte = rounded(random_vec(2 * Vr * C, 71), t());
  const auto wpe = rounded(random_vec(P * C, 72), t());
  auto dtok = upload_ids(*dev_, tokens);
  auto dwpe = upload(*dev_, wpe, t());
  std::vector<double> sum(N * C, 0.0);
  const auto dout = rounded(random_vec(N * C, 73), t());
  auto ddout = upload(*dev_, dout, t());
  std::vector<double> gwte_whole(V * C, 0.0), gwpe_whole(P * C, 0.0);
  ref::embedding_backward(gwte_whole, gwpe_whole, dout, tokens, N, T, C);
  for (std::int64_t r = 0; r < 2; ++r) {
    const std::vector<double> rows(wte.begin() + r * Vr * C, wte.begin() + (r + 1) * Vr * C);
    auto shard = upload(*dev_, rows, t());
    auto out = upload(*dev_, std::vector<double>(N * C, 0.0), t());
    ASSERT_TRUE(ops_->embedding_shard_forward(out.view, dtok.range(), shard.view, r * Vr, r == 0 ? dwpe.view : DeviceView(),
                                              N, T, C, s()).ok());
    const auto got = download(*dev_, out.view);
    for (std::size_t i = 0; i < got.size(); ++i) sum[i] += got[i];
    auto gwte = upload(*dev_, std::vector<double>(Vr * C, 0.0), DType::kF32);
    auto gwpe = upload(*dev_, std::vector<double>(P * C, 0.0), DType::kF32);
    ASSERT_TRUE(ops_->embedding_shard_backward(gwte.view, r * Vr, gwpe.view, ddout.view, dtok.range(), N, T, C, s()).ok());
    std::vector<double> want(Vr * C, 0.0);
    for (std::int64_t i = 0; i < Vr * C && r * Vr * C + i < V * C; ++i) want[i] = gwte_whole[r * Vr * C + i];
    EXPECT_TRUE(close(download(*dev_, gwte.view), want, atol_of(t()), rtol_of(t()))) << "shard " << r;
    EXPECT_TRUE(close(download(*dev_, gwpe.view), gwpe_whole, atol_of(t()), rtol_of(t()))) << "shard " << r;
  }
  wte.resize(V * C);
  EXPECT_TRUE(close(sum, ref::embedding(tokens, wte, wpe, N, T, C), atol_of(t()), rtol_of(t())));
}

// The vocab-parallel cross-entropy: vocabulary 301 padded to 304 and split over four shards;
// the statistics combined as the three all-reduces do give the whole cross-entropy, and each
// shard's logit gradient is the whole gradient's columns (zero over the padding).
TEST_P(NnOpsTest, CrossEntropyShardsGiveTheWholeLossAndGradient) {
  const std::int64_t N = 7, V = 301, shards = 4, Vr = 76;
  const auto logits = rounded(random_vec(N * V, 80, 4.0), t());
  auto targets = random_ids(N, V, 81);
  targets[0] = static_cast<std::int32_t>(V - 1);  // in the shard with the padding
  auto dt = upload_ids(*dev_, targets);
  const auto want_dl = ref::crossentropy_backward(logits, targets, 0.25, N, V);
  std::vector<double> mx(N, -INFINITY), tg(N, 0.0), se(N, 0.0);
  std::vector<testutil::DevTensor> pieces;
  auto f32 = [&](const std::vector<double>& v) { return upload(*dev_, v, DType::kF32); };
  for (std::int64_t r = 0; r < shards; ++r) {
    std::vector<double> mine(N * Vr, 0.0);
    for (std::int64_t n = 0; n < N; ++n) {
      for (std::int64_t j = 0; j < Vr && r * Vr + j < V; ++j) mine[n * Vr + j] = logits[n * V + r * Vr + j];
    }
    pieces.push_back(upload(*dev_, mine, t()));
    const std::int64_t valid = std::min(Vr, V - r * Vr);
    auto m = f32(std::vector<double>(N)), g = f32(std::vector<double>(N));
    ASSERT_TRUE(ops_->crossentropy_shard_stats(m.view, g.view, pieces.back().view, dt.range(), N, Vr, r * Vr, valid, s()).ok());
    const auto mr = download(*dev_, m.view), gr = download(*dev_, g.view);
    for (std::int64_t n = 0; n < N; ++n) {
      mx[n] = std::max(mx[n], mr[n]);  // all-reduce max
      tg[n] += gr[n];                  // all-reduce sum
    }
  }
  auto dmx = f32(mx);
  for (std::int64_t r = 0; r < shards; ++r) {
    auto e = f32(std::vector<double>(N));
    ASSERT_TRUE(ops_->crossentropy_shard_sumexp(e.view, pieces[r].view, dmx.view, N, Vr, std::min(Vr, V - r * Vr), s()).ok());
    const auto er = download(*dev_, e.view);
    for (std::int64_t n = 0; n < N; ++n) se[n] += er[n];  // all-reduce sum
  }
  auto dtg = f32(tg), dse = f32(se), losses = f32(std::vector<double>(N));
  ASSERT_TRUE(ops_->crossentropy_shard_loss(losses.view, dmx.view, dtg.view, dse.view, N, s()).ok());
  EXPECT_TRUE(close(download(*dev_, losses.view), ref::crossentropy(logits, targets, N, V), 1e-4, 1e-5));
  for (std::int64_t r = 0; r < shards; ++r) {
    const std::int64_t valid = std::min(Vr, V - r * Vr);
    ASSERT_TRUE(ops_->crossentropy_shard_backward(pieces[r].view, pieces[r].view, dt.range(), dmx.view, dse.view, 0.25f,
                                                  N, Vr, r * Vr, valid, s()).ok());
    std::vector<double> want(N * Vr, 0.0);
    for (std::int64_t n = 0; n < N; ++n) {
      for (std::int64_t j = 0; j < valid; ++j) want[n * Vr + j] = want_dl[n * V + r * Vr + j];
    }
    EXPECT_TRUE(close(download(*dev_, pieces[r].view), want, atol_of(t()) / 8, rtol_of(t()))) << "shard " << r;
  }
  EXPECT_FALSE(ops_->crossentropy_shard_stats(dmx.view, dtg.view, pieces[0].view, dt.range(), N, Vr, 0, Vr + 1, s()).ok());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, NnOpsTest, ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                         [](const auto& p) { return std::string(dtype_name(p.param)); });

// ---- argument checks ----

class NnOpsChecks : public ::testing::Test {
 protected:
  void SetUp() override {
    dev_ = testutil::make_host();
    ASSERT_NE(dev_, nullptr);
    auto ops = make_nn_ops(*dev_);
    ASSERT_TRUE(ops.ok());
    ops_ = std::move(*ops);
  }
  std::unique_ptr<Device> dev_;
  std::unique_ptr<NnOps> ops_;
};

TEST_F(NnOpsChecks, BackendIsChosenByDevice) { EXPECT_EQ(ops_->backend(), "host"); }

TEST_F(NnOpsChecks, AccumulateSumAddsTheScaledSum) {
  const auto x = random_vec(1001, 70);
  auto dx = upload(*dev_, x, DType::kF32);
  auto out = upload(*dev_, {2.0}, DType::kF32);
  ASSERT_TRUE(ops_->accumulate_sum(out.view, dx.view, 0.5f, dev_->default_stream()).ok());
  double sum = 0;
  for (double v : x) sum += static_cast<float>(v);
  EXPECT_TRUE(close(download(*dev_, out.view), {2.0 + 0.5 * sum}, 1e-4, 1e-5));
}

TEST_F(NnOpsChecks, RefusesWrongCountsDtypesAndOverlaps) {
  auto x = upload(*dev_, std::vector<double>(40), DType::kF32);
  auto y = upload(*dev_, std::vector<double>(40), DType::kF32);
  auto h = upload(*dev_, std::vector<double>(40), DType::kBF16);
  auto w = upload(*dev_, std::vector<double>(8), DType::kF32);
  auto b = upload(*dev_, std::vector<double>(8), DType::kF32);
  auto st = upload(*dev_, std::vector<double>(5), DType::kF32);
  auto st2 = upload(*dev_, std::vector<double>(5), DType::kF32);
  Stream& s = dev_->default_stream();

  Status wrong_count = ops_->layernorm_forward(y.view, st.view, st2.view, x.view, w.view, b.view, 4, 8, s);
  EXPECT_EQ(wrong_count.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_count.message().find("out has 40 elements; expected 32"), std::string::npos) << wrong_count;

  Status wrong_dtype = ops_->gelu_forward(h.view, x.view, s);
  EXPECT_EQ(wrong_dtype.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_dtype.message().find("bf16"), std::string::npos) << wrong_dtype;

  auto half = *x.view.slice(10, 20);
  auto other_half = *x.view.slice(0, 20);
  Status overlap = ops_->add(half, other_half, *y.view.slice(0, 20), s);
  EXPECT_EQ(overlap.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(overlap.message().find("overlaps"), std::string::npos) << overlap;

  Status zero_dim = ops_->softmax_causal_forward(x.view, x.view, 0, 2, s);
  EXPECT_EQ(zero_dim.code(), StatusCode::kInvalidArgument);

  auto ids = upload_ids(*dev_, {0, 1, 2});
  Status short_ids = ops_->crossentropy_forward(*st.view.slice(0, 4), *x.view.slice(0, 40), ids.range(), 4, 10, s);
  EXPECT_EQ(short_ids.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(short_ids.message().find("targets"), std::string::npos) << short_ids;

  // Gradients must be fp32 or the activation dtype.
  auto g16 = upload(*dev_, std::vector<double>(8), DType::kF16);
  Status grad_dtype = ops_->bias_backward(g16.view, *h.view.slice(0, 40), 5, 8, s);
  EXPECT_EQ(grad_dtype.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(grad_dtype.message().find("gradients are fp32 or bf16"), std::string::npos) << grad_dtype;
  // The two gradients an op accumulates share one dtype.
  auto wte_g = upload(*dev_, std::vector<double>(16), DType::kF32);
  auto wpe_g = upload(*dev_, std::vector<double>(16), DType::kBF16);
  auto tok = upload_ids(*dev_, {0, 1});
  Status mixed = ops_->embedding_backward(wte_g.view, wpe_g.view, *h.view.slice(0, 16), tok.range(), 2, 2, 8, s);
  EXPECT_EQ(mixed.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(mixed.message().find("dwte and dwpe must have the same dtype"), std::string::npos) << mixed;
  EXPECT_TRUE(s.synchronize().ok());
}

TEST_F(NnOpsChecks, RefusesMemoryOfAnotherDevice) {
  auto other = testutil::make_host(16ULL << 20);
  auto x = upload(*other, std::vector<double>(16), DType::kF32);
  auto y = upload(*dev_, std::vector<double>(16), DType::kF32);
  Status st = ops_->gelu_forward(y.view, x.view, dev_->default_stream());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("not memory of this op's device"), std::string::npos) << st;
}

}  // namespace
}  // namespace strata::nn
