// strata/dtype.h — the element types strata stores and computes in.
//
// Thread-safety: pure functions and constants.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace strata {

enum class DType : std::uint8_t { kF32 = 0, kBF16, kF16 };

constexpr std::size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "fp32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "fp16";
  }
  return "?";
}

// Accepts "fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16".
constexpr bool parse_dtype(std::string_view s, DType* out) {
  if (s == "fp32" || s == "float32") { *out = DType::kF32; return true; }
  if (s == "bf16" || s == "bfloat16") { *out = DType::kBF16; return true; }
  if (s == "fp16" || s == "float16") { *out = DType::kF16; return true; }
  return false;
}

}  // namespace strata
