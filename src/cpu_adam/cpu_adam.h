// src/cpu_adam/cpu_adam.h — CpuAdam, the host backend of the Optimizer seam
// (include/strata/optimizer.h): Adam / AdamW over fp32 master weights in host memory, on
// the best SIMD path the CPU runs (or the one asked for), split over OpenMP threads.
//
// A step validates its arguments (a bad one is an invalid_argument Status and nothing is
// touched), computes the per-step constants once, selects the kernel for the dtype
// combination and runs it over a static split of the chunk: thread t of T gets a
// contiguous range whose boundaries are multiples of 64 elements, so threads never share
// a cache line of the fp32 arrays when they are 64-byte aligned. Small chunks run on the
// calling thread. Nothing is allocated per step.
//
// Thread-safety: step() may be called from one thread at a time per object; it starts
// and joins its own OpenMP team. Distinct objects may step disjoint chunks concurrently.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "cpu_adam/adam_kernels.h"
#include "cpu_adam/cpu_features.h"
#include "strata/optimizer.h"
#include "strata/status.h"

namespace strata::cpu_adam {

// The environment variable that chooses the path when CpuAdamOptions::isa is "auto".
inline constexpr const char* kIsaEnvVar = "STRATA_CPU_ADAM_ISA";

// Chunks shorter than this many elements per thread use fewer threads (a parallel region
// costs a few microseconds; 32 Ki elements move ~1 MB).
inline constexpr std::size_t kMinElementsPerThread = std::size_t{1} << 15;

class CpuAdam final : public Optimizer {
 public:
  // Errors: invalid_argument for an unknown ISA name (the message lists the known ones) or
  // threads < 0; unavailable when the CPU lacks the asked-for ISA (the message says what
  // is missing and which ISAs would run).
  static Result<std::unique_ptr<CpuAdam>> create(const CpuAdamOptions& options);

  std::string name() const override;  // "cpu_adam/avx2"
  Status step(const AdamHyper& hyper, const AdamStep& at, const AdamChunk& chunk) override;

  // Moves exactly the bytes step() moves over `chunk` with the same kernels' loads, stores,
  // split and threads, without the Adam math (see Kernels::stream). p, m and v keep their
  // values; the copy receives the high halves of p. The memory-speed ceiling for benchmarks.
  Status stream(const AdamChunk& chunk);

  Isa isa() const { return kernels_->isa; }
  int threads() const { return threads_; }

 private:
  CpuAdam(const Kernels* kernels, int threads) : kernels_(kernels), threads_(threads) {}

  void run(RangeFn fn, const KernelArgs& args, std::size_t n) const;

  const Kernels* kernels_;  // static table, never owned
  int threads_;
};

// Checks the arrays of a chunk (null pointers, dtypes, alignment, overlap, size).
Status validate_chunk(const AdamChunk& chunk);

}  // namespace strata::cpu_adam
