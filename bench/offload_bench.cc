// `strata bench offload`: the training step with the optimizer state on NVMe
// ([offload.optimizer] device = "nvme"), against the ceiling of the same run.
//
// The step time is the steady-state wall time per step: from the return of one step to the
// return of a later one, divided by the steps between (each step's update, when it overlaps
// the next forward, is inside that window).
// The ceiling is max(compute, transfer): compute is forward + backward (measured with the
// trainer's phase timing on a second trainer of the same model whose optimizer is on the
// device, so no optimizer wait is counted as compute) plus the CPU Adam update over the same
// number of parameters with the state in RAM (measured on its own in this run); transfer is
// the bytes a step moved between NVMe and host (the tier manager's statistics over the
// measured steps) at the read and write bandwidth the swap directory gave in this run (a
// SwapStore on the same directory, the same engine, buffer size and number of buffers in
// flight). The headline is step time / ceiling (1.0 is perfect).
// A second figure tells how much of the gap the machine itself causes: each round also runs
// the compute-only trainer while swap traffic of the same shape flows at the rate the NVMe
// trainer moved bytes in that round, with no optimizer work at all; step time over
// max(that forward + backward + Adam, transfer) is what remains for strata to remove. (On a
// VM whose disk is emulated on the same cores, I/O alone slows the compute.)
// --delayed-update runs the one-step delayed parameter update from the first step.
// --json (bench_json.h): a result per round; the summary holds the medians and the tier
// manager's statistics.
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <cxxopts.hpp>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <omp.h>

#include "bench/bench_env.h"
#include "bench/bench_json.h"
#include "cli/command.h"
#include "nvme/io_engine.h"
#include "nvme/swap_store.h"
#include "strata/optimizer.h"
#include "strata/profile.h"
#include "strata/trainer.h"
#include "strata/units.h"

namespace strata::cli {
namespace {

using namespace strata::bench;  // NOLINT(google-build-using-namespace)


struct Bandwidth {
  double read = 0, write = 0;  // bytes/s
};

// A swap file of `total` bytes in slots of `slot` bytes on the profile's swap directory, with
// `depth` pinned buffers: the same engine, I/O size and depth as the offloaded optimizer.
class SwapTraffic {
 public:
  static Result<std::unique_ptr<SwapTraffic>> create(const Profile& p, std::uint64_t total, std::uint64_t slot, int depth) {
    auto t = std::unique_ptr<SwapTraffic>(new SwapTraffic());
    STRATA_ASSIGN_OR_RETURN(t->engine_, nvme::make_io_engine(p.nvme));
    const std::uint64_t n = std::max<std::uint64_t>(1, total / slot);
    STRATA_ASSIGN_OR_RETURN(t->store_, nvme::SwapStore::create({p.offload_optimizer.nvme_path, n * slot + n * 8192}, *t->engine_));
    DeviceOptions dopt;
    dopt.capacity = 1 << 20;
    STRATA_ASSIGN_OR_RETURN(t->dev_, create_device("host", dopt));
    for (int i = 0; i < depth; ++i) {
      STRATA_ASSIGN_OR_RETURN(PinnedBuffer b, t->dev_->allocate_pinned(slot));
      std::memset(b.data(), 0x5a + i, b.size());
      t->bufs_.push_back(std::move(b));
    }
    for (std::uint64_t i = 0; i < n; ++i) {
      STRATA_ASSIGN_OR_RETURN(nvme::SwapSlot s, t->store_->allocate(slot));
      t->slots_.push_back(s);
    }
    t->slot_bytes_ = slot;
    return t;
  }
  ~SwapTraffic() {
    stop().ignore();
    if (store_) store_->close().ignore();
  }

  // One pass over every slot, writing or reading, as fast as the depth allows: bytes/s.
  Result<double> pass(bool write) {
    const auto t0 = Clock::now();
    STRATA_RETURN_IF_ERROR(run(write, slots_.size(), 0.0, nullptr));
    return static_cast<double>(slots_.size() * slot_bytes_) / seconds_since(t0);
  }

