// `strata bench device`: copy bandwidth per direction and GEMM throughput at the shapes of the
// default and gpt2 models, each against a ceiling measured in the same run.
//
// * Copies: host (pinned) -> device, device -> host, device -> device, and both link directions
//   at once, through Device streams. The ceiling is what the device's copy engine can at best
//   do: the configured throttle when there is one, otherwise a plain memcpy between the same
//   two buffers on the calling thread (the host device's engine is one memcpy thread).
// * GEMMs: every matrix product of one GPT-2 training step (forward, input gradient, weight
//   gradient of each linear layer; attention scores and mixing with their gradients; the tied
//   output head), through Device::gemm, and the same product through oneDNN called directly
//   (same primitive, same memory, same threads). The headline is the wrapper cost: the device
//   time over the direct time, per shape and over the whole step (bar: < 5 %).
//
// Both sides enqueue a batch of identical products and wait once, as a model does; device and
// direct batches alternate, and the median of each side is compared.
//
// --json (bench_json.h): a result per copy direction, the call overhead, each product and each
// step total; the summary's ratio is the worst step total's device / direct time, or without
// GEMMs the lowest copy ratio.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <cxxopts.hpp>
#include <functional>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "bench/bench_env.h"
#include "bench/bench_json.h"
#include "cli/command.h"
#include "kernels/numeric.h"
#include "strata/device.h"
#include "strata/profile.h"
#include "strata/units.h"

