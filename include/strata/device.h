// strata/device.h — the accelerator seam: device memory with a hard capacity, pinned host
// memory, streams, events, asynchronous copies and the compute primitives the model and the
// optimizer need (GEMM, casts, scale, axpy, fill, inf/nan check, sum of squares, Adam step).
//
// Backends, chosen by name through create_device():
//   "host"  HostDevice — an accelerator emulated on the CPU, always built. Its memory is a
//           separate pool with a hard capacity; copies run on copy-engine threads (one per
//           direction) in stream order and can be throttled to a bandwidth; compute runs on a
//           compute-engine thread with oneDNN (GEMM) and OpenMP. Everything above the device
//           layer runs and is tested against it.
//   "cuda"  CudaDevice — cudaMalloc behind a caching allocator, cudaHostAlloc, CUDA streams and
//           events, cuBLAS GEMM and the kernels in kernels/. Present when strata was built with
//           the CUDA toolkit; without a GPU it fails with a "no CUDA device" Status. It compiles
//           for sm_80/sm_90 in every CUDA build but has not yet been run on a GPU by strata's
//           tests (they skip without one); treat it as unverified until they pass on hardware.
//
// Model of execution (the CUDA model): every copy and compute call is *enqueued* on a Stream and
// returns at once; work on one stream runs in enqueue order; work on different streams may run
// concurrently. An Event recorded on a stream completes when all work enqueued on that stream
// before the record has completed; Stream::wait(event) makes later work on the waiting stream
// start only after that. Host code waits with Event::synchronize() or Stream::synchronize().
// An enqueue call validates its arguments and returns a non-OK Status without enqueuing
// anything when they are wrong; a failure while the work runs is reported by the next
// synchronize()/query() of that stream (and of events recorded after it).
//
// Memory and lifetime rules:
//   * DeviceBuffer and PinnedBuffer own their memory and free it on destruction. Views
//     (DeviceRange, DeviceView, MatrixView) do not own and must not outlive their buffer.
//   * REQUIRES: buffers, streams and events are destroyed before the Device that made them.
//   * REQUIRES: memory read or written by enqueued work (device buffers and host spans alike)
//     stays alive and is not touched by the host until that work has completed. Freeing a
//     DeviceBuffer does not wait for pending work that uses it.
//   * Device addresses are host-dereferenceable only when info().host_addressable is true
//     (the host device); portable code copies to host memory instead.
//   * Host memory given to copies may be ordinary memory, but only PinnedBuffer memory lets a
//     CUDA copy overlap with compute; the tier manager stages through PinnedBuffers.
//
// Thread-safety: every Device, Stream and Event member function may be called from any thread
// concurrently. Enqueues on one stream from several threads run in the order the calls take
// effect, which the caller must order itself if it matters. Buffers and views are values with
// the usual rules (one object, one thread at a time).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "strata/dtype.h"
#include "strata/optimizer.h"
#include "strata/profile.h"
#include "strata/status.h"

namespace strata {

class Device;

// ---------------------------------------------------------------------------------------------
// Memory handles and views

// An untyped, non-owning byte range of device memory. Copies work on ranges.
class DeviceRange {
 public:
  DeviceRange() = default;

  const Device* device() const { return device_; }
  // The device address (a device pointer on CUDA; host-dereferenceable only on the host device).
  void* address() const { return address_; }
  std::size_t bytes() const { return bytes_; }
  bool empty() const { return bytes_ == 0; }

  // Bytes [offset, offset + bytes) of this range; fails when out of bounds.
  Result<DeviceRange> subrange(std::size_t offset, std::size_t bytes) const;

 private:
  friend class DeviceBuffer;
  friend class DeviceView;
  DeviceRange(const Device* device, void* address, std::size_t bytes)
      : device_(device), address_(address), bytes_(bytes) {}

  const Device* device_ = nullptr;
  void* address_ = nullptr;
  std::size_t bytes_ = 0;
};

// A typed, non-owning view of `count` contiguous elements of device memory. Compute works on
// views; a view converts to the DeviceRange of its bytes for copies.
class DeviceView {
 public:
  DeviceView() = default;

