// Pipeline schedules: every kind validates over a grid of shapes, hand-broken schedules are
// refused naming the problem, and the simulated idle fractions and activation peaks equal
// their closed forms; transfers tagged as a schedule tags them never cross.
#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "parallel/comm_test_util.h"

namespace strata::pipeline {
namespace {

constexpr ScheduleKind kAllKinds[] = {ScheduleKind::kGpipe, ScheduleKind::k1F1B, ScheduleKind::kInterleaved,
                                      ScheduleKind::kZbH1};

std::string label(const PipelineShape& s) {
  return std::string(schedule_name(s.kind)) + " p " + std::to_string(s.stages) + " m " +
         std::to_string(s.micro_batches) + " v " + std::to_string(s.virtual_stages);
}

Schedule build(ScheduleKind kind, int p, int m, int v = 1) {
  auto s = make_schedule({kind, p, m, v});
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : Schedule{};
}

Simulation run(const Schedule& s, const Costs& c) {
  auto sim = simulate(s, c);
  EXPECT_TRUE(sim.ok()) << label(s.shape) << ": " << sim.status();
  return sim.ok() ? *sim : Simulation{};
}

// The shapes of the acceptance grid: p in {2, 3, 4}, m in {p, 2p} and odd values from p up,
// v in {1, 2} for interleaved; and one stage.
std::vector<PipelineShape> acceptance_shapes() {
  std::vector<PipelineShape> out;
  for (ScheduleKind kind : kAllKinds) {
    for (int p : {1, 2, 3, 4}) {
      for (int m : {p, p + 1, 2 * p, 2 * p + 1, 3 * p}) {
        for (int v : {1, 2}) {
          if (v == 2 && kind != ScheduleKind::kInterleaved) continue;
          out.push_back({kind, p, m, v});
        }
      }
    }
  }
  return out;
}

// The compute of one stage as "F0 B0 W0 ..." (chunk as F0.1 when there are several).
std::string compute_order(const Schedule& s, int stage) {
  std::string out;
  for (const Instr& in : s.stages[stage]) {
    const char* letter = in.op == Op::kForward ? "F" : in.op == Op::kBackwardWeight ? "W"
                       : in.op == Op::kBackward || in.op == Op::kBackwardInput ? "B" : nullptr;
    if (letter == nullptr) continue;
    out += (out.empty() ? "" : " ") + std::string(letter) + std::to_string(in.micro);
    if (s.shape.virtual_stages > 1) out += "." + std::to_string(in.chunk);
  }
  return out;
}

// The index of the first instruction of `stage` that satisfies `pred`.
template <typename Pred>
std::size_t find_instr(const Schedule& s, int stage, Pred pred) {
  const auto& list = s.stages[stage];
  return static_cast<std::size_t>(std::find_if(list.begin(), list.end(), pred) - list.begin());
}

void erase_at(std::vector<Instr>& list, std::size_t i) {
  ASSERT_LT(i, list.size());
  list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
}

void expect_invalid(const Schedule& s, const std::string& needle) {
  Status st = validate(s);
  EXPECT_FALSE(st.ok()) << "expected an error containing '" << needle << "'";
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find(needle), std::string::npos) << st.message();
}

TEST(PipelineSchedule, NamesRoundTrip) {
  for (ScheduleKind kind : kAllKinds) {
    auto k = parse_schedule(schedule_name(kind));
    ASSERT_TRUE(k.ok()) << k.status();
    EXPECT_EQ(*k, kind);
  }
  EXPECT_TRUE(splits_backward(ScheduleKind::kZbH1));
  EXPECT_FALSE(splits_backward(ScheduleKind::k1F1B));
  EXPECT_EQ(op_name(Op::kBackwardWeight), "backward-weight");
  EXPECT_EQ(to_string(Instr{Op::kRecvGrad, 3, 1, 2, 9}), "recv-grad micro 3 chunk 1 from stage 2 tag 9");
}

TEST(PipelineSchedule, UnknownNameListsTheKnownOnes) {
  auto k = parse_schedule("zb");
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(k.status().message().find("'zb'"), std::string::npos) << k.status();
  EXPECT_NE(k.status().message().find("gpipe, 1f1b, interleaved, zb-h1"), std::string::npos) << k.status();
}

TEST(PipelineSchedule, MakeScheduleRefusesBadShapes) {
  struct Bad {
    PipelineShape shape;
    const char* needle;
  };
  const Bad bad[] = {
      {{ScheduleKind::k1F1B, 0, 4, 1}, "stages must be at least 1"},
      {{ScheduleKind::kGpipe, 2, 0, 1}, "micro_batches must be at least 1"},
      {{ScheduleKind::kInterleaved, 2, 4, 0}, "virtual_stages must be at least 1"},
      {{ScheduleKind::k1F1B, 2, 4, 2}, "virtual_stages applies to the interleaved schedule only"},
      {{ScheduleKind::kZbH1, 2, 4, 2}, "virtual_stages applies to the interleaved schedule only"},
      {{ScheduleKind::k1F1B, 4, 3, 1}, "micro_batches is below stages"},
      {{ScheduleKind::kInterleaved, 4, 2, 2}, "micro_batches is below stages"},
      {{ScheduleKind::kZbH1, 3, 2, 1}, "micro_batches is below stages"},
      {{ScheduleKind::kInterleaved, 8, 1000, 4}, "transfer tags"},
  };
  for (const Bad& b : bad) {
    auto s = make_schedule(b.shape);
    ASSERT_FALSE(s.ok()) << label(b.shape);
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(b.needle), std::string::npos) << s.status();
  }
  // GPipe takes fewer micro-batches than stages, and every kind runs on one stage.
  EXPECT_TRUE(make_schedule({ScheduleKind::kGpipe, 4, 2, 1}).ok());
  for (ScheduleKind kind : kAllKinds) EXPECT_TRUE(make_schedule({kind, 1, 1, 1}).ok());
}