  // Background traffic at `bytes_per_s`, alternating a write and a read pass, until stop().
  void start(double bytes_per_s) {
    stop_ = false;
    thread_ = std::thread([this, bytes_per_s] {
      for (bool write = true; !stop_; write = !write) {
        Status s = run(write, slots_.size(), bytes_per_s, &stop_);
        if (!s.ok()) {
          status_ = s;
          return;
        }
      }
    });
  }
  Status stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return std::exchange(status_, Status::OK());
  }

 private:
  SwapTraffic() = default;

  // `count` slot transfers; with a rate, each is issued no earlier than its share of the time.
  Status run(bool write, std::size_t count, double rate, const std::atomic<bool>* stop) {
    const std::size_t depth = bufs_.size();
    std::vector<std::shared_ptr<nvme::IoCompletion>> inflight(depth);
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < count && !(stop != nullptr && *stop); ++i) {
      if (rate > 0) {
        const double due = static_cast<double>(i * slot_bytes_) / rate;
        const double now = seconds_since(t0);
        if (due > now) std::this_thread::sleep_for(std::chrono::duration<double>(due - now));
      }
      auto& c = inflight[i % depth];
      if (c) STRATA_RETURN_IF_ERROR(c->wait());
      std::span<std::byte> b = bufs_[i % depth].bytes();
      if (write) {
        STRATA_ASSIGN_OR_RETURN(c, store_->write(slots_[i % slots_.size()], b));
      } else {
        STRATA_ASSIGN_OR_RETURN(c, store_->read(slots_[i % slots_.size()], b));
      }
    }
    for (auto& c : inflight) {
      if (c) STRATA_RETURN_IF_ERROR(c->wait());
    }
    return Status::OK();
  }

  std::unique_ptr<nvme::IoEngine> engine_;
  std::unique_ptr<nvme::SwapStore> store_;
  std::unique_ptr<Device> dev_;
  std::vector<PinnedBuffer> bufs_;
  std::vector<nvme::SwapSlot> slots_;
  std::uint64_t slot_bytes_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  Status status_;
};

// Seconds of one CPU Adam update over `params` parameters with the state in RAM.
Result<double> measure_adam(std::uint64_t params, DType grad_dtype, DType value_dtype) {
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(params, 32ULL << 20));
  STRATA_ASSIGN_OR_RETURN(auto adam, make_cpu_adam({}));
  std::vector<float> p(n, 0.01f), m(n, 0.0f), v(n, 0.0f), g32;
  std::vector<std::uint16_t> g16, copy;
  AdamChunk c;
  c.n = n;
  c.params = p.data();
  c.exp_avg = m.data();
  c.exp_avg_sq = v.data();
  c.grad_dtype = grad_dtype;
  if (grad_dtype == DType::kF32) {
    g32.assign(n, 1e-3f);
    c.grads = g32.data();
  } else {
    g16.assign(n, 0x3a83);
    c.grads = g16.data();
  }
  if (value_dtype != DType::kF32) {
    copy.resize(n);
    c.param_copy = copy.data();
    c.param_copy_dtype = value_dtype;
  }
  AdamHyper h;
  std::vector<double> t;
  for (int i = 1; i <= 5; ++i) {
    const auto t0 = Clock::now();
    STRATA_RETURN_IF_ERROR(adam->step(h, AdamStep{i, 1.0}, c));
    t.push_back(seconds_since(t0));
  }
  return median(t) * static_cast<double>(params) / static_cast<double>(n);
}

cxxopts::Options offload_options() {
  cxxopts::Options opts("strata bench offload",
                        "training step with the optimizer state on NVMe, against max(compute, transfer) of the same run");
  opts.add_options()("model", "model preset", cxxopts::value<std::string>()->default_value("default"))(
      "micro-batch", "sequences per micro-batch", cxxopts::value<int>()->default_value("8"))(
      "steps", "steps per round and trainer (after one warm-up step each)", cxxopts::value<int>()->default_value("4"))(
      "rounds", "alternating rounds (compute-only trainer, then the NVMe one)", cxxopts::value<int>()->default_value("3"))(
      "nvme-path", "swap directory", cxxopts::value<std::string>()->default_value("/tmp"))(
      "engine", "I/O engine: io_uring, libaio, posix", cxxopts::value<std::string>()->default_value("io_uring"))(
      "direct", "O_DIRECT", cxxopts::value<bool>()->default_value("true"))(
      "buffer-size", "bytes of optimizer state per pinned buffer (chunk)", cxxopts::value<std::string>()->default_value("8MiB"))(
      "buffer-count", "pinned buffers of the pipeline", cxxopts::value<int>()->default_value("4"))(
      "dtype", "fp32, bf16 or fp16", cxxopts::value<std::string>()->default_value("fp32"))(
      "overlap", "overlap each step's update with the next forward (offload.optimizer.overlap_step)",
      cxxopts::value<bool>()->default_value("true"))(
      "delayed-update",
      "one-step delayed parameter update from the first step (offload.optimizer.delayed_update, warm-up 0): the "
      "update runs under the next forward and backward")(
      "json", "print JSON Lines instead of tables; see 'strata help bench'")("h,help", "this help");
  return opts;
}