  const Device* device() const { return device_; }
  void* address() const { return address_; }
  DType dtype() const { return dtype_; }
  std::size_t count() const { return count_; }
  std::size_t bytes() const { return count_ * dtype_size(dtype_); }
  bool empty() const { return count_ == 0; }

  // Elements [first, first + count) of this view; fails when out of bounds.
  Result<DeviceView> slice(std::size_t first, std::size_t count) const;

  DeviceRange range() const { return DeviceRange(device_, address_, bytes()); }
  operator DeviceRange() const { return range(); }  // NOLINT(google-explicit-constructor)

 private:
  friend class DeviceBuffer;
  DeviceView(const Device* device, void* address, DType dtype, std::size_t count)
      : device_(device), address_(address), dtype_(dtype), count_(count) {}

  const Device* device_ = nullptr;
  void* address_ = nullptr;
  DType dtype_ = DType::kF32;
  std::size_t count_ = 0;
};

// Owns one allocation of device memory (move-only). Its bytes count against the device
// capacity until it is destroyed or reset(). Addresses are aligned to kDeviceAlignment.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  Device* device() const { return device_; }
  void* address() const { return address_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  explicit operator bool() const { return address_ != nullptr; }

  // The whole buffer as bytes.
  DeviceRange range() const { return DeviceRange(device_, address_, size_); }
  // Bytes [offset, offset + bytes); fails when out of bounds.
  Result<DeviceRange> range(std::size_t offset, std::size_t bytes) const;
  // The whole buffer as elements of `dtype` (a trailing partial element is not part of it).
  DeviceView view(DType dtype) const;
  // `count` elements of `dtype` starting `byte_offset` bytes in; fails when out of bounds or
  // when byte_offset is not a multiple of the element size.
  Result<DeviceView> view(DType dtype, std::size_t byte_offset, std::size_t count) const;

  // Frees the memory now (no-op on an empty buffer).
  void reset();

 private:
  friend class Device;
  DeviceBuffer(Device* device, void* address, std::size_t size)
      : device_(device), address_(address), size_(size) {}

  Device* device_ = nullptr;
  void* address_ = nullptr;
  std::size_t size_ = 0;
};

// Owns page-aligned, page-locked (best effort) host memory made by a Device (move-only).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer();

  Device* device() const { return device_; }
  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  explicit operator bool() const { return data_ != nullptr; }
  // False when the OS refused to lock the pages (RLIMIT_MEMLOCK); the memory still works.
  bool locked() const { return locked_; }

  std::span<std::byte> bytes() const { return {data_, size_}; }
  // The buffer as elements of T (a trailing partial element is not part of it).
  template <typename T>
  std::span<T> as() const {
    return {reinterpret_cast<T*>(data_), size_ / sizeof(T)};
  }

  void reset();

 private:
  friend class Device;
  PinnedBuffer(Device* device, std::byte* data, std::size_t size, bool locked)
      : device_(device), data_(data), size_(size), locked_(locked) {}

  Device* device_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool locked_ = false;
};

// Alignment of every device allocation (as cudaMalloc guarantees).
inline constexpr std::size_t kDeviceAlignment = 256;

// ---------------------------------------------------------------------------------------------
// Streams and events

class Event {
 public:
  virtual ~Event() = default;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  Device& device() const { return *device_; }
  // True when the work captured by the latest Stream::record() of this event has completed;
  // true for an event never recorded. Non-OK when that work failed.
  virtual Result<bool> query() = 0;
  // Blocks the calling thread until query() would be true. Returns the failure of the
  // captured work, if any.
  virtual Status synchronize() = 0;

 protected:
  explicit Event(Device& device) : device_(&device) {}

 private:
  Device* device_;
};

// A completion that host code sets, for streams to wait on: work done outside the device
// (a collective run by a communicator's progress engine) is ordered with a stream's work
// without any device thread blocking on it, as a CUDA stream waits on a memory value.
// Set once; every member may be called from any thread.
class HostSignal {
 public:
  static std::shared_ptr<HostSignal> make();
  HostSignal(const HostSignal&) = delete;
  HostSignal& operator=(const HostSignal&) = delete;

