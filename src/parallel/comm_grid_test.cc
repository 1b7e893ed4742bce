// The process grid, the hierarchical all-reduce and FaultyComm, on LocalComm.
#include <gtest/gtest.h>

#include <chrono>

#include "parallel/comm_test_util.h"
#include "parallel/faulty_comm.h"
#include "parallel/hierarchical_allreduce.h"
#include "parallel/process_grid.h"

namespace strata {
namespace {

using parallel::GridCoord;
using parallel::GridShape;
using testing_comm::Fill;
using testing_comm::RankEnv;
using testing_comm::Ranks;

TEST(ProcessGrid, MegatronOrderTpFastestThenDpThenPp) {
  const GridShape s{2, 2, 2};
  EXPECT_EQ(parallel::grid_coord(0, s), (GridCoord{0, 0, 0}));
  EXPECT_EQ(parallel::grid_coord(1, s), (GridCoord{0, 0, 1}));
  EXPECT_EQ(parallel::grid_coord(2, s), (GridCoord{1, 0, 0}));
  EXPECT_EQ(parallel::grid_coord(5, s), (GridCoord{0, 1, 1}));
  for (int r = 0; r < 8; ++r) EXPECT_EQ(parallel::grid_rank(parallel::grid_coord(r, s), s), r);
}

TEST(ProcessGrid, EachDimensionHasItsCommunicatorAndStageNeighbours) {
  Ranks ranks(8);
  struct Seen {
    int dp_rank, dp_size, tp_rank, pp_rank, prev, next;
    double tp_sum, dp_sum, pp_sum;
  };
  std::vector<Seen> seen(8);
  ranks.run([&](RankEnv& e) {
    auto grid = parallel::ProcessGrid::create(*e.comm, GridShape{2, 2, 2});
    ASSERT_TRUE(grid.ok()) << grid.status();
    auto& g = **grid;
    std::vector<double> t{static_cast<double>(e.rank)}, d = t, p = t;
    ASSERT_TRUE(g.tp().all_reduce_host(t, ReduceOp::kSum).ok());
    ASSERT_TRUE(g.dp().all_reduce_host(d, ReduceOp::kSum).ok());
    ASSERT_TRUE(g.pp().all_reduce_host(p, ReduceOp::kSum).ok());
    seen[static_cast<std::size_t>(e.rank)] = {g.dp().rank(), g.dp().size(), g.tp().rank(), g.pp().rank(),
                                              g.prev_stage(), g.next_stage(), t[0], d[0], p[0]};
  });
  // Rank 5 = (dp 0, pp 1, tp 1): tp peers {4, 5}, dp peers {5, 7}, pp peers {1, 5}.
  const Seen& r5 = seen[5];
  EXPECT_EQ(r5.tp_rank, 1);
  EXPECT_EQ(r5.dp_rank, 0);
  EXPECT_EQ(r5.dp_size, 2);
  EXPECT_EQ(r5.pp_rank, 1);
  EXPECT_EQ(r5.prev, 1);
  EXPECT_EQ(r5.next, -1);
  EXPECT_EQ(r5.tp_sum, 9);
  EXPECT_EQ(r5.dp_sum, 12);
  EXPECT_EQ(r5.pp_sum, 6);
  EXPECT_EQ(seen[1].next, 5);
}

TEST(ProcessGrid, AWorldOfTheWrongSizeIsAClearError) {
  Ranks ranks(3);
  ranks.run([&](RankEnv& e) {
    auto grid = parallel::ProcessGrid::create(*e.comm, GridShape{2, 1, 2});
    ASSERT_FALSE(grid.ok());
    EXPECT_NE(grid.status().message().find("dp 2 x tp 1 x pp 2 needs 4 ranks; the job has 3"), std::string::npos)
        << grid.status();
  });
}

// Two nodes of two ranks: the two-level all-reduce equals the flat one bit for bit, and moves
// 1/(ranks per node) of the payload across nodes.
TEST(HierarchicalAllReduce, EqualsTheFlatOneBitwiseAndCrossesNodesWithAShard) {
  CommOptions o;
  o.ranks_per_node = 2;
  for (CommType t : {CommType::kF32, CommType::kBF16}) {
    for (std::size_t count : {4097u, 10000u}) {
      Ranks ranks(4, 64ULL << 20, o);
      std::vector<std::vector<std::byte>> in, flat(4), two(4);
      for (int r = 0; r < 4; ++r) in.push_back(Fill::random(t, count, 50 + static_cast<unsigned>(r)));
      std::vector<std::uint64_t> cross_sent(4);
      ranks.run([&](RankEnv& e) {
        const auto r = static_cast<std::size_t>(e.rank);
        EXPECT_EQ(e.comm->node(), e.rank / 2);
        EXPECT_EQ(e.comm->node_count(), 2);
        auto h = parallel::HierarchicalAllReduce::create(*e.comm);
        ASSERT_TRUE(h.ok()) << h.status();
        auto a = e.upload(in[r], t, count), b = e.upload(in[r], t, count);
        ASSERT_TRUE(e.comm->all_reduce(a, a, ReduceOp::kSum, *e.stream).ok());
        ASSERT_TRUE((*h)->all_reduce(b, b, ReduceOp::kSum, *e.stream).ok());
        flat[r] = e.download(a);
        two[r] = e.download(b);
        cross_sent[r] = (*h)->cross_comm().stats().of(CommKind::kAllReduce).bytes_sent;
      });
      const std::uint64_t shard_bytes = count / 2 * comm_type_size(t);
      for (std::size_t r = 0; r < 4; ++r) {
        EXPECT_TRUE(two[r] == flat[r]) << comm_type_name(t) << " x " << count << " rank " << r;
        EXPECT_EQ(cross_sent[r], 2 * shard_bytes * 1 / 2) << "cross-node bytes of rank " << r;
      }
    }
  }
}

TEST(FaultyComm, DelaysLeaveResultsUnchanged) {
  Ranks ranks(3);
  std::vector<std::vector<std::byte>> in, plain(3), delayed(3);
  for (int r = 0; r < 3; ++r) in.push_back(Fill::random(CommType::kF32, 5000, 70 + static_cast<unsigned>(r)));
  ranks.run([&](RankEnv& e) {
    const auto r = static_cast<std::size_t>(e.rank);
    auto a = e.upload(in[r], CommType::kF32, 5000);
    ASSERT_TRUE(e.comm->all_reduce(a, a, ReduceOp::kSum, *e.stream).ok());
    plain[r] = e.download(a);
  });
  // The same through FaultyComm, each rank delayed differently.
  auto comms = make_local_comms(3);
  ASSERT_TRUE(comms.ok());
  std::vector<std::unique_ptr<parallel::FaultyComm>> faulty;
  for (int r = 0; r < 3; ++r) {
    faulty.push_back(std::make_unique<parallel::FaultyComm>(std::move((*comms)[static_cast<std::size_t>(r)])));
    faulty.back()->delay(std::nullopt, std::chrono::milliseconds(5 + 10 * r));
  }
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      auto dev = create_device("host", DeviceOptions{64ULL << 20});
      auto stream = (*dev)->create_stream("faulty");
      RankEnv e;
      e.rank = r;
      e.device = dev->get();
      e.stream = stream->get();
      e.comm = faulty[static_cast<std::size_t>(r)].get();
      auto a = e.upload(in[static_cast<std::size_t>(r)], CommType::kF32, 5000);
      ASSERT_TRUE(e.comm->barrier().ok());
      ASSERT_TRUE(e.comm->all_reduce(a, a, ReduceOp::kSum, *e.stream).ok());
      delayed[static_cast<std::size_t>(r)] = e.download(a);
      e.buffers.clear();
    });
  }
  for (auto& t : threads) t.join();
  for (std::size_t r = 0; r < 3; ++r) EXPECT_TRUE(delayed[r] == plain[r]) << "rank " << r;
}

