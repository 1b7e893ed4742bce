// HostDevice — an accelerator emulated on the CPU, honest enough that the layers above it
// (tier manager, ZeRO, pipelines) behave as they will on a GPU.
//
// * Memory: one region of `capacity` bytes is reserved at creation (mmap, MAP_NORESERVE: pages
//   are committed when first touched and then stay, like device memory) and carved by a
//   best-fit RegionAllocator with 256-byte alignment. Allocation beyond the capacity fails
//   with out-of-memory even when the host has RAM to spare; freed blocks coalesce and are
//   reused. A capacity larger than the machine's RAM is refused at creation.
// * Engines: five threads, each a FIFO like a hardware queue — host-to-device copies,
//   device-to-host copies, device-to-device copies, compute (oneDNN GEMM and OpenMP loops),
//   and host callbacks. A stream's operations go to their engine one at a time, in order:
//   operation i+1 of a stream is dispatched only after operation i completed, so different
//   streams overlap (a copy on one, compute on another) exactly where a GPU would let them.
// * Events are generation counters advanced when a stream reaches the record; a stream whose
//   head is a wait parks on the event until the captured generation is reached.
// * Throttle: with copy_bandwidth B, a copy of N bytes on the host<->device engines takes at
//   least N / B seconds (the copy, then a sleep until its deadline); each direction has its own
//   link, as PCIe is full duplex. Device-to-device copies are not throttled (on-device memory
//   is an order of magnitude faster than the link).
// * Pinned memory: page-aligned mmap, mlock best effort (one warning and a counter when the
//   memlock limit refuses).
//
// The per-element math is kernels/elementwise_math.h and kernels/adam_math.h, the functions
// the CUDA kernels call.
#include <omp.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "device/backends.h"
#include "device/region_allocator.h"
#include "kernels/adam_math.h"
#include "kernels/elementwise_math.h"
#include "strata/log.h"
#include "strata/units.h"

namespace strata::device {
namespace {

using Clock = std::chrono::steady_clock;

enum EngineId : int { kEngineH2D = 0, kEngineD2H, kEngineD2D, kEngineCompute, kEngineHost, kEngineCount };

struct StreamState;

struct EventState {
  std::uint64_t recorded = 0;   // generation of the latest record enqueued
  std::uint64_t completed = 0;  // highest generation whose record the stream has reached
  Status error;                 // the failure the latest completed record captured
  std::vector<StreamState*> waiters;  // streams whose head is a wait on this event
  int host_waiters = 0;         // threads in Event::synchronize()
};

struct Op {
  enum class Kind { kWork, kRecord, kWait, kSignal };
  Kind kind = Kind::kWork;
  int engine = kEngineCompute;
  std::function<Status()> work;
  std::shared_ptr<EventState> event;
  std::uint64_t gen = 0;
  std::shared_ptr<HostSignal> signal;  // kSignal: the stream parks until it is set
};

struct StreamState {
  std::string name;
  std::uint64_t id = 0;      // unique among the process's streams (Stream::position)
  std::deque<Op> ops;
  bool dispatched = false;   // the head is on an engine
  bool parked = false;       // the head is a wait registered with its event
  std::uint64_t enqueued = 0;
  std::uint64_t completed = 0;
  Status error;              // first failure since the last synchronize
  // The lowest target of the threads in Stream::synchronize(); completions below it wake no
  // one (a collective's progress thread completes steps one at a time, and waking the thread
  // that waits for the last of many on every step would take its core for nothing).
  std::uint64_t wake_at = UINT64_MAX;
  int host_waiters = 0;
};

// The one place where oneDNN's exceptions become a Status.
Status dnnl_status(const dnnl::error& e, std::string_view op) {
  return internal_error("oneDNN " + std::string(op) + " failed: " + e.what() + " (status " +
                        std::to_string(static_cast<int>(e.status)) + ")");
}

dnnl::memory::data_type dnnl_type(DType t) {
  switch (t) {
    case DType::kF32: return dnnl::memory::data_type::f32;
    case DType::kBF16: return dnnl::memory::data_type::bf16;
    case DType::kF16: return dnnl::memory::data_type::f16;
  }
  return dnnl::memory::data_type::undef;
}

// Calls fn with a value of the storage type of `t`.
template <typename F>
void with_type(DType t, F&& fn) {
  switch (t) {
    case DType::kF32: fn(float{}); return;
    case DType::kBF16: fn(kern::Bf16{}); return;
    case DType::kF16: fn(kern::F16{}); return;
  }
}

// Element-wise loops below this many elements run on the compute thread alone: they take tens
// of microseconds, less than waking an OpenMP team costs, and every parallel region leaves
// the team's workers spinning for a while afterwards, taking cores from the copy engines and
// the caller (OMP_WAIT_POLICY=passive avoids that for large loops too).
constexpr std::size_t kParallelMin = std::size_t{1} << 18;

struct GemmKey {
  DType in, out;
  bool ta, tb;
  std::int64_t m, n, k, batch, lda, ldb, ldc, sa, sb, sc;
  float alpha, beta;
  bool operator==(const GemmKey&) const = default;
};
struct GemmKeyHash {
  std::size_t operator()(const GemmKey& k) const {
    std::size_t h = 1469598103934665603ULL;
    auto mix = [&h](std::uint64_t v) { h = (h ^ v) * 1099511628211ULL; };
    mix(static_cast<std::uint64_t>(k.in) | static_cast<std::uint64_t>(k.out) << 8 |
        static_cast<std::uint64_t>(k.ta) << 16 | static_cast<std::uint64_t>(k.tb) << 17);
    for (std::int64_t v : {k.m, k.n, k.k, k.batch, k.lda, k.ldb, k.ldc, k.sa, k.sb, k.sc}) mix(static_cast<std::uint64_t>(v));
    std::uint32_t a, b;
    std::memcpy(&a, &k.alpha, 4);
    std::memcpy(&b, &k.beta, 4);
    mix(a);
    mix(b);
    return h;
  }
};

// A cached matmul: either a oneDNN primitive on the operands as given, or (when oneDNN has no
// implementation for the dtype, e.g. fp16 on CPUs without AVX512-FP16) one on fp32 copies.
struct GemmPlan {
  bool emulated = false;
  dnnl::matmul prim;
  dnnl::memory::desc a_md, b_md, c_md;
  dnnl::memory a, b, c;  // re-pointed at each call's operands (cheaper than new memory objects)
};

class HostDevice;

class HostStream final : public Stream {
 public:
  HostStream(HostDevice& dev, std::string name);
  ~HostStream() override;
  Status record(Event& event) override;
  Status wait(const Event& event) override;
  Status synchronize() override;
  Result<bool> query() override;
  Status launch_host_func(std::function<void()> fn) override;
  Status wait_host(std::shared_ptr<HostSignal> signal) override;
  std::optional<Position> position() const override;
  StreamState& state() { return *state_; }