namespace strata::cli {
namespace {

using namespace strata::bench;  // NOLINT(google-build-using-namespace)



// ---------------------------------------------------------------------------------------------
// GEMM shapes of one training step

struct Shape {
  std::string name;
  std::int64_t m, n, k;
  bool ta, tb;
  std::int64_t batch;
  float alpha, beta;
  int per_step;  // occurrences in one forward + backward
};

// Row-major conventions: activations (rows, features), linear weights (in, out) as GPT-2's
// Conv1D stores them, the tied head's weight as the token embedding (vocab, C).
std::vector<Shape> step_shapes(const ModelDims& d, int micro_batch) {
  const std::int64_t bt = static_cast<std::int64_t>(micro_batch) * d.seq_len;
  const std::int64_t c = d.n_embd, t = d.seq_len, hd = d.n_embd / d.n_head, bh = static_cast<std::int64_t>(micro_batch) * d.n_head;
  const int l = d.n_layer;
  std::vector<Shape> s;
  auto linear = [&](const std::string& name, std::int64_t in, std::int64_t out) {
    s.push_back({name + " fwd", bt, out, in, false, false, 1, 1.0f, 0.0f, l});   // y = x W
    s.push_back({name + " dx", bt, in, out, false, true, 1, 1.0f, 0.0f, l});     // dx = dy W^T
    s.push_back({name + " dW", in, out, bt, true, false, 1, 1.0f, 1.0f, l});     // dW += x^T dy
  };
  linear("qkv", c, 3 * c);
  linear("attn proj", c, c);
  linear("fc", c, 4 * c);
  linear("fc proj", 4 * c, c);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  s.push_back({"scores q k^T", t, t, hd, false, true, bh, scale, 0.0f, l});
  s.push_back({"mix p v", t, hd, t, false, false, bh, 1.0f, 0.0f, l});
  s.push_back({"mix dp = dy v^T", t, t, hd, false, true, bh, 1.0f, 0.0f, l});
  s.push_back({"mix dv = p^T dy", t, hd, t, true, false, bh, 1.0f, 0.0f, l});
  s.push_back({"scores dq = ds k", t, hd, t, false, false, bh, scale, 0.0f, l});
  s.push_back({"scores dk = ds^T q", t, hd, t, true, false, bh, scale, 0.0f, l});
  s.push_back({"head fwd", bt, d.vocab, c, false, true, 1, 1.0f, 0.0f, 1});   // logits = x wte^T
  s.push_back({"head dx", bt, c, d.vocab, false, false, 1, 1.0f, 0.0f, 1});   // dx = dlogits wte
  s.push_back({"head dW", d.vocab, c, bt, true, false, 1, 1.0f, 1.0f, 1});    // dwte += dlogits^T x
  return s;
}

// "gemm:jit,undef,src_f32::blocked:ab:f0 ..." -> "gemm:jit"
std::string short_impl(const std::string& info) {
  const std::size_t prefix = info.find("fp32 ");
  const std::size_t start = prefix == std::string::npos ? 0 : prefix + 5;
  return info.substr(0, start) + info.substr(start, info.find(',', start) - start);
}

double flops(const Shape& s) { return 2.0 * static_cast<double>(s.m) * s.n * s.k * s.batch; }

struct GemmResult {
  Shape shape;
  DType dtype;
  double device_best = 0, direct_best = 0;  // fastest batch, seconds per product
  double device_med = 0, direct_med = 0;    // median batch, seconds per product
  double paired_ratio = 0;                  // median over rounds of device / direct in that round
  std::string impl;
};

dnnl::memory::data_type dt(DType t) {
  return t == DType::kF32 ? dnnl::memory::data_type::f32
         : t == DType::kBF16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f16;
}

// The memory descriptor a oneDNN user writes for op(X) of a dense row-major batch.
dnnl::memory::desc md(std::int64_t batch, std::int64_t rows, std::int64_t cols, bool trans, DType t) {
  // Stored (cols, rows) when transposed: swap the strides.
  const std::int64_t rs = trans ? 1 : cols, cs = trans ? rows : 1;
  if (batch == 1) return dnnl::memory::desc({rows, cols}, dt(t), {rs, cs});
  return dnnl::memory::desc({batch, rows, cols}, dt(t), {rows * cols, rs, cs});
}

// With wait_each, every product is waited for before the next is issued (latency); otherwise
// a batch is enqueued and waited for once (throughput, as a model runs).
Status measure_gemm(Device& dev, const Shape& s, DType dtype, double min_time, GemmResult* out,
                    bool wait_each = false) {
  const std::size_t es = dtype_size(dtype);
  const std::size_t na = static_cast<std::size_t>(s.batch * s.m * s.k), nb = static_cast<std::size_t>(s.batch * s.k * s.n),
                    nc = static_cast<std::size_t>(s.batch * s.m * s.n);
  STRATA_ASSIGN_OR_RETURN(DeviceBuffer a, dev.allocate(na * es));
  STRATA_ASSIGN_OR_RETURN(DeviceBuffer b, dev.allocate(nb * es));
  STRATA_ASSIGN_OR_RETURN(DeviceBuffer c, dev.allocate(nc * 4));
  Stream& st = dev.default_stream();
  STRATA_RETURN_IF_ERROR(dev.fill(a.view(dtype), 0.01f, st));
  STRATA_RETURN_IF_ERROR(dev.fill(b.view(dtype), 0.02f, st));
  STRATA_RETURN_IF_ERROR(dev.fill(c.view(DType::kF32), 0.0f, st));
  MatrixView am, bm, cm;
  am.data = a.view(dtype);
  am.rows = s.ta ? s.k : s.m;
  am.cols = s.ta ? s.m : s.k;
  bm.data = b.view(dtype);
  bm.rows = s.tb ? s.n : s.k;
  bm.cols = s.tb ? s.k : s.n;
  cm.data = c.view(DType::kF32);
  cm.rows = s.m;
  cm.cols = s.n;
  const GemmArgs args{am, bm, cm, s.ta, s.tb, s.alpha, s.beta, s.batch};

  // oneDNN directly, on the same memory (the host device's memory is host-addressable).
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  dnnl::primitive_attr attr;
  if (s.alpha != 1.0f) attr.set_output_scales(0, {s.alpha});
  if (s.beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(s.beta);
    attr.set_post_ops(po);
  }
  dnnl::memory::desc a_md = md(s.batch, s.m, s.k, s.ta, dtype), b_md = md(s.batch, s.k, s.n, s.tb, dtype),
                     c_md = md(s.batch, s.m, s.n, false, DType::kF32);
  // Without a oneDNN kernel for the dtype on this CPU (bf16 without AVX-512), the device runs
  // the product on fp32 copies of the operands. Calling oneDNN directly then means the same:
  // convert both operands (a plain OpenMP loop here) and run oneDNN's fp32 product, so the
  // ratio is still the wrapper's own cost (the conversion itself is the emulation's, which a
  // GPU does not pay; the table's kernel column says "convert + fp32").
  DeviceBuffer a32, b32;
  void* a_ptr = a.address();
  void* b_ptr = b.address();
  dnnl::matmul::primitive_desc pd;
  bool convert = false;
  try {
    pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, c_md), attr, eng);
    out->impl = pd.impl_info_str();
  } catch (const dnnl::error& e) {
    if (e.status != dnnl_unimplemented || dtype == DType::kF32) {
      return internal_error(std::string("oneDNN matmul creation: ") + e.what());
    }
    STRATA_ASSIGN_OR_RETURN(a32, dev.allocate(na * 4));
    STRATA_ASSIGN_OR_RETURN(b32, dev.allocate(nb * 4));
    STRATA_RETURN_IF_ERROR(dev.cast(a32.view(DType::kF32), a.view(dtype), st));
    STRATA_RETURN_IF_ERROR(dev.cast(b32.view(DType::kF32), b.view(dtype), st));
    STRATA_RETURN_IF_ERROR(st.synchronize());
    a_md = md(s.batch, s.m, s.k, s.ta, DType::kF32);
    b_md = md(s.batch, s.k, s.n, s.tb, DType::kF32);
    pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, c_md), attr, eng);
    out->impl = "no " + std::string(dtype_name(dtype)) + " kernel: convert + fp32 " + pd.impl_info_str();
    a_ptr = a32.address();
    b_ptr = b32.address();
    convert = true;
  }
  dnnl::matmul prim(pd);
  dnnl::memory amem(a_md, eng, a_ptr), bmem(b_md, eng, b_ptr), cmem(c_md, eng, c.address());

  auto device_batch = [&](int reps) -> Result<double> {
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) {
      STRATA_RETURN_IF_ERROR(dev.gemm(args, st));
      if (wait_each) STRATA_RETURN_IF_ERROR(st.synchronize());
    }
    STRATA_RETURN_IF_ERROR(st.synchronize());
    return seconds_since(t0) / reps;
  };
  auto to_f32 = [](const void* src, void* dst, std::size_t n) {
    const auto* in = static_cast<const std::uint16_t*>(src);
    auto* o = static_cast<float*>(dst);
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < n; ++i) o[i] = num::bf16_to_f32(in[i]);
  };
  auto direct_batch = [&](int reps) -> double {
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) {
      if (convert) {
        to_f32(a.address(), a32.address(), na);
        to_f32(b.address(), b32.address(), nb);
      }
      prim.execute(strm, {{DNNL_ARG_SRC, amem}, {DNNL_ARG_WEIGHTS, bmem}, {DNNL_ARG_DST, cmem}});
      if (wait_each) strm.wait();
    }
    strm.wait();
    return seconds_since(t0) / reps;
  };
  // Warm up both (primitive creation, page faults, OpenMP teams), then size the batches so
  // that one takes about 20 ms (less with a --min-time below 0.1 s, so that the five rounds
  // fit in it).
  STRATA_ASSIGN_OR_RETURN(double warm, device_batch(1));
  const double warm_direct = direct_batch(1);
  const double per = std::max(1e-7, std::min(warm, warm_direct));
  const double batch_s = std::min(0.02, min_time / 5);
  const int reps = static_cast<int>(std::clamp(batch_s / per, 1.0, 10000.0));
  std::vector<double> dev_t, dir_t, ratios;
  const auto start = Clock::now();
  // At least 5 rounds, 3 for products of a second or more (gpt2's output head).
  const std::size_t min_rounds = per > 0.5 ? 3 : 5;
  while (dev_t.size() < min_rounds || seconds_since(start) < min_time) {
    // Alternate which side goes first, so that neither always inherits the other's warm caches
    // or spinning OpenMP workers.
    double d = 0, x = 0;
    if (dev_t.size() % 2 == 0) {
      STRATA_ASSIGN_OR_RETURN(d, device_batch(reps));
      x = direct_batch(reps);
    } else {
      x = direct_batch(reps);
      STRATA_ASSIGN_OR_RETURN(d, device_batch(reps));
    }
    dev_t.push_back(d);
    dir_t.push_back(x);
    ratios.push_back(d / x);
    if (dev_t.size() >= 400) break;
  }
  out->shape = s;
  out->dtype = dtype;
  out->device_best = *std::min_element(dev_t.begin(), dev_t.end());
  out->direct_best = *std::min_element(dir_t.begin(), dir_t.end());
  out->device_med = median(dev_t);
  out->direct_med = median(dir_t);
  out->paired_ratio = median(ratios);
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Copies

