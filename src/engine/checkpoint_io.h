// src/engine/checkpoint_io.h — what the one-writer save (checkpoint.cc) and the sharded save
// (checkpoint_sharded.cc) of strata/checkpoint.h share: the format's names, file helpers, the
// manifest and the last steps of a save (rename into place, prune).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "strata/checkpoint.h"
#include "strata/status.h"
#include "strata/trainer.h"

namespace strata::ckpt {

using nlohmann::json;

inline constexpr const char* kFormat = "strata-checkpoint";
inline constexpr int kVersion = 1;
inline constexpr const char* kManifest = "manifest.json";
inline constexpr std::size_t kSlice = std::size_t{1} << 20;  // elements per read_state/write_state call
inline constexpr OptimizerState kTensors[] = {OptimizerState::kMaster, OptimizerState::kExpAvg, OptimizerState::kExpAvgSq};

inline std::string file_of(OptimizerState which) { return std::string(optimizer_state_name(which)) + ".f32"; }

inline std::string step_name(std::int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", static_cast<long long>(step));
  return buf;
}

// A file descriptor closed on destruction.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

Status write_all(int fd, const void* data, std::size_t n, const std::string& path);
// write_all at `offset`.
Status pwrite_all(int fd, const void* data, std::size_t n, std::uint64_t offset, const std::string& path);
Status read_all(int fd, void* data, std::size_t n, const std::string& path);
Status fsync_path(const std::string& path, bool directory);
Status remove_tree(const std::string& path);

// Creates DIR if needed and removes the temporary directories of saves that were killed.
Status prepare_dir(const std::string& dir);
// DIR/.step-NNNNNNNN.tmp-<pid>: where a save of `step` by process `pid` writes.
std::string tmp_path(const std::string& dir, std::int64_t step, long pid);
// The manifest of `trainer`'s state with `files` (name, bytes, crc32c), written into `tmp` and
// fsynced with the directory.
Status write_manifest(Trainer& trainer, const json& files, const std::string& tmp);
// Renames `tmp` into place as DIR/step-NNNNNNNN, fsyncs DIR and keeps the newest
// options.keep checkpoints; on failure removes `tmp`. Returns the checkpoint's path.
Result<std::string> publish(Trainer& trainer, const std::string& dir, const std::string& tmp, const CheckpointOptions& options);

// The sharded save of ZeRO stages 1 to 3 (checkpoint_sharded.cc): a collective of the group.
Result<std::string> save_sharded(Trainer& trainer, const std::string& dir, const CheckpointOptions& options);

}  // namespace strata::ckpt