 private:
  HostDevice& dev_;
  std::shared_ptr<StreamState> state_;
};

class HostEvent final : public Event {
 public:
  explicit HostEvent(HostDevice& dev);
  Result<bool> query() override;
  Status synchronize() override;
  const std::shared_ptr<EventState>& state() const { return state_; }

 private:
  HostDevice& dev_;
  std::shared_ptr<EventState> state_ = std::make_shared<EventState>();
};

class HostDevice final : public Device {
 public:
  HostDevice(const DeviceOptions& options, std::byte* region);
  ~HostDevice() override;

  const DeviceInfo& info() const override { return info_; }
  DeviceStats stats() const override;

  Result<std::unique_ptr<Stream>> create_stream(std::string_view name) override;
  Result<std::unique_ptr<Event>> create_event() override;
  Stream& default_stream() override { return *default_stream_; }
  Status synchronize() override;

  // --- scheduler, for HostStream / HostEvent ---
  void register_stream(StreamState* s);
  void unregister_stream(StreamState* s);
  Status enqueue_work(StreamState& s, int engine, std::function<Status()> work);
  Status enqueue_record(StreamState& s, const std::shared_ptr<EventState>& ev);
  Status enqueue_wait(StreamState& s, const std::shared_ptr<EventState>& ev);
  Status enqueue_signal_wait(StreamState& s, std::shared_ptr<HostSignal> signal);
  Status sync_stream(StreamState& s);
  bool stream_done(StreamState& s);
  std::uint64_t stream_enqueued(const StreamState& s);
  Status sync_event(EventState& ev);
  Result<bool> event_done(EventState& ev);

 protected:
  Result<DeviceBuffer> allocate_impl(std::size_t bytes) override;
  Result<PinnedBuffer> allocate_pinned_impl(std::size_t bytes) override;
  void free_impl(void* address, std::size_t bytes) noexcept override;
  void free_pinned_impl(std::byte* data, std::size_t bytes, bool locked) noexcept override;
  bool owns_range(const void* address, std::size_t bytes) const override;

  Status copy_to_device_impl(DeviceRange dst, std::span<const std::byte> src, Stream& stream) override;
  Status copy_to_host_impl(std::span<std::byte> dst, DeviceRange src, Stream& stream) override;
  Status copy_on_device_impl(DeviceRange dst, DeviceRange src, Stream& stream) override;
  Status gemm_impl(const GemmArgs& args, Stream& stream) override;
  Status fill_impl(DeviceView x, float value, Stream& stream) override;
  Status cast_impl(DeviceView dst, DeviceView src, Stream& stream) override;
  Status scale_impl(DeviceView x, float alpha, Stream& stream) override;
  Status axpy_impl(DeviceView y, float alpha, DeviceView x, Stream& stream) override;
  Status check_finite_impl(DeviceView x, DeviceView flag, Stream& stream) override;
  Status sum_squares_impl(DeviceView x, DeviceView out, Stream& stream) override;
  Status adam_step_impl(const AdamTensors& t, const AdamHyper& h, const AdamStep& at, Stream& stream) override;

 private:
  void advance(StreamState* first);  // REQUIRES: mu_ held
  // Wakes the threads in a synchronize() whose wait may be over. REQUIRES: mu_ held.
  void wake(const StreamState& s) {
    if (device_waiters_ > 0 || s.completed >= s.wake_at) done_cv_.notify_all();
  }
  // The head of `s` waits for a host signal: pops it when set, else parks `s` until it is.
  // Returns true when the head was popped. REQUIRES: mu_ held.
  bool pass_signal(StreamState* s);
  void engine_loop(int id);
  Status copy_work(int engine, void* dst, const void* src, std::size_t n);
  Status enqueue_compute(Stream& stream, std::function<Status()> work) {
    return enqueue_work(static_cast<HostStream&>(stream).state(), kEngineCompute, std::move(work));
  }
  // Compute-engine-only state and helpers.
  Result<GemmPlan*> gemm_plan(const GemmArgs& g);
  Status run_gemm(const GemmArgs& g);
  float* scratch(int slot, std::size_t floats);

  DeviceInfo info_;
  const std::uint64_t bandwidth_;
  const int compute_threads_;

