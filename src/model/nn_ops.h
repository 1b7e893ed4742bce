// src/model/nn_ops.h — the small set of neural-network kernels the GPT layers need beside GEMM
// (embedding, LayerNorm, bias, GELU, residual add, causal softmax, cross-entropy, a sum), as one
// interface with one backend per file:
//   nn_ops_host.cc   the host device: each op is a host function enqueued on the device stream
//                    (Stream::launch_host_func) that works on host-addressable device memory
//                    with OpenMP; requires device.info().host_addressable.
//   nn_ops_cuda.cc   the CUDA device: launches kernels/nn_kernels.cu on the stream's CUDA stream
//                    (built with the CUDA toolkit; compiled but not run on a GPU by the tests).
// make_nn_ops() picks the backend from the device's backend name; there is no fallback.
//
// Every op is asynchronous, like the Device primitives: it validates its arguments and enqueues
// the work on `stream`, returning a non-OK Status (and enqueuing nothing) when they are wrong.
// The per-element math is kernels/nn_math.h; nn_reference.h holds the plain scalar versions
// the tests compare every backend against.
//
// Types. Activations, weights and their inputs share one storage dtype `T` (fp32, bf16, fp16);
// everything computes in fp32. Parameter gradients (dw, db, dwte, dwpe) have dtype `G`, fp32 or
// T, and are *accumulated* (+=), so several micro-batches and the tied embedding add into one
// buffer. LayerNorm statistics and per-row losses are fp32. Token ids are int32 in a
// DeviceRange of 4 bytes per token; ids must be in [0, vocab) (the data loader guarantees it;
// the kernels do not check device memory).
//
// Aliasing: an output may be the very same view as the input named in its comment (in-place
// ops); any other overlap between arguments is refused.
//
// Determinism: for a fixed backend and thread count, every op gives the same bits on every
// run; the host backend's reductions over rows run per column in row order, so they do not
// even depend on the thread count.
//
// Thread-safety: an NnOps object may be used from several threads; the enqueued work follows
// the stream rules of strata/device.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "strata/device.h"

namespace strata::nn {

class NnOps {
 public:
  virtual ~NnOps() = default;
  NnOps(const NnOps&) = delete;
  NnOps& operator=(const NnOps&) = delete;

  Device& device() const { return *device_; }
  // "host", "cuda"
  virtual std::string_view backend() const = 0;

  // out: (N, C) = wte[tokens[n]] + wpe[n % T]
  // tokens: (N) int32, wte: (V, C), wpe: (P, C) with P >= T, N a multiple of T.
  Status embedding_forward(DeviceView out, DeviceRange tokens, DeviceView wte, DeviceView wpe, std::int64_t N,
                           std::int64_t T, std::int64_t C, Stream& stream);
  // dwte[tokens[n]] += dout[n], dwpe[n % T] += dout[n]
  // dwte: (V, C) G, dwpe: (P, C) G, dout: (N, C) T, tokens: (N) int32.
  Status embedding_backward(DeviceView dwte, DeviceView dwpe, DeviceView dout, DeviceRange tokens, std::int64_t N,
                            std::int64_t T, std::int64_t C, Stream& stream);
  // Vocab-parallel (a tp rank's shard of the embedding): wte: (Vr, C) holds the rows of ids
  // [vocab_first, vocab_first + Vr), and a token outside that range adds nothing:
  //   out[n] = (wte[tokens[n] - vocab_first] or 0) + wpe[n % T] (wpe empty: not added)
  // so that the sum over the ranks' outputs, with wpe on one of them, is the whole embedding.
  Status embedding_shard_forward(DeviceView out, DeviceRange tokens, DeviceView wte, std::int64_t vocab_first,
                                 DeviceView wpe, std::int64_t N, std::int64_t T, std::int64_t C, Stream& stream);
  // dwte[tokens[n] - vocab_first] += dout[n] for the tokens in range; dwpe[n % T] += dout[n].
  Status embedding_shard_backward(DeviceView dwte, std::int64_t vocab_first, DeviceView dwpe, DeviceView dout,
                                  DeviceRange tokens, std::int64_t N, std::int64_t T, std::int64_t C, Stream& stream);

  // out: (N, C), mean: (N) fp32, rstd: (N) fp32 = LayerNorm(inp: (N, C)) with weight, bias: (C)
  Status layernorm_forward(DeviceView out, DeviceView mean, DeviceView rstd, DeviceView inp, DeviceView weight,
                           DeviceView bias, std::int64_t N, std::int64_t C, Stream& stream);
  // dinp: (N, C) +=, dweight: (C) G +=, dbias: (C) G +=, from dout: (N, C) and the forward's
  // inp: (N, C), weight: (C), mean and rstd: (N) fp32.
  Status layernorm_backward(DeviceView dinp, DeviceView dweight, DeviceView dbias, DeviceView dout, DeviceView inp,
                            DeviceView weight, DeviceView mean, DeviceView rstd, std::int64_t N, std::int64_t C,
                            Stream& stream);