TEST(PipelineSchedule, EveryKindValidates) {
  for (const PipelineShape& shape : acceptance_shapes()) {
    auto s = make_schedule(shape);
    ASSERT_TRUE(s.ok()) << label(shape) << ": " << s.status();
    Status st = validate(*s);
    EXPECT_TRUE(st.ok()) << label(shape) << ": " << st;
  }
}

// Interleaved with a remainder group (p does not divide m) and more chunks still completes.
TEST(PipelineSchedule, InterleavedValidatesForAnyMicroBatchCount) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = p; m <= 3 * p + 1; ++m) {
      for (int v = 1; v <= 4; ++v) {
        Status st = validate(build(ScheduleKind::kInterleaved, p, m, v));
        EXPECT_TRUE(st.ok()) << "p " << p << " m " << m << " v " << v << ": " << st;
      }
    }
  }
}

TEST(PipelineSchedule, OneStageHasNoTransfers) {
  for (ScheduleKind kind : kAllKinds) {
    const int v = kind == ScheduleKind::kInterleaved ? 2 : 1;
    Schedule s = build(kind, 1, 3, v);
    ASSERT_EQ(s.stages.size(), 1u);
    int loads = 0;
    for (const Instr& in : s.stages[0]) {
      EXPECT_NE(in.op, Op::kSendAct);
      EXPECT_NE(in.op, Op::kRecvAct);
      EXPECT_NE(in.op, Op::kSendGrad);
      EXPECT_NE(in.op, Op::kRecvGrad);
      EXPECT_NE(in.op, Op::kReduceTied);
      loads += in.op == Op::kLoad;
    }
    // One per micro-batch for tokens and targets together; with two chunks, one per part.
    EXPECT_EQ(loads, 3 * v) << schedule_name(kind);
    EXPECT_EQ(s.stages[0].back().op, Op::kStep);
  }
}