// What one run measures: the profile of the NVMe trainer and the shape of the rounds.
struct OffloadSetup {
  Profile profile;
  int steps = 0, rounds = 0;
  std::string dtype;
  std::uint64_t buffer_size = 0;
  bool json = false;
};

// The profile the options describe; a usage error is a Status.
Result<OffloadSetup> offload_setup(const cxxopts::ParseResult& a) {
  STRATA_ASSIGN_OR_RETURN(Profile p, Profile::from_toml_string("", "bench offload"));
  OffloadSetup o;
  p.train.model = a["model"].as<std::string>();
  if (!model_preset(p.train.model, &p.train.dims)) return invalid_argument("unknown --model " + p.train.model);
  p.train.micro_batch = a["micro-batch"].as<int>();
  o.steps = a["steps"].as<int>();
  o.rounds = a["rounds"].as<int>();
  if (o.steps < 1 || o.rounds < 1 || p.train.micro_batch < 1) {
    return invalid_argument("--steps, --rounds and --micro-batch must be at least 1");
  }
  o.dtype = a["dtype"].as<std::string>();
  if (!parse_dtype(o.dtype, &p.precision.dtype)) return invalid_argument("--dtype must be fp32, bf16 or fp16");
  STRATA_ASSIGN_OR_RETURN(o.buffer_size, parse_bytes(a["buffer-size"].as<std::string>()));
  p.offload_optimizer.device = OffloadTarget::kNvme;
  p.offload_optimizer.nvme_path = {a["nvme-path"].as<std::string>()};
  p.offload_optimizer.buffer_count = a["buffer-count"].as<int>();
  p.offload_optimizer.overlap_step = a["overlap"].as<bool>();
  p.offload_optimizer.delayed_update = a.count("delayed-update") > 0;
  p.offload_optimizer.delayed_update_warmup = 0;
  p.offload_optimizer.buffer_size = o.buffer_size;
  p.nvme.engine = a["engine"].as<std::string>();
  p.nvme.direct = a["direct"].as<bool>();
  if (p.nvme.engine != "io_uring") p.nvme.registered_buffers = false;
  const std::uint64_t params = p.train.dims.parameter_count();
  p.memory.device_budget = std::max<std::uint64_t>(p.memory.device_budget, params * 12 + (4ULL << 30));
  p.memory.host_budget = std::max<std::uint64_t>(p.memory.host_budget, params * 8 + 8 * o.buffer_size);
  STRATA_RETURN_IF_ERROR(p.validate());
  o.profile = p;
  o.json = a.count("json") > 0;
  return o;
}

Json offload_env(const OffloadSetup& o) {
  const Profile& p = o.profile;
  return {{"cpu", cpu_brand()},
          {"threads", omp_get_max_threads()},
          {"build", build_kind()},
          {"kernel", kernel_release()},
          {"nvme_path", p.offload_optimizer.nvme_path[0]},
          {"file_system", fs_type(p.offload_optimizer.nvme_path[0])},
          {"engine", p.nvme.engine},
          {"direct", p.nvme.direct},
          {"model", p.train.model},
          {"parameters", p.train.dims.parameter_count()},
          {"dtype", o.dtype},
          {"micro_batch", p.train.micro_batch},
          {"buffer_size", o.buffer_size},
          {"buffer_count", p.offload_optimizer.buffer_count},
          {"overlap_step", p.offload_optimizer.overlap_step},
          {"delayed_update", p.offload_optimizer.delayed_update}};
}

