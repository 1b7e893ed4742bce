// CUDA kernels of CudaDevice: grid-stride loops over the per-element functions shared with the
// host device (kernels/elementwise_math.h, kernels/adam_math.h). See device_kernels.h.
#include "kernels/device_kernels.h"

#include <algorithm>
#include <cstdint>

#include "kernels/elementwise_math.h"

namespace strata::kern::cuda {
namespace {

constexpr int kThreads = 256;
// Enough blocks to fill an H100 several times over; grid-stride loops cover the rest.
constexpr std::size_t kMaxBlocks = 4096;

unsigned blocks_for(std::size_t n) {
  const std::size_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<std::size_t>(std::max<std::size_t>(b, 1), kMaxBlocks));
}

__device__ __forceinline__ std::size_t first_index() {
  return static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ std::size_t grid_stride() { return static_cast<std::size_t>(gridDim.x) * blockDim.x; }

// Calls fn with a value of the storage type of `t` (host side, to pick a kernel instance).
template <typename F>
cudaError_t with_type(DType t, F&& fn) {
  switch (t) {
    case DType::kF32: return fn(float{});
    case DType::kBF16: return fn(Bf16{});
    case DType::kF16: return fn(F16{});
  }
  return cudaErrorInvalidValue;
}

template <typename T>
__global__ void fill_kernel(T* x, std::size_t n, T value) {
  for (std::size_t i = first_index(); i < n; i += grid_stride()) x[i] = value;
}

template <typename D, typename S>
__global__ void cast_kernel(D* dst, const S* src, std::size_t n) {
  for (std::size_t i = first_index(); i < n; i += grid_stride()) dst[i] = from_f32<D>(to_f32(src[i]));
}

template <typename T>
__global__ void scale_kernel(T* x, std::size_t n, float alpha) {
  for (std::size_t i = first_index(); i < n; i += grid_stride()) x[i] = from_f32<T>(scale_elem(to_f32(x[i]), alpha));
}

template <typename Y, typename X>
__global__ void axpy_kernel(Y* y, float alpha, const X* x, std::size_t n) {
  for (std::size_t i = first_index(); i < n; i += grid_stride()) {
    y[i] = from_f32<Y>(axpy_elem(to_f32(y[i]), alpha, to_f32(x[i])));
  }
}

template <typename T>
__global__ void check_finite_kernel(const T* x, std::size_t n, float* flag) {
  bool bad = false;
  for (std::size_t i = first_index(); i < n; i += grid_stride()) bad = bad || is_nonfinite(to_f32(x[i]));
  // Every writer stores the same value, so the race is benign; most threads write nothing.
  if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1.0f;
}

template <typename T>
__global__ void sum_squares_kernel(const T* x, std::size_t n, float* out) {
  float sum = 0.0f;
  for (std::size_t i = first_index(); i < n; i += grid_stride()) sum = add_rn(sum, square_elem(to_f32(x[i])));
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  __shared__ float warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    sum = lane < kThreads / 32 ? warp_sums[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    if (lane == 0) atomicAdd(out, sum);
  }
}

template <typename G>
__global__ void adam_kernel(adam::Constants k, float* p, const G* g, float* m, float* v, std::size_t n) {
  for (std::size_t i = first_index(); i < n; i += grid_stride()) {
    float pi = p[i], mi = m[i], vi = v[i];
    adam::update(k, to_f32(g[i]), pi, mi, vi);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

template <typename G, typename O>
__global__ void adam_copy_kernel(adam::Constants k, float* p, const G* g, float* m, float* v, O* out, std::size_t n) {
  for (std::size_t i = first_index(); i < n; i += grid_stride()) {
    float pi = p[i], mi = m[i], vi = v[i];
    adam::update(k, to_f32(g[i]), pi, mi, vi);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    out[i] = from_f32<O>(pi);
  }
}

}  // namespace

cudaError_t launch_fill(void* x, DType type, std::size_t n, float value, cudaStream_t stream) {
  return with_type(type, [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<T*>(x), n, from_f32<T>(value));
    return cudaGetLastError();
  });
}

cudaError_t launch_cast(void* dst, DType dst_type, const void* src, DType src_type, std::size_t n,
                        cudaStream_t stream) {
  return with_type(dst_type, [&](auto dtag) {
    using D = decltype(dtag);
    return with_type(src_type, [&](auto stag) {
      using S = decltype(stag);
      cast_kernel<D, S><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<D*>(dst), static_cast<const S*>(src), n);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_scale(void* x, DType type, std::size_t n, float alpha, cudaStream_t stream) {
  return with_type(type, [&](auto tag) {
    using T = decltype(tag);
    scale_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<T*>(x), n, alpha);
    return cudaGetLastError();
  });
}

cudaError_t launch_axpy(void* y, DType y_type, float alpha, const void* x, DType x_type, std::size_t n,
                        cudaStream_t stream) {
  return with_type(y_type, [&](auto ytag) {
    using Y = decltype(ytag);
    return with_type(x_type, [&](auto xtag) {
      using X = decltype(xtag);
      axpy_kernel<Y, X><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<Y*>(y), alpha, static_cast<const X*>(x), n);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_check_finite(const void* x, DType type, std::size_t n, float* flag, cudaStream_t stream) {
  return with_type(type, [&](auto tag) {
    using T = decltype(tag);
    check_finite_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const T*>(x), n, flag);
    return cudaGetLastError();
  });
}

cudaError_t launch_sum_squares(const void* x, DType type, std::size_t n, float* out, cudaStream_t stream) {
  return with_type(type, [&](auto tag) {
    using T = decltype(tag);
    sum_squares_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const T*>(x), n, out);
    return cudaGetLastError();
  });
}

cudaError_t launch_adam(const adam::Constants& k, float* params, const void* grads, DType grad_type, float* exp_avg,
                        float* exp_avg_sq, void* params_out, DType out_type, std::size_t n, cudaStream_t stream) {
  return with_type(grad_type, [&](auto gtag) {
    using G = decltype(gtag);
    const G* g = static_cast<const G*>(grads);
    if (params_out == nullptr) {
      adam_kernel<G><<<blocks_for(n), kThreads, 0, stream>>>(k, params, g, exp_avg, exp_avg_sq, n);
      return cudaGetLastError();
    }
    return with_type(out_type, [&](auto otag) {
      using O = decltype(otag);
      adam_copy_kernel<G, O><<<blocks_for(n), kThreads, 0, stream>>>(k, params, g, exp_avg, exp_avg_sq,
                                                                     static_cast<O*>(params_out), n);
      return cudaGetLastError();
    });
  });
}

}  // namespace strata::kern::cuda
