// CudaDevice — the Device seam on an NVIDIA GPU through the CUDA runtime and cuBLAS.
//
// * Memory: cudaMalloc behind a caching allocator. Sizes round up to 512 B (below 1 MiB) or to
//   2 MiB; freed blocks stay cached (no cudaFree, which would synchronise the device) and are
//   reused for requests of at most twice less. The capacity bounds *reserved* bytes (live plus
//   cached, i.e. what the GPU really holds): a request that would pass it first releases the
//   cache, then fails with out-of-memory naming requested, used and capacity bytes. A
//   cudaMalloc failure below the capacity releases the cache and retries once.
// * Pinned memory: cudaHostAlloc (portable), always page-locked.
// * Streams are non-blocking CUDA streams (never the legacy default stream, which would
//   serialise against all others); events are created with timing disabled.
// * GEMM: cublasGemmStridedBatchedEx with fp32 compute (CUBLAS_COMPUTE_32F, no TF32), the
//   row-major problem C = op(A) op(B) issued as the column-major C^T = op(B)^T op(A)^T.
// * Element-wise primitives and Adam: kernels/device_kernels.cu.
// * Every CUDA runtime and cuBLAS code becomes a Status in one helper, gpu_status().
//
// Honesty note: this backend compiles for sm_80 and sm_90 in every CUDA build, but strata's
// tests have not run it on a GPU (the build machines have none); info().notes says so.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <climits>
#include <map>
#include <mutex>
#include <set>

#include "device/backends.h"
#include "kernels/device_kernels.h"
#include "strata/log.h"
#include "strata/units.h"

namespace strata::device {
namespace {

enum class GpuApi { kCuda, kCublas };

// The one place where CUDA runtime and cuBLAS codes become a Status.
Status gpu_status(GpuApi api, int code, std::string_view op, const char* file, int line) {
  std::string where = std::string(" (") + file + ":" + std::to_string(line) + ")";
  if (api == GpuApi::kCuda) {
    auto e = static_cast<cudaError_t>(code);
    if (e == cudaSuccess) return Status::OK();
    std::string msg = "CUDA " + std::string(op) + " failed: " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e) + where;
    switch (e) {
      case cudaErrorMemoryAllocation: return out_of_memory(msg);
      case cudaErrorNoDevice:
      case cudaErrorInsufficientDriver:
      case cudaErrorDevicesUnavailable: return unavailable(msg);
      case cudaErrorInvalidValue: return invalid_argument(msg);
      default: return internal_error(msg);
    }
  }
  auto s = static_cast<cublasStatus_t>(code);
  if (s == CUBLAS_STATUS_SUCCESS) return Status::OK();
  std::string msg = "cuBLAS " + std::string(op) + " failed: " + cublasGetStatusName(s) + ": " + cublasGetStatusString(s) + where;
  switch (s) {
    case CUBLAS_STATUS_ALLOC_FAILED: return out_of_memory(msg);
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_INVALID_VALUE: return invalid_argument(msg);
    case CUBLAS_STATUS_NOT_INITIALIZED:
    case CUBLAS_STATUS_ARCH_MISMATCH: return unavailable(msg);
    default: return internal_error(msg);
  }
}

#define STRATA_CUDA_OK(expr) \
  ::strata::device::gpu_status(::strata::device::GpuApi::kCuda, static_cast<int>(expr), #expr, __FILE__, __LINE__)
#define STRATA_CUBLAS_OK(expr) \
  ::strata::device::gpu_status(::strata::device::GpuApi::kCublas, static_cast<int>(expr), #expr, __FILE__, __LINE__)

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF16: return CUDA_R_16F;
  }
  return CUDA_R_32F;
}

class CudaDevice;

class CudaStream final : public Stream {
 public:
  CudaStream(CudaDevice& dev, std::string name, cudaStream_t s);
  ~CudaStream() override;
  Status record(Event& event) override;
  Status wait(const Event& event) override;
  Status synchronize() override;
  Result<bool> query() override;
  Status launch_host_func(std::function<void()> fn) override;
  Status wait_host(std::shared_ptr<HostSignal> signal) override;
  cudaStream_t handle() const { return stream_; }

