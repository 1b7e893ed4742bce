// src/parallel/comm_test_util.h — N ranks for a communicator test: each rank a thread with its
// own host device, stream and communicator; buffers to upload and read back; random inputs
// per element type; and the serial reference of a reduction in the fixed order.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "kernels/elementwise_math.h"
#include "strata/communicator.h"
#include "strata/device.h"

namespace strata::testing_comm {

struct RankEnv {
  int rank = 0;
  Device* device = nullptr;
  Stream* stream = nullptr;
  Communicator* comm = nullptr;
  std::vector<DeviceBuffer> buffers;  // kept alive until the rank's function returns

  CommBuffer alloc(CommType type, std::size_t count) {
    auto b = device->allocate(std::max<std::size_t>(1, count * comm_type_size(type)));
    EXPECT_TRUE(b.ok()) << b.status();
    buffers.push_back(std::move(*b));
    return {buffers.back().range(), type, count};
  }
  CommBuffer upload(const std::vector<std::byte>& bytes, CommType type, std::size_t count) {
    CommBuffer b = alloc(type, count);
    EXPECT_TRUE(device->copy_to_device(b.range, bytes, *stream).ok());
    return b;
  }
  std::vector<std::byte> download(const CommBuffer& b) {
    std::vector<std::byte> out(b.bytes());
    EXPECT_TRUE(device->copy_to_host(out, *b.range.subrange(0, b.bytes()), *stream).ok());
    Status st = stream->synchronize();
    EXPECT_TRUE(st.ok()) << st;
    return out;
  }
  DeviceView view(const CommBuffer& b) {
    for (DeviceBuffer& d : buffers) {
      if (d.address() == b.range.address()) return *d.view(DType::kF32, 0, b.count);
    }
    ADD_FAILURE() << "not a buffer of this rank";
    return {};
  }
};

// N ranks of one LocalComm group, each with its own host device of `capacity` bytes.
class Ranks {
 public:
  explicit Ranks(int n, std::uint64_t capacity = 64ULL << 20, CommOptions options = {}) {
    auto comms = make_local_comms(n, options);
    EXPECT_TRUE(comms.ok()) << comms.status();
    comms_ = std::move(*comms);
    DeviceOptions d;
    d.capacity = capacity;
    d.compute_threads = 1;
    for (int r = 0; r < n; ++r) {
      auto dev = create_device("host", d);
      EXPECT_TRUE(dev.ok()) << dev.status();
      devices_.push_back(std::move(*dev));
    }
  }

  // Runs fn on every rank at once, each on its own thread, and joins them.
  void run(const std::function<void(RankEnv&)>& fn) {
    std::vector<std::thread> threads;
    for (std::size_t r = 0; r < comms_.size(); ++r) {
      threads.emplace_back([&, r] {
        auto stream = devices_[r]->create_stream("rank");
        ASSERT_TRUE(stream.ok());
        RankEnv e;
        e.rank = static_cast<int>(r);
        e.device = devices_[r].get();
        e.stream = stream->get();
        e.comm = comms_[r].get();
        fn(e);
        (*stream)->synchronize().ignore();
      });
    }
    for (auto& t : threads) t.join();
  }

  Communicator& comm(int r) { return *comms_[static_cast<std::size_t>(r)]; }

 private:
  std::vector<std::unique_ptr<Device>> devices_;
  std::vector<std::unique_ptr<Communicator>> comms_;
};

struct Fill {
  // `count` random elements of `type` (small integers for the integer types, so that sums of
  // four ranks do not overflow and max/min see ties and negatives).
  static std::vector<std::byte> random(CommType type, std::size_t count, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::uniform_int_distribution<int> small(-1000, 1000);
    std::vector<std::byte> out(count * comm_type_size(type));
    for (std::size_t i = 0; i < count; ++i) {
      std::byte* p = out.data() + i * comm_type_size(type);
      switch (type) {
        case CommType::kF32: { float v = normal(rng); std::memcpy(p, &v, 4); break; }
        case CommType::kBF16: { auto v = kern::from_f32<kern::Bf16>(normal(rng)); std::memcpy(p, &v, 2); break; }
        case CommType::kF16: { auto v = kern::from_f32<kern::F16>(normal(rng)); std::memcpy(p, &v, 2); break; }
        case CommType::kI32: { std::int32_t v = small(rng); std::memcpy(p, &v, 4); break; }
        case CommType::kI64: { std::int64_t v = std::int64_t{small(rng)} << 33; std::memcpy(p, &v, 8); break; }
      }
    }
    return out;
  }
};

template <typename T, typename Acc>
void fold(ReduceOp op, const std::vector<std::vector<std::byte>>& in, std::vector<std::byte>& out,
          Acc (*to)(T), T (*from)(Acc)) {
  const std::size_t n = out.size() / sizeof(T);
  for (std::size_t i = 0; i < n; ++i) {
    Acc acc{};
    for (std::size_t r = 0; r < in.size(); ++r) {
      T v;
      std::memcpy(&v, in[r].data() + i * sizeof(T), sizeof(T));
      const Acc x = to(v);
      acc = r == 0 ? x : op == ReduceOp::kSum ? acc + x : op == ReduceOp::kMax ? (x > acc ? x : acc) : (x < acc ? x : acc);
    }
    T res = from(acc);
    std::memcpy(out.data() + i * sizeof(T), &res, sizeof(T));
  }
}

// Element i of the result: the ranks' elements folded left in rank order (fp32 for the float
// types, rounded once; exact for the integers in the ranges Fill gives).
inline std::vector<std::byte> reference_reduce(CommType type, ReduceOp op, const std::vector<std::vector<std::byte>>& in) {
  std::vector<std::byte> out(in.front().size());
  switch (type) {
    case CommType::kF32:
      fold<float, float>(op, in, out, [](float v) { return v; }, [](float v) { return v; });
      break;
    case CommType::kBF16:
      fold<kern::Bf16, float>(op, in, out, [](kern::Bf16 v) { return kern::to_f32(v); },
                              [](float v) { return kern::from_f32<kern::Bf16>(v); });
      break;
    case CommType::kF16:
      fold<kern::F16, float>(op, in, out, [](kern::F16 v) { return kern::to_f32(v); },
                             [](float v) { return kern::from_f32<kern::F16>(v); });
      break;
    case CommType::kI32:
      fold<std::int32_t, std::int64_t>(op, in, out, [](std::int32_t v) { return std::int64_t{v}; },
                                       [](std::int64_t v) { return static_cast<std::int32_t>(v); });
      break;
    case CommType::kI64:
      fold<std::int64_t, std::int64_t>(op, in, out, [](std::int64_t v) { return v; }, [](std::int64_t v) { return v; });
      break;
  }
  return out;
}

}  // namespace strata::testing_comm
