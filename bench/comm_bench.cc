// `strata bench comm`: all-reduce, reduce-scatter and all-gather from 4 KiB to 256 MiB per
// rank, as bus bandwidth in the convention of nccl-tests (all-reduce: algbw x 2(N-1)/N;
// reduce-scatter and all-gather: x (N-1)/N), each against a reference measured beside it in
// the same run, in alternating rounds (the median of the per-round ratios):
//   under `mpirun -n N`: MpiComm against the same operation called directly through MPI on
//     the same buffers; then, inside rank 0's process, LocalComm with N threads against that
//     same MPI figure (OpenMPI's shared-memory path for the same N and size);
//   alone: LocalComm with --ranks N threads against a memcpy of the bytes each rank moves.
// Sizes are bytes per rank: the all-reduce buffer, the reduce-scatter input and the all-gather
// output. Run mpirun with --bind-to none: bound to one core, rank 0's LocalComm threads share it.
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cxxopts.hpp>
#include <functional>
#include <iostream>
#include <thread>
#include <vector>

#ifdef STRATA_HAVE_MPI
#include <mpi.h>
#endif

#include "bench/bench_json.h"
#include "cli/command.h"
#include "strata/communicator.h"
#include "strata/device.h"
#include "strata/units.h"

namespace strata::cli {
namespace {

using bench::Json;

constexpr CommKind kOps[] = {CommKind::kAllReduce, CommKind::kReduceScatter, CommKind::kAllGather};

double bus_factor(CommKind k, int n) {
  const double N = n;
  return k == CommKind::kAllReduce ? 2 * (N - 1) / N : (N - 1) / N;
}

// One rank's buffers for one size: `send` of `bytes` (the all-reduce and reduce-scatter input)
// and `recv` of `bytes` (the all-gather output; the reduce-scatter output is its first 1/N).
struct RankBuffers {
  std::unique_ptr<Device> device;
  std::unique_ptr<Stream> stream;
  DeviceBuffer send, recv;
};

Result<RankBuffers> make_buffers(std::size_t bytes) {
  RankBuffers b;
  DeviceOptions o;
  o.capacity = 2 * bytes + (16 << 20);
  o.compute_threads = 1;
  STRATA_ASSIGN_OR_RETURN(b.device, create_device("host", o));
  STRATA_ASSIGN_OR_RETURN(b.stream, b.device->create_stream("bench comm"));
  STRATA_ASSIGN_OR_RETURN(b.send, b.device->allocate(bytes));
  STRATA_ASSIGN_OR_RETURN(b.recv, b.device->allocate(bytes));
  std::memset(b.send.address(), 1, bytes);  // touch every page before timing
  std::memset(b.recv.address(), 0, bytes);
  return b;
}

// Enqueues `iters` operations of kind `k` and waits for them.
Status run_strata(Communicator& c, CommKind k, RankBuffers& b, std::size_t bytes, int iters) {
  const std::size_t count = bytes / 4;
  const CommBuffer send{b.send.range(), CommType::kF32, count};
  const CommBuffer recv{b.recv.range(), CommType::kF32, count};
  const CommBuffer shard{b.recv.range(), CommType::kF32, count / static_cast<std::size_t>(c.size())};
  const CommBuffer piece{b.send.range(), CommType::kF32, count / static_cast<std::size_t>(c.size())};
  for (int i = 0; i < iters; ++i) {
    Status st = k == CommKind::kAllReduce       ? c.all_reduce(send, recv, ReduceOp::kSum, *b.stream)
                : k == CommKind::kReduceScatter ? c.reduce_scatter(send, shard, ReduceOp::kSum, *b.stream)
                                                : c.all_gather(piece, recv, *b.stream);
    STRATA_RETURN_IF_ERROR(st);
  }
  return b.stream->synchronize();
}

// Seconds per operation of `body(iters)`, with enough iterations for ~`target` seconds.
// `agree` makes every rank use the same iteration count (the slowest rank's estimate).
double time_per_op(const std::function<void(int)>& body, double target, const std::function<int(int)>& agree) {
  body(1);  // warm-up
  auto t0 = bench::Clock::now();
  body(1);
  const double one = std::max(1e-6, bench::seconds_since(t0));
  const int iters = agree(std::clamp(static_cast<int>(target / one), 1, 1000));
  t0 = bench::Clock::now();
  body(iters);
  return bench::seconds_since(t0) / iters;
}

struct Options {
  std::vector<std::size_t> sizes;
  int rounds = 3;
  double target = 0.05;
  int ranks = 2;
};

// LocalComm with n threads: seconds per operation for one round.
Result<double> local_round(std::vector<std::unique_ptr<Communicator>>& comms, std::vector<RankBuffers>& bufs,
                           CommKind k, std::size_t bytes, double target) {
  const int n = static_cast<int>(comms.size());
  std::vector<Status> st(static_cast<std::size_t>(n));
  double seconds = 0;
  // Every rank runs the same iteration count: rank 0 decides, the others follow.
  std::vector<std::thread> threads;
  std::atomic<int> iters{0};
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      auto& c = *comms[static_cast<std::size_t>(r)];
      auto& b = bufs[static_cast<std::size_t>(r)];
      auto body = [&](int it) {
        Status s = run_strata(c, k, b, bytes, it);
        if (!s.ok()) st[static_cast<std::size_t>(r)] = s;
      };
      auto agree = [&](int mine) {
        std::vector<double> v{static_cast<double>(r == 0 ? mine : 0)};
        if (!c.all_reduce_host(v, ReduceOp::kMax).ok()) return 1;
        return static_cast<int>(v[0]);
      };
      const double s = time_per_op(body, target, agree);
      if (r == 0) seconds = s;
      iters = 1;
    });
  }
  for (auto& t : threads) t.join();
  for (const Status& s : st) STRATA_RETURN_IF_ERROR(s);
  return seconds;
}

