// Names, argument checks, accounting and the fixed-order reduction shared by the backends.
#include <algorithm>
#include <cstring>
#include <sstream>
#include <type_traits>

#include <emmintrin.h>
#include <vector>

#include "kernels/elementwise_math.h"
#include "parallel/comm_internal.h"

namespace strata {

std::string_view comm_type_name(CommType t) {
  switch (t) {
    case CommType::kF32: return "fp32";
    case CommType::kBF16: return "bf16";
    case CommType::kF16: return "fp16";
    case CommType::kI32: return "int32";
    case CommType::kI64: return "int64";
  }
  return "?";
}

std::size_t comm_type_size(CommType t) {
  switch (t) {
    case CommType::kF32: case CommType::kI32: return 4;
    case CommType::kBF16: case CommType::kF16: return 2;
    case CommType::kI64: return 8;
  }
  return 1;
}

CommType comm_type_of(DType t) {
  switch (t) {
    case DType::kF32: return CommType::kF32;
    case DType::kBF16: return CommType::kBF16;
    case DType::kF16: return CommType::kF16;
  }
  return CommType::kF32;
}

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

std::string_view comm_kind_name(CommKind k) {
  switch (k) {
    case CommKind::kAllReduce: return "all_reduce";
    case CommKind::kReduceScatter: return "reduce_scatter";
    case CommKind::kAllGather: return "all_gather";
    case CommKind::kBroadcast: return "broadcast";
    case CommKind::kSend: return "send";
    case CommKind::kRecv: return "recv";
    case CommKind::kBarrier: return "barrier";
    case CommKind::kCount: break;
  }
  return "?";
}

std::uint64_t CommStats::bytes_sent() const {
  std::uint64_t n = 0;
  for (const auto& k : kinds) n += k.bytes_sent;
  return n;
}

std::uint64_t CommStats::bytes_received() const {
  std::uint64_t n = 0;
  for (const auto& k : kinds) n += k.bytes_received;
  return n;
}

std::string CommStats::to_json() const {
  std::ostringstream o;
  o << "{";
  bool first = true;
  for (int i = 0; i < static_cast<int>(CommKind::kCount); ++i) {
    const CommKindStats& k = kinds[i];
    if (k.ops == 0) continue;
    o << (first ? "" : ",") << "\"" << comm_kind_name(static_cast<CommKind>(i)) << "\":{\"ops\":" << k.ops
      << ",\"payload_bytes\":" << k.payload_bytes << ",\"bytes_sent\":" << k.bytes_sent
      << ",\"bytes_received\":" << k.bytes_received << ",\"seconds\":" << k.seconds << "}";
    first = false;
  }
  o << "}";
  return o.str();
}

namespace comm {

std::string describe(const Fingerprint& f) {
  std::string s = std::string(f.split ? "split" : comm_kind_name(f.kind)) + " #" + std::to_string(f.seq);
  if (f.kind == CommKind::kBarrier) return s;
  if (f.host) return s + " (" + std::to_string(f.count) + " host values, " + std::string(reduce_op_name(f.op)) + ")";
  s += " (" + std::string(comm_type_name(f.type)) + ", " + std::to_string(f.count) + " elements";
  if (f.kind == CommKind::kAllReduce || f.kind == CommKind::kReduceScatter) s += ", " + std::string(reduce_op_name(f.op));
  if (f.root >= 0) s += ", root " + std::to_string(f.root);
  return s + ")";
}

Status check_buffer(const CommBuffer& b, std::string_view what) {
  if (b.count == 0) return invalid_argument(std::string(what) + " has no elements");
  if (b.range.bytes() < b.bytes()) {
    return invalid_argument(std::string(what) + " holds " + std::to_string(b.range.bytes()) + " bytes, fewer than its " +
                            std::to_string(b.count) + " " + std::string(comm_type_name(b.type)) + " elements");
  }
  if (b.range.address() == nullptr) return invalid_argument(std::string(what) + " has no memory");
  return Status::OK();
}

bool is_rank_part(const CommBuffer& inner, const CommBuffer& outer, int rank) {
  return static_cast<const std::byte*>(outer.range.address()) + inner.bytes() * static_cast<std::size_t>(rank) ==
         inner.range.address();
}

Status check_collective(CommKind kind, const CommBuffer& send, const CommBuffer& recv, int size, int rank) {
  const std::string name(comm_kind_name(kind));
  STRATA_RETURN_IF_ERROR(check_buffer(send, name + ": the send buffer"));
  STRATA_RETURN_IF_ERROR(check_buffer(recv, name + ": the receive buffer"));
  if (send.type != recv.type) {
    return invalid_argument(name + ": send is " + std::string(comm_type_name(send.type)) + " but receive is " +
                            std::string(comm_type_name(recv.type)));
  }
  const auto n = static_cast<std::size_t>(size);
  const std::size_t want_recv = kind == CommKind::kReduceScatter ? send.count / n
                                : kind == CommKind::kAllGather  ? send.count * n
                                                                 : send.count;
  if (kind == CommKind::kReduceScatter && send.count % n != 0) {
    return invalid_argument(name + ": the send count " + std::to_string(send.count) + " is not a multiple of the " +
                            std::to_string(size) + " ranks");
  }
  if (recv.count != want_recv) {
    return invalid_argument(name + " over " + std::to_string(size) + " ranks of " + std::to_string(send.count) +
                            " elements needs a receive buffer of " + std::to_string(want_recv) + " elements; found " +
                            std::to_string(recv.count));
  }
  const auto* s0 = static_cast<const std::byte*>(send.range.address());
  const auto* r0 = static_cast<const std::byte*>(recv.range.address());
  const bool overlap = s0 < r0 + recv.bytes() && r0 < s0 + send.bytes();
  const bool allowed = kind == CommKind::kAllReduce       ? s0 == r0
                       : kind == CommKind::kReduceScatter ? is_rank_part(recv, send, rank)
                       : kind == CommKind::kAllGather     ? is_rank_part(send, recv, rank)
                                                          : false;
  if (overlap && !allowed) {
    return invalid_argument(name + ": the send and receive buffers overlap other than in place (" +
                            std::string(kind == CommKind::kAllReduce ? "the same buffer"
                                                                     : "this rank's part of the larger buffer") +
                            ")");
  }
  return Status::OK();
}

RingVolume ring_volume(CommKind kind, std::uint64_t payload, int n, bool is_root) {
  const auto N = static_cast<std::uint64_t>(n);
  if (N <= 1) return {};
  switch (kind) {
    case CommKind::kAllReduce: return {2 * payload * (N - 1) / N, 2 * payload * (N - 1) / N};
    case CommKind::kReduceScatter:
    case CommKind::kAllGather: return {payload * (N - 1) / N, payload * (N - 1) / N};
    case CommKind::kBroadcast: return is_root ? RingVolume{payload, 0} : RingVolume{0, payload};
    case CommKind::kSend: return {payload, 0};
    case CommKind::kRecv: return {0, payload};
    case CommKind::kBarrier:
    case CommKind::kCount: break;
  }
  return {};
}

std::uint64_t payload_bytes(const Fingerprint& f, const CommBuffer& send, const CommBuffer& recv, std::size_t host_bytes) {
  if (f.kind == CommKind::kBarrier) return 0;
  if (f.host) return host_bytes;
  return f.kind == CommKind::kAllGather ? recv.bytes() : send.bytes();
}

void CommCounters::add(CommKind kind, std::uint64_t payload, RingVolume v, double seconds) {
  std::lock_guard lk(mu_);
  CommKindStats& k = stats_.kinds[static_cast<int>(kind)];
  ++k.ops;
  k.payload_bytes += payload;
  k.bytes_sent += v.sent;
  k.bytes_received += v.received;
  k.seconds += seconds;
}

CommStats CommCounters::snapshot() const {
  std::lock_guard lk(mu_);
  return stats_;
}

namespace {

// Integer sums wrap modulo 2^width (computed unsigned, well defined), as MPI and NCCL do.
template <typename Acc>
Acc add(Acc a, Acc b) {
  if constexpr (std::is_integral_v<Acc>) {
    using U = std::make_unsigned_t<Acc>;
    return static_cast<Acc>(static_cast<U>(a) + static_cast<U>(b));
  } else {
    return a + b;
  }
}

template <ReduceOp Op, typename Acc>
Acc combine(Acc a, Acc b) {
  if constexpr (Op == ReduceOp::kSum) {
    return add(a, b);
  } else if constexpr (Op == ReduceOp::kMax) {
    return b > a ? b : a;
  } else {
    return b < a ? b : a;
  }
}

// The element types: T in memory, Acc for the arithmetic.
template <typename T>
struct Arith {
  using Acc = T;
  static Acc to(T v) { return v; }
  static T from(Acc v) { return v; }
};
template <>
struct Arith<kern::Bf16> {
  using Acc = float;
  static float to(kern::Bf16 v) { return kern::to_f32(v); }
  static kern::Bf16 from(float v) { return kern::from_f32<kern::Bf16>(v); }
};
template <>
struct Arith<kern::F16> {
  using Acc = float;
  static float to(kern::F16 v) { return kern::to_f32(v); }
  static kern::F16 from(float v) { return kern::from_f32<kern::F16>(v); }
};

// Writes a block to a destination; `stream` uses non-temporal stores (no read for ownership
// of lines about to be overwritten whole, and no eviction of the sources from the cache):
// a third less memory traffic for a large all-reduce.
void store_block(void* dst, const void* src, std::size_t bytes, bool stream) {
  const auto addr = reinterpret_cast<std::uintptr_t>(dst);
  if (!stream || addr % 16 != 0 || bytes % 16 != 0) {
    std::memcpy(dst, src, bytes);
    return;
  }
  auto* d = static_cast<__m128i*>(dst);
  const auto* x = static_cast<const __m128i*>(src);
  for (std::size_t i = 0; i < bytes / 16; ++i) _mm_stream_si128(d + i, _mm_load_si128(x + i));
}

// Blocks of kBlock elements: the partials of a block stay in L1, every loop is a plain
// element-wise loop the compiler vectorises, and each destination is written once per block.
template <typename T, ReduceOp Op>
void reduce_typed(std::span<void* const> dsts, std::span<const void* const> src, std::size_t begin, std::size_t end,
                  std::span<const int> groups) {
  using A = Arith<T>;
  using Acc = typename A::Acc;
  constexpr std::size_t kBlock = 2048;
  const int one_group[] = {static_cast<int>(src.size())};
  if (groups.empty()) groups = one_group;
  alignas(64) Acc acc[kBlock];
  alignas(64) Acc total[kBlock];
  alignas(64) T out[kBlock];
  const bool stream = (end - begin) * sizeof(T) >= (std::size_t{1} << 20);
  for (std::size_t b0 = begin; b0 < end; b0 += kBlock) {
    const std::size_t len = std::min(kBlock, end - b0);
    std::size_t k = 0;
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const T* first = static_cast<const T*>(src[k]) + b0;
      for (std::size_t i = 0; i < len; ++i) acc[i] = A::to(first[i]);
      for (int m = 1; m < groups[g]; ++m) {
        const T* x = static_cast<const T*>(src[k + static_cast<std::size_t>(m)]) + b0;
        for (std::size_t i = 0; i < len; ++i) acc[i] = combine<Op>(acc[i], A::to(x[i]));
      }
      k += static_cast<std::size_t>(groups[g]);
      if (groups.size() == 1) break;
      // Each node's partial is rounded to the element type, as a stored shard would be.
      for (std::size_t i = 0; i < len; ++i) {
        const Acc rounded = A::to(A::from(acc[i]));
        total[i] = g == 0 ? rounded : combine<Op>(total[i], rounded);
      }
    }
    const Acc* result = groups.size() == 1 ? acc : total;
    for (std::size_t i = 0; i < len; ++i) out[i] = A::from(result[i]);
    for (void* d : dsts) store_block(static_cast<T*>(d) + b0, out, len * sizeof(T), stream);
  }
  if (stream) _mm_sfence();  // the streamed stores are visible before the peers are told
}

template <typename T>
void reduce_op(ReduceOp op, std::span<void* const> dsts, std::span<const void* const> src, std::size_t begin,
               std::size_t end, std::span<const int> groups) {
  switch (op) {
    case ReduceOp::kSum: reduce_typed<T, ReduceOp::kSum>(dsts, src, begin, end, groups); return;
    case ReduceOp::kMax: reduce_typed<T, ReduceOp::kMax>(dsts, src, begin, end, groups); return;
    case ReduceOp::kMin: reduce_typed<T, ReduceOp::kMin>(dsts, src, begin, end, groups); return;
  }
}

}  // namespace

void reduce_fixed_order(CommType type, ReduceOp op, std::span<void* const> dsts, std::span<const void* const> src,
                        std::size_t begin, std::size_t end, std::span<const int> group_sizes) {
  switch (type) {
    case CommType::kF32: reduce_op<float>(op, dsts, src, begin, end, group_sizes); return;
    case CommType::kBF16: reduce_op<kern::Bf16>(op, dsts, src, begin, end, group_sizes); return;
    case CommType::kF16: reduce_op<kern::F16>(op, dsts, src, begin, end, group_sizes); return;
    case CommType::kI32: reduce_op<std::int32_t>(op, dsts, src, begin, end, group_sizes); return;
    case CommType::kI64: reduce_op<std::int64_t>(op, dsts, src, begin, end, group_sizes); return;
  }
}

void copy_to_all(std::span<void* const> dsts, const void* src, std::size_t bytes) {
  const auto at = [](const void* p, std::size_t off) { return static_cast<const std::byte*>(p) + off; };
  const auto to = [](void* p, std::size_t off) { return static_cast<std::byte*>(p) + off; };
  const auto misalign = reinterpret_cast<std::uintptr_t>(src) % 16;
  // Streamed stores measured faster here than cached ones from 1 MiB up, to any size.
  bool stream = bytes >= (std::size_t{1} << 20);
  for (void* d : dsts) stream = stream && reinterpret_cast<std::uintptr_t>(d) % 16 == misalign;
  if (!stream) {
    for (void* d : dsts) std::memcpy(d, src, bytes);
    return;
  }
  // Up to the first 16-byte boundary, then whole 16-byte lines streamed in chunks that stay in
  // L2 while every destination takes them (the source is read once), then the rest.
  constexpr std::size_t kChunk = 64 << 10;
  const std::size_t head = misalign == 0 ? 0 : 16 - misalign;
  const std::size_t body = (bytes - head) / 16 * 16;
  for (void* d : dsts) std::memcpy(d, src, head);
  for (std::size_t off = head; off < head + body; off += kChunk) {
    const std::size_t len = std::min(kChunk, head + body - off);
    for (void* d : dsts) store_block(to(d, off), at(src, off), len, true);
  }
  for (void* d : dsts) std::memcpy(to(d, head + body), at(src, head + body), bytes - head - body);
  _mm_sfence();
}

void copy_bulk(void* dst, const void* src, std::size_t bytes) {
  void* const one[] = {dst};
  copy_to_all(one, src, bytes);
}

Status enqueue_step(Stream& stream, std::function<void()> post, std::shared_ptr<HostSignal> done) {
  STRATA_RETURN_IF_ERROR(stream.launch_host_func(std::move(post)));
  return stream.wait_host(std::move(done));
}

Status rank_failed(int rank, const Status& why) {
  return Status(why.code() == StatusCode::kOk ? StatusCode::kUnavailable : why.code(),
                "rank " + std::to_string(rank) + " failed: " + why.message());
}

}  // namespace comm
}  // namespace strata