TEST(PipelineSchedule, ComputeOrders) {
  EXPECT_EQ(compute_order(build(ScheduleKind::kGpipe, 2, 3), 1), "F0 F1 F2 B0 B1 B2");
  Schedule f = build(ScheduleKind::k1F1B, 4, 6);
  EXPECT_EQ(compute_order(f, 0), "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5");
  EXPECT_EQ(compute_order(f, 3), "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5");
  // Interleaved, v = 1, is exactly 1f1b.
  EXPECT_EQ(build(ScheduleKind::kInterleaved, 4, 6, 1).stages, f.stages);
  // Stage r defers its W's by r backwards.
  Schedule z = build(ScheduleKind::kZbH1, 3, 4);
  EXPECT_EQ(compute_order(z, 0), "F0 F1 F2 B0 W0 F3 B1 W1 B2 W2 B3 W3");
  EXPECT_EQ(compute_order(z, 2), "F0 B0 F1 B1 F2 B2 W0 F3 B3 W1 W2 W3");
  // Groups of p micro-batches, chunk by chunk; the last group is the remainder.
  Schedule i = build(ScheduleKind::kInterleaved, 2, 3, 2);
  EXPECT_EQ(compute_order(i, 0), "F0.0 F1.0 F0.1 F1.1 F2.0 B0.1 B1.1 F2.1 B0.0 B1.0 B2.1 B2.0");
}

TEST(PipelineSchedule, TransfersSitNextToTheirCompute) {
  Schedule s = build(ScheduleKind::kInterleaved, 2, 2, 2);
  // Stage 1, chunk 0 (part 1) sends its activation to stage 0, chunk 1 (part 2).
  const std::size_t f = find_instr(s, 1, [](const Instr& in) { return in.op == Op::kForward && in.chunk == 0; });
  ASSERT_LT(f + 1, s.stages[1].size());
  const Instr& send = s.stages[1][f + 1];
  EXPECT_EQ(send.op, Op::kSendAct);
  EXPECT_EQ(send.peer, 0);
  const std::size_t r = find_instr(s, 0, [&](const Instr& in) { return in.op == Op::kRecvAct && in.tag == send.tag; });
  ASSERT_LT(r + 1, s.stages[0].size());
  EXPECT_EQ(s.stages[0][r].chunk, 1);
  EXPECT_EQ(s.stages[0][r + 1].op, Op::kForward);
  EXPECT_EQ(s.stages[0][r + 1].chunk, 1);
  // The last stage loads targets right before the forward of its last chunk.
  const std::size_t load = find_instr(s, 1, [](const Instr& in) { return in.op == Op::kLoad; });
  EXPECT_EQ(s.stages[1][load].chunk, 1);
  EXPECT_EQ(s.stages[1][load + 2].op, Op::kForward);  // after the receive of its input
  // Tied reduction on the first and last stage, then the gradients, then the step.
  for (int st : {0, 1}) {
    const auto& l = s.stages[st];
    ASSERT_GE(l.size(), 3u);
    EXPECT_EQ(l[l.size() - 3].op, Op::kReduceTied);
    EXPECT_EQ(l[l.size() - 2].op, Op::kReduceGrads);
    EXPECT_EQ(l[l.size() - 1].op, Op::kStep);
  }
  EXPECT_NE(build(ScheduleKind::k1F1B, 3, 3).stages[1].end()[-2].op, Op::kReduceTied);
}

TEST(PipelineSchedule, RejectsARemovedReceive) {
  Schedule s = build(ScheduleKind::k1F1B, 2, 4);
  erase_at(s.stages[1], find_instr(s, 1, [](const Instr& in) { return in.op == Op::kRecvAct; }));
  expect_invalid(s, "stage 0 instruction 2 (send-act micro 0 chunk 0 to stage 1 tag 0): "
                    "has no matching receive on stage 1");
}

TEST(PipelineSchedule, RejectsSwappedReceivesOnAChannel) {
  Schedule s = build(ScheduleKind::k1F1B, 2, 4);
  auto& l = s.stages[1];
  const std::size_t a = find_instr(s, 1, [](const Instr& in) { return in.op == Op::kRecvAct && in.micro == 1; });
  const std::size_t b = find_instr(s, 1, [](const Instr& in) { return in.op == Op::kRecvAct && in.micro == 2; });
  ASSERT_LT(b, l.size());
  std::swap(l[a], l[b]);
  expect_invalid(s, "receive 1 on the activation channel from stage 0 to stage 1");
  expect_invalid(s, "receives must come in the order of the sends");
}

TEST(PipelineSchedule, RejectsABackwardBeforeItsForward) {
  Schedule s = build(ScheduleKind::k1F1B, 2, 4);
  auto& l = s.stages[1];
  const std::size_t f = find_instr(s, 1, [](const Instr& in) { return in.op == Op::kForward && in.micro == 1; });
  const std::size_t b = find_instr(s, 1, [](const Instr& in) { return in.op == Op::kBackward && in.micro == 1; });
  std::swap(l[f], l[b]);
  expect_invalid(s, "stage 1 instruction " + std::to_string(f) +
                        " (backward micro 1 chunk 0): backward before its forward");
}

