// src/nvme/crc32c.h — CRC-32C (Castagnoli), the per-block checksum of swap data. The SSE4.2
// crc32 instruction computes it at memory speed; a table-driven scalar version is the
// reference the hardware path is tested against and the fallback on CPUs without SSE4.2.
//
// crc32c(b, crc32c(a)) == crc32c(a followed by b); crc32c("123456789") == 0xE3069283.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace strata::nvme {

// Dispatches to the SSE4.2 path when the CPU has it.
std::uint32_t crc32c(const void* data, std::size_t size, std::uint32_t crc = 0);

// The reference, one table lookup per byte.
std::uint32_t crc32c_scalar(const void* data, std::size_t size, std::uint32_t crc = 0);

// REQUIRES: crc32c_hardware_available().
std::uint32_t crc32c_sse42(const void* data, std::size_t size, std::uint32_t crc = 0);

bool crc32c_hardware_available();

}  // namespace strata::nvme