  // Completes the signal with `status`; the first call wins and later ones are ignored. A
  // non-OK status fails the work waiting on it (reported by that stream's synchronize()).
  void set(Status status = Status::OK());
  bool is_set() const;
  // Blocks until the signal is set; returns its status.
  Status wait() const;
  // The status it was set with. REQUIRES: is_set().
  Status status() const;
  // Keeps `fn` to run (on the thread that sets the signal, with no lock of the signal held)
  // once it is set, and returns true; returns false without keeping `fn` when it already is.
  bool notify_when_set(std::function<void()> fn);

 private:
  struct State;
  explicit HostSignal(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;

 public:
  ~HostSignal();
};

class Stream {
 public:
  // Waits for the stream's pending work, then releases it.
  virtual ~Stream() = default;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  Device& device() const { return *device_; }
  const std::string& name() const { return name_; }

  // Captures all work enqueued on this stream so far in `event` (replacing an earlier capture).
  // REQUIRES: event belongs to the same device.
  virtual Status record(Event& event) = 0;
  // Work enqueued on this stream after this call starts only after the work `event` captured
  // at the time of this call has completed. A never-recorded event is already complete.
  virtual Status wait(const Event& event) = 0;
  // Blocks until all work enqueued so far has completed; returns the first failure of that
  // work since the previous synchronize() (and clears it).
  virtual Status synchronize() = 0;
  // True when all work enqueued so far has completed.
  virtual Result<bool> query() = 0;
  // Runs `fn` on a device-owned host thread once the work enqueued before it has completed;
  // later work on the stream waits for `fn` to return. `fn` must not block on this stream or
  // on events recorded after it (on CUDA it must make no CUDA calls at all).
  virtual Status launch_host_func(std::function<void()> fn) = 0;
  // Work enqueued on this stream after this call starts only once `signal` is set; a signal
  // set with a failure fails the stream. The host device parks the stream (no thread waits);
  // the CUDA device waits in a host function, which occupies the runtime's callback thread
  // (GPU collectives go through NCCL on the stream itself instead).
  virtual Status wait_host(std::shared_ptr<HostSignal> signal) = 0;

  // Where the stream's queue stands, for a backend that counts it (the host device): a number
  // unique to this stream and the operations enqueued on it so far. Two equal positions mean
  // that nothing was enqueued in between (a communicator then knows that its next collective
  // depends only on its previous one). Empty where the backend does not count.
  struct Position {
    std::uint64_t stream = 0;
    std::uint64_t enqueued = 0;
    bool operator==(const Position&) const = default;
  };
  virtual std::optional<Position> position() const { return std::nullopt; }

 protected:
  Stream(Device& device, std::string name) : device_(&device), name_(std::move(name)) {}