 private:
  CudaDevice& dev_;
  cudaStream_t stream_;
};

class CudaEvent final : public Event {
 public:
  CudaEvent(CudaDevice& dev, cudaEvent_t e);
  ~CudaEvent() override;
  Result<bool> query() override;
  Status synchronize() override;
  cudaEvent_t handle() const { return event_; }

 private:
  CudaDevice& dev_;
  cudaEvent_t event_;
};

class CudaDevice final : public Device {
 public:
  CudaDevice(const DeviceOptions& options, const cudaDeviceProp& prop, cublasHandle_t blas);
  ~CudaDevice() override;
  Status init_default_stream();

  const DeviceInfo& info() const override { return info_; }
  DeviceStats stats() const override;
  Result<std::unique_ptr<Stream>> create_stream(std::string_view name) override;
  Result<std::unique_ptr<Event>> create_event() override;
  Stream& default_stream() override { return *default_stream_; }
  Status synchronize() override;

  // Makes this device current on the calling thread (the runtime's current device is per thread).
  Status activate() const { return STRATA_CUDA_OK(cudaSetDevice(ordinal_)); }

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
  static cudaStream_t handle(Stream& s) { return static_cast<CudaStream&>(s).handle(); }
  static std::size_t round_size(std::size_t bytes) {
    constexpr std::size_t kSmall = 1ULL << 20, kSmallStep = 512, kLargeStep = 2ULL << 20;
    const std::size_t step = bytes < kSmall ? kSmallStep : kLargeStep;
    return (bytes + step - 1) / step * step;
  }
  void release_cache_locked();  // REQUIRES: alloc_mu_ held
  Status copy(void* dst, const void* src, std::size_t n, cudaMemcpyKind kind, Stream& stream, std::uint64_t* counter);

  DeviceInfo info_;
  const int ordinal_;
  cublasHandle_t blas_;
  std::mutex blas_mu_;  // cublasSetStream + the call must not interleave between threads

  mutable std::mutex alloc_mu_;
  std::map<std::byte*, std::size_t> live_;                 // address -> rounded size
  std::multimap<std::size_t, std::byte*> cache_;           // rounded size -> cached block
  std::uint64_t used_ = 0, peak_ = 0, reserved_ = 0, failures_ = 0;
  std::uint64_t pinned_bytes_ = 0, pinned_allocs_ = 0;
  std::uint64_t bytes_h2d_ = 0, bytes_d2h_ = 0, bytes_d2d_ = 0, gemm_flops_ = 0;

