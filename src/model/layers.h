// src/model/layers.h — the GPT-2 layers: each a Module with an explicit forward and backward
// over device views (llm.c style), enqueued on one stream through Device::gemm and the nn ops.
//
// Shapes use B (batch rows), T (sequence length), C (channels), NH (heads), hs = C / NH,
// V (vocabulary), N = B * T.
//
// Tensor parallelism (Megatron-LM's tensor_parallel/layers.py). A layer built with a TpPlace of
// size tp > 1 holds its rank's shards (strata/model.h's TensorShard) and runs with the tp
// group's communicator in its Ctx: a column-parallel Linear splits its output (attention's
// c_attn by heads, Q, K and V each; the MLP's c_fc) and all-reduces its input gradient in
// backward; a row-parallel Linear splits its input (both c_proj), all-reduces its output in
// forward and adds its bias once, after the reduction. Attention runs its rank's NH / tp heads
// and the MLP its 4C / tp hidden units, so a block makes two all-reduces of (N, C) in forward
// and two in backward. LayerNorms and the row-parallel biases are replicated: their inputs and
// output gradients are the same on every tp rank, so their gradients are too (bitwise), and
// nothing reduces them. Activation shapes below are a rank's: C in qkv, atty, fch and NH in
// att are divided by tp where the layer is split.
//
// Sequence parallelism (TpPlace::sequence_parallel, Megatron's): the residual stream, the
// LayerNorms and the residual adds work on this rank's N / tp rows (rows [rank N/tp, (rank + 1)
// N/tp) of the (B, T) rows), so the residual stream kept between blocks takes 1/tp of the
// memory. A LayerNorm's output is all-gathered to the N rows the column-parallel Linear after
// it needs (and kept gathered for its weight gradient: Megatron gathers it again in backward
// instead, trading memory for a third all-gather per LayerNorm), and a
// row-parallel Linear reduce-scatters its output to the rows instead of all-reducing it: each
// all-reduce of a block becomes a reduce-scatter plus an all-gather of the same total volume
// (in backward the other way round). The LayerNorms' gradients then come from a rank's rows
// only, and are all-reduced over tp in their backward (2C elements each), so every rank holds
// the same; the row-parallel biases' gradients come from the gathered output gradient, whole.
// Where a row-parallel Linear gathers or a column-parallel one reduces, it uses Ctx::rows,
// an (N, C) scratch of the compute dtype; the LayerNorms use Ctx::ln_grads. Activations are in the model's compute dtype, LayerNorm
// statistics and losses in fp32, parameter gradients in the gradient dtype. Backward functions
// *accumulate* parameter gradients (+=) and say for each input gradient whether they
// overwrite it or add to it.
//
// Thread-safety: as strata/model.h (one thread at a time per module tree).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/nn_ops.h"
#include "strata/communicator.h"
#include "strata/device.h"
#include "strata/model.h"

namespace strata::model {

class DeferredWeightGrads;

// Where a layer's work goes; `tp` is the tensor-parallel group (null, or of size 1, when the
// layers are whole).
struct Ctx {
  Device& device;
  nn::NnOps& nn;
  Stream& stream;
  Communicator* tp = nullptr;
  DeviceView rows = {};      // sequence parallelism: (N, C) scratch in the compute dtype
  DeviceView ln_grads = {};  // sequence parallelism: (2C) scratch in the gradient dtype
  // Zero-bubble pipeline schedules: a Linear's backward leaves its weight gradient here.
  DeferredWeightGrads* defer = nullptr;
};

// The weight-gradient half of the Linears' backward, deferred (the W of a zero-bubble pipeline
// schedule, src/parallel/pipeline_schedule.h). With Ctx::defer set, Linear::backward computes
// its input and bias gradients, copies its output gradient dy into the stash and records
// dW += x^T dy, with x the forward input it reads from the activations (which the caller keeps
// until run()). run() computes the recorded products in order and empties the queue; the
// weight gradients are final only then.
class DeferredWeightGrads {
 public:
  // Starts an empty queue whose copies of dy go to `stash` (the compute dtype).
  void reset(DeviceView stash);
  Status defer(const Ctx& ctx, Parameter& weight, DeviceView x, DeviceView dy, std::int64_t in, std::int64_t out,
               std::int64_t N);
  Status run(const Ctx& ctx);
  bool empty() const { return tasks_.empty(); }
  // Stash elements one block's four Linears need: N (3C + C + 4C + C) / tp for the split
  // outputs (c_attn, c_fc) and the whole C for the row-parallel ones.
  static std::int64_t block_stash(std::int64_t N, std::int64_t C, int tp);

