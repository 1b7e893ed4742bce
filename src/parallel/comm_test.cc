// The communicator on LocalComm: every operation x element type x odd sizes x N ranks against
// a serial reference (bitwise: the reduction order is fixed), stream ordering, sub-groups,
// point-to-point matching, counters, and the failures a group must survive without a hang.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "kernels/elementwise_math.h"
#include "parallel/comm_test_util.h"

namespace strata {
namespace {

using testing_comm::Fill;
using testing_comm::Ranks;
using testing_comm::RankEnv;

struct Case {
  CommType type;
  std::size_t count;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (CommType t : {CommType::kF32, CommType::kBF16, CommType::kF16, CommType::kI32, CommType::kI64}) {
    for (std::size_t n : {1u, 3u, 4097u}) out.push_back({t, n});
  }
  return out;
}

class CommOps : public ::testing::TestWithParam<int> {};

TEST_P(CommOps, AllReduceEqualsTheSerialReferenceBitwise) {
  const int n = GetParam();
  for (const Case& c : cases()) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      Ranks ranks(n);
      std::vector<std::vector<std::byte>> inputs, outputs(static_cast<std::size_t>(n));
      for (int r = 0; r < n; ++r) inputs.push_back(Fill::random(c.type, c.count, 100 + static_cast<unsigned>(r)));
      ranks.run([&](RankEnv& e) {
        auto buf = e.upload(inputs[static_cast<std::size_t>(e.rank)], c.type, c.count);
        ASSERT_TRUE(e.comm->all_reduce(buf, buf, op, *e.stream).ok());
        outputs[static_cast<std::size_t>(e.rank)] = e.download(buf);
      });
      const auto want = testing_comm::reference_reduce(c.type, op, inputs);
      for (int r = 0; r < n; ++r) {
        ASSERT_EQ(outputs[static_cast<std::size_t>(r)], want)
            << "rank " << r << " of " << n << ", " << comm_type_name(c.type) << " x " << c.count << ", "
            << reduce_op_name(op);
      }
    }
  }
}

TEST_P(CommOps, ReduceScatterAllGatherAndBroadcastEqualTheSerialReference) {
  const int n = GetParam();
  const auto N = static_cast<std::size_t>(n);
  for (const Case& c : cases()) {
    Ranks ranks(n);
    std::vector<std::vector<std::byte>> inputs;
    for (int r = 0; r < n; ++r) inputs.push_back(Fill::random(c.type, c.count * N, 7 + static_cast<unsigned>(r)));
    std::vector<std::vector<std::byte>> scattered(N), gathered(N), broadcast(N);
    ranks.run([&](RankEnv& e) {
      const auto r = static_cast<std::size_t>(e.rank);
      auto in = e.upload(inputs[r], c.type, c.count * N);
      auto shard = e.alloc(c.type, c.count);
      ASSERT_TRUE(e.comm->reduce_scatter(in, shard, ReduceOp::kSum, *e.stream).ok());
      auto all = e.alloc(c.type, c.count * N);
      ASSERT_TRUE(e.comm->all_gather(shard, all, *e.stream).ok());
      ASSERT_TRUE(e.comm->broadcast(in, n - 1, *e.stream).ok());
      scattered[r] = e.download(shard);
      gathered[r] = e.download(all);
      broadcast[r] = e.download(in);
    });
    const auto sum = testing_comm::reference_reduce(c.type, ReduceOp::kSum, inputs);
    const std::size_t per = c.count * comm_type_size(c.type);
    for (std::size_t r = 0; r < N; ++r) {
      const std::vector<std::byte> slice(sum.begin() + static_cast<std::ptrdiff_t>(r * per),
                                         sum.begin() + static_cast<std::ptrdiff_t>((r + 1) * per));
      EXPECT_EQ(scattered[r], slice) << "reduce_scatter rank " << r << " " << comm_type_name(c.type) << " x " << c.count;
      EXPECT_EQ(gathered[r], sum) << "all_gather rank " << r << " " << comm_type_name(c.type) << " x " << c.count;
      EXPECT_EQ(broadcast[r], inputs[N - 1]) << "broadcast rank " << r;
    }
  }
}

