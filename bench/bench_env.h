// What every `strata bench` driver reports about the run it measured: the kind of build, the
// CPU, the kernel and the file system under a path; and the two statistics they share.
#pragma once

#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "nvme/file.h"

namespace strata::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// "release", or what makes the figures unrepresentative.
inline std::string build_kind() {
#if defined(__SANITIZE_ADDRESS__)
  return "sanitizer (address)";
#elif !defined(__OPTIMIZE__)
  return "debug (unoptimised)";
#elif !defined(NDEBUG)
  return "optimised with assertions";
#else
  return "release";
#endif
}

// The "model name" line of /proc/cpuinfo.
inline std::string cpu_brand() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const std::size_t colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  }
  return "unknown";
}

// "Linux 6.1.0-..."
inline std::string kernel_release() {
  utsname u{};
  if (::uname(&u) != 0) return "unknown";
  return std::string(u.sysname) + " " + u.release;
}

// The file system `dir` lives on, by name when it is a common one.
inline std::string fs_type(const std::string& dir) { return nvme::file_system_name(dir); }

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? 0.0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace strata::bench