double memcpy_round(RankBuffers& b, CommKind k, std::size_t bytes, int n, double target) {
  // What each rank moves through memory under the ring convention, copied once.
  const auto moved = static_cast<std::size_t>(static_cast<double>(bytes) * bus_factor(k, n));
  auto body = [&](int it) {
    for (int i = 0; i < it; ++i) std::memcpy(b.recv.address(), b.send.address(), std::max<std::size_t>(moved, 4));
  };
  return time_per_op(body, target, [](int m) { return m; });
}

#ifdef STRATA_HAVE_MPI
double mpi_direct_round(MPI_Comm world, RankBuffers& b, CommKind k, std::size_t bytes, int n, double target) {
  const int count = static_cast<int>(bytes / 4);
  auto body = [&](int it) {
    for (int i = 0; i < it; ++i) {
      if (k == CommKind::kAllReduce) {
        MPI_Allreduce(b.send.address(), b.recv.address(), count, MPI_FLOAT, MPI_SUM, world);
      } else if (k == CommKind::kReduceScatter) {
        MPI_Reduce_scatter_block(b.send.address(), b.recv.address(), count / n, MPI_FLOAT, MPI_SUM, world);
      } else {
        MPI_Allgather(b.send.address(), count / n, MPI_FLOAT, b.recv.address(), count / n, MPI_FLOAT, world);
      }
    }
  };
  auto agree = [&](int mine) {
    MPI_Allreduce(MPI_IN_PLACE, &mine, 1, MPI_INT, MPI_MAX, world);
    return mine;
  };
  return time_per_op(body, target, agree);
}

