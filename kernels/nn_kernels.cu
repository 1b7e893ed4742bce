// CUDA kernels of the nn ops' CUDA backend over kernels/nn_math.h. See nn_kernels.h.
#include "kernels/nn_kernels.h"

#include <algorithm>
#include <cmath>

#include "kernels/elementwise_math.h"
#include "kernels/nn_math.h"

namespace strata::kern::cuda::nn {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr std::int64_t kMaxBlocks = 4096;

unsigned blocks_for(std::int64_t n) {
  const std::int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<std::int64_t>(std::max<std::int64_t>(b, 1), kMaxBlocks));
}
unsigned warp_blocks_for(std::int64_t rows) {
  return static_cast<unsigned>(std::max<std::int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, 1));
}

__device__ __forceinline__ std::int64_t first_index() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ std::int64_t grid_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum or max over the block, returned to every thread. REQUIRES: blockDim.x == kThreads.
__device__ float block_reduce(float v, bool is_max) {
  __shared__ float partial[kWarpsPerBlock];
  __shared__ float result;
  v = is_max ? warp_max(v) : warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // the previous call's readers are done with `partial` and `result`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarpsPerBlock ? partial[lane] : (is_max ? -INFINITY : 0.0f);
    v = is_max ? warp_max(v) : warp_sum(v);
    if (lane == 0) result = v;
  }
  __syncthreads();
  return result;
}

template <typename F>
cudaError_t with_type(DType t, F&& fn) {
  switch (t) {
    case DType::kF32: return fn(float{});
    case DType::kBF16: return fn(Bf16{});
    case DType::kF16: return fn(F16{});
  }
  return cudaErrorInvalidValue;
}

template <typename F>
cudaError_t with_types(DType t, DType g, F&& fn) {
  return with_type(t, [&](auto s) { return with_type(g, [&](auto gg) { return fn(s, gg); }); });
}

cudaError_t launched() { return cudaGetLastError(); }

// ---- embedding ----

template <typename S>
__global__ void embedding_forward_kernel(S* out, const std::int32_t* tok, const S* wte, std::int64_t vocab_first,
                                         std::int64_t rows, const S* wpe, std::int64_t N, std::int64_t T,
                                         std::int64_t C) {
  for (std::int64_t i = first_index(); i < N * C; i += grid_stride()) {
    const std::int64_t n = i / C, c = i % C;
    const std::int64_t row = static_cast<std::int64_t>(tok[n]) - vocab_first;
    const float e = row >= 0 && row < rows ? to_f32(wte[row * C + c]) : 0.0f;
    out[i] = from_f32<S>(e + (wpe != nullptr ? to_f32(wpe[(n % T) * C + c]) : 0.0f));
  }
}

// One thread per column walks every row in order: no two threads touch the same element.
template <typename S, typename G>
__global__ void embedding_backward_wte_kernel(G* dwte, std::int64_t vocab_first, std::int64_t rows, const S* dout,
                                              const std::int32_t* tok, std::int64_t N, std::int64_t C) {
  for (std::int64_t c = first_index(); c < C; c += grid_stride()) {
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int64_t row = static_cast<std::int64_t>(tok[n]) - vocab_first;
      if (row < 0 || row >= rows) continue;
      G* g = dwte + row * C + c;
      *g = from_f32<G>(to_f32(*g) + to_f32(dout[n * C + c]));
    }
  }
}

template <typename S, typename G>
__global__ void embedding_backward_wpe_kernel(G* dwpe, const S* dout, std::int64_t N, std::int64_t T, std::int64_t C) {
  for (std::int64_t i = first_index(); i < T * C; i += grid_stride()) {
    const std::int64_t t = i / C, c = i % C;
    float acc = 0.0f;
    for (std::int64_t n = t; n < N; n += T) acc += to_f32(dout[n * C + c]);
    dwpe[i] = from_f32<G>(to_f32(dwpe[i]) + acc);
  }
}

// ---- LayerNorm (one warp per row) ----