struct CopyResult {
  std::string name;
  double gbps = 0;      // through the device
  double ceiling = 0;   // GB/s; 0 when none was measured
  std::string ceiling_name;
};

// GB/s of each copy direction through Device streams, and its ceiling: the throttle when one
// is set, otherwise memcpy between the same buffers (when the host can address them).
Result<std::vector<CopyResult>> measure_copies(Device& dev, std::size_t n, std::uint64_t throttle, double min_time) {
  STRATA_ASSIGN_OR_RETURN(DeviceBuffer d1, dev.allocate(n));
  STRATA_ASSIGN_OR_RETURN(DeviceBuffer d2, dev.allocate(n));
  STRATA_ASSIGN_OR_RETURN(PinnedBuffer h1, dev.allocate_pinned(n));
  STRATA_ASSIGN_OR_RETURN(PinnedBuffer h2, dev.allocate_pinned(n));
  STRATA_ASSIGN_OR_RETURN(auto s2, dev.create_stream("bench-2"));
  std::memset(h1.data(), 1, n);
  std::memset(h2.data(), 2, n);
  Stream& s1 = dev.default_stream();
  auto run = [&](auto&& enqueue) -> Result<double> {  // seconds
    const auto t0 = Clock::now();
    STRATA_RETURN_IF_ERROR(enqueue());
    STRATA_RETURN_IF_ERROR(dev.synchronize());
    return seconds_since(t0);
  };
  auto h2d = [&] { return dev.copy_to_device(d1.range(), h1.bytes(), s1); };
  auto d2h = [&] { return dev.copy_to_host(h2.bytes(), d1.range(), s1); };
  auto d2d = [&] { return dev.copy_on_device(d2.range(), d1.range(), s1); };
  auto both = [&]() -> Status {
    STRATA_RETURN_IF_ERROR(dev.copy_to_device(d1.range(), h1.bytes(), s1));
    return dev.copy_to_host(h2.bytes(), d2.range(), *s2);
  };
  const bool addressable = dev.info().host_addressable;
  // The ceiling of one direction is one memcpy on this thread; of both at once, two memcpy
  // threads over the same buffers (what two copy engines can at best do on this machine).
  auto memcpy_time = [&](void* dst, const void* src, void* dst2, const void* src2) {
    const auto t0 = Clock::now();
    if (dst2 == nullptr) {
      std::memcpy(dst, src, n);
    } else {
      std::thread other([&] { std::memcpy(dst2, src2, n); });
      std::memcpy(dst, src, n);
      other.join();
    }
    return seconds_since(t0);
  };
  struct Dir {
    std::string name;
    std::function<Status()> fn;
    void* dst;
    const void* src;
    void* dst2;
    const void* src2;
    double bytes_factor;
    bool throttled;
  };
  const std::vector<Dir> dirs = {
      {"host -> device", h2d, d1.address(), h1.data(), nullptr, nullptr, 1.0, true},
      {"device -> host", d2h, h2.data(), d1.address(), nullptr, nullptr, 1.0, true},
      {"device -> device", d2d, d2.address(), d1.address(), nullptr, nullptr, 1.0, false},
      {"both directions at once", both, d1.address(), h1.data(), h2.data(), d2.address(), 2.0, true},
  };
  std::vector<CopyResult> results;
  for (const auto& d : dirs) {
    std::vector<double> t, c;
    STRATA_RETURN_IF_ERROR(run(d.fn).status());  // warm-up: first touch of every page
    const auto start = Clock::now();
    while (t.size() < 5 || (seconds_since(start) < 4 * min_time && t.size() < 100)) {
      STRATA_ASSIGN_OR_RETURN(double seconds, run(d.fn));
      t.push_back(seconds);
      if (addressable) c.push_back(memcpy_time(d.dst, d.src, d.dst2, d.src2));
    }
    CopyResult cr;
    cr.name = d.name;
    cr.gbps = d.bytes_factor * static_cast<double>(n) / median(t) / 1e9;
    if (throttle != 0 && d.throttled) {
      cr.ceiling = d.bytes_factor * static_cast<double>(throttle) / 1e9;
      cr.ceiling_name = "throttle";
    } else if (!c.empty()) {
      cr.ceiling = d.bytes_factor * static_cast<double>(n) / median(c) / 1e9;
      cr.ceiling_name = d.dst2 == nullptr ? "memcpy" : "2 memcpy threads";
    }
    results.push_back(cr);
  }
  return results;
}

