// strata/model.h — models as trees of Modules with named Parameters, and the GPT-2 model.
//
// A Module owns its Parameters (name, shape, how to initialise them) and its child Modules;
// it has explicit forward and backward functions (each layer its own pair, with shape
// comments on the tensor arguments, as in llm.c). A Module does not own device memory for its
// parameters: whoever runs the model (the Trainer, later the ZeRO engine) *binds* a value view
// (the compute dtype) and a gradient view to each Parameter, and may unbind and rebind them
// between layers. ModuleHooks let that runner act around every module's forward and backward
// (gather parameters before, release after, start reducing gradients after backward) without
// the layers knowing about it.
//
// Parameter names are the Hugging Face GPT-2 names ("wte.weight", "h.3.attn.c_attn.weight",
// "ln_f.bias"); linear weights are stored as HF's Conv1D does, (in, out) row-major, so
// y = x @ W + b and the weights import and export as they are.
//
// Initial values come from a counter-based generator keyed by (seed, parameter name, element
// index), so every element, and so every shard of a parameter, can be initialised alone:
//   key    = splitmix64(seed ^ fnv1a64(name))               (64-bit FNV-1a over the name bytes)
//   bits   = philox4x32-10(counter = {index lo, index hi, 0, 0}, key = {key lo, key hi})
//   u1     = (bits[0] + 1) / 2^32  in (0, 1],   u2 = bits[1] / 2^32  in [0, 1)
//   normal = sqrt(-2 ln u1) * cos(2 pi u2)                  (in double, rounded to float once)
//   value  = normal * std   for kNormal; 1 for kOnes; 0 for kZeros.
// GPT-2 uses std 0.02, and 0.02 / sqrt(2 n_layer) for the residual output projections
// (attn.c_proj.weight and mlp.c_proj.weight); LayerNorm weights are 1, all biases 0.
//
// Thread-safety: a Module tree is used by one thread at a time; the work it enqueues follows
// the stream rules of strata/device.h. The init functions are pure and reentrant.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "strata/device.h"
#include "strata/dtype.h"
#include "strata/profile.h"
#include "strata/status.h"

namespace strata {

class Communicator;
class Module;

// ---------------------------------------------------------------------------------------------
// Parameters

enum class ParamInit : std::uint8_t { kNormal = 0, kOnes, kZeros };

// How a tensor-parallel rank's Parameter is cut from the whole tensor (Megatron-LM's
// tensor_parallel layers): dimension `dim` of `global_shape` is split in `size` equal
// shards, rank `rank` holding the `rank`-th; with `parts` > 1 the dimension is first cut in
// `parts` equal pieces and each piece is split alone (c_attn's output: Q, K and V split by
// heads, so a rank's shard is three strided pieces). dim = -1: replicated (every tp rank
// holds the whole tensor). Initialisation, import and export address elements by their index
// in the whole tensor, so that every grid builds and writes the same model. A tensor split along
// its first dimension may be padded to split evenly (the vocabulary): `rows` is then its real
// extent, the padding rows lie beyond it, and no exchange file or checkpoint holds them.
struct TensorShard {
  std::vector<std::int64_t> global_shape;
  int dim = -1;
  int parts = 1;
  int rank = 0;
  int size = 1;
  std::int64_t rows = 0;  // dim 0's real extent when padded; 0: global_shape[0]

  bool split() const { return dim >= 0; }
  // The elements of the whole tensor without its padding.
  std::uint64_t whole_numel() const;
  // The rank's shape: global_shape with dimension dim divided by size.
  std::vector<std::int64_t> local_shape() const;
  // Checks that dim is a dimension, that its extent divides into parts x size pieces, and that
  // only a tensor split along dimension 0 is padded.
  Status validate(std::string_view name) const;
  // The row-major index in the whole tensor of the rank's element `local` (row-major in
  // local_shape()).
  std::uint64_t global_index(std::uint64_t local) const;
};

class Parameter {
 public:
  Parameter(std::string name, std::vector<std::int64_t> shape, ParamInit init, float init_std);
  // A tensor-parallel shard: shape() is shard.local_shape().
  Parameter(std::string name, TensorShard shard, ParamInit init, float init_std);
  Parameter(const Parameter&) = delete;
  Parameter& operator=(const Parameter&) = delete;