template <typename S>
__global__ void layernorm_forward_kernel(S* out, float* mean, float* rstd, const S* inp, const S* w, const S* b,
                                         std::int64_t N, std::int64_t C) {
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const S* x = inp + row * C;
  float s = 0.0f;
  for (std::int64_t i = lane; i < C; i += 32) s += to_f32(x[i]);
  const float mu = warp_sum(s) / static_cast<float>(C);
  float q = 0.0f;
  for (std::int64_t i = lane; i < C; i += 32) {
    const float d = to_f32(x[i]) - mu;
    q += d * d;
  }
  const float rs = nnm::layernorm_rstd(warp_sum(q) / static_cast<float>(C));
  S* y = out + row * C;
  for (std::int64_t i = lane; i < C; i += 32) {
    y[i] = from_f32<S>(nnm::layernorm_out(to_f32(x[i]), mu, rs, to_f32(w[i]), to_f32(b[i])));
  }
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

template <typename S>
__global__ void layernorm_backward_input_kernel(S* dinp, const S* dout, const S* inp, const S* w, const float* mean,
                                                const float* rstd, std::int64_t N, std::int64_t C) {
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N) return;
  const S* x = inp + row * C;
  const S* dy = dout + row * C;
  const float mu = mean[row], rs = rstd[row];
  float gs = 0.0f, gns = 0.0f;
  for (std::int64_t i = lane; i < C; i += 32) {
    const float norm = (to_f32(x[i]) - mu) * rs;
    const float g = to_f32(w[i]) * to_f32(dy[i]);
    gs += g;
    gns += g * norm;
  }
  const float g_mean = warp_sum(gs) / static_cast<float>(C);
  const float gn_mean = warp_sum(gns) / static_cast<float>(C);
  S* dx = dinp + row * C;
  for (std::int64_t i = lane; i < C; i += 32) {
    const float norm = (to_f32(x[i]) - mu) * rs;
    const float g = to_f32(w[i]) * to_f32(dy[i]);
    dx[i] = from_f32<S>(to_f32(dx[i]) + nnm::layernorm_dinp(g, norm, g_mean, gn_mean, rs));
  }
}

template <typename S, typename G>
__global__ void layernorm_backward_params_kernel(G* dw, G* db, const S* dout, const S* inp, const float* mean,
                                                 const float* rstd, std::int64_t N, std::int64_t C) {
  for (std::int64_t c = first_index(); c < C; c += grid_stride()) {
    float aw = 0.0f, ab = 0.0f;
    for (std::int64_t n = 0; n < N; ++n) {
      const float d = to_f32(dout[n * C + c]);
      aw += (to_f32(inp[n * C + c]) - mean[n]) * rstd[n] * d;
      ab += d;
    }
    dw[c] = from_f32<G>(to_f32(dw[c]) + aw);
    db[c] = from_f32<G>(to_f32(db[c]) + ab);
  }
}

// ---- bias, GELU, add ----

template <typename S>
__global__ void bias_broadcast_kernel(S* out, const S* bias, std::int64_t N, std::int64_t OC, bool accumulate) {
  for (std::int64_t i = first_index(); i < N * OC; i += grid_stride()) {
    out[i] = accumulate ? from_f32<S>(to_f32(out[i]) + to_f32(bias[i % OC])) : bias[i % OC];
  }
}

template <typename S, typename G>
__global__ void bias_backward_kernel(G* db, const S* dout, std::int64_t N, std::int64_t OC) {
  for (std::int64_t c = first_index(); c < OC; c += grid_stride()) {
    float acc = 0.0f;
    for (std::int64_t n = 0; n < N; ++n) acc += to_f32(dout[n * OC + c]);
    db[c] = from_f32<G>(to_f32(db[c]) + acc);
  }
}

template <typename S>
__global__ void gelu_forward_kernel(S* out, const S* inp, std::int64_t n) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) out[i] = from_f32<S>(nnm::gelu(to_f32(inp[i])));
}

template <typename S>
__global__ void gelu_backward_kernel(S* dinp, const S* inp, const S* dout, std::int64_t n) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) {
    dinp[i] = from_f32<S>(nnm::gelu_grad(to_f32(inp[i])) * to_f32(dout[i]));
  }
}

template <typename S>
__global__ void add_kernel(S* out, const S* a, const S* b, std::int64_t n) {
  for (std::int64_t i = first_index(); i < n; i += grid_stride()) out[i] = from_f32<S>(to_f32(a[i]) + to_f32(b[i]));
}

// ---- causal softmax (one warp per row) ----

template <typename S>
__global__ void softmax_causal_forward_kernel(S* att, const S* pre, std::int64_t rows, std::int64_t T) {
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const std::int64_t t = r % T;
  const S* x = pre + r * T;
  S* a = att + r * T;
  float mx = -INFINITY;
  for (std::int64_t j = lane; j <= t; j += 32) mx = fmaxf(mx, to_f32(x[j]));
  mx = warp_max(mx);
  float sum = 0.0f;
  for (std::int64_t j = lane; j <= t; j += 32) sum += nnm::exp_f(to_f32(x[j]) - mx);
  const float inv = 1.0f / warp_sum(sum);
  // Each lane reads and then writes only its own entries, so att may be preatt.
  for (std::int64_t j = lane; j < T; j += 32) {
    a[j] = from_f32<S>(j <= t ? nnm::exp_f(to_f32(x[j]) - mx) * inv : 0.0f);
  }
}

