// `strata bench adam`: params/s of every CPU optimizer path against the memory-speed
// ceiling measured in the same run.
//
// The ceiling is CpuAdam::stream() on the best path this CPU runs: the same arrays, the
// same loads and stores (regular stores for p, m, v updated in place; non-temporal stores
// for the write-only 16-bit copy, exactly as the Adam kernels), the same OpenMP split and
// threads, with one add per stream instead of the Adam math. It therefore moves exactly the
// bytes a step must move: 4 (read p) + 2 or 4 (read g) + 8 (read m, v) + 12 (write p, m, v)
// + 2 (write the copy, if any) per parameter. Ceiling and Adam runs alternate, so both see
// the same machine; the headline is the ratio, best-of and median of the paired ratios.
// With --json (bench_json.h): a result per thread count and path, "ratio" the median of the
// paired ratios; the summary is the fastest path at the last thread count.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cxxopts.hpp>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_env.h"
#include "bench/bench_json.h"
#include "cli/command.h"
#include "cpu_adam/cpu_adam.h"
#include "cpu_adam/cpu_features.h"
#include "kernels/numeric.h"
#include "strata/dtype.h"
#include "strata/optimizer.h"

namespace strata::cli {
namespace {

using namespace strata::bench;  // NOLINT(google-build-using-namespace)

using cpu_adam::CpuAdam;
using cpu_adam::Isa;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<void, FreeDeleter>;

// 2 MiB-aligned memory with transparent huge pages requested, so that TLB misses do not
// blur the memory-bandwidth figure (the same for the ceiling and the paths).
Buffer alloc_buffer(std::size_t bytes) {
  constexpr std::size_t kAlign = std::size_t{2} << 20;
  const std::size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded);
  if (p != nullptr) (void)madvise(p, rounded, MADV_HUGEPAGE);
  return Buffer(p);
}

// "64M" = 64 x 2^20 parameters; K, M, G are powers of 1024; a plain number is a count.
bool parse_count(const std::string& text, std::size_t* out) {
  if (text.empty()) return false;
  std::size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(text, &pos);
  } catch (const std::exception&) {
    return false;
  }
  std::string suffix = text.substr(pos);
  unsigned shift = 0;
  if (suffix == "K" || suffix == "k") shift = 10;
  else if (suffix == "M" || suffix == "m") shift = 20;
  else if (suffix == "G" || suffix == "g") shift = 30;
  else if (!suffix.empty()) return false;
  if (v == 0 || v > (1ULL << 40) >> shift) return false;
  *out = static_cast<std::size_t>(v << shift);
  return true;
}

bool parse_int_list(const std::string& text, std::vector<int>* out) {
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      std::size_t pos = 0;
      int v = std::stoi(item, &pos);
      if (pos != item.size() || v < 1 || v > 1024) return false;
      out->push_back(v);
    } catch (const std::exception&) {
      return false;
    }
  }
  return !out->empty();
}