void print_copies(const std::vector<CopyResult>& results, std::size_t n) {
  std::cout << "\ncopies: " << format_bytes_human(static_cast<double>(n)) << " per copy, pinned host memory, median of >= 5\n"
            << "  " << std::left << std::setw(26) << "direction" << std::right << std::setw(10) << "GB/s" << std::setw(12)
            << "ceiling" << std::setw(10) << "ratio" << "  ceiling is\n";
  for (const auto& r : results) {
    std::cout << "  " << std::left << std::setw(26) << r.name << std::right << std::fixed << std::setprecision(2)
              << std::setw(10) << r.gbps << std::setw(12) << r.ceiling << std::setw(10)
              << (r.ceiling > 0 ? r.gbps / r.ceiling : 0.0) << "  " << r.ceiling_name << "\n";
  }
}

Json copy_json(const CopyResult& r) {
  Json j = {{"kind", "copy"}, {"direction", r.name}, {"gbps", r.gbps}};
  if (r.ceiling > 0) {
    j["ceiling_gbps"] = r.ceiling;
    j["ratio"] = r.gbps / r.ceiling;
    j["ceiling"] = r.ceiling_name == "throttle" ? "the configured copy throttle (GB/s over it)"
                                                : r.ceiling_name + " between the same buffers (GB/s over its GB/s)";
  }
  return j;
}

