// The tensor-parallel layers (layers.h) at tp in {2, 4} on LocalComm threads against the whole
// layer on one device: every rank's block output and input gradient equal the whole block's,
// and each rank's parameter gradients equal the whole gradients at the elements its shards
// hold (TensorShard::global_index), all in fp32 within 1e-5 absolute + 1e-5 relative (the
// split GEMMs and the all-reduce add the same terms in another order). Odd sequence length.
// Then the whole GPT (vocab-parallel embedding and cross-entropy, an odd vocabulary padded),
// with and without activation checkpointing: the loss within 1e-6 relative and every gradient.
// Block and GPT with and without sequence parallelism (each rank's rows of the whole).
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <tuple>

#include "model/layers.h"
#include "model/model_test_util.h"
#include "parallel/comm_test_util.h"

namespace strata::model {
namespace {

using testutil::BlockBuffers;
using testutil::close;
using testutil::DevTensor;
using testutil::download;
using testutil::random_vec;
using testutil::rounded;
using testutil::upload;
using Vec = std::vector<double>;

constexpr DType kF32 = DType::kF32;
constexpr std::int64_t B = 4, T = 5, C = 16, NH = 4, N = B * T;  // N divides among 2 and 4 ranks

// The whole tensor of parameter `name` (random, LayerNorm weights around 1), fp32-exact.
Vec whole_values(const Parameter& p, std::uint32_t seed) {
  std::size_t n = 1;
  for (std::int64_t d : p.shard().global_shape) n *= static_cast<std::size_t>(d);
  Vec v = random_vec(n, seed, 0.2);
  if (p.init() == ParamInit::kOnes) {
    for (double& x : v) x += 1.0;
  }
  return rounded(v, kF32);
}

// This rank's elements of a whole tensor.
Vec shard_of(const Vec& whole, const Parameter& p) {
  Vec mine(p.numel());
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = whole[p.shard().global_index(i)];
  return mine;
}

// Binds every parameter of `m` to its part of the whole values `values` with zeroed gradients.
struct Bound {
  Bound(Device& dev, Module& m, const std::map<std::string, Vec>& values) : dev(dev) {
    for (Parameter* p : m.parameters()) {
      bufs.push_back(upload(dev, shard_of(values.at(p->name()), *p), kF32));
      bufs.push_back(upload(dev, Vec(p->numel(), 0.0), kF32));
      EXPECT_TRUE(p->bind(bufs[bufs.size() - 2].view, bufs.back().view).ok());
    }
  }
  Device& dev;
  std::vector<DevTensor> bufs;
};

void set(Device& dev, const DeviceView& v, const Vec& values) {
  const std::vector<std::byte> bytes = testutil::encode(values, v.dtype());
  ASSERT_TRUE(dev.copy_to_device(v.range(), bytes, dev.default_stream()).ok());
  ASSERT_TRUE(dev.default_stream().synchronize().ok());
}

// What a block run gives: the output, the input gradient and every parameter's gradient.
struct BlockRun {
  Vec out, dx;
  std::map<std::string, Vec> grads;
};

// This rank's rows of (N, C) values (all of them without sequence parallelism).
Vec rows_of(const Vec& all, TpPlace place) {
  if (!place.sp()) return all;
  const auto part = all.size() / static_cast<std::size_t>(place.size);
  const auto first = all.begin() + static_cast<std::ptrdiff_t>(part * static_cast<std::size_t>(place.rank));
  return Vec(first, first + static_cast<std::ptrdiff_t>(part));
}

// The block on this rank; x and dout are the whole (N, C) inputs, the outputs this rank's rows.
BlockRun run_block(Device& dev, Communicator* tp, TpPlace place, const std::map<std::string, Vec>& values,
                   const Vec& whole_x, const Vec& whole_dout) {
  auto ops = nn::make_nn_ops(dev);
  EXPECT_TRUE(ops.ok()) << ops.status();
  Block blk(0, C, NH, 2, place);
  Bound bound(dev, blk, values);
  BlockBuffers bb(dev, B, T, C, NH, place.size, place.sp());
  const Ctx ctx{dev, **ops, dev.default_stream(), tp, bb.rows, bb.ln_grads};
  const Vec x = rows_of(whole_x, place), dout = rows_of(whole_dout, place);
  DevTensor dx = upload(dev, x, kF32), out = upload(dev, Vec(x.size(), 0.0), kF32);
  BlockRun r;
  Status st = blk.forward(ctx, bb.a, dx.view, out.view, B, T, false);
  EXPECT_TRUE(st.ok()) << st;
  r.out = download(dev, out.view);
  set(dev, bb.g.dres, dout);
  st = blk.backward(ctx, bb.a, bb.g, dx.view, B, T);
  EXPECT_TRUE(st.ok()) << st;
  r.dx = download(dev, bb.g.dres);
  for (Parameter* p : blk.parameters()) r.grads[p->name()] = download(dev, p->grad());
  return r;
}

class TensorParallelBlock : public ::testing::TestWithParam<std::tuple<int, bool>> {};

// With sequence parallelism each rank's output and input gradient are its rows of the whole.
TEST_P(TensorParallelBlock, EveryRankEqualsTheWholeBlock) {
  const auto [tp, sp] = GetParam();
  auto dev = testutil::make_host();
  ASSERT_NE(dev, nullptr);
  std::map<std::string, Vec> values;
  {
    Block shape(0, C, NH, 2);
    std::uint32_t seed = 100;
    for (Parameter* p : shape.parameters()) values[p->name()] = whole_values(*p, seed++);
  }
  const Vec x = rounded(random_vec(N * C, 1), kF32), dout = random_vec(N * C, 2);
  const BlockRun whole = run_block(*dev, nullptr, {}, values, x, dout);

  testing_comm::Ranks ranks(tp);
  ranks.run([&](testing_comm::RankEnv& e) {
    const TpPlace place{e.rank, tp, sp};
    const BlockRun mine = run_block(*e.device, e.comm, place, values, x, dout);
    EXPECT_TRUE(close(mine.out, rows_of(whole.out, place), 1e-5, 1e-5)) << "output, rank " << e.rank;
    EXPECT_TRUE(close(mine.dx, rows_of(whole.dx, place), 1e-5, 1e-5)) << "input gradient, rank " << e.rank;
    Block shape(0, C, NH, 2, {e.rank, tp});
    for (Parameter* p : shape.parameters()) {
      EXPECT_TRUE(close(mine.grads.at(p->name()), shard_of(whole.grads.at(p->name()), *p), 1e-5, 1e-5))
          << p->name() << " " << p->shape_string() << ", rank " << e.rank;
    }
  });
  // The shards are what Megatron cuts: c_attn by heads (three parts), c_fc by columns, both
  // c_proj by rows with their biases whole, the LayerNorms whole.
  Block rank0(0, C, NH, 2, {0, tp});
  EXPECT_EQ(rank0.attn.c_attn.weight.shape(), (std::vector<std::int64_t>{C, 3 * C / tp}));
  EXPECT_EQ(rank0.attn.c_attn.bias.shape(), (std::vector<std::int64_t>{3 * C / tp}));
  EXPECT_EQ(rank0.attn.c_proj.weight.shape(), (std::vector<std::int64_t>{C / tp, C}));
  EXPECT_EQ(rank0.attn.c_proj.bias.shape(), (std::vector<std::int64_t>{C}));
  EXPECT_EQ(rank0.mlp.c_fc.weight.shape(), (std::vector<std::int64_t>{C, 4 * C / tp}));
  EXPECT_EQ(rank0.mlp.c_proj.weight.shape(), (std::vector<std::int64_t>{4 * C / tp, C}));
  EXPECT_EQ(rank0.ln_1.weight.shape(), (std::vector<std::int64_t>{C}));
  EXPECT_FALSE(rank0.ln_1.weight.shard().split());
}

INSTANTIATE_TEST_SUITE_P(Tp, TensorParallelBlock, ::testing::Combine(::testing::Values(2, 4), ::testing::Bool()));

// ---- the whole GPT ----

// Binds every parameter of `m` to its initial values under seed 5 plus 0.05 x a normal keyed
// by its elements' indices in the whole tensor (so that biases and LayerNorms are not at their
// neutral values), all fp32, with zeroed gradients.
std::vector<DevTensor> bind_global(Device& dev, Module& m) {
  std::vector<DevTensor> bufs;
  for (Parameter* p : m.parameters()) {
    std::vector<float> init(p->numel());
    init_parameter_values(*p, 5, 0, init);
    Vec v(p->numel());
    for (std::size_t i = 0; i < v.size(); ++i) {
      v[i] = init[i] + 0.05 * static_cast<double>(init_normal(99, p->name(), p->shard().global_index(i)));
    }
    bufs.push_back(upload(dev, rounded(v, kF32), kF32));
    bufs.push_back(upload(dev, Vec(p->numel(), 0.0), kF32));
    EXPECT_TRUE(p->bind(bufs[bufs.size() - 2].view, bufs.back().view).ok());
  }
  return bufs;
}

struct GptRun {
  double loss = 0;
  std::map<std::string, Vec> grads;
};

constexpr std::int64_t kVocab = 11;  // odd: padded to 12 at tp 2 and 4

GptRun run_gpt(Device& dev, Communicator* tp, int rank, int size, bool checkpointing, bool sp = false) {
  GptConfig c;
  c.dims.n_layer = 2;
  c.dims.n_head = NH;
  c.dims.n_embd = C;
  c.dims.vocab = kVocab;
  c.dims.seq_len = T;
  c.checkpointing = checkpointing;
  c.tp_rank = rank;
  c.tp_size = size;
  c.sequence_parallel = sp;
  auto gpt = Gpt::create(c);
  EXPECT_TRUE(gpt.ok()) << gpt.status();
  std::vector<DevTensor> bufs = bind_global(dev, **gpt);
  Status st = (*gpt)->prepare(dev, B, tp);
  EXPECT_TRUE(st.ok()) << st;
  const auto tokens = testutil::upload_ids(dev, testutil::random_ids(N, kVocab, 7));
  const auto targets = testutil::upload_ids(dev, testutil::random_ids(N, kVocab, 8));
  DevTensor loss = upload(dev, Vec{0.0}, kF32);
  st = (*gpt)->forward(tokens.range(), targets.range(), loss.view, 1.0f, dev.default_stream());
  EXPECT_TRUE(st.ok()) << st;
  st = (*gpt)->backward(1.0f, dev.default_stream());
  EXPECT_TRUE(st.ok()) << st;
  GptRun r;
  r.loss = download(dev, loss.view)[0];
  for (Parameter* p : (*gpt)->parameters()) r.grads[p->name()] = download(dev, p->grad());
  return r;
}

class TensorParallelGpt : public ::testing::TestWithParam<std::tuple<int, bool, bool>> {};

// The loss within 1e-6 relative, and every rank's gradients at its elements of the whole
// gradients (the padding rows of wte: zero), with and without sequence parallelism.
TEST_P(TensorParallelGpt, EveryRankEqualsTheWholeModel) {
  const auto [tp, checkpointing, sp] = GetParam();
  auto dev = testutil::make_host();
  ASSERT_NE(dev, nullptr);
  const GptRun whole = run_gpt(*dev, nullptr, 0, 1, checkpointing);
  testing_comm::Ranks ranks(tp);
  ranks.run([&](testing_comm::RankEnv& e) {
    const GptRun mine = run_gpt(*e.device, e.comm, e.rank, tp, checkpointing, sp);
    EXPECT_NEAR(mine.loss, whole.loss, 1e-6 * whole.loss) << "rank " << e.rank;
    GptConfig c;
    c.dims = {2, NH, C, kVocab, T};
    c.tp_rank = e.rank;
    c.tp_size = tp;
    auto shape = Gpt::create(c);
    ASSERT_TRUE(shape.ok());
    for (Parameter* p : (*shape)->parameters()) {
      const Vec& got = mine.grads.at(p->name());
      const Vec& all = whole.grads.at(p->name());
      Vec want(got.size(), 0.0);
      for (std::size_t i = 0; i < want.size(); ++i) {
        const std::uint64_t g = p->shard().global_index(i);
        if (g < all.size()) want[i] = all[g];  // beyond: wte's padding rows
      }
      EXPECT_TRUE(close(got, want, 1e-5, 1e-5)) << p->name() << " " << p->shape_string() << ", rank " << e.rank;
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Tp, TensorParallelGpt,
                         ::testing::Combine(::testing::Values(2, 4), ::testing::Bool(), ::testing::Bool()));

TEST(TensorParallelGpt, ADimensionThatDoesNotDivideAmongTheRanksIsRefused) {
  GptConfig c;
  c.dims = {2, 6, 24, kVocab, T};
  c.tp_size = 4;
  Status st = c.validate();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("n_head = 6 does not divide among parallel.tp = 4"), std::string::npos) << st;
  c.tp_size = 3;
  EXPECT_TRUE(c.validate().ok()) << c.validate();
  c.tp_rank = 3;
  EXPECT_FALSE(c.validate().ok());
  // Sequence parallelism needs the micro-batch's rows to divide among the ranks.
  c.dims = {2, 4, 16, kVocab, T};
  c.tp_rank = 0;
  c.tp_size = 2;
  c.sequence_parallel = true;
  auto gpt = Gpt::create(c);
  ASSERT_TRUE(gpt.ok()) << gpt.status();
  auto dev = testutil::make_host();
  ASSERT_NE(dev, nullptr);
  testing_comm::Ranks ranks(2);
  st = (*gpt)->prepare(*dev, 1, &ranks.comm(0));
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("micro_batch x seq_len = 1 x 5 rows among parallel.tp = 2"), std::string::npos) << st;
}

TEST(TensorParallelLinear, ASplitLayerWithoutItsGroupIsRefused) {
  auto dev = testutil::make_host();
  ASSERT_NE(dev, nullptr);
  auto ops = nn::make_nn_ops(*dev);
  ASSERT_TRUE(ops.ok());
  Linear lin("fc", 8, 8, 0.02f, TpSplit::kRow, {0, 2});
  std::map<std::string, Vec> values{{"fc.weight", Vec(64, 0.5)}, {"fc.bias", Vec(8, 0.0)}};
  Bound bound(*dev, lin, values);
  DevTensor x = upload(*dev, Vec(4 * 4, 1.0), kF32), y = upload(*dev, Vec(4 * 8, 0.0), kF32);
  const Status st = lin.forward(Ctx{*dev, **ops, dev->default_stream()}, y.view, x.view, 4, false);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("needs its tp group"), std::string::npos) << st;
}

}  // namespace
}  // namespace strata::model