// Per round: fwd+bwd of the compute-only trainer alone and under swap traffic, and the NVMe
// trainer's steady-state step; over all rounds, the NVMe bytes per step.
struct Rounds {
  std::vector<double> fb, step, loaded;
  double read_per_step = 0, write_per_step = 0;
  TierStats tiers;
};

// The two trainers and the swap traffic of one run, and the rounds they run.
class OffloadRun {
 public:
  OffloadRun(const OffloadSetup& o, TokenDataset data) : o_(o), data_(std::move(data)) {}

  // Two trainers of the same model: one with the optimizer on the device (its forward +
  // backward phase times are the compute), one with the state on NVMe, each after one warm-up
  // step (for the NVMe one: first touch of the swap). Swap traffic of the optimizer's shape on
  // the same directory gives the transfer ceiling and, paced at the rate the NVMe trainer moved
  // bytes, the load under which the compute-only trainer runs a third block of each round
  // (what the I/O alone costs the compute here, e.g. a hypervisor emulating the disk on the
  // same cores).
  Status open() {
    Profile cp = o_.profile;
    cp.offload_optimizer.device = OffloadTarget::kNone;
    cp.offload_optimizer.delayed_update = false;
    const DeviceOptions dopt = device_options(o_.profile.memory);
    STRATA_ASSIGN_OR_RETURN(cdev_, create_device("host", dopt));
    TrainerOptions cto;
    cto.phase_timing = true;
    STRATA_ASSIGN_OR_RETURN(compute_, Trainer::create(cp, *cdev_, nullptr, cto));
    STRATA_ASSIGN_OR_RETURN(dev_, create_device("host", dopt));
    STRATA_ASSIGN_OR_RETURN(nvme_, Trainer::create(o_.profile, *dev_, nullptr, TrainerOptions{}));
    STRATA_RETURN_IF_ERROR(compute_->train_step(data_).status().with_context("compute-only warm-up step"));
    STRATA_RETURN_IF_ERROR(nvme_->train_step(data_).status().with_context("warm-up step"));
    STRATA_RETURN_IF_ERROR(nvme_->optimizer().synchronize().with_context("warm-up step"));
    const double state_bytes = static_cast<double>(o_.profile.train.dims.parameter_count()) * 12.0;
    auto traffic = SwapTraffic::create(o_.profile, static_cast<std::uint64_t>(std::min(state_bytes, 1024.0 * MiB)),
                                       o_.buffer_size, std::max(1, o_.profile.offload_optimizer.buffer_count - 1));
    if (!traffic.ok()) return traffic.status().with_context("a swap file to measure the directory with");
    traffic_ = std::move(*traffic);
    return Status::OK();
  }

  Result<Rounds> run_rounds() {
    Rounds r;
    const TierStats before = *nvme_->optimizer().tier_stats();
    for (int i = 0; i < o_.rounds; ++i) STRATA_RETURN_IF_ERROR(one_round(r));
    r.tiers = *nvme_->optimizer().tier_stats();
    const double measured = static_cast<double>(o_.rounds) * (o_.steps + 1);
    r.read_per_step = static_cast<double>(r.tiers.bytes_moved[kNv][kHo] - before.bytes_moved[kNv][kHo]) / measured;
    r.write_per_step = static_cast<double>(r.tiers.bytes_moved[kHo][kNv] - before.bytes_moved[kHo][kNv]) / measured;
    nvme_.reset();
    compute_.reset();
    return r;
  }

  // The swap directory's bandwidth, measured after the trainers are gone.
  Result<Bandwidth> bandwidth() {
    STRATA_ASSIGN_OR_RETURN(double w, traffic_->pass(true));
    STRATA_ASSIGN_OR_RETURN(double rd, traffic_->pass(false));
    traffic_.reset();
    return Bandwidth{rd, w};
  }

 private:
  static constexpr int kNv = static_cast<int>(Tier::kNvme), kHo = static_cast<int>(Tier::kHost);

  double nvme_bytes() const {
    const TierStats t = *nvme_->optimizer().tier_stats();
    return static_cast<double>(t.bytes_moved[kNv][kHo] + t.bytes_moved[kHo][kNv]);
  }

