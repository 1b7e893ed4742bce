// The one machine-readable shape of every `strata bench` driver, printed with --json: JSON
// Lines on stdout and nothing else there (tables, notes and warnings go to stderr or are left
// out). Every line is one object that starts with
//   "bench"   the subcommand ("adam", "device", "nvme", "offload", "tiers", "tp", "train", ...)
//   "record"  "env" (the first line, once), "result" (one per measurement) or "summary" (the
//             last line, once, written whenever the measurements ran)
// followed by the bench's own fields. The env line opens with the fields every bench shares
// (env_fields()); a result with a ceiling carries "ratio" (the measurement against it) and
// "ceiling" (a phrase naming it); the summary carries the headline figures, a numeric "ratio"
// and its "ceiling". `strata help bench` documents the shape for users; keep the two in step.
//
// Thread-safety: a JsonLines writes from one thread; env_fields() may be called from any.
#pragma once

#include <omp.h>

#include <cassert>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

#include "bench/bench_env.h"

namespace strata::bench {

// Keys stay in the order the driver wrote them (a reader skimming a line sees the setting
// before the figures).
using Json = nlohmann::ordered_json;

// What every env line starts with: the build, the CPU, its threads, the kernel and the load.
inline Json env_fields() {
  double load[1] = {0};
  const bool have_load = ::getloadavg(load, 1) == 1;
  return Json{{"build", build_kind()},
              {"cpu", cpu_brand()},
              {"logical_cpus", std::thread::hardware_concurrency()},
              {"openmp_threads", omp_get_max_threads()},
              {"kernel", kernel_release()},
              {"load_1min", have_load ? Json(load[0]) : Json(nullptr)}};
}

// Writes one bench's lines, each flushed as it is complete so that a reader can follow a long
// run. REQUIRES: env() first and once, then result()s, then summary() once.
class JsonLines {
 public:
  explicit JsonLines(std::string bench, std::ostream& out = std::cout) : bench_(std::move(bench)), out_(out) {}

  // The first line: env_fields(), then `fields` (a key of both takes the bench's value).
  void env(const Json& fields = Json::object()) {
    assert(state_ == State::kNew);
    Json all = env_fields();
    for (const auto& [key, value] : fields.items()) all[key] = value;
    write("env", all);
    state_ = State::kResults;
  }

  // One measurement; where it has a ceiling, `fields` holds "ratio" and "ceiling".
  void result(const Json& fields) {
    assert(state_ == State::kResults);
    write("result", fields);
  }

  // The last line. REQUIRES: `fields` holds "ceiling" and "ratio", a number (null only when the
  // run measured no ceiling at all).
  void summary(const Json& fields) {
    assert(state_ == State::kResults);
    assert(fields.contains("ratio") && (fields["ratio"].is_number() || fields["ratio"].is_null()));
    assert(fields.contains("ceiling"));
    write("summary", fields);
    state_ = State::kDone;
  }

 private:
  enum class State { kNew, kResults, kDone };

  void write(const char* record, const Json& fields) {
    Json line = {{"bench", bench_}, {"record", record}};
    for (const auto& [key, value] : fields.items()) line[key] = value;
    out_ << line.dump() << "\n" << std::flush;
  }

  std::string bench_;
  std::ostream& out_;
  State state_ = State::kNew;
};

// A JSON number, or null where the arithmetic gave none (0/0, a ceiling never measured).
inline Json number_or_null(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

// The debug-build warning: on the table's stream, or on stderr beside JSON lines.
inline void warn_if_not_release(std::ostream& table, bool json) {
  if (build_kind() == "release") return;
  if (json) {
    std::cerr << "warning: not a release build (" << build_kind() << "); figures are not representative\n";
  } else {
    table << "  WARNING: not a release build; figures are not representative\n";
  }
}

}  // namespace strata::bench