  // The full name, e.g. "h.0.attn.c_attn.weight".
  const std::string& name() const { return name_; }
  // This rank's shape and element count (the whole tensor's unless the parameter is split).
  const std::vector<std::int64_t>& shape() const { return shape_; }
  std::size_t numel() const { return numel_; }
  // Where it lies in the whole tensor: replicated (global_shape = shape) unless split.
  const TensorShard& shard() const { return shard_; }
  ParamInit init() const { return init_; }
  float init_std() const { return init_std_; }
  // "(256, 768)"
  std::string shape_string() const;
  // The dtypes of the device value (the compute dtype) and of the gradient; fp32 until the
  // model that owns the parameter sets them, before anything is bound.
  DType dtype() const { return dtype_; }
  DType grad_dtype() const { return grad_dtype_; }
  void set_dtypes(DType value, DType grad) {
    dtype_ = value;
    grad_dtype_ = grad;
  }

  // Device storage: the value in the model's compute dtype and the gradient in its gradient
  // dtype, both numel() elements. Empty until bound.
  const DeviceView& value() const { return value_; }
  const DeviceView& grad() const { return grad_; }
  bool bound() const { return !value_.empty(); }
  // Fails (binding nothing) when a view does not hold numel() elements of its dtype. The
  // gradient may be left empty, to be bound by bind_grad() before backward uses it (ZeRO stage 2
  // gives a gradient storage only while its bucket is open).
  Status bind(DeviceView value, DeviceView grad);
  Status bind_grad(DeviceView grad);
  void unbind();

 private:
  std::string name_;
  std::vector<std::int64_t> shape_;
  TensorShard shard_;
  std::size_t numel_;
  ParamInit init_;
  float init_std_;
  DType dtype_ = DType::kF32;
  DType grad_dtype_ = DType::kF32;
  DeviceView value_;
  DeviceView grad_;
};

// Standard normal number `index` of the stream keyed by (seed, name), as described above.
float init_normal(std::uint64_t seed, std::string_view name, std::uint64_t index);

// out[i] = the initial value of element first + i of `p` under `seed` (its element
// p.shard().global_index(first + i) of the whole tensor).
// REQUIRES: first + out.size() <= p.numel().
void init_parameter_values(const Parameter& p, std::uint64_t seed, std::uint64_t first, std::span<float> out);

// ---------------------------------------------------------------------------------------------
// Modules and hooks

// Called around every module's forward and backward, in execution order (a parent's
// before_forward comes before its children's). `recompute` is true when activation
// checkpointing reruns a forward during backward. A hook that fails stops the pass, and the
// pass returns its Status.
class ModuleHooks {
 public:
  virtual ~ModuleHooks() = default;
  virtual Status before_forward(Module& module, bool recompute);
  virtual Status after_forward(Module& module, bool recompute);
  virtual Status before_backward(Module& module);
  virtual Status after_backward(Module& module);
};

class Module {
 public:
  virtual ~Module();
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // A path for people and logs: "h.3.attn", "ln_f", "embeddings", "lm_head"; "" for a root.
  const std::string& name() const { return name_; }
  // The parameters this module created, in creation order.
  const std::vector<Parameter*>& own_parameters() const { return own_; }
  // Parameters created elsewhere that this module's forward and backward also use (the tied
  // output head uses wte); a hook must make them available too.
  const std::vector<Parameter*>& tied_parameters() const { return tied_; }
  const std::vector<Module*>& children() const { return children_; }
  // Every parameter of this subtree once, in creation order (own, then children's).
  std::vector<Parameter*> parameters() const;
  // The parameter of this subtree called `name`, or nullptr.
  Parameter* find_parameter(std::string_view name) const;

  // Installs `hooks` on this module and its whole subtree (nullptr removes them). The hooks
  // object must outlive its installation.
  void set_hooks(ModuleHooks* hooks);
  ModuleHooks* hooks() const { return hooks_; }

 protected:
  explicit Module(std::string name);

