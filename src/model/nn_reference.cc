// Double-precision scalar references of nn_reference.h.
#include "model/nn_reference.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace strata::nn::ref {

Vec embedding(std::span<const std::int32_t> tokens, const Vec& wte, const Vec& wpe, std::int64_t N, std::int64_t T,
              std::int64_t C) {
  Vec out(static_cast<std::size_t>(N * C));
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t i = 0; i < C; ++i) {
      out[n * C + i] = wte[tokens[n] * C + i] + wpe[(n % T) * C + i];
    }
  }
  return out;
}

void embedding_backward(Vec& dwte, Vec& dwpe, const Vec& dout, std::span<const std::int32_t> tokens, std::int64_t N,
                        std::int64_t T, std::int64_t C) {
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t i = 0; i < C; ++i) {
      dwte[tokens[n] * C + i] += dout[n * C + i];
      dwpe[(n % T) * C + i] += dout[n * C + i];
    }
  }
}

Vec layernorm(const Vec& x, const Vec& w, const Vec& b, std::int64_t N, std::int64_t C, Vec* mean, Vec* rstd) {
  Vec out(static_cast<std::size_t>(N * C));
  if (mean) mean->assign(static_cast<std::size_t>(N), 0.0);
  if (rstd) rstd->assign(static_cast<std::size_t>(N), 0.0);
  for (std::int64_t n = 0; n < N; ++n) {
    double m = 0;
    for (std::int64_t i = 0; i < C; ++i) m += x[n * C + i];
    m /= static_cast<double>(C);
    double v = 0;
    for (std::int64_t i = 0; i < C; ++i) v += (x[n * C + i] - m) * (x[n * C + i] - m);
    v /= static_cast<double>(C);
    const double r = 1.0 / std::sqrt(v + 1e-5);
    for (std::int64_t i = 0; i < C; ++i) out[n * C + i] = (x[n * C + i] - m) * r * w[i] + b[i];
    if (mean) (*mean)[n] = m;
    if (rstd) (*rstd)[n] = r;
  }
  return out;
}

void layernorm_backward(Vec& dx, Vec& dw, Vec& db, const Vec& dout, const Vec& x, const Vec& w, std::int64_t N,
                        std::int64_t C) {
  Vec mean, rstd;
  layernorm(x, w, Vec(static_cast<std::size_t>(C), 0.0), N, C, &mean, &rstd);
  for (std::int64_t n = 0; n < N; ++n) {
    double gm = 0, gnm = 0;
    for (std::int64_t i = 0; i < C; ++i) {
      const double norm = (x[n * C + i] - mean[n]) * rstd[n];
      const double g = w[i] * dout[n * C + i];
      gm += g;
      gnm += g * norm;
    }
    gm /= static_cast<double>(C);
    gnm /= static_cast<double>(C);
    for (std::int64_t i = 0; i < C; ++i) {
      const double norm = (x[n * C + i] - mean[n]) * rstd[n];
      const double g = w[i] * dout[n * C + i];
      dx[n * C + i] += (g - gm - norm * gnm) * rstd[n];
      dw[i] += norm * dout[n * C + i];
      db[i] += dout[n * C + i];
    }
  }
}

double gelu(double x) {
  const double s = std::sqrt(2.0 / std::numbers::pi);
  return 0.5 * x * (1.0 + std::tanh(s * (x + 0.044715 * x * x * x)));
}

double gelu_grad(double x) {
  const double s = std::sqrt(2.0 / std::numbers::pi);
  const double t = std::tanh(s * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * s * (1.0 + 3.0 * 0.044715 * x * x);
}

Vec softmax_causal(const Vec& preatt, std::int64_t BH, std::int64_t T) {
  Vec att(preatt.size(), 0.0);
  for (std::int64_t r = 0; r < BH * T; ++r) {
    const std::int64_t t = r % T;
    double mx = -INFINITY;
    for (std::int64_t j = 0; j <= t; ++j) mx = std::max(mx, preatt[r * T + j]);
    double sum = 0;
    for (std::int64_t j = 0; j <= t; ++j) sum += std::exp(preatt[r * T + j] - mx);
    for (std::int64_t j = 0; j <= t; ++j) att[r * T + j] = std::exp(preatt[r * T + j] - mx) / sum;
  }
  return att;
}

Vec softmax_causal_backward(const Vec& att, const Vec& datt, std::int64_t BH, std::int64_t T) {
  Vec d(att.size(), 0.0);
  for (std::int64_t r = 0; r < BH * T; ++r) {
    const std::int64_t t = r % T;
    double dot = 0;
    for (std::int64_t j = 0; j <= t; ++j) dot += att[r * T + j] * datt[r * T + j];
    for (std::int64_t j = 0; j <= t; ++j) d[r * T + j] = att[r * T + j] * (datt[r * T + j] - dot);
  }
  return d;
}

Vec crossentropy(const Vec& logits, std::span<const std::int32_t> targets, std::int64_t N, std::int64_t V) {
  Vec losses(static_cast<std::size_t>(N));
  for (std::int64_t n = 0; n < N; ++n) {
    double mx = -INFINITY;
    for (std::int64_t j = 0; j < V; ++j) mx = std::max(mx, logits[n * V + j]);
    double sum = 0;
    for (std::int64_t j = 0; j < V; ++j) sum += std::exp(logits[n * V + j] - mx);
    losses[n] = std::log(sum) + mx - logits[n * V + targets[n]];
  }
  return losses;
}

Vec crossentropy_backward(const Vec& logits, std::span<const std::int32_t> targets, double dloss, std::int64_t N,
                          std::int64_t V) {
  Vec d(static_cast<std::size_t>(N * V));
  for (std::int64_t n = 0; n < N; ++n) {
    double mx = -INFINITY;
    for (std::int64_t j = 0; j < V; ++j) mx = std::max(mx, logits[n * V + j]);
    double sum = 0;
    for (std::int64_t j = 0; j < V; ++j) sum += std::exp(logits[n * V + j] - mx);
    for (std::int64_t j = 0; j < V; ++j) {
      d[n * V + j] = (std::exp(logits[n * V + j] - mx) / sum - (j == targets[n] ? 1.0 : 0.0)) * dloss;
    }
  }
  return d;
}

Vec matmul(const Vec& a, const Vec& b, std::int64_t M, std::int64_t N, std::int64_t K) {
  Vec c(static_cast<std::size_t>(M * N), 0.0);
  for (std::int64_t i = 0; i < M; ++i) {
    for (std::int64_t k = 0; k < K; ++k) {
      const double av = a[i * K + k];
      for (std::int64_t j = 0; j < N; ++j) c[i * N + j] += av * b[k * N + j];
    }
  }
  return c;
}

Vec linear(const Vec& x, const Vec& w, const Vec& b, std::int64_t N, std::int64_t in, std::int64_t out) {
  Vec y = matmul(x, w, N, out, in);
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t j = 0; j < out; ++j) y[n * out + j] += b[j];
  }
  return y;
}

