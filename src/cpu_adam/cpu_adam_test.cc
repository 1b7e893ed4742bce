// CpuAdam as a user sees it: path selection by name and environment, argument checks,
// no allocation per step, the streaming ceiling.
#include "cpu_adam/cpu_adam.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cpu_adam/cpu_features.h"
#include "kernels/numeric.h"
#include "strata/optimizer.h"

// Counts every global operator new in the process (the library's included) while armed.
namespace {
bool g_count_allocs = false;
std::size_t g_allocs = 0;
}  // namespace

// The replacements pair malloc with free; GCC cannot see that pairing across them.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t size) {
  if (g_count_allocs) ++g_allocs;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace strata::cpu_adam {
namespace {

class EnvGuard {
 public:
  explicit EnvGuard(const char* value) {
    const char* old = std::getenv(kIsaEnvVar);
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (value == nullptr) {
      unsetenv(kIsaEnvVar);
    } else {
      setenv(kIsaEnvVar, value, 1);
    }
  }
  ~EnvGuard() {
    if (had_) {
      setenv(kIsaEnvVar, old_.c_str(), 1);
    } else {
      unsetenv(kIsaEnvVar);
    }
  }

 private:
  bool had_ = false;
  std::string old_;
};

struct Arrays {
  std::vector<float> p, m, v, g;
  std::vector<std::uint16_t> copy;
  explicit Arrays(std::size_t n) : p(n, 0.5f), m(n, 0.01f), v(n, 1e-4f), g(n, 0.1f), copy(n, 0) {}
  AdamChunk chunk() {
    AdamChunk c;
    c.n = p.size();
    c.params = p.data();
    c.grads = g.data();
    c.exp_avg = m.data();
    c.exp_avg_sq = v.data();
    c.param_copy = copy.data();
    c.param_copy_dtype = DType::kBF16;
    return c;
  }
};

TEST(CpuAdam, NamesAndSupportedPaths) {
  EXPECT_EQ(cpu_adam_isa_names(), (std::vector<std::string>{"auto", "avx512", "avx2", "scalar"}));
  const std::vector<std::string> supported = cpu_adam_isas_supported();
  ASSERT_FALSE(supported.empty());
  EXPECT_EQ(supported.back(), "scalar");
}

TEST(CpuAdam, AutoPicksTheBestSupportedPath) {
  EnvGuard env(nullptr);
  auto adam = make_cpu_adam();
  ASSERT_TRUE(adam.ok()) << adam.status();
  EXPECT_EQ((*adam)->name(), "cpu_adam/" + cpu_adam_isas_supported().front());
}

TEST(CpuAdam, ExplicitNameIsHonoured) {
  CpuAdamOptions o;
  o.isa = "scalar";
  auto adam = CpuAdam::create(o);
  ASSERT_TRUE(adam.ok()) << adam.status();
  EXPECT_EQ((*adam)->isa(), Isa::kScalar);
  EXPECT_EQ((*adam)->name(), "cpu_adam/scalar");
}

TEST(CpuAdam, UnknownNameListsTheKnownOnes) {
  CpuAdamOptions o;
  o.isa = "sse9";
  auto adam = make_cpu_adam(o);
  ASSERT_FALSE(adam.ok());
  EXPECT_EQ(adam.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(adam.status().message().find("'sse9'"), std::string::npos) << adam.status();
  EXPECT_NE(adam.status().message().find("auto, avx512, avx2, scalar"), std::string::npos) << adam.status();
}

TEST(CpuAdam, MissingInstructionSetIsRefusedNotDowngraded) {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
    if (isa_supported(isa)) continue;
    CpuAdamOptions o;
    o.isa = std::string(isa_name(isa));
    auto adam = make_cpu_adam(o);
    ASSERT_FALSE(adam.ok());
    EXPECT_EQ(adam.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(adam.status().message().find("lacks"), std::string::npos) << adam.status();
    EXPECT_NE(adam.status().message().find("scalar"), std::string::npos) << adam.status();
  }
  if (isa_supported(Isa::kAvx512)) GTEST_SKIP() << "every path runs on this CPU; no refusal to check";
}

TEST(CpuAdam, EnvironmentChoosesWhenOptionIsAuto) {
  {
    EnvGuard env("scalar");
    auto adam = make_cpu_adam();
    ASSERT_TRUE(adam.ok()) << adam.status();
    EXPECT_EQ((*adam)->name(), "cpu_adam/scalar");
    // An explicit option wins over the environment.
    CpuAdamOptions o;
    o.isa = cpu_adam_isas_supported().front();
    auto explicit_adam = make_cpu_adam(o);
    ASSERT_TRUE(explicit_adam.ok());
    EXPECT_EQ((*explicit_adam)->name(), "cpu_adam/" + o.isa);
  }
  {
    EnvGuard env("fast");
    auto adam = make_cpu_adam();
    ASSERT_FALSE(adam.ok());
    EXPECT_EQ(adam.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(adam.status().message().find(kIsaEnvVar), std::string::npos) << adam.status();
  }
  {
    EnvGuard env("auto");
    EXPECT_TRUE(make_cpu_adam().ok());
  }
}

TEST(CpuAdam, NegativeThreadsIsAnError) {
  CpuAdamOptions o;
  o.threads = -2;
  auto adam = make_cpu_adam(o);
  ASSERT_FALSE(adam.ok());
  EXPECT_EQ(adam.status().code(), StatusCode::kInvalidArgument);
}

TEST(CpuAdam, BadHyperparametersAreRefusedAndNothingIsTouched) {
  auto adam = make_cpu_adam();
  ASSERT_TRUE(adam.ok());
  Arrays a(100);
  struct Case {
    const char* field;
    AdamHyper h;
    AdamStep at;
  };
  std::vector<Case> cases;
  AdamHyper h;
  cases.push_back({"step", h, AdamStep{0, 1.0}});
  h.lr = NAN;
  cases.push_back({"lr", h, AdamStep{}});
  h = AdamHyper{};
  h.beta1 = 1.0;
  cases.push_back({"beta1", h, AdamStep{}});
  h = AdamHyper{};
  h.beta2 = -0.1;
  cases.push_back({"beta2", h, AdamStep{}});
  h = AdamHyper{};
  h.eps = -1;
  cases.push_back({"eps", h, AdamStep{}});
  h = AdamHyper{};
  h.weight_decay = INFINITY;
  cases.push_back({"weight_decay", h, AdamStep{}});
  h = AdamHyper{};
  h.mode = static_cast<AdamMode>(9);
  cases.push_back({"mode", h, AdamStep{}});
  cases.push_back({"grad_scale", AdamHyper{}, AdamStep{1, INFINITY}});
  for (const Case& c : cases) {
    Status s = (*adam)->step(c.h, c.at, a.chunk());
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(s.message().find(c.field), std::string::npos) << s;
  }
  EXPECT_EQ(a.p, std::vector<float>(100, 0.5f));
  EXPECT_EQ(a.copy, std::vector<std::uint16_t>(100, 0));
}

TEST(CpuAdam, BadChunksAreRefusedWithTheArrayNamed) {
  auto adam = make_cpu_adam();
  ASSERT_TRUE(adam.ok());
  Arrays a(64);
  auto expect_bad = [&](AdamChunk c, const char* what) {
    Status s = (*adam)->step(AdamHyper{}, AdamStep{}, c);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << what;
    EXPECT_NE(s.message().find(what), std::string::npos) << s;
  };
  AdamChunk c = a.chunk();
  c.params = nullptr;
  expect_bad(c, "params");
  c = a.chunk();
  c.exp_avg_sq = nullptr;
  expect_bad(c, "exp_avg_sq");
  c = a.chunk();
  c.exp_avg = a.p.data() + 10;
  expect_bad(c, "overlap");
  c = a.chunk();
  c.param_copy = reinterpret_cast<char*>(a.copy.data()) + 1;
  expect_bad(c, "param_copy is not aligned");
  c = a.chunk();
  c.param_copy_dtype = DType::kF32;
  expect_bad(c, "param_copy_dtype");
  c = a.chunk();
  c.grad_dtype = static_cast<DType>(5);
  expect_bad(c, "grad_dtype");
  c = a.chunk();
  c.grads = reinterpret_cast<char*>(a.g.data()) + 2;
  expect_bad(c, "grads is not aligned");
  EXPECT_EQ(a.p, std::vector<float>(64, 0.5f));
}

TEST(CpuAdam, EmptyChunkIsANoOp) {
  auto adam = make_cpu_adam();
  ASSERT_TRUE(adam.ok());
  AdamChunk c;  // n = 0, null arrays
  EXPECT_TRUE((*adam)->step(AdamHyper{}, AdamStep{}, c).ok());
}

TEST(CpuAdam, StepAllocatesNothing) {
  Arrays a(1 << 18);  // large enough for the OpenMP split
  for (const std::string& isa : cpu_adam_isas_supported()) {
    CpuAdamOptions o;
    o.isa = isa;
    o.threads = 2;
    auto adam = make_cpu_adam(o);
    ASSERT_TRUE(adam.ok());
    ASSERT_TRUE((*adam)->step(AdamHyper{}, AdamStep{1, 1.0}, a.chunk()).ok());  // warms the thread team
    g_allocs = 0;
    g_count_allocs = true;
    Status s = (*adam)->step(AdamHyper{}, AdamStep{2, 1.0}, a.chunk());
    g_count_allocs = false;
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(g_allocs, 0u) << isa;
  }
}

TEST(CpuAdam, StreamMovesTheBytesButKeepsTheValues) {
  for (const std::string& isa : cpu_adam_isas_supported()) {
    CpuAdamOptions o;
    o.isa = isa;
    auto adam = CpuAdam::create(o);
    ASSERT_TRUE(adam.ok());
    Arrays a(100003);
    for (std::size_t i = 0; i < a.p.size(); ++i) a.p[i] = 0.001f * static_cast<float>(i) - 3.0f;
    const std::vector<float> p0 = a.p, m0 = a.m, v0 = a.v;
    ASSERT_TRUE((*adam)->stream(a.chunk()).ok());
    EXPECT_EQ(a.p, p0) << isa;
    EXPECT_EQ(a.m, m0) << isa;
    EXPECT_EQ(a.v, v0) << isa;
    std::size_t bad = 0;
    for (std::size_t i = 0; i < a.p.size(); ++i) bad += a.copy[i] != (num::f32_bits(a.p[i]) >> 16);
    EXPECT_EQ(bad, 0u) << isa;
  }
}

}  // namespace
}  // namespace strata::cpu_adam
