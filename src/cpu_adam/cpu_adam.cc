// CpuAdam: argument checks, path selection and the OpenMP split around the ISA kernels.
#include "cpu_adam/cpu_adam.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <utility>

#include "kernels/adam_math.h"
#include "strata/log.h"

namespace strata::cpu_adam {
namespace {

bool valid_dtype(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

std::string known_isa_list() {
  std::string s;
  for (const std::string& n : cpu_adam_isa_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

std::string supported_isa_list() {
  std::string s;
  for (Isa isa : supported_isas()) s += (s.empty() ? "" : ", ") + std::string(isa_name(isa));
  return s;
}

struct Span {
  const char* name;
  std::uintptr_t begin;
  std::uintptr_t end;
};

}  // namespace

Status validate_chunk(const AdamChunk& c) {
  if (!valid_dtype(c.grad_dtype)) return invalid_argument("adam chunk: grad_dtype is not fp32, bf16 or fp16");
  if (c.param_copy != nullptr && c.param_copy_dtype != DType::kBF16 && c.param_copy_dtype != DType::kF16) {
    return invalid_argument("adam chunk: param_copy_dtype must be bf16 or fp16 (the fp32 weights are the params array)");
  }
  if (c.n == 0) return Status::OK();
  if (c.n > std::numeric_limits<std::size_t>::max() / 8) {
    return invalid_argument("adam chunk: n = " + std::to_string(c.n) + " elements does not fit in memory");
  }
  const std::pair<const char*, const void*> required[] = {
      {"params", c.params}, {"grads", c.grads}, {"exp_avg", c.exp_avg}, {"exp_avg_sq", c.exp_avg_sq}};
  for (const auto& [what, ptr] : required) {
    if (ptr == nullptr) return invalid_argument(std::string("adam chunk: ") + what + " is null with n = " + std::to_string(c.n));
  }
  Span spans[5];
  std::size_t count = 0;
  auto add = [&](const char* what, const void* ptr, std::size_t elem) -> Status {
    const auto addr = reinterpret_cast<std::uintptr_t>(ptr);
    if (addr % elem != 0) {
      return invalid_argument(std::string("adam chunk: ") + what + " is not aligned to its element size (" +
                              std::to_string(elem) + " bytes)");
    }
    if (addr > std::numeric_limits<std::uintptr_t>::max() - c.n * elem) {
      return invalid_argument(std::string("adam chunk: ") + what + " + n wraps around the address space");
    }
    spans[count++] = Span{what, addr, addr + c.n * elem};
    return Status::OK();
  };
  STRATA_RETURN_IF_ERROR(add("params", c.params, 4));
  STRATA_RETURN_IF_ERROR(add("grads", c.grads, dtype_size(c.grad_dtype)));
  STRATA_RETURN_IF_ERROR(add("exp_avg", c.exp_avg, 4));
  STRATA_RETURN_IF_ERROR(add("exp_avg_sq", c.exp_avg_sq, 4));
  if (c.param_copy != nullptr) STRATA_RETURN_IF_ERROR(add("param_copy", c.param_copy, 2));
  for (std::size_t i = 0; i < count; ++i) {
    for (std::size_t j = i + 1; j < count; ++j) {
      if (spans[i].begin < spans[j].end && spans[j].begin < spans[i].end) {
        return invalid_argument(std::string("adam chunk: ") + spans[i].name + " and " + spans[j].name +
                                " overlap; every array needs its own memory");
      }
    }
  }
  return Status::OK();
}

Result<std::unique_ptr<CpuAdam>> CpuAdam::create(const CpuAdamOptions& options) {
  if (options.threads < 0) {
    return invalid_argument("cpu adam: threads = " + std::to_string(options.threads) +
                            " is negative; use 0 for all OpenMP threads");
  }
  std::string name = options.isa;
  std::string source = "cpu adam: isa";
  if (name == "auto") {
    const char* env = std::getenv(kIsaEnvVar);
    if (env != nullptr && *env != '\0') {
      name = env;
      source = std::string("cpu adam: environment variable ") + kIsaEnvVar;
    }
  }
  Isa isa = Isa::kScalar;
  if (name == "auto") {
    isa = supported_isas().front();
    if (isa != Isa::kAvx512) {
      STRATA_LOG_ONCE(kInfo, "cpu_adam.isa") << "cpu adam: using the " << isa_name(isa) << " path because "
                                             << isa_missing(Isa::kAvx512);
    }
  } else {
    std::optional<Isa> parsed = parse_isa(name);
    if (!parsed) {
      return invalid_argument(source + " = '" + name + "' is not a known instruction set; known: " + known_isa_list());
    }
    if (!isa_supported(*parsed)) {
      return unavailable(source + " = '" + name + "', but " + isa_missing(*parsed) + "; this machine runs: " +
                         supported_isa_list());
    }
    isa = *parsed;
  }
  const int threads = options.threads > 0 ? options.threads : std::max(1, omp_get_max_threads());
  return std::unique_ptr<CpuAdam>(new CpuAdam(&kernels_for(isa), threads));
}

std::string CpuAdam::name() const { return "cpu_adam/" + std::string(isa_name(kernels_->isa)); }

void CpuAdam::run(RangeFn fn, const KernelArgs& args, std::size_t n) const {
  const std::size_t useful = std::max<std::size_t>(1, n / kMinElementsPerThread);
  const int team = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads_), useful));
  if (team <= 1) {
    fn(args, 0, n);
    return;
  }
#pragma omp parallel num_threads(team)
  {
    // Static split in units of 64 elements (a cache line of fp32, two of a 16-bit copy).
    const std::size_t nt = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t t = static_cast<std::size_t>(omp_get_thread_num());
    const std::size_t units = (n + 63) / 64;
    const std::size_t begin = std::min(n, units * t / nt * 64);
    const std::size_t end = std::min(n, units * (t + 1) / nt * 64);
    fn(args, begin, end);
  }
}

namespace {

KernelArgs chunk_args(const AdamChunk& c) {
  KernelArgs a;
  a.p = c.params;
  a.g = c.grads;
  a.m = c.exp_avg;
  a.v = c.exp_avg_sq;
  a.copy = c.param_copy;
  a.grad_dtype = c.grad_dtype;
  a.copy_kind = c.param_copy == nullptr                ? CopyKind::kNone
                : c.param_copy_dtype == DType::kBF16 ? CopyKind::kBF16
                                                     : CopyKind::kF16;
  return a;
}

}  // namespace

Status CpuAdam::step(const AdamHyper& hyper, const AdamStep& at, const AdamChunk& chunk) {
  adam::Hyper h;
  h.lr = hyper.lr;
  h.beta1 = hyper.beta1;
  h.beta2 = hyper.beta2;
  h.eps = hyper.eps;
  h.weight_decay = hyper.weight_decay;
  h.mode = static_cast<adam::Mode>(hyper.mode);
  h.bias_correction = hyper.bias_correction;
  if (const char* why = adam::check_hyper(h, at.step, at.grad_scale)) {
    std::ostringstream os;
    os << "cpu adam step: " << why << " (got step=" << at.step << " lr=" << h.lr << " beta1=" << h.beta1
       << " beta2=" << h.beta2 << " eps=" << h.eps << " weight_decay=" << h.weight_decay
       << " grad_scale=" << at.grad_scale << ")";
    return invalid_argument(os.str());
  }
  STRATA_RETURN_IF_ERROR(validate_chunk(chunk));
  if (chunk.n == 0) return Status::OK();
  KernelArgs args = chunk_args(chunk);
  args.k = adam::make_constants(h, at.step, at.grad_scale);
  run(kernels_->adam(args.grad_dtype, args.copy_kind, args.k.l2 != 0.0f), args, chunk.n);
  return Status::OK();
}

Status CpuAdam::stream(const AdamChunk& chunk) {
  STRATA_RETURN_IF_ERROR(validate_chunk(chunk));
  if (chunk.n == 0) return Status::OK();
  const KernelArgs args = chunk_args(chunk);
  run(kernels_->stream(args.grad_dtype, args.copy_kind), args, chunk.n);
  return Status::OK();
}

}  // namespace strata::cpu_adam

namespace strata {

std::vector<std::string> cpu_adam_isa_names() { return {"auto", "avx512", "avx2", "scalar"}; }

std::vector<std::string> cpu_adam_isas_supported() {
  std::vector<std::string> out;
  for (cpu_adam::Isa isa : cpu_adam::supported_isas()) out.emplace_back(cpu_adam::isa_name(isa));
  return out;
}

Result<std::unique_ptr<Optimizer>> make_cpu_adam(const CpuAdamOptions& options) {
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<cpu_adam::CpuAdam> adam, cpu_adam::CpuAdam::create(options));
  return std::unique_ptr<Optimizer>(std::move(adam));
}

}  // namespace strata
