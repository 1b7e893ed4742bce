// The communicator on MpiComm, one rank per process: run alone (one rank) and by CTest under
// `mpirun -n 2` and `-n 3 --oversubscribe`. Every rank makes every rank's inputs from seeds, so
// each checks its result against the serial reference itself: bitwise for the integers, max and
// min (their order does not matter), and within a stated tolerance for float sums (MPI's
// reduction order is its own: 1e-6 relative for fp32, half an ulp per addition for bf16/fp16).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "parallel/comm_test_util.h"
#include "parallel/hierarchical_allreduce.h"

namespace strata {
namespace {

Communicator* world = nullptr;

struct Env {
  std::unique_ptr<Device> device;
  std::unique_ptr<Stream> stream;
  testing_comm::RankEnv rank;
  Env() {
    DeviceOptions d;
    d.capacity = 256ULL << 20;
    d.compute_threads = 1;
    device = std::move(*create_device("host", d));
    stream = std::move(*device->create_stream("mpi-test"));
    rank.rank = world->rank();
    rank.device = device.get();
    rank.stream = stream.get();
    rank.comm = world;
  }
};

double value(CommType t, const std::vector<std::byte>& b, std::size_t i) {
  switch (t) {
    case CommType::kF32: { float v; std::memcpy(&v, b.data() + 4 * i, 4); return v; }
    case CommType::kBF16: { kern::Bf16 v; std::memcpy(&v, b.data() + 2 * i, 2); return kern::to_f32(v); }
    case CommType::kF16: { kern::F16 v; std::memcpy(&v, b.data() + 2 * i, 2); return kern::to_f32(v); }
    case CommType::kI32: { std::int32_t v; std::memcpy(&v, b.data() + 4 * i, 4); return v; }
    case CommType::kI64: { std::int64_t v; std::memcpy(&v, b.data() + 8 * i, 8); return static_cast<double>(v); }
  }
  return 0;
}

void expect_reduced(CommType t, ReduceOp op, const std::vector<std::byte>& got, const std::vector<std::byte>& want,
                    int ranks, const std::string& what) {
  const bool exact = op != ReduceOp::kSum || t == CommType::kI32 || t == CommType::kI64;
  if (exact) {
    EXPECT_TRUE(got == want) << what;
    return;
  }
  const double rel = t == CommType::kF32 ? 1e-6 : std::ldexp(1.0, t == CommType::kBF16 ? -8 : -11) * ranks;
  const std::size_t n = got.size() / comm_type_size(t);
  for (std::size_t i = 0; i < n; ++i) {
    const double g = value(t, got, i), w = value(t, want, i);
    ASSERT_LE(std::abs(g - w), rel * (std::abs(w) + 8.0) + 1e-30) << what << " element " << i << ": " << g << " vs " << w;
  }
}

TEST(MpiComm, EveryOperationMatchesTheReference) {
  Env env;
  const int n = world->size();
  const auto N = static_cast<std::size_t>(n);
  for (CommType t : {CommType::kF32, CommType::kBF16, CommType::kF16, CommType::kI32, CommType::kI64}) {
    for (std::size_t count : {1u, 3u, 4097u}) {
      std::vector<std::vector<std::byte>> in;
      for (int r = 0; r < n; ++r) in.push_back(testing_comm::Fill::random(t, count * N, 31 + static_cast<unsigned>(r)));
      const auto& mine = in[static_cast<std::size_t>(world->rank())];
      const std::string what = std::string(comm_type_name(t)) + " x " + std::to_string(count) + " on " + std::to_string(n) + " ranks";
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
        auto buf = env.rank.upload(mine, t, count * N);
        ASSERT_TRUE(world->all_reduce(buf, buf, op, *env.stream).ok());
        expect_reduced(t, op, env.rank.download(buf), testing_comm::reference_reduce(t, op, in), n,
                       "all_reduce " + std::string(reduce_op_name(op)) + " " + what);
      }
      auto buf = env.rank.upload(mine, t, count * N);
      auto shard = env.rank.alloc(t, count);
      auto all = env.rank.alloc(t, count * N);
      ASSERT_TRUE(world->reduce_scatter(buf, shard, ReduceOp::kMax, *env.stream).ok());
      ASSERT_TRUE(world->all_gather(shard, all, *env.stream).ok());
      EXPECT_TRUE(env.rank.download(all) == testing_comm::reference_reduce(t, ReduceOp::kMax, in)) << "reduce_scatter + all_gather " << what;
      ASSERT_TRUE(world->broadcast(buf, n - 1, *env.stream).ok());
      EXPECT_TRUE(env.rank.download(buf) == in[N - 1]) << "broadcast " << what;
      // In place: into this rank's part of the buffer and back out of it.
      auto whole = env.rank.upload(mine, t, count * N);
      const std::size_t per = count * comm_type_size(t);
      const CommBuffer part{*whole.range.subrange(static_cast<std::size_t>(world->rank()) * per, per), t, count};
      ASSERT_TRUE(world->reduce_scatter(whole, part, ReduceOp::kMax, *env.stream).ok());
      ASSERT_TRUE(world->all_gather(part, whole, *env.stream).ok());
      EXPECT_TRUE(env.rank.download(whole) == testing_comm::reference_reduce(t, ReduceOp::kMax, in)) << "in place " << what;
    }
  }
}

// A collective after device work on the stream sees that work, and one right after another
// collective (which waits for nothing but it) sees the first one's result.
TEST(MpiComm, CollectivesFollowTheStreamsWorkAndEachOther) {
  Env env;
  const int n = world->size();
  auto buf = env.rank.alloc(CommType::kF32, 1024);
  const DeviceView v = env.rank.view(buf);
  ASSERT_TRUE(env.device->fill(v, 3.0f, *env.stream).ok());
  ASSERT_TRUE(world->all_reduce(buf, buf, ReduceOp::kSum, *env.stream).ok());   // 3n
  ASSERT_TRUE(world->all_reduce(buf, buf, ReduceOp::kSum, *env.stream).ok());   // 3n^2, chained
  auto twice = env.rank.download(buf);
  float got;
  std::memcpy(&got, twice.data() + 4 * 1023, 4);
  EXPECT_EQ(got, 3.0f * n * n);
  ASSERT_TRUE(world->all_reduce(buf, buf, ReduceOp::kSum, *env.stream).ok());
  ASSERT_TRUE(env.device->fill(v, 1.0f, *env.stream).ok());                      // after the first
  ASSERT_TRUE(world->all_reduce(buf, buf, ReduceOp::kSum, *env.stream).ok());   // n, not 1
  auto after = env.rank.download(buf);
  std::memcpy(&got, after.data(), 4);
  EXPECT_EQ(got, static_cast<float>(n));
}

TEST(MpiComm, TransfersInFlightTogetherNeverCross) {
  if (world->size() < 2) GTEST_SKIP() << "needs two ranks (run under mpirun -n 2)";
  Env env;
  auto s2 = env.device->create_stream("second");
  ASSERT_TRUE(s2.ok());
  const auto a = testing_comm::Fill::random(CommType::kF32, 1000, 1), b = testing_comm::Fill::random(CommType::kF32, 7, 2);
  if (world->rank() == 0) {
    auto ba = env.rank.upload(a, CommType::kF32, 1000), bb = env.rank.upload(b, CommType::kF32, 7);
    ASSERT_TRUE(env.stream->synchronize().ok());  // the second send's stream is not ordered after the uploads
    ASSERT_TRUE(world->send(ba, 1, 1, *env.stream).ok());
    ASSERT_TRUE(world->send(bb, 1, 2, **s2).ok());
    ASSERT_TRUE(env.stream->synchronize().ok());
    ASSERT_TRUE((*s2)->synchronize().ok());
  } else if (world->rank() == 1) {
    auto ra = env.rank.alloc(CommType::kF32, 1000), rb = env.rank.alloc(CommType::kF32, 7);
    ASSERT_TRUE(world->recv(rb, 0, 2, *env.stream).ok());
    ASSERT_TRUE(world->recv(ra, 0, 1, **s2).ok());
    ASSERT_TRUE((*s2)->synchronize().ok());
    EXPECT_EQ(env.rank.download(ra), a);
    EXPECT_EQ(env.rank.download(rb), b);
  }
  ASSERT_TRUE(world->barrier().ok());
}

TEST(MpiComm, SplitCountsAndHostValues) {
  Env env;
  auto sub = world->split(world->rank() % 2, world->rank());
  ASSERT_TRUE(sub.ok()) << sub.status();
  std::vector<double> v{1.0, static_cast<double>(world->rank())};
  ASSERT_TRUE((*sub)->all_reduce_host(v, ReduceOp::kMax).ok());
  EXPECT_EQ(v[0], 1.0);
  EXPECT_EQ(static_cast<int>(v[1]) % 2, world->rank() % 2);
  auto buf = env.rank.alloc(CommType::kF32, 3000);
  const std::uint64_t before = world->stats().of(CommKind::kAllReduce).bytes_sent;
  ASSERT_TRUE(world->all_reduce(buf, buf, ReduceOp::kSum, *env.stream).ok());
  ASSERT_TRUE(env.stream->synchronize().ok());
  const auto N = static_cast<std::uint64_t>(world->size());
  EXPECT_EQ(world->stats().of(CommKind::kAllReduce).bytes_sent - before, 2 * 12000 * (N - 1) / N);
}

// With check_collectives (on in these tests) ranks that enqueue different collectives fail
// naming both sides, on every rank, instead of hanging or mixing buffers.
TEST(MpiComm, MismatchedCollectivesFailNamingBothSides) {
  if (world->size() < 2) GTEST_SKIP() << "needs two ranks (run under mpirun -n 2)";
  Env env;
  auto small = env.rank.alloc(CommType::kF32, 64);
  auto big = env.rank.alloc(CommType::kF32, 64 * static_cast<std::size_t>(world->size()));
  Status st = world->rank() == 0 ? world->all_reduce(small, small, ReduceOp::kSum, *env.stream)
                                 : world->all_gather(small, big, *env.stream);
  ASSERT_TRUE(st.ok()) << st;
  st = env.stream->synchronize();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("rank 0 called all_reduce #"), std::string::npos) << st;
  EXPECT_NE(st.message().find("rank 1 called all_gather #"), std::string::npos) << st;
}