  std::unique_ptr<CudaStream> default_stream_;
};

// ---------------------------------------------------------------------------------------------
// Streams and events

CudaStream::CudaStream(CudaDevice& dev, std::string name, cudaStream_t s)
    : Stream(dev, std::move(name)), dev_(dev), stream_(s) {}

CudaStream::~CudaStream() {
  Status st = dev_.activate();
  if (st.ok()) st = STRATA_CUDA_OK(cudaStreamSynchronize(stream_));
  if (!st.ok()) {
    STRATA_LOG(kError) << "stream '" << name() << "' destroyed with a failure: " << st;
  }
  cudaStreamDestroy(stream_);
}

Status CudaStream::record(Event& event) {
  if (&event.device() != &device()) {
    return invalid_argument("record: the event belongs to another device; events work across streams of one device");
  }
  STRATA_RETURN_IF_ERROR(dev_.activate());
  return STRATA_CUDA_OK(cudaEventRecord(static_cast<CudaEvent&>(event).handle(), stream_));
}

Status CudaStream::wait(const Event& event) {
  if (&event.device() != &device()) {
    return invalid_argument("wait: the event belongs to another device; events work across streams of one device");
  }
  STRATA_RETURN_IF_ERROR(dev_.activate());
  return STRATA_CUDA_OK(cudaStreamWaitEvent(stream_, static_cast<const CudaEvent&>(event).handle(), 0));
}

Status CudaStream::synchronize() {
  STRATA_RETURN_IF_ERROR(dev_.activate());
  return STRATA_CUDA_OK(cudaStreamSynchronize(stream_));
}

Result<bool> CudaStream::query() {
  STRATA_RETURN_IF_ERROR(dev_.activate());
  const cudaError_t e = cudaStreamQuery(stream_);
  if (e == cudaErrorNotReady) return false;
  STRATA_RETURN_IF_ERROR(STRATA_CUDA_OK(e));
  return true;
}

Status CudaStream::launch_host_func(std::function<void()> fn) {
  if (!fn) return invalid_argument("launch host func: the function is empty");
  STRATA_RETURN_IF_ERROR(dev_.activate());
  auto holder = std::make_unique<std::function<void()>>(std::move(fn));
  auto trampoline = [](void* p) {
    std::unique_ptr<std::function<void()>> f(static_cast<std::function<void()>*>(p));
    // An exception must not unwind into the CUDA runtime's thread.
    try {
      (*f)();
    } catch (const std::exception& e) {
      STRATA_LOG(kError) << "cuda device: a host function threw: " << e.what();
    } catch (...) {
      STRATA_LOG(kError) << "cuda device: a host function threw a non-standard exception";
    }
  };
  Status st = STRATA_CUDA_OK(cudaLaunchHostFunc(stream_, trampoline, holder.get()));
  if (st.ok()) holder.release();  // the callback owns it now
  return st;
}

// Without the driver API's stream memory operations (strata never links libcuda), a stream
// waits for a host signal inside a host function. A failed signal is logged: a host function
// cannot fail its stream.
Status CudaStream::wait_host(std::shared_ptr<HostSignal> signal) {
  if (signal == nullptr) return invalid_argument("wait_host: the signal is null");
  return launch_host_func([signal = std::move(signal), name = name()] {
    Status st = signal->wait();
    if (!st.ok()) {
      STRATA_LOG(kError) << "cuda stream '" << name << "': the host signal it waited for failed: " << st;
    }
  });
}

CudaEvent::CudaEvent(CudaDevice& dev, cudaEvent_t e) : Event(dev), dev_(dev), event_(e) {}

CudaEvent::~CudaEvent() {
  if (dev_.activate().ok()) cudaEventDestroy(event_);
}

Result<bool> CudaEvent::query() {
  STRATA_RETURN_IF_ERROR(dev_.activate());
  const cudaError_t e = cudaEventQuery(event_);
  if (e == cudaErrorNotReady) return false;
  STRATA_RETURN_IF_ERROR(STRATA_CUDA_OK(e));
  return true;
}

Status CudaEvent::synchronize() {
  STRATA_RETURN_IF_ERROR(dev_.activate());
  return STRATA_CUDA_OK(cudaEventSynchronize(event_));
}

// ---------------------------------------------------------------------------------------------
// Device

CudaDevice::CudaDevice(const DeviceOptions& options, const cudaDeviceProp& prop, cublasHandle_t blas)
    : ordinal_(options.ordinal), blas_(blas) {
  info_.backend = "cuda";
  info_.name = std::string(prop.name) + " (cuda:" + std::to_string(options.ordinal) + ", sm_" +
               std::to_string(prop.major) + std::to_string(prop.minor) + ")";
  info_.capacity = options.capacity;
  info_.copy_bandwidth = 0;
  info_.host_addressable = false;
  info_.notes = "CUDA runtime + cuBLAS; compiled for sm_80/sm_90 but not yet verified on a GPU by strata's test suite";
}

Status CudaDevice::init_default_stream() {
  STRATA_ASSIGN_OR_RETURN(auto s, create_stream("default"));
  default_stream_.reset(static_cast<CudaStream*>(s.release()));
  return Status::OK();
}

CudaDevice::~CudaDevice() {
  default_stream_.reset();
  if (!activate().ok()) return;
  cudaDeviceSynchronize();
  cublasDestroy(blas_);
  std::lock_guard lk(alloc_mu_);
  release_cache_locked();
  if (!live_.empty()) {
    STRATA_LOG(kError) << "cuda device destroyed with " << live_.size()
                       << " live device buffers; destroy buffers before their device (they are leaked)";
  }
}

Result<std::unique_ptr<Stream>> CudaDevice::create_stream(std::string_view name) {
  STRATA_RETURN_IF_ERROR(activate());
  cudaStream_t s = nullptr;
  STRATA_RETURN_IF_ERROR(STRATA_CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)));
  static std::atomic<std::uint64_t> counter{0};
  std::string n = name.empty() ? "stream-" + std::to_string(++counter) : std::string(name);
  return std::unique_ptr<Stream>(new CudaStream(*this, std::move(n), s));
}

