// The host backend of the nn ops: every op is a host function enqueued on the device stream
// (so it runs in stream order between the device's GEMMs and copies) that works directly on
// the host device's memory with OpenMP loops over kernels/nn_math.h.
//
// Reductions over rows (parameter gradients) run per column, each column summed in row order
// in fp32 and added to the gradient once, so the result does not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/elementwise_math.h"
#include "kernels/nn_math.h"
#include "model/nn_ops.h"

namespace strata::nn {
namespace {

using kern::from_f32;
using kern::to_f32;

// Calls fn with a value of the storage type of `t`.
template <typename F>
void with_type(DType t, F&& fn) {
  switch (t) {
    case DType::kF32: fn(float{}); return;
    case DType::kBF16: fn(kern::Bf16{}); return;
    case DType::kF16: fn(kern::F16{}); return;
  }
}

// Calls fn with values of the activation storage type and of the gradient storage type.
template <typename F>
void with_types(DType act, DType grad, F&& fn) {
  with_type(act, [&](auto a) {
    with_type(grad, [&](auto g) { fn(a, g); });
  });
}

template <typename S>
S* ptr(const DeviceView& v) {
  return static_cast<S*>(v.address());
}
const std::int32_t* ids(const DeviceRange& r) { return static_cast<const std::int32_t*>(r.address()); }

// Columns handled together by one thread in the per-column reductions.
constexpr std::int64_t kColumnBlock = 64;

// Sum of dout over `rows` (fp32, in the order given) added to dst[0..width), for one block of
// columns [c0, c0 + width) of a row-major (., C) matrix.
template <typename S, typename G>
void add_rows_to(G* dst, const S* dout, std::int64_t C, std::int64_t c0, std::int64_t width,
                 const std::int64_t* rows, std::int64_t nrows) {
  float acc[kColumnBlock];
  for (std::int64_t i = 0; i < width; ++i) acc[i] = 0.0f;
  for (std::int64_t k = 0; k < nrows; ++k) {
    const S* row = dout + rows[k] * C + c0;
    for (std::int64_t i = 0; i < width; ++i) acc[i] += to_f32(row[i]);
  }
  for (std::int64_t i = 0; i < width; ++i) dst[i] = from_f32<G>(to_f32(dst[i]) + acc[i]);
}

class HostNnOps final : public NnOps {
 public:
  explicit HostNnOps(Device& device) : NnOps(device) {}
  std::string_view backend() const override { return "host"; }

 protected:
  Status embedding_forward_impl(DeviceView out, DeviceRange tokens, DeviceView wte, std::int64_t vocab_first,
                                DeviceView wpe, std::int64_t N, std::int64_t T, std::int64_t C, Stream& stream) override {
    Status st;
    const std::int64_t rows = static_cast<std::int64_t>(wte.count()) / C;
    with_type(out.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([o = ptr<S>(out), tok = ids(tokens), we = ptr<const S>(wte),
                                    wp = wpe.empty() ? nullptr : ptr<const S>(wpe), vocab_first, rows, N, T, C] {
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N; ++n) {
          const std::int64_t row = static_cast<std::int64_t>(tok[n]) - vocab_first;
          const S* e = row >= 0 && row < rows ? we + row * C : nullptr;
          const S* p = wp != nullptr ? wp + (n % T) * C : nullptr;
          S* y = o + n * C;
          for (std::int64_t i = 0; i < C; ++i) {
            y[i] = from_f32<S>((e != nullptr ? to_f32(e[i]) : 0.0f) + (p != nullptr ? to_f32(p[i]) : 0.0f));
          }
        }
      });
    });
    return st;
  }

