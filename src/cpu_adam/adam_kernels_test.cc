// Every CPU optimizer path x gradient dtype x copy dtype x mode x length x several steps,
// against the double-precision reference (adam_reference.h) and bit for bit against the
// scalar path; SIMD conversions against kernels/numeric.h.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "cpu_adam/adam_reference.h"
#include "cpu_adam/cpu_adam.h"
#include "cpu_adam/cpu_features.h"
#include "kernels/adam_math.h"
#include "kernels/numeric.h"

namespace strata::cpu_adam {
namespace {

constexpr Isa kAllIsas[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512};

std::vector<Isa> runnable_isas() {
  std::vector<Isa> out;
  for (Isa isa : kAllIsas) {
    if (isa_supported(isa)) out.push_back(isa);
  }
  return out;
}

std::unique_ptr<CpuAdam> make(Isa isa, int threads) {
  CpuAdamOptions o;
  o.isa = std::string(isa_name(isa));
  o.threads = threads;
  auto r = CpuAdam::create(o);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? std::move(r).value() : nullptr;
}

// The paths a machine cannot run are reported as skipped tests, not silently passed.
class IsaAvailability : public ::testing::TestWithParam<Isa> {};
TEST_P(IsaAvailability, PathRunsOnThisCpu) {
  if (!isa_supported(GetParam())) {
    GTEST_SKIP() << isa_name(GetParam()) << " path not tested on this machine: " << isa_missing(GetParam());
  }
  auto adam = make(GetParam(), 1);
  ASSERT_NE(adam, nullptr);
  EXPECT_EQ(adam->isa(), GetParam());
}
INSTANTIATE_TEST_SUITE_P(Paths, IsaAvailability, ::testing::ValuesIn(kAllIsas),
                         [](const auto& p) { return std::string(isa_name(p.param)); });

std::uint16_t to16(DType t, float f) { return t == DType::kBF16 ? num::f32_to_bf16(f) : num::f32_to_f16(f); }
double from16(DType t, std::uint16_t h) { return t == DType::kBF16 ? num::bf16_to_f32(h) : num::f16_to_f32(h); }

// Gradients of one dtype, read-only and shared by all paths.
struct Grads {
  DType dtype;
  std::vector<float> f32;
  std::vector<std::uint16_t> h16;
  std::size_t offset;  // elements of deliberate misalignment
  const void* data() const {
    return dtype == DType::kF32 ? static_cast<const void*>(f32.data() + offset)
                                : static_cast<const void*>(h16.data() + offset);
  }
  double at(std::size_t i) const { return dtype == DType::kF32 ? f32[offset + i] : from16(dtype, h16[offset + i]); }
};

// One path's state for one chunk. Each array starts at a different offset from its
// allocation so that vector loads are unaligned and the copy needs an alignment peel.
struct State {
  std::size_t n;
  std::vector<float> p_, m_, v_;
  std::vector<std::uint16_t> c_;
  static constexpr std::size_t kPad = 32;
  float* p() { return p_.data() + 1; }
  float* m() { return m_.data() + 2; }
  float* v() { return v_.data() + 3; }
  std::uint16_t* copy() { return c_.data() + 5; }
  explicit State(std::size_t count) : n(count), p_(n + kPad), m_(n + kPad), v_(n + kPad), c_(n + kPad, 0xdead) {}
  AdamChunk chunk(const Grads& g, CopyKind kind) {
    AdamChunk c;
    c.n = n;
    c.params = p();
    c.grads = g.data();
    c.grad_dtype = g.dtype;
    c.exp_avg = m();
    c.exp_avg_sq = v();
    if (kind != CopyKind::kNone) {
      c.param_copy = copy();
      c.param_copy_dtype = kind == CopyKind::kBF16 ? DType::kBF16 : DType::kF16;
    }
    return c;
  }
};

// A float of random sign (when `sign`), random mantissa and an exponent uniform in
// [lo, hi]: log-uniform over many binades, built from one 64-bit draw.
float random_float(std::uint64_t r, int lo, int hi, bool sign = true) {
  const int span = hi - lo + 1;
  const int e = lo + static_cast<int>((r >> 24) % static_cast<std::uint64_t>(span));
  const std::uint32_t bits = (static_cast<std::uint32_t>(127 + e) << 23) | static_cast<std::uint32_t>(r & 0x7fffffu);
  const float f = num::bits_f32(bits);
  return sign && ((r >> 63) & 1u) ? -f : f;
}

// Values over many binades, exact zeros included, so that sums cancel, eps dominates
// some denominators and fp16 gradients under- and overflow into subnormals. Generated once
// per (n, seed) and copied into every path's state.
void fill_state(State& s, std::uint64_t seed) {
  static std::map<std::pair<std::size_t, std::uint64_t>, std::vector<float>> cache;
  std::vector<float>& vals = cache[{s.n, seed}];
  if (vals.empty()) {
    std::mt19937_64 rng(seed);
    vals.resize(3 * s.n);
    for (std::size_t i = 0; i < s.n; ++i) {
      const std::uint64_t r = rng();
      const bool zero = (r >> 40) % 64 == 0;
      vals[3 * i] = zero ? 0.0f : random_float(rng(), -13, 3);
      vals[3 * i + 1] = zero ? 0.0f : random_float(rng(), -33, 0);
      vals[3 * i + 2] = (r >> 50) % 64 == 0 ? 0.0f : random_float(rng(), -66, 3, false);
    }
  }
  for (std::size_t i = 0; i < s.n; ++i) {
    s.p()[i] = vals[3 * i];
    s.m()[i] = vals[3 * i + 1];
    s.v()[i] = vals[3 * i + 2];
  }
}

Grads make_grads(DType dtype, std::size_t n, std::uint64_t seed) {
  Grads g{dtype, {}, {}, dtype == DType::kF32 ? 3u : 7u};
  std::mt19937_64 rng(seed);
  std::vector<float> vals(n);
  for (float& x : vals) {
    const std::uint64_t r = rng();
    x = r % 50 == 0 ? 0.0f : random_float(r, -30, 7);
  }
  if (dtype == DType::kF32) {
    g.f32.assign(g.offset, 0.0f);
    g.f32.insert(g.f32.end(), vals.begin(), vals.end());
  } else {
    g.h16.assign(g.offset, 0);
    for (float x : vals) g.h16.push_back(to16(dtype, x));
  }
  return g;
}

struct StepCase {
  adam::Hyper h;
  std::int64_t step;
  double grad_scale;
};

// Four steps with different hyperparameters, step numbers, scales and bias correction.
std::vector<StepCase> step_cases(adam::Mode mode) {
  std::vector<StepCase> out;
  adam::Hyper h;
  h.mode = mode;
  h.lr = 1e-3, h.beta1 = 0.9, h.beta2 = 0.999, h.eps = 1e-8, h.weight_decay = 0.01, h.bias_correction = true;
  out.push_back({h, 1, 1.0});
  h.lr = 0.05, h.beta1 = 0.8, h.beta2 = 0.99, h.eps = 1e-3, h.weight_decay = 0.1;
  out.push_back({h, 2, 1.0 / 1024});
  h.lr = 1e-2, h.beta1 = 0.9, h.beta2 = 0.95, h.eps = 1e-6, h.weight_decay = 0.0, h.bias_correction = false;
  out.push_back({h, 3, 0.37});
  h.lr = 3e-4, h.beta1 = 0.9, h.beta2 = 0.999, h.eps = 1e-8, h.weight_decay = 0.05, h.bias_correction = true;
  out.push_back({h, 1000, 1.0});
  return out;
}

AdamHyper to_public(const adam::Hyper& h) {
  AdamHyper p;
  p.lr = h.lr;
  p.beta1 = h.beta1;
  p.beta2 = h.beta2;
  p.eps = h.eps;
  p.weight_decay = h.weight_decay;
  p.mode = h.mode == adam::Mode::kAdam ? AdamMode::kAdam : AdamMode::kAdamW;
  p.bias_correction = h.bias_correction;
  return p;
}

bool same_bits(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || num::f32_bits(a) == num::f32_bits(b);
}

bool copy_matches(CopyKind c, std::uint16_t got, float p) {
  if (c == CopyKind::kBF16) return got == num::f32_to_bf16(p);
  if (std::isnan(p)) return (got & 0x7c00u) == 0x7c00u && (got & 0x3ffu) != 0;  // any fp16 NaN
  return got == num::f32_to_f16(p);
}

const char* copy_name(CopyKind c) { return c == CopyKind::kNone ? "none" : c == CopyKind::kBF16 ? "bf16" : "fp16"; }

// Counts failures and keeps the first few messages, so a broken kernel reports a handful
// of elements instead of a million assertion lines.
struct Failures {
  std::size_t count = 0;
  std::string first;
  void add(const std::string& what) {
    if (count++ < 5) first += what + "\n";
  }
};

std::string describe(Isa isa, DType g, CopyKind c, adam::Mode mode, std::size_t n, std::size_t s) {
  return std::string(isa_name(isa)) + " grad=" + std::string(dtype_name(g)) + " copy=" + copy_name(c) +
         " mode=" + (mode == adam::Mode::kAdam ? "adam" : "adamw") + " n=" + std::to_string(n) +
         " step#" + std::to_string(s);
}

struct Combo {
  DType grad;
  CopyKind copy;
};

void PrintTo(const Combo& c, std::ostream* os) {
  *os << "grad=" << dtype_name(c.grad) << " copy=" << copy_name(c.copy);
}

class AdamPaths : public ::testing::TestWithParam<Combo> {};

// For each step: the reference is computed once from the common state; every runnable
// path steps its own copy of that state and must (1) be within the reference's error
// bound, (2) write the copy as the exact rounding of its fp32 result, (3) equal the scalar
// path bit for bit. Paths then continue from their own (identical) states.
TEST_P(AdamPaths, MatchReferenceAndScalarBitForBit) {
  const Combo combo = GetParam();
  const std::vector<Isa> isas = runnable_isas();
  for (adam::Mode mode : {adam::Mode::kAdam, adam::Mode::kAdamW}) {
    for (std::size_t n : {std::size_t{1}, std::size_t{15}, std::size_t{16}, std::size_t{17}, std::size_t{1000013}}) {
      const std::uint64_t seed = n * 31 + static_cast<std::uint64_t>(mode);
      const Grads grads = make_grads(combo.grad, n, seed + static_cast<std::uint64_t>(combo.grad) * 7);
      std::vector<State> states;
      std::vector<std::unique_ptr<CpuAdam>> paths;
      for (Isa isa : isas) {
        states.emplace_back(n);
        fill_state(states.back(), seed + 1);
        paths.push_back(make(isa, 2));
        ASSERT_NE(paths.back(), nullptr);
      }
      std::vector<ReferenceElement> ref(n);
      std::size_t s_index = 0;
      for (const StepCase& sc : step_cases(mode)) {
        const ReferenceStep reference(sc.h, sc.step, sc.grad_scale);
        State& base = states[0];  // scalar: the state all paths share before this step
        for (std::size_t i = 0; i < n; ++i) ref[i] = reference.update(grads.at(i), base.p()[i], base.m()[i], base.v()[i]);
        for (std::size_t k = 0; k < isas.size(); ++k) {
          const std::string where = describe(isas[k], combo.grad, combo.copy, mode, n, s_index);
          ASSERT_TRUE(paths[k]->step(to_public(sc.h), AdamStep{sc.step, sc.grad_scale}, states[k].chunk(grads, combo.copy)).ok())
              << where;
          State& st = states[k];
          Failures f;
          for (std::size_t i = 0; i < n; ++i) {
            // A path whose element equals the scalar path's bit for bit has the same (already
            // checked) distance to the reference; only the scalar path and any differing
            // element need the tolerance check.
            const bool equal_to_scalar =
                k > 0 && same_bits(st.p()[i], base.p()[i]) && same_bits(st.m()[i], base.m()[i]) &&
                same_bits(st.v()[i], base.v()[i]) && st.copy()[i] == base.copy()[i];
            if (equal_to_scalar) continue;
            if (k > 0) f.add("element " + std::to_string(i) + ": differs from the scalar path");
            if (!within_tolerance(st.p()[i], ref[i].p, ref[i].p_err) ||
                !within_tolerance(st.m()[i], ref[i].m, ref[i].m_err) ||
                !within_tolerance(st.v()[i], ref[i].v, ref[i].v_err)) {
              f.add("element " + std::to_string(i) + ": p=" + std::to_string(st.p()[i]) + " want " +
                    std::to_string(ref[i].p) + " +- " + std::to_string(2 * ref[i].p_err) + ", m=" +
                    std::to_string(st.m()[i]) + " want " + std::to_string(ref[i].m) + ", v=" +
                    std::to_string(st.v()[i]) + " want " + std::to_string(ref[i].v));
            }
            if (combo.copy != CopyKind::kNone && !copy_matches(combo.copy, st.copy()[i], st.p()[i])) {
              f.add("element " + std::to_string(i) + ": copy " + std::to_string(st.copy()[i]) + " for p=" +
                    std::to_string(st.p()[i]));
            }
          }
          // Nothing past the end of the chunk is touched.
          if (st.p()[n] != 0.0f || st.m()[n] != 0.0f || st.v()[n] != 0.0f || st.copy()[n] != 0xdead) {
            f.add("written past the end of the chunk");
          }
          ASSERT_EQ(f.count, 0u) << where << ": " << f.count << " bad elements, first:\n" << f.first;
        }
        ++s_index;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Dtypes, AdamPaths,
    ::testing::Values(Combo{DType::kF32, CopyKind::kNone}, Combo{DType::kF32, CopyKind::kBF16},
                      Combo{DType::kF32, CopyKind::kF16}, Combo{DType::kBF16, CopyKind::kNone},
                      Combo{DType::kBF16, CopyKind::kBF16}, Combo{DType::kBF16, CopyKind::kF16},
                      Combo{DType::kF16, CopyKind::kNone}, Combo{DType::kF16, CopyKind::kBF16},
                      Combo{DType::kF16, CopyKind::kF16}),
    [](const auto& p) { return std::string(dtype_name(p.param.grad)) + "_copy_" + copy_name(p.param.copy); });

// With lr = 0 and no decay an update leaves p bit for bit (NaNs quieted), so the copy is
// the SIMD conversion of arbitrary floats: random bit patterns, every bf16/fp16 rounding
// boundary, subnormals, infinities and NaNs must convert exactly as kernels/numeric.h.
TEST(AdamPathsConversion, CopyStoresMatchNumericForArbitraryFloats) {
  std::vector<float> inputs;
  std::mt19937_64 rng(11);
  for (int i = 0; i < 200000; ++i) inputs.push_back(num::bits_f32(static_cast<std::uint32_t>(rng())));
  for (std::uint32_t h = 0; h < 0x10000; h += 1) {
    // bf16 neighbourhoods: the value, the midpoint to the next and its neighbours.
    const std::uint32_t u = h << 16;
    for (std::uint32_t d : {0u, 0x7fffu, 0x8000u, 0x8001u}) inputs.push_back(num::bits_f32(u + d));
  }
  for (std::uint32_t h = 0; h < 0x7c00; ++h) {
    // fp16 neighbourhoods, both signs.
    const float f = num::f16_to_f32(static_cast<std::uint16_t>(h));
    const float next = num::f16_to_f32(static_cast<std::uint16_t>(h + 1));
    const float mid = static_cast<float>((static_cast<double>(f) + next) / 2);
    for (float x : {f, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      inputs.push_back(x);
      inputs.push_back(-x);
    }
  }
  const std::size_t n = inputs.size();
  Grads zero{DType::kF32, std::vector<float>(n + 8, 0.0f), {}, 3};
  adam::Hyper h;
  h.lr = 0.0;
  for (CopyKind copy : {CopyKind::kBF16, CopyKind::kF16}) {
    for (Isa isa : runnable_isas()) {
      State st(n);
      std::memcpy(st.p(), inputs.data(), n * sizeof(float));
      std::fill(st.m(), st.m() + n, 0.0f);
      std::fill(st.v(), st.v() + n, 0.0f);
      auto adam = make(isa, 2);
      ASSERT_NE(adam, nullptr);
      ASSERT_TRUE(adam->step(to_public(h), AdamStep{1, 1.0}, st.chunk(zero, copy)).ok());
      Failures f;
      for (std::size_t i = 0; i < n; ++i) {
        const float in = inputs[i];
        const bool p_ok = std::isnan(in) ? std::isnan(st.p()[i]) : num::f32_bits(st.p()[i]) == num::f32_bits(in);
        if (!p_ok || !copy_matches(copy, st.copy()[i], st.p()[i])) {
          f.add("input bits " + std::to_string(num::f32_bits(in)) + " -> copy " + std::to_string(st.copy()[i]));
        }
        if (copy == CopyKind::kBF16 && std::isnan(in) && !std::isnan(num::bf16_to_f32(st.copy()[i]))) {
          f.add("NaN lost in the bf16 copy");
        }
      }
      EXPECT_EQ(f.count, 0u) << isa_name(isa) << " copy=" << copy_name(copy) << ":\n" << f.first;
    }
  }
}

// Every 16-bit gradient pattern (NaN and infinity included) is widened by the SIMD loads
// exactly as by kernels/numeric.h: all paths agree bit for bit with the scalar path.
TEST(AdamPathsConversion, EveryHalfGradientPatternMatchesScalar) {
  const std::size_t n = 0x10000;
  const std::vector<Isa> isas = runnable_isas();
  for (DType dt : {DType::kBF16, DType::kF16}) {
    Grads g{dt, {}, std::vector<std::uint16_t>(n + 8), 1};
    for (std::size_t i = 0; i < n; ++i) g.h16[1 + i] = static_cast<std::uint16_t>(i);
    std::vector<State> states;
    for (Isa isa : isas) {
      states.emplace_back(n);
      fill_state(states.back(), 99);
      auto adam = make(isa, 1);
      ASSERT_NE(adam, nullptr);
      adam::Hyper h;
      h.mode = adam::Mode::kAdam;
      h.weight_decay = 0.01;
      ASSERT_TRUE(adam->step(to_public(h), AdamStep{5, 1.0}, states.back().chunk(g, CopyKind::kBF16)).ok());
    }
    for (std::size_t k = 1; k < isas.size(); ++k) {
      Failures f;
      for (std::size_t i = 0; i < n; ++i) {
        if (!same_bits(states[k].p()[i], states[0].p()[i]) || !same_bits(states[k].m()[i], states[0].m()[i]) ||
            !same_bits(states[k].v()[i], states[0].v()[i]) || states[k].copy()[i] != states[0].copy()[i]) {
          f.add("gradient bits " + std::to_string(i));
        }
      }
      EXPECT_EQ(f.count, 0u) << isa_name(isas[k]) << " " << dtype_name(dt) << ":\n" << f.first;
    }
  }
}

// The OpenMP split does not change any result: 1, 2, 3 and 7 threads agree bit for bit.
TEST(AdamPathsThreads, ResultsDoNotDependOnThreadCount) {
  const std::size_t n = 300007;
  const Grads grads = make_grads(DType::kBF16, n, 5);
  for (Isa isa : runnable_isas()) {
    std::vector<State> states;
    for (int threads : {1, 2, 3, 7}) {
      states.emplace_back(n);
      fill_state(states.back(), 6);
      auto adam = make(isa, threads);
      ASSERT_NE(adam, nullptr);
      for (const StepCase& sc : step_cases(adam::Mode::kAdamW)) {
        ASSERT_TRUE(adam->step(to_public(sc.h), AdamStep{sc.step, sc.grad_scale}, states.back().chunk(grads, CopyKind::kF16)).ok());
      }
    }
    for (std::size_t k = 1; k < states.size(); ++k) {
      EXPECT_EQ(std::memcmp(states[k].p(), states[0].p(), n * 4), 0) << isa_name(isa) << " split " << k;
      EXPECT_EQ(std::memcmp(states[k].m(), states[0].m(), n * 4), 0) << isa_name(isa) << " split " << k;
      EXPECT_EQ(std::memcmp(states[k].v(), states[0].v(), n * 4), 0) << isa_name(isa) << " split " << k;
      EXPECT_EQ(std::memcmp(states[k].copy(), states[0].copy(), n * 2), 0) << isa_name(isa) << " split " << k;
    }
  }
}

// Many steps in float stay close to the same steps in double (each path iterating its own
// state): a check that errors do not grow beyond rounding over a trajectory. Each step adds
// at most ~2e-6 relative error to p and to the update; 20 steps stay far inside 1e-4 of
// |p| + lr * t, while a wrong formula (bias correction, decay order, eps placement) moves p
// by a large fraction of lr per step.
TEST(AdamPathsTrajectory, TwentyStepsStayCloseToDoublePrecision) {
  const std::size_t n = 4099;
  for (adam::Mode mode : {adam::Mode::kAdam, adam::Mode::kAdamW}) {
    adam::Hyper h;
    h.mode = mode;
    h.lr = 1e-2;
    h.weight_decay = 0.1;
    std::mt19937_64 rng(21);
    std::vector<double> p(n), m(n, 0.0), v(n, 0.0);
    for (double& x : p) x = random_float(rng(), -7, 0);
    for (Isa isa : runnable_isas()) {
      State st(n);
      for (std::size_t i = 0; i < n; ++i) st.p()[i] = static_cast<float>(p[i]), st.m()[i] = 0, st.v()[i] = 0;
      std::vector<double> dp(p), dm(m), dv(v);
      auto adam = make(isa, 1);
      ASSERT_NE(adam, nullptr);
      std::mt19937_64 grng(22);
      for (int t = 1; t <= 20; ++t) {
        Grads g{DType::kF32, std::vector<float>(n + 3), {}, 3};
        for (std::size_t i = 0; i < n; ++i) g.f32[3 + i] = random_float(grng(), -14, 0);
        ASSERT_TRUE(adam->step(to_public(h), AdamStep{t, 1.0}, st.chunk(g, CopyKind::kNone)).ok());
        const ReferenceStep ref(h, t, 1.0);
        for (std::size_t i = 0; i < n; ++i) {
          const ReferenceElement e = ref.update(g.f32[3 + i], dp[i], dm[i], dv[i]);
          dp[i] = e.p, dm[i] = e.m, dv[i] = e.v;
        }
        Failures f;
        for (std::size_t i = 0; i < n; ++i) {
          if (std::fabs(st.p()[i] - dp[i]) > 1e-4 * (std::fabs(dp[i]) + h.lr * t)) {
            f.add("element " + std::to_string(i) + ": " + std::to_string(st.p()[i]) + " vs " + std::to_string(dp[i]));
          }
        }
        ASSERT_EQ(f.count, 0u) << isa_name(isa) << " step " << t << ":\n" << f.first;
      }
    }
  }
}

}  // namespace
}  // namespace strata::cpu_adam