std::string read_first_line(const char* path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

// Deterministic, cheap, well-spread values in [-1, 1).
float hash_unit(std::uint64_t i, std::uint64_t salt) {
  std::uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ULL ^ salt;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 29;
  return static_cast<float>(static_cast<double>(x >> 11) * 0x1p-52 - 1.0);
}

struct PathResult {
  std::string isa;
  double best = 0;          // params/s
  double median = 0;        // params/s
  double ratio_best = 0;    // best / best ceiling
  double ratio_median = 0;  // median of the paired per-round ratios
};

struct ThreadResult {
  int threads = 0;
  double ceiling_best = 0;
  double ceiling_median = 0;
  std::vector<PathResult> paths;
};

int bench_adam(int argc, char** argv) {
  cxxopts::Options opts("strata bench adam",
                        "Adam/AdamW step speed of each CPU path against the same-run memory ceiling.");
  opts.add_options()
      ("params", "parameters per step (K, M, G = powers of 1024)", cxxopts::value<std::string>()->default_value("64M"))
      ("threads", "comma-separated thread counts", cxxopts::value<std::string>()->default_value("1,2"))
      ("grad-dtype", "gradient dtype: fp32, bf16, fp16", cxxopts::value<std::string>()->default_value("fp32"))
      ("param-out", "low-precision parameter copy: none, bf16, fp16", cxxopts::value<std::string>()->default_value("none"))
      ("isa", "paths to run: all, or a comma-separated list of avx512, avx2, scalar",
       cxxopts::value<std::string>()->default_value("all"))
      ("repeat", "timed rounds per thread count (each: ceiling then every path)",
       cxxopts::value<int>()->default_value("7"))
      ("json", "print JSON Lines instead of tables; see 'strata help bench'")
      ("h,help", "show this help");
  cxxopts::ParseResult args;
  try {
    args = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata bench adam: " << e.what() << "\n" << opts.help();
    return kExitUsage;
  }
  if (args.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  if (!args.unmatched().empty()) {
    std::cerr << "strata bench adam: unexpected argument '" << args.unmatched().front() << "'\n" << opts.help();
    return kExitUsage;
  }
  auto usage = [&](const std::string& msg) {
    std::cerr << "strata bench adam: " << msg << "\n";
    return kExitUsage;
  };

  std::size_t n = 0;
  if (!parse_count(args["params"].as<std::string>(), &n)) {
    return usage("--params '" + args["params"].as<std::string>() + "' is not a positive count like 64M or 1000000");
  }
  std::vector<int> thread_counts;
  if (!parse_int_list(args["threads"].as<std::string>(), &thread_counts)) {
    return usage("--threads '" + args["threads"].as<std::string>() + "' is not a list of counts like 1,2");
  }
  DType grad_dtype;
  if (!parse_dtype(args["grad-dtype"].as<std::string>(), &grad_dtype)) {
    return usage("--grad-dtype '" + args["grad-dtype"].as<std::string>() + "' is not one of fp32, bf16, fp16");
  }
  const std::string out_name = args["param-out"].as<std::string>();
  DType out_dtype = DType::kBF16;
  const bool has_copy = out_name != "none";
  if (has_copy && (!parse_dtype(out_name, &out_dtype) || out_dtype == DType::kF32)) {
    return usage("--param-out '" + out_name + "' is not one of none, bf16, fp16");
  }
  const int repeat = args["repeat"].as<int>();
  if (repeat < 1 || repeat > 1000) return usage("--repeat must be between 1 and 1000");

  // Which paths: all known ones (unsupported ones are reported, not run), or a list.
  std::vector<Isa> isas;
  const std::string isa_arg = args["isa"].as<std::string>();
  if (isa_arg == "all") {
    isas = {Isa::kAvx512, Isa::kAvx2, Isa::kScalar};
  } else {
    std::stringstream ss(isa_arg);
    std::string item;
    while (std::getline(ss, item, ',')) {
      auto isa = cpu_adam::parse_isa(item);
      if (!isa) return usage("--isa '" + item + "' is not one of all, avx512, avx2, scalar");
      isas.push_back(*isa);
    }
  }
  const bool json = args.count("json") > 0;

  const std::size_t grad_bytes = dtype_size(grad_dtype);
  const std::size_t bytes_per_param = 4 + grad_bytes + 8 + 12 + (has_copy ? 2 : 0);
  const std::size_t total = n * (16 + grad_bytes + (has_copy ? 2 : 0));
  const std::size_t ram = static_cast<std::size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  if (total > ram / 10 * 8) {
    return usage("--params " + std::to_string(n) + " needs " + std::to_string(total >> 20) + " MiB, more than 80% of " +
                 std::to_string(ram >> 20) + " MiB of RAM; use fewer parameters");
  }

  Buffer p = alloc_buffer(n * 4), m = alloc_buffer(n * 4), v = alloc_buffer(n * 4), g = alloc_buffer(n * grad_bytes);
  Buffer copy = has_copy ? alloc_buffer(n * 2) : Buffer();
  if (!p || !m || !v || !g || (has_copy && !copy)) {
    std::cerr << "strata bench adam: cannot allocate " << (total >> 20) << " MiB for " << n << " parameters\n";
    return kExitFailed;
  }
  {
    float* pf = static_cast<float*>(p.get());
    float* mf = static_cast<float*>(m.get());
    float* vf = static_cast<float*>(v.get());
    for (std::size_t i = 0; i < n; ++i) {
      const float gi = 1e-2f * hash_unit(i, 3);
      pf[i] = hash_unit(i, 1);
      mf[i] = 0.1f * gi;
      vf[i] = 1e-3f * gi * gi;
      if (grad_dtype == DType::kF32) {
        static_cast<float*>(g.get())[i] = gi;
      } else {
        static_cast<std::uint16_t*>(g.get())[i] =
            grad_dtype == DType::kBF16 ? num::f32_to_bf16(gi) : num::f32_to_f16(gi);
      }
      if (has_copy) static_cast<std::uint16_t*>(copy.get())[i] = 0;
    }
  }
  AdamChunk chunk;
  chunk.n = n;
  chunk.params = static_cast<float*>(p.get());
  chunk.grads = g.get();
  chunk.grad_dtype = grad_dtype;
  chunk.exp_avg = static_cast<float*>(m.get());
  chunk.exp_avg_sq = static_cast<float*>(v.get());
  chunk.param_copy = copy.get();
  chunk.param_copy_dtype = out_dtype;

  const Isa best = cpu_adam::supported_isas().front();
  const cpu_adam::CpuFeatures& cpu = cpu_adam::cpu_features();
  std::string supported;
  for (Isa isa : cpu_adam::supported_isas()) supported += (supported.empty() ? "" : ", ") + std::string(cpu_adam::isa_name(isa));
  const std::string thp = read_first_line("/sys/kernel/mm/transparent_hugepage/enabled");

  std::vector<std::string> skipped;
  for (Isa isa : isas) {
    if (!cpu_adam::isa_supported(isa)) {
      skipped.push_back(std::string(cpu_adam::isa_name(isa)) + ": " + cpu_adam::isa_missing(isa));
    }
  }
  if (skipped.size() == isas.size()) {
    std::cerr << "strata bench adam: none of the requested paths runs on this CPU (" << skipped.front()
              << "); this machine runs: " << supported << "\n";
    return kExitFailed;
  }
  JsonLines report("adam");
  const std::string ceiling_name = "streaming kernel on the " + std::string(cpu_adam::isa_name(best)) +
                                   " path at the same threads (ratio: median of the paired rounds)";
  if (json) {
    report.env({{"cpu", cpu.brand.empty() ? cpu_brand() : cpu.brand},
                {"paths_supported", supported},
                {"ceiling_path", cpu_adam::isa_name(best)},
                {"ram_bytes", ram},
                {"transparent_huge_pages", thp},
                {"params", n},
                {"grad_dtype", dtype_name(grad_dtype)},
                {"param_out", has_copy ? std::string(dtype_name(out_dtype)) : std::string("none")},
                {"bytes_per_param", bytes_per_param},
                {"repeat", repeat},
                {"skipped", skipped}});
  } else {
    std::cout << "strata bench adam\n"
              << "  cpu:        " << (cpu.brand.empty() ? "unknown" : cpu.brand) << ", " << std::thread::hardware_concurrency()
              << " logical CPUs; paths this CPU runs: " << supported << "\n"
              << "  build:      " << build_kind() << "\n"
              << "  memory:     " << (ram >> 30) << " GiB RAM, transparent huge pages: " << (thp.empty() ? "unknown" : thp)
              << "\n"
              << "  step:       AdamW, N = " << n << " params, grad " << dtype_name(grad_dtype) << ", param copy "
              << (has_copy ? std::string(dtype_name(out_dtype)) : std::string("none")) << ", " << bytes_per_param
              << " B/param moved, " << (total >> 20) << " MiB of arrays\n"
              << "  ceiling:    streaming kernel on the " << cpu_adam::isa_name(best)
              << " path, same loads/stores/split (regular stores in place,"
              << (has_copy ? " non-temporal copy stores" : " no copy") << ")\n"
              << "  rounds:     " << repeat << " per thread count, alternating ceiling and paths\n";
  }
  warn_if_not_release(std::cout, json);

  AdamHyper hyper;
  hyper.lr = 1e-3;
  hyper.weight_decay = 0.01;
  hyper.mode = AdamMode::kAdamW;
  std::vector<ThreadResult> results;
  std::int64_t step = 0;
  for (int threads : thread_counts) {
    CpuAdamOptions o;
    o.threads = threads;
    o.isa = std::string(cpu_adam::isa_name(best));
    auto ceiling = CpuAdam::create(o);
    if (!ceiling.ok()) {
      std::cerr << "strata bench adam: " << ceiling.status() << "\n";
      return kExitFailed;
    }
    std::vector<std::unique_ptr<CpuAdam>> paths;
    for (Isa isa : isas) {
      if (!cpu_adam::isa_supported(isa)) continue;
      o.isa = std::string(cpu_adam::isa_name(isa));
      auto path = CpuAdam::create(o);
      if (!path.ok()) {
        std::cerr << "strata bench adam: " << path.status() << "\n";
        return kExitFailed;
      }
      paths.push_back(std::move(path).value());
    }
    auto time_it = [&](auto&& fn) -> double {  // seconds; < 0 on failure
      const auto t0 = Clock::now();
      Status s = fn();
      const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      if (!s.ok()) {
        std::cerr << "strata bench adam: " << s << "\n";
        return -1;
      }
      return dt;
    };
    // Warm-up: page faults, the OpenMP team, caches of the instruction stream.
    if (time_it([&] { return (*ceiling)->stream(chunk); }) < 0) return kExitFailed;
    for (auto& path : paths) {
      if (time_it([&] { return path->step(hyper, AdamStep{++step, 1.0}, chunk); }) < 0) return kExitFailed;
    }
    std::vector<double> ceiling_times;
    std::vector<std::vector<double>> path_times(paths.size());
    for (int r = 0; r < repeat; ++r) {
      const double c = time_it([&] { return (*ceiling)->stream(chunk); });
      if (c < 0) return kExitFailed;
      ceiling_times.push_back(c);
      for (std::size_t k = 0; k < paths.size(); ++k) {
        const double t = time_it([&] { return paths[k]->step(hyper, AdamStep{++step, 1.0}, chunk); });
        if (t < 0) return kExitFailed;
        path_times[k].push_back(t);
      }
    }
    ThreadResult tr;
    tr.threads = threads;
    const double nd = static_cast<double>(n);
    tr.ceiling_best = nd / *std::min_element(ceiling_times.begin(), ceiling_times.end());
    tr.ceiling_median = nd / median(ceiling_times);
    for (std::size_t k = 0; k < paths.size(); ++k) {
      PathResult pr;
      pr.isa = std::string(cpu_adam::isa_name(paths[k]->isa()));
      pr.best = nd / *std::min_element(path_times[k].begin(), path_times[k].end());
      pr.median = nd / median(path_times[k]);
      pr.ratio_best = pr.best / tr.ceiling_best;
      std::vector<double> ratios;
      for (int r = 0; r < repeat; ++r) ratios.push_back(ceiling_times[r] / path_times[k][r]);
      pr.ratio_median = median(ratios);
      tr.paths.push_back(pr);
    }
    results.push_back(tr);
    if (json) {
      for (const PathResult& pr : tr.paths) {
        report.result({{"threads", tr.threads},
                       {"isa", pr.isa},
                       {"best", pr.best},
                       {"median", pr.median},
                       {"ratio_best", pr.ratio_best},
                       {"ratio_median", pr.ratio_median},
                       {"ratio", pr.ratio_median},
                       {"ceiling", ceiling_name},
                       {"ceiling_best", tr.ceiling_best},
                       {"ceiling_median", tr.ceiling_median}});
      }
    } else {
      std::cout << std::fixed << "\nthreads " << threads << ":\n"
                << "  " << std::left << std::setw(10) << "kernel" << std::right << std::setw(16) << "best params/s"
                << std::setw(12) << "best GB/s" << std::setw(18) << "median params/s" << std::setw(12) << "ratio best"
                << std::setw(14) << "ratio median" << "\n";
      auto row = [&](const std::string& name, double b, double med, double rb, double rm, bool is_ceiling) {
        std::cout << "  " << std::left << std::setw(10) << name << std::right << std::setprecision(3) << std::scientific
                  << std::setw(16) << b << std::fixed << std::setprecision(2) << std::setw(12)
                  << b * static_cast<double>(bytes_per_param) / 1e9 << std::scientific << std::setprecision(3)
                  << std::setw(18) << med << std::fixed;
        if (is_ceiling) {
          std::cout << std::setw(12) << "1" << std::setw(14) << "1" << "\n";
        } else {
          std::cout << std::setprecision(3) << std::setw(12) << rb << std::setw(14) << rm << "\n";
        }
      };
      row("ceiling", tr.ceiling_best, tr.ceiling_median, 1, 1, true);
      for (const PathResult& pr : tr.paths) row(pr.isa, pr.best, pr.median, pr.ratio_best, pr.ratio_median, false);
    }
  }

  if (json) {
    // The headline: the fastest path at the last thread count asked for.
    const ThreadResult& last = results.back();
    auto slower = [](const PathResult& a, const PathResult& b) { return a.median < b.median; };
    const PathResult& top = *std::max_element(last.paths.begin(), last.paths.end(), slower);
    report.summary({{"threads", last.threads},
                    {"isa", top.isa},
                    {"params_per_s", top.median},
                    {"gbps", top.median * static_cast<double>(bytes_per_param) / 1e9},
                    {"ratio_best", top.ratio_best},
                    {"ratio", top.ratio_median},
                    {"ceiling", ceiling_name}});
  } else {
    for (const std::string& s : skipped) std::cout << "\nnot run: " << s << "\n";
    std::cout << "\nratio = Adam params/s / ceiling params/s (best: best of " << repeat
              << " rounds each; median: median of the per-round paired ratios)\n";
  }
  return kExitOk;
}

}  // namespace

STRATA_COMMAND("bench adam", "CPU Adam/AdamW params/s per path vs the same-run memory ceiling", bench_adam);

}  // namespace strata::cli