  Result<double> compute_block(const char* what) {
    double fb = 0;
    for (int i = 0; i < o_.steps; ++i) {
      auto st = compute_->train_step(data_);
      if (!st.ok()) return st.status().with_context(what);
      fb += st->forward_s + st->backward_s;
    }
    return fb / o_.steps;
  }

  // Compute alone; the NVMe trainer's steady state (from the return of a first step, its update
  // then running as after any step, to the return of `steps` more; the last update is waited
  // for untimed so that the next block has the machine to itself); compute under traffic.
  Status one_round(Rounds& r) {
    STRATA_ASSIGN_OR_RETURN(double fb, compute_block("compute-only step"));
    r.fb.push_back(fb);
    Clock::time_point t0;
    double bytes0 = 0;
    for (int i = 0; i <= o_.steps; ++i) {
      STRATA_RETURN_IF_ERROR(nvme_->train_step(data_).status().with_context("step"));
      if (i == 0) {
        t0 = Clock::now();
        bytes0 = nvme_bytes();
      }
    }
    const double block_s = seconds_since(t0);
    r.step.push_back(block_s / o_.steps);
    STRATA_RETURN_IF_ERROR(nvme_->optimizer().synchronize().with_context("a step's update"));
    traffic_->start((nvme_bytes() - bytes0) / block_s);
    STRATA_ASSIGN_OR_RETURN(double loaded, compute_block("compute-only step under swap traffic"));
    STRATA_RETURN_IF_ERROR(traffic_->stop().with_context("swap traffic"));
    r.loaded.push_back(loaded);
    return Status::OK();
  }

  const OffloadSetup& o_;
  TokenDataset data_;
  std::unique_ptr<Device> cdev_, dev_;
  std::unique_ptr<Trainer> compute_, nvme_;
  std::unique_ptr<SwapTraffic> traffic_;
};

constexpr const char* kOffloadCeiling = "max(compute, transfer) of the same run (step time over it)";

// The figures of a run: per round and their medians.
struct OffloadFigures {
  std::vector<double> ratio_r, loaded_ratio_r;
  double adam_s = 0, transfer = 0;
};

OffloadFigures figures(const Rounds& r, const Bandwidth& bw, double adam_s) {
  OffloadFigures f;
  f.adam_s = adam_s;
  f.transfer = r.read_per_step / bw.read + r.write_per_step / bw.write;
  for (std::size_t i = 0; i < r.step.size(); ++i) {
    f.ratio_r.push_back(r.step[i] / std::max(r.fb[i] + adam_s, f.transfer));
    f.loaded_ratio_r.push_back(r.step[i] / std::max(r.loaded[i] + adam_s, f.transfer));
  }
  return f;
}

void report_json(JsonLines& report, const Rounds& r, const Bandwidth& bw, const OffloadFigures& f) {
  for (std::size_t i = 0; i < r.step.size(); ++i) {
    report.result({{"round", i + 1},
                   {"step_s", r.step[i]},
                   {"forward_backward_s", r.fb[i]},
                   {"compute_s", r.fb[i] + f.adam_s},
                   {"transfer_s", f.transfer},
                   {"ratio", f.ratio_r[i]},
                   {"ceiling", kOffloadCeiling},
                   {"forward_backward_under_swap_traffic_s", r.loaded[i]},
                   {"ratio_to_compute_under_swap_traffic", f.loaded_ratio_r[i]}});
  }
  const double fb = median(r.fb), ratio = median(f.ratio_r);
  report.summary({{"step_s", median(r.step)},
                  {"forward_backward_s", fb},
                  {"adam_in_ram_s", f.adam_s},
                  {"compute_s", fb + f.adam_s},
                  {"nvme_read_bytes_per_step", r.read_per_step},
                  {"nvme_write_bytes_per_step", r.write_per_step},
                  {"nvme_read_bw", bw.read},
                  {"nvme_write_bw", bw.write},
                  {"transfer_s", f.transfer},
                  {"ceiling_s", std::max(fb + f.adam_s, f.transfer)},
                  {"ratio", ratio},
                  {"ceiling", kOffloadCeiling},
                  {"ratio_per_round", f.ratio_r},
                  {"bar", 1.15},
                  {"meets_bar", ratio <= 1.15},
                  {"forward_backward_under_swap_traffic_s", median(r.loaded)},
                  {"ratio_to_compute_under_swap_traffic", median(f.loaded_ratio_r)},
                  {"ratio_to_compute_under_swap_traffic_per_round", f.loaded_ratio_r},
                  {"tiers", Json::parse(r.tiers.to_json())}});
}

