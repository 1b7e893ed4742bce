// For tests: scratch directories removed when the test program exits.
#pragma once

#include <filesystem>
#include <mutex>
#include <set>

namespace strata {

// Removes `path` (recursively, errors ignored) when the program exits; registering the same
// path again is harmless.
inline void remove_at_exit(const std::filesystem::path& path) {
  static struct Registry {
    std::mutex mu;
    std::set<std::filesystem::path> paths;
    ~Registry() {
      for (const auto& p : paths) {
        std::error_code ec;
        std::filesystem::remove_all(p, ec);
      }
    }
  } registry;
  std::lock_guard<std::mutex> lock(registry.mu);
  registry.paths.insert(path);
}

}  // namespace strata
