// src/nvme/file.h — file plumbing shared by the swap store and the NVMe benchmark: an owning
// file descriptor, opening data files (with the O_DIRECT refusal turned into an actionable
// error), the direct-I/O alignment of a file, and a description of the file system and
// block device behind a path.
//
// Thread-safety: UniqueFd is a move-only value; the functions are reentrant.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "strata/status.h"

namespace strata::nvme {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset(int fd = -1);
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_ = -1;
};

struct OpenOptions {
  bool create = false;     // create the file; it must not exist yet (O_CREAT | O_EXCL, mode 0600)
  bool direct = false;     // O_DIRECT
  bool follow = false;     // follow a symbolic link in the last component (default: refuse)
};

// Opens `name` relative to directory `dirfd` (AT_FDCWD for plain paths) for reading and
// writing. `display` is the path used in messages. When the file system refuses O_DIRECT
// (EINVAL) the error says so and names the fix: direct = false (or engine = "posix" with
// direct = false).
Result<UniqueFd> open_data_file(int dirfd, const std::string& name, const OpenOptions& options,
                                const std::string& display);

// The error for a file system that refused O_DIRECT on `path`.
Status direct_io_refused(const std::string& path, std::string_view operation);

// How direct I/O must be aligned on this file and where the figure came from.
struct DioAlignment {
  std::uint32_t offset = 4096;  // offsets and lengths: the logical block size
  std::uint32_t memory = 4096;  // buffer addresses
  std::string source;           // "statx", "BLKSSZGET", "sysfs" or "default"
};
// Queries statx(STATX_DIOALIGN), then BLKSSZGET (when `fd` is a block device), then the
// block device's logical_block_size in sysfs, and falls back to 4096 when none answers.
DioAlignment query_dio_alignment(int fd);

// What lies under a path, for benchmark headers and error messages. Fields that cannot be
// determined are empty (or 0).
struct StorageInfo {
  std::string fs_type;        // "ext4"
  std::string mount_point;    // "/"
  std::string source;         // "/dev/vda"
  std::string block_device;   // "vda"
  std::string model;          // from sysfs, if the device reports one
  std::string scheduler;      // active I/O scheduler
  std::uint32_t logical_block_size = 0;
  std::uint32_t physical_block_size = 0;
  bool rotational = false;
};
StorageInfo describe_storage(const std::string& path);

// The file system `path` lives on from statfs ("ext4", "xfs", "tmpfs", ... or its magic
// number in hex): what describe_storage falls back to where /proc/self/mountinfo does not
// show the mount (inside a chroot or some containers).
std::string file_system_name(const std::string& path);

// Free bytes under `path` for unprivileged writers (statvfs f_bavail * f_frsize), or
// UINT64_MAX for a file system that reports no capacity at all (ramfs).
Result<std::uint64_t> free_bytes(const std::string& path);

}  // namespace strata::nvme