  // Device memory.
  std::byte* const region_;
  const std::size_t region_bytes_;
  mutable std::mutex alloc_mu_;
  RegionAllocator alloc_;
  std::uint64_t alloc_failures_ = 0;
  std::uint64_t pinned_bytes_ = 0;
  std::uint64_t pinned_allocations_ = 0;
  std::uint64_t mlock_failures_ = 0;

  // Counters written by the engines.
  std::atomic<std::uint64_t> bytes_h2d_{0}, bytes_d2h_{0}, bytes_d2d_{0}, gemm_flops_{0}, emulated_gemms_{0};

  // Scheduler.
  std::mutex mu_;
  std::condition_variable done_cv_;
  int device_waiters_ = 0;  // threads in Device::synchronize()
  struct EngineQueue {
    std::deque<StreamState*> queue;
    std::condition_variable cv;
    std::thread thread;
  };
  EngineQueue engines_[kEngineCount];
  bool stop_ = false;
  std::vector<StreamState*> streams_;
  std::uint64_t stream_counter_ = 0;

  // Compute engine (touched only by its thread).
  dnnl::engine dnnl_engine_;
  dnnl::stream dnnl_stream_;
  std::unordered_map<GemmKey, GemmPlan, GemmKeyHash> gemm_cache_;
  std::vector<float> scratch_[3];

