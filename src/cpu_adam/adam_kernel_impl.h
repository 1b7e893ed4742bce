// src/cpu_adam/adam_kernel_impl.h — the loop structure shared by every CPU optimizer
// path, written once over an instruction-set traits class `V`:
//
//   V::kLanes == 0   the scalar path: adam::update() element by element
//   V::kLanes  > 0   a SIMD path: V supplies float-vector load/store, mul, fma, fnma, div,
//                    sqrt, gradient widening (bf16, fp16) and non-temporal copy stores
//
// Loop of one range [begin, end): peel single elements until the copy pointer is aligned
// for non-temporal stores, then 4 vectors per iteration, then single vectors, then single
// elements. Peeled and tail elements go through adam::update(), whose operations are
// the same as the vector ones, so every element of every path gets bit-identical results.
//
// Stores: p, m and v are updated in place with ordinary stores (their lines were just read,
// so writing them back costs exactly one write each). The 16-bit copy is write-only and
// uses non-temporal stores: an ordinary store would first read each line (read-for-
// ownership), 2 extra bytes per parameter that the step does not need to move. The
// streaming ceiling (stream_range) uses the same stores.
//
// Only the backend files include this header, each once, the SIMD ones after
// `#pragma GCC target(...)` so that every function here is compiled for that instruction
// set. Everything is in an unnamed namespace: each backend gets its own private copy, and
// no function compiled for AVX-512 can be shared with (and picked by the linker for) code
// that runs on CPUs without it.
//
// Thread-safety: pure functions of their arguments.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu_adam/adam_kernels.h"
#include "kernels/adam_math.h"
#include "kernels/numeric.h"

#define STRATA_ADAM_INLINE inline __attribute__((always_inline))

