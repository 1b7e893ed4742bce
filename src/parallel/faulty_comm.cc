#include "parallel/faulty_comm.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

namespace strata::parallel {

struct FaultyComm::State {
  std::mutex mu;
  std::condition_variable cv;
  std::uint64_t ops = 0;
  std::map<int, std::pair<std::chrono::milliseconds, std::uint64_t>> delays;  // kind (-1: all) -> delay, min bytes
  std::uint64_t fail_at = 0;
  Status fail_why;
  std::uint64_t gone_after = 0;
  // The timer: signals to set at their deadlines.
  std::multimap<std::chrono::steady_clock::time_point, std::shared_ptr<HostSignal>> timers;
  bool stop = false;
  std::thread timer;

  void run_timer() {
    std::unique_lock lk(mu);
    for (;;) {
      if (timers.empty()) {
        if (stop) return;
        cv.wait(lk);
        continue;
      }
      const auto due = timers.begin()->first;
      if (std::chrono::steady_clock::now() < due) {
        cv.wait_until(lk, due);
        continue;
      }
      auto sig = timers.begin()->second;
      timers.erase(timers.begin());
      lk.unlock();
      sig->set();
      lk.lock();
    }
  }
};

FaultyComm::FaultyComm(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)), state_(std::make_unique<State>()) {
  state_->timer = std::thread([s = state_.get()] { s->run_timer(); });
}

FaultyComm::~FaultyComm() {
  {
    std::lock_guard lk(state_->mu);
    state_->stop = true;
  }
  state_->cv.notify_all();
  state_->timer.join();
}

void FaultyComm::delay(std::optional<CommKind> kind, std::chrono::milliseconds d, std::uint64_t min_bytes) {
  std::lock_guard lk(state_->mu);
  state_->delays[kind ? static_cast<int>(*kind) : -1] = {d, min_bytes};
}

void FaultyComm::fail_nth(std::uint64_t nth, Status why) {
  std::lock_guard lk(state_->mu);
  state_->fail_at = nth;
  state_->fail_why = std::move(why);
}

void FaultyComm::disappear_after(std::uint64_t nth) {
  std::lock_guard lk(state_->mu);
  state_->gone_after = nth;
}

Result<FaultyComm::Fate> FaultyComm::before(CommKind kind, Stream* stream, std::uint64_t bytes) {
  std::chrono::milliseconds d{0};
  {
    std::lock_guard lk(state_->mu);
    const std::uint64_t n = ++state_->ops;
    if (state_->gone_after != 0 && n > state_->gone_after) return Fate::kDrop;
    if (n == state_->fail_at) return Fate::kFail;
    auto it = state_->delays.find(static_cast<int>(kind));
    if (it == state_->delays.end()) it = state_->delays.find(-1);
    if (it != state_->delays.end() && bytes >= it->second.second) d = it->second.first;
  }
  if (d.count() > 0) {
    auto sig = HostSignal::make();
    if (stream != nullptr) {
      // The timer starts when the stream reaches the operation, so the delay adds to its start.
      STRATA_RETURN_IF_ERROR(stream->launch_host_func([s = state_.get(), sig, d] {
        {
          std::lock_guard lk(s->mu);
          s->timers.emplace(std::chrono::steady_clock::now() + d, sig);
        }
        s->cv.notify_all();
      }));
      STRATA_RETURN_IF_ERROR(stream->wait_host(sig));
    } else {
      std::this_thread::sleep_for(d);  // a blocking operation: its caller waits anyway
    }
  }
  return Fate::kRun;
}

Status FaultyComm::fail(Stream* stream) {
  Status why;
  {
    std::lock_guard lk(state_->mu);
    why = state_->fail_why;
  }
  inner_->abort(why);
  if (stream == nullptr) return why;
  auto sig = HostSignal::make();
  sig->set(why);
  return stream->wait_host(sig);
}

#define STRATA_FAULTY_FORWARD(kind, stream_ptr, bytes, call)               \
  do {                                                                     \
    STRATA_ASSIGN_OR_RETURN(Fate fate, before(kind, stream_ptr, bytes));   \
    if (fate == Fate::kDrop) return Status::OK();                   \
    if (fate == Fate::kFail) return fail(stream_ptr);               \
    return call;                                                    \
  } while (0)

Status FaultyComm::all_reduce(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) {
  STRATA_FAULTY_FORWARD(CommKind::kAllReduce, &stream, send.bytes(), inner_->all_reduce(send, recv, op, stream));
}
Status FaultyComm::reduce_scatter(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) {
  STRATA_FAULTY_FORWARD(CommKind::kReduceScatter, &stream, send.bytes(), inner_->reduce_scatter(send, recv, op, stream));
}
Status FaultyComm::all_gather(const CommBuffer& send, const CommBuffer& recv, Stream& stream) {
  STRATA_FAULTY_FORWARD(CommKind::kAllGather, &stream, recv.bytes(), inner_->all_gather(send, recv, stream));
}
Status FaultyComm::broadcast(const CommBuffer& buffer, int root, Stream& stream) {
  STRATA_FAULTY_FORWARD(CommKind::kBroadcast, &stream, buffer.bytes(), inner_->broadcast(buffer, root, stream));
}
Status FaultyComm::send(const CommBuffer& buffer, int peer, int tag, Stream& stream) {
  STRATA_FAULTY_FORWARD(CommKind::kSend, &stream, buffer.bytes(), inner_->send(buffer, peer, tag, stream));
}
Status FaultyComm::recv(const CommBuffer& buffer, int peer, int tag, Stream& stream) {
  STRATA_FAULTY_FORWARD(CommKind::kRecv, &stream, buffer.bytes(), inner_->recv(buffer, peer, tag, stream));
}
Status FaultyComm::barrier() { STRATA_FAULTY_FORWARD(CommKind::kBarrier, nullptr, 0, inner_->barrier()); }
Status FaultyComm::all_reduce_host(std::span<double> values, ReduceOp op) {
  STRATA_FAULTY_FORWARD(CommKind::kAllReduce, nullptr, values.size_bytes(), inner_->all_reduce_host(values, op));
}

#undef STRATA_FAULTY_FORWARD

Result<std::unique_ptr<Communicator>> FaultyComm::split(int color, int key) { return inner_->split(color, key); }

}  // namespace strata::parallel