  std::unique_ptr<HostStream> default_stream_;
};

// ---------------------------------------------------------------------------------------------
// Streams and events

HostStream::HostStream(HostDevice& dev, std::string name)
    : Stream(dev, name), dev_(dev), state_(std::make_shared<StreamState>()) {
  static std::atomic<std::uint64_t> next_id{1};
  state_->name = std::move(name);
  state_->id = next_id.fetch_add(1);
  dev_.register_stream(state_.get());
}

HostStream::~HostStream() {
  Status st = dev_.sync_stream(*state_);
  if (!st.ok()) {
    STRATA_LOG(kError) << "stream '" << name() << "' destroyed with a failed operation: " << st;
  }
  dev_.unregister_stream(state_.get());
}

Status HostStream::record(Event& event) {
  if (&event.device() != &device()) {
    return invalid_argument("record: the event belongs to another device; events work across streams of one device");
  }
  return dev_.enqueue_record(*state_, static_cast<HostEvent&>(event).state());
}

Status HostStream::wait(const Event& event) {
  if (&event.device() != &device()) {
    return invalid_argument("wait: the event belongs to another device; events work across streams of one device");
  }
  return dev_.enqueue_wait(*state_, static_cast<const HostEvent&>(event).state());
}

Status HostStream::synchronize() { return dev_.sync_stream(*state_); }

Result<bool> HostStream::query() { return dev_.stream_done(*state_); }

Status HostStream::launch_host_func(std::function<void()> fn) {
  if (!fn) return invalid_argument("launch host func: the function is empty");
  return dev_.enqueue_work(*state_, kEngineHost, [fn = std::move(fn)]() -> Status {
    fn();
    return Status::OK();
  });
}

Status HostStream::wait_host(std::shared_ptr<HostSignal> signal) {
  if (signal == nullptr) return invalid_argument("wait_host: the signal is null");
  return dev_.enqueue_signal_wait(*state_, std::move(signal));
}

std::optional<Stream::Position> HostStream::position() const { return Position{state_->id, dev_.stream_enqueued(*state_)}; }

HostEvent::HostEvent(HostDevice& dev) : Event(dev), dev_(dev) {}
Result<bool> HostEvent::query() { return dev_.event_done(*state_); }
Status HostEvent::synchronize() { return dev_.sync_event(*state_); }

// ---------------------------------------------------------------------------------------------
// Construction

HostDevice::HostDevice(const DeviceOptions& options, std::byte* region)
    : bandwidth_(options.copy_bandwidth),
      compute_threads_(options.compute_threads > 0 ? options.compute_threads : omp_get_max_threads()),
      region_(region),
      region_bytes_(options.capacity),
      alloc_(options.capacity, kDeviceAlignment),
      dnnl_engine_(dnnl::engine::kind::cpu, 0),
      dnnl_stream_(dnnl_engine_) {
  info_.backend = "host";
  info_.name = "host (emulated accelerator, " + std::to_string(compute_threads_) + " compute threads)";
  info_.capacity = alloc_.capacity();
  info_.copy_bandwidth = bandwidth_;
  info_.host_addressable = true;
  info_.notes = "device memory is a reserved host region with a hard capacity; copies run on engine threads" +
                std::string(bandwidth_ ? " throttled to " + format_bytes_human(static_cast<double>(bandwidth_)) + "/s per direction"
                                       : " at memcpy speed") +
                "; GEMM by oneDNN, element-wise by OpenMP";
  for (int i = 0; i < kEngineCount; ++i) engines_[i].thread = std::thread([this, i] { engine_loop(i); });
  default_stream_ = std::make_unique<HostStream>(*this, "default");
}

HostDevice::~HostDevice() {
  default_stream_.reset();
  {
    std::unique_lock lk(mu_);
    if (!streams_.empty()) {
      STRATA_LOG(kError) << "host device destroyed while " << streams_.size()
                         << " of its streams are alive; their pending work is abandoned";
    }
    stop_ = true;
    for (auto& e : engines_) e.cv.notify_all();
  }
  for (auto& e : engines_) e.thread.join();
  std::size_t live;
  {
    std::lock_guard lk(alloc_mu_);
    live = alloc_.live_blocks();
  }
  if (live != 0) {
    // A buffer that outlives its device would free into unmapped memory; keep the region
    // mapped so that the process does not crash, and say so.
    STRATA_LOG(kError) << "host device destroyed with " << live
                       << " live device buffers; destroy buffers before their device (the region is leaked)";
  } else {
    munmap(region_, region_bytes_);
  }
}

// ---------------------------------------------------------------------------------------------
// Memory

Result<DeviceBuffer> HostDevice::allocate_impl(std::size_t bytes) {
  std::lock_guard lk(alloc_mu_);
  std::optional<std::size_t> off = alloc_.allocate(bytes);
  if (!off) {
    ++alloc_failures_;
    return out_of_memory("device 'host' out of memory: requested " + std::to_string(bytes) + " B (" +
                         format_bytes_human(static_cast<double>(bytes)) + "), used " + std::to_string(alloc_.used()) +
                         " B of capacity " + std::to_string(alloc_.capacity()) + " B (" +
                         format_bytes_human(static_cast<double>(alloc_.capacity())) + "), largest free block " +
                         std::to_string(alloc_.largest_free()) +
                         " B; free device buffers or raise memory.device_budget");
  }
  return make_buffer(region_ + *off, bytes);
}

void HostDevice::free_impl(void* address, std::size_t) noexcept {
  std::lock_guard lk(alloc_mu_);
  const auto off = static_cast<std::size_t>(static_cast<std::byte*>(address) - region_);
  if (!alloc_.free(off)) {
    STRATA_LOG(kError) << "host device: free of an address it did not allocate (offset " << off << ")";
  }
}

bool HostDevice::owns_range(const void* address, std::size_t bytes) const {
  auto p = reinterpret_cast<std::uintptr_t>(address);
  auto base = reinterpret_cast<std::uintptr_t>(region_);
  if (p < base || p - base >= region_bytes_) return false;
  std::lock_guard lk(alloc_mu_);
  return alloc_.contains(p - base, bytes);
}

Result<PinnedBuffer> HostDevice::allocate_pinned_impl(std::size_t bytes) {
  const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t mapped = (bytes + page - 1) / page * page;
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return STRATA_ERRNO(errno, "mmap of pinned host memory", format_bytes_human(static_cast<double>(bytes)));
  bool locked = true;
  if (mlock(p, mapped) != 0) {
    const int err = errno;
    locked = false;
    rlimit lim{};
    getrlimit(RLIMIT_MEMLOCK, &lim);
    STRATA_LOG_ONCE(kWarn, "host-device-mlock")
        << "pinned host memory: mlock of " << format_bytes_human(static_cast<double>(mapped)) << " refused ("
        << std::strerror(err) << "; RLIMIT_MEMLOCK soft limit "
        << (lim.rlim_cur == RLIM_INFINITY ? std::string("unlimited") : format_bytes_human(static_cast<double>(lim.rlim_cur)))
        << "); continuing with pageable memory, counted in the device statistics as mlock_failures. "
           "Raise the limit (ulimit -l, /etc/security/limits.conf memlock) to page-lock it";
  }
  {
    std::lock_guard lk(alloc_mu_);
    pinned_bytes_ += bytes;
    ++pinned_allocations_;
    if (!locked) ++mlock_failures_;
  }
  return make_pinned(static_cast<std::byte*>(p), bytes, locked);
}

void HostDevice::free_pinned_impl(std::byte* data, std::size_t bytes, bool locked) noexcept {
  const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t mapped = (bytes + page - 1) / page * page;
  if (locked) munlock(data, mapped);
  munmap(data, mapped);
  std::lock_guard lk(alloc_mu_);
  pinned_bytes_ -= bytes;
  --pinned_allocations_;
}

DeviceStats HostDevice::stats() const {
  DeviceStats s;
  {
    std::lock_guard lk(alloc_mu_);
    s.capacity = alloc_.capacity();
    s.used = alloc_.used();
    s.peak_used = alloc_.peak_used();
    s.reserved = alloc_.capacity();
    s.live_allocations = alloc_.live_blocks();
    s.allocation_failures = alloc_failures_;
    s.pinned_bytes = pinned_bytes_;
    s.pinned_allocations = pinned_allocations_;
    s.mlock_failures = mlock_failures_;
  }
  s.bytes_to_device = bytes_h2d_.load();
  s.bytes_to_host = bytes_d2h_.load();
  s.bytes_on_device = bytes_d2d_.load();
  s.gemm_flops = gemm_flops_.load();
  s.emulated_gemms = emulated_gemms_.load();
  return s;
}

// ---------------------------------------------------------------------------------------------
// Scheduler

Result<std::unique_ptr<Stream>> HostDevice::create_stream(std::string_view name) {
  std::string n;
  {
    std::lock_guard lk(mu_);
    n = name.empty() ? "stream-" + std::to_string(++stream_counter_) : std::string(name);
  }
  return std::unique_ptr<Stream>(new HostStream(*this, std::move(n)));
}

Result<std::unique_ptr<Event>> HostDevice::create_event() { return std::unique_ptr<Event>(new HostEvent(*this)); }

void HostDevice::register_stream(StreamState* s) {
  std::lock_guard lk(mu_);
  streams_.push_back(s);
}

void HostDevice::unregister_stream(StreamState* s) {
  std::lock_guard lk(mu_);
  streams_.erase(std::remove(streams_.begin(), streams_.end(), s), streams_.end());
}

void HostDevice::advance(StreamState* first) {
  std::vector<StreamState*> todo{first};
  while (!todo.empty()) {
    StreamState* s = todo.back();
    todo.pop_back();
    bool progressed = false;
    while (!s->dispatched && !s->parked && !s->ops.empty()) {
      Op& op = s->ops.front();
      if (op.kind == Op::Kind::kRecord) {
        EventState& ev = *op.event;
        if (op.gen > ev.completed) {
          ev.completed = op.gen;
          ev.error = s->error;
        }
        if (ev.host_waiters > 0) done_cv_.notify_all();
        for (StreamState* w : ev.waiters) {
          w->parked = false;
          todo.push_back(w);
        }
        ev.waiters.clear();
        s->ops.pop_front();
        ++s->completed;
        progressed = true;
        continue;
      }
      if (op.kind == Op::Kind::kWait) {
        if (op.event->completed >= op.gen) {
          s->ops.pop_front();
          ++s->completed;
          progressed = true;
          continue;
        }
        s->parked = true;
        op.event->waiters.push_back(s);
        break;
      }
      if (op.kind == Op::Kind::kSignal) {
        if (!pass_signal(s)) break;
        progressed = true;
        continue;
      }
      s->dispatched = true;
      engines_[op.engine].queue.push_back(s);
      engines_[op.engine].cv.notify_one();
      break;
    }
    if (progressed) wake(*s);
  }
}

Status HostDevice::enqueue_work(StreamState& s, int engine, std::function<Status()> work) {
  Op op;
  op.kind = Op::Kind::kWork;
  op.engine = engine;
  op.work = std::move(work);
  std::lock_guard lk(mu_);
  if (stop_) return failed_precondition("host device: enqueue after shutdown began");
  s.ops.push_back(std::move(op));
  ++s.enqueued;
  advance(&s);
  return Status::OK();
}

Status HostDevice::enqueue_record(StreamState& s, const std::shared_ptr<EventState>& ev) {
  std::lock_guard lk(mu_);
  Op op;
  op.kind = Op::Kind::kRecord;
  op.event = ev;
  op.gen = ++ev->recorded;
  s.ops.push_back(std::move(op));
  ++s.enqueued;
  advance(&s);
  return Status::OK();
}

Status HostDevice::enqueue_wait(StreamState& s, const std::shared_ptr<EventState>& ev) {
  std::lock_guard lk(mu_);
  if (ev->recorded == 0 || ev->completed >= ev->recorded) return Status::OK();  // nothing to wait for
  Op op;
  op.kind = Op::Kind::kWait;
  op.event = ev;
  op.gen = ev->recorded;
  s.ops.push_back(std::move(op));
  ++s.enqueued;
  advance(&s);
  return Status::OK();
}

Status HostDevice::enqueue_signal_wait(StreamState& s, std::shared_ptr<HostSignal> signal) {
  std::lock_guard lk(mu_);
  if (stop_) return failed_precondition("host device: enqueue after shutdown began");
  Op op;
  op.kind = Op::Kind::kSignal;
  op.signal = std::move(signal);
  s.ops.push_back(std::move(op));
  ++s.enqueued;
  advance(&s);
  return Status::OK();
}

bool HostDevice::pass_signal(StreamState* s) {
  Op& op = s->ops.front();
  // The callback runs on the setter's thread without the signal's lock; the stream stays alive
  // until this op completes (its destructor synchronizes).
  const bool parked = op.signal->notify_when_set([this, s] {
    std::lock_guard lk(mu_);
    s->parked = false;
    advance(s);
  });
  if (parked) {
    s->parked = true;
    return false;
  }
  Status st = op.signal->status();
  if (!st.ok() && s->error.ok()) s->error = st.with_context("stream '" + s->name + "'");
  s->ops.pop_front();
  ++s->completed;
  return true;
}

Status HostDevice::sync_stream(StreamState& s) {
  std::unique_lock lk(mu_);
  const std::uint64_t target = s.enqueued;
  if (s.completed < target) {
    ++s.host_waiters;
    s.wake_at = std::min(s.wake_at, target);
    done_cv_.wait(lk, [&] { return s.completed >= target; });
    if (--s.host_waiters == 0) s.wake_at = UINT64_MAX;
  }
  return std::exchange(s.error, Status::OK());
}

std::uint64_t HostDevice::stream_enqueued(const StreamState& s) {
  std::lock_guard lk(mu_);
  return s.enqueued;
}

bool HostDevice::stream_done(StreamState& s) {
  std::lock_guard lk(mu_);
  return s.completed >= s.enqueued;
}

Status HostDevice::sync_event(EventState& ev) {
  std::unique_lock lk(mu_);
  const std::uint64_t target = ev.recorded;
  if (ev.completed < target) {
    ++ev.host_waiters;
    done_cv_.wait(lk, [&] { return ev.completed >= target; });
    --ev.host_waiters;
  }
  return ev.error;
}

Result<bool> HostDevice::event_done(EventState& ev) {
  std::lock_guard lk(mu_);
  if (ev.completed < ev.recorded) return false;
  if (!ev.error.ok()) return ev.error;
  return true;
}

Status HostDevice::synchronize() {
  std::unique_lock lk(mu_);
  std::vector<std::pair<StreamState*, std::uint64_t>> targets;
  for (StreamState* s : streams_) targets.emplace_back(s, s->enqueued);
  ++device_waiters_;
  done_cv_.wait(lk, [&] {
    for (auto& [s, t] : targets) {
      if (s->completed < t) return false;
    }
    return true;
  });
  --device_waiters_;
  Status first;
  for (auto& [s, t] : targets) {
    Status e = std::exchange(s->error, Status::OK());
    if (first.ok() && !e.ok()) first = e;
  }
  return first;
}

void HostDevice::engine_loop(int id) {
  if (id == kEngineCompute) omp_set_num_threads(compute_threads_);
  EngineQueue& e = engines_[id];
  std::unique_lock lk(mu_);
  for (;;) {
    e.cv.wait(lk, [&] { return stop_ || !e.queue.empty(); });
    if (e.queue.empty()) return;  // stopping, and nothing left
    StreamState* s = e.queue.front();
    e.queue.pop_front();
    std::function<Status()> work = std::move(s->ops.front().work);
    lk.unlock();
    Status st;
    try {
      st = work();
    } catch (const dnnl::error& ex) {
      st = dnnl_status(ex, "execution");
    } catch (const std::exception& ex) {
      st = internal_error(std::string("host device: an operation threw: ") + ex.what());
    }
    work = nullptr;  // release what it captured before taking the lock
    lk.lock();
    if (!st.ok() && s->error.ok()) s->error = st.with_context("stream '" + s->name + "'");
    s->ops.pop_front();
    s->dispatched = false;
    ++s->completed;
    advance(s);
    wake(*s);
  }
}

// ---------------------------------------------------------------------------------------------
// Copies

Status HostDevice::copy_work(int engine, void* dst, const void* src, std::size_t n) {
  const auto t0 = Clock::now();
  std::memcpy(dst, src, n);
  if (bandwidth_ != 0 && engine != kEngineD2D) {
    const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(static_cast<double>(n) / static_cast<double>(bandwidth_)));
    std::this_thread::sleep_until(deadline);
  }
  (engine == kEngineH2D ? bytes_h2d_ : engine == kEngineD2H ? bytes_d2h_ : bytes_d2d_) += n;
  return Status::OK();
}

Status HostDevice::copy_to_device_impl(DeviceRange dst, std::span<const std::byte> src, Stream& stream) {
  return enqueue_work(static_cast<HostStream&>(stream).state(), kEngineH2D,
                      [this, d = dst.address(), s = src.data(), n = src.size()] { return copy_work(kEngineH2D, d, s, n); });
}

Status HostDevice::copy_to_host_impl(std::span<std::byte> dst, DeviceRange src, Stream& stream) {
  return enqueue_work(static_cast<HostStream&>(stream).state(), kEngineD2H,
                      [this, d = dst.data(), s = src.address(), n = dst.size()] { return copy_work(kEngineD2H, d, s, n); });
}

Status HostDevice::copy_on_device_impl(DeviceRange dst, DeviceRange src, Stream& stream) {
  if (dst.address() == src.address()) return enqueue_work(static_cast<HostStream&>(stream).state(), kEngineD2D, [] { return Status::OK(); });
  return enqueue_work(static_cast<HostStream&>(stream).state(), kEngineD2D,
                      [this, d = dst.address(), s = src.address(), n = dst.bytes()] { return copy_work(kEngineD2D, d, s, n); });
}

// ---------------------------------------------------------------------------------------------
// GEMM (oneDNN)

// Memory descriptor of a strided batch of row-major matrices, seen through op(): a transposed
// operand is the stored matrix with its two strides swapped, which oneDNN takes as is.
dnnl::memory::desc matrix_md(const MatrixView& m, bool trans, std::int64_t batch, DType dtype) {
  const std::int64_t r = trans ? m.cols : m.rows;
  const std::int64_t c = trans ? m.rows : m.cols;
  const std::int64_t rs = trans ? 1 : m.ld;
  const std::int64_t cs = trans ? m.ld : 1;
  if (batch == 1) return dnnl::memory::desc({r, c}, dnnl_type(dtype), {rs, cs});
  return dnnl::memory::desc({batch, r, c}, dnnl_type(dtype), {m.batch_stride, rs, cs});
}

float* HostDevice::scratch(int slot, std::size_t floats) {
  if (scratch_[slot].size() < floats) scratch_[slot].resize(floats);
  return scratch_[slot].data();
}

Result<GemmPlan*> HostDevice::gemm_plan(const GemmArgs& g) {
  const GemmKey key{g.a.data.dtype(), g.c.data.dtype(), g.trans_a, g.trans_b,
                    g.c.rows, g.c.cols, g.trans_a ? g.a.rows : g.a.cols, g.batch,
                    g.a.ld, g.b.ld, g.c.ld, g.a.batch_stride, g.b.batch_stride, g.c.batch_stride,
                    g.alpha, g.beta};
  auto it = gemm_cache_.find(key);
  if (it != gemm_cache_.end()) return &it->second;
  if (gemm_cache_.size() >= 1024) gemm_cache_.clear();  // bounds memory for programs with ever-new shapes

  dnnl::primitive_attr attr;
  if (g.alpha != 1.0f) attr.set_output_scales(0, {g.alpha});
  if (g.beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(g.beta);
    attr.set_post_ops(po);
  }
  GemmPlan plan;
  auto build = [&](DType in, DType out) {
    plan.a_md = matrix_md(g.a, g.trans_a, g.batch, in);
    plan.b_md = matrix_md(g.b, g.trans_b, g.batch, in);
    plan.c_md = matrix_md(g.c, false, g.batch, out);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(plan.a_md, plan.b_md, plan.c_md), attr, dnnl_engine_);
    plan.prim = dnnl::matmul(pd);
    plan.a = dnnl::memory(plan.a_md, dnnl_engine_, DNNL_MEMORY_NONE);
    plan.b = dnnl::memory(plan.b_md, dnnl_engine_, DNNL_MEMORY_NONE);
    plan.c = dnnl::memory(plan.c_md, dnnl_engine_, DNNL_MEMORY_NONE);
  };
  try {
    build(g.a.data.dtype(), g.c.data.dtype());
  } catch (const dnnl::error& e) {
    if (e.status != dnnl_unimplemented) return dnnl_status(e, "matmul creation");
    // No oneDNN kernel for this dtype on this CPU: multiply fp32 copies. The products are the
    // same (fp16/bf16 -> fp32 is exact and accumulation is fp32 either way); only speed differs.
    STRATA_LOG_ONCE(kInfo, "host-device-gemm-emulated")
        << "host device: oneDNN has no " << dtype_name(g.a.data.dtype()) << " matmul on this CPU; "
        << "such GEMMs run on fp32 copies of the operands (counted as emulated_gemms)";
    try {
      plan.emulated = true;
      build(DType::kF32, DType::kF32);
    } catch (const dnnl::error& e2) {
      return dnnl_status(e2, "matmul creation");
    }
  }
  return &gemm_cache_.emplace(key, std::move(plan)).first->second;
}

