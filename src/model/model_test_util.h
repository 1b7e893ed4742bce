// src/model/model_test_util.h — helpers shared by the model and engine tests: a host device,
// synchronous uploads and downloads of double vectors in any dtype, random vectors, and the
// absolute-plus-relative comparison every test uses.
//
// Thread-safety: test code, one thread.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/numeric.h"
#include "model/layers.h"
#include "strata/device.h"

namespace strata::testutil {

inline std::unique_ptr<Device> make_host(std::uint64_t capacity = 256ULL << 20) {
  DeviceOptions o;
  o.capacity = capacity;
  auto d = create_device("host", o);
  if (!d.ok()) {
    ADD_FAILURE() << d.status();
    return nullptr;
  }
  return std::move(*d);
}

// The value `v` rounded to dtype t and back.
inline double round_to(double v, DType t) {
  const auto f = static_cast<float>(v);
  switch (t) {
    case DType::kF32: return f;
    case DType::kBF16: return num::bf16_to_f32(num::f32_to_bf16(f));
    case DType::kF16: return num::f16_to_f32(num::f32_to_f16(f));
  }
  return f;
}

inline std::vector<double> rounded(std::vector<double> v, DType t) {
  for (double& x : v) x = round_to(x, t);
  return v;
}

inline std::vector<std::byte> encode(const std::vector<double>& v, DType t) {
  std::vector<std::byte> out(v.size() * dtype_size(t));
  for (std::size_t i = 0; i < v.size(); ++i) {
    const auto f = static_cast<float>(v[i]);
    if (t == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &f, 4);
    } else {
      const std::uint16_t h = t == DType::kBF16 ? num::f32_to_bf16(f) : num::f32_to_f16(f);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

inline std::vector<double> decode(const std::vector<std::byte>& b, DType t) {
  const std::size_t n = b.size() / dtype_size(t);
  std::vector<double> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (t == DType::kF32) {
      float f;
      std::memcpy(&f, b.data() + 4 * i, 4);
      out[i] = f;
    } else {
      std::uint16_t h;
      std::memcpy(&h, b.data() + 2 * i, 2);
      out[i] = t == DType::kBF16 ? num::bf16_to_f32(h) : num::f16_to_f32(h);
    }
  }
  return out;
}

// A device buffer holding `v` as dtype t; `view` is its typed view.
struct DevTensor {
  DeviceBuffer buf;
  DeviceView view;
  DeviceRange range() const { return view.range(); }
};

inline DevTensor upload(Device& dev, const std::vector<double>& v, DType t) {
  DevTensor out;
  auto b = dev.allocate(std::max<std::size_t>(1, v.size()) * dtype_size(t));
  EXPECT_TRUE(b.ok()) << b.status();
  out.buf = std::move(*b);
  out.view = *out.buf.view(t, 0, v.size());
  const std::vector<std::byte> bytes = encode(v, t);
  EXPECT_TRUE(dev.copy_to_device(out.view.range(), bytes, dev.default_stream()).ok());
  EXPECT_TRUE(dev.default_stream().synchronize().ok());
  return out;
}

inline DevTensor upload_ids(Device& dev, const std::vector<std::int32_t>& ids) {
  DevTensor out;
  auto b = dev.allocate(std::max<std::size_t>(1, ids.size()) * 4);
  EXPECT_TRUE(b.ok()) << b.status();
  out.buf = std::move(*b);
  out.view = *out.buf.view(DType::kF32, 0, ids.size());  // 4-byte slots; read as int32 by the ops
  std::vector<std::byte> bytes(ids.size() * 4);
  std::memcpy(bytes.data(), ids.data(), bytes.size());
  EXPECT_TRUE(dev.copy_to_device(out.view.range(), bytes, dev.default_stream()).ok());
  EXPECT_TRUE(dev.default_stream().synchronize().ok());
  return out;
}

inline std::vector<double> download(Device& dev, const DeviceView& v) {
  EXPECT_TRUE(dev.default_stream().synchronize().ok());
  std::vector<std::byte> bytes(v.bytes());
  EXPECT_TRUE(dev.copy_to_host(bytes, v.range(), dev.default_stream()).ok());
  EXPECT_TRUE(dev.default_stream().synchronize().ok());
  return decode(bytes, v.dtype());
}

inline std::vector<double> random_vec(std::size_t n, std::uint32_t seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = d(rng);
  return v;
}

inline std::vector<std::int32_t> random_ids(std::size_t n, std::int32_t vocab, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int32_t> d(0, vocab - 1);
  std::vector<std::int32_t> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// |got - want| <= atol + rtol * |want| for every element; reports the worst element.
inline ::testing::AssertionResult close(const std::vector<double>& got, const std::vector<double>& want, double atol,
                                        double rtol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - want[i]) - (atol + rtol * std::fabs(want[i]));
    if (!(err <= worst)) {  // catches NaN too
      worst = std::isnan(err) ? INFINITY : err;
      at = i;
    }
  }
  if (worst > 0) {
    return ::testing::AssertionFailure() << "element " << at << ": got " << got[at] << ", want " << want[at]
                                         << " (atol " << atol << ", rtol " << rtol << ")";
  }
  return ::testing::AssertionSuccess();
}

// Zeroed fp32 device views of a block's activations and gradient scratch for (B, T, C, NH), as
// one rank of a tp group holds them (the split ones divided by tp; with sequence parallelism
// the residual stream's rows too, and the Ctx scratch of layers.h in rows and ln_grads).
struct BlockBuffers {
  BlockBuffers(Device& dev, std::int64_t B, std::int64_t T, std::int64_t C, std::int64_t NH, std::int64_t tp = 1,
               bool sp = false) {
    const std::int64_t N = B * T, Cr = C / tp, NHr = NH / tp, Nr = sp ? N / tp : N;
    auto z = [&](std::int64_t n) {
      bufs.push_back(upload(dev, std::vector<double>(static_cast<std::size_t>(n), 0.0), DType::kF32));
      return bufs.back().view;
    };
    a.ln1 = z(N * C);
    a.ln1_mean = z(Nr);
    a.ln1_rstd = z(Nr);
    a.qkv = z(3 * N * Cr);
    a.att = z(B * NHr * T * T);
    a.atty = z(N * Cr);
    a.res2 = z(Nr * C);
    a.ln2 = z(N * C);
    a.ln2_mean = z(Nr);
    a.ln2_rstd = z(Nr);
    a.fch = z(4 * N * Cr);
    a.fch_gelu = z(4 * N * Cr);
    g.dres = z(Nr * C);
    g.dln = z(Nr * C);
    g.dqkv = z(3 * N * Cr);
    g.datt = z(B * NHr * T * T);
    g.dfch = z(4 * N * Cr);
    if (sp) {
      rows = z(N * C);
      ln_grads = z(2 * C);
    }
  }
  std::vector<DevTensor> bufs;
  DeviceView rows, ln_grads;
  model::BlockActs a;
  model::BlockGrads g;
};

}  // namespace strata::testutil