constexpr const char* kDirectCeiling = "oneDNN called directly on the same memory (device time over its time)";

// The fixed cost of a call: a product so small that the arithmetic is negligible, enqueued in
// batches and waited for one by one.
Status measure_call_overhead(Device& dev, double min_time, bool json, JsonLines& report) {
  const Shape tiny{"tiny", 32, 32, 32, false, false, 1, 1.0f, 0.0f, 1};
  GemmResult g, w;
  STRATA_RETURN_IF_ERROR(measure_gemm(dev, tiny, DType::kF32, min_time, &g));
  STRATA_RETURN_IF_ERROR(measure_gemm(dev, tiny, DType::kF32, min_time, &w, /*wait_each=*/true));
  if (json) {
    report.result({{"kind", "gemm_call_overhead"},
                   {"m", tiny.m},
                   {"n", tiny.n},
                   {"k", tiny.k},
                   {"device_us", g.device_best * 1e6},
                   {"direct_us", g.direct_best * 1e6},
                   {"waited_device_us", w.device_best * 1e6},
                   {"waited_direct_us", w.direct_best * 1e6},
                   {"ratio", g.device_best / g.direct_best},
                   {"ceiling", kDirectCeiling}});
    return Status::OK();
  }
  std::cout << "\ngemm call overhead, 32x32x32 fp32 (fastest batch, per product):\n"
            << "  enqueued, one wait per batch: device " << std::fixed << std::setprecision(1) << g.device_best * 1e6
            << " us, oneDNN direct " << g.direct_best * 1e6 << " us; the wrapper adds "
            << (g.device_best - g.direct_best) * 1e6 << " us per call\n"
            << "  waited for one by one:        device " << w.device_best * 1e6 << " us, oneDNN direct "
            << w.direct_best * 1e6 << " us (the hand-off to the compute engine thread and back)\n";
  return Status::OK();
}

// Every product of one training step, summed with its occurrences per step.
struct StepGemms {
  std::vector<GemmResult> shapes;
  double device_best = 0, direct_best = 0, device_med = 0, direct_med = 0, flops = 0;
  double worst = 0;  // the highest single-shape paired ratio
  double ratio() const { return device_best / direct_best; }
};

StepGemms sum_step(std::vector<GemmResult> shapes) {
  StepGemms s;
  for (const auto& g : shapes) {
    s.worst = std::max(s.worst, g.paired_ratio);
    s.device_best += g.shape.per_step * g.device_best;
    s.direct_best += g.shape.per_step * g.direct_best;
    s.device_med += g.shape.per_step * g.device_med;
    s.direct_med += g.shape.per_step * g.direct_med;
    s.flops += g.shape.per_step * flops(g.shape);
  }
  s.shapes = std::move(shapes);
  return s;
}

