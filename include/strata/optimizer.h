// strata/optimizer.h — the optimizer seam: one interface, one backend per file
// (CpuAdam here; a device Adam implements the same interface over device memory).
//
// An optimizer updates one contiguous chunk of a parameter group in place: fp32 master
// weights, the gradients (fp32, bf16 or fp16), the fp32 moments, and optionally writes a
// bf16 or fp16 copy of the updated weights in the same pass. The math is PyTorch's
// torch.optim.Adam / AdamW; kernels/adam_math.h states it operation by operation.
//
// Thread-safety: an Optimizer may be used from one thread at a time (CpuAdam runs its own
// OpenMP threads inside step()). Distinct optimizers may run concurrently on disjoint chunks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "strata/dtype.h"
#include "strata/status.h"

namespace strata {

enum class AdamMode : std::uint8_t {
  kAdam = 0,   // torch.optim.Adam: weight decay is an L2 term added to the gradient
  kAdamW = 1,  // torch.optim.AdamW: decoupled weight decay, p *= 1 - lr * wd before the update
};

// The settings of a parameter group (lr may change every step through a schedule).
struct AdamHyper {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  AdamMode mode = AdamMode::kAdamW;
  bool bias_correction = true;  // off: step_size = lr and denom = sqrt(v) + eps (DeepSpeed's flag)
};

// Where in training the update happens.
struct AdamStep {
  std::int64_t step = 1;    // 1-based count of updates applied to this chunk, including this one
  double grad_scale = 1.0;  // multiplies every gradient as read: 1/loss_scale times the clip coefficient
};

// A view of one contiguous chunk; the optimizer does not own any of it. All arrays hold n
// elements, do not overlap and are aligned to their element size. The fp32 arrays and the
// copy are faster when 64-byte aligned (the CPU optimizer streams them with full cache lines).
struct AdamChunk {
  std::size_t n = 0;
  float* params = nullptr;           // fp32 master weights, updated in place
  const void* grads = nullptr;       // n gradients of grad_dtype, read only
  DType grad_dtype = DType::kF32;
  float* exp_avg = nullptr;          // first moment, updated in place
  float* exp_avg_sq = nullptr;       // second moment, updated in place
  void* param_copy = nullptr;        // optional: receives the updated weights as param_copy_dtype
  DType param_copy_dtype = DType::kBF16;  // bf16 or fp16 (round to nearest even, NaN stays NaN)
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // Backend and variant, e.g. "cpu_adam/avx512".
  virtual std::string name() const = 0;

  // Applies one update to the chunk. Invalid hyperparameters or arrays are an
  // invalid_argument Status naming the field; nothing is modified then.
  virtual Status step(const AdamHyper& hyper, const AdamStep& at, const AdamChunk& chunk) = 0;
};

// ---- CpuAdam: the host backend (src/cpu_adam) ----

struct CpuAdamOptions {
  // Instruction set: "auto" (the best this CPU supports), "avx512", "avx2" or "scalar".
  // With "auto", the environment variable STRATA_CPU_ADAM_ISA, when set, chooses instead.
  // Asking for a set the CPU lacks is an error, never a silent downgrade.
  std::string isa = "auto";
  int threads = 0;  // OpenMP threads per step; 0 = omp_get_max_threads() at creation
};

// The instruction-set names CpuAdamOptions::isa accepts, "auto" first.
std::vector<std::string> cpu_adam_isa_names();
// The instruction sets this CPU (and OS) can run, best first, e.g. {"avx2", "scalar"}.
std::vector<std::string> cpu_adam_isas_supported();

Result<std::unique_ptr<Optimizer>> make_cpu_adam(const CpuAdamOptions& options = {});

}  // namespace strata