// While rank 0 measures LocalComm, the other processes wait without spinning on a core.
void idle_barrier(MPI_Comm world) {
  MPI_Request r;
  MPI_Ibarrier(world, &r);
  for (int done = 0; !done;) {
    MPI_Test(&r, &done, MPI_STATUS_IGNORE);
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}
#endif

Json row(const char* backend, CommKind k, std::size_t bytes, int n, const std::vector<double>& secs,
         const std::vector<double>& ratios, const char* ceiling) {
  const double s = bench::median(secs);
  const double algbw = static_cast<double>(bytes) / s;
  return Json{{"backend", backend},
              {"op", comm_kind_name(k)},
              {"bytes", bytes},
              {"ranks", n},
              {"seconds", s},
              {"algbw_gbps", algbw / 1e9},
              {"busbw_gbps", algbw * bus_factor(k, n) / 1e9},
              {"ratio", bench::number_or_null(bench::median(ratios))},
              {"ceiling", ceiling}};
}

struct Bars {
  double mpi_min_1m = 1e9, local_min_1m = 1e9, local_min_16m = 1e9;
  void add(const std::string& backend, std::size_t bytes, double ratio) {
    if (bytes < (1u << 20)) return;
    if (backend == "mpi") mpi_min_1m = std::min(mpi_min_1m, ratio);
    if (backend == "local") local_min_1m = std::min(local_min_1m, ratio);
    if (backend == "local" && bytes >= (16u << 20)) local_min_16m = std::min(local_min_16m, ratio);
  }
};

void print_row(const Json& r) {
  std::printf("  %-6s %-15s %10s  busbw %7.3f GB/s  ratio %6.3f\n", r["backend"].get<std::string>().c_str(),
              r["op"].get<std::string>().c_str(), format_bytes(r["bytes"].get<std::size_t>()).c_str(),
              r["busbw_gbps"].get<double>(), r["ratio"].is_number() ? r["ratio"].get<double>() : 0.0);
}

// Rounds for one (operation, size): each round times every backend once, back to back.
struct Measured {
  std::vector<double> mpi, direct, local, ref;
};

Status measure(const Options& o, CommKind k, std::size_t bytes, Communicator* mpi_comm, void* direct_comm,
               std::vector<std::unique_ptr<Communicator>>& local, Measured* m) {
  const int n = static_cast<int>(local.size());
  const bool rank0 = mpi_comm == nullptr || mpi_comm->rank() == 0;
  STRATA_ASSIGN_OR_RETURN(RankBuffers mine, make_buffers(bytes));
  std::vector<RankBuffers> bufs;
  if (rank0) {
    for (int r = 0; r < n; ++r) {
      STRATA_ASSIGN_OR_RETURN(RankBuffers b, make_buffers(bytes));
      bufs.push_back(std::move(b));
    }
  }
  for (int round = 0; round < o.rounds; ++round) {
#ifdef STRATA_HAVE_MPI
    if (mpi_comm != nullptr) {
      auto comm = static_cast<MPI_Comm*>(direct_comm);
      Status st;
      auto body = [&](int it) {
        if (Status s = run_strata(*mpi_comm, k, mine, bytes, it); !s.ok()) st = s;
      };
      auto agree = [&](int it) {
        std::vector<double> v{static_cast<double>(it)};
        return mpi_comm->all_reduce_host(v, ReduceOp::kMax).ok() ? static_cast<int>(v[0]) : 1;
      };
      // Alternate which goes first (ABBA), so that neither gains from the other's warm caches.
      if (round % 2 == 1) m->direct.push_back(mpi_direct_round(*comm, mine, k, bytes, mpi_comm->size(), o.target));
      m->mpi.push_back(time_per_op(body, o.target, agree));
      STRATA_RETURN_IF_ERROR(st);
      if (round % 2 == 0) m->direct.push_back(mpi_direct_round(*comm, mine, k, bytes, mpi_comm->size(), o.target));
      if (!rank0) {
        idle_barrier(*comm);
        continue;
      }
      STRATA_ASSIGN_OR_RETURN(double l, local_round(local, bufs, k, bytes, o.target));
      m->local.push_back(l);
      idle_barrier(*comm);
      continue;
    }
#else
    (void)direct_comm;
#endif
    STRATA_ASSIGN_OR_RETURN(double l, local_round(local, bufs, k, bytes, o.target));
    m->local.push_back(l);
    m->ref.push_back(memcpy_round(bufs[0], k, bytes, n, o.target));
  }
  return Status::OK();
}

std::vector<double> ratios(const std::vector<double>& ref, const std::vector<double>& t) {
  std::vector<double> r;
  for (std::size_t i = 0; i < t.size() && i < ref.size(); ++i) r.push_back(ref[i] / t[i]);
  return r;
}

int run_comm_bench(const Options& o, bool json) {
  std::unique_ptr<Communicator> mpi_comm;
  int n = o.ranks;
  void* direct = nullptr;
#ifdef STRATA_HAVE_MPI
  MPI_Comm direct_comm = MPI_COMM_NULL;
  if (launched_by_mpi()) {
    auto c = make_mpi_world();
    if (!c.ok()) {
      std::cerr << "strata bench comm: " << c.status() << "\n";
      return kExitFailed;
    }
    mpi_comm = std::move(*c);
    n = mpi_comm->size();
    MPI_Comm_dup(MPI_COMM_WORLD, &direct_comm);
    direct = &direct_comm;
  }
#endif
  const bool rank0 = mpi_comm == nullptr || mpi_comm->rank() == 0;
  // mpirun binds each rank to a core by default; LocalComm's threads would then share it.
  cpu_set_t cpus;
  if (rank0 && sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) < n &&
      CPU_COUNT(&cpus) < static_cast<int>(std::thread::hardware_concurrency())) {
    std::cerr << "strata bench comm: warning: this process may run on " << CPU_COUNT(&cpus) << " CPU(s), so the " << n
              << " LocalComm threads share them; run mpirun with --bind-to none\n";
  }
  auto local = make_local_comms(rank0 ? n : 1);
  if (n < 2 || !local.ok()) {
    std::cerr << "strata bench comm: needs at least 2 ranks (--ranks N, or mpirun -n N)\n";
    return kExitUsage;
  }
  bench::JsonLines out("comm");
  const char* local_ceiling = mpi_comm ? "LocalComm busbw over OpenMPI's (MPI called directly, same N, same run)"
                                       : "LocalComm busbw over a memcpy of the bytes each rank moves (same run)";
  if (rank0) {
    if (json) {
      out.env({{"mpi_ranks", mpi_comm ? Json(n) : Json(nullptr)}, {"local_ranks", n}, {"rounds", o.rounds}});
    } else {
      std::printf("strata bench comm: %d ranks%s; %s build; %s\n", n, mpi_comm ? " (MPI processes, and LocalComm threads in rank 0)" : " (LocalComm threads)",
                  bench::build_kind().c_str(), bench::cpu_brand().c_str());
    }
  }
  Bars bars;
  for (std::size_t bytes : o.sizes) {
    for (CommKind k : kOps) {
      Measured m;
      if (Status st = measure(o, k, bytes, mpi_comm.get(), direct, *local, &m); !st.ok()) {
        std::cerr << "strata bench comm: " << comm_kind_name(k) << " of " << format_bytes(bytes) << ": " << st << "\n";
        return kExitFailed;
      }
      if (!rank0) continue;
      std::vector<Json> rows;
      if (mpi_comm) {
        rows.push_back(row("mpi", k, bytes, n, m.mpi, ratios(m.direct, m.mpi), "MpiComm busbw over MPI called directly (same buffers, same run)"));
        rows.back()["reference_busbw_gbps"] = static_cast<double>(bytes) / bench::median(m.direct) * bus_factor(k, n) / 1e9;
        rows.push_back(row("local", k, bytes, n, m.local, ratios(m.direct, m.local), local_ceiling));
      } else {
        rows.push_back(row("local", k, bytes, n, m.local, ratios(m.ref, m.local), local_ceiling));
      }
      for (Json& r : rows) {
        bars.add(r["backend"].get<std::string>(), bytes, r["ratio"].is_number() ? r["ratio"].get<double>() : 0);
        if (json) {
          out.result(r);
        } else {
          print_row(r);
        }
      }
    }
  }
  if (rank0) {
    const bool have_1m = bars.local_min_1m < 1e9;
    const double headline = mpi_comm ? bars.mpi_min_1m : bars.local_min_1m;
    Json summary{{"mpi_min_ratio_from_1MiB", mpi_comm && have_1m ? Json(bars.mpi_min_1m) : Json(nullptr)},
                 {"local_min_ratio_from_1MiB", have_1m ? Json(bars.local_min_1m) : Json(nullptr)},
                 {"local_min_ratio_from_16MiB", bars.local_min_16m < 1e9 ? Json(bars.local_min_16m) : Json(nullptr)},
                 {"ratio", have_1m ? Json(headline) : Json(nullptr)},
                 {"ceiling", mpi_comm ? "lowest MpiComm ratio to MPI called directly at sizes from 1 MiB"
                                      : "lowest LocalComm ratio to memcpy at sizes from 1 MiB"}};
    if (json) {
      out.summary(summary);
    } else {
      std::printf("summary: %s\n", summary.dump().c_str());
    }
  }
  mpi_comm.reset();
#ifdef STRATA_HAVE_MPI
  if (direct_comm != MPI_COMM_NULL) MPI_Comm_free(&direct_comm);
#endif
  return kExitOk;
}

