// The shared gradient norm: the device sum of squares over several tensors (the overflow check
// included), and the finish step (sqrt / loss scale, finiteness, clip coefficient, grad scale)
// against the formulas of strata/trainer.h.
#include "engine/grad_norm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "model/model_test_util.h"

namespace strata::engine {
namespace {

using testutil::DevTensor;
using testutil::upload;

TEST(GradNorm, SumsTheSquaresOfEveryTensorOnTheDevice) {
  auto dev = testutil::make_host();
  ASSERT_NE(dev, nullptr);
  auto stream = dev->create_stream("test");
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto n = GradSquaredNorm::create(*dev);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->device_bytes(), sizeof(float));
  const DevTensor a = upload(*dev, {1, 2, 3}, DType::kF32);
  const DevTensor b = upload(*dev, {0.5, -4}, DType::kBF16);
  const std::vector<DeviceView> grads = {a.view, b.view};
  ASSERT_TRUE(n->enqueue(grads, **stream).ok());
  ASSERT_TRUE((*stream)->synchronize().ok());
  EXPECT_EQ(n->value(), 1.0f + 4.0f + 9.0f + 0.25f + 16.0f);
  // Enqueued again it starts from zero.
  ASSERT_TRUE(n->enqueue(std::vector<DeviceView>{a.view}, **stream).ok());
  ASSERT_TRUE((*stream)->synchronize().ok());
  EXPECT_EQ(n->value(), 14.0f);
  // One non-finite element makes the sum non-finite: the overflow check.
  const DevTensor bad = upload(*dev, {1, std::numeric_limits<double>::infinity()}, DType::kF32);
  ASSERT_TRUE(n->enqueue(std::vector<DeviceView>{a.view, bad.view}, **stream).ok());
  ASSERT_TRUE((*stream)->synchronize().ok());
  EXPECT_FALSE(std::isfinite(n->value()));
}

TEST(GradNorm, EnqueueBeforeCreateIsRefused) {
  GradSquaredNorm n;
  auto dev = testutil::make_host();
  ASSERT_NE(dev, nullptr);
  EXPECT_FALSE(n.enqueue({}, dev->default_stream()).ok());
}

TEST(GradNorm, FinishDividesByTheLossScaleAndClips) {
  // Stored gradients hold loss_scale x the true ones: norm = sqrt(sumsq) / loss_scale.
  GradNorm g = finish_grad_norm(64.0 * 64.0 * 9.0, 64.0, 0.0);
  EXPECT_TRUE(g.finite);
  EXPECT_EQ(g.norm, 3.0);
  EXPECT_EQ(g.clip, 1.0);
  EXPECT_EQ(g.grad_scale, 1.0 / 64.0);
  // Under the clip threshold nothing is clipped.
  g = finish_grad_norm(9.0, 1.0, 5.0);
  EXPECT_EQ(g.clip, 1.0);
  // Over it: clip = grad_clip / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_.
  g = finish_grad_norm(9.0, 2.0, 1.0);
  EXPECT_EQ(g.norm, 1.5);
  EXPECT_EQ(g.clip, 1.0 / (1.5 + 1e-6));
  EXPECT_EQ(g.grad_scale, g.clip / 2.0);
}

TEST(GradNorm, NonFiniteSumsAreOverflows) {
  for (double s : {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    const GradNorm g = finish_grad_norm(s, 1024.0, 1.0);
    EXPECT_FALSE(g.finite) << s;
    EXPECT_FALSE(std::isfinite(g.norm)) << s;
  }
}

}  // namespace
}  // namespace strata::engine