void report_table(const OffloadSetup& o, const Rounds& r, const Bandwidth& bw, const OffloadFigures& f) {
  const double fb = median(r.fb), ratio = median(f.ratio_r);
  std::cout << std::fixed << std::setprecision(3);
  std::cout << "  step time (median of " << o.rounds << " rounds of " << o.steps << ") " << median(r.step) << " s\n"
            << "  forward + backward           " << fb << " s (optimizer on the device)\n"
            << "  CPU Adam, state in RAM       " << f.adam_s << " s\n"
            << "  compute = fwd+bwd+Adam       " << fb + f.adam_s << " s\n"
            << "  NVMe per step                read " << format_bytes_human(r.read_per_step) << " at "
            << format_bytes_human(bw.read) << "/s, write " << format_bytes_human(r.write_per_step) << " at "
            << format_bytes_human(bw.write) << "/s\n"
            << "  transfer at measured bw      " << f.transfer << " s\n"
            << "  per round                    ";
  for (double x : f.ratio_r) std::cout << x << " ";
  std::cout << "\n"
            << "  step / max(compute, transfer) = " << ratio << " (median of rounds)"
            << "  (bar <= 1.15: " << (ratio <= 1.15 ? "met" : "NOT met") << ")\n"
            << "  fwd+bwd under swap traffic   " << median(r.loaded) << " s (the same bytes/s, no optimizer work)\n"
            << "  step / max(that + Adam, transfer) = " << median(f.loaded_ratio_r) << " (median of rounds)\n";
}

int offload_failed(const std::string& what, const Status& s) {
  std::cerr << "strata bench offload: " << what << (what.empty() ? "" : ": ") << s << "\n";
  return 1;
}

int bench_offload(int argc, char** argv) {
  cxxopts::Options opts = offload_options();
  cxxopts::ParseResult a;
  try {
    a = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata bench offload: " << e.what() << "\n" << opts.help() << "\n";
    return 2;
  }
  if (a.count("help")) {
    std::cout << opts.help() << "\n";
    return 0;
  }
  if (!a.unmatched().empty()) {
    std::cerr << "strata bench offload: unexpected argument '" << a.unmatched().front()
              << "' (boolean options take --name=false)\n";
    return 2;
  }
  auto setup = offload_setup(a);
  if (!setup.ok()) {
    std::cerr << "strata bench offload: " << setup.status() << "\n";
    return 2;
  }
  const OffloadSetup& o = *setup;
  const Json env = offload_env(o);
  JsonLines report("offload");
  if (o.json) {
    report.env(env);
  } else {
    std::cout << "strata bench offload\n";
    for (auto it = env.begin(); it != env.end(); ++it) {
      std::cout << "  " << std::left << std::setw(14) << it.key() << " "
                << (it->is_string() ? it->get<std::string>() : it->dump()) << "\n";
    }
  }
  warn_if_not_release(std::cout, o.json);
  auto data = TokenDataset::default_text();
  if (!data.ok()) return offload_failed("", data.status());
  OffloadRun run(o, std::move(*data));
  if (Status s = run.open(); !s.ok()) return offload_failed("", s);
  auto rounds = run.run_rounds();
  if (!rounds.ok()) return offload_failed("", rounds.status());
  auto bw = run.bandwidth();
  if (!bw.ok()) return offload_failed("measuring the swap directory", bw.status());
  auto adam_s = measure_adam(o.profile.train.dims.parameter_count(), DType::kF32, o.profile.precision.dtype);
  if (!adam_s.ok()) return offload_failed("", adam_s.status());
  const OffloadFigures f = figures(*rounds, *bw, *adam_s);
  if (o.json) {
    report_json(report, *rounds, *bw, f);
  } else {
    report_table(o, *rounds, *bw, f);
  }
  return 0;
}

STRATA_COMMAND("bench offload", "training step with optimizer state on NVMe vs max(compute, transfer) of the same run",
               bench_offload);

}  // namespace
}  // namespace strata::cli
