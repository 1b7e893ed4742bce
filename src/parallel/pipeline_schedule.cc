// Pipeline schedules: building them (a compute order per stage, then the loads, transfers and
// reductions placed around it), validating them and timing them on a logical clock.
#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

namespace strata::pipeline {

// --- names ---------------------------------------------------------------------------------

namespace {

constexpr std::array<ScheduleKind, 4> kKinds = {ScheduleKind::kGpipe, ScheduleKind::k1F1B,
                                                ScheduleKind::kInterleaved, ScheduleKind::kZbH1};

std::string known_schedules() {
  std::string out;
  for (ScheduleKind k : kKinds) out += (out.empty() ? "" : ", ") + std::string(schedule_name(k));
  return out;
}

bool is_compute(Op op) {
  return op == Op::kForward || op == Op::kBackward || op == Op::kBackwardInput || op == Op::kBackwardWeight;
}
bool is_send(Op op) { return op == Op::kSendAct || op == Op::kSendGrad; }
bool is_recv(Op op) { return op == Op::kRecvAct || op == Op::kRecvGrad; }
bool is_transfer(Op op) { return is_send(op) || is_recv(op); }
bool is_tail(Op op) { return op == Op::kReduceTied || op == Op::kReduceGrads || op == Op::kStep; }
bool carries_grad(Op op) { return op == Op::kSendGrad || op == Op::kRecvGrad; }
// The compute that ends a unit's hold on its activations.
bool releases(Op op) { return op == Op::kBackward || op == Op::kBackwardWeight; }
// A backward that produces the input gradient (the whole backward or its B half).
bool input_backward(Op op) { return op == Op::kBackward || op == Op::kBackwardInput; }

}  // namespace

Result<ScheduleKind> parse_schedule(std::string_view name) {
  for (ScheduleKind k : kKinds) {
    if (schedule_name(k) == name) return k;
  }
  return invalid_argument("unknown pipeline schedule '" + std::string(name) + "'; known: " + known_schedules());
}

std::string_view schedule_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kGpipe: return "gpipe";
    case ScheduleKind::k1F1B: return "1f1b";
    case ScheduleKind::kInterleaved: return "interleaved";
    case ScheduleKind::kZbH1: return "zb-h1";
  }
  return "unknown";
}

bool splits_backward(ScheduleKind kind) { return kind == ScheduleKind::kZbH1; }

std::string_view op_name(Op op) {
  switch (op) {
    case Op::kLoad: return "load";
    case Op::kForward: return "forward";
    case Op::kBackward: return "backward";
    case Op::kBackwardInput: return "backward-input";
    case Op::kBackwardWeight: return "backward-weight";
    case Op::kSendAct: return "send-act";
    case Op::kRecvAct: return "recv-act";
    case Op::kSendGrad: return "send-grad";
    case Op::kRecvGrad: return "recv-grad";
    case Op::kReduceTied: return "reduce-tied";
    case Op::kReduceGrads: return "reduce-grads";
    case Op::kStep: return "step";
  }
  return "unknown";
}

std::string to_string(const Instr& in) {
  std::string s(op_name(in.op));
  if (is_tail(in.op)) return s;
  s += " micro " + std::to_string(in.micro) + (in.op == Op::kLoad ? " for chunk " : " chunk ") +
       std::to_string(in.chunk);
  if (is_send(in.op)) s += " to stage " + std::to_string(in.peer) + " tag " + std::to_string(in.tag);
  if (is_recv(in.op)) s += " from stage " + std::to_string(in.peer) + " tag " + std::to_string(in.tag);
  return s;
}

int model_parts(const PipelineShape& shape) { return shape.stages * shape.virtual_stages; }

int model_part(const PipelineShape& shape, int stage, int chunk) { return chunk * shape.stages + stage; }

// --- building ------------------------------------------------------------------------------