template <typename S>
__global__ void softmax_causal_backward_kernel(S* dpre, const S* att, const S* datt, std::int64_t rows, std::int64_t T) {
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const std::int64_t t = r % T;
  const S* a = att + r * T;
  const S* da = datt + r * T;
  S* dx = dpre + r * T;
  float dot = 0.0f;
  for (std::int64_t j = lane; j <= t; j += 32) dot += to_f32(a[j]) * to_f32(da[j]);
  dot = warp_sum(dot);
  for (std::int64_t j = lane; j < T; j += 32) {
    dx[j] = from_f32<S>(j <= t ? nnm::softmax_grad(to_f32(a[j]), to_f32(da[j]), dot) : 0.0f);
  }
}

// ---- cross-entropy (one block per row) ----

template <typename S>
__global__ void crossentropy_forward_kernel(float* losses, const S* logits, const std::int32_t* y, std::int64_t V) {
  const std::int64_t n = blockIdx.x;
  const S* l = logits + n * V;
  float mx = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, to_f32(l[j]));
  mx = block_reduce(mx, true);
  float sum = 0.0f;
  for (std::int64_t j = threadIdx.x; j < V; j += blockDim.x) sum += nnm::exp_f(to_f32(l[j]) - mx);
  sum = block_reduce(sum, false);
  if (threadIdx.x == 0) losses[n] = nnm::crossentropy_loss(to_f32(l[y[n]]), mx, sum);
}

template <typename S>
__global__ void crossentropy_backward_kernel(S* dlogits, const S* logits, const std::int32_t* y, float dloss,
                                             std::int64_t V) {
  const std::int64_t n = blockIdx.x;
  const S* l = logits + n * V;
  S* dl = dlogits + n * V;
  float mx = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, to_f32(l[j]));
  mx = block_reduce(mx, true);
  float sum = 0.0f;
  for (std::int64_t j = threadIdx.x; j < V; j += blockDim.x) sum += nnm::exp_f(to_f32(l[j]) - mx);
  const float inv = 1.0f / block_reduce(sum, false);
  const std::int64_t target = y[n];
  for (std::int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    dl[j] = from_f32<S>(nnm::crossentropy_dlogit(to_f32(l[j]), mx, inv, j == target, dloss));
  }
}

// Vocab-parallel cross-entropy: one block per row.
template <typename S>
__global__ void crossentropy_shard_stats_kernel(float* maxv, float* target, const S* logits, const std::int32_t* y,
                                                std::int64_t Vr, std::int64_t vocab_first, std::int64_t valid) {
  const std::int64_t n = blockIdx.x;
  const S* l = logits + n * Vr;
  float mx = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < valid; j += blockDim.x) mx = fmaxf(mx, to_f32(l[j]));
  mx = block_reduce(mx, true);
  if (threadIdx.x == 0) {
    const std::int64_t t = static_cast<std::int64_t>(y[n]) - vocab_first;
    maxv[n] = mx;
    target[n] = t >= 0 && t < valid ? to_f32(l[t]) : 0.0f;
  }
}

template <typename S>
__global__ void crossentropy_shard_sumexp_kernel(float* sumexp, const S* logits, const float* maxv, std::int64_t Vr,
                                                 std::int64_t valid) {
  const std::int64_t n = blockIdx.x;
  const S* l = logits + n * Vr;
  float sum = 0.0f;
  for (std::int64_t j = threadIdx.x; j < valid; j += blockDim.x) sum += nnm::exp_f(to_f32(l[j]) - maxv[n]);
  sum = block_reduce(sum, false);
  if (threadIdx.x == 0) sumexp[n] = sum;
}

__global__ void crossentropy_shard_loss_kernel(float* losses, const float* maxv, const float* target,
                                               const float* sumexp, std::int64_t N) {
  for (std::int64_t n = first_index(); n < N; n += grid_stride()) {
    losses[n] = nnm::crossentropy_loss(target[n], maxv[n], sumexp[n]);
  }
}

