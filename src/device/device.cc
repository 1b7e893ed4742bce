// The backend-independent half of the Device seam: owning handles, views, argument checks
// shared by every backend, and the registry of backends by name.
#include "strata/device.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <utility>

#include "device/backends.h"
#include "kernels/adam_math.h"

namespace strata {

namespace {

std::string bytes_str(std::size_t n) { return std::to_string(n) + " B"; }

// Overflow-checked a * b + c for extents; false when it does not fit in int64.
bool mul_add(std::int64_t a, std::int64_t b, std::int64_t c, std::int64_t* out) {
  std::int64_t p;
  if (__builtin_mul_overflow(a, b, &p)) return false;
  return !__builtin_add_overflow(p, c, out);
}

bool overlaps(const void* a, std::size_t an, const void* b, std::size_t bn) {
  auto pa = reinterpret_cast<std::uintptr_t>(a);
  auto pb = reinterpret_cast<std::uintptr_t>(b);
  return an != 0 && bn != 0 && pa < pb + bn && pb < pa + an;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Views

Result<DeviceRange> DeviceRange::subrange(std::size_t offset, std::size_t bytes) const {
  if (offset > bytes_ || bytes > bytes_ - offset) {
    return invalid_argument("device range: bytes [" + std::to_string(offset) + ", " +
                            std::to_string(offset) + " + " + std::to_string(bytes) +
                            ") are outside a range of " + bytes_str(bytes_));
  }
  return DeviceRange(device_, static_cast<std::byte*>(address_) + offset, bytes);
}

Result<DeviceView> DeviceView::slice(std::size_t first, std::size_t count) const {
  if (first > count_ || count > count_ - first) {
    return invalid_argument("device view: elements [" + std::to_string(first) + ", " +
                            std::to_string(first) + " + " + std::to_string(count) +
                            ") are outside a view of " + std::to_string(count_) + " " +
                            std::string(dtype_name(dtype_)) + " elements");
  }
  return DeviceView(device_, static_cast<std::byte*>(address_) + first * dtype_size(dtype_), dtype_, count);
}

// ---------------------------------------------------------------------------------------------
// DeviceBuffer

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : device_(std::exchange(other.device_, nullptr)),
      address_(std::exchange(other.address_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    device_ = std::exchange(other.device_, nullptr);
    address_ = std::exchange(other.address_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() { reset(); }

void DeviceBuffer::reset() {
  if (device_ != nullptr && address_ != nullptr) device_->free_impl(address_, size_);
  device_ = nullptr;
  address_ = nullptr;
  size_ = 0;
}

Result<DeviceRange> DeviceBuffer::range(std::size_t offset, std::size_t bytes) const {
  return range().subrange(offset, bytes);
}

DeviceView DeviceBuffer::view(DType dtype) const {
  return DeviceView(device_, address_, dtype, size_ / dtype_size(dtype));
}

Result<DeviceView> DeviceBuffer::view(DType dtype, std::size_t byte_offset, std::size_t count) const {
  const std::size_t es = dtype_size(dtype);
  if (byte_offset % es != 0) {
    return invalid_argument("device buffer view: byte offset " + std::to_string(byte_offset) +
                            " is not a multiple of the " + std::string(dtype_name(dtype)) +
                            " element size " + std::to_string(es));
  }
  if (byte_offset > size_ || count > (size_ - byte_offset) / es) {
    return invalid_argument("device buffer view: " + std::to_string(count) + " " +
                            std::string(dtype_name(dtype)) + " elements at byte offset " +
                            std::to_string(byte_offset) + " do not fit in a buffer of " +
                            bytes_str(size_));
  }
  return DeviceView(device_, static_cast<std::byte*>(address_) + byte_offset, dtype, count);
}

// ---------------------------------------------------------------------------------------------
// PinnedBuffer

PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept
    : device_(std::exchange(other.device_, nullptr)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      locked_(std::exchange(other.locked_, false)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    device_ = std::exchange(other.device_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    locked_ = std::exchange(other.locked_, false);
  }
  return *this;
}

PinnedBuffer::~PinnedBuffer() { reset(); }

void PinnedBuffer::reset() {
  if (device_ != nullptr && data_ != nullptr) device_->free_pinned_impl(data_, size_, locked_);
  device_ = nullptr;
  data_ = nullptr;
  size_ = 0;
  locked_ = false;
}

// ---------------------------------------------------------------------------------------------
// Device: argument checks shared by every backend

Status Device::check_stream(const Stream& stream, std::string_view op) const {
  if (&stream.device() != this) {
    return invalid_argument(std::string(op) + ": the stream '" + stream.name() +
                            "' belongs to another device (" + stream.device().info().name + ")");
  }
  return Status::OK();
}

Status Device::check_range(const DeviceRange& r, std::string_view op, std::string_view what) const {
  if (r.bytes() == 0) return Status::OK();
  if (r.device() != this) {
    return invalid_argument(std::string(op) + ": " + std::string(what) +
                            (r.device() == nullptr ? " is a default-constructed (null) view"
                                                   : " is memory of another device (" + r.device()->info().name + ")"));
  }
  if (!owns_range(r.address(), r.bytes())) {
    return invalid_argument(std::string(op) + ": " + std::string(what) + " (" + bytes_str(r.bytes()) +
                            ") is not inside live memory of device '" + info().name +
                            "' (was its buffer freed?)");
  }
  return Status::OK();
}

Status Device::check_view(const DeviceView& v, std::string_view op, std::string_view what) const {
  return check_range(v.range(), op, what);
}

Result<DeviceBuffer> Device::allocate(std::size_t bytes) {
  if (bytes == 0) return invalid_argument("device allocate: a size of 0 bytes was requested; ask for at least 1 byte");
  return allocate_impl(bytes);
}

Result<PinnedBuffer> Device::allocate_pinned(std::size_t bytes) {
  if (bytes == 0) return invalid_argument("pinned allocate: a size of 0 bytes was requested; ask for at least 1 byte");
  return allocate_pinned_impl(bytes);
}

// --- copies ---------------------------------------------------------------------------------

Status Device::copy_to_device(DeviceRange dst, std::span<const std::byte> src, Stream& stream) {
  constexpr std::string_view op = "copy to device";
  STRATA_RETURN_IF_ERROR(check_stream(stream, op));
  STRATA_RETURN_IF_ERROR(check_range(dst, op, "the destination"));
  if (dst.bytes() != src.size()) {
    return invalid_argument("copy to device: destination is " + bytes_str(dst.bytes()) + " but source is " +
                            bytes_str(src.size()) + "; sizes must match");
  }
  if (src.empty()) return Status::OK();
  if (src.data() == nullptr) return invalid_argument("copy to device: the host source is a null pointer");
  return copy_to_device_impl(dst, src, stream);
}

Status Device::copy_to_host(std::span<std::byte> dst, DeviceRange src, Stream& stream) {
  constexpr std::string_view op = "copy to host";
  STRATA_RETURN_IF_ERROR(check_stream(stream, op));
  STRATA_RETURN_IF_ERROR(check_range(src, op, "the source"));
  if (dst.size() != src.bytes()) {
    return invalid_argument("copy to host: destination is " + bytes_str(dst.size()) + " but source is " +
                            bytes_str(src.bytes()) + "; sizes must match");
  }
  if (dst.empty()) return Status::OK();
  if (dst.data() == nullptr) return invalid_argument("copy to host: the host destination is a null pointer");
  return copy_to_host_impl(dst, src, stream);
}

Status Device::copy_on_device(DeviceRange dst, DeviceRange src, Stream& stream) {
  constexpr std::string_view op = "copy on device";
  STRATA_RETURN_IF_ERROR(check_stream(stream, op));
  STRATA_RETURN_IF_ERROR(check_range(dst, op, "the destination"));
  STRATA_RETURN_IF_ERROR(check_range(src, op, "the source"));
  if (dst.bytes() != src.bytes()) {
    return invalid_argument("copy on device: destination is " + bytes_str(dst.bytes()) + " but source is " +
                            bytes_str(src.bytes()) + "; sizes must match");
  }
  if (dst.empty()) return Status::OK();
  if (overlaps(dst.address(), dst.bytes(), src.address(), src.bytes()) && dst.address() != src.address()) {
    return invalid_argument("copy on device: source and destination overlap; copy through a temporary buffer");
  }
  return copy_on_device_impl(dst, src, stream);
}

// --- GEMM -----------------------------------------------------------------------------------

std::uint64_t gemm_flops(const GemmArgs& g) {
  const std::int64_t m = g.trans_a ? g.a.cols : g.a.rows;
  const std::int64_t k = g.trans_a ? g.a.rows : g.a.cols;
  const std::int64_t n = g.trans_b ? g.b.rows : g.b.cols;
  return 2ULL * static_cast<std::uint64_t>(m) * static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(k) *
         static_cast<std::uint64_t>(std::max<std::int64_t>(g.batch, 1));
}

namespace {

// Resolves ld / batch_stride defaults and checks that every matrix of the batch is in bounds.
Status resolve_matrix(MatrixView& m, std::int64_t batch, std::string_view name) {
  const std::string who = "gemm: matrix " + std::string(name);
  if (m.rows <= 0 || m.cols <= 0) {
    return invalid_argument(who + " has shape (" + std::to_string(m.rows) + ", " + std::to_string(m.cols) +
                            "); both dimensions must be positive");
  }
  if (m.ld == 0) m.ld = m.cols;
  if (m.ld < m.cols) {
    return invalid_argument(who + ": leading dimension " + std::to_string(m.ld) + " is smaller than its " +
                            std::to_string(m.cols) + " columns");
  }
  std::int64_t one = 0;
  if (!mul_add(m.rows - 1, m.ld, m.cols, &one)) return invalid_argument(who + ": its extent overflows");
  if (m.batch_stride == 0 && batch > 1) {
    if (!mul_add(m.rows, m.ld, 0, &m.batch_stride)) return invalid_argument(who + ": its extent overflows");
  }
  if (m.batch_stride < 0) return invalid_argument(who + ": batch stride is negative");
  std::int64_t extent = 0;
  if (!mul_add(batch - 1, m.batch_stride, one, &extent)) return invalid_argument(who + ": its extent overflows");
  if (static_cast<std::uint64_t>(extent) > m.data.count()) {
    return invalid_argument(who + " needs " + std::to_string(extent) + " elements (" + std::to_string(batch) +
                            " x (" + std::to_string(m.rows) + ", " + std::to_string(m.cols) + "), ld " +
                            std::to_string(m.ld) + ", batch stride " + std::to_string(m.batch_stride) +
                            ") but its view holds " + std::to_string(m.data.count()));
  }
  return Status::OK();
}

}  // namespace

Status Device::gemm(const GemmArgs& args, Stream& stream) {
  constexpr std::string_view op = "gemm";
  STRATA_RETURN_IF_ERROR(check_stream(stream, op));
  STRATA_RETURN_IF_ERROR(check_view(args.a.data, op, "matrix A"));
  STRATA_RETURN_IF_ERROR(check_view(args.b.data, op, "matrix B"));
  STRATA_RETURN_IF_ERROR(check_view(args.c.data, op, "matrix C"));
  if (args.batch < 1) return invalid_argument("gemm: batch is " + std::to_string(args.batch) + "; it must be at least 1");
  GemmArgs g = args;
  STRATA_RETURN_IF_ERROR(resolve_matrix(g.a, g.batch, "A"));
  STRATA_RETURN_IF_ERROR(resolve_matrix(g.b, g.batch, "B"));
  STRATA_RETURN_IF_ERROR(resolve_matrix(g.c, g.batch, "C"));
  const DType in = g.a.data.dtype();
  if (g.b.data.dtype() != in) {
    return invalid_argument("gemm: A is " + std::string(dtype_name(in)) + " but B is " +
                            std::string(dtype_name(g.b.data.dtype())) + "; inputs must have the same dtype");
  }
  const DType out = g.c.data.dtype();
  if (out != DType::kF32 && out != in) {
    return invalid_argument("gemm: C is " + std::string(dtype_name(out)) + " for " + std::string(dtype_name(in)) +
                            " inputs; C must be fp32 or the inputs' dtype");
  }
  const std::int64_t m = g.trans_a ? g.a.cols : g.a.rows;
  const std::int64_t k = g.trans_a ? g.a.rows : g.a.cols;
  const std::int64_t kb = g.trans_b ? g.b.cols : g.b.rows;
  const std::int64_t n = g.trans_b ? g.b.rows : g.b.cols;
  if (k != kb || g.c.rows != m || g.c.cols != n) {
    return invalid_argument("gemm: shapes do not chain: op(A) is (" + std::to_string(m) + ", " + std::to_string(k) +
                            "), op(B) is (" + std::to_string(kb) + ", " + std::to_string(n) + "), C is (" +
                            std::to_string(g.c.rows) + ", " + std::to_string(g.c.cols) + "); need (M, K) @ (K, N) -> (M, N)");
  }
  const std::size_t cb = g.c.data.bytes();
  if (overlaps(g.c.data.address(), cb, g.a.data.address(), g.a.data.bytes()) ||
      overlaps(g.c.data.address(), cb, g.b.data.address(), g.b.data.bytes())) {
    return invalid_argument("gemm: the view of C overlaps the view of A or B; write the result elsewhere");
  }
  if (!std::isfinite(g.alpha) || !std::isfinite(g.beta)) {
    return invalid_argument("gemm: alpha and beta must be finite");
  }
  return gemm_impl(g, stream);
}

// --- element-wise ---------------------------------------------------------------------------

namespace {
Status same_count(const DeviceView& a, const DeviceView& b, std::string_view op, std::string_view an,
                  std::string_view bn) {
  if (a.count() != b.count()) {
    return invalid_argument(std::string(op) + ": " + std::string(an) + " has " + std::to_string(a.count()) +
                            " elements but " + std::string(bn) + " has " + std::to_string(b.count()));
  }
  return Status::OK();
}

Status scalar_f32(const DeviceView& v, std::string_view op, std::string_view what) {
  if (v.dtype() != DType::kF32 || v.count() != 1) {
    return invalid_argument(std::string(op) + ": " + std::string(what) + " must be one fp32 element; it is " +
                            std::to_string(v.count()) + " " + std::string(dtype_name(v.dtype())) + " elements");
  }
  return Status::OK();
}
}  // namespace

Status Device::fill(DeviceView x, float value, Stream& stream) {
  STRATA_RETURN_IF_ERROR(check_stream(stream, "fill"));
  STRATA_RETURN_IF_ERROR(check_view(x, "fill", "x"));
  if (x.empty()) return Status::OK();
  return fill_impl(x, value, stream);
}

Status Device::cast(DeviceView dst, DeviceView src, Stream& stream) {
  STRATA_RETURN_IF_ERROR(check_stream(stream, "cast"));
  STRATA_RETURN_IF_ERROR(check_view(dst, "cast", "the destination"));
  STRATA_RETURN_IF_ERROR(check_view(src, "cast", "the source"));
  STRATA_RETURN_IF_ERROR(same_count(dst, src, "cast", "the destination", "the source"));
  if (dst.empty()) return Status::OK();
  if (overlaps(dst.address(), dst.bytes(), src.address(), src.bytes()) &&
      !(dst.address() == src.address() && dst.dtype() == src.dtype())) {
    return invalid_argument("cast: source and destination overlap; cast into a separate buffer");
  }
  return cast_impl(dst, src, stream);
}

Status Device::scale(DeviceView x, float alpha, Stream& stream) {
  STRATA_RETURN_IF_ERROR(check_stream(stream, "scale"));
  STRATA_RETURN_IF_ERROR(check_view(x, "scale", "x"));
  if (x.empty()) return Status::OK();
  return scale_impl(x, alpha, stream);
}

Status Device::axpy(DeviceView y, float alpha, DeviceView x, Stream& stream) {
  STRATA_RETURN_IF_ERROR(check_stream(stream, "axpy"));
  STRATA_RETURN_IF_ERROR(check_view(y, "axpy", "y"));
  STRATA_RETURN_IF_ERROR(check_view(x, "axpy", "x"));
  STRATA_RETURN_IF_ERROR(same_count(y, x, "axpy", "y", "x"));
  if (y.empty()) return Status::OK();
  if (overlaps(y.address(), y.bytes(), x.address(), x.bytes()) && !(y.address() == x.address() && y.dtype() == x.dtype())) {
    return invalid_argument("axpy: x and y partially overlap");
  }
  return axpy_impl(y, alpha, x, stream);
}

Status Device::check_finite(DeviceView x, DeviceView flag, Stream& stream) {
  STRATA_RETURN_IF_ERROR(check_stream(stream, "check finite"));
  STRATA_RETURN_IF_ERROR(check_view(x, "check finite", "x"));
  STRATA_RETURN_IF_ERROR(scalar_f32(flag, "check finite", "the flag"));
  STRATA_RETURN_IF_ERROR(check_view(flag, "check finite", "the flag"));
  if (x.empty()) return Status::OK();
  return check_finite_impl(x, flag, stream);
}

Status Device::sum_squares(DeviceView x, DeviceView out, Stream& stream) {
  STRATA_RETURN_IF_ERROR(check_stream(stream, "sum of squares"));
  STRATA_RETURN_IF_ERROR(check_view(x, "sum of squares", "x"));
  STRATA_RETURN_IF_ERROR(scalar_f32(out, "sum of squares", "the accumulator"));
  STRATA_RETURN_IF_ERROR(check_view(out, "sum of squares", "the accumulator"));
  if (overlaps(x.address(), x.bytes(), out.address(), out.bytes())) {
    return invalid_argument("sum of squares: the accumulator lies inside x");
  }
  if (x.empty()) return Status::OK();
  return sum_squares_impl(x, out, stream);
}

namespace device {
adam::Hyper adam_hyper(const AdamHyper& h) {
  adam::Hyper a;
  a.lr = h.lr;
  a.beta1 = h.beta1;
  a.beta2 = h.beta2;
  a.eps = h.eps;
  a.weight_decay = h.weight_decay;
  a.mode = h.mode == AdamMode::kAdamW ? adam::Mode::kAdamW : adam::Mode::kAdam;
  a.bias_correction = h.bias_correction;
  return a;
}
}  // namespace device

Status Device::adam_step(const AdamTensors& t, const AdamHyper& h, const AdamStep& at, Stream& stream) {
  constexpr std::string_view op = "adam step";
  STRATA_RETURN_IF_ERROR(check_stream(stream, op));
  STRATA_RETURN_IF_ERROR(check_view(t.params, op, "params"));
  STRATA_RETURN_IF_ERROR(check_view(t.grads, op, "grads"));
  STRATA_RETURN_IF_ERROR(check_view(t.exp_avg, op, "exp_avg"));
  STRATA_RETURN_IF_ERROR(check_view(t.exp_avg_sq, op, "exp_avg_sq"));
  STRATA_RETURN_IF_ERROR(check_view(t.params_out, op, "params_out"));
  auto need = [&](const DeviceView& v, std::string_view what, bool ok_dtype, std::string_view allowed) -> Status {
    if (!ok_dtype) {
      return invalid_argument("adam step: " + std::string(what) + " is " + std::string(dtype_name(v.dtype())) +
                              "; it must be " + std::string(allowed));
    }
    return same_count(t.params, v, op, "params", what);
  };
  STRATA_RETURN_IF_ERROR(need(t.params, "params", t.params.dtype() == DType::kF32, "fp32"));
  STRATA_RETURN_IF_ERROR(need(t.grads, "grads", true, "fp32, bf16 or fp16"));
  STRATA_RETURN_IF_ERROR(need(t.exp_avg, "exp_avg", t.exp_avg.dtype() == DType::kF32, "fp32"));
  STRATA_RETURN_IF_ERROR(need(t.exp_avg_sq, "exp_avg_sq", t.exp_avg_sq.dtype() == DType::kF32, "fp32"));
  if (!t.params_out.empty()) {
    STRATA_RETURN_IF_ERROR(need(t.params_out, "params_out", t.params_out.dtype() != DType::kF32, "bf16 or fp16"));
  }
  const std::pair<const DeviceView*, std::string_view> all[] = {
      {&t.params, "params"}, {&t.grads, "grads"}, {&t.exp_avg, "exp_avg"}, {&t.exp_avg_sq, "exp_avg_sq"},
      {&t.params_out, "params_out"}};
  for (std::size_t i = 0; i < 5; ++i) {
    for (std::size_t j = i + 1; j < 5; ++j) {
      if (overlaps(all[i].first->address(), all[i].first->bytes(), all[j].first->address(), all[j].first->bytes())) {
        return invalid_argument("adam step: " + std::string(all[i].second) + " and " + std::string(all[j].second) +
                                " overlap; each tensor needs its own memory");
      }
    }
  }
  if (const char* why = adam::check_hyper(device::adam_hyper(h), at.step, at.grad_scale)) {
    return invalid_argument(std::string("adam step: ") + why);
  }
  if (t.params.empty()) return Status::OK();
  return adam_step_impl(t, h, at, stream);
}

// ---------------------------------------------------------------------------------------------
// Options and the registry

DeviceOptions device_options(const MemoryConfig& memory) {
  DeviceOptions o;
  o.capacity = memory.device_budget;
  o.copy_bandwidth = memory.host_device_bandwidth;
  return o;
}

namespace {
struct Backend {
  std::string_view name;
  Result<std::unique_ptr<Device>> (*make)(const DeviceOptions&);
};
constexpr Backend kBackends[] = {
    {"host", &device::make_host_device},
    {"cuda", &device::make_cuda_device},
};
}  // namespace

std::vector<std::string> device_backend_names() {
  std::vector<std::string> names;
  for (const Backend& b : kBackends) names.emplace_back(b.name);
  return names;
}

Result<std::unique_ptr<Device>> create_device(std::string_view backend, const DeviceOptions& options) {
  for (const Backend& b : kBackends) {
    if (b.name == backend) {
      if (options.capacity == 0) {
        return invalid_argument("device '" + std::string(backend) +
                                "': capacity is 0 bytes; set memory.device_budget to the bytes the device may use");
      }
      return b.make(options);
    }
  }
  std::string known;
  for (const Backend& b : kBackends) known += (known.empty() ? "" : ", ") + std::string(b.name);
  return invalid_argument("unknown device backend '" + std::string(backend) + "'; known backends: " + known);
}

#if !defined(STRATA_HAVE_CUDA)
Result<std::unique_ptr<Device>> device::make_cuda_device(const DeviceOptions&) {
  return unavailable(
      "device 'cuda': this strata was built without the CUDA toolkit (nvcc was not found at configure time); "
      "rebuild with the toolkit installed and -DSTRATA_CUDA=ON, or use the 'host' device");
}
#endif

}  // namespace strata