  Status embedding_backward_impl(DeviceView dwte, std::int64_t vocab_first, DeviceView dwpe, DeviceView dout,
                                 DeviceRange tokens, std::int64_t N, std::int64_t T, std::int64_t C,
                                 Stream& stream) override {
    Status st;
    const std::int64_t V = static_cast<std::int64_t>(dwte.count()) / C;
    with_types(dout.dtype(), dwte.dtype(), [&](auto stag, auto gtag) {
      using S = decltype(stag);
      using G = decltype(gtag);
      st = stream.launch_host_func([gte = ptr<G>(dwte), gpe = ptr<G>(dwpe), d = ptr<const S>(dout), tok = ids(tokens),
                                    vocab_first, N, T, C, V] {
        // Rows grouped by token id (a counting sort keeps each group in row order), so every
        // token's rows are summed in fp32 by one thread and added to its gradient row once;
        // the tokens of other ranks' rows (row -1) are left out.
        auto row_of = [&](std::int64_t n) {
          const std::int64_t r = static_cast<std::int64_t>(tok[n]) - vocab_first;
          return r >= 0 && r < V ? r : -1;
        };
        std::vector<std::int64_t> start(static_cast<std::size_t>(V) + 1, 0);
        for (std::int64_t n = 0; n < N; ++n) {
          if (row_of(n) >= 0) ++start[static_cast<std::size_t>(row_of(n)) + 1];
        }
        for (std::int64_t v = 0; v < V; ++v) start[v + 1] += start[v];
        std::vector<std::int64_t> order(static_cast<std::size_t>(N));
        std::vector<std::int64_t> fill(start.begin(), start.end() - 1);
        for (std::int64_t n = 0; n < N; ++n) {
          if (row_of(n) >= 0) order[static_cast<std::size_t>(fill[row_of(n)]++)] = n;
        }
        std::vector<std::int64_t> present;
        for (std::int64_t v = 0; v < V; ++v) {
          if (start[v + 1] > start[v]) present.push_back(v);
        }
        const std::int64_t B = N / T;
        const std::int64_t nblk = (C + kColumnBlock - 1) / kColumnBlock;
        const auto np = static_cast<std::int64_t>(present.size());
#pragma omp parallel
        {
#pragma omp for schedule(static) nowait
          for (std::int64_t k = 0; k < np * nblk; ++k) {
            const std::int64_t v = present[k / nblk];
            const std::int64_t c0 = (k % nblk) * kColumnBlock;
            add_rows_to(gte + v * C + c0, d, C, c0, std::min(kColumnBlock, C - c0), order.data() + start[v],
                        start[v + 1] - start[v]);
          }
          std::vector<std::int64_t> rows(static_cast<std::size_t>(B));
#pragma omp for schedule(static)
          for (std::int64_t k = 0; k < T * nblk; ++k) {
            const std::int64_t t = k / nblk;
            const std::int64_t c0 = (k % nblk) * kColumnBlock;
            for (std::int64_t b = 0; b < B; ++b) rows[static_cast<std::size_t>(b)] = b * T + t;
            add_rows_to(gpe + t * C + c0, d, C, c0, std::min(kColumnBlock, C - c0), rows.data(), B);
          }
        }
      });
    });
    return st;
  }