namespace {

struct Unit {
  int micro, chunk;
};

std::string shape_prefix(const PipelineShape& s) {
  return "pipeline schedule " + std::string(schedule_name(s.kind)) + " (stages " + std::to_string(s.stages) +
         ", micro_batches " + std::to_string(s.micro_batches) + ", virtual_stages " +
         std::to_string(s.virtual_stages) + ")";
}

Status check_shape(const PipelineShape& s) {
  const std::string what = shape_prefix(s) + ": ";
  if (schedule_name(s.kind) == "unknown") return invalid_argument(what + "unknown kind; known: " + known_schedules());
  if (s.stages < 1) return invalid_argument(what + "stages must be at least 1");
  if (s.micro_batches < 1) return invalid_argument(what + "micro_batches must be at least 1");
  if (s.virtual_stages < 1) return invalid_argument(what + "virtual_stages must be at least 1");
  if (s.kind != ScheduleKind::kInterleaved && s.virtual_stages != 1) {
    return invalid_argument(what +
                            "virtual_stages applies to the interleaved schedule only; set it to 1, or use interleaved");
  }
  if (s.kind != ScheduleKind::kGpipe && s.stages > 1 && s.micro_batches < s.stages) {
    return invalid_argument(what + "micro_batches is below stages, so the pipeline never fills; use at least " +
                            std::to_string(s.stages) + " micro-batches, or gpipe");
  }
  const std::int64_t tags = 2 * std::int64_t{s.micro_batches} * (std::int64_t{s.stages} * s.virtual_stages - 1);
  if (tags > kMaxTag) {
    return invalid_argument(what + "one step needs " + std::to_string(tags) + " transfer tags, more than " +
                            std::to_string(kMaxTag) + "; lower micro_batches or virtual_stages");
  }
  return Status::OK();
}

// The order of a stage's forward (or backward) units: micro-batches in groups of `stages`
// (the last group the remainder), each group chunk by chunk (backward: last chunk first).
// With one chunk that is simply micro-batch 0 .. m-1.
std::vector<Unit> unit_order(const PipelineShape& s, bool backward) {
  std::vector<Unit> order;
  const int v = s.virtual_stages;
  for (int first = 0; first < s.micro_batches; first += s.stages) {
    const int end = std::min(first + s.stages, s.micro_batches);
    for (int k = 0; k < v; ++k) {
      for (int micro = first; micro < end; ++micro) order.push_back({micro, backward ? v - 1 - k : k});
    }
  }
  return order;
}

// Forward units a stage runs before its first backward.
int warmup_units(const PipelineShape& s, int stage) {
  const int p = s.stages, v = s.virtual_stages;
  if (v > 1) return std::min(2 * (p - stage - 1) + (v - 1) * p, s.micro_batches * v);
  return std::min(p - stage - 1, s.micro_batches);
}

std::vector<Instr> gpipe_order(const PipelineShape& s) {
  std::vector<Instr> out;
  for (int micro = 0; micro < s.micro_batches; ++micro) out.push_back({Op::kForward, micro, 0});
  for (int micro = 0; micro < s.micro_batches; ++micro) out.push_back({Op::kBackward, micro, 0});
  return out;
}

// 1f1b, interleaved and zb-h1: warm-up forwards, then one forward and one backward in turn,
// then the remaining backwards. zb-h1 runs the W of backward unit k after the B of unit
// k + stage, and the W's still pending after the last B at the end.
std::vector<Instr> one_f_one_b_order(const PipelineShape& s, int stage) {
  const std::vector<Unit> fwd = unit_order(s, false), bwd = unit_order(s, true);
  const int n = static_cast<int>(fwd.size());
  const int warmup = warmup_units(s, stage);
  const bool split = splits_backward(s.kind);
  std::vector<Instr> out;
  int weights = 0;
  for (int k = 0; k < warmup; ++k) out.push_back({Op::kForward, fwd[k].micro, fwd[k].chunk});
  for (int k = 0; k < n; ++k) {
    if (warmup + k < n) out.push_back({Op::kForward, fwd[warmup + k].micro, fwd[warmup + k].chunk});
    out.push_back({split ? Op::kBackwardInput : Op::kBackward, bwd[k].micro, bwd[k].chunk});
    if (split && k >= stage) {
      out.push_back({Op::kBackwardWeight, bwd[weights].micro, bwd[weights].chunk});
      ++weights;
    }
  }
  for (; split && weights < n; ++weights) out.push_back({Op::kBackwardWeight, bwd[weights].micro, bwd[weights].chunk});
  return out;
}

// Tags: activations first, then gradients; within each, by micro-batch, then by the boundary
// between parts b and b + 1.
int transfer_tag(const PipelineShape& s, bool grad, int micro, int boundary) {
  const int boundaries = model_parts(s) - 1;
  return ((grad ? s.micro_batches : 0) + micro) * boundaries + boundary;
}

// Whether the forward of `chunk` on `stage` loads its micro-batch first: tokens for part 0,
// targets for the last part (one load for both when they are the same forward).
bool loads_before(const PipelineShape& s, int stage, int chunk) {
  return (stage == 0 && chunk == 0) || (stage == s.stages - 1 && chunk == s.virtual_stages - 1);
}

// Appends one compute of `stage` with the load and the transfers around it.
void emit_compute(const PipelineShape& s, int stage, const Instr& c, std::vector<Instr>& out) {
  const int p = s.stages, part = model_part(s, stage, c.chunk), last = model_parts(s) - 1;
  const bool remote = p > 1;  // neighbouring parts live on other stages
  if (c.op == Op::kForward) {
    if (loads_before(s, stage, c.chunk)) out.push_back({Op::kLoad, c.micro, c.chunk});
    if (remote && part > 0) {
      out.push_back({Op::kRecvAct, c.micro, c.chunk, (part - 1) % p, transfer_tag(s, false, c.micro, part - 1)});
    }
    out.push_back(c);
    if (remote && part < last) {
      out.push_back({Op::kSendAct, c.micro, c.chunk, (part + 1) % p, transfer_tag(s, false, c.micro, part)});
    }
    return;
  }
  if (input_backward(c.op) && remote && part < last) {
    out.push_back({Op::kRecvGrad, c.micro, c.chunk, (part + 1) % p, transfer_tag(s, true, c.micro, part)});
  }
  out.push_back(c);
  if (input_backward(c.op) && remote && part > 0) {
    out.push_back({Op::kSendGrad, c.micro, c.chunk, (part - 1) % p, transfer_tag(s, true, c.micro, part - 1)});
  }
}

// With several chunks and a remainder group (p does not divide m), the stage that finishes a
// chunk of the small group waits for its first micro-batch to come round the ring, and Megatron's
// warm-up counts can then deadlock (p 4, m 5, v 3 does). So the order is built as if the last
// group were full, for m rounded up to a multiple of p, and the padding micro-batches are dropped
// from it. Dropping a micro-batch removes its instructions and its transfers and keeps the order
// of the rest, so it adds no wait: the full schedule completes, and so does what is left.
std::vector<Instr> compute_order(const PipelineShape& s, int stage) {
  if (s.kind == ScheduleKind::kGpipe) return gpipe_order(s);
  if (s.virtual_stages == 1) return one_f_one_b_order(s, stage);
  PipelineShape full = s;
  full.micro_batches = (s.micro_batches + s.stages - 1) / s.stages * s.stages;
  std::vector<Instr> order = one_f_one_b_order(full, stage);
  std::erase_if(order, [&](const Instr& in) { return in.micro >= s.micro_batches; });
  return order;
}

std::vector<Instr> stage_program(const PipelineShape& s, int stage) {
  const std::vector<Instr> order = compute_order(s, stage);
  std::vector<Instr> out;
  for (const Instr& c : order) emit_compute(s, stage, c, out);
  if (s.stages > 1 && (stage == 0 || stage == s.stages - 1)) out.push_back({Op::kReduceTied});
  out.push_back({Op::kReduceGrads});
  out.push_back({Op::kStep});
  return out;
}

}  // namespace