TEST(PipelineSchedule, RejectsAWeightGradBeforeItsInputGrad) {
  Schedule s = build(ScheduleKind::kZbH1, 2, 4);
  auto& l = s.stages[0];
  const std::size_t b = find_instr(s, 0, [](const Instr& in) { return in.op == Op::kBackwardInput && in.micro == 2; });
  const std::size_t w = find_instr(s, 0, [](const Instr& in) { return in.op == Op::kBackwardWeight && in.micro == 2; });
  std::swap(l[b], l[w]);
  expect_invalid(s, "stage 0 instruction " + std::to_string(b) +
                        " (backward-weight micro 2 chunk 0): weight-grad before its input-grad");
}

TEST(PipelineSchedule, RejectsAMissingStepOrReduction) {
  Schedule s = build(ScheduleKind::k1F1B, 3, 3);
  s.stages[2].pop_back();
  expect_invalid(s, "stage 2: missing step; the list must end with reduce-tied, reduce-grads, step, once each");
  Schedule t = build(ScheduleKind::k1F1B, 3, 3);
  t.stages[1].erase(t.stages[1].end() - 2);
  expect_invalid(t, "stage 1 instruction");
  expect_invalid(t, "expected reduce-grads");
  Schedule u = build(ScheduleKind::kGpipe, 2, 2);
  std::swap(u.stages[0].end()[-1], u.stages[0].end()[-3]);
  expect_invalid(u, "expected reduce-tied");
}

TEST(PipelineSchedule, RejectsMissingOrRepeatedCompute) {
  Schedule s = build(ScheduleKind::kGpipe, 2, 2);
  erase_at(s.stages[1], find_instr(s, 1, [](const Instr& in) { return in.op == Op::kBackward; }));
  expect_invalid(s, "stage 1: micro 0 chunk 0 is never back-propagated");
  Schedule z = build(ScheduleKind::kZbH1, 2, 2);
  z.stages[0].push_back(z.stages[0][find_instr(z, 0, [](const Instr& in) { return in.op == Op::kForward; })]);
  expect_invalid(z, "repeats instruction");
  Schedule w = build(ScheduleKind::k1F1B, 2, 2);
  w.stages[0][find_instr(w, 0, [](const Instr& in) { return in.op == Op::kBackward; })].op = Op::kBackwardInput;
  expect_invalid(w, "this schedule does not split backward");
}

TEST(PipelineSchedule, RejectsATransferThatDoesNotMatchItsData) {
  Schedule s = build(ScheduleKind::k1F1B, 2, 2);
  const std::size_t r = find_instr(s, 1, [](const Instr& in) { return in.op == Op::kRecvAct && in.micro == 0; });
  s.stages[1][r].micro = 1;
  expect_invalid(s, "not in kind, micro-batch or model part");
  Schedule t = build(ScheduleKind::k1F1B, 2, 2);
  const std::size_t f = find_instr(t, 1, [](const Instr& in) { return in.op == Op::kForward && in.micro == 1; });
  std::swap(t.stages[1][f - 1], t.stages[1][f]);  // the forward before its receive
  expect_invalid(t, "(forward micro 1 chunk 0): before its activation is received");
}

// Stage 0 waits for micro 0's gradient before sending micro 1's activation, which stage 1 (GPipe
// order) needs before that backward.
TEST(PipelineSchedule, ReportsADeadlockNamingTheStuckStages) {
  Schedule s = build(ScheduleKind::kGpipe, 2, 2);
  auto& l = s.stages[0];
  const std::size_t send0 = find_instr(s, 0, [](const Instr& in) { return in.op == Op::kSendAct; });
  const std::size_t recv0 = find_instr(s, 0, [](const Instr& in) { return in.op == Op::kRecvGrad; });
  std::rotate(l.begin() + static_cast<std::ptrdiff_t>(send0 + 1), l.begin() + static_cast<std::ptrdiff_t>(recv0),
              l.begin() + static_cast<std::ptrdiff_t>(recv0 + 2));
  expect_invalid(s, "deadlock: stage 0 instruction 3 (recv-grad micro 0 chunk 0 from stage 1 tag 2); "
                    "stage 1 instruction 4 (recv-act micro 1 chunk 0 from stage 0 tag 1)");
}

