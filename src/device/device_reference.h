// src/device/device_reference.h — plain scalar references for the Device compute primitives,
// against which every backend (host OpenMP loops, CUDA kernels) is tested. Written for
// clarity, not speed: one loop per primitive, GEMM accumulated in double, conversions through
// kernels/numeric.h only. Inputs and outputs are host vectors of raw storage (float or the
// 16-bit patterns of bf16/fp16).
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "strata/device.h"

namespace strata::device::ref {

// Host-side storage of `n` elements of `t` as raw bytes, with element access in fp32.
class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(DType t, std::size_t n) : type_(t), n_(n), bytes_(n * dtype_size(t)) {}

  DType dtype() const { return type_; }
  std::size_t count() const { return n_; }
  std::size_t bytes() const { return bytes_.size(); }
  std::byte* data() { return bytes_.data(); }
  const std::byte* data() const { return bytes_.data(); }
  std::vector<std::byte>& storage() { return bytes_; }
  const std::vector<std::byte>& storage() const { return bytes_; }

  float get(std::size_t i) const;
  // Stores v rounded to the dtype (round to nearest even).
  void set(std::size_t i, float v);

 private:
  DType type_ = DType::kF32;
  std::size_t n_ = 0;
  std::vector<std::byte> bytes_;
};

// The GEMM of GemmArgs on host tensors holding the views' contents; ld and batch_stride must
// be resolved (non-zero). C is written rounded to its dtype from a double-precision sum.
void gemm(const HostTensor& a, const MatrixView& am, const HostTensor& b, const MatrixView& bm, HostTensor& c,
          const MatrixView& cm, bool trans_a, bool trans_b, float alpha, float beta, std::int64_t batch);

void fill(HostTensor& x, float value);
void cast(HostTensor& dst, const HostTensor& src);
void scale(HostTensor& x, float alpha);
void axpy(HostTensor& y, float alpha, const HostTensor& x);
bool any_nonfinite(const HostTensor& x);
double sum_squares(const HostTensor& x);

}  // namespace strata::device::ref