void print_step(const std::string& name, const ModelDims& dims, int mb, DType dtype, const StepGemms& s) {
  std::cout << "\ngemm: model '" << name << "' (n_layer " << dims.n_layer << ", n_head " << dims.n_head << ", n_embd "
            << dims.n_embd << ", vocab " << dims.vocab << ", seq " << dims.seq_len << ", micro-batch " << mb << "), "
            << dtype_name(dtype) << " inputs, fp32 accumulate and output\n"
            << "  GFLOP/s of the fastest batch; ratio = median over alternating rounds of device time / direct time\n"
            << "  " << std::left << std::setw(20) << "product" << std::right << std::setw(22) << "M x N x K (batch)"
            << std::setw(6) << "x" << std::setw(11) << "device" << std::setw(11) << "oneDNN" << std::setw(9) << "ratio"
            << "  oneDNN kernel\n";
  for (const auto& g : s.shapes) {
    const double f = flops(g.shape);
    std::ostringstream dims_s;
    dims_s << g.shape.m << "x" << g.shape.n << "x" << g.shape.k;
    if (g.shape.batch > 1) dims_s << " (" << g.shape.batch << ")";
    std::cout << "  " << std::left << std::setw(20) << g.shape.name << std::right << std::setw(22) << dims_s.str()
              << std::setw(6) << g.shape.per_step << std::fixed << std::setprecision(1) << std::setw(11)
              << f / g.device_best / 1e9 << std::setw(11) << f / g.direct_best / 1e9 << std::setprecision(3) << std::setw(9)
              << g.paired_ratio << "  " << short_impl(g.impl) << "\n";
  }
  if (s.direct_best <= 0) return;
  const double ratio = s.ratio();
  std::cout << "  step total: " << std::fixed << std::setprecision(3) << s.flops / 1e9 << " GFLOP; device "
            << std::setprecision(1) << s.flops / s.device_best / 1e9 << " GFLOP/s, oneDNN direct "
            << s.flops / s.direct_best / 1e9 << " GFLOP/s (fastest batches)\n"
            << "  wrapper cost: " << std::showpos << (ratio - 1.0) * 100 << " % on fastest batches, "
            << (s.device_med / s.direct_med - 1.0) * 100 << std::noshowpos << " % on medians (bar: < 5 %: "
            << (ratio < 1.05 ? "met" : "NOT met") << "); worst single-shape paired ratio " << std::setprecision(3)
            << s.worst << "\n";
}

void write_step(JsonLines& report, const std::string& name, int mb, DType dtype, const StepGemms& s) {
  for (const auto& g : s.shapes) {
    const double f = flops(g.shape);
    report.result({{"kind", "gemm"},
                   {"model", name},
                   {"dtype", dtype_name(dtype)},
                   {"product", g.shape.name},
                   {"m", g.shape.m},
                   {"n", g.shape.n},
                   {"k", g.shape.k},
                   {"batch", g.shape.batch},
                   {"per_step", g.shape.per_step},
                   {"device_gflops", f / g.device_best / 1e9},
                   {"direct_gflops", f / g.direct_best / 1e9},
                   {"ratio", g.paired_ratio},
                   {"ceiling", std::string(kDirectCeiling) + "; median of alternating rounds"},
                   {"kernel", short_impl(g.impl)}});
  }
  if (s.direct_best <= 0) return;
  report.result({{"kind", "gemm_step"},
                 {"model", name},
                 {"dtype", dtype_name(dtype)},
                 {"micro_batch", mb},
                 {"gflop", s.flops / 1e9},
                 {"device_gflops", s.flops / s.device_best / 1e9},
                 {"direct_gflops", s.flops / s.direct_best / 1e9},
                 {"ratio", s.ratio()},
                 {"ratio_median", s.device_med / s.direct_med},
                 {"worst_shape_ratio", s.worst},
                 {"bar", 1.05},
                 {"meets_bar", s.ratio() < 1.05},
                 {"ceiling", std::string(kDirectCeiling) + "; the step's fastest batches summed"}});
}

