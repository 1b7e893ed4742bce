#include "strata/units.h"

#include <cctype>
#include <cstdio>
#include <string>

namespace strata {
namespace {

__extension__ typedef unsigned __int128 u128;

std::string quote(std::string_view t) { return "'" + std::string(t) + "'"; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

}  // namespace

Result<std::uint64_t> parse_bytes(std::string_view text) {
  std::string_view s = trim(text);
  if (s.empty()) return invalid_argument("byte size is empty; expected e.g. \"64MiB\" or \"4096\"");
  if (s.front() == '-') return invalid_argument("byte size " + quote(text) + " is negative");
  if (s.front() == '+') s.remove_prefix(1);
  u128 whole = 0;
  u128 frac = 0;
  u128 frac_den = 1;
  std::size_t i = 0;
  bool any_digit = false;
  constexpr u128 kCap = static_cast<u128>(1) << 100;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
    whole = whole * 10 + static_cast<unsigned>(s[i] - '0');
    if (whole > kCap) return invalid_argument("byte size " + quote(text) + " overflows 64 bits");
    any_digit = true;
    ++i;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
      if (frac_den < (static_cast<u128>(1) << 80)) {  // more digits than that cannot matter
        frac = frac * 10 + static_cast<unsigned>(s[i] - '0');
        frac_den *= 10;
      } else if (s[i] != '0') {
        return invalid_argument("byte size " + quote(text) + " has too many fractional digits");
      }
      any_digit = true;
      ++i;
    }
  }
  if (!any_digit) return invalid_argument("byte size " + quote(text) + " does not start with a number");
  std::string_view unit = trim(s.substr(i));
  std::uint64_t mult = 0;
  struct U { const char* name; std::uint64_t mult; };
  static constexpr U kUnits[] = {
      {"", 1},          {"B", 1},
      {"KB", 1000ULL},  {"MB", 1000ULL * 1000},  {"GB", 1000ULL * 1000 * 1000},  {"TB", 1000ULL * 1000 * 1000 * 1000},
      {"KiB", 1ULL << 10}, {"MiB", 1ULL << 20}, {"GiB", 1ULL << 30}, {"TiB", 1ULL << 40},
      {"K", 1ULL << 10},   {"M", 1ULL << 20},   {"G", 1ULL << 30},   {"T", 1ULL << 40},
  };
  for (const U& u : kUnits) {
    if (iequals(unit, u.name)) { mult = u.mult; break; }
  }
  if (mult == 0) {
    return invalid_argument("byte size " + quote(text) + " has unknown unit " + quote(unit) +
                            "; known units: B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024)");
  }
  u128 bytes = whole * mult;
  u128 frac_bytes_num = frac * mult;
  if (frac_bytes_num % frac_den != 0) {
    return invalid_argument("byte size " + quote(text) + " is not a whole number of bytes");
  }
  bytes += frac_bytes_num / frac_den;
  if (bytes > static_cast<u128>(UINT64_MAX)) {
    return invalid_argument("byte size " + quote(text) + " overflows 64 bits");
  }
  return static_cast<std::uint64_t>(bytes);
}

Result<std::uint64_t> parse_bandwidth(std::string_view text) {
  std::string_view s = trim(text);
  if (s.size() >= 2 && (s.substr(s.size() - 2) == "/s" || s.substr(s.size() - 2) == "/S")) s.remove_suffix(2);
  auto r = parse_bytes(s);
  if (!r) return r.status().with_context("bandwidth " + quote(text));
  return r;
}

std::string format_bytes(std::uint64_t bytes) {
  static constexpr const char* kNames[] = {"TiB", "GiB", "MiB", "KiB"};
  static constexpr std::uint64_t kMults[] = {1ULL << 40, 1ULL << 30, 1ULL << 20, 1ULL << 10};
  if (bytes == 0) return "0";
  for (int k = 0; k < 4; ++k) {
    if (bytes % kMults[k] == 0) return std::to_string(bytes / kMults[k]) + kNames[k];
  }
  return std::to_string(bytes);
}

std::string format_bytes_human(double bytes) {
  static constexpr const char* kNames[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int k = 0;
  while (bytes >= 1024.0 && k < 4) { bytes /= 1024.0; ++k; }
  char buf[64];
  std::snprintf(buf, sizeof buf, k == 0 ? "%.0f %s" : "%.2f %s", bytes, kNames[k]);
  return buf;
}

}  // namespace strata
