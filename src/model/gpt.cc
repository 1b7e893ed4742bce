// The GPT-2 model of strata/model.h: module tree, activation memory and the forward and
// backward passes over the layers of layers.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

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
  c.pp_size = profile.parallel.pp;
  c.virtual_stages = profile.parallel.virtual_stages;
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
  if (pp_size < 1 || pp_rank < 0 || pp_rank >= pp_size || virtual_stages < 1) {
    return bad("pipeline stage " + std::to_string(pp_rank) + " of " + std::to_string(pp_size) + " with " +
               std::to_string(virtual_stages) + " virtual stages is not a stage of the pipeline");
  }
  if (d.n_layer % parts() != 0) {
    return bad("n_layer = " + std::to_string(d.n_layer) + " does not divide among the pipeline's parallel.pp x "
               "parallel.virtual_stages = " + std::to_string(parts()) +
               " model parts (each takes as many blocks): choose an n_layer that is a multiple of it");
  }
  if (grad_dtype != DType::kF32 && grad_dtype != dtype) {
    return bad("gradient dtype " + std::string(dtype_name(grad_dtype)) + " must be fp32 or the compute dtype " +
               std::string(dtype_name(dtype)));
  }
  return Status::OK();
}

std::pair<int, int> GptConfig::chunk_layers(int chunk) const {
  const int per = dims.n_layer / parts(), part = chunk * pp_size + pp_rank;
  return {part * per, (part + 1) * per};
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

// One micro-batch's activations of one chunk of layers.
struct ChunkSlot {
  std::vector<DeviceView> resid;  // blocks + 1 of (B, T, C): the block inputs and the last output
  std::vector<BlockActs> acts;    // per block (none when checkpointing: the shared set serves)
  DeviceView dres;                // (B, T, C): the residual stream's gradient, updated in place
  // The head's chunk.
  DeviceView lnf, lnf_mean, lnf_rstd;  // (B, T, C), (B, T), (B, T)
  DeviceView logits;                   // (B, T, V / tp padded)
  DeviceView losses;                   // (B, T) fp32
  model::CrossEntropyStats ce;         // (B, T) fp32 each (used with tp)
  DeviceView stash;                    // split backward: the deferred weight gradients' dy
  model::DeferredWeightGrads deferred;
  DeviceRange tokens, targets;         // set_batch()
  bool have_forward = false;
};

struct Gpt::Impl {
  explicit Impl(const GptConfig& c) {
    const model::TpPlace tp = tp_of(c);
    if (c.holds_embeddings(0)) embeddings = std::make_unique<model::Embeddings>(c.dims.vocab, c.dims.seq_len, c.dims.n_embd, tp);
    for (int k = 0; k < c.virtual_stages; ++k) {
      const auto [lo, hi] = c.chunk_layers(k);
      chunk_first.push_back(blocks.size());
      for (int i = lo; i < hi; ++i) {
        blocks.push_back(std::make_unique<model::Block>(i, c.dims.n_embd, c.dims.n_head, c.dims.n_layer, tp));
      }
    }
    chunk_first.push_back(blocks.size());
    if (c.holds_head(c.virtual_stages - 1)) {
      ln_f = std::make_unique<model::LayerNorm>("ln_f", c.dims.n_embd, tp);
      head = embeddings != nullptr ? std::make_unique<model::LmHead>(embeddings->wte, c.dims.vocab, tp)
                                   : std::make_unique<model::LmHead>(c.dims.vocab, c.dims.n_embd, tp);
    }
  }
  static model::TpPlace tp_of(const GptConfig& c) { return {c.tp_rank, c.tp_size, c.sequence_parallel}; }

  std::unique_ptr<model::Embeddings> embeddings;   // the first part's
  std::vector<std::unique_ptr<model::Block>> blocks;  // this stage's, chunk by chunk
  std::vector<std::size_t> chunk_first;            // chunk k: blocks [chunk_first[k], chunk_first[k + 1])
  std::unique_ptr<model::LayerNorm> ln_f;          // the last part's
  std::unique_ptr<model::LmHead> head;

  // Set by prepare().
  Device* device = nullptr;
  Communicator* tp = nullptr;
  std::unique_ptr<nn::NnOps> nn;
  int B = 0;
  DeviceBuffer arena;
  std::vector<std::vector<ChunkSlot>> slots;  // [chunk][slot]
  BlockActs shared_acts;                      // checkpointing: the block being recomputed
  BlockGrads grads;                           // the scratch every backward shares (dres is the slot's)
  DeviceView rows, ln_grads;                  // sequence parallelism's scratch (layers.h's Ctx)

  std::size_t chunk_blocks(int k) const { return chunk_first[k + 1] - chunk_first[k]; }

  static Status take_acts(const GptConfig& c, std::int64_t B, Carver& cv, BlockActs& a) {
    const std::int64_t T = c.dims.seq_len, C = c.dims.n_embd, N = B * T, tp = c.tp_size;
    const std::int64_t Cr = C / tp, NH = c.dims.n_head / tp, Nr = c.sequence_parallel && tp > 1 ? N / tp : N;
    const DType t = c.dtype, f32 = DType::kF32;
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
    return Status::OK();
  }

  // One slot of chunk k: its residual stream, block activations and gradient, and the head's
  // activations when the chunk holds it.
  static Status take_slot(const GptConfig& c, std::int64_t B, int k, bool split, Carver& cv, ChunkSlot& s) {
    const std::int64_t T = c.dims.seq_len, C = c.dims.n_embd, N = B * T, tp = c.tp_size;
    const std::int64_t Nr = c.sequence_parallel && tp > 1 ? N / tp : N;
    const std::int64_t V = tp > 1 ? model::padded_vocab(c.dims.vocab, c.tp_size) / tp : c.dims.vocab;
    const DType t = c.dtype, f32 = DType::kF32;
    const auto [lo, hi] = c.chunk_layers(k);
    const std::int64_t nb = hi - lo;
    s.resid.resize(static_cast<std::size_t>(nb + 1));
    for (DeviceView& v : s.resid) {
      STRATA_ASSIGN_OR_RETURN(v, cv.take(Nr * C, t));
    }
    s.acts.resize(c.checkpointing ? 0 : static_cast<std::size_t>(nb));
    for (BlockActs& a : s.acts) STRATA_RETURN_IF_ERROR(take_acts(c, B, cv, a));
    STRATA_ASSIGN_OR_RETURN(s.dres, cv.take(Nr * C, t));
    if (split) {
      STRATA_ASSIGN_OR_RETURN(s.stash, cv.take(nb * model::DeferredWeightGrads::block_stash(N, C, c.tp_size), t));
    }
    if (!c.holds_head(k)) return Status::OK();
    STRATA_ASSIGN_OR_RETURN(s.lnf, cv.take(N * C, t));
    STRATA_ASSIGN_OR_RETURN(s.lnf_mean, cv.take(Nr, f32));
    STRATA_ASSIGN_OR_RETURN(s.lnf_rstd, cv.take(Nr, f32));
    STRATA_ASSIGN_OR_RETURN(s.logits, cv.take(N * V, t));
    STRATA_ASSIGN_OR_RETURN(s.losses, cv.take(N, f32));
    if (tp > 1) {
      STRATA_ASSIGN_OR_RETURN(s.ce.maxv, cv.take(N, f32));
      STRATA_ASSIGN_OR_RETURN(s.ce.target, cv.take(N, f32));
      STRATA_ASSIGN_OR_RETURN(s.ce.sumexp, cv.take(N, f32));
    }
    return Status::OK();
  }

  // Lays out every activation for micro-batch B; with a buffer, assigns the views. The split
  // activations (qkv, att, atty, fch and their gradients, the logits) are this tp rank's.
  static Status layout(const GptConfig& c, std::int64_t B, const StageSlots& want, Carver& cv, Impl* self) {
    const std::int64_t T = c.dims.seq_len, C = c.dims.n_embd, N = B * T, tp = c.tp_size;
    const std::int64_t Cr = C / tp, NH = c.dims.n_head / tp;
    // With sequence parallelism the residual stream and the LayerNorm statistics are this
    // rank's rows (the LayerNorm outputs gathered to all of them).
    const bool sp = c.sequence_parallel && tp > 1;
    const std::int64_t Nr = sp ? N / tp : N;
    const DType t = c.dtype;
    std::vector<std::vector<ChunkSlot>> slots(static_cast<std::size_t>(c.virtual_stages));
    for (int k = 0; k < c.virtual_stages; ++k) {
      const int n = want.per_chunk.empty() ? 1 : want.per_chunk[static_cast<std::size_t>(k)];
      slots[static_cast<std::size_t>(k)].resize(static_cast<std::size_t>(n));
      for (ChunkSlot& s : slots[static_cast<std::size_t>(k)]) STRATA_RETURN_IF_ERROR(take_slot(c, B, k, want.split_backward, cv, s));
    }
    BlockActs shared;
    if (c.checkpointing) STRATA_RETURN_IF_ERROR(take_acts(c, B, cv, shared));
    BlockGrads g;
    STRATA_ASSIGN_OR_RETURN(g.dln, cv.take(Nr * C, t));  // also (N, C / tp) with sequence parallelism
    STRATA_ASSIGN_OR_RETURN(g.dqkv, cv.take(N * 3 * Cr, t));
    STRATA_ASSIGN_OR_RETURN(g.datt, cv.take(B * NH * T * T, t));
    STRATA_ASSIGN_OR_RETURN(g.dfch, cv.take(N * 4 * Cr, t));
    DeviceView rows, ln_grads;
    if (sp) {
      STRATA_ASSIGN_OR_RETURN(rows, cv.take(N * C, t));
      STRATA_ASSIGN_OR_RETURN(ln_grads, cv.take(2 * C, c.grad_dtype));
    }
    if (self != nullptr) {
      self->slots = std::move(slots);
      self->shared_acts = shared;
      self->grads = g;
      self->rows = rows;
      self->ln_grads = ln_grads;
    }
    return Status::OK();
  }

  Ctx ctx(Stream& stream, model::DeferredWeightGrads* defer = nullptr) {
    return Ctx{*device, *nn, stream, tp, rows, ln_grads, defer};
  }
  BlockActs& acts_of(ChunkSlot& s, std::size_t b) { return s.acts.empty() ? shared_acts : s.acts[b]; }
};

Gpt::Gpt(const GptConfig& config) : Module(""), config_(config), impl_(std::make_unique<Impl>(config)) {
  if (impl_->embeddings) add_child(*impl_->embeddings);
  for (auto& b : impl_->blocks) add_child(*b);
  if (impl_->ln_f) {
    add_child(*impl_->ln_f);
    add_child(*impl_->head);
  }
  for (Parameter* p : parameters()) p->set_dtypes(config.dtype, config.grad_dtype);
}

Gpt::~Gpt() = default;

Result<std::unique_ptr<Gpt>> Gpt::create(const GptConfig& config) {
  STRATA_RETURN_IF_ERROR(config.validate());
  return std::unique_ptr<Gpt>(new Gpt(config));
}

std::uint64_t Gpt::activation_bytes(const GptConfig& config, int micro_batch, const StageSlots& slots) {
  Carver cv(nullptr);
  Status st = Impl::layout(config, micro_batch, slots, cv, nullptr);
  (void)st;  // measuring cannot fail: no buffer is sliced
  return cv.bytes();
}

Status Gpt::prepare(Device& device, int micro_batch, Communicator* tp, const StageSlots& slots) {
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
  if (!slots.per_chunk.empty() &&
      (slots.per_chunk.size() != static_cast<std::size_t>(chunks()) ||
       *std::min_element(slots.per_chunk.begin(), slots.per_chunk.end()) < 1)) {
    return invalid_argument("gpt prepare: give at least one activation slot for each of the stage's " +
                            std::to_string(chunks()) + " chunks");
  }
  if (slots.split_backward && config_.checkpointing) {
    return invalid_argument("gpt prepare: a zero-bubble pipeline schedule defers the weight gradients, which read "
                            "the blocks' activations after backward, and activation.checkpointing keeps none: "
                            "turn checkpointing off or choose another parallel.schedule");
  }
  Impl& m = *impl_;
  m.tp = config_.tp_size > 1 ? tp : nullptr;
  m.arena.reset();
  m.slots.clear();
  m.B = 0;
  STRATA_ASSIGN_OR_RETURN(m.nn, nn::make_nn_ops(device));
  const std::uint64_t bytes = activation_bytes(config_, micro_batch, slots);
  auto buf = device.allocate(bytes);
  if (!buf.ok()) {
    int held = 0;
    for (int n : slots.per_chunk) held += n;
    const std::string in_flight = held > 1 ? ", " + std::to_string(held) + " micro-batches in flight on this pipeline "
                                                 "stage: a schedule holding fewer (1f1b) would need less" : "";
    return buf.status().with_context("gpt: activations for micro_batch " + std::to_string(micro_batch) + " (" +
                                     std::to_string(bytes) + " bytes" + in_flight +
                                     (config_.checkpointing ? "" : "; activation checkpointing would need less") + ")");
  }
  m.arena = std::move(*buf);
  Carver cv(&m.arena);
  STRATA_RETURN_IF_ERROR(Impl::layout(config_, micro_batch, slots, cv, &m));
  m.device = &device;
  m.B = micro_batch;
  return Status::OK();
}

int Gpt::micro_batch() const { return impl_->B; }
bool Gpt::prepared() const { return impl_->B > 0; }
DeviceView Gpt::losses() const { return prepared() && impl_->head ? impl_->slots.back()[0].losses : DeviceView(); }
DeviceView Gpt::logits() const { return prepared() && impl_->head ? impl_->slots.back()[0].logits : DeviceView(); }
int Gpt::slots(int chunk) const {
  return prepared() && chunk >= 0 && chunk < chunks() ? static_cast<int>(impl_->slots[static_cast<std::size_t>(chunk)].size()) : 0;
}

namespace {

Status check_bound(const Module& m) {
  for (const Parameter* p : m.parameters()) {
    if (!p->bound()) return failed_precondition("gpt: parameter " + p->name() + " has no device storage bound");
  }
  return Status::OK();
}

}  // namespace

Status Gpt::forward(DeviceRange tokens, DeviceRange targets, DeviceView loss_sum, float loss_weight, Stream& stream) {
  if (config_.parts() != 1) return failed_precondition("gpt forward: a pipeline stage runs forward_part()");
  STRATA_RETURN_IF_ERROR(set_batch(0, 0, tokens, targets));
  return forward_part(0, 0, loss_sum, loss_weight, stream);
}

Status Gpt::backward(float dloss, Stream& stream) {
  if (config_.parts() != 1) return failed_precondition("gpt backward: a pipeline stage runs backward_part()");
  return backward_part(0, 0, dloss, false, stream);
}

// The slot's views; out of range is an empty view (a caller's bug that the passes report).
namespace {
template <typename Slots>
auto* find_slot(Slots& slots, int chunk, int slot) {
  using Slot = std::remove_reference_t<decltype(slots[0][0])>;
  if (chunk < 0 || static_cast<std::size_t>(chunk) >= slots.size()) return static_cast<Slot*>(nullptr);
  auto& row = slots[static_cast<std::size_t>(chunk)];
  if (slot < 0 || static_cast<std::size_t>(slot) >= row.size()) return static_cast<Slot*>(nullptr);
  return &row[static_cast<std::size_t>(slot)];
}
}  // namespace

DeviceView Gpt::part_input(int chunk, int slot) const {
  const ChunkSlot* s = find_slot(impl_->slots, chunk, slot);
  return s == nullptr ? DeviceView() : s->resid.front();
}
DeviceView Gpt::part_output(int chunk, int slot) const {
  const ChunkSlot* s = find_slot(impl_->slots, chunk, slot);
  return s == nullptr ? DeviceView() : s->resid.back();
}
DeviceView Gpt::part_grad(int chunk, int slot) const {
  const ChunkSlot* s = find_slot(impl_->slots, chunk, slot);
  return s == nullptr ? DeviceView() : s->dres;
}

Status Gpt::set_batch(int chunk, int slot, DeviceRange tokens, DeviceRange targets) {
  ChunkSlot* s = find_slot(impl_->slots, chunk, slot);
  if (s == nullptr) return failed_precondition("gpt: no activation slot " + std::to_string(slot) + " of chunk " + std::to_string(chunk) + " (call prepare() first)");
  const std::size_t want = static_cast<std::size_t>(impl_->B) * static_cast<std::size_t>(config_.dims.seq_len) * 4;
  if (tokens.bytes() != want || targets.bytes() != want) {
    return invalid_argument("gpt forward: tokens and targets must be (B, T) = (" + std::to_string(impl_->B) + ", " +
                            std::to_string(config_.dims.seq_len) + ") int32, " + std::to_string(want) + " bytes each");
  }
  s->tokens = tokens;
  s->targets = targets;
  return Status::OK();
}

Status Gpt::forward_part(int chunk, int slot, DeviceView loss_sum, float loss_weight, Stream& stream) {
  Impl& m = *impl_;
  if (!prepared()) return failed_precondition("gpt forward: call prepare() first");
  ChunkSlot* sp = find_slot(m.slots, chunk, slot);
  if (sp == nullptr) return failed_precondition("gpt forward: no activation slot " + std::to_string(slot) + " of chunk " + std::to_string(chunk));
  ChunkSlot& s = *sp;
  // Hooks may bind each module's parameters only around its own forward (ZeRO stage 3).
  if (hooks() == nullptr) STRATA_RETURN_IF_ERROR(check_bound(*this));
  const std::int64_t B = m.B, T = config_.dims.seq_len, N = B * T;
  s.have_forward = false;
  Ctx ctx = m.ctx(stream);
  STRATA_RETURN_IF_ERROR(hook_before_forward(false));
  // resid[0]: (B, T, C) = wte[tokens] + wpe
  if (config_.holds_embeddings(chunk)) STRATA_RETURN_IF_ERROR(m.embeddings->forward(ctx, s.resid[0], s.tokens, B, T, false));
  for (std::size_t b = 0; b < m.chunk_blocks(chunk); ++b) {
    STRATA_RETURN_IF_ERROR(m.blocks[m.chunk_first[chunk] + b]->forward(ctx, m.acts_of(s, b), s.resid[b], s.resid[b + 1], B, T, false));
  }
  if (config_.holds_head(chunk)) {
    const DeviceView& last = s.resid.back();
    if (m.rows.empty()) {
      STRATA_RETURN_IF_ERROR(m.ln_f->forward(ctx, s.lnf, s.lnf_mean, s.lnf_rstd, last, N, false));
    } else {  // sequence parallelism: this rank's rows, gathered for the head
      STRATA_ASSIGN_OR_RETURN(DeviceView mine, model::my_rows(ctx, s.lnf));
      STRATA_RETURN_IF_ERROR(m.ln_f->forward(ctx, mine, s.lnf_mean, s.lnf_rstd, last, N / config_.tp_size, false));
      STRATA_RETURN_IF_ERROR(model::gather_rows(ctx, s.lnf));
    }
    STRATA_RETURN_IF_ERROR(m.head->forward(ctx, s.logits, s.losses, loss_sum, loss_weight, s.lnf, s.targets, N, false, s.ce));
  }
  STRATA_RETURN_IF_ERROR(hook_after_forward(false));
  s.have_forward = true;
  return Status::OK();
}

Status Gpt::backward_part(int chunk, int slot, float dloss, bool defer_weights, Stream& stream) {
  Impl& m = *impl_;
  ChunkSlot* sp = find_slot(m.slots, chunk, slot);
  if (sp == nullptr || !sp->have_forward) {
    return failed_precondition("gpt backward: no forward pass to differentiate (call forward() first)");
  }
  if (!std::isfinite(dloss)) return invalid_argument("gpt backward: dloss is not finite");
  ChunkSlot& s = *sp;
  if (defer_weights && s.stash.empty()) return failed_precondition("gpt backward: prepare() with split_backward to defer weight gradients");
  s.have_forward = false;  // the logits become their gradient
  if (defer_weights) s.deferred.reset(s.stash);
  const std::int64_t B = m.B, T = config_.dims.seq_len, N = B * T;
  Ctx ctx = m.ctx(stream, defer_weights ? &s.deferred : nullptr);
  BlockGrads g = m.grads;
  g.dres = s.dres;
  STRATA_RETURN_IF_ERROR(hook_before_backward());
  if (config_.holds_head(chunk)) {
    // dlnf: (B, T, C) into dln; then dres = d(resid[L]) = LN_f backward
    STRATA_RETURN_IF_ERROR(m.head->backward(ctx, g.dln, s.logits, s.lnf, s.targets, dloss, N, s.ce));
    STRATA_RETURN_IF_ERROR(m.device->fill(g.dres, 0.0f, stream));
    const std::int64_t rows = m.rows.empty() ? N : N / config_.tp_size;
    STRATA_RETURN_IF_ERROR(m.ln_f->backward(ctx, g.dres, g.dln, s.resid.back(), s.lnf_mean, s.lnf_rstd, rows));
  }
  for (std::size_t b = m.chunk_blocks(chunk); b-- > 0;) {
    model::Block& blk = *m.blocks[m.chunk_first[chunk] + b];
    if (config_.checkpointing) {
      STRATA_RETURN_IF_ERROR(blk.forward(ctx, m.shared_acts, s.resid[b], s.resid[b + 1], B, T, true));
    }
    STRATA_RETURN_IF_ERROR(blk.backward(ctx, m.acts_of(s, b), g, s.resid[b], B, T));
  }
  if (config_.holds_embeddings(chunk)) STRATA_RETURN_IF_ERROR(m.embeddings->backward(ctx, g.dres, s.tokens, B, T));
  return hook_after_backward();
}

Status Gpt::weight_part(int chunk, int slot, Stream& stream) {
  Impl& m = *impl_;
  ChunkSlot* sp = find_slot(m.slots, chunk, slot);
  if (sp == nullptr) return failed_precondition("gpt weight gradients: no activation slot " + std::to_string(slot));
  return sp->deferred.run(m.ctx(stream));
}

}  // namespace strata
