// Double-precision Adam / AdamW reference with a running rounding-error bound.
#include "cpu_adam/adam_reference.h"

#include <algorithm>
#include <cmath>

namespace strata::cpu_adam {
namespace {

constexpr double kU = 0x1p-24;    // unit roundoff of float, round to nearest
constexpr double kEta = 0x1p-150;  // absolute error bound of a subnormal float result

// Error added by rounding a result of magnitude |x| to float.
double rnd(double x) { return kU * std::fabs(x) + kEta; }

}  // namespace

ReferenceStep::ReferenceStep(const adam::Hyper& h, std::int64_t step, double grad_scale)
    : h_(h), grad_scale_(grad_scale) {
  const double t = static_cast<double>(step);
  const double bc1 = h.bias_correction ? 1.0 - std::pow(h.beta1, t) : 1.0;
  const double bc2 = h.bias_correction ? 1.0 - std::pow(h.beta2, t) : 1.0;
  step_size_ = h.lr / bc1;
  inv_sqrt_bc2_ = 1.0 / std::sqrt(bc2);
  const bool adamw = h.mode == adam::Mode::kAdamW;
  decay_ = adamw ? 1.0 - h.lr * h.weight_decay : 1.0;
  l2_ = adamw ? 0.0 : h.weight_decay;
}

ReferenceElement ReferenceStep::update(double grad, double p, double m, double v) const {
  const double grad_scale = grad_scale_, step_size = step_size_, inv_sqrt_bc2 = inv_sqrt_bc2_;
  const double decay = decay_, l2 = l2_;
  const adam::Hyper& h = h_;
  const double b1 = h.beta1, omb1 = 1.0 - h.beta1, b2 = h.beta2, omb2 = 1.0 - h.beta2;

  // g = grad * grad_scale (+ l2 * p). Constants rounded to float count as one rounding each.
  double g = grad * grad_scale;
  double e_g = 2 * rnd(g);
  if (l2 != 0.0) {
    const double g2 = g + l2 * p;
    e_g += rnd(l2 * p) + rnd(g2);
    g = g2;
  }
  // pd = p * decay
  const double pd = p * decay;
  const double e_pd = 2 * rnd(pd);
  // m1 = fma(omb1, g, b1 * m)
  const double m1 = b1 * m + omb1 * g;
  const double e_m = omb1 * e_g + rnd(omb1 * g) + 2 * rnd(b1 * m) + rnd(m1);
  // v1 = fma(omb2 * g, g, b2 * v)
  const double tg = omb2 * g;
  const double e_t = omb2 * e_g + 2 * rnd(tg);
  const double v1 = b2 * v + tg * g;
  const double e_v = std::fabs(g) * e_t + std::fabs(tg) * e_g + 2 * rnd(b2 * v) + rnd(v1);
  // d = fma(sqrt(v1), inv_sqrt_bc2, eps); sqrt(x + e) - sqrt(x) <= min(e / (2 sqrt x), sqrt e).
  // (e / (2 sqrt x) < sqrt e exactly when e < 4x; otherwise, and for x = 0, the bound is sqrt e.)
  const double s = std::sqrt(std::max(v1, 0.0));
  const double e_s = (e_v < 4 * s * s ? 0.5 * e_v / s : std::sqrt(e_v)) + rnd(s);
  const double d = s * inv_sqrt_bc2 + h.eps;
  const double e_d = e_s * inv_sqrt_bc2 + rnd(s * inv_sqrt_bc2) + rnd(h.eps) + rnd(d);
  // q = m1 / d
  const double inv_d = 1.0 / d;
  const double q = m1 * inv_d;
  const double e_q = (e_m + std::fabs(q) * e_d) * inv_d + rnd(q);
  // p1 = fma(-step_size, q, pd)
  const double upd = step_size * q;
  const double p1 = pd - upd;
  const double e_p = e_pd + step_size * e_q + rnd(upd) + rnd(p1);

  return ReferenceElement{p1, m1, v1, e_p, e_m, e_v};
}

}  // namespace strata::cpu_adam