Result<std::unique_ptr<Event>> CudaDevice::create_event() {
  STRATA_RETURN_IF_ERROR(activate());
  cudaEvent_t e = nullptr;
  STRATA_RETURN_IF_ERROR(STRATA_CUDA_OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)));
  return std::unique_ptr<Event>(new CudaEvent(*this, e));
}

Status CudaDevice::synchronize() {
  STRATA_RETURN_IF_ERROR(activate());
  return STRATA_CUDA_OK(cudaDeviceSynchronize());
}

DeviceStats CudaDevice::stats() const {
  std::lock_guard lk(alloc_mu_);
  DeviceStats s;
  s.capacity = info_.capacity;
  s.used = used_;
  s.peak_used = peak_;
  s.reserved = reserved_;
  s.live_allocations = live_.size();
  s.allocation_failures = failures_;
  s.pinned_bytes = pinned_bytes_;
  s.pinned_allocations = pinned_allocs_;
  s.mlock_failures = 0;
  s.bytes_to_device = bytes_h2d_;
  s.bytes_to_host = bytes_d2h_;
  s.bytes_on_device = bytes_d2d_;
  s.gemm_flops = gemm_flops_;
  return s;
}

// --- memory -------------------------------------------------------------------------------------

void CudaDevice::release_cache_locked() {
  for (auto& [size, p] : cache_) {
    cudaFree(p);
    reserved_ -= size;
  }
  cache_.clear();
}

Result<DeviceBuffer> CudaDevice::allocate_impl(std::size_t bytes) {
  STRATA_RETURN_IF_ERROR(activate());
  const std::size_t size = round_size(bytes);
  std::lock_guard lk(alloc_mu_);
  auto oom = [&](std::string_view why) -> Status {
    ++failures_;
    return out_of_memory("device '" + info_.name + "' out of memory: requested " + std::to_string(bytes) + " B (" +
                         format_bytes_human(static_cast<double>(bytes)) + "), used " + std::to_string(used_) +
                         " B of capacity " + std::to_string(info_.capacity) + " B (" +
                         format_bytes_human(static_cast<double>(info_.capacity)) + ")" + std::string(why) +
                         "; free device buffers or raise memory.device_budget");
  };
  // A cached block no more than twice the request (so that small requests do not pin big blocks).
  auto it = cache_.lower_bound(size);
  if (it != cache_.end() && it->first <= 2 * size) {
    std::byte* p = it->second;
    const std::size_t got = it->first;
    cache_.erase(it);
    live_.emplace(p, got);
    used_ += got;
    peak_ = std::max(peak_, used_);
    return make_buffer(p, bytes);
  }
  if (size > info_.capacity || used_ + size > info_.capacity) return oom("");
  if (reserved_ + size > info_.capacity) release_cache_locked();
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, size);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // reset the runtime's last-error slot; the failure is handled here
    release_cache_locked();
    e = cudaMalloc(&p, size);
  }
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    return oom(" and the GPU itself has no free block that large");
  }
  STRATA_RETURN_IF_ERROR(STRATA_CUDA_OK(e));
  live_.emplace(static_cast<std::byte*>(p), size);
  used_ += size;
  reserved_ += size;
  peak_ = std::max(peak_, used_);
  return make_buffer(p, bytes);
}

void CudaDevice::free_impl(void* address, std::size_t) noexcept {
  std::lock_guard lk(alloc_mu_);
  auto it = live_.find(static_cast<std::byte*>(address));
  if (it == live_.end()) {
    STRATA_LOG(kError) << "cuda device: free of an address it did not allocate";
    return;
  }
  used_ -= it->second;
  cache_.emplace(it->second, it->first);
  live_.erase(it);
}

bool CudaDevice::owns_range(const void* address, std::size_t bytes) const {
  auto* p = static_cast<std::byte*>(const_cast<void*>(address));
  std::lock_guard lk(alloc_mu_);
  auto it = live_.upper_bound(p);
  if (it == live_.begin()) return false;
  --it;
  const auto off = static_cast<std::size_t>(p - it->first);
  return off <= it->second && bytes <= it->second - off;
}