template <typename S>
__global__ void crossentropy_shard_backward_kernel(S* dlogits, const S* logits, const std::int32_t* y,
                                                   const float* maxv, const float* sumexp, float dloss,
                                                   std::int64_t Vr, std::int64_t vocab_first, std::int64_t valid) {
  const std::int64_t n = blockIdx.x;
  const S* l = logits + n * Vr;
  S* dl = dlogits + n * Vr;
  const float inv = 1.0f / sumexp[n];
  const std::int64_t t = static_cast<std::int64_t>(y[n]) - vocab_first;
  for (std::int64_t j = threadIdx.x; j < Vr; j += blockDim.x) {
    dl[j] = from_f32<S>(j < valid ? nnm::crossentropy_dlogit(to_f32(l[j]), maxv[n], inv, j == t, dloss) : 0.0f);
  }
}

__global__ void accumulate_sum_kernel(float* out, const float* x, float scale, std::int64_t n) {
  float s = 0.0f;
  for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  s = block_reduce(s, false);
  if (threadIdx.x == 0) out[0] += scale * s;
}

}  // namespace

cudaError_t embedding_forward(void* out, const std::int32_t* tokens, const void* wte, std::int64_t vocab_first,
                              std::int64_t rows, const void* wpe, DType t, std::int64_t N, std::int64_t T,
                              std::int64_t C, cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    embedding_forward_kernel<S><<<blocks_for(N * C), kThreads, 0, stream>>>(
        static_cast<S*>(out), tokens, static_cast<const S*>(wte), vocab_first, rows, static_cast<const S*>(wpe), N, T,
        C);
    return launched();
  });
}

cudaError_t embedding_backward(void* dwte, std::int64_t vocab_first, std::int64_t rows, void* dwpe, DType g,
                               const void* dout, DType t, const std::int32_t* tokens, std::int64_t N, std::int64_t T,
                               std::int64_t C, cudaStream_t stream) {
  return with_types(t, g, [&](auto stag, auto gtag) {
    using S = decltype(stag);
    using G = decltype(gtag);
    embedding_backward_wte_kernel<S, G><<<blocks_for(C), kThreads, 0, stream>>>(
        static_cast<G*>(dwte), vocab_first, rows, static_cast<const S*>(dout), tokens, N, C);
    if (cudaError_t e = launched(); e != cudaSuccess) return e;
    embedding_backward_wpe_kernel<S, G><<<blocks_for(T * C), kThreads, 0, stream>>>(
        static_cast<G*>(dwpe), static_cast<const S*>(dout), N, T, C);
    return launched();
  });
}

cudaError_t layernorm_forward(void* out, float* mean, float* rstd, const void* inp, const void* weight,
                              const void* bias, DType t, std::int64_t N, std::int64_t C, cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    layernorm_forward_kernel<S><<<warp_blocks_for(N), kThreads, 0, stream>>>(
        static_cast<S*>(out), mean, rstd, static_cast<const S*>(inp), static_cast<const S*>(weight),
        static_cast<const S*>(bias), N, C);
    return launched();
  });
}

cudaError_t layernorm_backward(void* dinp, void* dweight, void* dbias, DType g, const void* dout, const void* inp,
                               const void* weight, const float* mean, const float* rstd, DType t, std::int64_t N,
                               std::int64_t C, cudaStream_t stream) {
  return with_types(t, g, [&](auto stag, auto gtag) {
    using S = decltype(stag);
    using G = decltype(gtag);
    layernorm_backward_input_kernel<S><<<warp_blocks_for(N), kThreads, 0, stream>>>(
        static_cast<S*>(dinp), static_cast<const S*>(dout), static_cast<const S*>(inp),
        static_cast<const S*>(weight), mean, rstd, N, C);
    if (cudaError_t e = launched(); e != cudaSuccess) return e;
    layernorm_backward_params_kernel<S, G><<<blocks_for(C), kThreads, 0, stream>>>(
        static_cast<G*>(dweight), static_cast<G*>(dbias), static_cast<const S*>(dout), static_cast<const S*>(inp), mean,
        rstd, N, C);
    return launched();
  });
}

cudaError_t bias_broadcast(void* out, const void* bias, DType t, std::int64_t N, std::int64_t OC, bool accumulate,
                           cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    bias_broadcast_kernel<S><<<blocks_for(N * OC), kThreads, 0, stream>>>(
        static_cast<S*>(out), static_cast<const S*>(bias), N, OC, accumulate);
    return launched();
  });
}

