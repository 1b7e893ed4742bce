// src/cpu_adam/adam_kernels.h — the per-ISA kernels of the CPU optimizer: one function per
// instruction set that updates the elements [begin, end) of a chunk, and the streaming
// kernel with the same memory traffic that benchmarks use as the memory-speed ceiling.
//
// One backend per file: adam_scalar.cc, adam_avx2.cc, adam_avx512.cc. The SIMD files are
// compiled for the baseline target and enable their instruction set only inside the
// kernels (#pragma GCC target), so the library loads and runs on any x86-64 CPU; the
// caller (cpu_adam.cc) picks a table only after cpu_features() says it can run.
//
// Thread-safety: kernels are pure functions of their arguments; concurrent calls on
// disjoint ranges of the same chunk are safe (that is how the OpenMP split uses them).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu_adam/cpu_features.h"
#include "kernels/adam_math.h"
#include "strata/dtype.h"

namespace strata::cpu_adam {

enum class CopyKind : std::uint8_t { kNone = 0, kBF16 = 1, kF16 = 2 };

// Everything a kernel reads; built once per step (no allocation).
struct KernelArgs {
  adam::Constants k;
  float* p = nullptr;
  const void* g = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  void* copy = nullptr;  // std::uint16_t elements when copy_kind != kNone
  DType grad_dtype = DType::kF32;
  CopyKind copy_kind = CopyKind::kNone;
};

// Processes elements [begin, end). REQUIRES: begin <= end <= the chunk's length.
using RangeFn = void (*)(const KernelArgs& args, std::size_t begin, std::size_t end);

struct Kernels {
  Isa isa;
  // Selects the instantiation for a dtype combination (done once per step, not per element).
  RangeFn (*adam)(DType grad_dtype, CopyKind copy, bool l2);
  // The ceiling: reads p, g, m, v and writes p, m, v (and the copy) with the same loads,
  // stores, unrolling, alignment peel and non-temporal copy stores as `adam`, but only one
  // add per stream and the cheapest widening/narrowing instead of the Adam math. It moves
  // exactly the bytes an Adam step moves and leaves the values finite but meaningless.
  RangeFn (*stream)(DType grad_dtype, CopyKind copy);
};

// Each returns the table of its file. The tables of ISAs the CPU lacks exist but must not
// be called; the scalar table is always usable.
const Kernels& scalar_kernels();
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();

const Kernels& kernels_for(Isa isa);

}  // namespace strata::cpu_adam