  Status layernorm_forward_impl(DeviceView out, DeviceView mean, DeviceView rstd, DeviceView inp, DeviceView weight,
                                DeviceView bias, std::int64_t N, std::int64_t C, Stream& stream) override {
    Status st;
    with_type(out.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([o = ptr<S>(out), m = ptr<float>(mean), r = ptr<float>(rstd), x = ptr<const S>(inp),
                                    w = ptr<const S>(weight), b = ptr<const S>(bias), N, C] {
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N; ++n) {
          const S* xr = x + n * C;
          float mu, rs;
          nnm::layernorm_stats(xr, static_cast<int>(C), &mu, &rs);
          S* y = o + n * C;
          for (std::int64_t i = 0; i < C; ++i) {
            y[i] = from_f32<S>(nnm::layernorm_out(to_f32(xr[i]), mu, rs, to_f32(w[i]), to_f32(b[i])));
          }
          m[n] = mu;
          r[n] = rs;
        }
      });
    });
    return st;
  }

  Status layernorm_backward_impl(DeviceView dinp, DeviceView dweight, DeviceView dbias, DeviceView dout,
                                 DeviceView inp, DeviceView weight, DeviceView mean, DeviceView rstd, std::int64_t N,
                                 std::int64_t C, Stream& stream) override {
    Status st;
    with_types(dout.dtype(), dweight.dtype(), [&](auto stag, auto gtag) {
      using S = decltype(stag);
      using G = decltype(gtag);
      st = stream.launch_host_func([dx = ptr<S>(dinp), dw = ptr<G>(dweight), db = ptr<G>(dbias), dy = ptr<const S>(dout),
                                    x = ptr<const S>(inp), w = ptr<const S>(weight), m = ptr<const float>(mean),
                                    r = ptr<const float>(rstd), N, C] {
        const std::int64_t nblk = (C + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel
        {
#pragma omp for schedule(static) nowait
          for (std::int64_t n = 0; n < N; ++n) {
            const S* xr = x + n * C;
            const S* dyr = dy + n * C;
            const float mu = m[n], rs = r[n];
            float g_sum = 0.0f, gn_sum = 0.0f;
            for (std::int64_t i = 0; i < C; ++i) {
              const float norm = (to_f32(xr[i]) - mu) * rs;
              const float g = to_f32(w[i]) * to_f32(dyr[i]);
              g_sum += g;
              gn_sum += g * norm;
            }
            const float g_mean = g_sum / static_cast<float>(C);
            const float gn_mean = gn_sum / static_cast<float>(C);
            S* dxr = dx + n * C;
            for (std::int64_t i = 0; i < C; ++i) {
              const float norm = (to_f32(xr[i]) - mu) * rs;
              const float g = to_f32(w[i]) * to_f32(dyr[i]);
              dxr[i] = from_f32<S>(to_f32(dxr[i]) + nnm::layernorm_dinp(g, norm, g_mean, gn_mean, rs));
            }
          }
#pragma omp for schedule(static)
          for (std::int64_t k = 0; k < nblk; ++k) {
            const std::int64_t c0 = k * kColumnBlock;
            const std::int64_t width = std::min(kColumnBlock, C - c0);
            float aw[kColumnBlock], ab[kColumnBlock];
            for (std::int64_t i = 0; i < width; ++i) aw[i] = ab[i] = 0.0f;
            for (std::int64_t n = 0; n < N; ++n) {
              const S* xr = x + n * C + c0;
              const S* dyr = dy + n * C + c0;
              const float mu = m[n], rs = r[n];
              for (std::int64_t i = 0; i < width; ++i) {
                const float d = to_f32(dyr[i]);
                aw[i] += (to_f32(xr[i]) - mu) * rs * d;
                ab[i] += d;
              }
            }
            for (std::int64_t i = 0; i < width; ++i) {
              dw[c0 + i] = from_f32<G>(to_f32(dw[c0 + i]) + aw[i]);
              db[c0 + i] = from_f32<G>(to_f32(db[c0 + i]) + ab[i]);
            }
          }
        }
      });
    });
    return st;
  }

  Status bias_broadcast_impl(DeviceView out, DeviceView bias, std::int64_t N, std::int64_t OC, bool accumulate,
                             Stream& stream) override {
    if (!accumulate) {
      return stream.launch_host_func([o = static_cast<std::byte*>(out.address()), b = static_cast<const std::byte*>(bias.address()),
                                      row = static_cast<std::size_t>(OC) * dtype_size(out.dtype()), N] {
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N; ++n) std::memcpy(o + static_cast<std::size_t>(n) * row, b, row);
      });
    }
    Status st;
    with_type(out.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([o = static_cast<S*>(out.address()), b = static_cast<const S*>(bias.address()), N, OC] {
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N; ++n) {
          for (std::int64_t j = 0; j < OC; ++j) o[n * OC + j] = from_f32<S>(to_f32(o[n * OC + j]) + to_f32(b[j]));
        }
      });
    });
    return st;
  }

  Status bias_backward_impl(DeviceView dbias, DeviceView dout, std::int64_t N, std::int64_t OC,
                            Stream& stream) override {
    Status st;
    with_types(dout.dtype(), dbias.dtype(), [&](auto stag, auto gtag) {
      using S = decltype(stag);
      using G = decltype(gtag);
      st = stream.launch_host_func([db = ptr<G>(dbias), dy = ptr<const S>(dout), N, OC] {
        const std::int64_t nblk = (OC + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
        for (std::int64_t k = 0; k < nblk; ++k) {
          const std::int64_t c0 = k * kColumnBlock;
          const std::int64_t width = std::min(kColumnBlock, OC - c0);
          float acc[kColumnBlock];
          for (std::int64_t i = 0; i < width; ++i) acc[i] = 0.0f;
          for (std::int64_t n = 0; n < N; ++n) {
            const S* row = dy + n * OC + c0;
            for (std::int64_t i = 0; i < width; ++i) acc[i] += to_f32(row[i]);
          }
          for (std::int64_t i = 0; i < width; ++i) db[c0 + i] = from_f32<G>(to_f32(db[c0 + i]) + acc[i]);
        }
      });
    });
    return st;
  }

  Status gelu_forward_impl(DeviceView out, DeviceView inp, Stream& stream) override {
    Status st;
    with_type(out.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([o = ptr<S>(out), x = ptr<const S>(inp), n = static_cast<std::int64_t>(inp.count())] {
#pragma omp parallel for schedule(static)
        for (std::int64_t i = 0; i < n; ++i) o[i] = from_f32<S>(nnm::gelu(to_f32(x[i])));
      });
    });
    return st;
  }

  Status gelu_backward_impl(DeviceView dinp, DeviceView inp, DeviceView dout, Stream& stream) override {
    Status st;
    with_type(inp.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([dx = ptr<S>(dinp), x = ptr<const S>(inp), dy = ptr<const S>(dout),
                                    n = static_cast<std::int64_t>(inp.count())] {
#pragma omp parallel for schedule(static)
        for (std::int64_t i = 0; i < n; ++i) dx[i] = from_f32<S>(nnm::gelu_grad(to_f32(x[i])) * to_f32(dy[i]));
      });
    });
    return st;
  }

  Status add_impl(DeviceView out, DeviceView a, DeviceView b, Stream& stream) override {
    Status st;
    with_type(out.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([o = ptr<S>(out), x = ptr<const S>(a), y = ptr<const S>(b),
                                    n = static_cast<std::int64_t>(a.count())] {
#pragma omp parallel for schedule(static)
        for (std::int64_t i = 0; i < n; ++i) o[i] = from_f32<S>(to_f32(x[i]) + to_f32(y[i]));
      });
    });
    return st;
  }

  Status softmax_causal_forward_impl(DeviceView att, DeviceView preatt, std::int64_t BH, std::int64_t T,
                                     Stream& stream) override {
    Status st;
    with_type(att.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([a = ptr<S>(att), x = ptr<const S>(preatt), rows = BH * T, T] {
#pragma omp parallel for schedule(static)
        for (std::int64_t r = 0; r < rows; ++r) {
          const std::int64_t t = r % T;
          const S* xr = x + r * T;
          S* ar = a + r * T;
          float mx = to_f32(xr[0]);
          for (std::int64_t j = 1; j <= t; ++j) mx = std::max(mx, to_f32(xr[j]));
          float sum = 0.0f;
          for (std::int64_t j = 0; j <= t; ++j) sum += nnm::exp_f(to_f32(xr[j]) - mx);
          const float inv = 1.0f / sum;
          for (std::int64_t j = 0; j <= t; ++j) ar[j] = from_f32<S>(nnm::exp_f(to_f32(xr[j]) - mx) * inv);
          for (std::int64_t j = t + 1; j < T; ++j) ar[j] = from_f32<S>(0.0f);
        }
      });
    });
    return st;
  }

  Status softmax_causal_backward_impl(DeviceView dpreatt, DeviceView att, DeviceView datt, std::int64_t BH,
                                      std::int64_t T, Stream& stream) override {
    Status st;
    with_type(att.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([dx = ptr<S>(dpreatt), a = ptr<const S>(att), da = ptr<const S>(datt), rows = BH * T,
                                    T] {
#pragma omp parallel for schedule(static)
        for (std::int64_t r = 0; r < rows; ++r) {
          const std::int64_t t = r % T;
          const S* ar = a + r * T;
          const S* dar = da + r * T;
          S* dxr = dx + r * T;
          float dot = 0.0f;
          for (std::int64_t j = 0; j <= t; ++j) dot += to_f32(ar[j]) * to_f32(dar[j]);
          for (std::int64_t j = 0; j <= t; ++j) dxr[j] = from_f32<S>(nnm::softmax_grad(to_f32(ar[j]), to_f32(dar[j]), dot));
          for (std::int64_t j = t + 1; j < T; ++j) dxr[j] = from_f32<S>(0.0f);
        }
      });
    });
    return st;
  }

  Status crossentropy_forward_impl(DeviceView losses, DeviceView logits, DeviceRange targets, std::int64_t N,
                                   std::int64_t V, Stream& stream) override {
    Status st;
    with_type(logits.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([out = ptr<float>(losses), l = ptr<const S>(logits), y = ids(targets), N, V] {
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N; ++n) {
          const S* lr = l + n * V;
          float mx = to_f32(lr[0]);
          for (std::int64_t j = 1; j < V; ++j) mx = std::max(mx, to_f32(lr[j]));
          float sum = 0.0f;
          for (std::int64_t j = 0; j < V; ++j) sum += nnm::exp_f(to_f32(lr[j]) - mx);
          out[n] = nnm::crossentropy_loss(to_f32(lr[y[n]]), mx, sum);
        }
      });
    });
    return st;
  }

  Status crossentropy_backward_impl(DeviceView dlogits, DeviceView logits, DeviceRange targets, float dloss,
                                    std::int64_t N, std::int64_t V, Stream& stream) override {
    Status st;
    with_type(logits.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([dl = ptr<S>(dlogits), l = ptr<const S>(logits), y = ids(targets), dloss, N, V] {
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N; ++n) {
          const S* lr = l + n * V;
          S* dlr = dl + n * V;
          float mx = to_f32(lr[0]);
          for (std::int64_t j = 1; j < V; ++j) mx = std::max(mx, to_f32(lr[j]));
          float sum = 0.0f;
          for (std::int64_t j = 0; j < V; ++j) sum += nnm::exp_f(to_f32(lr[j]) - mx);
          const float inv = 1.0f / sum;
          const std::int64_t target = y[n];
          for (std::int64_t j = 0; j < V; ++j) {
            dlr[j] = from_f32<S>(nnm::crossentropy_dlogit(to_f32(lr[j]), mx, inv, j == target, dloss));
          }
        }
      });
    });
    return st;
  }

  Status crossentropy_shard_stats_impl(DeviceView maxv, DeviceView target, DeviceView logits, DeviceRange targets,
                                      std::int64_t N, std::int64_t Vr, std::int64_t vocab_first, std::int64_t valid,
                                      Stream& stream) override {
    Status st;
    with_type(logits.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([mx = ptr<float>(maxv), tg = ptr<float>(target), l = ptr<const S>(logits),
                                    y = ids(targets), N, Vr, vocab_first, valid] {
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N; ++n) {
          const S* lr = l + n * Vr;
          float m = -std::numeric_limits<float>::infinity();
          for (std::int64_t j = 0; j < valid; ++j) m = std::max(m, to_f32(lr[j]));
          const std::int64_t t = static_cast<std::int64_t>(y[n]) - vocab_first;
          mx[n] = m;
          tg[n] = t >= 0 && t < valid ? to_f32(lr[t]) : 0.0f;
        }
      });
    });
    return st;
  }

  Status crossentropy_shard_sumexp_impl(DeviceView sumexp, DeviceView logits, DeviceView maxv, std::int64_t N,
                                        std::int64_t Vr, std::int64_t valid, Stream& stream) override {
    Status st;
    with_type(logits.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([se = ptr<float>(sumexp), l = ptr<const S>(logits), mx = ptr<const float>(maxv), N,
                                    Vr, valid] {
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N; ++n) {
          const S* lr = l + n * Vr;
          float sum = 0.0f;
          for (std::int64_t j = 0; j < valid; ++j) sum += nnm::exp_f(to_f32(lr[j]) - mx[n]);
          se[n] = sum;
        }
      });
    });
    return st;
  }

  Status crossentropy_shard_loss_impl(DeviceView losses, DeviceView maxv, DeviceView target, DeviceView sumexp,
                                      std::int64_t N, Stream& stream) override {
    return stream.launch_host_func([out = ptr<float>(losses), mx = ptr<const float>(maxv), tg = ptr<const float>(target),
                                    se = ptr<const float>(sumexp), N] {
      for (std::int64_t n = 0; n < N; ++n) out[n] = nnm::crossentropy_loss(tg[n], mx[n], se[n]);
    });
  }

  Status crossentropy_shard_backward_impl(DeviceView dlogits, DeviceView logits, DeviceRange targets, DeviceView maxv,
                                          DeviceView sumexp, float dloss, std::int64_t N, std::int64_t Vr,
                                          std::int64_t vocab_first, std::int64_t valid, Stream& stream) override {
    Status st;
    with_type(logits.dtype(), [&](auto tag) {
      using S = decltype(tag);
      st = stream.launch_host_func([dl = ptr<S>(dlogits), l = ptr<const S>(logits), y = ids(targets),
                                    mx = ptr<const float>(maxv), se = ptr<const float>(sumexp), dloss, N, Vr,
                                    vocab_first, valid] {
#pragma omp parallel for schedule(static)
        for (std::int64_t n = 0; n < N; ++n) {
          const S* lr = l + n * Vr;
          S* dlr = dl + n * Vr;
          const float inv = 1.0f / se[n];
          const std::int64_t t = static_cast<std::int64_t>(y[n]) - vocab_first;
          for (std::int64_t j = 0; j < Vr; ++j) {
            dlr[j] = from_f32<S>(j < valid ? nnm::crossentropy_dlogit(to_f32(lr[j]), mx[n], inv, j == t, dloss) : 0.0f);
          }
        }
      });
    });
    return st;
  }

  Status accumulate_sum_impl(DeviceView out, DeviceView x, float scale, Stream& stream) override {
    return stream.launch_host_func([o = ptr<float>(out), v = ptr<const float>(x), n = x.count(), scale] {
      float sum = 0.0f;
      for (std::size_t i = 0; i < n; ++i) sum += v[i];
      o[0] += scale * sum;
    });
  }
};

}  // namespace

Result<std::unique_ptr<NnOps>> make_host_nn_ops(Device& device) {
  if (!device.info().host_addressable) {
    return failed_precondition("nn ops: the host kernels need host-addressable device memory, and device '" +
                               device.info().name + "' does not have it");
  }
  return std::unique_ptr<NnOps>(new HostNnOps(device));
}

}  // namespace strata::nn