Result<Schedule> make_schedule(const PipelineShape& shape) {
  STRATA_RETURN_IF_ERROR(check_shape(shape));
  Schedule sched{shape, {}};
  for (int r = 0; r < shape.stages; ++r) sched.stages.push_back(stage_program(shape, r));
  return sched;
}

// --- validating ----------------------------------------------------------------------------

namespace {

std::string where(int stage, std::size_t index, const Instr& in) {
  return "stage " + std::to_string(stage) + " instruction " + std::to_string(index) + " (" + to_string(in) + ")";
}

Status bad(const Schedule& sched, const std::string& what) {
  return invalid_argument(shape_prefix(sched.shape) + ": " + what);
}

// Ranges of every field, and which ops each kind and stage may use.
Status check_fields(const Schedule& sched) {
  const PipelineShape& s = sched.shape;
  if (static_cast<int>(sched.stages.size()) != s.stages) {
    return bad(sched, "has " + std::to_string(sched.stages.size()) + " instruction lists for " +
                          std::to_string(s.stages) + " stages");
  }
  const bool split = splits_backward(s.kind);
  for (int r = 0; r < s.stages; ++r) {
    for (std::size_t i = 0; i < sched.stages[r].size(); ++i) {
      const Instr& in = sched.stages[r][i];
      const auto fail = [&](const std::string& why) { return bad(sched, where(r, i, in) + ": " + why); };
      if (op_name(in.op) == "unknown") return fail("unknown op " + std::to_string(static_cast<int>(in.op)));
      if (in.op == Op::kReduceTied && (s.stages == 1 || (r != 0 && r != s.stages - 1))) {
        return fail("the tied embedding is reduced between the first and last stage only, with more than one stage");
      }
      if (is_tail(in.op)) continue;
      if (in.micro < 0 || in.micro >= s.micro_batches) return fail("micro-batch out of range");
      if (in.chunk < 0 || in.chunk >= s.virtual_stages) return fail("chunk out of range");
      if (in.op == Op::kBackward && split) return fail("this schedule splits backward into its two halves");
      if ((in.op == Op::kBackwardInput || in.op == Op::kBackwardWeight) && !split) {
        return fail("this schedule does not split backward");
      }
      if (in.op == Op::kLoad && !loads_before(s, r, in.chunk)) {
        return fail("only the forwards of the first and the last model part load micro-batches");
      }
      if (!is_transfer(in.op)) continue;
      if (in.peer < 0 || in.peer >= s.stages || in.peer == r) return fail("peer is not another stage");
      if (in.tag < 0 || in.tag >= kMaxTag) return fail("tag out of range [0, " + std::to_string(kMaxTag) + ")");
    }
  }
  return Status::OK();
}

// Where each (micro, chunk) of one stage is forwarded and back-propagated.
struct UnitMarks {
  int forward = -1, backward = -1, weight = -1;
};

// Each unit forwarded once and back-propagated once (B then W once each when split), in order.
Status check_compute(const Schedule& sched, int r) {
  const PipelineShape& s = sched.shape;
  std::vector<UnitMarks> marks(static_cast<std::size_t>(s.micro_batches) * s.virtual_stages);
  const auto& list = sched.stages[r];
  for (std::size_t i = 0; i < list.size(); ++i) {
    const Instr& in = list[i];
    if (!is_compute(in.op)) continue;
    UnitMarks& u = marks[static_cast<std::size_t>(in.micro) * s.virtual_stages + in.chunk];
    int& mark = in.op == Op::kForward ? u.forward : in.op == Op::kBackwardWeight ? u.weight : u.backward;
    if (mark >= 0) return bad(sched, where(r, i, in) + ": repeats instruction " + std::to_string(mark));
    if (in.op != Op::kForward && u.forward < 0) return bad(sched, where(r, i, in) + ": backward before its forward");
    if (in.op == Op::kBackwardWeight && u.backward < 0) {
      return bad(sched, where(r, i, in) + ": weight-grad before its input-grad");
    }
    mark = static_cast<int>(i);
  }
  const bool split = splits_backward(s.kind);
  for (std::size_t k = 0; k < marks.size(); ++k) {
    const std::string unit = "stage " + std::to_string(r) + ": micro " + std::to_string(k / s.virtual_stages) +
                             " chunk " + std::to_string(k % s.virtual_stages);
    if (marks[k].forward < 0) return bad(sched, unit + " is never forwarded");
    if (marks[k].backward < 0) return bad(sched, unit + (split ? " has no input-grad" : " is never back-propagated"));
    if (split && marks[k].weight < 0) return bad(sched, unit + " has no weight-grad");
  }
  return Status::OK();
}

// The list ends with [reduce-tied,] reduce-grads, step: once each, in that order.
Status check_tail(const Schedule& sched, int r) {
  const PipelineShape& s = sched.shape;
  const bool tied = s.stages > 1 && (r == 0 || r == s.stages - 1);
  std::vector<Op> want;
  if (tied) want.push_back(Op::kReduceTied);
  want.push_back(Op::kReduceGrads);
  want.push_back(Op::kStep);
  const auto& list = sched.stages[r];
  std::size_t first_tail = list.size();
  for (std::size_t i = 0; i < list.size(); ++i) {
    if (is_tail(list[i].op) && first_tail == list.size()) first_tail = i;
    if (!is_tail(list[i].op) && first_tail < list.size()) {
      return bad(sched, where(r, i, list[i]) + ": after " + std::string(op_name(list[first_tail].op)) +
                            " at instruction " + std::to_string(first_tail) +
                            "; the reductions and the step come after all compute and transfers");
    }
  }
  const std::string order = tied ? "reduce-tied, reduce-grads, step" : "reduce-grads, step";
  for (std::size_t k = 0; k < want.size(); ++k) {
    const std::size_t i = first_tail + k;
    if (i >= list.size()) {
      return bad(sched, "stage " + std::to_string(r) + ": missing " + std::string(op_name(want[k])) +
                            "; the list must end with " + order + ", once each");
    }
    if (list[i].op != want[k]) {
      return bad(sched, where(r, i, list[i]) + ": expected " + std::string(op_name(want[k])) +
                            "; the list must end with " + order + ", once each");
    }
  }
  if (first_tail + want.size() != list.size()) {
    const std::size_t i = first_tail + want.size();
    return bad(sched, where(r, i, list[i]) + ": after the step; the list must end with " + order + ", once each");
  }
  return Status::OK();
}

// The forwards of the first and last model part load their micro-batch once, before them.
Status check_loads(const Schedule& sched, int r) {
  const PipelineShape& s = sched.shape;
  std::vector<int> loaded(static_cast<std::size_t>(s.micro_batches) * s.virtual_stages, -1);
  const auto& list = sched.stages[r];
  for (std::size_t i = 0; i < list.size(); ++i) {
    const Instr& in = list[i];
    if (in.op != Op::kLoad && !(in.op == Op::kForward && loads_before(s, r, in.chunk))) continue;
    int& at = loaded[static_cast<std::size_t>(in.micro) * s.virtual_stages + in.chunk];
    if (in.op == Op::kForward && at < 0) return bad(sched, where(r, i, in) + ": before its micro-batch is loaded");
    if (in.op == Op::kForward) continue;
    if (at >= 0) return bad(sched, where(r, i, in) + ": loaded again (instruction " + std::to_string(at) + ")");
    at = static_cast<int>(i);
  }
  return Status::OK();
}

struct TransferRef {
  int stage;
  std::size_t index;
  const Instr* instr;
};

using ChannelKey = std::tuple<int, int, bool>;  // sender, receiver, gradients?
using TransferKey = std::tuple<int, int, int>;  // sender, receiver, tag

// One side of a transfer: the part that sends and the part that receives.
int part_of(const PipelineShape& s, const TransferRef& t) { return model_part(s, t.stage, t.instr->chunk); }

// A matched pair agrees on kind and micro-batch, and joins adjacent parts in the data's direction.
Status check_pair(const Schedule& sched, const TransferRef& send, const TransferRef& recv) {
  const Instr& a = *send.instr;
  const Instr& b = *recv.instr;
  const bool grad = carries_grad(a.op);
  const int step = grad ? -1 : 1;
  if (grad != carries_grad(b.op) || a.micro != b.micro ||
      part_of(sched.shape, recv) != part_of(sched.shape, send) + step) {
    return bad(sched, where(recv.stage, recv.index, b) + ": matches " + where(send.stage, send.index, a) +
                          " by tag, but not in kind, micro-batch or model part");
  }
  return Status::OK();
}

// Every send has exactly one matching receive and every receive one send; each tag names one
// transfer. Fills `channels` with the sends and receives of each channel in program order.
Status match_transfers(const Schedule& sched,
                       std::map<ChannelKey, std::pair<std::vector<TransferRef>, std::vector<TransferRef>>>& channels) {
  std::map<TransferKey, TransferRef> sends;
  std::map<int, std::tuple<bool, int, int>> tag_use;  // tag -> (gradients?, micro, boundary)
  for (int r = 0; r < sched.shape.stages; ++r) {
    for (std::size_t i = 0; i < sched.stages[r].size(); ++i) {
      const Instr& in = sched.stages[r][i];
      if (!is_send(in.op)) continue;
      const TransferRef ref{r, i, &in};
      auto [it, fresh] = sends.emplace(TransferKey{r, in.peer, in.tag}, ref);
      if (!fresh) {
        return bad(sched, where(r, i, in) + ": same tag as " + where(r, it->second.index, *it->second.instr));
      }
      const int part = part_of(sched.shape, ref);
      const auto use = std::make_tuple(carries_grad(in.op), in.micro, carries_grad(in.op) ? part - 1 : part);
      auto [u, unused] = tag_use.emplace(in.tag, use);
      if (u->second != use) {
        return bad(sched, where(r, i, in) + ": tag " + std::to_string(in.tag) + " already names another transfer");
      }
      channels[{r, in.peer, carries_grad(in.op)}].first.push_back(ref);
    }
  }
  std::set<TransferKey> received;
  for (int r = 0; r < sched.shape.stages; ++r) {
    for (std::size_t i = 0; i < sched.stages[r].size(); ++i) {
      const Instr& in = sched.stages[r][i];
      if (!is_recv(in.op)) continue;
      const TransferKey key{in.peer, r, in.tag};
      auto it = sends.find(key);
      if (it == sends.end()) {
        return bad(sched, where(r, i, in) + ": stage " + std::to_string(in.peer) + " never sends it");
      }
      if (!received.insert(key).second) return bad(sched, where(r, i, in) + ": received twice");
      const TransferRef ref{r, i, &in};
      STRATA_RETURN_IF_ERROR(check_pair(sched, it->second, ref));
      channels[{in.peer, r, carries_grad(in.op)}].second.push_back(ref);
    }
  }
  for (const auto& [key, send] : sends) {
    if (!received.count(key)) {
      return bad(sched, where(send.stage, send.index, *send.instr) + ": has no matching receive on stage " +
                            std::to_string(std::get<1>(key)));
    }
  }
  return Status::OK();
}

// On each channel the receives come in the order of the sends.
Status check_channel_order(
    const Schedule& sched,
    const std::map<ChannelKey, std::pair<std::vector<TransferRef>, std::vector<TransferRef>>>& channels) {
  for (const auto& [key, sides] : channels) {
    const auto& [sends, recvs] = sides;
    for (std::size_t k = 0; k < recvs.size(); ++k) {
      if (recvs[k].instr->tag == sends[k].instr->tag) continue;
      const auto [from, to, grad] = key;
      return bad(sched, where(recvs[k].stage, recvs[k].index, *recvs[k].instr) + ": receive " + std::to_string(k) +
                            " on the " + (grad ? "gradient" : "activation") + " channel from stage " +
                            std::to_string(from) + " to stage " + std::to_string(to) + ", but send " +
                            std::to_string(k) + " on it is " +
                            where(sends[k].stage, sends[k].index, *sends[k].instr) +
                            "; receives must come in the order of the sends");
    }
  }
  return Status::OK();
}

// Each compute has its input before it, and each send follows the compute producing its tensor.
Status check_dependencies(const Schedule& sched, int r) {
  const PipelineShape& s = sched.shape;
  const int v = s.virtual_stages, last = model_parts(s) - 1;
  const auto unit = [&](const Instr& in) { return static_cast<std::size_t>(in.micro) * v + in.chunk; };
  std::vector<char> fwd(static_cast<std::size_t>(s.micro_batches) * v), bwd(fwd.size());
  std::vector<char> got_act(fwd.size()), got_grad(fwd.size());
  const auto& list = sched.stages[r];
  for (std::size_t i = 0; i < list.size(); ++i) {
    const Instr& in = list[i];
    const int part = model_part(s, r, in.chunk);
    const auto fail = [&](const std::string& why) { return bad(sched, where(r, i, in) + ": " + why); };
    // With one stage the neighbouring part is the neighbouring chunk of this stage.
    const bool local = s.stages == 1;
    if (in.op == Op::kForward && part > 0) {
      const bool ready = local ? fwd[unit(in) - 1] : got_act[unit(in)];
      if (!ready) {
        return fail(local ? "before the forward of the chunk before it" : "before its activation is received");
      }
    }
    if (input_backward(in.op) && part < last) {
      const bool ready = local ? bwd[unit(in) + 1] : got_grad[unit(in)];
      if (!ready) return fail(local ? "before the backward of the chunk after it" : "before its gradient is received");
    }
    if (in.op == Op::kSendAct && !fwd[unit(in)]) return fail("before the forward that produces it");
    if (in.op == Op::kSendGrad && !bwd[unit(in)]) return fail("before the backward that produces it");
    if (in.op == Op::kRecvAct) got_act[unit(in)] = 1;
    if (in.op == Op::kRecvGrad) got_grad[unit(in)] = 1;
    if (in.op == Op::kForward) fwd[unit(in)] = 1;
    if (input_backward(in.op)) bwd[unit(in)] = 1;
  }
  return Status::OK();
}

}  // namespace