int bench_comm(int argc, char** argv) {
  cxxopts::Options opts("strata bench comm", "Collective bus bandwidth against MPI called directly (under mpirun) "
                                             "or memcpy (alone).");
  opts.add_options()("max-size", "largest size per rank", cxxopts::value<std::string>()->default_value("256MiB"))(
      "min-size", "smallest size per rank", cxxopts::value<std::string>()->default_value("4KiB"))(
      "ranks", "LocalComm threads when not under mpirun", cxxopts::value<int>()->default_value("2"))(
      "rounds", "alternating rounds per size", cxxopts::value<int>()->default_value("3"))(
      "min-time", "seconds per measurement", cxxopts::value<double>()->default_value("0.05"))(
      "json", "print JSON Lines instead of tables; see 'strata help bench'")("h,help", "this help");
  cxxopts::ParseResult a;
  try {
    a = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata bench comm: " << e.what() << "\n";
    return kExitUsage;
  }
  if (a.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  if (!a.unmatched().empty()) {
    std::cerr << "strata bench comm: unexpected argument '" << a.unmatched().front() << "'\n";
    return kExitUsage;
  }
  auto lo_r = parse_bytes(a["min-size"].as<std::string>());
  auto hi_r = parse_bytes(a["max-size"].as<std::string>());
  const std::uint64_t lo = lo_r.ok() ? *lo_r : 0, hi = hi_r.ok() ? *hi_r : 0;
  if (lo < 4096 || hi < lo) {
    std::cerr << "strata bench comm: --min-size and --max-size take sizes of at least 4KiB, min <= max\n";
    return kExitUsage;
  }
  Options o;
  for (std::size_t b = lo; b <= hi; b *= 4) o.sizes.push_back(b);
  o.rounds = std::max(1, a["rounds"].as<int>());
  o.target = a["min-time"].as<double>();
  o.ranks = a["ranks"].as<int>();
  const bool json = a.count("json") > 0;
  return run_comm_bench(o, json);
}

STRATA_COMMAND("bench comm", "collectives' bus bandwidth against MPI called directly, or memcpy", bench_comm);

}  // namespace
}  // namespace strata::cli