Result<PinnedBuffer> CudaDevice::allocate_pinned_impl(std::size_t bytes) {
  STRATA_RETURN_IF_ERROR(activate());
  void* p = nullptr;
  STRATA_RETURN_IF_ERROR(STRATA_CUDA_OK(cudaHostAlloc(&p, bytes, cudaHostAllocPortable)));
  std::lock_guard lk(alloc_mu_);
  pinned_bytes_ += bytes;
  ++pinned_allocs_;
  return make_pinned(static_cast<std::byte*>(p), bytes, true);
}

void CudaDevice::free_pinned_impl(std::byte* data, std::size_t bytes, bool) noexcept {
  cudaFreeHost(data);
  std::lock_guard lk(alloc_mu_);
  pinned_bytes_ -= bytes;
  --pinned_allocs_;
}

// --- copies -------------------------------------------------------------------------------------

Status CudaDevice::copy(void* dst, const void* src, std::size_t n, cudaMemcpyKind kind, Stream& stream,
                        std::uint64_t* counter) {
  STRATA_RETURN_IF_ERROR(activate());
  STRATA_RETURN_IF_ERROR(STRATA_CUDA_OK(cudaMemcpyAsync(dst, src, n, kind, handle(stream))));
  std::lock_guard lk(alloc_mu_);
  *counter += n;  // counted when enqueued: CUDA reports no per-copy completion without an event
  return Status::OK();
}

Status CudaDevice::copy_to_device_impl(DeviceRange dst, std::span<const std::byte> src, Stream& stream) {
  return copy(dst.address(), src.data(), src.size(), cudaMemcpyHostToDevice, stream, &bytes_h2d_);
}
Status CudaDevice::copy_to_host_impl(std::span<std::byte> dst, DeviceRange src, Stream& stream) {
  return copy(dst.data(), src.address(), dst.size(), cudaMemcpyDeviceToHost, stream, &bytes_d2h_);
}
Status CudaDevice::copy_on_device_impl(DeviceRange dst, DeviceRange src, Stream& stream) {
  if (dst.address() == src.address()) return Status::OK();
  return copy(dst.address(), src.address(), dst.bytes(), cudaMemcpyDeviceToDevice, stream, &bytes_d2d_);
}

// --- GEMM ---------------------------------------------------------------------------------------

Status CudaDevice::gemm_impl(const GemmArgs& g, Stream& stream) {
  const std::int64_t m = g.c.rows, n = g.c.cols, k = g.trans_a ? g.a.rows : g.a.cols;
  for (std::int64_t v : {m, n, k, g.a.ld, g.b.ld, g.c.ld, g.batch}) {
    if (v > INT_MAX) {
      return invalid_argument("gemm: a dimension, leading dimension or batch exceeds cuBLAS's 32-bit limit (" +
                              std::to_string(v) + "); split the product");
    }
  }
  STRATA_RETURN_IF_ERROR(activate());
  const cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t in = cuda_type(g.a.data.dtype());
  const cudaDataType_t out = cuda_type(g.c.data.dtype());
  const float alpha = g.alpha, beta = g.beta;
  std::lock_guard lk(blas_mu_);
  STRATA_RETURN_IF_ERROR(STRATA_CUBLAS_OK(cublasSetStream(blas_, handle(stream))));
  // Row-major C (m x n) is column-major C^T (n x m) = op(B)^T (n x k) @ op(A)^T (k x m).
  STRATA_RETURN_IF_ERROR(STRATA_CUBLAS_OK(cublasGemmStridedBatchedEx(
      blas_, op_b, op_a, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
      g.b.data.address(), in, static_cast<int>(g.b.ld), g.b.batch_stride,
      g.a.data.address(), in, static_cast<int>(g.a.ld), g.a.batch_stride, &beta,
      g.c.data.address(), out, static_cast<int>(g.c.ld), g.c.batch_stride, static_cast<int>(g.batch),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)));
  std::lock_guard alk(alloc_mu_);
  gemm_flops_ += gemm_flops(g);
  return Status::OK();
}

// --- element-wise -------------------------------------------------------------------------------

Status CudaDevice::fill_impl(DeviceView x, float value, Stream& stream) {
  STRATA_RETURN_IF_ERROR(activate());
  return STRATA_CUDA_OK(kern::cuda::launch_fill(x.address(), x.dtype(), x.count(), value, handle(stream)));
}

