// kernels/nn_math.h — the per-element and per-row math of the GPT layers (LayerNorm, GELU
// with the tanh approximation, causal softmax, cross-entropy), written once as host+device
// functions. The host nn backend (src/model/nn_ops_host.cc, OpenMP over rows) and the CUDA
// kernels (kernels/nn_kernels.cu) call exactly these functions, so both backends compute the
// same formula per element; only the order of a row's additions (and the libm behind
// expf/logf/sqrtf) may differ between them.
//
// Everything computes in fp32 whatever the storage type (fp32, bf16, fp16; load and store
// through kernels/elementwise_math.h). Row statistics (LayerNorm mean and 1/std) are kept in
// fp32 and are inputs of the backward pass, as in llm.c.
//
// The formulas, per row of C (LayerNorm), T (softmax) or V (cross-entropy) elements:
//   LayerNorm    mean = sum(x)/C, var = sum((x-mean)^2)/C, rstd = 1/sqrt(var + 1e-5)
//                out_i = (x_i - mean) * rstd * w_i + b_i
//     backward   n_i = (x_i - mean) * rstd, g_i = w_i * dout_i
//                dx_i += (g_i - mean(g) - n_i * mean(g * n)) * rstd
//                dw_i += n_i * dout_i, db_i += dout_i
//   GELU         0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))      (GPT-2's approximation)
//   causal softmax over the first i+1 entries of row i (the rest are 0):
//                a_j = exp(x_j - max) / sum_k exp(x_k - max)
//     backward   dx_j = a_j (da_j - sum_k a_k da_k)
//   cross-entropy with target y:   loss = log(sum_j exp(l_j - max)) + max - l_y
//     backward   dl_j = (p_j - [j == y]) * dloss,  p_j = exp(l_j - max) / sum
//
// Thread-safety: pure functions.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/elementwise_math.h"
#include "kernels/numeric.h"

namespace strata::nnm {

// LayerNorm epsilon of GPT-2 (layer_norm_epsilon in the Hugging Face config).
constexpr float kLayerNormEps = 1e-5f;

// sqrt(2 / pi), the GELU tanh approximation's constant.
constexpr float kGeluScale = 0.7978845608028654f;
constexpr float kGeluCubic = 0.044715f;

STRATA_HD float exp_f(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return std::exp(x);
#endif
}

STRATA_HD float log_f(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  return std::log(x);
#endif
}

// tanh(x) = 1 - 2 / (exp(2x) + 1): one exp instead of libm's tanhf, which costs three to four
// times as much on the host. Its error is a few fp32 ulps of 1 in absolute terms, which is all
// that GELU's 1 + tanh (and the gradient's 1 - tanh^2) can resolve anyway; it saturates to
// exactly +-1 and propagates NaN.
STRATA_HD float tanh_f(float x) { return 1.0f - 2.0f / (exp_f(2.0f * x) + 1.0f); }

STRATA_HD float sqrt_f(float x) {
#if defined(__CUDA_ARCH__)
  return sqrtf(x);
#else
  return std::sqrt(x);
#endif
}

// ---- GELU (tanh approximation) ----

STRATA_HD float gelu(float x) {
  const float cube = kGeluCubic * x * x * x;
  return 0.5f * x * (1.0f + tanh_f(kGeluScale * (x + cube)));
}

// d gelu(x) / dx
STRATA_HD float gelu_grad(float x) {
  const float cube = kGeluCubic * x * x * x;
  const float t = tanh_f(kGeluScale * (x + cube));
  const float sech2 = 1.0f - t * t;
  return 0.5f * (1.0f + t) + 0.5f * x * sech2 * kGeluScale * (1.0f + 3.0f * kGeluCubic * x * x);
}

// ---- LayerNorm ----

// 1 / sqrt(var + eps) from the biased variance of a row.
STRATA_HD float layernorm_rstd(float var) { return 1.0f / sqrt_f(var + kLayerNormEps); }

STRATA_HD float layernorm_out(float x, float mean, float rstd, float w, float b) {
  return (x - mean) * rstd * w + b;
}

// The input gradient of one element, given the row means of g = w*dout and of g*n.
STRATA_HD float layernorm_dinp(float g, float norm, float g_mean, float gn_mean, float rstd) {
  return (g - g_mean - norm * gn_mean) * rstd;
}

// Mean and rstd of a row of C elements (two passes: the mean, then the centred squares).
template <typename T>
STRATA_HD void layernorm_stats(const T* x, int C, float* mean_out, float* rstd_out) {
  float sum = 0.0f;
  for (int i = 0; i < C; ++i) sum += kern::to_f32(x[i]);
  const float mean = sum / static_cast<float>(C);
  float sq = 0.0f;
  for (int i = 0; i < C; ++i) {
    const float d = kern::to_f32(x[i]) - mean;
    sq += d * d;
  }
  *mean_out = mean;
  *rstd_out = layernorm_rstd(sq / static_cast<float>(C));
}

// ---- causal softmax ----

STRATA_HD float softmax_grad(float a, float da, float dot) { return a * (da - dot); }

// ---- cross-entropy ----

STRATA_HD float crossentropy_loss(float logit_target, float max, float sum_exp) {
  return log_f(sum_exp) + max - logit_target;
}

STRATA_HD float crossentropy_dlogit(float logit, float max, float inv_sum, bool is_target, float dloss) {
  const float p = exp_f(logit - max) * inv_sum;
  return (p - (is_target ? 1.0f : 0.0f)) * dloss;
}

}  // namespace strata::nnm