// Two levels: within each node, then across. Under the multihost test (two namespaces of two
// ranks, STRATA_EXPECT_NODES=2) the nodes are real and the cross-node traffic is TCP.
TEST(MpiComm, HierarchicalAllReduceMatchesTheFlatOne) {
  if (const char* want = std::getenv("STRATA_EXPECT_NODES")) {
    EXPECT_EQ(world->node_count(), std::atoi(want));
  }
  Env env;
  auto h = parallel::HierarchicalAllReduce::create(*world);
  ASSERT_TRUE(h.ok()) << h.status();
  const int n = world->size();
  constexpr std::size_t kCount = 10001;
  std::vector<std::vector<std::byte>> in;
  for (int r = 0; r < n; ++r) in.push_back(testing_comm::Fill::random(CommType::kF32, kCount, 77 + static_cast<unsigned>(r)));
  auto buf = env.rank.upload(in[static_cast<std::size_t>(world->rank())], CommType::kF32, kCount);
  ASSERT_TRUE((*h)->all_reduce(buf, buf, ReduceOp::kSum, *env.stream).ok());
  expect_reduced(CommType::kF32, ReduceOp::kSum, env.rank.download(buf),
                 testing_comm::reference_reduce(CommType::kF32, ReduceOp::kSum, in), n, "hierarchical all_reduce");
  const auto per_node = static_cast<std::uint64_t>((*h)->node_comm().size());
  const auto nodes = static_cast<std::uint64_t>((*h)->cross_comm().size());
  const std::uint64_t shard = kCount / per_node * 4;
  EXPECT_EQ((*h)->cross_comm().stats().of(CommKind::kAllReduce).bytes_sent, nodes > 1 ? 2 * shard * (nodes - 1) / nodes : 0);
}

