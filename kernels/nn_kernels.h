// kernels/nn_kernels.h — launchers of the CUDA kernels behind the nn ops' CUDA backend
// (src/model/nn_ops_cuda.cc): embedding, LayerNorm, bias, GELU, residual add, causal softmax,
// cross-entropy and a sum, each over the per-element math of kernels/nn_math.h that the host
// backend runs too. Shapes, dtypes and accumulation rules are those of src/model/nn_ops.h.
//
// Layout of the work: element-wise ops are grid-stride loops; per-row ops (LayerNorm, softmax)
// use one warp per row and cross-entropy one block per row, with shuffle reductions; reductions
// over rows (bias, LayerNorm weight and bias gradients, embedding gradients) use one thread
// per column that walks the rows in order, so results are deterministic and need no atomics.
//
// The launchers enqueue on `stream` and return the launch error without synchronising.
// Arguments are trusted: NnOps' public functions have checked them.
//
// This code compiles in every CUDA build but has not been run on a GPU by strata's test suite
// (the CI machines have none); the host backend's tests pin down the math it shares.
//
// Thread-safety: launchers may be called from any thread.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "strata/dtype.h"

namespace strata::kern::cuda::nn {

// `t` is the activation dtype, `g` the gradient dtype (fp32 or t). The embedding's wte holds
// `rows` rows of the ids from vocab_first (model/nn_ops.h); a null wpe is not added.
cudaError_t embedding_forward(void* out, const std::int32_t* tokens, const void* wte, std::int64_t vocab_first,
                              std::int64_t rows, const void* wpe, DType t, std::int64_t N, std::int64_t T,
                              std::int64_t C, cudaStream_t stream);
cudaError_t embedding_backward(void* dwte, std::int64_t vocab_first, std::int64_t rows, void* dwpe, DType g,
                               const void* dout, DType t, const std::int32_t* tokens, std::int64_t N, std::int64_t T,
                               std::int64_t C, cudaStream_t stream);
cudaError_t layernorm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight,
                              const void* bias, DType t, std::int64_t N, std::int64_t C, cudaStream_t stream);
cudaError_t layernorm_backward(void* dinp, void* dweight, void* dbias, DType g, const void* dout, const void* inp,
                               const void* weight, const float* mean, const float* rstd, DType t, std::int64_t N,
                               std::int64_t C, cudaStream_t stream);
// out[n, :] = bias, or += bias when accumulate.
cudaError_t bias_broadcast(void* out, const void* bias, DType t, std::int64_t N, std::int64_t OC, bool accumulate,
                           cudaStream_t stream);
cudaError_t bias_backward(void* dbias, DType g, const void* dout, DType t, std::int64_t N, std::int64_t OC,
                          cudaStream_t stream);
cudaError_t gelu_forward(void* out, const void* inp, DType t, std::int64_t n, cudaStream_t stream);
cudaError_t gelu_backward(void* dinp, const void* inp, const void* dout, DType t, std::int64_t n, cudaStream_t stream);
cudaError_t add(void* out, const void* a, const void* b, DType t, std::int64_t n, cudaStream_t stream);
cudaError_t softmax_causal_forward(void* att, const void* preatt, DType t, std::int64_t BH, std::int64_t T,
                                   cudaStream_t stream);
cudaError_t softmax_causal_backward(void* dpreatt, const void* att, const void* datt, DType t, std::int64_t BH,
                                    std::int64_t T, cudaStream_t stream);
cudaError_t crossentropy_forward(float* losses, const void* logits, const std::int32_t* targets, DType t,
                                 std::int64_t N, std::int64_t V, cudaStream_t stream);
cudaError_t crossentropy_backward(void* dlogits, const void* logits, const std::int32_t* targets, float dloss, DType t,
                                  std::int64_t N, std::int64_t V, cudaStream_t stream);
// Vocab-parallel cross-entropy over logits (N, Vr) of ids [vocab_first, vocab_first + Vr), the
// first `valid` real (model/nn_ops.h).
cudaError_t crossentropy_shard_stats(float* maxv, float* target, const void* logits, const std::int32_t* targets,
                                     DType t, std::int64_t N, std::int64_t Vr, std::int64_t vocab_first,
                                     std::int64_t valid, cudaStream_t stream);
cudaError_t crossentropy_shard_sumexp(float* sumexp, const void* logits, const float* maxv, DType t, std::int64_t N,
                                      std::int64_t Vr, std::int64_t valid, cudaStream_t stream);
cudaError_t crossentropy_shard_loss(float* losses, const float* maxv, const float* target, const float* sumexp,
                                    std::int64_t N, cudaStream_t stream);
cudaError_t crossentropy_shard_backward(void* dlogits, const void* logits, const std::int32_t* targets,
                                        const float* maxv, const float* sumexp, float dloss, DType t, std::int64_t N,
                                        std::int64_t Vr, std::int64_t vocab_first, std::int64_t valid,
                                        cudaStream_t stream);
cudaError_t accumulate_sum(float* out, const float* x, float scale, std::int64_t n, cudaStream_t stream);

}  // namespace strata::kern::cuda::nn