// Extent in elements of a resolved matrix batch.
std::size_t extent(const MatrixView& m, std::int64_t batch) {
  return static_cast<std::size_t>((batch - 1) * m.batch_stride + (m.rows - 1) * m.ld + m.cols);
}

// Converts `n` elements of `t` at `src` into fp32 at `dst`, or back.
void to_f32_buffer(const void* src, DType t, float* dst, std::size_t n) {
  with_type(t, [&](auto tag) {
    using T = decltype(tag);
    const T* s = static_cast<const T*>(src);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (std::size_t i = 0; i < n; ++i) dst[i] = kern::to_f32(s[i]);
  });
}
void from_f32_buffer(const float* src, void* dst, DType t, std::size_t n) {
  with_type(t, [&](auto tag) {
    using T = decltype(tag);
    T* d = static_cast<T*>(dst);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (std::size_t i = 0; i < n; ++i) d[i] = kern::from_f32<T>(src[i]);
  });
}

Status HostDevice::run_gemm(const GemmArgs& g) {
  STRATA_ASSIGN_OR_RETURN(GemmPlan * plan, gemm_plan(g));
  void* a = g.a.data.address();
  void* b = g.b.data.address();
  void* c = g.c.data.address();
  const std::size_t c_n = extent(g.c, g.batch);
  if (plan->emulated) {
    emulated_gemms_.fetch_add(1, std::memory_order_relaxed);
    const std::size_t a_n = extent(g.a, g.batch);
    const std::size_t b_n = extent(g.b, g.batch);
    float* fa = scratch(0, a_n);
    float* fb = scratch(1, b_n);
    to_f32_buffer(a, g.a.data.dtype(), fa, a_n);
    to_f32_buffer(b, g.b.data.dtype(), fb, b_n);
    a = fa;
    b = fb;
    if (g.c.data.dtype() != DType::kF32) {
      float* fc = scratch(2, c_n);
      if (g.beta != 0.0f || c_n != static_cast<std::size_t>(g.batch * g.c.rows * g.c.cols)) to_f32_buffer(c, g.c.data.dtype(), fc, c_n);  // gaps between strided C rows are written back too, so they must hold C
      c = fc;
    }
  }
  plan->a.set_data_handle(a);
  plan->b.set_data_handle(b);
  plan->c.set_data_handle(c);
  plan->prim.execute(dnnl_stream_, {{DNNL_ARG_SRC, plan->a}, {DNNL_ARG_WEIGHTS, plan->b}, {DNNL_ARG_DST, plan->c}});
  dnnl_stream_.wait();
  if (plan->emulated && c != g.c.data.address()) {
    // Only the matrix elements: the gaps between rows (ld > cols) and between the matrices
    // of a batch belong to the caller and may hold other data.
    const auto* fc = static_cast<const float*>(c);
    for (std::int64_t p = 0; p < g.batch; ++p) {
      for (std::int64_t r = 0; r < g.c.rows; ++r) {
        const std::int64_t off = p * g.c.batch_stride + r * g.c.ld;
        from_f32_buffer(fc + off, static_cast<std::byte*>(g.c.data.address()) + off * dtype_size(g.c.data.dtype()),
                        g.c.data.dtype(), static_cast<std::size_t>(g.c.cols));
      }
    }
  }
  return Status::OK();
}

