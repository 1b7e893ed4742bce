// The GPT-2 layers of layers.h: forward and backward of each, on the device stream.
#include "model/layers.h"

#include <algorithm>
#include <cmath>

namespace strata::model {

constexpr float kInitStd = 0.02f;

Result<DeviceView> sub(const DeviceView& v, std::int64_t first, std::int64_t count) {
  auto r = v.slice(static_cast<std::size_t>(first), static_cast<std::size_t>(count));
  if (!r.ok()) return internal_error("model layout: " + r.status().message());
  return r;
}

Status matmul(const Ctx& ctx, DeviceView c, DeviceView a, DeviceView b, std::int64_t M, std::int64_t N,
              std::int64_t K, bool trans_a, bool trans_b, float alpha, float beta) {
  GemmArgs g;
  g.a = MatrixView{a, trans_a ? K : M, trans_a ? M : K, 0, 0};
  g.b = MatrixView{b, trans_b ? N : K, trans_b ? K : N, 0, 0};
  g.c = MatrixView{c, M, N, 0, 0};
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.alpha = alpha;
  g.beta = beta;
  return ctx.device.gemm(g, ctx.stream);
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

LayerNorm::LayerNorm(const std::string& prefix, std::int64_t C, TpPlace tp)
    : Module(prefix),
      weight(add_parameter(prefix + ".weight", {C}, ParamInit::kOnes)),
      bias(add_parameter(prefix + ".bias", {C}, ParamInit::kZeros)),
      C_(C),
      tp_(tp) {}

Status LayerNorm::forward(const Ctx& ctx, DeviceView out, DeviceView mean, DeviceView rstd, DeviceView x,
                          std::int64_t N, bool recompute) {
  STRATA_RETURN_IF_ERROR(hook_before_forward(recompute));
  STRATA_RETURN_IF_ERROR(ctx.nn.layernorm_forward(out, mean, rstd, x, weight.value(), bias.value(), N, C_, ctx.stream));
  return hook_after_forward(recompute);
}

Status LayerNorm::backward(const Ctx& ctx, DeviceView dx, DeviceView dout, DeviceView x, DeviceView mean,
                           DeviceView rstd, std::int64_t N) {
  STRATA_RETURN_IF_ERROR(hook_before_backward());
  if (!tp_.sp()) {
    STRATA_RETURN_IF_ERROR(ctx.nn.layernorm_backward(dx, weight.grad(), bias.grad(), dout, x, weight.value(), mean,
                                                     rstd, N, C_, ctx.stream));
    return hook_after_backward();
  }
  // This rank's rows' part of the gradients, summed over the tp ranks, then added.
  if (ctx.tp == nullptr || ctx.ln_grads.count() < static_cast<std::size_t>(2 * C_)) {
    return failed_precondition(name() + ": a sequence-parallel LayerNorm needs its tp group and gradient scratch");
  }
  STRATA_ASSIGN_OR_RETURN(DeviceView both, sub(ctx.ln_grads, 0, 2 * C_));
  STRATA_ASSIGN_OR_RETURN(DeviceView dw, sub(both, 0, C_));
  STRATA_ASSIGN_OR_RETURN(DeviceView db, sub(both, C_, C_));
  STRATA_RETURN_IF_ERROR(ctx.device.fill(both, 0.0f, ctx.stream));
  STRATA_RETURN_IF_ERROR(ctx.nn.layernorm_backward(dx, dw, db, dout, x, weight.value(), mean, rstd, N, C_, ctx.stream));
  STRATA_RETURN_IF_ERROR(ctx.tp->all_reduce(CommBuffer::of(both), CommBuffer::of(both), ReduceOp::kSum, ctx.stream));
  STRATA_RETURN_IF_ERROR(ctx.nn.add(weight.grad(), weight.grad(), dw, ctx.stream));
  STRATA_RETURN_IF_ERROR(ctx.nn.add(bias.grad(), bias.grad(), db, ctx.stream));
  return hook_after_backward();
}

Result<DeviceView> my_rows(const Ctx& ctx, const DeviceView& full) {
  const auto size = static_cast<std::int64_t>(ctx.tp->size()), rank = static_cast<std::int64_t>(ctx.tp->rank());
  const auto part = static_cast<std::int64_t>(full.count()) / size;
  return sub(full, rank * part, part);
}

Status gather_rows(const Ctx& ctx, DeviceView full) {
  STRATA_ASSIGN_OR_RETURN(DeviceView mine, my_rows(ctx, full));
  return ctx.tp->all_gather(CommBuffer::of(mine), CommBuffer::of(full), ctx.stream);
}

// ---------------------------------------------------------------------------------------------
// Linear

namespace {

// The shards of a Linear's weight (in, out) and bias (out).
TensorShard weight_shard(std::int64_t in, std::int64_t out, TpSplit split, TpPlace tp, int parts) {
  if (split == TpSplit::kNone || !tp.split()) return {{in, out}};
  return {{in, out}, split == TpSplit::kColumn ? 1 : 0, split == TpSplit::kColumn ? parts : 1, tp.rank, tp.size};
}

TensorShard bias_shard(std::int64_t out, TpSplit split, TpPlace tp, int parts) {
  if (split != TpSplit::kColumn || !tp.split()) return {{out}};
  return {{out}, 0, parts, tp.rank, tp.size};
}

TpSplit effective(TpSplit split, TpPlace tp) { return tp.split() ? split : TpSplit::kNone; }

// In place over the tp group (a no-op without one).
Status tp_all_reduce(const Ctx& ctx, DeviceView v) {
  if (ctx.tp == nullptr || ctx.tp->size() == 1) return Status::OK();
  return ctx.tp->all_reduce(CommBuffer::of(v), CommBuffer::of(v), ReduceOp::kSum, ctx.stream);
}

Status require_tp(const Ctx& ctx, const std::string& layer, TpSplit split) {
  if (split == TpSplit::kNone || ctx.tp != nullptr) return Status::OK();
  return failed_precondition(layer + ": a tensor-parallel layer needs its tp group in the context");
}

}  // namespace

Linear::Linear(const std::string& prefix, std::int64_t in, std::int64_t out, float init_std, TpSplit split,
               TpPlace tp, int parts)
    : Module(prefix),
      weight(add_parameter(prefix + ".weight", weight_shard(in, out, split, tp, parts), ParamInit::kNormal, init_std)),
      bias(add_parameter(prefix + ".bias", bias_shard(out, split, tp, parts), ParamInit::kZeros)),
      split_(effective(split, tp)),
      sp_(tp.sp() && split_ != TpSplit::kNone),
      in_(weight.shape()[0]),
      out_(weight.shape()[1]) {}

Status Linear::forward(const Ctx& ctx, DeviceView y, DeviceView x, std::int64_t N, bool recompute,
                       DeviceView residual) {
  STRATA_RETURN_IF_ERROR(hook_before_forward(recompute));
  STRATA_RETURN_IF_ERROR(require_tp(ctx, name(), split_));
  if (split_ == TpSplit::kRow) {
    // y = the sum over ranks of x_r @ W_r (sequence parallelism: this rank's rows of it), + b once.
    DeviceView partial = y;
    if (sp_) {
      STRATA_ASSIGN_OR_RETURN(partial, sub(ctx.rows, 0, N * out_));
    }
    STRATA_RETURN_IF_ERROR(matmul(ctx, partial, x, weight.value(), N, out_, in_, false, false));
    if (sp_) {
      STRATA_RETURN_IF_ERROR(ctx.tp->reduce_scatter(CommBuffer::of(partial), CommBuffer::of(y), ReduceOp::kSum, ctx.stream));
    } else {
      STRATA_RETURN_IF_ERROR(tp_all_reduce(ctx, y));
    }
    STRATA_RETURN_IF_ERROR(ctx.nn.bias_add(y, bias.value(), sp_ ? N / ctx.tp->size() : N, out_, ctx.stream));
  } else {
    // y = b, then y += x @ W in one GEMM (beta = 1): one rounding of the sum in the compute dtype.
    STRATA_RETURN_IF_ERROR(ctx.nn.bias_broadcast(y, bias.value(), N, out_, ctx.stream));
    STRATA_RETURN_IF_ERROR(matmul(ctx, y, x, weight.value(), N, out_, in_, false, false, 1.0f, 1.0f));
  }
  if (!residual.empty()) STRATA_RETURN_IF_ERROR(ctx.nn.add(y, y, residual, ctx.stream));
  return hook_after_forward(recompute);
}

Status Linear::backward(const Ctx& ctx, DeviceView dx, DeviceView dy, DeviceView x, std::int64_t N) {
  STRATA_RETURN_IF_ERROR(hook_before_backward());
  STRATA_RETURN_IF_ERROR(require_tp(ctx, name(), split_));
  if (split_ == TpSplit::kRow && sp_) {  // every rank's rows of dy, for the whole row sums below
    STRATA_ASSIGN_OR_RETURN(DeviceView whole, sub(ctx.rows, 0, N * out_));
    STRATA_RETURN_IF_ERROR(ctx.tp->all_gather(CommBuffer::of(dy), CommBuffer::of(whole), ctx.stream));
    dy = whole;
  }
  // dW: (in, out) += x^T @ dy, now or (zero-bubble schedules) deferred
  if (ctx.defer != nullptr) {
    STRATA_RETURN_IF_ERROR(ctx.defer->defer(ctx, weight, x, dy, in_, out_, N));
  } else {
    STRATA_RETURN_IF_ERROR(matmul(ctx, weight.grad(), x, dy, in_, out_, N, true, false, 1.0f, 1.0f));
  }
  // db: (out) += sum_n dy
  STRATA_RETURN_IF_ERROR(ctx.nn.bias_backward(bias.grad(), dy, N, out_, ctx.stream));
  // dx: (N, in) = dy @ W^T; column-parallel: each rank's part of the sum over the output
  if (split_ == TpSplit::kColumn && sp_) {
    STRATA_ASSIGN_OR_RETURN(DeviceView partial, sub(ctx.rows, 0, N * in_));
    STRATA_RETURN_IF_ERROR(matmul(ctx, partial, dy, weight.value(), N, in_, out_, false, true));
    STRATA_RETURN_IF_ERROR(ctx.tp->reduce_scatter(CommBuffer::of(partial), CommBuffer::of(dx), ReduceOp::kSum, ctx.stream));
    return hook_after_backward();
  }
  STRATA_RETURN_IF_ERROR(matmul(ctx, dx, dy, weight.value(), N, in_, out_, false, true));
  if (split_ == TpSplit::kColumn) STRATA_RETURN_IF_ERROR(tp_all_reduce(ctx, dx));
  return hook_after_backward();
}

void DeferredWeightGrads::reset(DeviceView stash) {
  stash_ = stash;
  used_ = 0;
  tasks_.clear();
}

Status DeferredWeightGrads::defer(const Ctx& ctx, Parameter& weight, DeviceView x, DeviceView dy, std::int64_t in,
                                  std::int64_t out, std::int64_t N) {
  if (used_ + N * out > static_cast<std::int64_t>(stash_.count())) {
    return internal_error("deferred weight gradients: the stash of " + std::to_string(stash_.count()) +
                          " elements is full at " + weight.name());
  }
  STRATA_ASSIGN_OR_RETURN(DeviceView copy, sub(stash_, used_, N * out));
  STRATA_ASSIGN_OR_RETURN(DeviceView from, sub(dy, 0, N * out));
  STRATA_RETURN_IF_ERROR(ctx.device.copy_on_device(copy.range(), from.range(), ctx.stream));
  used_ += N * out;
  tasks_.push_back(Task{&weight, x, copy, in, out, N});
  return Status::OK();
}

Status DeferredWeightGrads::run(const Ctx& ctx) {
  for (const Task& t : tasks_) {
    STRATA_RETURN_IF_ERROR(matmul(ctx, t.weight->grad(), t.x, t.dy, t.in, t.out, t.N, true, false, 1.0f, 1.0f));
  }
  tasks_.clear();
  used_ = 0;
  return Status::OK();
}

std::int64_t DeferredWeightGrads::block_stash(std::int64_t N, std::int64_t C, int tp) {
  return N * (7 * C / tp + 2 * C);
}

// ---------------------------------------------------------------------------------------------
// Attention

namespace {

// One strided batch of per-head matrices inside a (B, T, W) activation: for row b, head h's
// matrix is rows t, columns [col0 + h*hs, col0 + (h+1)*hs), i.e. ld W and batch stride hs.
Result<MatrixView> heads(const DeviceView& act, std::int64_t b, std::int64_t T, std::int64_t W, std::int64_t col0,
                         std::int64_t NH, std::int64_t hs) {
  const std::int64_t extent = (NH - 1) * hs + (T - 1) * W + hs;
  STRATA_ASSIGN_OR_RETURN(DeviceView v, sub(act, b * T * W + col0, extent));
  return MatrixView{v, T, hs, W, hs};
}

// The NH (T, T) score matrices of row b inside a (B, NH, T, T) activation.
Result<MatrixView> scores(const DeviceView& att, std::int64_t b, std::int64_t NH, std::int64_t T) {
  STRATA_ASSIGN_OR_RETURN(DeviceView v, sub(att, b * NH * T * T, NH * T * T));
  return MatrixView{v, T, T, T, T * T};
}

Status batched(const Ctx& ctx, MatrixView a, MatrixView b, MatrixView c, bool ta, bool tb, float alpha,
               std::int64_t batch) {
  GemmArgs g;
  g.a = a;
  g.b = b;
  g.c = c;
  g.trans_a = ta;
  g.trans_b = tb;
  g.alpha = alpha;
  g.beta = 0.0f;
  g.batch = batch;
  return ctx.device.gemm(g, ctx.stream);
}

}  // namespace

Attention::Attention(const std::string& prefix, std::int64_t C, std::int64_t NH, float proj_std, TpPlace tp)
    : Module(prefix),
      c_attn(prefix + ".c_attn", C, 3 * C, kInitStd, TpSplit::kColumn, tp, 3),
      c_proj(prefix + ".c_proj", C, C, proj_std, TpSplit::kRow, tp),
      C_(C / tp.size),
      NH_(NH / tp.size) {
  add_child(c_attn);
  add_child(c_proj);
}

Status Attention::forward(const Ctx& ctx, BlockActs& acts, DeviceView x, std::int64_t B, std::int64_t T,
                          bool recompute) {
  STRATA_RETURN_IF_ERROR(hook_before_forward(recompute));
  const std::int64_t N = B * T, C = C_, NH = NH_, hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  // qkv: (B, T, 3C) = ln1 @ W_attn + b_attn
  STRATA_RETURN_IF_ERROR(c_attn.forward(ctx, acts.qkv, acts.ln1, N, recompute));
  for (std::int64_t b = 0; b < B; ++b) {
    STRATA_ASSIGN_OR_RETURN(MatrixView q, heads(acts.qkv, b, T, 3 * C, 0, NH, hs));
    STRATA_ASSIGN_OR_RETURN(MatrixView k, heads(acts.qkv, b, T, 3 * C, C, NH, hs));
    STRATA_ASSIGN_OR_RETURN(MatrixView s, scores(acts.att, b, NH, T));
    // preatt[b, h]: (T, T) = Q (T, hs) @ K^T / sqrt(hs)
    STRATA_RETURN_IF_ERROR(batched(ctx, q, k, s, false, true, scale, NH));
  }
  // att: (B, NH, T, T) = causal softmax, in place
  STRATA_RETURN_IF_ERROR(ctx.nn.softmax_causal_forward(acts.att, acts.att, B * NH, T, ctx.stream));
  for (std::int64_t b = 0; b < B; ++b) {
    STRATA_ASSIGN_OR_RETURN(MatrixView s, scores(acts.att, b, NH, T));
    STRATA_ASSIGN_OR_RETURN(MatrixView v, heads(acts.qkv, b, T, 3 * C, 2 * C, NH, hs));
    STRATA_ASSIGN_OR_RETURN(MatrixView y, heads(acts.atty, b, T, C, 0, NH, hs));
    // atty[b, :, h]: (T, hs) = att[b, h] (T, T) @ V (T, hs)
    STRATA_RETURN_IF_ERROR(batched(ctx, s, v, y, false, false, 1.0f, NH));
  }
  // res2: (B, T, C) = x + atty @ W_proj + b_proj
  STRATA_RETURN_IF_ERROR(c_proj.forward(ctx, acts.res2, acts.atty, N, recompute, x));
  return hook_after_forward(recompute);
}

Status Attention::backward(const Ctx& ctx, const BlockActs& acts, BlockGrads& g, std::int64_t B, std::int64_t T) {
  STRATA_RETURN_IF_ERROR(hook_before_backward());
  const std::int64_t N = B * T, C = C_, NH = NH_, hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  // datty: (B, T, C) = dres @ W_proj^T, into dln
  STRATA_RETURN_IF_ERROR(c_proj.backward(ctx, g.dln, g.dres, acts.atty, N));
  for (std::int64_t b = 0; b < B; ++b) {
    STRATA_ASSIGN_OR_RETURN(MatrixView dy, heads(g.dln, b, T, C, 0, NH, hs));
    STRATA_ASSIGN_OR_RETURN(MatrixView v, heads(acts.qkv, b, T, 3 * C, 2 * C, NH, hs));
    STRATA_ASSIGN_OR_RETURN(MatrixView s, scores(acts.att, b, NH, T));
    STRATA_ASSIGN_OR_RETURN(MatrixView ds, scores(g.datt, b, NH, T));
    STRATA_ASSIGN_OR_RETURN(MatrixView dv, heads(g.dqkv, b, T, 3 * C, 2 * C, NH, hs));
    // datt[b, h]: (T, T) = dy (T, hs) @ V^T
    STRATA_RETURN_IF_ERROR(batched(ctx, dy, v, ds, false, true, 1.0f, NH));
    // dV: (T, hs) = att^T (T, T) @ dy
    STRATA_RETURN_IF_ERROR(batched(ctx, s, dy, dv, true, false, 1.0f, NH));
  }
  // dpreatt = softmax backward, in place over datt
  STRATA_RETURN_IF_ERROR(ctx.nn.softmax_causal_backward(g.datt, acts.att, g.datt, B * NH, T, ctx.stream));
  for (std::int64_t b = 0; b < B; ++b) {
    STRATA_ASSIGN_OR_RETURN(MatrixView ds, scores(g.datt, b, NH, T));
    STRATA_ASSIGN_OR_RETURN(MatrixView q, heads(acts.qkv, b, T, 3 * C, 0, NH, hs));
    STRATA_ASSIGN_OR_RETURN(MatrixView k, heads(acts.qkv, b, T, 3 * C, C, NH, hs));
    STRATA_ASSIGN_OR_RETURN(MatrixView dq, heads(g.dqkv, b, T, 3 * C, 0, NH, hs));
    STRATA_ASSIGN_OR_RETURN(MatrixView dk, heads(g.dqkv, b, T, 3 * C, C, NH, hs));
    // dQ: (T, hs) = dpreatt (T, T) @ K / sqrt(hs);  dK = dpreatt^T @ Q / sqrt(hs)
    STRATA_RETURN_IF_ERROR(batched(ctx, ds, k, dq, false, false, scale, NH));
    STRATA_RETURN_IF_ERROR(batched(ctx, ds, q, dk, true, false, scale, NH));
  }
  // dln1: (B, T, C) = dqkv @ W_attn^T, into dln (datty is consumed by now)
  STRATA_RETURN_IF_ERROR(c_attn.backward(ctx, g.dln, g.dqkv, acts.ln1, N));
  return hook_after_backward();
}

// ---------------------------------------------------------------------------------------------
// MLP

Mlp::Mlp(const std::string& prefix, std::int64_t C, float proj_std, TpPlace tp)
    : Module(prefix),
      c_fc(prefix + ".c_fc", C, 4 * C, kInitStd, TpSplit::kColumn, tp),
      c_proj(prefix + ".c_proj", 4 * C, C, proj_std, TpSplit::kRow, tp) {
  add_child(c_fc);
  add_child(c_proj);
}

Status Mlp::forward(const Ctx& ctx, BlockActs& acts, DeviceView out, std::int64_t N, bool recompute) {
  STRATA_RETURN_IF_ERROR(hook_before_forward(recompute));
  // fch: (B, T, 4C) = ln2 @ W_fc + b_fc; fch_gelu = gelu(fch)
  STRATA_RETURN_IF_ERROR(c_fc.forward(ctx, acts.fch, acts.ln2, N, recompute));
  STRATA_RETURN_IF_ERROR(ctx.nn.gelu_forward(acts.fch_gelu, acts.fch, ctx.stream));
  // out: (B, T, C) = res2 + fch_gelu @ W_proj + b_proj (not needed again when recomputing)
  if (!recompute) STRATA_RETURN_IF_ERROR(c_proj.forward(ctx, out, acts.fch_gelu, N, recompute, acts.res2));
  return hook_after_forward(recompute);
}

Status Mlp::backward(const Ctx& ctx, const BlockActs& acts, BlockGrads& g, std::int64_t N) {
  STRATA_RETURN_IF_ERROR(hook_before_backward());
  // dfch_gelu: (B, T, 4C) = dres @ W_proj^T, into dfch
  STRATA_RETURN_IF_ERROR(c_proj.backward(ctx, g.dfch, g.dres, acts.fch_gelu, N));
  // dfch = gelu'(fch) * dfch_gelu, in place
  STRATA_RETURN_IF_ERROR(ctx.nn.gelu_backward(g.dfch, acts.fch, g.dfch, ctx.stream));
  // dln2: (B, T, C) = dfch @ W_fc^T
  STRATA_RETURN_IF_ERROR(c_fc.backward(ctx, g.dln, g.dfch, acts.ln2, N));
  return hook_after_backward();
}

// ---------------------------------------------------------------------------------------------
// Block

namespace {
std::string block_name(int i) { return "h." + std::to_string(i); }
}  // namespace

Block::Block(int index, std::int64_t C, std::int64_t NH, int n_layer, TpPlace tp)
    : Module(block_name(index)),
      ln_1(block_name(index) + ".ln_1", C, tp),
      attn(block_name(index) + ".attn", C, NH, kInitStd / std::sqrt(2.0f * static_cast<float>(n_layer)), tp),
      ln_2(block_name(index) + ".ln_2", C, tp),
      mlp(block_name(index) + ".mlp", C, kInitStd / std::sqrt(2.0f * static_cast<float>(n_layer)), tp),
      tp_(tp) {
  add_child(ln_1);
  add_child(attn);
  add_child(ln_2);
  add_child(mlp);
}

Status Block::forward(const Ctx& ctx, BlockActs& acts, DeviceView x, DeviceView out, std::int64_t B, std::int64_t T,
                      bool recompute) {
  STRATA_RETURN_IF_ERROR(hook_before_forward(recompute));
  const std::int64_t N = B * T, rows = tp_.sp() ? N / tp_.size : N;
  // ln1 = LN(x); res2 = x + attn(ln1); ln2 = LN(res2); out = res2 + mlp(ln2). With sequence
  // parallelism x, res2 and out are this rank's rows, and each LN's rows are gathered.
  auto norm = [&](LayerNorm& ln, const DeviceView& full, const DeviceView& mean, const DeviceView& rstd,
                  const DeviceView& in) -> Status {
    if (!tp_.sp()) return ln.forward(ctx, full, mean, rstd, in, rows, recompute);
    STRATA_ASSIGN_OR_RETURN(DeviceView mine, my_rows(ctx, full));
    STRATA_RETURN_IF_ERROR(ln.forward(ctx, mine, mean, rstd, in, rows, recompute));
    return gather_rows(ctx, full);
  };
  STRATA_RETURN_IF_ERROR(norm(ln_1, acts.ln1, acts.ln1_mean, acts.ln1_rstd, x));
  STRATA_RETURN_IF_ERROR(attn.forward(ctx, acts, x, B, T, recompute));
  STRATA_RETURN_IF_ERROR(norm(ln_2, acts.ln2, acts.ln2_mean, acts.ln2_rstd, acts.res2));
  STRATA_RETURN_IF_ERROR(mlp.forward(ctx, acts, out, N, recompute));
  return hook_after_forward(recompute);
}

Status Block::backward(const Ctx& ctx, const BlockActs& acts, BlockGrads& g, DeviceView x, std::int64_t B,
                       std::int64_t T) {
  STRATA_RETURN_IF_ERROR(hook_before_backward());
  const std::int64_t N = B * T, rows = tp_.sp() ? N / tp_.size : N;
  // The residual passes d(out) through: dres holds d(out), then d(res2), then d(x) (with
  // sequence parallelism: of this rank's rows).
  STRATA_RETURN_IF_ERROR(mlp.backward(ctx, acts, g, N));
  STRATA_RETURN_IF_ERROR(ln_2.backward(ctx, g.dres, g.dln, acts.res2, acts.ln2_mean, acts.ln2_rstd, rows));
  STRATA_RETURN_IF_ERROR(attn.backward(ctx, acts, g, B, T));
  STRATA_RETURN_IF_ERROR(ln_1.backward(ctx, g.dres, g.dln, x, acts.ln1_mean, acts.ln1_rstd, rows));
  return hook_after_backward();
}

// ---------------------------------------------------------------------------------------------
// Embeddings and head

std::int64_t padded_vocab(std::int64_t V, int tp) { return (V + tp - 1) / tp * tp; }

namespace {

TensorShard wte_shard(std::int64_t V, std::int64_t C, TpPlace tp) {
  if (!tp.split()) return {{V, C}};
  return {{padded_vocab(V, tp.size), C}, 0, 1, tp.rank, tp.size, V};
}

}  // namespace

Embeddings::Embeddings(std::int64_t V, std::int64_t maxT, std::int64_t C, TpPlace tp)
    : Module("embeddings"),
      wte(add_parameter("wte.weight", wte_shard(V, C, tp), ParamInit::kNormal, kInitStd)),
      wpe(add_parameter("wpe.weight", {maxT, C}, ParamInit::kNormal, kInitStd)),
      C_(C),
      tp_(tp) {}

Status Embeddings::forward(const Ctx& ctx, DeviceView out, DeviceRange tokens, std::int64_t B, std::int64_t T,
                           bool recompute) {
  STRATA_RETURN_IF_ERROR(hook_before_forward(recompute));
  if (!tp_.split()) {
    STRATA_RETURN_IF_ERROR(ctx.nn.embedding_forward(out, tokens, wte.value(), wpe.value(), B * T, T, C_, ctx.stream));
    return hook_after_forward(recompute);
  }
  STRATA_RETURN_IF_ERROR(require_tp(ctx, name(), TpSplit::kRow));
  // out = sum over ranks of (its rows' lookups, + wpe on the first); with sequence parallelism
  // reduce-scattered to this rank's rows.
  const std::int64_t first = tp_.rank * wte.shape()[0];
  DeviceView sum = out;
  if (tp_.sp()) {
    STRATA_ASSIGN_OR_RETURN(sum, sub(ctx.rows, 0, B * T * C_));
  }
  STRATA_RETURN_IF_ERROR(ctx.nn.embedding_shard_forward(sum, tokens, wte.value(), first,
                                                        tp_.rank == 0 ? wpe.value() : DeviceView(), B * T, T, C_,
                                                        ctx.stream));
  if (tp_.sp()) {
    STRATA_RETURN_IF_ERROR(ctx.tp->reduce_scatter(CommBuffer::of(sum), CommBuffer::of(out), ReduceOp::kSum, ctx.stream));
  } else {
    STRATA_RETURN_IF_ERROR(tp_all_reduce(ctx, out));
  }
  return hook_after_forward(recompute);
}

Status Embeddings::backward(const Ctx& ctx, DeviceView dout, DeviceRange tokens, std::int64_t B, std::int64_t T) {
  STRATA_RETURN_IF_ERROR(hook_before_backward());
  // dout is the same on every rank (with sequence parallelism once gathered): each adds its
  // vocabulary rows' gradients, and the whole wpe gradient.
  if (tp_.sp()) {
    STRATA_ASSIGN_OR_RETURN(DeviceView whole, sub(ctx.rows, 0, B * T * C_));
    STRATA_RETURN_IF_ERROR(ctx.tp->all_gather(CommBuffer::of(dout), CommBuffer::of(whole), ctx.stream));
    dout = whole;
  }
  const std::int64_t first = tp_.rank * wte.shape()[0];
  STRATA_RETURN_IF_ERROR(
      ctx.nn.embedding_shard_backward(wte.grad(), first, wpe.grad(), dout, tokens, B * T, T, C_, ctx.stream));
  return hook_after_backward();
}

LmHead::LmHead(Parameter& wte, std::int64_t vocab, TpPlace tp) : Module("lm_head"), wte_(wte), vocab_(vocab), tp_(tp) {
  tie_parameter(wte);
}

LmHead::LmHead(std::int64_t vocab, std::int64_t C, TpPlace tp)
    : Module("lm_head"),
      wte_(add_parameter("wte.weight", wte_shard(vocab, C, tp), ParamInit::kNormal, kInitStd)),
      vocab_(vocab),
      tp_(tp) {}

std::int64_t LmHead::first() const { return wte_.shard().rank * wte_.shape()[0]; }
std::int64_t LmHead::valid() const { return std::clamp<std::int64_t>(vocab_ - first(), 0, wte_.shape()[0]); }

Status LmHead::forward(const Ctx& ctx, DeviceView logits, DeviceView losses, DeviceView loss_sum, float weight,
                       DeviceView x, DeviceRange targets, std::int64_t N, bool recompute,
                       const CrossEntropyStats& stats) {
  STRATA_RETURN_IF_ERROR(hook_before_forward(recompute));
  const std::int64_t V = wte_.shape()[0], C = wte_.shape()[1];
  // logits: (N, V) = x (N, C) @ wte^T
  STRATA_RETURN_IF_ERROR(matmul(ctx, logits, x, wte_.value(), N, V, C, false, true));
  if (!wte_.shard().split()) {
    // losses: (N) = cross-entropy
    STRATA_RETURN_IF_ERROR(ctx.nn.crossentropy_forward(losses, logits, targets, N, V, ctx.stream));
  } else {
    STRATA_RETURN_IF_ERROR(require_tp(ctx, name(), TpSplit::kColumn));
    const CommBuffer mx = CommBuffer::of(stats.maxv), tg = CommBuffer::of(stats.target);
    const CommBuffer se = CommBuffer::of(stats.sumexp);
    STRATA_RETURN_IF_ERROR(ctx.nn.crossentropy_shard_stats(stats.maxv, stats.target, logits, targets, N, V, first(),
                                                           valid(), ctx.stream));
    STRATA_RETURN_IF_ERROR(ctx.tp->all_reduce(mx, mx, ReduceOp::kMax, ctx.stream));
    STRATA_RETURN_IF_ERROR(ctx.tp->all_reduce(tg, tg, ReduceOp::kSum, ctx.stream));
    STRATA_RETURN_IF_ERROR(ctx.nn.crossentropy_shard_sumexp(stats.sumexp, logits, stats.maxv, N, V, valid(), ctx.stream));
    STRATA_RETURN_IF_ERROR(ctx.tp->all_reduce(se, se, ReduceOp::kSum, ctx.stream));
    STRATA_RETURN_IF_ERROR(ctx.nn.crossentropy_shard_loss(losses, stats.maxv, stats.target, stats.sumexp, N, ctx.stream));
  }
  // loss_sum += weight * mean
  STRATA_RETURN_IF_ERROR(ctx.nn.accumulate_sum(loss_sum, losses, weight / static_cast<float>(N), ctx.stream));
  return hook_after_forward(recompute);
}

Status LmHead::backward(const Ctx& ctx, DeviceView dx, DeviceView logits, DeviceView x, DeviceRange targets,
                        float dloss, std::int64_t N, const CrossEntropyStats& stats) {
  STRATA_RETURN_IF_ERROR(hook_before_backward());
  const std::int64_t V = wte_.shape()[0], C = wte_.shape()[1];
  const float scale = dloss / static_cast<float>(N);
  // dlogits: (N, V) = (softmax - onehot) * dloss / N, in place over the logits
  if (!wte_.shard().split()) {
    STRATA_RETURN_IF_ERROR(ctx.nn.crossentropy_backward(logits, logits, targets, scale, N, V, ctx.stream));
  } else {
    STRATA_RETURN_IF_ERROR(ctx.nn.crossentropy_shard_backward(logits, logits, targets, stats.maxv, stats.sumexp, scale,
                                                              N, V, first(), valid(), ctx.stream));
  }
  // dwte: (V, C) += dlogits^T @ x
  STRATA_RETURN_IF_ERROR(matmul(ctx, wte_.grad(), logits, x, V, C, N, true, false, 1.0f, 1.0f));
  // dx: (N, C) = dlogits @ wte, summed over the ranks' vocabulary columns (with sequence
  // parallelism: this rank's rows of the sum)
  if (tp_.sp()) {
    STRATA_ASSIGN_OR_RETURN(DeviceView partial, sub(ctx.rows, 0, N * C));
    STRATA_RETURN_IF_ERROR(matmul(ctx, partial, logits, wte_.value(), N, C, V, false, false));
    STRATA_RETURN_IF_ERROR(ctx.tp->reduce_scatter(CommBuffer::of(partial), CommBuffer::of(dx), ReduceOp::kSum, ctx.stream));
    return hook_after_backward();
  }
  STRATA_RETURN_IF_ERROR(matmul(ctx, dx, logits, wte_.value(), N, C, V, false, false));
  if (wte_.shard().split()) STRATA_RETURN_IF_ERROR(tp_all_reduce(ctx, dx));
  return hook_after_backward();
}

}  // namespace strata::model
