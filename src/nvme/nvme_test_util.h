// src/nvme/nvme_test_util.h — helpers for the nvme tests only: a scratch directory under
// $STRATA_TEST_TMPDIR (or /tmp) removed at the end, aligned buffers, a seeded byte source.
//
// Thread-safety: ScratchDir and AlignedBytes are plain values; fill_random is reentrant.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <span>
#include <string>

#include <gtest/gtest.h>

namespace strata::nvme::testing {

inline std::string scratch_root() {
  const char* env = std::getenv("STRATA_TEST_TMPDIR");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string("/tmp");
}

// A fresh directory, removed with everything in it when the object goes away.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag = "nvme") {
    std::filesystem::create_directories(scratch_root());
    std::string tmpl = scratch_root() + "/strata-" + tag + "-XXXXXX";
    char* made = ::mkdtemp(tmpl.data());
    if (made == nullptr) {
      ADD_FAILURE() << "mkdtemp in " << scratch_root() << " failed: " << std::strerror(errno);
      return;
    }
    path_ = made;
  }
  ~ScratchDir() {
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  std::string sub(const std::string& name) const {
    std::string p = path_ + "/" + name;
    std::filesystem::create_directories(p);
    return p;
  }

 private:
  std::string path_;
};

// True when the directory's file system accepts O_DIRECT (tmpfs before Linux 6.6 does not).
inline bool supports_direct(const std::string& dir) {
  std::string f = dir + "/.direct-probe";
  int fd = ::open(f.c_str(), O_CREAT | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  ::close(fd);
  ::unlink(f.c_str());
  return true;
}

// Heap bytes at a chosen alignment and offset from it (offset > 0 makes them unaligned).
class AlignedBytes {
 public:
  AlignedBytes(std::size_t size, std::size_t alignment = 4096, std::size_t misalign = 0)
      : size_(size),
        raw_(static_cast<std::byte*>(std::aligned_alloc(alignment, round_up(size + misalign + 64, alignment)))),
        data_(raw_ + misalign) {}
  ~AlignedBytes() { std::free(raw_); }
  AlignedBytes(const AlignedBytes&) = delete;
  AlignedBytes& operator=(const AlignedBytes&) = delete;
  AlignedBytes(AlignedBytes&& o) noexcept : size_(o.size_), raw_(o.raw_), data_(o.data_) {
    o.raw_ = nullptr;
    o.data_ = nullptr;
    o.size_ = 0;
  }

  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::span<std::byte> span() { return {data_, size_}; }
  std::span<const std::byte> cspan() const { return {data_, size_}; }

 private:
  static std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }
  std::size_t size_;
  std::byte* raw_;
  std::byte* data_;
};

inline void fill_random(std::span<std::byte> out, std::mt19937_64& rng) {
  std::size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    std::uint64_t v = rng();
    std::memcpy(out.data() + i, &v, 8);
  }
  std::uint64_t v = rng();
  for (; i < out.size(); ++i) {
    out[i] = static_cast<std::byte>(v & 0xFF);
    v >>= 8;
  }
}

}  // namespace strata::nvme::testing