// NcclComm on the CUDA device: built with CUDA, NCCL and MPI, and unverified until this runs on
// a GPU (here it skips: no CUDA device).
TEST(CudaNccl, AllReduceOnTheCudaDeviceMatchesTheReference) {
  auto nccl = create_communicator("nccl");
  if (!nccl.ok() && nccl.status().code() == StatusCode::kUnavailable) GTEST_SKIP() << nccl.status().message();
  ASSERT_TRUE(nccl.ok()) << nccl.status();
  auto dev = create_device("cuda");
  ASSERT_TRUE(dev.ok()) << dev.status();
  auto stream = (*dev)->create_stream("nccl-test");
  ASSERT_TRUE(stream.ok());
  const int n = (*nccl)->size();
  std::vector<std::vector<std::byte>> in;
  for (int r = 0; r < n; ++r) in.push_back(testing_comm::Fill::random(CommType::kI32, 4097, 3 + static_cast<unsigned>(r)));
  auto buf = (*dev)->allocate(4097 * 4);
  ASSERT_TRUE(buf.ok());
  const CommBuffer b{buf->range(), CommType::kI32, 4097};
  ASSERT_TRUE((*dev)->copy_to_device(b.range, in[static_cast<std::size_t>((*nccl)->rank())], **stream).ok());
  ASSERT_TRUE((*nccl)->all_reduce(b, b, ReduceOp::kSum, **stream).ok());
  std::vector<std::byte> out(4097 * 4);
  ASSERT_TRUE((*dev)->copy_to_host(out, b.range, **stream).ok());
  ASSERT_TRUE((*stream)->synchronize().ok());
  EXPECT_TRUE(out == testing_comm::reference_reduce(CommType::kI32, ReduceOp::kSum, in));
}

}  // namespace
}  // namespace strata

