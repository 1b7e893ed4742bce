// Tests of kernels/adam_math.h against closed forms of torch.optim.Adam / AdamW.
#include "kernels/adam_math.h"

#include <cmath>
#include <cstdint>
#include <string>

#include <gtest/gtest.h>

namespace strata::adam {
namespace {

// Relative closeness in float ulps of the expected magnitude.
::testing::AssertionResult near_ulps(double got, double want, double ulps, double scale) {
  const double tol = ulps * std::ldexp(1.0, -24) * scale;
  if (std::fabs(got - want) <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << " want " << want << " (tolerance " << tol << ")";
}

// With bias correction, step 1 gives m_hat = g and v_hat = g^2, so AdamW moves every weight
// by lr * g / (|g| + eps) after the decoupled decay: p1 = p (1 - lr wd) - lr g / (|g| + eps).
TEST(AdamMath, FirstStepAdamWIsSignLikeUpdateAfterDecay) {
  Hyper h;
  h.lr = 1e-2;
  h.weight_decay = 0.1;
  h.mode = Mode::kAdamW;
  const Constants k = make_constants(h, 1, 1.0);
  for (float g : {0.5f, -3.0f, 1e-7f, -2e-9f, 0.0f}) {
    float p = 0.75f, m = 0.0f, v = 0.0f;
    update(k, g, p, m, v);
    const double want = 0.75 * (1 - 1e-2 * 0.1) - 1e-2 * g / (std::fabs(g) + 1e-8);
    EXPECT_TRUE(near_ulps(p, want, 8, 1.0)) << "g=" << g;
    EXPECT_TRUE(near_ulps(m, 0.1 * g, 4, std::fabs(g))) << g;
    EXPECT_TRUE(near_ulps(v, 0.001 * double(g) * g, 8, double(g) * g)) << g;
  }
}

// Adam (L2): the decay is added to the gradient first: g' = g + wd p, then the same.
TEST(AdamMath, FirstStepAdamAddsL2ToGradient) {
  Hyper h;
  h.lr = 1e-3;
  h.weight_decay = 0.5;
  h.mode = Mode::kAdam;
  const Constants k = make_constants(h, 1, 1.0);
  float p = 2.0f, m = 0.0f, v = 0.0f;
  update(k, 0.25f, p, m, v);
  const double g = 0.25 + 0.5 * 2.0;
  EXPECT_TRUE(near_ulps(p, 2.0 - 1e-3 * g / (g + 1e-8), 8, 2.0));
  EXPECT_TRUE(near_ulps(m, 0.1 * g, 4, g));
}

// A constant gradient keeps m_hat = g and v_hat = g^2 at every step, so each step moves
// the weight by exactly lr g / (|g| + eps) (no decay): a check of both bias corrections.
TEST(AdamMath, ConstantGradientMovesByLrPerStep) {
  Hyper h;
  h.lr = 1e-3;
  h.beta1 = 0.9;
  h.beta2 = 0.999;
  h.eps = 1e-8;
  for (Mode mode : {Mode::kAdam, Mode::kAdamW}) {
    h.mode = mode;
    float p = 1.0f, m = 0.0f, v = 0.0f;
    const float g = -0.3f;
    for (int t = 1; t <= 50; ++t) update(make_constants(h, t, 1.0), g, p, m, v);
    EXPECT_TRUE(near_ulps(p, 1.0 + 50 * 1e-3 * 0.3 / (0.3 + 1e-8), 64, 1.0));
  }
}

// Without bias correction (DeepSpeed's bias_correction=False) step 1 uses the raw moments:
// p1 = p - lr (1 - b1) g / (sqrt((1 - b2) g^2) + eps).
TEST(AdamMath, NoBiasCorrectionUsesRawMoments) {
  Hyper h;
  h.lr = 1e-2;
  h.bias_correction = false;
  const Constants k = make_constants(h, 1, 1.0);
  EXPECT_EQ(k.step_size, 1e-2f);
  EXPECT_EQ(k.inv_sqrt_bc2, 1.0f);
  float p = 1.0f, m = 0.0f, v = 0.0f;
  update(k, 2.0f, p, m, v);
  EXPECT_TRUE(near_ulps(p, 1.0 - 1e-2 * 0.1 * 2.0 / (std::sqrt(0.001 * 4.0) + 1e-8), 8, 1.0));
}

// eps is added after the bias-corrected square root, not inside it (PyTorch's placement):
// with a tiny gradient the two placements differ by orders of magnitude.
TEST(AdamMath, EpsIsOutsideTheSquareRoot) {
  Hyper h;
  h.lr = 1.0;
  h.eps = 1e-3;
  const Constants k = make_constants(h, 1, 1.0);
  float p = 0.0f, m = 0.0f, v = 0.0f;
  update(k, 1e-3f, p, m, v);
  EXPECT_TRUE(near_ulps(p, -1e-3 / (1e-3 + 1e-3), 8, 1.0));  // -0.5; eps inside the root would give ~ -0.0316
}

// The gradient scale multiplies the gradient as read (unscaling a loss-scaled gradient).
TEST(AdamMath, GradScaleEqualsScaledGradient) {
  Hyper h;
  h.mode = Mode::kAdam;
  h.weight_decay = 0.01;
  float p1 = 0.3f, m1 = 0.01f, v1 = 1e-4f;
  float p2 = p1, m2 = m1, v2 = v1;
  update(make_constants(h, 7, 1.0 / 1024), 0.5f * 1024, p1, m1, v1);
  update(make_constants(h, 7, 1.0), 0.5f, p2, m2, v2);
  EXPECT_EQ(p1, p2);
  EXPECT_EQ(m1, m2);
  EXPECT_EQ(v1, v2);
}

TEST(AdamMath, ConstantsAreComputedInDoubleAndRoundedOnce) {
  Hyper h;
  h.lr = 3e-4;
  h.beta1 = 0.9;
  h.beta2 = 0.95;
  h.weight_decay = 0.1;
  h.mode = Mode::kAdamW;
  const Constants k = make_constants(h, 3, 0.5);
  EXPECT_EQ(k.step_size, static_cast<float>(3e-4 / (1 - 0.9 * 0.9 * 0.9)));
  EXPECT_EQ(k.inv_sqrt_bc2, static_cast<float>(1 / std::sqrt(1 - 0.95 * 0.95 * 0.95)));
  EXPECT_EQ(k.decay, static_cast<float>(1 - 3e-4 * 0.1));
  EXPECT_EQ(k.l2, 0.0f);
  EXPECT_EQ(k.one_minus_beta1, static_cast<float>(1 - 0.9));
  EXPECT_EQ(k.grad_scale, 0.5f);
  h.mode = Mode::kAdam;
  const Constants a = make_constants(h, 3, 0.5);
  EXPECT_EQ(a.decay, 1.0f);
  EXPECT_EQ(a.l2, 0.1f);
}

TEST(AdamMath, NanGradientPoisonsOnlyItsElement) {
  const Constants k = make_constants(Hyper{}, 1, 1.0);
  float p = 1.0f, m = 0.0f, v = 0.0f;
  update(k, std::nanf(""), p, m, v);
  EXPECT_TRUE(std::isnan(p));
  EXPECT_TRUE(std::isnan(m));
  EXPECT_TRUE(std::isnan(v));
}

TEST(AdamMath, CheckHyperNamesTheBadField) {
  auto why = [](Hyper h, std::int64_t step = 1, double scale = 1.0) {
    const char* r = check_hyper(h, step, scale);
    return std::string(r == nullptr ? "" : r);
  };
  EXPECT_EQ(why(Hyper{}), "");
  EXPECT_NE(why(Hyper{}, 0).find("step"), std::string::npos);
  Hyper h;
  h.lr = -1;
  EXPECT_NE(why(h).find("lr"), std::string::npos);
  h = Hyper{};
  h.lr = INFINITY;
  EXPECT_NE(why(h).find("lr"), std::string::npos);
  h = Hyper{};
  h.beta1 = 1.0;
  EXPECT_NE(why(h).find("beta1"), std::string::npos);
  h = Hyper{};
  h.beta2 = NAN;
  EXPECT_NE(why(h).find("beta2"), std::string::npos);
  h = Hyper{};
  h.eps = -1e-8;
  EXPECT_NE(why(h).find("eps"), std::string::npos);
  h = Hyper{};
  h.weight_decay = NAN;
  EXPECT_NE(why(h).find("weight_decay"), std::string::npos);
  h = Hyper{};
  h.mode = static_cast<Mode>(7);
  EXPECT_NE(why(h).find("mode"), std::string::npos);
  EXPECT_NE(why(Hyper{}, 1, NAN).find("grad_scale"), std::string::npos);
  EXPECT_NE(why(Hyper{}, 1, -1.0).find("grad_scale"), std::string::npos);
}

}  // namespace
}  // namespace strata::adam