Status validate(const Schedule& sched) {
  STRATA_RETURN_IF_ERROR(check_shape(sched.shape));
  STRATA_RETURN_IF_ERROR(check_fields(sched));
  for (int r = 0; r < sched.shape.stages; ++r) {
    STRATA_RETURN_IF_ERROR(check_compute(sched, r));
    STRATA_RETURN_IF_ERROR(check_tail(sched, r));
    STRATA_RETURN_IF_ERROR(check_loads(sched, r));
  }
  std::map<ChannelKey, std::pair<std::vector<TransferRef>, std::vector<TransferRef>>> channels;
  STRATA_RETURN_IF_ERROR(match_transfers(sched, channels));
  STRATA_RETURN_IF_ERROR(check_channel_order(sched, channels));
  for (int r = 0; r < sched.shape.stages; ++r) STRATA_RETURN_IF_ERROR(check_dependencies(sched, r));
  auto sim = simulate(sched, Costs{});
  if (!sim.ok()) return sim.status();
  return Status::OK();
}

// --- simulating ----------------------------------------------------------------------------

namespace {

class LogicalClock {
 public:
  LogicalClock(const Schedule& sched, PartCosts costs)
      : sched_(sched), costs_(std::move(costs)), pc_(sched.stages.size()), now_(sched.stages.size()),
        tied_arrival_(sched.stages.size()), held_(sched.stages.size()), timelines_(sched.stages.size()) {}