int bench_device(int argc, char** argv) {
  cxxopts::Options opts("strata bench device",
                        "Copy bandwidth per direction and GEMM throughput at the model's shapes, "
                        "against ceilings measured in the same run.");
  opts.add_options()
      ("device", "device backend: host or cuda", cxxopts::value<std::string>()->default_value("host"))
      ("bandwidth", "host device copy throttle per direction, e.g. 25GB/s; 0 = none",
       cxxopts::value<std::string>()->default_value("0"))
      ("copy-size", "bytes per copy", cxxopts::value<std::string>()->default_value("64MiB"))
      ("models", "comma-separated model presets for the GEMM shapes", cxxopts::value<std::string>()->default_value("default,gpt2"))
      ("micro-batch", "sequences per micro-batch for the default model (gpt2 uses 1)",
       cxxopts::value<int>()->default_value("8"))
      ("dtypes", "comma-separated GEMM input dtypes (fp32, bf16)", cxxopts::value<std::string>()->default_value("fp32,bf16"))
      ("min-time", "seconds of measurement per shape and side", cxxopts::value<double>()->default_value("0.15"))
      ("no-gemm", "skip the GEMM part")
      ("json", "print JSON Lines instead of tables; see 'strata help bench'")
      ("h,help", "show this help");
  cxxopts::ParseResult args;
  try {
    args = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata bench device: " << e.what() << "\n" << opts.help();
    return kExitUsage;
  }
  if (args.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  auto usage = [&](const std::string& msg) {
    std::cerr << "strata bench device: " << msg << "\n";
    return kExitUsage;
  };
  if (!args.unmatched().empty()) return usage("unexpected argument '" + args.unmatched().front() + "'");
  auto bw = parse_bandwidth(args["bandwidth"].as<std::string>());
  if (!bw.ok()) return usage("--bandwidth: " + bw.status().message());
  auto copy_size = parse_bytes(args["copy-size"].as<std::string>());
  if (!copy_size.ok()) return usage("--copy-size: " + copy_size.status().message());
  if (*copy_size == 0 || *copy_size > (4ULL << 30)) return usage("--copy-size must be between 1 byte and 4GiB");
  const double min_time = args["min-time"].as<double>();
  if (!(min_time > 0 && min_time <= 60)) return usage("--min-time must be in (0, 60] seconds");
  const int micro_batch = args["micro-batch"].as<int>();
  if (micro_batch < 1 || micro_batch > 1024) return usage("--micro-batch must be between 1 and 1024");
  std::vector<std::pair<std::string, ModelDims>> models;
  {
    std::stringstream ss(args["models"].as<std::string>());
    std::string item;
    while (std::getline(ss, item, ',')) {
      ModelDims d;
      if (!model_preset(item, &d)) {
        std::string known;
        for (const auto& n : model_preset_names()) known += (known.empty() ? "" : ", ") + n;
        return usage("--models: unknown preset '" + item + "'; known: " + known);
      }
      models.emplace_back(item, d);
    }
  }
  std::vector<DType> dtypes;
  {
    std::stringstream ss(args["dtypes"].as<std::string>());
    std::string item;
    while (std::getline(ss, item, ',')) {
      DType t;
      if (!parse_dtype(item, &t) || t == DType::kF16) return usage("--dtypes: '" + item + "' is not fp32 or bf16");
      dtypes.push_back(t);
    }
  }
  const std::string backend = args["device"].as<std::string>();
  const bool json = args.count("json") > 0;
  const bool gemms = args.count("no-gemm") == 0;

  // The device: room for the copy buffers and the largest GEMM operands.
  DeviceOptions o;
  o.copy_bandwidth = *bw;
  o.capacity = 3 * *copy_size + (1ULL << 30);
  {
    const std::uint64_t ram = static_cast<std::uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
    o.capacity = std::min<std::uint64_t>(o.capacity, ram / 2);
  }
  auto dev_r = create_device(backend, o);
  if (!dev_r.ok()) {
    std::cerr << "strata bench device: " << dev_r.status() << "\n";
    return dev_r.status().code() == StatusCode::kInvalidArgument ? kExitUsage : kExitFailed;
  }
  Device& dev = **dev_r;
  const dnnl_version_t* v = dnnl_version();
  const std::string onednn = std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  JsonLines report("device");
  if (json) {
    std::vector<std::string> model_names, dtype_names;
    for (const auto& m : models) model_names.push_back(m.first);
    for (DType t : dtypes) dtype_names.emplace_back(dtype_name(t));
    report.env({{"device", dev.info().name},
                {"backend", dev.info().backend},
                {"capacity", dev.info().capacity},
                {"notes", dev.info().notes},
                {"onednn", onednn},
                {"copy_size", *copy_size},
                {"copy_bandwidth", *bw},
                {"gemm", gemms},
                {"models", model_names},
                {"dtypes", dtype_names},
                {"micro_batch", micro_batch},
                {"min_time", min_time}});
  } else {
    std::cout << "strata bench device\n"
              << "  cpu:      " << cpu_brand() << ", " << std::thread::hardware_concurrency() << " logical CPUs, "
              << omp_get_max_threads() << " OpenMP threads\n"
              << "  build:    " << build_kind() << "; oneDNN " << onednn
              << (v->cpu_runtime == DNNL_RUNTIME_OMP ? " (OpenMP runtime)" : "") << "\n"
              << "  device:   " << dev.info().name << ", capacity "
              << format_bytes_human(static_cast<double>(dev.info().capacity)) << "\n"
              << "            " << dev.info().notes << "\n";
    double load[3] = {0, 0, 0};
    if (getloadavg(load, 3) > 0) {
      std::cout << "  load:     " << std::fixed << std::setprecision(2) << load[0] << " (1-minute average)"
                << (load[0] > std::thread::hardware_concurrency() ? "; WARNING: the CPUs are shared with other work, "
                                                                     "absolute figures are low and noisy, ratios less so"
                                                                   : "")
                << "\n";
    }
  }
  warn_if_not_release(std::cout, json);

  auto copies = measure_copies(dev, *copy_size, *bw, min_time);
  if (!copies.ok()) {
    std::cerr << "strata bench device: copies: " << copies.status() << "\n";
    return kExitFailed;
  }
  double copy_ratio_min = 0;  // the lowest copy ratio to its ceiling; 0 when none was measured
  for (const CopyResult& c : *copies) {
    const double ratio = c.ceiling > 0 ? c.gbps / c.ceiling : 0;
    if (ratio > 0) copy_ratio_min = copy_ratio_min == 0 ? ratio : std::min(copy_ratio_min, ratio);
    if (json) report.result(copy_json(c));
  }
  if (!json) print_copies(*copies, *copy_size);

  int rc = kExitOk;
  double step_ratio_max = 0;  // the highest whole-step wrapper ratio; 0 when no GEMM ran
  if (gemms && !dev.info().host_addressable) {
    (json ? std::cerr : std::cout) << "\ngemm: the direct oneDNN comparison needs host-addressable device memory; "
                                   << "skipped on " << dev.info().backend << "\n";
  } else if (gemms) {
    if (Status st = measure_call_overhead(dev, min_time, json, report); !st.ok()) {
      std::cerr << "strata bench device: gemm overhead: " << st << "\n";
      rc = kExitFailed;
    }
    for (const auto& [name, dims] : models) {
      const int mb = name == "default" ? micro_batch : 1;
      for (DType dtype : dtypes) {
        std::vector<GemmResult> res;
        for (const Shape& s : step_shapes(dims, mb)) {
          GemmResult g;
          Status st = measure_gemm(dev, s, dtype, min_time, &g);
          if (!st.ok()) {
            std::cerr << "strata bench device: gemm " << s.name << ": " << st << "\n";
            rc = kExitFailed;
            continue;
          }
          res.push_back(g);
        }
        const StepGemms step = sum_step(std::move(res));
        if (step.direct_best > 0) step_ratio_max = std::max(step_ratio_max, step.ratio());
        if (json) {
          write_step(report, name, mb, dtype, step);
        } else {
          print_step(name, dims, mb, dtype, step);
        }
      }
    }
  }
  if (json) {
    // The headline: the wrapper's cost over a whole step when GEMMs ran, else the copies.
    Json summary = {{"copy_ratio_min", copy_ratio_min > 0 ? Json(copy_ratio_min) : Json(nullptr)}};
    if (step_ratio_max > 0) {
      summary["gemm_step_ratio_max"] = step_ratio_max;
      summary["bar"] = 1.05;
      summary["meets_bar"] = step_ratio_max < 1.05;
      summary["ratio"] = step_ratio_max;
      summary["ceiling"] = std::string(kDirectCeiling) + "; the worst whole step over the models and dtypes";
    } else {
      summary["ratio"] = copy_ratio_min > 0 ? Json(copy_ratio_min) : Json(nullptr);
      summary["ceiling"] = "each copy direction's ceiling (memcpy or the throttle; the lowest GB/s ratio)";
    }
    report.summary(summary);
  }
  return rc;
}

}  // namespace

STRATA_COMMAND("bench device", "copy GB/s per direction and GEMM GFLOP/s at the model's shapes, vs oneDNN direct",
               bench_device);

}  // namespace strata::cli