  // out: (N, OC), out[n, :] = bias: (OC). A GEMM with beta = 1 then adds x @ W on top.
  Status bias_broadcast(DeviceView out, DeviceView bias, std::int64_t N, std::int64_t OC, Stream& stream);
  // out: (N, OC), out[n, :] += bias: (OC) (a row-parallel linear's bias, after the reduction).
  Status bias_add(DeviceView out, DeviceView bias, std::int64_t N, std::int64_t OC, Stream& stream);
  // dbias: (OC) G += sum over n of dout: (N, OC)
  Status bias_backward(DeviceView dbias, DeviceView dout, std::int64_t N, std::int64_t OC, Stream& stream);

  // out[i] = gelu(inp[i])                       (out may be inp)
  Status gelu_forward(DeviceView out, DeviceView inp, Stream& stream);
  // dinp[i] = gelu'(inp[i]) * dout[i]           (dinp may be dout)
  Status gelu_backward(DeviceView dinp, DeviceView inp, DeviceView dout, Stream& stream);

  // out[i] = a[i] + b[i]                        (out may be a or b)
  Status add(DeviceView out, DeviceView a, DeviceView b, Stream& stream);

  // att: (BH, T, T) = causal softmax of preatt: (BH, T, T) over each row's first t+1 entries;
  // entries above the diagonal become 0.       (att may be preatt)
  Status softmax_causal_forward(DeviceView att, DeviceView preatt, std::int64_t BH, std::int64_t T, Stream& stream);
  // dpreatt: (BH, T, T) from att and datt: (BH, T, T)   (dpreatt may be datt)
  Status softmax_causal_backward(DeviceView dpreatt, DeviceView att, DeviceView datt, std::int64_t BH,
                                 std::int64_t T, Stream& stream);

  // losses: (N) fp32 = -log softmax(logits: (N, V))[targets[n]]; targets: (N) int32.
  Status crossentropy_forward(DeviceView losses, DeviceView logits, DeviceRange targets, std::int64_t N,
                              std::int64_t V, Stream& stream);
  // dlogits: (N, V) = (softmax(logits) - onehot(targets)) * dloss   (dlogits may be logits)
  Status crossentropy_backward(DeviceView dlogits, DeviceView logits, DeviceRange targets, float dloss,
                               std::int64_t N, std::int64_t V, Stream& stream);

  // Vocab-parallel cross-entropy (Megatron's): logits: (N, Vr) hold the vocabulary ids
  // [vocab_first, vocab_first + Vr) of which the first `valid` are real (the rest padding,
  // never counted). Each op works on one rank's shard; the caller all-reduces in between:
  //   shard_stats    maxv: (N) fp32 = max over the valid logits, target: (N) fp32 = the
  //                  target's logit, or 0 where the target is another rank's
  //                  (then all-reduce maxv with max, target with sum)
  //   shard_sumexp   sumexp: (N) fp32 = sum over the valid logits of exp(logit - maxv)
  //                  (then all-reduce with sum)
  //   shard_loss     losses: (N) fp32 = log(sumexp) + maxv - target
  //   shard_backward dlogits: (N, Vr) = (softmax - onehot(targets)) * dloss over the valid
  //                  columns, 0 over the padding   (dlogits may be logits)
  Status crossentropy_shard_stats(DeviceView maxv, DeviceView target, DeviceView logits, DeviceRange targets,
                                  std::int64_t N, std::int64_t Vr, std::int64_t vocab_first, std::int64_t valid,
                                  Stream& stream);
  Status crossentropy_shard_sumexp(DeviceView sumexp, DeviceView logits, DeviceView maxv, std::int64_t N,
                                   std::int64_t Vr, std::int64_t valid, Stream& stream);
  Status crossentropy_shard_loss(DeviceView losses, DeviceView maxv, DeviceView target, DeviceView sumexp,
                                 std::int64_t N, Stream& stream);
  Status crossentropy_shard_backward(DeviceView dlogits, DeviceView logits, DeviceRange targets, DeviceView maxv,
                                     DeviceView sumexp, float dloss, std::int64_t N, std::int64_t Vr,
                                     std::int64_t vocab_first, std::int64_t valid, Stream& stream);

  // out: (1) fp32 += scale * sum of x: (n) fp32 (summed in order on the host backend)
  Status accumulate_sum(DeviceView out, DeviceView x, float scale, Stream& stream);