Status HostDevice::gemm_impl(const GemmArgs& args, Stream& stream) {
  gemm_flops_.fetch_add(gemm_flops(args), std::memory_order_relaxed);
  return enqueue_compute(stream, [this, g = args] { return run_gemm(g); });
}

// ---------------------------------------------------------------------------------------------
// Element-wise primitives (OpenMP over kernels/elementwise_math.h)

Status HostDevice::fill_impl(DeviceView x, float value, Stream& stream) {
  return enqueue_compute(stream, [x, value] {
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      T* p = static_cast<T*>(x.address());
      const T v = kern::from_f32<T>(value);
      const std::size_t n = x.count();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
      for (std::size_t i = 0; i < n; ++i) p[i] = v;
    });
    return Status::OK();
  });
}

Status HostDevice::cast_impl(DeviceView dst, DeviceView src, Stream& stream) {
  return enqueue_compute(stream, [dst, src] {
    with_type(src.dtype(), [&](auto stag) {
      using S = decltype(stag);
      with_type(dst.dtype(), [&](auto dtag) {
        using D = decltype(dtag);
        const S* s = static_cast<const S*>(src.address());
        D* d = static_cast<D*>(dst.address());
        const std::size_t n = dst.count();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
        for (std::size_t i = 0; i < n; ++i) d[i] = kern::from_f32<D>(kern::to_f32(s[i]));
      });
    });
    return Status::OK();
  });
}