 private:
  struct Task {
    Parameter* weight;
    DeviceView x, dy;
    std::int64_t in, out, N;
  };
  DeviceView stash_;
  std::int64_t used_ = 0;
  std::vector<Task> tasks_;
};

// A layer's rank in its tensor-parallel group.
struct TpPlace {
  int rank = 0;
  int size = 1;
  bool sequence_parallel = false;
  bool split() const { return size > 1; }
  bool sp() const { return sequence_parallel && size > 1; }
};

// How a Linear is cut across the tp group.
enum class TpSplit : std::uint8_t {
  kNone = 0,  // whole on every rank
  kColumn,    // output split (in `parts` pieces each split alone); input replicated
  kRow,       // input split; output all-reduced, bias replicated
};

// Sub-view helpers: element `first`, `count` elements (an internal error when out of bounds,
// which would be a bug in the caller's layout).
Result<DeviceView> sub(const DeviceView& v, std::int64_t first, std::int64_t count);

// C = alpha * op(A) @ op(B) + beta * C for row-major 2-D matrices: op(A) (M, K), op(B) (K, N),
// C (M, N). A is stored (M, K), or (K, M) when trans_a; B is stored (K, N), or (N, K) when
// trans_b.
Status matmul(const Ctx& ctx, DeviceView c, DeviceView a, DeviceView b, std::int64_t M, std::int64_t N,
              std::int64_t K, bool trans_a, bool trans_b, float alpha = 1.0f, float beta = 0.0f);

class LayerNorm final : public Module {
 public:
  // Parameters "<prefix>.weight" (ones) and "<prefix>.bias" (zeros), both (C). With
  // tp.sp(), N below is this rank's rows and the gradients are all-reduced over ctx.tp.
  LayerNorm(const std::string& prefix, std::int64_t C, TpPlace tp = {});

  // out: (N, C), mean, rstd: (N) fp32 = LayerNorm(x: (N, C))
  Status forward(const Ctx& ctx, DeviceView out, DeviceView mean, DeviceView rstd, DeviceView x, std::int64_t N,
                 bool recompute);
  // dx: (N, C) += d/dx; weight and bias gradients +=. dout: (N, C); x, mean, rstd from forward.
  Status backward(const Ctx& ctx, DeviceView dx, DeviceView dout, DeviceView x, DeviceView mean, DeviceView rstd,
                  std::int64_t N);

  Parameter& weight;
  Parameter& bias;

 private:
  std::int64_t C_;
  TpPlace tp_;
};

// Sequence parallelism's all-gather: every rank's N / tp rows of `full` (N, C), written in place
// at their rows, made whole on every rank.
Status gather_rows(const Ctx& ctx, DeviceView full);
// This rank's rows of `full`: (N / tp, C).
Result<DeviceView> my_rows(const Ctx& ctx, const DeviceView& full);

// Hugging Face's Conv1D: y = x @ W + b with W stored (in, out).
class Linear final : public Module {
 public:
  // Parameters "<prefix>.weight" (in, out) ~ normal(0, init_std) and "<prefix>.bias" (out) = 0,
  // whole or (split != kNone and tp.split()) this rank's shards; `parts` as TensorShard's.
  Linear(const std::string& prefix, std::int64_t in, std::int64_t out, float init_std, TpSplit split = TpSplit::kNone,
         TpPlace tp = {}, int parts = 1);

  // y: (N, out) = x: (N, in) @ W + b (+ residual: (N, out) when given; it may not be y).
  // Column-parallel: y is this rank's out / tp columns. Row-parallel: x is its in / tp
  // columns, and y the whole sum, all-reduced over ctx.tp before b and the residual are added
  // (sequence-parallel: reduce-scattered, y and the residual this rank's N / tp rows).
  Status forward(const Ctx& ctx, DeviceView y, DeviceView x, std::int64_t N, bool recompute,
                 DeviceView residual = {});
  // dx: (N, in) = dy @ W^T (overwritten; column-parallel: all-reduced over ctx.tp, since every
  // rank's output columns depend on all of x, or reduce-scattered to this rank's rows with
  // sequence parallelism); dW += x^T @ dy; db += sum_n dy. dy: (N, out) (row-parallel with
  // sequence parallelism: this rank's rows, all-gathered first).
  Status backward(const Ctx& ctx, DeviceView dx, DeviceView dy, DeviceView x, std::int64_t N);

