// `strata bench`: the group of the bench drivers. Alone or with --help it lists them and
// describes what they share: the ratio to a ceiling measured in the same run, and the one
// --json shape (written by bench/bench_json.h; keep the two in step).
#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "cli/command.h"

namespace strata::cli {
namespace {

constexpr const char* kJsonShape = R"(--json (every subcommand): JSON Lines on stdout, one object per line and nothing
else there (tables are not printed; notes and warnings go to stderr). Each line starts
with two keys, then the bench's own fields:
  "bench"   the subcommand: "adam", "comm", "device", "dp", "nvme", "offload", "pp",
            "tiers", "tp", "train" or "zero3"
  "record"  what the line is:
    "env"      the first line, once: "build" ("release", or what makes the figures
               unrepresentative), "cpu", "logical_cpus", "openmp_threads", "kernel",
               "load_1min", then the bench's setting and environment (sizes, device,
               path and "file_system" where it touches a file system)
    "result"   one per measurement; where the measurement has a ceiling, "ratio" (the
               measurement against it) and "ceiling" (a phrase naming it and the ratio's
               direction, e.g. "GB/s over its GB/s" or "time over its time")
    "summary"  the last line, once: the headline figures, a numeric "ratio" and its
               "ceiling" (bench device: null only when it measured no ceiling at all)
A run that fails before its summary exits non-zero and its last line is not a summary;
one that measured everything writes the summary and says with its exit status whether a
bar was met (bench tiers) or every measurement succeeded (bench device, bench nvme).

headline ratios:
  adam     fastest path's params/s over the streaming ceiling's (median of paired rounds)
  comm     lowest bus bandwidth ratio from 1 MiB: MpiComm over MPI called directly (under
           mpirun), else LocalComm over a memcpy of the bytes each rank moves
  dp       under mpirun: N processes' tokens/s over N x one process's (weak scaling); alone:
           the share of an added gradient all-reduce delay that backward hides
  device   worst step's device GEMM time over oneDNN direct (without GEMMs: lowest copy
           GB/s over its ceiling)
  nvme     best setting's GB/s over fio's (--compare-fio) or over each mode's best row
  offload  step time over max(compute, transfer)
  pp       one process's step time over the fastest schedule's on two pipeline stages
           (under mpirun: processes, bar 1.6 at m = 8); each stage's measured idle fraction
           beside the simulator's for the measured costs (bar: within 0.05)
  tiers    stall with prefetch over stall without (the worst home)
  tp       under mpirun: one process's step time over N tensor-parallel processes' (bar 1.5
           at N = 2); alone: the tp group's all-reduced bytes over the layers' count
  train    model FLOP/s over the GEMM ceiling
  zero3    alone: the share of the step the training stream waits for parameter gathers
           on a link throttled to what forward needs; under mpirun: as dp
)";

void print_help(std::ostream& os) {
  os << "usage: strata bench SUBCOMMAND [options]   ('strata bench SUBCOMMAND --help' for its options)\n\n"
     << "Each subcommand measures one subsystem and reports it against a ceiling measured in the\n"
     << "same run, after printing the environment (build, CPU, threads, kernel, file system).\n\n"
     << "subcommands:\n";
  std::vector<const Command*> benches;
  for (const Command& c : commands()) {
    if (c.name.rfind("bench ", 0) == 0) benches.push_back(&c);
  }
  std::sort(benches.begin(), benches.end(), [](const Command* a, const Command* b) { return a->name < b->name; });
  for (const Command* c : benches) {
    const std::string sub = c->name.substr(6);
    os << "  " << sub << std::string(sub.size() < 9 ? 9 - sub.size() : 1, ' ') << c->summary << "\n";
  }
  os << "\n" << kJsonShape;
}

// Reached only when no `bench SUBCOMMAND` matched (main() prefers the longest name).
int bench(int argc, char** argv) {
  if (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    print_help(std::cout);
    return kExitOk;
  }
  if (argc < 2) {
    print_help(std::cerr);
    return kExitUsage;
  }
  std::cerr << "strata bench: unknown subcommand '" << argv[1] << "'; see 'strata help bench'\n";
  return kExitUsage;
}

}  // namespace

STRATA_COMMAND("bench", "measure a subsystem against its ceiling; the subcommands and --json: strata help bench", bench);

}  // namespace strata::cli