Vec attention(const Vec& qkv, std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t NH) {
  const std::int64_t hs = C / NH;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  Vec y(static_cast<std::size_t>(B * T * C), 0.0);
  Vec pre(static_cast<std::size_t>(T * T));
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < NH; ++h) {
      for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t s = 0; s < T; ++s) {
          double dot = 0;
          for (std::int64_t d = 0; d < hs; ++d) {
            dot += qkv[(b * T + t) * 3 * C + h * hs + d] * qkv[(b * T + s) * 3 * C + C + h * hs + d];
          }
          pre[t * T + s] = dot * scale;
        }
      }
      const Vec att = softmax_causal(pre, 1, T);
      for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t d = 0; d < hs; ++d) {
          double acc = 0;
          for (std::int64_t s = 0; s <= t; ++s) acc += att[t * T + s] * qkv[(b * T + s) * 3 * C + 2 * C + h * hs + d];
          y[(b * T + t) * C + h * hs + d] = acc;
        }
      }
    }
  }
  return y;
}

Vec block(const Params& p, int layer, const Vec& x, std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t NH) {
  const std::string h = "h." + std::to_string(layer) + ".";
  auto P = [&](const std::string& n) -> const Vec& { return p.at(h + n); };
  const std::int64_t N = B * T;
  const Vec ln1 = layernorm(x, P("ln_1.weight"), P("ln_1.bias"), N, C);
  const Vec qkv = linear(ln1, P("attn.c_attn.weight"), P("attn.c_attn.bias"), N, C, 3 * C);
  const Vec atty = attention(qkv, B, T, C, NH);
  Vec res2 = linear(atty, P("attn.c_proj.weight"), P("attn.c_proj.bias"), N, C, C);
  for (std::size_t i = 0; i < res2.size(); ++i) res2[i] += x[i];
  const Vec ln2 = layernorm(res2, P("ln_2.weight"), P("ln_2.bias"), N, C);
  Vec fch = linear(ln2, P("mlp.c_fc.weight"), P("mlp.c_fc.bias"), N, C, 4 * C);
  for (double& v : fch) v = gelu(v);
  Vec out = linear(fch, P("mlp.c_proj.weight"), P("mlp.c_proj.bias"), N, 4 * C, C);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] += res2[i];
  return out;
}

double gpt_loss(const Params& p, const ModelDims& d, std::span<const std::int32_t> tokens,
                std::span<const std::int32_t> targets, std::int64_t B) {
  const std::int64_t T = d.seq_len, C = d.n_embd, V = d.vocab, N = B * T;
  Vec x = embedding(tokens, p.at("wte.weight"), p.at("wpe.weight"), N, T, C);
  for (int l = 0; l < d.n_layer; ++l) x = block(p, l, x, B, T, C, d.n_head);
  const Vec xf = layernorm(x, p.at("ln_f.weight"), p.at("ln_f.bias"), N, C);
  // logits = xf @ wte^T
  const Vec& wte = p.at("wte.weight");
  Vec logits(static_cast<std::size_t>(N * V), 0.0);
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t v = 0; v < V; ++v) {
      double acc = 0;
      for (std::int64_t i = 0; i < C; ++i) acc += xf[n * C + i] * wte[v * C + i];
      logits[n * V + v] = acc;
    }
  }
  const Vec losses = crossentropy(logits, targets, N, V);
  double sum = 0;
  for (double l : losses) sum += l;
  return sum / static_cast<double>(N);
}

}  // namespace strata::nn::ref