TEST(FaultyComm, AFailingRankMakesTheOthersFailNamingIt) {
  auto comms = make_local_comms(2);
  ASSERT_TRUE(comms.ok());
  parallel::FaultyComm bad(std::move((*comms)[1]));
  bad.fail_nth(1, io_error("injected failure"));
  Status other, own;
  std::thread t0([&] { other = (*comms)[0]->barrier(); });
  std::thread t1([&] { own = bad.barrier(); });
  t0.join();
  t1.join();
  EXPECT_EQ(own.message(), "injected failure");
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.message().find("rank 1 failed: injected failure"), std::string::npos) << other;
}

TEST(FaultyComm, ARankThatDisappearsIsNamedWithinTheTimeout) {
  CommOptions o;
  o.timeout_s = 0.5;
  auto comms = make_local_comms(2, o);
  ASSERT_TRUE(comms.ok());
  parallel::FaultyComm gone(std::move((*comms)[1]));
  gone.disappear_after(1);
  Status first0, first1, second0;
  std::thread t0([&] {
    first0 = (*comms)[0]->barrier();
    second0 = (*comms)[0]->barrier();
  });
  std::thread t1([&] {
    first1 = gone.barrier();
    EXPECT_TRUE(gone.barrier().ok());  // dropped
  });
  t0.join();
  t1.join();
  EXPECT_TRUE(first0.ok()) << first0;
  EXPECT_TRUE(first1.ok()) << first1;
  ASSERT_FALSE(second0.ok());
  EXPECT_NE(second0.message().find("rank(s) 1 did not reach barrier #1"), std::string::npos) << second0;
}

}  // namespace
}  // namespace strata