// F = B = 1, W = 0: every stage idles (p - 1) / (m + p - 1) of the time under GPipe and 1F1B.
TEST(PipelineSimulation, GpipeAnd1F1BIdleFraction) {
  const Costs costs{1, 1, 0, 0};
  for (ScheduleKind kind : {ScheduleKind::kGpipe, ScheduleKind::k1F1B}) {
    for (int p : {1, 2, 3, 4}) {
      for (int m : {p, p + 1, 2 * p, 2 * p + 1, 3 * p}) {
        Simulation sim = run(build(kind, p, m), costs);
        const double want = static_cast<double>(p - 1) / (m + p - 1);
        ASSERT_EQ(sim.stages.size(), static_cast<std::size_t>(p));
        EXPECT_NEAR(sim.makespan, 2.0 * (m + p - 1), 1e-12) << schedule_name(kind) << " p " << p << " m " << m;
        EXPECT_NEAR(sim.bubble_fraction, want, 1e-12);
        for (int r = 0; r < p; ++r) {
          EXPECT_NEAR(sim.stages[r].idle_fraction, want, 1e-12) << schedule_name(kind) << " p " << p << " m " << m
                                                                << " stage " << r;
          EXPECT_NEAR(sim.stages[r].busy_time, 2.0 * m, 1e-12);
        }
      }
    }
  }
  // GPipe with fewer micro-batches than stages.
  Simulation g = run(build(ScheduleKind::kGpipe, 4, 2), costs);
  EXPECT_NEAR(g.bubble_fraction, 3.0 / 5.0, 1e-12);
}

// F = B = 1, W = 0, m a multiple of p: every stage idles (p - 1) / (v m + p - 1).
TEST(PipelineSimulation, InterleavedIdleFraction) {
  const Costs costs{1, 1, 0, 0};
  for (int p : {1, 2, 3, 4}) {
    for (int m : {p, 2 * p, 3 * p}) {
      for (int v : {1, 2, 3}) {
        Simulation sim = run(build(ScheduleKind::kInterleaved, p, m, v), costs);
        const double want = static_cast<double>(p - 1) / (v * m + p - 1);
        for (int r = 0; r < p; ++r) {
          EXPECT_NEAR(sim.stages[r].idle_fraction, want, 1e-12)
              << "p " << p << " m " << m << " v " << v << " stage " << r;
        }
      }
    }
  }
}

// F = B = W = 1 (1F1B's whole backward costs 2): ZB-H1 idles a third of 1F1B's time, p - 1 per
// stage against 3 (p - 1); its makespan is 3m + p - 1 against 3 (m + p - 1). That is the least
// idle time of any order with 1F1B's warm-up: stage r cannot start before r, nor run its first B
// before 2p - 1 - r, and until then has only its p - r forwards to run. As a fraction of the
// shorter makespan, (p - 1) / (3m + p - 1) is somewhat more than a third of 1F1B's
// (p - 1) / (m + p - 1), so the third is asserted on idle time.
TEST(PipelineSimulation, ZeroBubbleIdlesAThirdOf1F1B) {
  const Costs costs{1, 1, 1, 0};
  for (int p : {2, 3, 4}) {
    for (int m : {p, p + 1, 2 * p, 2 * p + 1, 3 * p}) {
      Simulation zb = run(build(ScheduleKind::kZbH1, p, m), costs);
      Simulation fb = run(build(ScheduleKind::k1F1B, p, m), costs);
      const double zb_idle = zb.bubble_fraction * zb.makespan, fb_idle = fb.bubble_fraction * fb.makespan;
      EXPECT_NEAR(fb.makespan, 3.0 * (m + p - 1), 1e-12);
      EXPECT_NEAR(fb_idle, 3.0 * (p - 1), 1e-9);
      EXPECT_NEAR(zb.makespan, 3.0 * m + p - 1, 1e-12) << "p " << p << " m " << m;
      EXPECT_LE(zb_idle, fb_idle / 3 + 1e-9) << "p " << p << " m " << m;
      EXPECT_NEAR(zb.bubble_fraction, (p - 1.0) / (3.0 * m + p - 1), 1e-12);
      EXPECT_LT(zb.bubble_fraction, fb.bubble_fraction);
    }
  }
}