// ZeRO's buckets: reduce-scatter into this rank's part of the same buffer, then all-gather from
// it, leaves the whole reduced buffer on every rank; other overlaps are refused.
TEST_P(CommOps, InPlaceReduceScatterAndAllGatherLeaveTheSumEverywhere) {
  const int n = GetParam();
  const auto N = static_cast<std::size_t>(n);
  for (const Case& c : cases()) {
    Ranks ranks(n);
    std::vector<std::vector<std::byte>> inputs, outputs(N);
    for (int r = 0; r < n; ++r) inputs.push_back(Fill::random(c.type, c.count * N, 11 + static_cast<unsigned>(r)));
    ranks.run([&](RankEnv& e) {
      const auto r = static_cast<std::size_t>(e.rank);
      auto buf = e.upload(inputs[r], c.type, c.count * N);
      const std::size_t per = c.count * comm_type_size(c.type);
      const CommBuffer mine{*buf.range.subrange(r * per, per), c.type, c.count};
      ASSERT_TRUE(e.comm->reduce_scatter(buf, mine, ReduceOp::kSum, *e.stream).ok());
      ASSERT_TRUE(e.comm->all_gather(mine, buf, *e.stream).ok());
      outputs[r] = e.download(buf);
      if (n > 1) {
        const std::size_t other = (r + 1) % N;
        const CommBuffer wrong{*buf.range.subrange(other * per, per), c.type, c.count};
        const Status st = e.comm->reduce_scatter(buf, wrong, ReduceOp::kSum, *e.stream);
        EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st;
        EXPECT_NE(st.message().find("overlap"), std::string::npos) << st;
      }
    });
    const auto sum = testing_comm::reference_reduce(c.type, ReduceOp::kSum, inputs);
    for (std::size_t r = 0; r < N; ++r) {
      EXPECT_EQ(outputs[r], sum) << "rank " << r << " of " << n << ", " << comm_type_name(c.type) << " x " << c.count;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, CommOps, ::testing::Values(1, 2, 3, 4));

// 64 MiB per rank, the sizes a gradient bucket reaches: every operation, 2 to 4 ranks.
TEST(CommLarge, SixtyFourMebibytesPerRankMatchTheReference) {
  constexpr std::size_t kBytes = 64u << 20;
  for (int n : {2, 3, 4}) {
    const auto N = static_cast<std::size_t>(n);
    for (CommType t : {CommType::kF32, CommType::kBF16}) {
      if (t == CommType::kBF16 && n != 3) continue;  // one odd group size is enough for the half type
      const std::size_t count = kBytes / comm_type_size(t) / (12 * N) * (12 * N);  // divisible by n
      Ranks ranks(n, 3 * kBytes);
      std::vector<std::vector<std::byte>> inputs, reduced(N), scattered(N), gathered(N);
      for (int r = 0; r < n; ++r) inputs.push_back(Fill::random(t, count, 900 + static_cast<unsigned>(r)));
      ranks.run([&](RankEnv& e) {
        const auto r = static_cast<std::size_t>(e.rank);
        auto buf = e.upload(inputs[r], t, count);
        auto out = e.alloc(t, count);
        auto shard = e.alloc(t, count / N);
        ASSERT_TRUE(e.comm->all_reduce(buf, out, ReduceOp::kSum, *e.stream).ok());
        ASSERT_TRUE(e.comm->reduce_scatter(buf, shard, ReduceOp::kSum, *e.stream).ok());
        reduced[r] = e.download(out);
        scattered[r] = e.download(shard);
        ASSERT_TRUE(e.comm->all_gather(shard, out, *e.stream).ok());
        gathered[r] = e.download(out);
      });
      const auto want = testing_comm::reference_reduce(t, ReduceOp::kSum, inputs);
      const std::size_t per = count / N * comm_type_size(t);
      for (std::size_t r = 0; r < N; ++r) {
        EXPECT_TRUE(reduced[r] == want) << "all_reduce rank " << r << " of " << n << " " << comm_type_name(t);
        EXPECT_TRUE(std::equal(scattered[r].begin(), scattered[r].end(), want.begin() + static_cast<std::ptrdiff_t>(r * per)))
            << "reduce_scatter rank " << r << " of " << n << " " << comm_type_name(t);
        EXPECT_TRUE(gathered[r] == want) << "all_gather rank " << r << " of " << n << " " << comm_type_name(t);
      }
    }
  }
}

// A collective enqueued after a kernel sees its output; a kernel enqueued after it sees the result.
TEST(CommStreams, CollectivesAreOrderedWithKernelsOnTheStream) {
  Ranks ranks(3);
  std::vector<float> seen(3);
  ranks.run([&](RankEnv& e) {
    auto buf = e.alloc(CommType::kF32, 1000);
    DeviceView v = e.view(buf);
    ASSERT_TRUE(e.device->fill(v, static_cast<float>(e.rank + 1), *e.stream).ok());
    ASSERT_TRUE(e.comm->all_reduce(buf, buf, ReduceOp::kSum, *e.stream).ok());
    ASSERT_TRUE(e.device->scale(v, 0.5f, *e.stream).ok());
    std::vector<std::byte> out = e.download(buf);
    float last;
    std::memcpy(&last, out.data() + out.size() - 4, 4);
    seen[static_cast<std::size_t>(e.rank)] = last;
  });
  for (float f : seen) EXPECT_EQ(f, 3.0f);  // (1 + 2 + 3) / 2
}

TEST(CommGroups, SplitMakesSubGroupsOrderedByKey) {
  Ranks ranks(4);
  std::vector<int> sub_rank(4), sub_size(4);
  std::vector<double> sums(4);
  ranks.run([&](RankEnv& e) {
    // Even and odd ranks; keys reverse the order inside each group.
    auto sub = e.comm->split(e.rank % 2, -e.rank);
    ASSERT_TRUE(sub.ok()) << sub.status();
    ASSERT_NE(*sub, nullptr);
    sub_rank[static_cast<std::size_t>(e.rank)] = (*sub)->rank();
    sub_size[static_cast<std::size_t>(e.rank)] = (*sub)->size();
    std::vector<double> v{static_cast<double>(e.rank)};
    ASSERT_TRUE((*sub)->all_reduce_host(v, ReduceOp::kSum).ok());
    sums[static_cast<std::size_t>(e.rank)] = v[0];
    auto none = e.comm->split(e.rank == 0 ? -1 : 0, 0);
    ASSERT_TRUE(none.ok());
    EXPECT_EQ(*none == nullptr, e.rank == 0);
  });
  EXPECT_EQ(sub_rank, (std::vector<int>{1, 1, 0, 0}));
  EXPECT_EQ(sub_size, (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(sums, (std::vector<double>{2, 4, 2, 4}));
}

// Two transfers between the same ranks in flight at once, received in the opposite order on
// other streams, each land in the buffer of their own tag (the crossing of Megatron-LM #5100).
TEST(CommP2p, TransfersInFlightTogetherNeverCross) {
  Ranks ranks(2);
  std::vector<std::byte> got_a, got_b;
  const auto a = Fill::random(CommType::kF32, 100, 1), b = Fill::random(CommType::kF32, 7, 2);
  ranks.run([&](RankEnv& e) {
    auto s2 = e.device->create_stream("second");
    ASSERT_TRUE(s2.ok());
    if (e.rank == 0) {
      auto ba = e.upload(a, CommType::kF32, 100), bb = e.upload(b, CommType::kF32, 7);
      ASSERT_TRUE(e.stream->synchronize().ok());  // the second send's stream is not ordered after the uploads
      ASSERT_TRUE(e.comm->send(ba, 1, 1, *e.stream).ok());
      ASSERT_TRUE(e.comm->send(bb, 1, 2, **s2).ok());
      ASSERT_TRUE(e.stream->synchronize().ok());
      ASSERT_TRUE((*s2)->synchronize().ok());
    } else {
      auto ra = e.alloc(CommType::kF32, 100), rb = e.alloc(CommType::kF32, 7);
      ASSERT_TRUE(e.comm->recv(rb, 0, 2, *e.stream).ok());
      ASSERT_TRUE(e.comm->recv(ra, 0, 1, **s2).ok());
      ASSERT_TRUE((*s2)->synchronize().ok());
      got_a = e.download(ra);
      got_b = e.download(rb);
    }
  });
  EXPECT_EQ(got_a, a);
  EXPECT_EQ(got_b, b);
}

TEST(CommCounters, CountTheRingVolumeOfEachOperation) {
  constexpr std::size_t kCount = 3000;  // 12000 bytes
  Ranks ranks(3);
  std::vector<CommStats> stats(3);
  ranks.run([&](RankEnv& e) {
    auto buf = e.alloc(CommType::kF32, kCount);
    auto shard = e.alloc(CommType::kF32, kCount / 3);
    ASSERT_TRUE(e.comm->all_reduce(buf, buf, ReduceOp::kSum, *e.stream).ok());
    ASSERT_TRUE(e.comm->reduce_scatter(buf, shard, ReduceOp::kSum, *e.stream).ok());
    ASSERT_TRUE(e.comm->all_gather(shard, buf, *e.stream).ok());
    ASSERT_TRUE(e.stream->synchronize().ok());
    stats[static_cast<std::size_t>(e.rank)] = e.comm->stats();
  });
  for (const CommStats& s : stats) {
    EXPECT_EQ(s.of(CommKind::kAllReduce).ops, 1u);
    EXPECT_EQ(s.of(CommKind::kAllReduce).bytes_sent, 2u * 12000 * 2 / 3);
    EXPECT_EQ(s.of(CommKind::kReduceScatter).bytes_sent, 12000u * 2 / 3);
    EXPECT_EQ(s.of(CommKind::kAllGather).payload_bytes, 12000u);
    EXPECT_EQ(s.of(CommKind::kAllGather).bytes_received, 12000u * 2 / 3);
  }
}

// Ranks that enqueue different collectives fail naming both sides, at once, instead of hanging.
TEST(CommFailures, MismatchedCollectivesFailNamingBothSides) {
  Ranks ranks(2);
  std::vector<Status> results(2);
  ranks.run([&](RankEnv& e) {
    auto buf = e.alloc(CommType::kF32, 64);
    auto big = e.alloc(CommType::kF32, 128);
    Status st = e.rank == 0 ? e.comm->all_reduce(buf, buf, ReduceOp::kSum, *e.stream)
                            : e.comm->all_gather(buf, big, *e.stream);
    ASSERT_TRUE(st.ok());
    results[static_cast<std::size_t>(e.rank)] = e.stream->synchronize();
  });
  for (const Status& st : results) {
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message().find("rank 0 called all_reduce #0"), std::string::npos) << st;
    EXPECT_NE(st.message().find("rank 1 called all_gather #0"), std::string::npos) << st;
  }
}

TEST(CommFailures, ARankThatNeverArrivesIsNamedWithinTheTimeout) {
  CommOptions o;
  o.timeout_s = 0.5;
  Ranks ranks(3, 64ULL << 20, o);
  std::vector<Status> results(3);
  ranks.run([&](RankEnv& e) {
    if (e.rank == 2) return;  // disappears
    results[static_cast<std::size_t>(e.rank)] = e.comm->barrier();
  });
  for (int r : {0, 1}) {
    const Status& st = results[static_cast<std::size_t>(r)];
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message().find("rank(s) 2 did not reach barrier #0"), std::string::npos) << st;
  }
}

TEST(CommFailures, AnAbortingRankFailsTheOthersNamingIt) {
  Ranks ranks(3);
  std::vector<Status> results(3);
  ranks.run([&](RankEnv& e) {
    if (e.rank == 1) {
      e.comm->abort(io_error("disk full writing a checkpoint"));
      return;
    }
    auto buf = e.alloc(CommType::kF32, 16);
    ASSERT_TRUE(e.comm->all_reduce(buf, buf, ReduceOp::kSum, *e.stream).ok());
    results[static_cast<std::size_t>(e.rank)] = e.stream->synchronize();
  });
  for (int r : {0, 2}) {
    const Status& st = results[static_cast<std::size_t>(r)];
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message().find("rank 1 failed: disk full writing a checkpoint"), std::string::npos) << st;
  }
}

TEST(CommFailures, AnUnmatchedSendIsBoundedByTheTimeout) {
  CommOptions o;
  o.timeout_s = 0.5;
  Ranks ranks(2, 64ULL << 20, o);
  Status sent;
  ranks.run([&](RankEnv& e) {
    if (e.rank != 0) return;
    auto buf = e.alloc(CommType::kF32, 16);
    ASSERT_TRUE(e.comm->send(buf, 1, 9, *e.stream).ok());
    sent = e.stream->synchronize();
  });
  ASSERT_FALSE(sent.ok());
  EXPECT_NE(sent.message().find("send between rank 0 and rank 1 (tag 9) found no partner"), std::string::npos) << sent;
}

TEST(CommRegistry, UnknownBackendListsTheKnownOnes) {
  auto c = create_communicator("gloo");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("known: auto, local, mpi, nccl"), std::string::npos) << c.status();
  auto local = create_communicator("local");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ((*local)->size(), 1);
  EXPECT_EQ((*local)->backend(), "local");
}

}  // namespace
}  // namespace strata
