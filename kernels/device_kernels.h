// kernels/device_kernels.h — launchers of the CUDA kernels behind CudaDevice's element-wise
// and reduction primitives and its Adam step. Each kernel calls the per-element functions of
// kernels/elementwise_math.h and kernels/adam_math.h, the same ones the host device's OpenMP
// loops call, so the host tests pin down the math these kernels run.
//
// The launchers enqueue on `stream` and return the launch error (cudaGetLastError) without
// synchronising; CudaDevice turns it into a Status. Arguments are trusted: Device's public
// functions have checked devices, bounds, dtypes and counts.
//
// This code compiles for sm_80 and sm_90 in every CUDA build but has not been run on a GPU by
// strata's test suite (the CI machines have none); its tests skip with "no CUDA device".
//
// Thread-safety: launchers may be called from any thread.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/adam_math.h"
#include "strata/dtype.h"

namespace strata::kern::cuda {

// x[i] = value
cudaError_t launch_fill(void* x, DType type, std::size_t n, float value, cudaStream_t stream);
// dst[i] = convert(src[i])
cudaError_t launch_cast(void* dst, DType dst_type, const void* src, DType src_type, std::size_t n,
                        cudaStream_t stream);
// x[i] *= alpha
cudaError_t launch_scale(void* x, DType type, std::size_t n, float alpha, cudaStream_t stream);
// y[i] += alpha * x[i]
cudaError_t launch_axpy(void* y, DType y_type, float alpha, const void* x, DType x_type, std::size_t n,
                        cudaStream_t stream);
// *flag = 1 when any x[i] is inf/NaN (flag untouched otherwise)
cudaError_t launch_check_finite(const void* x, DType type, std::size_t n, float* flag, cudaStream_t stream);
// *out += sum x[i]^2 (block partial sums in fp32, then one atomicAdd per block)
cudaError_t launch_sum_squares(const void* x, DType type, std::size_t n, float* out, cudaStream_t stream);
// One Adam step; params_out may be null (then out_type is ignored).
cudaError_t launch_adam(const adam::Constants& k, float* params, const void* grads, DType grad_type, float* exp_avg,
                        float* exp_avg_sq, void* params_out, DType out_type, std::size_t n, cudaStream_t stream);

}  // namespace strata::kern::cuda