 private:
  Device* device_;
  std::string name_;
};

// ---------------------------------------------------------------------------------------------
// Compute arguments

// A row-major matrix (or a strided batch of them) in device memory, as stored, before any
// transpose: element (b, r, c) is at data[b * batch_stride + r * ld + c].
struct MatrixView {
  DeviceView data;               // dtype and bounds come from the view
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t ld = 0;           // elements between consecutive rows; 0 means `cols`
  std::int64_t batch_stride = 0; // elements between consecutive matrices; 0 means rows * ld
};

// C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b]   for b in [0, batch)
// op(X) is X or X^T. op(A) is (M, K), op(B) is (K, N), C is (M, N); all row-major.
// Input dtypes: A and B the same, fp32, bf16 or fp16; products accumulate in fp32.
// C is fp32, or the inputs' dtype (rounded once from the fp32 result). With beta == 0, C is
// only written (its old contents, even NaN, do not matter).
struct GemmArgs {
  MatrixView a;
  MatrixView b;
  MatrixView c;
  bool trans_a = false;
  bool trans_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
  std::int64_t batch = 1;
};

// The tensors of one Adam step on the device, all the same length; the device counterpart of
// AdamChunk (strata/optimizer.h). Hyper-parameters and step are the optimizer seam's AdamHyper
// and AdamStep, and the per-element math is kernels/adam_math.h, shared with the CPU
// optimizer, so device and CPU steps agree bit for bit.
struct AdamTensors {
  DeviceView params;      // fp32 master weights, updated in place
  DeviceView grads;       // fp32, bf16 or fp16
  DeviceView exp_avg;     // fp32, updated in place
  DeviceView exp_avg_sq;  // fp32, updated in place
  DeviceView params_out;  // optional: bf16 or fp16 copy of the updated params; empty = none
};

// ---------------------------------------------------------------------------------------------
// The device

struct DeviceOptions {
  std::uint64_t capacity = 2ULL << 30;  // hard limit on device memory (memory.device_budget)
  std::uint64_t copy_bandwidth = 0;     // host device: bytes/s per copy direction; 0 = unthrottled
                                        // (memory.host_device_bandwidth)
  int ordinal = 0;                      // cuda: which GPU
  int compute_threads = 0;              // host device: OpenMP threads for compute; 0 = OpenMP's default
};

// The options a profile asks for.
DeviceOptions device_options(const MemoryConfig& memory);

struct DeviceInfo {
  std::string backend;            // "host", "cuda"
  std::string name;               // human-readable, e.g. "host (emulated, 2 threads)"
  std::uint64_t capacity = 0;     // hard limit on live device memory, bytes
  std::uint64_t copy_bandwidth = 0;  // throttle in bytes/s, 0 = none (host device)
  bool host_addressable = false;  // device addresses may be dereferenced by host code
  // Where this backend's numbers come from; e.g. CUDA states it is unverified on a GPU.
  std::string notes;
};

struct DeviceStats {
  std::uint64_t capacity = 0;
  std::uint64_t used = 0;              // bytes in live DeviceBuffers (as requested, rounded to alignment)
  std::uint64_t peak_used = 0;
  std::uint64_t reserved = 0;          // bytes held from the system: used + allocator cache / free space
  std::uint64_t live_allocations = 0;
  std::uint64_t allocation_failures = 0;  // out-of-memory answers given
  std::uint64_t pinned_bytes = 0;      // live PinnedBuffer bytes
  std::uint64_t pinned_allocations = 0;
  std::uint64_t mlock_failures = 0;    // pinned allocations the OS refused to lock
  std::uint64_t bytes_to_device = 0;   // copy bytes per direction (host: completed; cuda: enqueued)
  std::uint64_t bytes_to_host = 0;
  std::uint64_t bytes_on_device = 0;
  std::uint64_t gemm_flops = 0;        // 2*M*N*K*batch summed over enqueued GEMMs
  std::uint64_t emulated_gemms = 0;    // GEMMs run on fp32 copies because the backend has no
                                       // kernel for their dtype (host device, fp16 on most CPUs)
};

class Device {
 public:
  virtual ~Device() = default;
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  virtual const DeviceInfo& info() const = 0;
  virtual DeviceStats stats() const = 0;

  // --- memory -------------------------------------------------------------------------------
  // Device memory of `bytes` (> 0) bytes. When it does not fit under the capacity, an
  // out-of-memory Status naming the requested, used and capacity bytes.
  Result<DeviceBuffer> allocate(std::size_t bytes);
  // Page-aligned host memory, page-locked when the OS allows it (otherwise one warning per
  // process, the mlock_failures counter, and unlocked memory).
  Result<PinnedBuffer> allocate_pinned(std::size_t bytes);

  // --- streams and events ---------------------------------------------------------------------
  virtual Result<std::unique_ptr<Stream>> create_stream(std::string_view name = {}) = 0;
  virtual Result<std::unique_ptr<Event>> create_event() = 0;
  // A stream owned by the device, for callers that need only one.
  virtual Stream& default_stream() = 0;
  // Waits for all work on all streams of this device.
  virtual Status synchronize() = 0;

  // --- copies (asynchronous; byte counts must match) ------------------------------------------
  Status copy_to_device(DeviceRange dst, std::span<const std::byte> src, Stream& stream);
  Status copy_to_host(std::span<std::byte> dst, DeviceRange src, Stream& stream);
  Status copy_on_device(DeviceRange dst, DeviceRange src, Stream& stream);