cudaError_t bias_backward(void* dbias, DType g, const void* dout, DType t, std::int64_t N, std::int64_t OC,
                          cudaStream_t stream) {
  return with_types(t, g, [&](auto stag, auto gtag) {
    using S = decltype(stag);
    using G = decltype(gtag);
    bias_backward_kernel<S, G><<<blocks_for(OC), kThreads, 0, stream>>>(static_cast<G*>(dbias),
                                                                        static_cast<const S*>(dout), N, OC);
    return launched();
  });
}

cudaError_t gelu_forward(void* out, const void* inp, DType t, std::int64_t n, cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    gelu_forward_kernel<S><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<S*>(out), static_cast<const S*>(inp), n);
    return launched();
  });
}

cudaError_t gelu_backward(void* dinp, const void* inp, const void* dout, DType t, std::int64_t n, cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    gelu_backward_kernel<S><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<S*>(dinp), static_cast<const S*>(inp),
                                                                    static_cast<const S*>(dout), n);
    return launched();
  });
}

cudaError_t add(void* out, const void* a, const void* b, DType t, std::int64_t n, cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    add_kernel<S><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<S*>(out), static_cast<const S*>(a),
                                                          static_cast<const S*>(b), n);
    return launched();
  });
}

cudaError_t softmax_causal_forward(void* att, const void* preatt, DType t, std::int64_t BH, std::int64_t T,
                                   cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    softmax_causal_forward_kernel<S><<<warp_blocks_for(BH * T), kThreads, 0, stream>>>(
        static_cast<S*>(att), static_cast<const S*>(preatt), BH * T, T);
    return launched();
  });
}

cudaError_t softmax_causal_backward(void* dpreatt, const void* att, const void* datt, DType t, std::int64_t BH,
                                    std::int64_t T, cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    softmax_causal_backward_kernel<S><<<warp_blocks_for(BH * T), kThreads, 0, stream>>>(
        static_cast<S*>(dpreatt), static_cast<const S*>(att), static_cast<const S*>(datt), BH * T, T);
    return launched();
  });
}

cudaError_t crossentropy_forward(float* losses, const void* logits, const std::int32_t* targets, DType t,
                                 std::int64_t N, std::int64_t V, cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    crossentropy_forward_kernel<S><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
        losses, static_cast<const S*>(logits), targets, V);
    return launched();
  });
}

cudaError_t crossentropy_backward(void* dlogits, const void* logits, const std::int32_t* targets, float dloss, DType t,
                                  std::int64_t N, std::int64_t V, cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    crossentropy_backward_kernel<S><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
        static_cast<S*>(dlogits), static_cast<const S*>(logits), targets, dloss, V);
    return launched();
  });
}

cudaError_t crossentropy_shard_stats(float* maxv, float* target, const void* logits, const std::int32_t* targets,
                                     DType t, std::int64_t N, std::int64_t Vr, std::int64_t vocab_first,
                                     std::int64_t valid, cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    crossentropy_shard_stats_kernel<S><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
        maxv, target, static_cast<const S*>(logits), targets, Vr, vocab_first, valid);
    return launched();
  });
}

cudaError_t crossentropy_shard_sumexp(float* sumexp, const void* logits, const float* maxv, DType t, std::int64_t N,
                                      std::int64_t Vr, std::int64_t valid, cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    crossentropy_shard_sumexp_kernel<S><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
        sumexp, static_cast<const S*>(logits), maxv, Vr, valid);
    return launched();
  });
}

cudaError_t crossentropy_shard_loss(float* losses, const float* maxv, const float* target, const float* sumexp,
                                    std::int64_t N, cudaStream_t stream) {
  crossentropy_shard_loss_kernel<<<blocks_for(N), kThreads, 0, stream>>>(losses, maxv, target, sumexp, N);
  return launched();
}

cudaError_t crossentropy_shard_backward(void* dlogits, const void* logits, const std::int32_t* targets,
                                        const float* maxv, const float* sumexp, float dloss, DType t, std::int64_t N,
                                        std::int64_t Vr, std::int64_t vocab_first, std::int64_t valid,
                                        cudaStream_t stream) {
  return with_type(t, [&](auto tag) {
    using S = decltype(tag);
    crossentropy_shard_backward_kernel<S><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
        static_cast<S*>(dlogits), static_cast<const S*>(logits), targets, maxv, sumexp, dloss, Vr, vocab_first, valid);
    return launched();
  });
}

cudaError_t accumulate_sum(float* out, const float* x, float scale, std::int64_t n, cudaStream_t stream) {
  accumulate_sum_kernel<<<1, kThreads, 0, stream>>>(out, x, scale, n);
  return launched();
}

}  // namespace strata::kern::cuda::nn