  // Runs every stage as far as it can until none can move.
  void run() {
    for (bool moved = true; moved;) {
      moved = false;
      for (std::size_t r = 0; r < sched_.stages.size(); ++r) {
        while (advance(r)) moved = true;
      }
    }
  }

  Status deadlock() const;
  Simulation result() const;

 private:
  double cost(std::size_t stage, const Instr& in) const {
    const Costs& c = costs_[stage][static_cast<std::size_t>(in.chunk)];
    switch (in.op) {
      case Op::kForward: return c.forward;
      case Op::kBackward: return c.backward + c.weight;
      case Op::kBackwardInput: return c.backward;
      case Op::kBackwardWeight: return c.weight;
      default: return 0;
    }
  }
  bool advance(std::size_t r);
  std::string waiting(std::size_t r) const;

  const Schedule& sched_;
  PartCosts costs_;
  std::vector<std::size_t> pc_;
  std::vector<double> now_;
  std::vector<std::optional<double>> tied_arrival_;
  std::vector<int> held_;
  std::vector<StageTimeline> timelines_;
  std::map<TransferKey, double> sent_;
};

// Executes stage r's next instruction if it can; false when it is done or waits.
bool LogicalClock::advance(std::size_t r) {
  const auto& list = sched_.stages[r];
  if (pc_[r] == list.size()) return false;
  const Instr& in = list[pc_[r]];
  const int stage = static_cast<int>(r), last = static_cast<int>(sched_.stages.size()) - 1;
  double& now = now_[r];
  if (is_recv(in.op)) {
    auto it = sent_.find({in.peer, stage, in.tag});
    if (it == sent_.end()) return false;
    now = std::max(now, it->second + costs_[r][static_cast<std::size_t>(in.chunk)].transfer);
  } else if (is_send(in.op)) {
    sent_[{stage, in.peer, in.tag}] = now;
  } else if (in.op == Op::kReduceTied && last > 0 && (stage == 0 || stage == last)) {
    if (!tied_arrival_[r]) tied_arrival_[r] = now;
    const auto& other = tied_arrival_[stage == 0 ? last : 0];
    if (!other) return false;
    now = std::max(*tied_arrival_[r], *other);
  } else if (is_compute(in.op)) {
    const double c = cost(r, in);
    StageTimeline& t = timelines_[r];
    if (c > 0) t.busy.push_back({now, now + c, in.op, in.micro, in.chunk});
    now += c;
    t.busy_time += c;
    if (in.op == Op::kForward) t.peak_in_flight = std::max(t.peak_in_flight, ++held_[r]);
    if (releases(in.op)) --held_[r];
  }
  ++pc_[r];
  return true;
}

std::string LogicalClock::waiting(std::size_t r) const {
  const Instr& in = sched_.stages[r][pc_[r]];
  std::string s = where(static_cast<int>(r), pc_[r], in);
  if (!is_recv(in.op) || in.peer < 0 || in.peer >= static_cast<int>(sched_.stages.size())) return s;
  const auto& peer = sched_.stages[in.peer];
  const bool sent_later = std::any_of(peer.begin(), peer.end(), [&](const Instr& o) {
    return is_send(o.op) && o.peer == static_cast<int>(r) && o.tag == in.tag;
  });
  return s + (sent_later ? "" : ", which stage " + std::to_string(in.peer) + " never sends");
}

Status LogicalClock::deadlock() const {
  std::string stuck;
  for (std::size_t r = 0; r < pc_.size(); ++r) {
    if (pc_[r] < sched_.stages[r].size()) stuck += (stuck.empty() ? "" : "; ") + waiting(r);
  }
  if (stuck.empty()) return Status::OK();
  return bad(sched_, "deadlock: " + stuck);
}

Simulation LogicalClock::result() const {
  Simulation sim;
  sim.makespan = now_.empty() ? 0 : *std::max_element(now_.begin(), now_.end());
  sim.stages = timelines_;
  for (StageTimeline& t : sim.stages) {
    t.idle_fraction = sim.makespan > 0 ? (sim.makespan - t.busy_time) / sim.makespan : 0;
    t.peak_in_flight_micro_batches = static_cast<double>(t.peak_in_flight) / sched_.shape.virtual_stages;
    sim.bubble_fraction += t.idle_fraction / static_cast<double>(sim.stages.size());
  }
  return sim;
}

Status check_costs(const Costs& c) {
  for (double x : {c.forward, c.backward, c.weight, c.transfer}) {
    if (!(x >= 0) || !std::isfinite(x)) {
      return invalid_argument("pipeline simulation: costs must be finite and non-negative (forward " +
                              std::to_string(c.forward) + ", backward " + std::to_string(c.backward) + ", weight " +
                              std::to_string(c.weight) + ", transfer " + std::to_string(c.transfer) + ")");
    }
  }
  return Status::OK();
}

}  // namespace