  Parameter& add_parameter(std::string full_name, std::vector<std::int64_t> shape, ParamInit init,
                           float init_std = 0.0f);
  // A tensor-parallel shard (REQUIRES: shard.validate() passed).
  Parameter& add_parameter(std::string full_name, TensorShard shard, ParamInit init, float init_std = 0.0f);
  void tie_parameter(Parameter& p) { tied_.push_back(&p); }
  // `child` is owned by the derived class and must live as long as this module.
  void add_child(Module& child);

  // For forward/backward implementations: run the installed hooks (OK when none).
  Status hook_before_forward(bool recompute) { return hooks_ ? hooks_->before_forward(*this, recompute) : Status::OK(); }
  Status hook_after_forward(bool recompute) { return hooks_ ? hooks_->after_forward(*this, recompute) : Status::OK(); }
  Status hook_before_backward() { return hooks_ ? hooks_->before_backward(*this) : Status::OK(); }
  Status hook_after_backward() { return hooks_ ? hooks_->after_backward(*this) : Status::OK(); }

 private:
  std::string name_;
  std::vector<std::unique_ptr<Parameter>> storage_;
  std::vector<Parameter*> own_;
  std::vector<Parameter*> tied_;
  std::vector<Module*> children_;
  ModuleHooks* hooks_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// GPT-2

struct GptConfig {
  ModelDims dims;                      // n_layer, n_head, n_embd, vocab, seq_len
  DType dtype = DType::kF32;           // parameters and activations on the device
  DType grad_dtype = DType::kF32;      // parameter gradients: fp32 or `dtype`
  bool checkpointing = false;          // keep only block inputs; recompute blocks in backward
  // Tensor parallelism (Megatron-LM's; src/model/layers.h): this model is rank tp_rank of
  // tp_size, holding its shards of every split parameter (attention by heads, the MLP by
  // hidden units, the embedding and tied head by vocabulary rows, the vocabulary padded to a
  // multiple of tp_size); LayerNorms, wpe and the row-parallel biases are whole on every rank.
  int tp_rank = 0;
  int tp_size = 1;
  // Megatron's sequence parallelism with tp_size > 1: the residual stream and the LayerNorms
  // work on this rank's (B T) / tp rows (src/model/layers.h); B T must divide by tp_size.
  bool sequence_parallel = false;
  // Pipeline parallelism (src/parallel/pipeline_schedule.h): the model is cut into pp_size x
  // virtual_stages parts of n_layer / parts blocks each; this model is stage pp_rank, holding
  // chunk c = part c x pp_size + pp_rank for c < virtual_stages. The embeddings come with part
  // 0, ln_f and the head with the last part; a last stage without the embeddings holds its own
  // copy of the tied wte.
  int pp_rank = 0;
  int pp_size = 1;
  int virtual_stages = 1;

  // From a profile: train.dims, precision.dtype, activation.checkpointing, parallel.tp,
  // sequence_parallel, pp and virtual_stages; fp32 gradients.
  static GptConfig from_profile(const Profile& profile);
  // Checks the dimensions (positive, n_embd divisible by n_head, sizes that fit), the dtypes,
  // that n_head and the MLP width 4 n_embd divide among tp_size ranks, and n_layer among the
  // pipeline's parts.
  Status validate() const;
  // The pipeline's model parts, and the blocks [first, second) of this stage's chunk `chunk`.
  int parts() const { return pp_size * virtual_stages; }
  std::pair<int, int> chunk_layers(int chunk) const;
  // Whether this stage's chunk holds the embeddings (the first part) or the head (the last).
  bool holds_embeddings(int chunk) const { return pp_rank == 0 && chunk == 0; }
  bool holds_head(int chunk) const { return pp_rank == pp_size - 1 && chunk == virtual_stages - 1; }
};

// How many micro-batches' activations a pipeline stage keeps per chunk (its slots), and
// whether backward leaves the Linears' weight gradients for a separate pass (zero-bubble
// schedules). The default: one slot, backward whole.
struct StageSlots {
  std::vector<int> per_chunk;  // empty: one slot per chunk
  bool split_backward = false;
};

// Floating-point operations of one training step (forward + backward) of `tokens` tokens,
// counted as the model needs them: 6 per parameter of every matmul (blocks and the tied head)
// per token, plus 12 * n_layer * seq_len * n_embd per token for attention (PaLM's formula).
// Recomputation and the masked half of causal attention are not counted.
double gpt_training_flops(const ModelDims& dims, std::uint64_t tokens);

// GPT-2 as published: token and learned position embeddings, n_layer pre-LayerNorm blocks
// (causal multi-head self-attention, MLP with tanh-GELU, residuals), a final LayerNorm and an
// output head tied to the token embedding, cross-entropy loss; no dropout.
//
// Use: create(); bind every parameter; prepare(device, B); then per micro-batch forward() and
// backward() on one stream. Gradients accumulate (+=) into the bound gradient views; whoever
// runs the model zeroes them between optimizer steps.
class Gpt final : public Module {
 public:
  static Result<std::unique_ptr<Gpt>> create(const GptConfig& config);
  ~Gpt() override;

