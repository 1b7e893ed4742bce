// The GPT-2 model of strata/model.h: module tree, activation memory and the forward and
// backward passes over the layers of layers.h.
#include <cmath>
#include <limits>

#include "model/layers.h"
#include "model/nn_ops.h"
#include "strata/communicator.h"
#include "strata/model.h"

namespace strata {

using model::BlockActs;
using model::BlockGrads;
using model::Ctx;

// ---------------------------------------------------------------------------------------------
// Configuration

GptConfig GptConfig::from_profile(const Profile& profile) {
  GptConfig c;
  c.dims = profile.train.dims;
  c.dtype = profile.precision.dtype;
  c.grad_dtype = profile.precision.grad_dtype;
  c.checkpointing = profile.activation.checkpointing;
  c.tp_size = profile.parallel.tp;
  c.sequence_parallel = profile.parallel.sequence_parallel;
  return c;
}

Status GptConfig::validate() const {
  const ModelDims& d = dims;
  auto bad = [](const std::string& m) { return invalid_argument("gpt config: " + m); };
  if (d.n_layer < 1) return bad("n_layer = " + std::to_string(d.n_layer) + "; it must be at least 1");
  if (d.n_head < 1) return bad("n_head = " + std::to_string(d.n_head) + "; it must be at least 1");
  if (d.n_embd < 1) return bad("n_embd = " + std::to_string(d.n_embd) + "; it must be at least 1");
  if (d.n_embd % d.n_head != 0) {
    return bad("n_embd = " + std::to_string(d.n_embd) + " is not divisible by n_head = " + std::to_string(d.n_head));
  }
  if (d.vocab < 2) return bad("vocab = " + std::to_string(d.vocab) + "; it must be at least 2");
  if (d.seq_len < 1) return bad("seq_len = " + std::to_string(d.seq_len) + "; it must be at least 1");
  if (tp_size < 1 || tp_rank < 0 || tp_rank >= tp_size) {
    return bad("tp rank " + std::to_string(tp_rank) + " of " + std::to_string(tp_size) + " is not a rank of the group");
  }
  if (d.n_head % tp_size != 0) {
    return bad("n_head = " + std::to_string(d.n_head) + " does not divide among parallel.tp = " +
               std::to_string(tp_size) + " ranks (each takes whole attention heads): choose a tp that divides it");
  }
  if (4 * d.n_embd % tp_size != 0) {
    return bad("the MLP width 4 x n_embd = " + std::to_string(4 * d.n_embd) + " does not divide among parallel.tp = " +
               std::to_string(tp_size) + " ranks: choose a tp that divides it");
  }
  if (grad_dtype != DType::kF32 && grad_dtype != dtype) {
    return bad("gradient dtype " + std::string(dtype_name(grad_dtype)) + " must be fp32 or the compute dtype " +
               std::string(dtype_name(dtype)));
  }
  return Status::OK();
}

double gpt_training_flops(const ModelDims& d, std::uint64_t tokens) {
  const double C = d.n_embd, L = d.n_layer, V = d.vocab, T = d.seq_len;
  const double matmul_params = L * 12.0 * C * C + V * C;
  return static_cast<double>(tokens) * (6.0 * matmul_params + 12.0 * L * T * C);
}

// ---------------------------------------------------------------------------------------------
// Activation memory

namespace {

// Carves typed views out of one buffer; with no buffer it only adds up the bytes.
class Carver {
 public:
  explicit Carver(const DeviceBuffer* buffer) : buffer_(buffer) {}
  Result<DeviceView> take(std::int64_t count, DType t) {
    const std::size_t at = (bytes_ + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
    bytes_ = at + static_cast<std::size_t>(count) * dtype_size(t);
    if (buffer_ == nullptr) return DeviceView();
    return buffer_->view(t, at, static_cast<std::size_t>(count));
  }
  std::size_t bytes() const { return bytes_; }

 private:
  const DeviceBuffer* buffer_;
  std::size_t bytes_ = 0;
};

}  // namespace

struct Gpt::Impl {
  explicit Impl(const GptConfig& c)
      : embeddings(c.dims.vocab, c.dims.seq_len, c.dims.n_embd, tp_of(c)),
        ln_f("ln_f", c.dims.n_embd, tp_of(c)),
        head(embeddings.wte, c.dims.vocab, tp_of(c)) {
    for (int i = 0; i < c.dims.n_layer; ++i) {
      blocks.push_back(std::make_unique<model::Block>(i, c.dims.n_embd, c.dims.n_head, c.dims.n_layer, tp_of(c)));
    }
  }
  static model::TpPlace tp_of(const GptConfig& c) { return {c.tp_rank, c.tp_size, c.sequence_parallel}; }

  model::Embeddings embeddings;
  std::vector<std::unique_ptr<model::Block>> blocks;
  model::LayerNorm ln_f;
  model::LmHead head;

  // Set by prepare().
  Device* device = nullptr;
  Communicator* tp = nullptr;
  std::unique_ptr<nn::NnOps> nn;
  int B = 0;
  DeviceBuffer arena;
  std::vector<DeviceView> resid;  // L + 1 of (B, T, C): the block inputs and the last output
  std::vector<BlockActs> acts;    // L, or 1 shared when checkpointing
  BlockGrads grads;
  DeviceView lnf, lnf_mean, lnf_rstd;  // (B, T, C), (B, T), (B, T)
  DeviceView logits;                   // (B, T, V / tp padded)
  DeviceView losses;                   // (B, T) fp32
  model::CrossEntropyStats ce;         // (B, T) fp32 each (used with tp)
  DeviceView rows, ln_grads;           // sequence parallelism's scratch (layers.h's Ctx)

  // The latest forward's batch.
  DeviceRange tokens, targets;
  bool have_forward = false;

  // Lays out every activation for micro-batch B; with a buffer, assigns the views. The split
  // activations (qkv, att, atty, fch and their gradients, the logits) are this tp rank's.
  static Status layout(const GptConfig& c, std::int64_t B, Carver& cv, Impl* self) {
    const std::int64_t T = c.dims.seq_len, C = c.dims.n_embd, L = c.dims.n_layer, N = B * T, tp = c.tp_size;
    const std::int64_t Cr = C / tp, NH = c.dims.n_head / tp;
    // With sequence parallelism the residual stream and the LayerNorm statistics are this
    // rank's rows (the LayerNorm outputs gathered to all of them).
    const bool sp = c.sequence_parallel && tp > 1;
    const std::int64_t Nr = sp ? N / tp : N;
    const std::int64_t V = tp > 1 ? model::padded_vocab(c.dims.vocab, c.tp_size) / tp : c.dims.vocab;
    const DType t = c.dtype, f32 = DType::kF32;
    std::vector<DeviceView> resid;
    for (std::int64_t l = 0; l <= L; ++l) {
      STRATA_ASSIGN_OR_RETURN(DeviceView v, cv.take(Nr * C, t));
      resid.push_back(v);
    }
    std::vector<BlockActs> acts(static_cast<std::size_t>(c.checkpointing ? 1 : L));
    for (BlockActs& a : acts) {
      STRATA_ASSIGN_OR_RETURN(a.ln1, cv.take(N * C, t));
      STRATA_ASSIGN_OR_RETURN(a.ln1_mean, cv.take(Nr, f32));
      STRATA_ASSIGN_OR_RETURN(a.ln1_rstd, cv.take(Nr, f32));
      STRATA_ASSIGN_OR_RETURN(a.qkv, cv.take(N * 3 * Cr, t));
      STRATA_ASSIGN_OR_RETURN(a.att, cv.take(B * NH * T * T, t));
      STRATA_ASSIGN_OR_RETURN(a.atty, cv.take(N * Cr, t));
      STRATA_ASSIGN_OR_RETURN(a.res2, cv.take(Nr * C, t));
      STRATA_ASSIGN_OR_RETURN(a.ln2, cv.take(N * C, t));
      STRATA_ASSIGN_OR_RETURN(a.ln2_mean, cv.take(Nr, f32));
      STRATA_ASSIGN_OR_RETURN(a.ln2_rstd, cv.take(Nr, f32));
      STRATA_ASSIGN_OR_RETURN(a.fch, cv.take(N * 4 * Cr, t));
      STRATA_ASSIGN_OR_RETURN(a.fch_gelu, cv.take(N * 4 * Cr, t));
    }
    BlockGrads g;
    STRATA_ASSIGN_OR_RETURN(g.dres, cv.take(Nr * C, t));
    STRATA_ASSIGN_OR_RETURN(g.dln, cv.take(Nr * C, t));  // also (N, C / tp) with sequence parallelism
    STRATA_ASSIGN_OR_RETURN(g.dqkv, cv.take(N * 3 * Cr, t));
    STRATA_ASSIGN_OR_RETURN(g.datt, cv.take(B * NH * T * T, t));
    STRATA_ASSIGN_OR_RETURN(g.dfch, cv.take(N * 4 * Cr, t));
    DeviceView lnf, lnf_mean, lnf_rstd, logits, losses;
    model::CrossEntropyStats ce;
    STRATA_ASSIGN_OR_RETURN(lnf, cv.take(N * C, t));
    STRATA_ASSIGN_OR_RETURN(lnf_mean, cv.take(Nr, f32));
    STRATA_ASSIGN_OR_RETURN(lnf_rstd, cv.take(Nr, f32));
    STRATA_ASSIGN_OR_RETURN(logits, cv.take(N * V, t));
    STRATA_ASSIGN_OR_RETURN(losses, cv.take(N, f32));
    DeviceView rows, ln_grads;
    if (sp) {
      STRATA_ASSIGN_OR_RETURN(rows, cv.take(N * C, t));
      STRATA_ASSIGN_OR_RETURN(ln_grads, cv.take(2 * C, c.grad_dtype));
    }
    if (tp > 1) {
      STRATA_ASSIGN_OR_RETURN(ce.maxv, cv.take(N, f32));
      STRATA_ASSIGN_OR_RETURN(ce.target, cv.take(N, f32));
      STRATA_ASSIGN_OR_RETURN(ce.sumexp, cv.take(N, f32));
    }
    if (self != nullptr) {
      self->resid = std::move(resid);
      self->acts = std::move(acts);
      self->grads = g;
      self->lnf = lnf;
      self->lnf_mean = lnf_mean;
      self->lnf_rstd = lnf_rstd;
      self->logits = logits;
      self->losses = losses;
      self->ce = ce;
      self->rows = rows;
      self->ln_grads = ln_grads;
    }
    return Status::OK();
  }
};

Gpt::Gpt(const GptConfig& config) : Module(""), config_(config), impl_(std::make_unique<Impl>(config)) {
  add_child(impl_->embeddings);
  for (auto& b : impl_->blocks) add_child(*b);
  add_child(impl_->ln_f);
  add_child(impl_->head);
  for (Parameter* p : parameters()) p->set_dtypes(config.dtype, config.grad_dtype);
}

Gpt::~Gpt() = default;

Result<std::unique_ptr<Gpt>> Gpt::create(const GptConfig& config) {
  STRATA_RETURN_IF_ERROR(config.validate());
  return std::unique_ptr<Gpt>(new Gpt(config));
}

std::uint64_t Gpt::activation_bytes(const GptConfig& config, int micro_batch) {
  Carver cv(nullptr);
  Status st = Impl::layout(config, micro_batch, cv, nullptr);
  (void)st;  // measuring cannot fail: no buffer is sliced
  return cv.bytes();
}

Status Gpt::prepare(Device& device, int micro_batch, Communicator* tp) {
  if (micro_batch < 1) return invalid_argument("gpt prepare: micro_batch = " + std::to_string(micro_batch) + "; it must be at least 1");
  if (config_.tp_size > 1 && (tp == nullptr || tp->size() != config_.tp_size || tp->rank() != config_.tp_rank)) {
    return invalid_argument("gpt prepare: the model is tp rank " + std::to_string(config_.tp_rank) + " of " +
                            std::to_string(config_.tp_size) + " and needs that rank of a tensor-parallel group of " +
                            std::to_string(config_.tp_size));
  }
  if (config_.sequence_parallel && config_.tp_size > 1 &&
      static_cast<std::int64_t>(micro_batch) * config_.dims.seq_len % config_.tp_size != 0) {
    return invalid_argument("gpt prepare: parallel.sequence_parallel splits the micro-batch's train.micro_batch x "
                            "seq_len = " + std::to_string(micro_batch) + " x " + std::to_string(config_.dims.seq_len) +
                            " rows among parallel.tp = " + std::to_string(config_.tp_size) +
                            " ranks, which does not divide them: change micro_batch or seq_len");
  }
  Impl& m = *impl_;
  m.tp = config_.tp_size > 1 ? tp : nullptr;
  m.arena.reset();
  m.have_forward = false;
  m.B = 0;
  STRATA_ASSIGN_OR_RETURN(m.nn, nn::make_nn_ops(device));
  const std::uint64_t bytes = activation_bytes(config_, micro_batch);
  auto buf = device.allocate(bytes);
  if (!buf.ok()) {
    return buf.status().with_context("gpt: activations for micro_batch " + std::to_string(micro_batch) + " (" +
                                     std::to_string(bytes) + " bytes" +
                                     (config_.checkpointing ? "" : "; activation checkpointing would need less") + ")");
  }
  m.arena = std::move(*buf);
  Carver cv(&m.arena);
  STRATA_RETURN_IF_ERROR(Impl::layout(config_, micro_batch, cv, &m));
  m.device = &device;
  m.B = micro_batch;
  return Status::OK();
}

int Gpt::micro_batch() const { return impl_->B; }
bool Gpt::prepared() const { return impl_->B > 0; }
DeviceView Gpt::losses() const { return impl_->losses; }
DeviceView Gpt::logits() const { return impl_->logits; }

namespace {

Status check_bound(const Module& m) {
  for (const Parameter* p : m.parameters()) {
    if (!p->bound()) return failed_precondition("gpt: parameter " + p->name() + " has no device storage bound");
  }
  return Status::OK();
}

}  // namespace

Status Gpt::forward(DeviceRange tokens, DeviceRange targets, DeviceView loss_sum, float loss_weight, Stream& stream) {
  Impl& m = *impl_;
  if (!prepared()) return failed_precondition("gpt forward: call prepare() first");
  // Hooks may bind each module's parameters only around its own forward (ZeRO stage 3).
  if (hooks() == nullptr) STRATA_RETURN_IF_ERROR(check_bound(*this));
  const std::int64_t B = m.B, T = config_.dims.seq_len, N = B * T;
  if (tokens.bytes() != static_cast<std::size_t>(N) * 4 || targets.bytes() != static_cast<std::size_t>(N) * 4) {
    return invalid_argument("gpt forward: tokens and targets must be (B, T) = (" + std::to_string(B) + ", " +
                            std::to_string(T) + ") int32, " + std::to_string(N * 4) + " bytes each");
  }
  m.have_forward = false;
  Ctx ctx{*m.device, *m.nn, stream, m.tp, m.rows, m.ln_grads};
  STRATA_RETURN_IF_ERROR(hook_before_forward(false));
  // resid[0]: (B, T, C) = wte[tokens] + wpe
  STRATA_RETURN_IF_ERROR(m.embeddings.forward(ctx, m.resid[0], tokens, B, T, false));
  for (std::size_t l = 0; l < m.blocks.size(); ++l) {
    BlockActs& a = m.acts[config_.checkpointing ? 0 : l];
    STRATA_RETURN_IF_ERROR(m.blocks[l]->forward(ctx, a, m.resid[l], m.resid[l + 1], B, T, false));
  }
  const DeviceView& last = m.resid.back();
  if (m.rows.empty()) {
    STRATA_RETURN_IF_ERROR(m.ln_f.forward(ctx, m.lnf, m.lnf_mean, m.lnf_rstd, last, N, false));
  } else {  // sequence parallelism: this rank's rows, gathered for the head
    STRATA_ASSIGN_OR_RETURN(DeviceView mine, model::my_rows(ctx, m.lnf));
    STRATA_RETURN_IF_ERROR(m.ln_f.forward(ctx, mine, m.lnf_mean, m.lnf_rstd, last, N / config_.tp_size, false));
    STRATA_RETURN_IF_ERROR(model::gather_rows(ctx, m.lnf));
  }
  STRATA_RETURN_IF_ERROR(m.head.forward(ctx, m.logits, m.losses, loss_sum, loss_weight, m.lnf, targets, N, false, m.ce));
  STRATA_RETURN_IF_ERROR(hook_after_forward(false));
  m.tokens = tokens;
  m.targets = targets;
  m.have_forward = true;
  return Status::OK();
}

Status Gpt::backward(float dloss, Stream& stream) {
  Impl& m = *impl_;
  if (!m.have_forward) return failed_precondition("gpt backward: no forward pass to differentiate (call forward() first)");
  if (!std::isfinite(dloss)) return invalid_argument("gpt backward: dloss is not finite");
  m.have_forward = false;  // the logits become their gradient
  const std::int64_t B = m.B, T = config_.dims.seq_len, N = B * T;
  Ctx ctx{*m.device, *m.nn, stream, m.tp, m.rows, m.ln_grads};
  BlockGrads& g = m.grads;
  STRATA_RETURN_IF_ERROR(hook_before_backward());
  // dlnf: (B, T, C) into dln; then dres = d(resid[L]) = LN_f backward
  STRATA_RETURN_IF_ERROR(m.head.backward(ctx, g.dln, m.logits, m.lnf, m.targets, dloss, N, m.ce));
  STRATA_RETURN_IF_ERROR(m.device->fill(g.dres, 0.0f, stream));
  const std::int64_t rows = m.rows.empty() ? N : N / config_.tp_size;
  STRATA_RETURN_IF_ERROR(m.ln_f.backward(ctx, g.dres, g.dln, m.resid.back(), m.lnf_mean, m.lnf_rstd, rows));
  for (std::size_t l = m.blocks.size(); l-- > 0;) {
    model::Block& blk = *m.blocks[l];
    if (config_.checkpointing) {
      STRATA_RETURN_IF_ERROR(blk.forward(ctx, m.acts[0], m.resid[l], m.resid[l + 1], B, T, true));
    }
    STRATA_RETURN_IF_ERROR(blk.backward(ctx, m.acts[config_.checkpointing ? 0 : l], g, m.resid[l], B, T));
  }
  STRATA_RETURN_IF_ERROR(m.embeddings.backward(ctx, g.dres, m.tokens, B, T));
  return hook_after_backward();
}

}  // namespace strata