 protected:
  explicit NnOps(Device& device) : device_(&device) {}

  // Backends implement these; the public functions above have checked devices, dtypes,
  // counts and aliasing.
  // The embedding ops with vocab_first 0 and every token in range are the whole embedding's.
  virtual Status embedding_forward_impl(DeviceView out, DeviceRange tokens, DeviceView wte, std::int64_t vocab_first,
                                        DeviceView wpe, std::int64_t N, std::int64_t T, std::int64_t C,
                                        Stream& stream) = 0;
  virtual Status embedding_backward_impl(DeviceView dwte, std::int64_t vocab_first, DeviceView dwpe, DeviceView dout,
                                         DeviceRange tokens, std::int64_t N, std::int64_t T, std::int64_t C,
                                         Stream& stream) = 0;
  virtual Status layernorm_forward_impl(DeviceView out, DeviceView mean, DeviceView rstd, DeviceView inp,
                                        DeviceView weight, DeviceView bias, std::int64_t N, std::int64_t C,
                                        Stream& stream) = 0;
  virtual Status layernorm_backward_impl(DeviceView dinp, DeviceView dweight, DeviceView dbias, DeviceView dout,
                                         DeviceView inp, DeviceView weight, DeviceView mean, DeviceView rstd,
                                         std::int64_t N, std::int64_t C, Stream& stream) = 0;
  // accumulate: out += bias instead of out = bias.
  virtual Status bias_broadcast_impl(DeviceView out, DeviceView bias, std::int64_t N, std::int64_t OC,
                                     bool accumulate, Stream& stream) = 0;
  virtual Status bias_backward_impl(DeviceView dbias, DeviceView dout, std::int64_t N, std::int64_t OC,
                                    Stream& stream) = 0;
  virtual Status gelu_forward_impl(DeviceView out, DeviceView inp, Stream& stream) = 0;
  virtual Status gelu_backward_impl(DeviceView dinp, DeviceView inp, DeviceView dout, Stream& stream) = 0;
  virtual Status add_impl(DeviceView out, DeviceView a, DeviceView b, Stream& stream) = 0;
  virtual Status softmax_causal_forward_impl(DeviceView att, DeviceView preatt, std::int64_t BH, std::int64_t T,
                                             Stream& stream) = 0;
  virtual Status softmax_causal_backward_impl(DeviceView dpreatt, DeviceView att, DeviceView datt,
                                              std::int64_t BH, std::int64_t T, Stream& stream) = 0;
  virtual Status crossentropy_forward_impl(DeviceView losses, DeviceView logits, DeviceRange targets,
                                           std::int64_t N, std::int64_t V, Stream& stream) = 0;
  virtual Status crossentropy_backward_impl(DeviceView dlogits, DeviceView logits, DeviceRange targets,
                                            float dloss, std::int64_t N, std::int64_t V, Stream& stream) = 0;
  virtual Status crossentropy_shard_stats_impl(DeviceView maxv, DeviceView target, DeviceView logits,
                                              DeviceRange targets, std::int64_t N, std::int64_t Vr,
                                              std::int64_t vocab_first, std::int64_t valid, Stream& stream) = 0;
  virtual Status crossentropy_shard_sumexp_impl(DeviceView sumexp, DeviceView logits, DeviceView maxv, std::int64_t N,
                                                std::int64_t Vr, std::int64_t valid, Stream& stream) = 0;
  virtual Status crossentropy_shard_loss_impl(DeviceView losses, DeviceView maxv, DeviceView target,
                                              DeviceView sumexp, std::int64_t N, Stream& stream) = 0;
  virtual Status crossentropy_shard_backward_impl(DeviceView dlogits, DeviceView logits, DeviceRange targets,
                                                  DeviceView maxv, DeviceView sumexp, float dloss, std::int64_t N,
                                                  std::int64_t Vr, std::int64_t vocab_first, std::int64_t valid,
                                                  Stream& stream) = 0;
  virtual Status accumulate_sum_impl(DeviceView out, DeviceView x, float scale, Stream& stream) = 0;

 private:
  Device* device_;
};

// The nn backend for `device`: "host" for a host-addressable device, "cuda" for the CUDA
// device (when built with the toolkit). Any other backend is an unavailable Status naming it.
Result<std::unique_ptr<NnOps>> make_nn_ops(Device& device);

// Backend factories (one file each); make_nn_ops() chooses among them.
Result<std::unique_ptr<NnOps>> make_host_nn_ops(Device& device);
Result<std::unique_ptr<NnOps>> make_cuda_nn_ops(Device& device);

}  // namespace strata::nn