namespace strata::cpu_adam {
namespace {

// ---- single elements (peel, tail, and the whole scalar path) ----

template <DType G>
STRATA_ADAM_INLINE float load_grad(const void* g, std::size_t i) {
  if constexpr (G == DType::kF32) {
    return static_cast<const float*>(g)[i];
  } else if constexpr (G == DType::kBF16) {
    return num::bf16_to_f32(static_cast<const std::uint16_t*>(g)[i]);
  } else {
    return num::f16_to_f32(static_cast<const std::uint16_t*>(g)[i]);
  }
}

template <DType G, CopyKind C>
STRATA_ADAM_INLINE void adam_element(const KernelArgs& a, std::size_t i) {
  adam::update(a.k, load_grad<G>(a.g, i), a.p[i], a.m[i], a.v[i]);
  if constexpr (C == CopyKind::kBF16) {
    static_cast<std::uint16_t*>(a.copy)[i] = num::f32_to_bf16(a.p[i]);
  } else if constexpr (C == CopyKind::kF16) {
    static_cast<std::uint16_t*>(a.copy)[i] = num::f32_to_f16(a.p[i]);
  }
}

// The ceiling's element: reads every stream, writes p, m, v unchanged (x + g * 0) and the
// copy as the high half of p.
template <DType G>
STRATA_ADAM_INLINE float load_grad_raw(const void* g, std::size_t i) {
  if constexpr (G == DType::kF32) {
    return static_cast<const float*>(g)[i];
  } else {
    return num::bf16_to_f32(static_cast<const std::uint16_t*>(g)[i]);
  }
}

template <DType G, CopyKind C>
STRATA_ADAM_INLINE void stream_element(const KernelArgs& a, std::size_t i) {
  const float z = load_grad_raw<G>(a.g, i) * 0.0f;
  a.p[i] = a.p[i] + z;
  a.m[i] = a.m[i] + z;
  a.v[i] = a.v[i] + z;
  if constexpr (C != CopyKind::kNone) {
    static_cast<std::uint16_t*>(a.copy)[i] = static_cast<std::uint16_t>(num::f32_bits(a.p[i]) >> 16);
  }
}

// ---- vectors ----

// The arrays of a range as local values: stores through them cannot alias these copies,
// so the compiler keeps them in registers instead of reloading KernelArgs after each store.
struct Arrays {
  float* p;
  const void* g;
  float* m;
  float* v;
  std::uint16_t* copy;
};

STRATA_ADAM_INLINE Arrays arrays_of(const KernelArgs& a) {
  return Arrays{a.p, a.g, a.m, a.v, static_cast<std::uint16_t*>(a.copy)};
}

template <class V>
struct VecConstants {
  typename V::F scale, l2, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, step_size, inv_sqrt_bc2;
  explicit VecConstants(const adam::Constants& k)
      : scale(V::set1(k.grad_scale)),
        l2(V::set1(k.l2)),
        decay(V::set1(k.decay)),
        beta1(V::set1(k.beta1)),
        one_minus_beta1(V::set1(k.one_minus_beta1)),
        beta2(V::set1(k.beta2)),
        one_minus_beta2(V::set1(k.one_minus_beta2)),
        eps(V::set1(k.eps)),
        step_size(V::set1(k.step_size)),
        inv_sqrt_bc2(V::set1(k.inv_sqrt_bc2)) {}
};

template <class V, DType G>
STRATA_ADAM_INLINE typename V::F load_grad_vec(const void* g, std::size_t i) {
  if constexpr (G == DType::kF32) {
    return V::load(static_cast<const float*>(g) + i);
  } else if constexpr (G == DType::kBF16) {
    return V::load_bf16(static_cast<const std::uint16_t*>(g) + i);
  } else {
    return V::load_f16(static_cast<const std::uint16_t*>(g) + i);
  }
}

// One vector of elements; the same operations, in the same order, as adam::update().
// Returns the updated weights; the caller stores the copy (see adam_range for why).
template <class V, DType G, bool L2>
STRATA_ADAM_INLINE typename V::F adam_vec(Arrays x, const VecConstants<V>& c, std::size_t i) {
  using F = typename V::F;
  F g = V::mul(load_grad_vec<V, G>(x.g, i), c.scale);
  const F p = V::load(x.p + i);
  if constexpr (L2) g = V::fma(c.l2, p, g);
  const F pd = V::mul(p, c.decay);
  const F m = V::fma(c.one_minus_beta1, g, V::mul(c.beta1, V::load(x.m + i)));
  const F v = V::fma(V::mul(c.one_minus_beta2, g), g, V::mul(c.beta2, V::load(x.v + i)));
  const F d = V::fma(V::sqrt(v), c.inv_sqrt_bc2, c.eps);
  const F p1 = V::fnma(c.step_size, V::div(m, d), pd);  // pd - step_size * (m / d), one rounding
  V::store(x.p + i, p1);
  V::store(x.m + i, m);
  V::store(x.v + i, v);
  return p1;
}

template <class V, CopyKind C>
STRATA_ADAM_INLINE void store_copy(Arrays x, std::size_t i, typename V::F p1) {
  if constexpr (C == CopyKind::kBF16) {
    V::stream_bf16(x.copy + i, p1);
  } else if constexpr (C == CopyKind::kF16) {
    V::stream_f16(x.copy + i, p1);
  }
}

template <class V, DType G>
STRATA_ADAM_INLINE typename V::F stream_vec(Arrays x, typename V::F zero, std::size_t i) {
  using F = typename V::F;
  F g;
  if constexpr (G == DType::kF32) {
    g = V::load(static_cast<const float*>(x.g) + i);
  } else {
    g = V::load_bf16(static_cast<const std::uint16_t*>(x.g) + i);
  }
  const F p = V::fma(g, zero, V::load(x.p + i));
  V::store(x.p + i, p);
  V::store(x.m + i, V::fma(g, zero, V::load(x.m + i)));
  V::store(x.v + i, V::fma(g, zero, V::load(x.v + i)));
  return p;
}

template <class V, CopyKind C>
STRATA_ADAM_INLINE void store_trunc(Arrays x, std::size_t i, typename V::F p) {
  if constexpr (C != CopyKind::kNone) V::stream_trunc16(x.copy + i, p);
}

// Elements to process one by one before the copy pointer reaches a cache-line boundary
// (which also aligns it for V's streaming stores, at most 32 bytes wide).
template <class V, CopyKind C>
STRATA_ADAM_INLINE std::size_t copy_peel(const KernelArgs& a, std::size_t begin, std::size_t end) {
  if constexpr (C == CopyKind::kNone) {
    return 0;
  } else {
    const auto addr = reinterpret_cast<std::uintptr_t>(static_cast<std::uint16_t*>(a.copy) + begin);
    constexpr std::size_t kLine = 64;
    const std::size_t off = (addr % kLine) / 2;  // elements past the last line boundary
    const std::size_t peel = off == 0 ? 0 : kLine / 2 - off;
    return peel < end - begin ? peel : end - begin;
  }
}

// ---- ranges ----

template <class V, DType G, CopyKind C, bool L2>
void adam_range(const KernelArgs& a, std::size_t begin, std::size_t end) {
  std::size_t i = begin;
  if constexpr (V::kLanes > 0) {
    constexpr std::size_t L = V::kLanes;
    for (std::size_t stop = i + copy_peel<V, C>(a, begin, end); i < stop; ++i) adam_element<G, C>(a, i);
    const VecConstants<V> c(a.k);
    const Arrays x = arrays_of(a);
    for (; i + 4 * L <= end; i += 4 * L) {
      const typename V::F p0 = adam_vec<V, G, L2>(x, c, i);
      const typename V::F p1 = adam_vec<V, G, L2>(x, c, i + L);
      const typename V::F p2 = adam_vec<V, G, L2>(x, c, i + 2 * L);
      const typename V::F p3 = adam_vec<V, G, L2>(x, c, i + 3 * L);
      // The copy's streaming stores go back to back: 4 x L x 2 bytes are whole cache lines
      // (64 B with AVX2, 128 B with AVX-512), so each write-combining buffer fills at once
      // and leaves as one full-line write instead of being held open across the math.
      store_copy<V, C>(x, i, p0);
      store_copy<V, C>(x, i + L, p1);
      store_copy<V, C>(x, i + 2 * L, p2);
      store_copy<V, C>(x, i + 3 * L, p3);
    }
    for (; i + L <= end; i += L) store_copy<V, C>(x, i, adam_vec<V, G, L2>(x, c, i));
  }
  for (; i < end; ++i) adam_element<G, C>(a, i);
  if constexpr (V::kLanes > 0 && C != CopyKind::kNone) V::store_fence();
}

template <class V, DType G, CopyKind C>
void stream_range(const KernelArgs& a, std::size_t begin, std::size_t end) {
  std::size_t i = begin;
  if constexpr (V::kLanes > 0) {
    constexpr std::size_t L = V::kLanes;
    for (std::size_t stop = i + copy_peel<V, C>(a, begin, end); i < stop; ++i) stream_element<G, C>(a, i);
    const typename V::F zero = V::set1(0.0f);
    const Arrays x = arrays_of(a);
    for (; i + 4 * L <= end; i += 4 * L) {
      const typename V::F p0 = stream_vec<V, G>(x, zero, i);
      const typename V::F p1 = stream_vec<V, G>(x, zero, i + L);
      const typename V::F p2 = stream_vec<V, G>(x, zero, i + 2 * L);
      const typename V::F p3 = stream_vec<V, G>(x, zero, i + 3 * L);
      store_trunc<V, C>(x, i, p0);
      store_trunc<V, C>(x, i + L, p1);
      store_trunc<V, C>(x, i + 2 * L, p2);
      store_trunc<V, C>(x, i + 3 * L, p3);
    }
    for (; i + L <= end; i += L) store_trunc<V, C>(x, i, stream_vec<V, G>(x, zero, i));
  }
  for (; i < end; ++i) stream_element<G, C>(a, i);
  if constexpr (V::kLanes > 0 && C != CopyKind::kNone) V::store_fence();
}

// ---- selection of an instantiation, once per step ----

template <class V, DType G, CopyKind C>
RangeFn select_adam_l2(bool l2) {
  return l2 ? &adam_range<V, G, C, true> : &adam_range<V, G, C, false>;
}

template <class V, DType G>
RangeFn select_adam_copy(CopyKind c, bool l2) {
  switch (c) {
    case CopyKind::kNone: return select_adam_l2<V, G, CopyKind::kNone>(l2);
    case CopyKind::kBF16: return select_adam_l2<V, G, CopyKind::kBF16>(l2);
    case CopyKind::kF16: return select_adam_l2<V, G, CopyKind::kF16>(l2);
  }
  return nullptr;
}

template <class V>
RangeFn select_adam(DType g, CopyKind c, bool l2) {
  switch (g) {
    case DType::kF32: return select_adam_copy<V, DType::kF32>(c, l2);
    case DType::kBF16: return select_adam_copy<V, DType::kBF16>(c, l2);
    case DType::kF16: return select_adam_copy<V, DType::kF16>(c, l2);
  }
  return nullptr;
}

template <class V, DType G>
RangeFn select_stream_copy(CopyKind c) {
  switch (c) {
    case CopyKind::kNone: return &stream_range<V, G, CopyKind::kNone>;
    case CopyKind::kBF16:  // the ceiling moves the same bytes for either 16-bit copy
    case CopyKind::kF16: return &stream_range<V, G, CopyKind::kBF16>;
  }
  return nullptr;
}

template <class V>
RangeFn select_stream(DType g, CopyKind c) {
  // bf16 and fp16 gradients are the same bytes to the ceiling.
  return g == DType::kF32 ? select_stream_copy<V, DType::kF32>(c) : select_stream_copy<V, DType::kBF16>(c);
}

}  // namespace
}  // namespace strata::cpu_adam
