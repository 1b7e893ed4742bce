// strata/units.h — byte sizes and bandwidths written with units, as profiles and the CLI use them.
//
// Accepted: a non-negative decimal number followed by an optional unit. SI units are powers
// of 1000 (B, KB, MB, GB, TB), IEC units powers of 1024 (KiB, MiB, GiB, TiB); units are
// case-insensitive and may be separated by spaces ("64KiB", "1.5 GB", "4096"). A plain
// number is bytes. Fractions are allowed only when they come to a whole number of bytes
// ("0.5KiB" is 512; "1.5" is an error). Negatives, overflow beyond 2^64-1 and unknown units
// are errors that quote the text.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "strata/status.h"

namespace strata {

Result<std::uint64_t> parse_bytes(std::string_view text);

// A bandwidth: a byte size per second, "25GB/s" or "12GiB/s" ("/s" may be omitted).
Result<std::uint64_t> parse_bandwidth(std::string_view text);

// Exact, parseable form: the largest IEC unit that divides the value ("64MiB"), else bytes.
std::string format_bytes(std::uint64_t bytes);

// Human form with two decimals for tables and logs ("1.50 GiB").
std::string format_bytes_human(double bytes);

constexpr std::uint64_t KiB = 1024ULL;
constexpr std::uint64_t MiB = 1024ULL * KiB;
constexpr std::uint64_t GiB = 1024ULL * MiB;

}  // namespace strata