Status HostDevice::scale_impl(DeviceView x, float alpha, Stream& stream) {
  return enqueue_compute(stream, [x, alpha] {
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      T* p = static_cast<T*>(x.address());
      const std::size_t n = x.count();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
      for (std::size_t i = 0; i < n; ++i) p[i] = kern::from_f32<T>(kern::scale_elem(kern::to_f32(p[i]), alpha));
    });
    return Status::OK();
  });
}

Status HostDevice::axpy_impl(DeviceView y, float alpha, DeviceView x, Stream& stream) {
  return enqueue_compute(stream, [y, alpha, x] {
    with_type(y.dtype(), [&](auto ytag) {
      using Y = decltype(ytag);
      with_type(x.dtype(), [&](auto xtag) {
        using X = decltype(xtag);
        Y* yp = static_cast<Y*>(y.address());
        const X* xp = static_cast<const X*>(x.address());
        const std::size_t n = y.count();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
        for (std::size_t i = 0; i < n; ++i) {
          yp[i] = kern::from_f32<Y>(kern::axpy_elem(kern::to_f32(yp[i]), alpha, kern::to_f32(xp[i])));
        }
      });
    });
    return Status::OK();
  });
}

Status HostDevice::check_finite_impl(DeviceView x, DeviceView flag, Stream& stream) {
  return enqueue_compute(stream, [x, flag] {
    bool bad = false;
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T* p = static_cast<const T*>(x.address());
      const std::size_t n = x.count();
#pragma omp parallel for schedule(static) if (n >= kParallelMin) reduction(|| : bad)
      for (std::size_t i = 0; i < n; ++i) bad = bad || kern::is_nonfinite(kern::to_f32(p[i]));
    });
    if (bad) *static_cast<float*>(flag.address()) = 1.0f;
    return Status::OK();
  });
}

