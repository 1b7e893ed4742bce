// src/parallel/pipeline_schedule.h — pipeline-parallel schedules as data: what each stage
// does, in order, during one training step, a validator for such lists, and a logical-clock
// simulator that times them without running a model.
//
// A schedule is a pure function of its shape (kind, stages, micro-batches, virtual stages).
// The model is cut into stages x virtual_stages parts; stage r holds the parts
// s = chunk * stages + r for chunk = 0 .. virtual_stages - 1 (its local model chunks).
// Activations flow from part s to s + 1, so chunk c of the last stage feeds chunk c + 1 of
// stage 0; gradients flow back from s + 1 to s. Every transfer between stages is an explicit,
// tagged send on the producer and receive on the consumer, placed right after the compute that
// produces the tensor and right before the compute that consumes it.
//
// Kinds (m micro-batches, p stages, v virtual stages):
//   gpipe        every forward (micro-batches in order), then every backward, also in order
//                0 .. m-1, so gradients accumulate in the order of a one-rank run.
//   1f1b         PipeDream-Flush: stage r runs min(p - r - 1, m) warm-up forwards, then one
//                forward and one backward in turn, then the remaining backwards.
//   interleaved  Megatron-LM's interleaved 1F1B over v chunks per stage (v = 1 is exactly
//                1f1b). Work units are (micro-batch, chunk); forwards go in groups of p
//                micro-batches, for each group chunk 0 .. v-1, for each micro-batch in the
//                group; backwards in the same groups with chunks v-1 .. 0. Stage r warms up
//                with min(2 (p - r - 1) + (v - 1) p, m v) forward units. When p does not
//                divide m the last group is the smaller remainder, and forwards and backwards
//                interleave as they would for m rounded up to a multiple of p, the padding
//                micro-batches left out (Megatron's counts with a short group can deadlock).
//   zb-h1        Zero Bubble's ZB-H1 (arXiv 2401.10241): 1f1b's order with each backward split
//                into its input-gradient half B (on the critical path) and its weight-gradient
//                half W. Stage r runs the W of a micro-batch r steps after its B, so it starts
//                the steady phase like 1f1b and fills the cool-down bubble with its last r W's.
//                Activations are held until W, so every stage holds up to min(p, m) micro-batches:
//                the peak over the pipeline is 1f1b's (stage 0's), as in the paper. With
//                F = B = W the idle time of each stage is a third of 1f1b's.
//
// Thread-safety: every function here is pure; the values are plain data.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "strata/status.h"

