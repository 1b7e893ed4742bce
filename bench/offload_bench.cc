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

int bench_offload(int argc, char** argv) {
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
  try {
    auto a = opts.parse(argc, argv);
    if (a.count("help")) {
      std::cout << opts.help() << "\n";
      return 0;
    }
    if (!a.unmatched().empty()) {
      std::cerr << "strata bench offload: unexpected argument '" << a.unmatched().front()
                << "' (boolean options take --name=false)\n";
      return 2;
    }
    auto base = Profile::from_toml_string("", "bench offload");
    if (!base.ok()) {
      std::cerr << base.status() << "\n";
      return 1;
    }
    Profile p = *base;
    p.train.model = a["model"].as<std::string>();
    if (!model_preset(p.train.model, &p.train.dims)) {
      std::cerr << "strata bench offload: unknown --model " << p.train.model << "\n";
      return 2;
    }
    p.train.micro_batch = a["micro-batch"].as<int>();
    const int steps = a["steps"].as<int>();
    const int rounds = a["rounds"].as<int>();
    if (steps < 1 || rounds < 1 || p.train.micro_batch < 1) {
      std::cerr << "strata bench offload: --steps, --rounds and --micro-batch must be at least 1\n";
      return 2;
    }
    const std::string dt = a["dtype"].as<std::string>();
    if (dt == "fp32") p.precision.dtype = DType::kF32;
    else if (dt == "bf16") p.precision.dtype = DType::kBF16;
    else if (dt == "fp16") p.precision.dtype = DType::kF16;
    else {
      std::cerr << "strata bench offload: --dtype must be fp32, bf16 or fp16\n";
      return 2;
    }
    auto bs = parse_bytes(a["buffer-size"].as<std::string>());
    if (!bs.ok()) {
      std::cerr << "strata bench offload: --buffer-size: " << bs.status() << "\n";
      return 2;
    }
    p.offload_optimizer.device = OffloadTarget::kNvme;
    p.offload_optimizer.nvme_path = {a["nvme-path"].as<std::string>()};
    p.offload_optimizer.buffer_count = a["buffer-count"].as<int>();
    p.offload_optimizer.overlap_step = a["overlap"].as<bool>();
    p.offload_optimizer.delayed_update = a.count("delayed-update") > 0;
    p.offload_optimizer.delayed_update_warmup = 0;
    p.offload_optimizer.buffer_size = *bs;
    p.nvme.engine = a["engine"].as<std::string>();
    p.nvme.direct = a["direct"].as<bool>();
    if (p.nvme.engine != "io_uring") p.nvme.registered_buffers = false;
    const std::uint64_t params = p.train.dims.parameter_count();
    p.memory.device_budget = std::max<std::uint64_t>(p.memory.device_budget, params * 12 + (4ULL << 30));
    p.memory.host_budget = std::max<std::uint64_t>(p.memory.host_budget, params * 8 + 8 * *bs);
    if (Status s = p.validate(); !s.ok()) {
      std::cerr << "strata bench offload: " << s << "\n";
      return 2;
    }
    const bool json_out = a.count("json") > 0;

    Json env = {{"cpu", cpu_brand()},
                {"threads", omp_get_max_threads()},
                {"build", build_kind()},
                {"kernel", kernel_release()},
                {"nvme_path", p.offload_optimizer.nvme_path[0]},
                {"file_system", fs_type(p.offload_optimizer.nvme_path[0])},
                {"engine", p.nvme.engine},
                {"direct", p.nvme.direct},
                {"model", p.train.model},
                {"parameters", params},
                {"dtype", dt},
                {"micro_batch", p.train.micro_batch},
                {"buffer_size", *bs},
                {"buffer_count", p.offload_optimizer.buffer_count},
                {"overlap_step", p.offload_optimizer.overlap_step},
                {"delayed_update", p.offload_optimizer.delayed_update}};
    JsonLines report("offload");
    if (json_out) {
      report.env(env);
    } else {
      std::cout << "strata bench offload\n";
      for (auto it = env.begin(); it != env.end(); ++it) std::cout << "  " << std::left << std::setw(14) << it.key() << " " << (it->is_string() ? it->get<std::string>() : it->dump()) << "\n";
    }
    warn_if_not_release(std::cout, json_out);

    DeviceOptions dopt = device_options(p.memory);
    auto data = TokenDataset::default_text();
    if (!data.ok()) {
      std::cerr << data.status() << "\n";
      return 1;
    }
    auto fail = [](const std::string& what, const Status& s) {
      std::cerr << "strata bench offload: " << what << ": " << s << "\n";
      return 1;
    };

    // Two trainers of the same model: one with the optimizer on the device (its forward +
    // backward phase times are the compute), one with the state on NVMe. They run in
    // alternating rounds of `steps` steps each, so that a slow spell of the machine hits both;
    // each has one warm-up step first (for the NVMe one: first touch of the swap).
    Profile cp = p;
    cp.offload_optimizer.device = OffloadTarget::kNone;
    cp.offload_optimizer.delayed_update = false;
    auto cdev = create_device("host", dopt);
    if (!cdev.ok()) return fail("device", cdev.status());
    TrainerOptions cto;
    cto.phase_timing = true;
    auto ctrainer = Trainer::create(cp, **cdev, nullptr, cto);
    if (!ctrainer.ok()) return fail("compute-only trainer", ctrainer.status());
    auto dev = create_device("host", dopt);
    if (!dev.ok()) return fail("device", dev.status());
    auto trainer = Trainer::create(p, **dev, nullptr, TrainerOptions{});
    if (!trainer.ok()) return fail("trainer", trainer.status());
    StepOptimizer& opt = (*trainer)->optimizer();
    if (auto st = (*ctrainer)->train_step(*data); !st.ok()) return fail("compute-only warm-up step", st.status());
    if (auto st = (*trainer)->train_step(*data); !st.ok()) return fail("warm-up step", st.status());
    if (Status s = opt.synchronize(); !s.ok()) return fail("warm-up step", s);
    // Swap traffic of the optimizer's shape on the same directory: its bandwidth is the
    // transfer ceiling, and, paced at the rate the NVMe trainer moved bytes, it is the load under
    // which the compute-only trainer runs a third block of each round (what the I/O alone costs
    // the compute on this machine, e.g. a hypervisor emulating the disk on the same cores).
    const double state_bytes = static_cast<double>(params) * 12.0;
    auto traffic = SwapTraffic::create(p, static_cast<std::uint64_t>(std::min(state_bytes, 1024.0 * MiB)), *bs,
                                       std::max(1, p.offload_optimizer.buffer_count - 1));
    if (!traffic.ok()) return fail("a swap file to measure the directory with", traffic.status());
    const int nv = static_cast<int>(Tier::kNvme), ho = static_cast<int>(Tier::kHost);
    auto nvme_bytes = [&] {
      const TierStats t = *opt.tier_stats();
      return static_cast<double>(t.bytes_moved[nv][ho] + t.bytes_moved[ho][nv]);
    };
    const TierStats before = *opt.tier_stats();
    std::vector<double> fb_r, step_r, loaded_r;
    for (int r = 0; r < rounds; ++r) {
      double fb = 0;
      for (int i = 0; i < steps; ++i) {
        auto st = (*ctrainer)->train_step(*data);
        if (!st.ok()) return fail("compute-only step", st.status());
        fb += st->forward_s + st->backward_s;
      }
      fb_r.push_back(fb / steps);
      // The steady state: from the return of a first step (its update now running, as after
      // any step) to the return of `steps` more; the last update is waited for untimed, so
      // that the compute-only block that follows has the machine to itself.
      Clock::time_point t0;
      double bytes0 = 0;
      for (int i = 0; i <= steps; ++i) {
        auto st = (*trainer)->train_step(*data);
        if (!st.ok()) return fail("step", st.status());
        if (i == 0) {
          t0 = Clock::now();
          bytes0 = nvme_bytes();
        }
      }
      const double block_s = seconds_since(t0);
      step_r.push_back(block_s / steps);
      if (Status s = opt.synchronize(); !s.ok()) return fail("a step's update", s);
      const double rate = (nvme_bytes() - bytes0) / block_s;
      (*traffic)->start(rate);
      double loaded = 0;
      for (int i = 0; i < steps; ++i) {
        auto st = (*ctrainer)->train_step(*data);
        if (!st.ok()) return fail("compute-only step under swap traffic", st.status());
        loaded += st->forward_s + st->backward_s;
      }
      if (Status s = (*traffic)->stop(); !s.ok()) return fail("swap traffic", s);
      loaded_r.push_back(loaded / steps);
    }
    const TierStats final_stats = *opt.tier_stats();
    const double measured = static_cast<double>(rounds) * (steps + 1);
    const double rd = static_cast<double>(final_stats.bytes_moved[nv][ho] - before.bytes_moved[nv][ho]) / measured;
    const double wr = static_cast<double>(final_stats.bytes_moved[ho][nv] - before.bytes_moved[ho][nv]) / measured;
    trainer->reset();
    ctrainer->reset();

    // Ceilings measured in the same run.
    Bandwidth bw;
    auto wbw = (*traffic)->pass(true);
    auto rbw = wbw.ok() ? (*traffic)->pass(false) : wbw;
    if (!rbw.ok()) return fail("measuring the swap directory", rbw.status());
    bw.write = *wbw;
    bw.read = *rbw;
    traffic->reset();
    const DType gdt = DType::kF32;
    auto adam_s = measure_adam(params, gdt, p.precision.dtype);
    if (!adam_s.ok()) {
      std::cerr << adam_s.status() << "\n";
      return 1;
    }
    const double transfer = rd / bw.read + wr / bw.write;
    std::vector<double> ratio_r, loaded_ratio_r;
    for (int r = 0; r < rounds; ++r) {
      ratio_r.push_back(step_r[r] / std::max(fb_r[r] + *adam_s, transfer));
      loaded_ratio_r.push_back(step_r[r] / std::max(loaded_r[r] + *adam_s, transfer));
    }
    const double loaded_fb = median(loaded_r), loaded_ratio = median(loaded_ratio_r);
    const double fb = median(fb_r), step = median(step_r);
    const double compute = fb + *adam_s;
    const double ceiling = std::max(compute, transfer);
    const double ratio = median(ratio_r);
    constexpr const char* kCeiling = "max(compute, transfer) of the same run (step time over it)";
    Json res = {{"step_s", step},
                {"forward_backward_s", fb},
                {"adam_in_ram_s", *adam_s},
                {"compute_s", compute},
                {"nvme_read_bytes_per_step", rd},
                {"nvme_write_bytes_per_step", wr},
                {"nvme_read_bw", bw.read},
                {"nvme_write_bw", bw.write},
                {"transfer_s", transfer},
                {"ceiling_s", ceiling},
                {"ratio", ratio},
                {"ceiling", kCeiling},
                {"ratio_per_round", ratio_r},
                {"bar", 1.15},
                {"meets_bar", ratio <= 1.15},
                {"forward_backward_under_swap_traffic_s", loaded_fb},
                {"ratio_to_compute_under_swap_traffic", loaded_ratio},
                {"ratio_to_compute_under_swap_traffic_per_round", loaded_ratio_r}};
    if (json_out) {
      for (int r = 0; r < rounds; ++r) {
        report.result({{"round", r + 1},
                       {"step_s", step_r[r]},
                       {"forward_backward_s", fb_r[r]},
                       {"compute_s", fb_r[r] + *adam_s},
                       {"transfer_s", transfer},
                       {"ratio", ratio_r[r]},
                       {"ceiling", kCeiling},
                       {"forward_backward_under_swap_traffic_s", loaded_r[r]},
                       {"ratio_to_compute_under_swap_traffic", loaded_ratio_r[r]}});
      }
      res["tiers"] = Json::parse(final_stats.to_json());
      report.summary(res);
    } else {
      std::cout << std::fixed << std::setprecision(3);
      std::cout << "  step time (median of " << rounds << " rounds of " << steps << ") " << step << " s\n"
                << "  forward + backward           " << fb << " s (optimizer on the device)\n"
                << "  CPU Adam, state in RAM       " << *adam_s << " s\n"
                << "  compute = fwd+bwd+Adam       " << compute << " s\n"
                << "  NVMe per step                read " << format_bytes_human(rd) << " at "
                << format_bytes_human(bw.read) << "/s, write " << format_bytes_human(wr) << " at "
                << format_bytes_human(bw.write) << "/s\n"
                << "  transfer at measured bw      " << transfer << " s\n"
                << "  per round                    ";
      for (double x : ratio_r) std::cout << x << " ";
      std::cout << "\n"
                << "  step / max(compute, transfer) = " << ratio << " (median of rounds)" << "  (bar <= 1.15: " << (ratio <= 1.15 ? "met" : "NOT met") << ")\n"
                << "  fwd+bwd under swap traffic   " << loaded_fb << " s (the same bytes/s, no optimizer work)\n"
                << "  step / max(that + Adam, transfer) = " << loaded_ratio << " (median of rounds)\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "strata bench offload: " << e.what() << "\n" << opts.help() << "\n";
    return 2;
  }
}

STRATA_COMMAND("bench offload", "training step with optimizer state on NVMe vs max(compute, transfer) of the same run",
               bench_offload);

}  // namespace
}  // namespace strata::cli
