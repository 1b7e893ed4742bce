// `strata plan pipeline`: builds a pipeline-parallel schedule, validates it, times it on the
// logical clock and prints each stage's timeline, compute order, idle fraction and activation
// peak (as text, or as one JSON object with --json).
#include <cmath>
#include <cstdio>
#include <cxxopts.hpp>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cli/command.h"
#include "parallel/pipeline_schedule.h"

namespace strata::cli {
namespace {

using pipeline::Costs;
using pipeline::Instr;
using pipeline::Op;
using pipeline::PipelineShape;
using pipeline::Schedule;
using pipeline::Simulation;

constexpr const char* kName = "strata plan pipeline";
// Timelines longer than this many time units are not drawn.
constexpr double kMaxCells = 1000;

struct PlanArgs {
  PipelineShape shape;
  Costs costs;
  bool json = false;
};

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string fixed4(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", v);
  return buf;
}

// The value of option `name` as an integer of at least `min`, or `fallback` when it is absent.
Result<int> int_option(const cxxopts::ParseResult& args, const std::string& name, std::optional<int> fallback,
                       int min) {
  if (!args.count(name)) {
    if (fallback) return *fallback;
    return invalid_argument("missing --" + name);
  }
  const std::string text = args[name].as<std::string>();
  std::size_t used = 0;
  int v = 0;
  try {
    v = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) return invalid_argument("--" + name + ": '" + text + "' is not an integer");
  if (v < min) return invalid_argument("--" + name + ": must be at least " + std::to_string(min) + ", got " + text);
  return v;
}

// The value of cost option `name`: a finite number >= 0, or `fallback` when it is absent.
Result<double> cost_option(const cxxopts::ParseResult& args, const std::string& name, double fallback) {
  if (!args.count(name)) return fallback;
  const std::string text = args[name].as<std::string>();
  std::size_t used = 0;
  double v = -1;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || !std::isfinite(v) || v < 0) {
    return invalid_argument("--" + name + ": '" + text + "' is not a non-negative number");
  }
  return v;
}

Result<PlanArgs> read_args(const cxxopts::ParseResult& args) {
  if (!args.unmatched().empty()) return invalid_argument("unexpected argument '" + args.unmatched().front() + "'");
  if (!args.count("schedule")) return invalid_argument("missing --schedule");
  PlanArgs a;
  auto kind = pipeline::parse_schedule(args["schedule"].as<std::string>());
  if (!kind.ok()) return kind.status().with_context("--schedule");
  a.shape.kind = *kind;
  STRATA_ASSIGN_OR_RETURN(a.shape.stages, int_option(args, "pp", std::nullopt, 1));
  STRATA_ASSIGN_OR_RETURN(a.shape.micro_batches, int_option(args, "micro-batches", std::nullopt, 1));
  STRATA_ASSIGN_OR_RETURN(a.shape.virtual_stages, int_option(args, "virtual-stages", 1, 1));
  STRATA_ASSIGN_OR_RETURN(a.costs.forward, cost_option(args, "forward-cost", 1));
  STRATA_ASSIGN_OR_RETURN(a.costs.backward, cost_option(args, "backward-cost", 1));
  STRATA_ASSIGN_OR_RETURN(a.costs.weight, cost_option(args, "weight-cost", 1));
  STRATA_ASSIGN_OR_RETURN(a.costs.transfer, cost_option(args, "transfer-cost", 0));
  a.json = args.count("json") > 0;
  return a;
}

const char* letter(Op op) {
  switch (op) {
    case Op::kForward: return "F";
    case Op::kBackward:
    case Op::kBackwardInput: return "B";
    case Op::kBackwardWeight: return "W";
    default: return nullptr;
  }
}

// "F3", or "F3.1" (micro-batch 3, chunk 1) when there are several chunks.
std::string compute_label(const Instr& in, int virtual_stages) {
  std::string s = letter(in.op) + std::to_string(in.micro);
  if (virtual_stages > 1) s += "." + std::to_string(in.chunk);
  return s;
}

std::vector<std::string> compute_labels(const Schedule& sched, int stage) {
  std::vector<std::string> out;
  for (const Instr& in : sched.stages[stage]) {
    if (letter(in.op) != nullptr) out.push_back(compute_label(in, sched.shape.virtual_stages));
  }
  return out;
}

// One character per unit of time; only drawn when every interval starts and ends on a whole unit.
bool drawable(const Costs& c, double makespan) {
  for (double x : {c.forward, c.backward, c.weight, c.transfer}) {
    if (x != std::floor(x)) return false;
  }
  return makespan <= kMaxCells;
}

std::string cells(const pipeline::StageTimeline& t, double makespan) {
  std::string row(static_cast<std::size_t>(makespan), '.');
  for (const pipeline::Interval& iv : t.busy) {
    for (auto k = static_cast<std::size_t>(iv.start); k < static_cast<std::size_t>(iv.end) && k < row.size(); ++k) {
      row[k] = *letter(iv.op);
    }
  }
  return row;
}

std::string header(const PlanArgs& a) {
  const PipelineShape& s = a.shape;
  std::string h = "schedule " + std::string(pipeline::schedule_name(s.kind)) + ", pp " + std::to_string(s.stages) +
                  ", micro-batches " + std::to_string(s.micro_batches) + ", virtual stages " +
                  std::to_string(s.virtual_stages) + "; costs F " + num(a.costs.forward) + ", B " +
                  num(a.costs.backward) + ", W " + num(a.costs.weight) + ", transfer " + num(a.costs.transfer);
  if (!pipeline::splits_backward(s.kind)) {
    h += " (" + std::string(pipeline::schedule_name(s.kind)) +
         " does not split backward: a whole backward costs B + W = " + num(a.costs.backward + a.costs.weight) + ")";
  }
  return h;
}

void print_text(const PlanArgs& a, const Schedule& sched, const Simulation& sim) {
  std::cout << header(a) << "\nmakespan " << num(sim.makespan) << "\n";
  const int p = a.shape.stages;
  if (drawable(a.costs, sim.makespan)) {
    const bool split = pipeline::splits_backward(a.shape.kind);
    std::cout << "\ntimeline (one cell per unit of time; F forward, "
              << (split ? "B input-grad, W weight-grad" : "B backward") << ", . idle):\n";
    for (int r = 0; r < p; ++r) std::cout << "  stage " << r << "  " << cells(sim.stages[r], sim.makespan) << "\n";
  } else {
    std::cout << "\n(timeline not drawn: it needs whole-number costs and at most " << num(kMaxCells) << " units)\n";
  }
  std::cout << "\ncompute order:\n";
  for (int r = 0; r < p; ++r) {
    std::cout << "  stage " << r << " ";
    for (const std::string& l : compute_labels(sched, r)) std::cout << " " << l;
    std::cout << "\n";
  }
  std::cout << "\n";
  for (int r = 0; r < p; ++r) {
    const pipeline::StageTimeline& t = sim.stages[r];
    char mb[32];
    std::snprintf(mb, sizeof mb, "%.2f", t.peak_in_flight_micro_batches);
    std::cout << "stage " << r << ": idle " << fixed4(t.idle_fraction) << ", peak in-flight activations "
              << t.peak_in_flight << " (" << mb << " micro-batches)\n";
  }
  std::cout << "bubble fraction: " << fixed4(sim.bubble_fraction) << "\n";
}

nlohmann::ordered_json to_json(const PlanArgs& a, const Schedule& sched, const Simulation& sim) {
  nlohmann::ordered_json j;
  j["schedule"] = pipeline::schedule_name(a.shape.kind);
  j["pp"] = a.shape.stages;
  j["micro_batches"] = a.shape.micro_batches;
  j["virtual_stages"] = a.shape.virtual_stages;
  j["splits_backward"] = pipeline::splits_backward(a.shape.kind);
  j["costs"] = {{"forward", a.costs.forward}, {"backward", a.costs.backward}, {"weight", a.costs.weight},
                {"transfer", a.costs.transfer}};
  j["makespan"] = sim.makespan;
  j["bubble_fraction"] = sim.bubble_fraction;
  j["stages"] = nlohmann::ordered_json::array();
  for (int r = 0; r < a.shape.stages; ++r) {
    const pipeline::StageTimeline& t = sim.stages[r];
    nlohmann::ordered_json busy = nlohmann::ordered_json::array();
    for (const pipeline::Interval& iv : t.busy) busy.push_back({iv.start, iv.end, letter(iv.op), iv.micro, iv.chunk});
    j["stages"].push_back({{"stage", r},
                           {"idle_fraction", t.idle_fraction},
                           {"peak_in_flight", t.peak_in_flight},
                           {"peak_in_flight_micro_batches", t.peak_in_flight_micro_batches},
                           {"instructions", compute_labels(sched, r)},
                           {"busy", busy}});
  }
  return j;
}

cxxopts::Options plan_options() {
  cxxopts::Options opts(kName, "Build a pipeline-parallel schedule, check it and time it on a logical clock.");
  opts.add_options()("schedule", "gpipe, 1f1b, interleaved or zb-h1", cxxopts::value<std::string>())(
      "pp", "pipeline stages", cxxopts::value<std::string>())(
      "micro-batches", "micro-batches per step", cxxopts::value<std::string>())(
      "virtual-stages", "model chunks per stage (interleaved; default 1)", cxxopts::value<std::string>())(
      "forward-cost", "time of one forward (default 1)", cxxopts::value<std::string>())(
      "backward-cost", "time of the input-gradient half of a backward (default 1)", cxxopts::value<std::string>())(
      "weight-cost", "time of the weight-gradient half of a backward (default 1)", cxxopts::value<std::string>())(
      "transfer-cost", "delay of each transfer between stages (default 0)", cxxopts::value<std::string>())(
      "json", "print one JSON object instead of text")("h,help", "show this help");
  return opts;
}

int plan_pipeline(int argc, char** argv) {
  cxxopts::Options opts = plan_options();
  cxxopts::ParseResult parsed;
  try {
    parsed = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << kName << ": " << e.what() << "\n" << opts.help();
    return kExitUsage;
  }
  if (parsed.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  auto args = read_args(parsed);
  if (!args.ok()) {
    std::cerr << kName << ": " << args.status().message() << "\n";
    return kExitUsage;
  }
  auto sched = pipeline::make_schedule(args->shape);
  if (!sched.ok()) {
    std::cerr << kName << ": " << sched.status().message() << " (--pp sets stages, --micro-batches micro_batches, "
              << "--virtual-stages virtual_stages)\n";
    return kExitUsage;
  }
  auto sim = pipeline::simulate(*sched, args->costs);
  Status valid = pipeline::validate(*sched);
  if (!sim.ok() || !valid.ok()) {
    std::cerr << kName << ": " << (sim.ok() ? valid : sim.status()) << "\n";
    return kExitFailed;
  }
  if (args->json) {
    std::cout << to_json(*args, *sched, *sim).dump() << "\n";
  } else {
    print_text(*args, *sched, *sim);
  }
  return kExitOk;
}

STRATA_COMMAND("plan pipeline", "build, check and time a pipeline-parallel schedule", plan_pipeline);

}  // namespace
}  // namespace strata::cli