  const GptConfig& config() const { return config_; }

  // Device bytes prepare() allocates for activations at micro-batch B (depends on
  // checkpointing and the slots; one allocation).
  static std::uint64_t activation_bytes(const GptConfig& config, int micro_batch, const StageSlots& slots = {});

  // Allocates activation memory on `device` for micro-batches of B sequences, `slots` of them
  // per chunk, and picks the nn kernels for the device. Calling it again replaces the previous
  // allocation. With config().tp_size > 1, `tp` is the tensor-parallel group (of that size,
  // this rank config().tp_rank) whose collectives forward and backward enqueue; it must
  // outlive the use.
  Status prepare(Device& device, int micro_batch, Communicator* tp = nullptr, const StageSlots& slots = {});
  int micro_batch() const;
  bool prepared() const;

  // Enqueues the forward pass on `stream`:  loss_sum: (1) fp32 += loss_weight * mean over
  // (B, T) of the cross-entropy of predicting targets from tokens.
  // tokens, targets: (B, T) int32 in device memory, ids < vocab. They and the parameters must
  // stay unchanged until backward() has been enqueued and has run.
  // REQUIRES: prepared; every parameter bound, or hooks installed that bind each module's
  // parameters in its before_forward and before_backward hooks.
  Status forward(DeviceRange tokens, DeviceRange targets, DeviceView loss_sum, float loss_weight, Stream& stream);

  // Enqueues the backward pass of the latest forward(): every parameter gradient +=
  // d(dloss * mean cross-entropy)/d(parameter). dloss is the loss scale divided by the number
  // of micro-batches accumulated (1 for a plain fp32 step).
  Status backward(float dloss, Stream& stream);

  // The latest forward's per-token losses (B, T) fp32 and logits (B, T, V) in the compute
  // dtype (with tp, this rank's V / tp padded columns). backward() overwrites the logits with
  // their gradient.
  DeviceView losses() const;
  DeviceView logits() const;

  // A pipeline stage's passes over one chunk (forward() and backward() are those of chunk 0,
  // slot 0, of a model of one part), each on one micro-batch's activation slot. A chunk's
  // input (B T, C) is part_input() (the activation received from the previous part; the
  // embeddings' output when the chunk holds them), its output part_output(). backward_part()
  // takes d(output) in part_grad() (the head's chunk makes its own from the loss) and leaves
  // d(input) there. set_batch() gives a slot the micro-batch's tokens and targets (device
  // memory that stays unchanged until the slot's backward ran): the embeddings' chunk reads
  // the tokens, the head's the targets. With `defer_weights` (StageSlots::split_backward),
  // the Linears' weight gradients wait for weight_part() of the same chunk and slot.
  int chunks() const { return config_.virtual_stages; }
  int slots(int chunk) const;
  DeviceView part_input(int chunk, int slot) const;
  DeviceView part_output(int chunk, int slot) const;
  DeviceView part_grad(int chunk, int slot) const;
  Status set_batch(int chunk, int slot, DeviceRange tokens, DeviceRange targets);
  Status forward_part(int chunk, int slot, DeviceView loss_sum, float loss_weight, Stream& stream);
  Status backward_part(int chunk, int slot, float dloss, bool defer_weights, Stream& stream);
  Status weight_part(int chunk, int slot, Stream& stream);

 private:
  struct Impl;
  explicit Gpt(const GptConfig& config);
  GptConfig config_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata
