// The scalar path of the CPU optimizer: adam::update() element by element. It runs on any
// CPU and is the path every SIMD path must match bit for bit.
#include <cstddef>
#include <cstdint>

#include "cpu_adam/adam_kernels.h"
#include "kernels/adam_math.h"
#include "kernels/numeric.h"

#include "cpu_adam/adam_kernel_impl.h"

namespace strata::cpu_adam {
namespace {

struct ScalarOps {
  static constexpr std::size_t kLanes = 0;
};

RangeFn scalar_adam(DType g, CopyKind c, bool l2) { return select_adam<ScalarOps>(g, c, l2); }
RangeFn scalar_stream(DType g, CopyKind c) { return select_stream<ScalarOps>(g, c); }

}  // namespace

const Kernels& scalar_kernels() {
  static const Kernels k{Isa::kScalar, &scalar_adam, &scalar_stream};
  return k;
}

const Kernels& kernels_for(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return avx512_kernels();
    case Isa::kAvx2: return avx2_kernels();
    case Isa::kScalar: break;
  }
  return scalar_kernels();
}

}  // namespace strata::cpu_adam