  // --- compute (asynchronous) -----------------------------------------------------------------
  Status gemm(const GemmArgs& args, Stream& stream);
  // x[i] = value (any dtype; value rounded to it).
  Status fill(DeviceView x, float value, Stream& stream);
  // dst[i] = src[i] converted (any dtype to any dtype, round to nearest even). Same count.
  Status cast(DeviceView dst, DeviceView src, Stream& stream);
  // x[i] *= alpha, computed in fp32 (any dtype).
  Status scale(DeviceView x, float alpha, Stream& stream);
  // y[i] += alpha * x[i], computed in fp32 (any dtypes, same count); for gradient accumulation.
  Status axpy(DeviceView y, float alpha, DeviceView x, Stream& stream);
  // flag[0] = 1.0f when any x[i] is inf or NaN; flag is left untouched otherwise, so one flag
  // can collect many tensors (fill it with 0 first). flag: one fp32 element.
  Status check_finite(DeviceView x, DeviceView flag, Stream& stream);
  // out[0] += sum of x[i]^2 in fp32 (x any dtype; out one fp32 element, zero it first), so one
  // accumulator can collect the squared norm of many tensors.
  Status sum_squares(DeviceView x, DeviceView out, Stream& stream);
  // One Adam/AdamW step over the tensors, element-wise. Hyper-parameters are checked exactly
  // as the CPU optimizer checks them.
  Status adam_step(const AdamTensors& tensors, const AdamHyper& hyper, const AdamStep& at, Stream& stream);

 protected:
  Device() = default;

  // Backends implement these; the public functions above have already checked that every
  // view and stream belongs to this device, that ranges are in bounds and counts and dtypes
  // agree, so implementations only do the work.
  virtual Result<DeviceBuffer> allocate_impl(std::size_t bytes) = 0;
  virtual Result<PinnedBuffer> allocate_pinned_impl(std::size_t bytes) = 0;
  virtual void free_impl(void* address, std::size_t bytes) noexcept = 0;
  virtual void free_pinned_impl(std::byte* data, std::size_t bytes, bool locked) noexcept = 0;
  virtual Status copy_to_device_impl(DeviceRange dst, std::span<const std::byte> src, Stream& stream) = 0;
  virtual Status copy_to_host_impl(std::span<std::byte> dst, DeviceRange src, Stream& stream) = 0;
  virtual Status copy_on_device_impl(DeviceRange dst, DeviceRange src, Stream& stream) = 0;
  virtual Status gemm_impl(const GemmArgs& args, Stream& stream) = 0;
  virtual Status fill_impl(DeviceView x, float value, Stream& stream) = 0;
  virtual Status cast_impl(DeviceView dst, DeviceView src, Stream& stream) = 0;
  virtual Status scale_impl(DeviceView x, float alpha, Stream& stream) = 0;
  virtual Status axpy_impl(DeviceView y, float alpha, DeviceView x, Stream& stream) = 0;
  virtual Status check_finite_impl(DeviceView x, DeviceView flag, Stream& stream) = 0;
  virtual Status sum_squares_impl(DeviceView x, DeviceView out, Stream& stream) = 0;
  virtual Status adam_step_impl(const AdamTensors& tensors, const AdamHyper& hyper, const AdamStep& at,
                                Stream& stream) = 0;

  // True when [address, address + bytes) lies inside memory this device handed out; backends
  // answer from their allocator so that a view of freed or foreign memory is refused.
  virtual bool owns_range(const void* address, std::size_t bytes) const = 0;

  // For backends: wrap memory they allocated in its owning handle.
  DeviceBuffer make_buffer(void* address, std::size_t bytes) { return DeviceBuffer(this, address, bytes); }
  PinnedBuffer make_pinned(std::byte* data, std::size_t bytes, bool locked) {
    return PinnedBuffer(this, data, bytes, locked);
  }

 private:
  friend class DeviceBuffer;
  friend class PinnedBuffer;
  Status check_stream(const Stream& stream, std::string_view op) const;
  Status check_range(const DeviceRange& r, std::string_view op, std::string_view what) const;
  Status check_view(const DeviceView& v, std::string_view op, std::string_view what) const;
};

// ---------------------------------------------------------------------------------------------
// The registry

// Creates the backend called `backend` ("host", "cuda"). An unknown name is an
// invalid-argument Status listing the known names; a known backend that cannot run here
// (strata built without CUDA, no GPU) is an unavailable Status saying why.
Result<std::unique_ptr<Device>> create_device(std::string_view backend, const DeviceOptions& options = {});

// The names create_device() knows, in a stable order.
std::vector<std::string> device_backend_names();

// Floating-point operations of one GEMM call (2 * M * N * K * batch).
std::uint64_t gemm_flops(const GemmArgs& args);

}  // namespace strata
