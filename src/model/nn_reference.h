// src/model/nn_reference.h — plain scalar references in double precision for the nn ops and
// for a whole GPT-2 forward pass, against which the tests check every nn backend and every
// layer (outputs directly; gradients through central finite differences of these forwards).
// Written for clarity, not speed: one loop nest per formula, nothing shared with the kernels
// except the formulas themselves (kernels/nn_math.h states them).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "strata/profile.h"

namespace strata::nn::ref {

using Vec = std::vector<double>;

// out: (N, C) = wte[tokens[n]] + wpe[n % T]
Vec embedding(std::span<const std::int32_t> tokens, const Vec& wte, const Vec& wpe, std::int64_t N, std::int64_t T,
              std::int64_t C);
// dwte, dwpe (accumulated) from dout: (N, C)
void embedding_backward(Vec& dwte, Vec& dwpe, const Vec& dout, std::span<const std::int32_t> tokens, std::int64_t N,
                        std::int64_t T, std::int64_t C);

// out: (N, C); mean, rstd: (N)
Vec layernorm(const Vec& x, const Vec& w, const Vec& b, std::int64_t N, std::int64_t C, Vec* mean = nullptr,
              Vec* rstd = nullptr);
// dx (accumulated), dw, db (accumulated) — the closed form, for checking a backend's bf16/fp16
// backward (the fp32 path is checked against finite differences of layernorm()).
void layernorm_backward(Vec& dx, Vec& dw, Vec& db, const Vec& dout, const Vec& x, const Vec& w, std::int64_t N,
                        std::int64_t C);

double gelu(double x);
double gelu_grad(double x);

// att: (BH, T, T) causal softmax of preatt (zeros above the diagonal)
Vec softmax_causal(const Vec& preatt, std::int64_t BH, std::int64_t T);
// dpreatt from att and datt
Vec softmax_causal_backward(const Vec& att, const Vec& datt, std::int64_t BH, std::int64_t T);

// losses: (N)
Vec crossentropy(const Vec& logits, std::span<const std::int32_t> targets, std::int64_t N, std::int64_t V);
// dlogits: (N, V) = (softmax - onehot) * dloss
Vec crossentropy_backward(const Vec& logits, std::span<const std::int32_t> targets, double dloss, std::int64_t N,
                          std::int64_t V);

// C: (M, N) = A (M, K) @ B (K, N), row-major, no transposes.
Vec matmul(const Vec& a, const Vec& b, std::int64_t M, std::int64_t N, std::int64_t K);
// y: (N, out) = x (N, in) @ w (in, out) + b
Vec linear(const Vec& x, const Vec& w, const Vec& b, std::int64_t N, std::int64_t in, std::int64_t out);

// The causal multi-head attention core: y: (B, T, C) from qkv: (B, T, 3C).
Vec attention(const Vec& qkv, std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t NH);

// GPT-2 parameters by Hugging Face name, as doubles in the model's layouts.
using Params = std::map<std::string, Vec>;

// One block "h.<layer>": out: (B, T, C) from x: (B, T, C).
Vec block(const Params& p, int layer, const Vec& x, std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t NH);

// Mean cross-entropy of the whole model on tokens/targets: (B, T).
double gpt_loss(const Params& p, const ModelDims& dims, std::span<const std::int32_t> tokens,
                std::span<const std::int32_t> targets, std::int64_t B);

}  // namespace strata::nn::ref
