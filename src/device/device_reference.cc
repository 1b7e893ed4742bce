#include "device/device_reference.h"

#include <cmath>
#include <cstring>

#include "kernels/numeric.h"

namespace strata::device::ref {

float HostTensor::get(std::size_t i) const {
  if (type_ == DType::kF32) {
    float f;
    std::memcpy(&f, bytes_.data() + 4 * i, 4);
    return f;
  }
  std::uint16_t h;
  std::memcpy(&h, bytes_.data() + 2 * i, 2);
  return type_ == DType::kBF16 ? num::bf16_to_f32(h) : num::f16_to_f32(h);
}

void HostTensor::set(std::size_t i, float v) {
  if (type_ == DType::kF32) {
    std::memcpy(bytes_.data() + 4 * i, &v, 4);
    return;
  }
  const std::uint16_t h = type_ == DType::kBF16 ? num::f32_to_bf16(v) : num::f32_to_f16(v);
  std::memcpy(bytes_.data() + 2 * i, &h, 2);
}

void gemm(const HostTensor& a, const MatrixView& am, const HostTensor& b, const MatrixView& bm, HostTensor& c,
          const MatrixView& cm, bool trans_a, bool trans_b, float alpha, float beta, std::int64_t batch) {
  const std::int64_t m = cm.rows, n = cm.cols, k = trans_a ? am.rows : am.cols;
  for (std::int64_t p = 0; p < batch; ++p) {
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < n; ++j) {
        double acc = 0.0;
        for (std::int64_t l = 0; l < k; ++l) {
          const std::int64_t ai = p * am.batch_stride + (trans_a ? l * am.ld + i : i * am.ld + l);
          const std::int64_t bi = p * bm.batch_stride + (trans_b ? j * bm.ld + l : l * bm.ld + j);
          acc += static_cast<double>(a.get(static_cast<std::size_t>(ai))) * static_cast<double>(b.get(static_cast<std::size_t>(bi)));
        }
        const auto ci = static_cast<std::size_t>(p * cm.batch_stride + i * cm.ld + j);
        double r = static_cast<double>(alpha) * acc;
        if (beta != 0.0f) r += static_cast<double>(beta) * static_cast<double>(c.get(ci));
        c.set(ci, static_cast<float>(r));
      }
    }
  }
}

void fill(HostTensor& x, float value) {
  for (std::size_t i = 0; i < x.count(); ++i) x.set(i, value);
}

void cast(HostTensor& dst, const HostTensor& src) {
  for (std::size_t i = 0; i < dst.count(); ++i) dst.set(i, src.get(i));
}

void scale(HostTensor& x, float alpha) {
  for (std::size_t i = 0; i < x.count(); ++i) x.set(i, x.get(i) * alpha);
}

void axpy(HostTensor& y, float alpha, const HostTensor& x) {
  for (std::size_t i = 0; i < y.count(); ++i) {
    const float prod = alpha * x.get(i);
    y.set(i, y.get(i) + prod);
  }
}

bool any_nonfinite(const HostTensor& x) {
  for (std::size_t i = 0; i < x.count(); ++i) {
    if (!std::isfinite(x.get(i))) return true;
  }
  return false;
}

double sum_squares(const HostTensor& x) {
  double s = 0.0;
  for (std::size_t i = 0; i < x.count(); ++i) s += static_cast<double>(x.get(i)) * static_cast<double>(x.get(i));
  return s;
}

}  // namespace strata::device::ref
