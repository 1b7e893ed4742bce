#include "nvme/file.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>

#include <cstdio>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace strata::nvme {
namespace {

std::string read_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return {};
  while (!line.empty() && (line.back() == ' ' || line.back() == '\n')) line.pop_back();
  return line;
}

std::uint32_t read_u32(const std::string& path) {
  std::string s = read_line(path);
  if (s.empty()) return 0;
  char* end = nullptr;
  unsigned long v = std::strtoul(s.c_str(), &end, 10);
  return end != s.c_str() && v <= UINT32_MAX ? static_cast<std::uint32_t>(v) : 0;
}

// sysfs directory of the block device (the whole disk for a partition) behind st_dev.
std::string sysfs_queue_dir(dev_t dev) {
  std::string base = "/sys/dev/block/" + std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
  if (::access((base + "/queue").c_str(), R_OK) == 0) return base + "/queue";
  if (::access((base + "/../queue").c_str(), R_OK) == 0) return base + "/../queue";  // a partition
  return {};
}

// "/x/y" unescaped from mountinfo's octal escapes (\040 for a space).
std::string unescape(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = (s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0');
      out.push_back(static_cast<char>(v));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Status direct_io_refused(const std::string& path, std::string_view operation) {
  return invalid_argument(std::string(operation) + " '" + path +
                          "' with O_DIRECT was refused (EINVAL): the file system does not support direct I/O; "
                          "set direct = false in [nvme] (or engine = \"posix\" with direct = false), or put "
                          "nvme_path on a file system that supports O_DIRECT (ext4, xfs)");
}

Result<UniqueFd> open_data_file(int dirfd, const std::string& name, const OpenOptions& o,
                                const std::string& display) {
  int flags = O_RDWR | O_CLOEXEC;
  if (!o.follow) flags |= O_NOFOLLOW;
  if (o.create) flags |= O_CREAT | O_EXCL;
  if (o.direct) flags |= O_DIRECT;
  int fd = ::openat(dirfd, name.c_str(), flags, 0600);
  if (fd < 0) {
    int err = errno;
    if (err == EINVAL && o.direct) {
      // O_DIRECT is the only flag here a file system may reject with EINVAL, and it does so
      // after creating the file (ramfs). O_EXCL proves the name is ours, so remove it.
      if (o.create) ::unlinkat(dirfd, name.c_str(), 0);
      return direct_io_refused(display, o.create ? "creating" : "opening");
    }
    if (err == ELOOP && !o.follow) {
      return permission_denied("opening '" + display + "': it is a symbolic link, which swap files never follow");
    }
    return STRATA_ERRNO(err, o.create ? "create" : "open", display);
  }
  return UniqueFd(fd);
}

DioAlignment query_dio_alignment(int fd) {
  DioAlignment a;
  struct statx sx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) != 0 &&
      sx.stx_dio_offset_align != 0) {
    a.offset = sx.stx_dio_offset_align;
    a.memory = sx.stx_dio_mem_align != 0 ? sx.stx_dio_mem_align : sx.stx_dio_offset_align;
    a.source = "statx";
    return a;
  }
  struct stat st {};
  if (::fstat(fd, &st) == 0) {
    int lbs_ioctl = 0;
    if (S_ISBLK(st.st_mode) && ::ioctl(fd, BLKSSZGET, &lbs_ioctl) == 0 && lbs_ioctl > 0) {
      a.offset = static_cast<std::uint32_t>(lbs_ioctl);
      a.memory = a.offset;
      a.source = "BLKSSZGET";
      return a;
    }
    dev_t dev = S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev;
    std::string q = sysfs_queue_dir(dev);
    std::uint32_t lbs = q.empty() ? 0 : read_u32(q + "/logical_block_size");
    if (lbs != 0) {
      a.offset = lbs;
      a.memory = lbs;
      a.source = "sysfs";
      return a;
    }
  }
  a.source = "default";
  return a;
}

StorageInfo describe_storage(const std::string& path) {
  StorageInfo info;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return info;
  char resolved[PATH_MAX];
  std::string real = ::realpath(path.c_str(), resolved) != nullptr ? std::string(resolved) : path;
  // mountinfo: id parent major:minor root mount-point options [optional...] - fstype source super
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  std::string want = std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
  std::size_t best = 0;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, devno, root, mnt;
    ls >> id >> parent >> devno >> root >> mnt;
    if (devno != want) continue;
    mnt = unescape(mnt);
    bool prefix = real.compare(0, mnt.size(), mnt) == 0 &&
                  (mnt == "/" || real.size() == mnt.size() || real[mnt.size()] == '/');
    if (!prefix || mnt.size() < best) continue;
    std::string tok;
    while (ls >> tok && tok != "-") {
    }
    std::string fstype, source;
    ls >> fstype >> source;
    best = mnt.size();
    info.mount_point = mnt;
    info.fs_type = fstype;
    info.source = unescape(source);
  }
  if (info.fs_type.empty()) info.fs_type = file_system_name(path);
  std::string q = sysfs_queue_dir(st.st_dev);
  if (!q.empty()) {
    char target[PATH_MAX];
    std::string link = "/sys/dev/block/" + want;
    ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
    if (n > 0) {
      std::string t(target, static_cast<std::size_t>(n));
      info.block_device = t.substr(t.find_last_of('/') + 1);
    }
    info.logical_block_size = read_u32(q + "/logical_block_size");
    info.physical_block_size = read_u32(q + "/physical_block_size");
    info.rotational = read_u32(q + "/rotational") != 0;
    std::string sched = read_line(q + "/scheduler");
    std::size_t lb = sched.find('[');
    std::size_t rb = sched.find(']');
    info.scheduler = lb != std::string::npos && rb != std::string::npos && rb > lb ? sched.substr(lb + 1, rb - lb - 1) : sched;
    info.model = read_line(q + "/../device/model");
  }
  return info;
}

std::string file_system_name(const std::string& path) {
  struct statfs s {};
  if (::statfs(path.c_str(), &s) != 0) return "";
  switch (static_cast<unsigned long>(s.f_type)) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x01021994: return "tmpfs";
    case 0x9123683E: return "btrfs";
    case 0x794c7630: return "overlayfs";
    case 0x6969: return "nfs";
    case 0x2fc12fc1: return "zfs";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(s.f_type));
      return buf;
    }
  }
}

Result<std::uint64_t> free_bytes(const std::string& path) {
  struct statvfs vfs {};
  if (::statvfs(path.c_str(), &vfs) != 0) return STRATA_ERRNO(errno, "statvfs", path);
  if (vfs.f_blocks == 0) return UINT64_MAX;  // no capacity reported (ramfs): unlimited
  return static_cast<std::uint64_t>(vfs.f_bavail) * static_cast<std::uint64_t>(vfs.f_frsize);
}

}  // namespace strata::nvme