Status CudaDevice::cast_impl(DeviceView dst, DeviceView src, Stream& stream) {
  STRATA_RETURN_IF_ERROR(activate());
  return STRATA_CUDA_OK(
      kern::cuda::launch_cast(dst.address(), dst.dtype(), src.address(), src.dtype(), dst.count(), handle(stream)));
}

Status CudaDevice::scale_impl(DeviceView x, float alpha, Stream& stream) {
  STRATA_RETURN_IF_ERROR(activate());
  return STRATA_CUDA_OK(kern::cuda::launch_scale(x.address(), x.dtype(), x.count(), alpha, handle(stream)));
}

Status CudaDevice::axpy_impl(DeviceView y, float alpha, DeviceView x, Stream& stream) {
  STRATA_RETURN_IF_ERROR(activate());
  return STRATA_CUDA_OK(
      kern::cuda::launch_axpy(y.address(), y.dtype(), alpha, x.address(), x.dtype(), y.count(), handle(stream)));
}

Status CudaDevice::check_finite_impl(DeviceView x, DeviceView flag, Stream& stream) {
  STRATA_RETURN_IF_ERROR(activate());
  return STRATA_CUDA_OK(kern::cuda::launch_check_finite(x.address(), x.dtype(), x.count(),
                                                         static_cast<float*>(flag.address()), handle(stream)));
}

Status CudaDevice::sum_squares_impl(DeviceView x, DeviceView out, Stream& stream) {
  STRATA_RETURN_IF_ERROR(activate());
  return STRATA_CUDA_OK(kern::cuda::launch_sum_squares(x.address(), x.dtype(), x.count(),
                                                        static_cast<float*>(out.address()), handle(stream)));
}

Status CudaDevice::adam_step_impl(const AdamTensors& t, const AdamHyper& h, const AdamStep& at, Stream& stream) {
  STRATA_RETURN_IF_ERROR(activate());
  const adam::Constants k = adam::make_constants(adam_hyper(h), at.step, at.grad_scale);
  return STRATA_CUDA_OK(kern::cuda::launch_adam(
      k, static_cast<float*>(t.params.address()), t.grads.address(), t.grads.dtype(),
      static_cast<float*>(t.exp_avg.address()), static_cast<float*>(t.exp_avg_sq.address()),
      t.params_out.empty() ? nullptr : t.params_out.address(), t.params_out.dtype(), t.params.count(),
      handle(stream)));
}

}  // namespace

void* cuda_stream_handle(Stream& stream) {
  if (stream.device().info().backend != "cuda") return nullptr;
  return static_cast<CudaStream&>(stream).handle();
}

Result<std::unique_ptr<Device>> make_cuda_device(const DeviceOptions& options) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    return unavailable(std::string("no CUDA device: ") +
                       (e != cudaSuccess ? std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(e)
                                         : std::string("the CUDA runtime sees 0 GPUs")) +
                       "; run on a machine with an NVIDIA GPU and driver, or use the 'host' device");
  }
  if (options.ordinal < 0 || options.ordinal >= count) {
    return invalid_argument("device 'cuda': ordinal " + std::to_string(options.ordinal) + " is out of range; this machine has " +
                            std::to_string(count) + " CUDA device(s)");
  }
  STRATA_RETURN_IF_ERROR(STRATA_CUDA_OK(cudaSetDevice(options.ordinal)));
  cudaDeviceProp prop{};
  STRATA_RETURN_IF_ERROR(STRATA_CUDA_OK(cudaGetDeviceProperties(&prop, options.ordinal)));
  if (options.capacity > prop.totalGlobalMem) {
    return invalid_argument("device 'cuda': capacity " + format_bytes_human(static_cast<double>(options.capacity)) +
                            " exceeds the memory of " + prop.name + " (" +
                            format_bytes_human(static_cast<double>(prop.totalGlobalMem)) +
                            "); lower memory.device_budget");
  }
  cublasHandle_t blas = nullptr;
  STRATA_RETURN_IF_ERROR(STRATA_CUBLAS_OK(cublasCreate(&blas)));
  auto dev = std::make_unique<CudaDevice>(options, prop, blas);
  STRATA_RETURN_IF_ERROR(dev->init_default_stream());
  return std::unique_ptr<Device>(std::move(dev));
}

}  // namespace strata::device