Result<Simulation> simulate(const Schedule& sched, const Costs& costs) {
  const std::size_t v = static_cast<std::size_t>(std::max(sched.shape.virtual_stages, 1));
  return simulate(sched, PartCosts(sched.stages.size(), std::vector<Costs>(v, costs)));
}

Result<Simulation> simulate(const Schedule& sched, const PartCosts& costs) {
  STRATA_RETURN_IF_ERROR(check_shape(sched.shape));
  if (costs.size() != sched.stages.size()) {
    return invalid_argument("pipeline simulation: costs for " + std::to_string(costs.size()) + " stages, the schedule has " +
                            std::to_string(sched.stages.size()));
  }
  for (const auto& stage : costs) {
    if (stage.size() != static_cast<std::size_t>(sched.shape.virtual_stages)) {
      return invalid_argument("pipeline simulation: costs for " + std::to_string(stage.size()) +
                              " chunks of a stage, the schedule has " + std::to_string(sched.shape.virtual_stages));
    }
    for (const Costs& c : stage) STRATA_RETURN_IF_ERROR(check_costs(c));
  }
  STRATA_RETURN_IF_ERROR(check_fields(sched));
  LogicalClock clock(sched, costs);
  clock.run();
  STRATA_RETURN_IF_ERROR(clock.deadlock());
  return clock.result();
}

std::vector<int> peak_units_per_chunk(const Schedule& sched, int stage) {
  const int v = sched.shape.virtual_stages;
  std::vector<int> held(v), peak(v);
  for (const Instr& in : sched.stages[stage]) {
    if (in.chunk < 0 || in.chunk >= v) continue;
    if (in.op == Op::kForward) peak[in.chunk] = std::max(peak[in.chunk], ++held[in.chunk]);
    if (releases(in.op)) --held[in.chunk];
  }
  return peak;
}

}  // namespace strata::pipeline