// `--abort-rank R`: rank R aborts the job while the others wait at a barrier, which must end
// with every process gone and the launcher naming rank R (a CTest entry checks the output).
int abort_mode(strata::Communicator& world, int victim) {
  if (world.rank() == victim) {
    world.abort(strata::io_error("injected failure of rank " + std::to_string(victim)));
    return 1;
  }
  strata::Status st = world.barrier();
  std::fprintf(stderr, "comm_mpi_test: rank %d: barrier returned: %s\n", world.rank(), st.to_string().c_str());
  return 1;
}

// `--stall-rank R`: rank R stays away from a barrier the others wait at; the watchdog must end
// the job within the (2 s) timeout, naming the barrier (a CTest entry checks the output).
int stall_mode(strata::Communicator& world, int stalled) {
  if (world.rank() == stalled) {
    std::this_thread::sleep_for(std::chrono::seconds(60));
    return 1;
  }
  strata::Status st = world.barrier();
  std::fprintf(stderr, "comm_mpi_test: rank %d: barrier returned: %s\n", world.rank(), st.to_string().c_str());
  return 1;
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  int victim = -1, stalled = -1;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--abort-rank") victim = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--stall-rank") stalled = std::atoi(argv[i + 1]);
  }
  strata::CommOptions o;
  o.check_collectives = true;
  o.timeout_s = stalled >= 0 ? 2 : 120;
  auto comm = strata::make_mpi_world(o);
  if (!comm.ok() && comm.status().code() == strata::StatusCode::kUnavailable && !strata::launched_by_mpi()) {
    std::printf("comm_mpi_test: skipped: %s\n", comm.status().to_string().c_str());
    return 0;
  }
  if (!comm.ok()) {
    std::fprintf(stderr, "comm_mpi_test: %s\n", comm.status().to_string().c_str());
    return 1;
  }
  strata::world = comm->get();
  if (victim >= 0) return abort_mode(*strata::world, victim);
  if (stalled >= 0) return stall_mode(*strata::world, stalled);
  int failed = RUN_ALL_TESTS();
  std::vector<double> any{static_cast<double>(failed)};
  if (!strata::world->all_reduce_host(any, strata::ReduceOp::kMax).ok()) return 1;
  comm->reset();
  return any[0] > 0 ? 1 : 0;
}