  // This rank's extents (the whole layer's where not split).
  std::int64_t in() const { return in_; }
  std::int64_t out() const { return out_; }
  Parameter& weight;
  Parameter& bias;

 private:
  TpSplit split_;
  bool sp_;
  std::int64_t in_, out_;
};

// Activations of one transformer block (kept per block, or one shared set when blocks are
// recomputed in backward). With sequence parallelism res2 and the LayerNorm statistics are
// this rank's N / tp rows, ln1 and ln2 all N rows (gathered).
struct BlockActs {
  DeviceView ln1;       // (B, T, C)
  DeviceView ln1_mean;  // (B, T) fp32
  DeviceView ln1_rstd;  // (B, T) fp32
  DeviceView qkv;       // (B, T, 3C)
  DeviceView att;       // (B, NH, T, T): the pre-softmax scores, then (in place) the probabilities
  DeviceView atty;      // (B, T, C): attention output before the projection
  DeviceView res2;      // (B, T, C): x + attention
  DeviceView ln2;       // (B, T, C)
  DeviceView ln2_mean;  // (B, T) fp32
  DeviceView ln2_rstd;  // (B, T) fp32
  DeviceView fch;       // (B, T, 4C)
  DeviceView fch_gelu;  // (B, T, 4C)
};

// Gradient scratch shared by all blocks (backward runs one block at a time).
struct BlockGrads {
  DeviceView dres;  // (B, T, C): gradient of the residual stream, updated in place block by block
  DeviceView dln;   // (B, T, C): gradients of LayerNorm outputs and of the attention output
                    // (sequence parallelism: this rank's rows of the former)
  DeviceView dqkv;  // (B, T, 3C)
  DeviceView datt;  // (B, NH, T, T)
  DeviceView dfch;  // (B, T, 4C)
};

// Causal multi-head self-attention: c_attn (C -> 3C), softmax(Q K^T / sqrt(hs)) V per head,
// c_proj (C -> C) added to the residual stream.
class Attention final : public Module {
 public:
  // With tp.split(): this rank's NH / tp heads (c_attn column-, c_proj row-parallel).
  Attention(const std::string& prefix, std::int64_t C, std::int64_t NH, float proj_std, TpPlace tp = {});

  // acts.res2: (B, T, C) = x + c_proj(attention(acts.ln1)); fills acts.qkv, att, atty.
  Status forward(const Ctx& ctx, BlockActs& acts, DeviceView x, std::int64_t B, std::int64_t T, bool recompute);
  // From g.dres = d(res2): g.dln = d(ln1) (overwritten); parameter gradients +=.
  Status backward(const Ctx& ctx, const BlockActs& acts, BlockGrads& g, std::int64_t B, std::int64_t T);

  Linear c_attn;
  Linear c_proj;

 private:
  std::int64_t C_, NH_;  // this rank's channels (NH_ x hs) and heads
};

// MLP: c_fc (C -> 4C), GELU, c_proj (4C -> C) added to the residual stream.
class Mlp final : public Module {
 public:
  // With tp.split(): this rank's 4C / tp hidden units (c_fc column-, c_proj row-parallel).
  Mlp(const std::string& prefix, std::int64_t C, float proj_std, TpPlace tp = {});

  // out: (B, T, C) = acts.res2 + c_proj(gelu(c_fc(acts.ln2))); fills acts.fch, fch_gelu.
  // With recompute, stops after fch_gelu (out is not needed again).
  Status forward(const Ctx& ctx, BlockActs& acts, DeviceView out, std::int64_t N, bool recompute);
  // From g.dres = d(out): g.dln = d(ln2) (overwritten); parameter gradients +=.
  Status backward(const Ctx& ctx, const BlockActs& acts, BlockGrads& g, std::int64_t N);

  Linear c_fc;
  Linear c_proj;
};

// One pre-LayerNorm transformer block "h.<i>".
class Block final : public Module {
 public:
  Block(int index, std::int64_t C, std::int64_t NH, int n_layer, TpPlace tp = {});

