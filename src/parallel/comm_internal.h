// src/parallel/comm_internal.h — what the communicator backends share: the description of
// one operation and its fingerprint, argument checks, the ring-volume accounting behind
// CommStats, the fixed-order reduction kernel, and how an operation joins a stream.
//
// Thread-safety: CommCounters is safe from any thread; the rest are pure functions.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <span>
#include <optional>
#include <string>

#include "strata/communicator.h"

namespace strata::comm {

using Clock = std::chrono::steady_clock;

// What a rank asks of its group at one step: the fingerprint compared across ranks.
struct Fingerprint {
  CommKind kind = CommKind::kBarrier;
  std::uint64_t seq = 0;     // this communicator's collective number on this rank
  CommType type = CommType::kF32;
  std::uint64_t count = 0;   // elements of the send buffer (of the buffer for broadcast)
  ReduceOp op = ReduceOp::kSum;
  int root = -1;
  std::uint64_t group = 0;   // the group's identity (same on every member)
  bool split = false;        // a split (kind kBarrier)
  bool host = false;         // all_reduce_host: host values, not a device buffer
  bool operator==(const Fingerprint&) const = default;
};

// "all_reduce #7 (fp32, 4096 elements, sum)".
std::string describe(const Fingerprint& f);

// Checks a collective's buffers against each other, the group size and this rank (the in-place
// forms of strata/communicator.h; any other overlap is refused); names the operation.
Status check_collective(CommKind kind, const CommBuffer& send, const CommBuffer& recv, int size, int rank);
// Whether `inner` is exactly part `rank` of `outer` (the in-place reduce-scatter and all-gather).
bool is_rank_part(const CommBuffer& inner, const CommBuffer& outer, int rank);
Status check_buffer(const CommBuffer& b, std::string_view what);

// Ring-algorithm bytes for `kind` with `payload` bytes on `n` ranks (see strata/communicator.h).
struct RingVolume {
  std::uint64_t sent = 0;
  std::uint64_t received = 0;
};
RingVolume ring_volume(CommKind kind, std::uint64_t payload, int n, bool is_root);

// The payload bytes of a collective as CommStats counts them: the all-gather's output, the
// host values of all_reduce_host, nothing for a barrier, else the send buffer.
std::uint64_t payload_bytes(const Fingerprint& f, const CommBuffer& send, const CommBuffer& recv, std::size_t host_bytes);

class CommCounters {
 public:
  void add(CommKind kind, std::uint64_t payload, RingVolume v, double seconds);
  CommStats snapshot() const;

 private:
  mutable std::mutex mu_;
  CommStats stats_;
};

// d[i] = op over k of src[k][i] for i in [begin, end), written to every d of `dsts`, in the
// fixed order: the sources of each node group (consecutive runs of `group_sizes`) in order in
// the arithmetic type (fp32 for the float types, the integer type itself, wrapping), rounded to
// the element type, then the groups' results in order. `group_sizes` empty = one group. A
// destination may alias a source element for element.
void reduce_fixed_order(CommType type, ReduceOp op, std::span<void* const> dsts, std::span<const void* const> src,
                        std::size_t begin, std::size_t end, std::span<const int> group_sizes = {});

// Whether a collective enqueued now on a stream follows the previous one noted, with nothing
// enqueued on that stream in between (strata/device.h's Stream::position): it then depends on
// the stream's work only through that collective. Used by one enqueueing thread at a time.
class StreamChain {
 public:
  bool follows(const Stream& stream) const {
    const auto at = stream.position();
    return at.has_value() && last_.has_value() && *at == *last_;
  }
  // After enqueueing a collective (its last step) on `stream`.
  void note(const Stream& stream) { last_ = stream.position(); }

 private:
  std::optional<Stream::Position> last_;
};

// memcpy, with non-temporal stores for a large copy (into a peer's buffer, not read again soon
// by this thread): no read for ownership of the lines it overwrites.
void copy_bulk(void* dst, const void* src, std::size_t bytes);
// copy_bulk into every destination, reading the source once.
void copy_to_all(std::span<void* const> dsts, const void* src, std::size_t bytes);

// Enqueues on `stream`: `post` (on the device's host-callback thread, when the stream reaches
// it; it must only hand the operation to a progress engine, never wait), then a wait for
// `done`. REQUIRES: post does not block.
Status enqueue_step(Stream& stream, std::function<void()> post, std::shared_ptr<HostSignal> done);

// A Status naming the rank and group that failed, for abort().
Status rank_failed(int rank, const Status& why);

}  // namespace strata::comm