Status HostDevice::sum_squares_impl(DeviceView x, DeviceView out, Stream& stream) {
  return enqueue_compute(stream, [x, out] {
    double sum = 0.0;
    with_type(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T* p = static_cast<const T*>(x.address());
      const std::size_t n = x.count();
      // One partial sum in double per thread over its static share of the elements, added in
      // thread order, so the result depends only on the team size. (reduction(+) would add
      // the partials in the order the threads arrive, which with three or more threads
      // changes the rounding from run to run, and resumed runs compare bit for bit.) Each
      // term is the fp32 square the CUDA kernel adds.
      std::vector<double> partial(static_cast<std::size_t>(std::max(1, omp_get_max_threads())), 0.0);
#pragma omp parallel if (n >= kParallelMin)
      {
        double mine = 0.0;
#pragma omp for schedule(static)
        for (std::size_t i = 0; i < n; ++i) mine += static_cast<double>(kern::square_elem(kern::to_f32(p[i])));
        partial[static_cast<std::size_t>(omp_get_thread_num())] = mine;
      }
      for (double s : partial) sum += s;
    });
    float* o = static_cast<float*>(out.address());
    *o = static_cast<float>(static_cast<double>(*o) + sum);
    return Status::OK();
  });
}

// ---------------------------------------------------------------------------------------------
// Adam (kernels/adam_math.h)

Status HostDevice::adam_step_impl(const AdamTensors& t, const AdamHyper& h, const AdamStep& at, Stream& stream) {
  return enqueue_compute(stream, [t, k = adam::make_constants(adam_hyper(h), at.step, at.grad_scale)] {
    float* p = static_cast<float*>(t.params.address());
    float* m = static_cast<float*>(t.exp_avg.address());
    float* v = static_cast<float*>(t.exp_avg_sq.address());
    const std::size_t n = t.params.count();
    with_type(t.grads.dtype(), [&](auto gtag) {
      using G = decltype(gtag);
      const G* g = static_cast<const G*>(t.grads.address());
      if (t.params_out.empty()) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
        for (std::size_t i = 0; i < n; ++i) adam::update(k, kern::to_f32(g[i]), p[i], m[i], v[i]);
        return;
      }
      with_type(t.params_out.dtype(), [&](auto otag) {
        using O = decltype(otag);
        O* o = static_cast<O*>(t.params_out.address());
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
        for (std::size_t i = 0; i < n; ++i) {
          adam::update(k, kern::to_f32(g[i]), p[i], m[i], v[i]);
          o[i] = kern::from_f32<O>(p[i]);
        }
      });
    });
    return Status::OK();
  });
}

}  // namespace

Result<std::unique_ptr<Device>> make_host_device(const DeviceOptions& options) {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) {
    const std::uint64_t ram = static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page);
    if (options.capacity > ram) {
      return invalid_argument("device 'host': capacity " + format_bytes_human(static_cast<double>(options.capacity)) +
                              " exceeds this machine's RAM (" + format_bytes_human(static_cast<double>(ram)) +
                              "); the emulated device memory lives in RAM, so lower memory.device_budget");
    }
  }
  if (options.compute_threads < 0) {
    return invalid_argument("device 'host': compute_threads is " + std::to_string(options.compute_threads) +
                            "; use 0 for OpenMP's default or a positive count");
  }
  void* p = mmap(nullptr, options.capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return STRATA_ERRNO(errno, "mmap of the emulated device memory",
                        format_bytes_human(static_cast<double>(options.capacity)));
  }
  try {
    return std::unique_ptr<Device>(new HostDevice(options, static_cast<std::byte*>(p)));
  } catch (const dnnl::error& e) {
    munmap(p, options.capacity);
    return dnnl_status(e, "engine creation");
  } catch (const std::system_error& e) {
    munmap(p, options.capacity);
    return internal_error(std::string("host device: starting its engine threads failed: ") + e.what());
  }
}

}  // namespace strata::device