TEST(PipelineSimulation, PeakInFlight) {
  const Costs costs{1, 1, 1, 0};
  for (int p : {1, 2, 3, 4}) {
    for (int m : {p, 2 * p + 1}) {
      Simulation g = run(build(ScheduleKind::kGpipe, p, m), costs);
      Simulation f = run(build(ScheduleKind::k1F1B, p, m), costs);
      Schedule zs = build(ScheduleKind::kZbH1, p, m);
      Simulation z = run(zs, costs);
      int f_max = 0, z_max = 0;
      for (int r = 0; r < p; ++r) {
        EXPECT_EQ(g.stages[r].peak_in_flight, m);
        EXPECT_EQ(f.stages[r].peak_in_flight, std::min(p - r, m)) << "p " << p << " m " << m << " stage " << r;
        // ZB-H1 holds a unit until its W, r backwards after its B.
        EXPECT_EQ(z.stages[r].peak_in_flight, std::min(p, m));
        EXPECT_EQ(peak_units_per_chunk(zs, r), std::vector<int>{z.stages[r].peak_in_flight});
        f_max = std::max(f_max, f.stages[r].peak_in_flight);
        z_max = std::max(z_max, z.stages[r].peak_in_flight);
      }
      EXPECT_LE(z_max, f_max) << "p " << p << " m " << m;
    }
  }
}

// Interleaved stage r holds its warm-up plus one unit: min(2 (p - r - 1) + (v - 1) p + 1, m v).
TEST(PipelineSimulation, InterleavedPeakInFlight) {
  for (int p : {2, 4}) {
    for (int m : {p, 2 * p + 1}) {
      Schedule s = build(ScheduleKind::kInterleaved, p, m, 2);
      Simulation sim = run(s, Costs{});
      for (int r = 0; r < p; ++r) {
        const int want = std::min(2 * (p - r - 1) + p + 1, 2 * m);
        EXPECT_EQ(sim.stages[r].peak_in_flight, want) << "p " << p << " m " << m << " stage " << r;
        EXPECT_DOUBLE_EQ(sim.stages[r].peak_in_flight_micro_batches, want / 2.0);
        const std::vector<int> per_chunk = peak_units_per_chunk(s, r);
        ASSERT_EQ(per_chunk.size(), 2u);
        EXPECT_GE(per_chunk[0] + per_chunk[1], want);
        EXPECT_LE(per_chunk[0], m);
      }
    }
  }
}

TEST(PipelineSimulation, TransferDelaysTheReceiver) {
  // Stage 0: F [0, 1]; stage 1 receives at 1.5: F [1.5, 2.5], B [2.5, 3.5]; stage 0: B [4, 5].
  Simulation sim = run(build(ScheduleKind::kGpipe, 2, 1), Costs{1, 1, 0, 0.5});
  EXPECT_DOUBLE_EQ(sim.makespan, 5.0);
  ASSERT_EQ(sim.stages[1].busy.size(), 2u);
  EXPECT_DOUBLE_EQ(sim.stages[1].busy[0].start, 1.5);
  EXPECT_EQ(sim.stages[1].busy[1].op, Op::kBackward);
  EXPECT_DOUBLE_EQ(sim.stages[0].busy[1].start, 4.0);
  EXPECT_DOUBLE_EQ(sim.stages[0].idle_fraction, 3.0 / 5.0);
}