namespace strata::pipeline {

enum class ScheduleKind : std::uint8_t { kGpipe, k1F1B, kInterleaved, kZbH1 };

// "gpipe" | "1f1b" | "interleaved" | "zb-h1"; an unknown name is an error listing these.
Result<ScheduleKind> parse_schedule(std::string_view name);
// The name parse_schedule accepts for `kind`.
std::string_view schedule_name(ScheduleKind kind);
// Whether the schedule splits backward into input-grad (B) and weight-grad (W) halves.
bool splits_backward(ScheduleKind kind);

enum class Op : std::uint8_t {
  kLoad,            // load micro-batch `micro` for the forward of (micro, chunk) that follows:
                    // tokens for part 0, targets for the last part (both when they are one part)
  kForward,         // forward of (micro, chunk)
  kBackward,        // whole backward (input and weight grads) of (micro, chunk)
  kBackwardInput,   // zero-bubble: input-gradient half
  kBackwardWeight,  // zero-bubble: weight-gradient half
  kSendAct,         // point-to-point with stage `peer`, tagged `tag`
  kRecvAct,
  kSendGrad,
  kRecvGrad,
  kReduceTied,   // first and last stage only (pp > 1): reduce the tied embedding's gradient between them
  kReduceGrads,  // after the stage's last backward (or weight-grad) of the step
  kStep,         // optimizer step, last
};
// Stable lower-case name: "forward", "backward-input", "recv-act", "reduce-tied", ...
std::string_view op_name(Op op);

// Tags are below this bound (they fit the 15 bits every backend accepts).
constexpr int kMaxTag = 32768;

struct Instr {
  Op op;
  int micro = -1;  // micro-batch, -1 for kReduce*/kStep
  int chunk = 0;   // the local model chunk (0..v-1) that computes, or (send) produced / (recv) will
                   // consume the tensor; for kLoad the chunk whose forward follows
  int peer = -1;   // sends/receives: the other stage
  int tag = -1;    // sends/receives: equal on both sides of one transfer, unique per
                   // (activation|gradient, micro, boundary between parts) within a step; in [0, kMaxTag)
  bool operator==(const Instr&) const = default;
};

// "forward micro 3 chunk 1", "recv-grad micro 0 chunk 0 from stage 2 tag 9", "step".
std::string to_string(const Instr& instr);

struct PipelineShape {
  ScheduleKind kind = ScheduleKind::k1F1B;
  int stages = 1;
  int micro_batches = 1;
  int virtual_stages = 1;
  bool operator==(const PipelineShape&) const = default;
};

// The number of model parts: stages x virtual_stages.
int model_parts(const PipelineShape& shape);
// The model part that local chunk `chunk` of stage `stage` holds: chunk * stages + stage.
int model_part(const PipelineShape& shape, int stage, int chunk);

struct Schedule {
  PipelineShape shape;
  std::vector<std::vector<Instr>> stages;  // one list per stage, in execution order
};

// Builds the schedule of `shape`. Fails (invalid_argument, naming the field and the fix) when
// stages, micro_batches or virtual_stages is below 1; when virtual_stages is not 1 for a kind
// other than interleaved; when micro_batches < stages for 1f1b, interleaved or zb-h1 with more
// than one stage (gpipe takes any number); and when the transfers of one step would need tags
// beyond kMaxTag (2 x micro_batches x (parts - 1) of them).
Result<Schedule> make_schedule(const PipelineShape& shape);

// Checks that `schedule` can run and computes what its shape says. Fails (invalid_argument,
// naming stage, instruction index and what is wrong) unless:
//  - every field is in range, and the ops are those of the kind (B and W halves only for
//    kinds that split backward, kBackward only for the others);
//  - each (micro, chunk) is forwarded once and back-propagated once (B then W once each when
//    split), backward after forward;
//  - each compute has its input before it (a receive from the neighbouring stage, or the
//    neighbouring part's compute on the same stage) and each send follows the compute that
//    produces its tensor;
//  - every send has exactly one matching receive (same tag; peers, micro-batch and kind
//    consistent; parts adjacent), each tag names one transfer, and on each channel (sender,
//    receiver, activations or gradients) the receives come in the order of the sends;
//  - the forwards of the first and the last model part are each preceded by one kLoad of their
//    micro-batch (one for both where they are the same forward);
//  - the list ends with kReduceTied (first and last stage, pp > 1 only), kReduceGrads and
//    kStep, once each, in that order;
//  - the simulator runs it to completion without deadlock.
Status validate(const Schedule& schedule);

// Cost of each unit of work on the logical clock. A whole backward (kBackward) costs
// backward + weight; a transfer delays its receiver by `transfer`. All must be >= 0.
struct Costs {
  double forward = 1, backward = 1, weight = 0;
  double transfer = 0;
};

struct Interval {
  double start, end;
  Op op;  // kForward, kBackward, kBackwardInput or kBackwardWeight
  int micro, chunk;
};

struct StageTimeline {
  std::vector<Interval> busy;  // the stage's compute in order; intervals of zero length are left out
  double busy_time = 0, idle_fraction = 0;
  int peak_in_flight = 0;                     // most (micro, chunk) units whose activations are held at once
  double peak_in_flight_micro_batches = 0;    // peak_in_flight / virtual_stages
};

struct Simulation {
  double makespan = 0;
  double bubble_fraction = 0;  // mean over stages of their idle fraction
  std::vector<StageTimeline> stages;
};

// Runs `schedule` on a logical clock: each stage executes its list in order; compute takes its
// cost; a send is buffered and happens when reached; a receive completes at
// max(now, time of the matching send + transfer); kReduceTied completes on both of its stages
// at the later of their arrivals; loads, kReduceGrads and kStep take no time. The idle
// fraction of a stage is (makespan - busy_time) / makespan (0 when the makespan is 0). A unit's
// activations are held from its forward until its backward (its weight-grad half for split
// schedules). Fails when an instruction is out of range, a cost is negative, or the stages
// deadlock (naming each stuck stage and the instruction it waits at).
Result<Simulation> simulate(const Schedule& schedule, const Costs& costs);
// The same with each stage's chunks costing their own: costs[stage][chunk] (a receive's
// transfer cost is its receiving chunk's). Fails unless there are costs for every stage and
// chunk.
using PartCosts = std::vector<std::vector<Costs>>;
Result<Simulation> simulate(const Schedule& schedule, const PartCosts& costs);

// For each local chunk of `stage`, the most micro-batches whose activations that chunk holds at
// once (forward until backward, or until weight-grad for split schedules): the number of
// per-micro-batch activation slots the chunk needs. REQUIRES: 0 <= stage < schedule.stages.size().
std::vector<int> peak_units_per_chunk(const Schedule& schedule, int stage);

}  // namespace strata::pipeline