  // out: (B, T, C) = block(x: (B, T, C)); intermediate activations into acts.
  Status forward(const Ctx& ctx, BlockActs& acts, DeviceView x, DeviceView out, std::int64_t B, std::int64_t T,
                 bool recompute);
  // g.dres: d(out) on entry, d(x) on return; parameter gradients +=.
  Status backward(const Ctx& ctx, const BlockActs& acts, BlockGrads& g, DeviceView x, std::int64_t B,
                  std::int64_t T);

  LayerNorm ln_1;
  Attention attn;
  LayerNorm ln_2;
  Mlp mlp;

 private:
  TpPlace tp_;
};

// Token and position embeddings: "wte.weight" (V, C), "wpe.weight" (T, C).
//
// Vocab-parallel (tp.split()): wte is padded to padded_vocab(V, tp) rows and this rank holds
// rows [rank * Vr, (rank + 1) * Vr), Vr = padded / tp; a rank looks up the tokens in its range
// (zeros for the rest), the first rank adds wpe, and one all-reduce over ctx.tp sums them. The
// padding rows are never looked up, and the head never counts their logits.
class Embeddings final : public Module {
 public:
  Embeddings(std::int64_t V, std::int64_t maxT, std::int64_t C, TpPlace tp = {});

  // out: (B, T, C) = wte[tokens] + wpe[t] (sequence parallelism: this rank's rows); tokens:
  // (B, T) int32
  Status forward(const Ctx& ctx, DeviceView out, DeviceRange tokens, std::int64_t B, std::int64_t T, bool recompute);
  // wte and wpe gradients += from dout: (B, T, C) (sequence parallelism: this rank's rows)
  Status backward(const Ctx& ctx, DeviceView dout, DeviceRange tokens, std::int64_t B, std::int64_t T);

  Parameter& wte;
  Parameter& wpe;

 private:
  std::int64_t C_;
  TpPlace tp_;
};

// The vocabulary rounded up to a multiple of tp (Megatron pads further, to 128 x tp, for GEMM
// shapes; strata pads only what the split needs, so tp = 1 keeps GPT-2's 50257 rows).
std::int64_t padded_vocab(std::int64_t V, int tp);

// fp32 (N) scratch of the vocab-parallel cross-entropy, kept from forward to backward.
struct CrossEntropyStats {
  DeviceView maxv, target, sumexp;
};

// The output head, tied to the token embedding, and the cross-entropy loss.
//
// Vocab-parallel (a split wte): each rank computes its Vr columns of the logits and the loss
// comes from exactly three all-reduces of (N) fp32 over ctx.tp (the largest logit, the
// target's logit, the sum of exponentials; nn_ops.h), never gathering the logits; in backward
// each rank's logit gradient gives its rows of the wte gradient and its part of dx, summed by
// one all-reduce. `vocab` is the real vocabulary: the padding columns count for nothing.
class LmHead final : public Module {
 public:
  LmHead(Parameter& wte, std::int64_t vocab, TpPlace tp = {});
  // A head on a pipeline stage without the embeddings: it owns its copy of "wte.weight"
  // (initialised as the embeddings' is; the engine keeps the two copies' gradients summed).
  LmHead(std::int64_t vocab, std::int64_t C, TpPlace tp = {});

  // logits: (N, Vr) = x: (N, C) @ wte^T; losses: (N) fp32; loss_sum: (1) += weight * mean(losses).
  // stats: used (and kept for backward) when wte is split.
  Status forward(const Ctx& ctx, DeviceView logits, DeviceView losses, DeviceView loss_sum, float weight,
                 DeviceView x, DeviceRange targets, std::int64_t N, bool recompute, const CrossEntropyStats& stats);
  // logits are overwritten with their gradient (dloss * mean over N); wte gradient +=;
  // dx: (N, C) = dlogits @ wte (overwritten; all-reduced when split; with sequence
  // parallelism reduce-scattered: this rank's rows).
  Status backward(const Ctx& ctx, DeviceView dx, DeviceView logits, DeviceView x, DeviceRange targets, float dloss,
                  std::int64_t N, const CrossEntropyStats& stats);

 private:
  // The first vocabulary id of this rank's rows and how many of them are real.
  std::int64_t first() const;
  std::int64_t valid() const;

  Parameter& wte_;
  std::int64_t vocab_;
  TpPlace tp_;
};

}  // namespace strata::model