TEST(PipelineSimulation, EachStageAndChunkCostsItsOwn) {
  // 1F1B, 2 stages, 4 micro-batches; stage 1 twice as slow: it starts at 1 and never idles
  // (each forward it needs was made long before) until 1 + 4 (2 + 2) = 17; stage 0's last
  // backward follows, so the makespan is 18.
  const Schedule one_f_one_b = build(ScheduleKind::k1F1B, 2, 4);
  auto sim = simulate(one_f_one_b, PartCosts{{Costs{1, 1, 0, 0}}, {Costs{2, 2, 0, 0}}});
  ASSERT_TRUE(sim.ok()) << sim.status();
  EXPECT_DOUBLE_EQ(sim->makespan, 18.0);
  EXPECT_DOUBLE_EQ(sim->stages[1].idle_fraction, 2.0 / 18.0);
  EXPECT_DOUBLE_EQ(sim->stages[0].idle_fraction, 10.0 / 18.0);
  // Uniform part costs are the plain simulation.
  auto uniform = simulate(one_f_one_b, PartCosts(2, std::vector<Costs>(1, Costs{1, 2, 0, 0})));
  auto plain = simulate(one_f_one_b, Costs{1, 2, 0, 0});
  ASSERT_TRUE(uniform.ok() && plain.ok());
  EXPECT_DOUBLE_EQ(uniform->makespan, plain->makespan);
  // A table of the wrong shape is refused.
  EXPECT_FALSE(simulate(one_f_one_b, PartCosts{{Costs{}}}).ok());
  EXPECT_FALSE(simulate(one_f_one_b, PartCosts{{Costs{}, Costs{}}, {Costs{}, Costs{}}}).ok());
}

TEST(PipelineSimulation, RefusesNegativeCosts) {
  auto sim = simulate(build(ScheduleKind::k1F1B, 2, 2), Costs{1, -1, 0, 0});
  ASSERT_FALSE(sim.ok());
  EXPECT_NE(sim.status().message().find("non-negative"), std::string::npos) << sim.status();
}

}  // namespace
}  // namespace strata::pipeline

namespace strata::pipeline {
namespace {

using testing_comm::Fill;
using testing_comm::RankEnv;
using testing_comm::Ranks;

// GPipe's stage 0 has every activation send of the step in flight before stage 1 receives
// the first: posted at once on streams of their own, and received by stage 1 in the opposite
// order, each lands in its own micro-batch's buffer, told apart by the schedule's tags alone.
TEST(PipelineTransfers, ActivationsInFlightTogetherNeverCross) {
  constexpr int kMicro = 4;
  constexpr std::size_t kCount = 64;
  const Schedule s = build(ScheduleKind::kGpipe, 2, kMicro);
  std::vector<Instr> sends, recvs;
  for (const Instr& in : s.stages[0]) {
    if (in.op == Op::kSendAct) sends.push_back(in);
  }
  for (const Instr& in : s.stages[1]) {
    if (in.op == Op::kRecvAct) recvs.push_back(in);
  }
  ASSERT_EQ(sends.size(), static_cast<std::size_t>(kMicro));
  ASSERT_EQ(recvs.size(), static_cast<std::size_t>(kMicro));
  std::vector<std::vector<std::byte>> want(kMicro), got(kMicro);
  for (int m = 0; m < kMicro; ++m) want[m] = Fill::random(CommType::kF32, kCount, 10 + m);
  Ranks ranks(2);
  ranks.run([&](RankEnv& e) {
    std::vector<std::unique_ptr<Stream>> streams;
    for (int m = 0; m < kMicro; ++m) streams.push_back(std::move(*e.device->create_stream("transfer")));
    if (e.rank == 0) {
      std::vector<CommBuffer> bufs;
      for (const Instr& in : sends) bufs.push_back(e.upload(want[in.micro], CommType::kF32, kCount));
      ASSERT_TRUE(e.stream->synchronize().ok());
      for (std::size_t i = 0; i < sends.size(); ++i) {
        ASSERT_TRUE(e.comm->send(bufs[i], sends[i].peer, sends[i].tag, *streams[i]).ok());
      }
      for (auto& st : streams) ASSERT_TRUE(st->synchronize().ok());
      return;
    }
    std::vector<CommBuffer> bufs(kMicro);
    for (auto in = recvs.rbegin(); in != recvs.rend(); ++in) {
      bufs[in->micro] = e.alloc(CommType::kF32, kCount);
      ASSERT_TRUE(e.comm->recv(bufs[in->micro], in->peer, in->tag, *e.stream).ok());
    }
    ASSERT_TRUE(e.stream->synchronize().ok());
    for (int m = 0; m < kMicro; ++m) got[m] = e.download(bufs[m]);
  });
  for (int m = 0; m < kMicro; ++m) EXPECT_EQ(got[m], want[m]) << "micro-batch " << m;
}

}  // namespace
}  // namespace strata::pipeline
