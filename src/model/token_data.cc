// TokenDataset of strata/data.h: memory-mapped byte and uint16 token files, the built-in text,
// and the documented sampling rule.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "strata/data.h"

namespace strata {

struct TokenDataset::Impl {
  std::string name;
  TokenFormat format = TokenFormat::kBytes;
  // Either a read-only mapping of a file, or bytes owned here.
  const std::byte* data = nullptr;
  std::size_t bytes = 0;
  void* map = nullptr;
  std::vector<std::byte> owned;
  std::uint32_t vocab_needed = 256;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (map != nullptr) munmap(map, bytes);
  }

  std::uint64_t count() const { return format == TokenFormat::kU16 ? bytes / 2 : bytes; }
  std::uint32_t at(std::uint64_t i) const {
    if (format == TokenFormat::kBytes) return static_cast<std::uint32_t>(data[i]);
    return static_cast<std::uint32_t>(data[2 * i]) | static_cast<std::uint32_t>(data[2 * i + 1]) << 8;
  }
  // The largest token id of u16 data, plus one.
  std::uint32_t scan_vocab() const {
    if (format == TokenFormat::kBytes) return 256;
    std::uint32_t mx = 0;
    const std::uint64_t n = count();
    for (std::uint64_t i = 0; i < n; ++i) mx = std::max(mx, at(i));
    return n == 0 ? 0 : mx + 1;
  }
};

Result<TokenDataset> TokenDataset::open(const std::string& path) {
  const bool u16 = path.size() >= 4 && path.compare(path.size() - 4, 4, ".u16") == 0;
  return open(path, u16 ? TokenFormat::kU16 : TokenFormat::kBytes);
}

Result<TokenDataset> TokenDataset::open(const std::string& path, TokenFormat format) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return STRATA_ERRNO(errno, "open token data", path);
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    const int err = errno;
    ::close(fd);
    return STRATA_ERRNO(err, "stat token data", path);
  }
  if (!S_ISREG(sb.st_mode)) {
    ::close(fd);
    return invalid_argument("token data '" + path + "' is not a regular file");
  }
  auto impl = std::make_shared<Impl>();
  impl->name = path;
  impl->format = format;
  impl->bytes = static_cast<std::size_t>(sb.st_size);
  if (format == TokenFormat::kU16 && impl->bytes % 2 != 0) {
    ::close(fd);
    return data_corruption("token data '" + path + "' has " + std::to_string(impl->bytes) +
                           " bytes, an odd number: a .u16 file holds two bytes per token");
  }
  if (impl->bytes > 0) {
    void* m = mmap(nullptr, impl->bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      impl->bytes = 0;
      return STRATA_ERRNO(err, "mmap token data", path);
    }
    madvise(m, impl->bytes, MADV_SEQUENTIAL);
    impl->map = m;
    impl->data = static_cast<const std::byte*>(m);
  }
  ::close(fd);
  impl->vocab_needed = impl->scan_vocab();
  return TokenDataset(std::move(impl));
}

Result<TokenDataset> TokenDataset::default_text() {
  const std::string dir = kDefaultTextDir;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    return STRATA_ERRNO(errno, "open the built-in text directory (give a data file with --data or train.data)", dir);
  }
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    const std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    struct stat sb;
    // lstat: links (GPL -> GPL-3) would repeat a text.
    if (lstat((dir + "/" + n).c_str(), &sb) == 0 && S_ISREG(sb.st_mode)) names.push_back(n);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  auto impl = std::make_shared<Impl>();
  for (const std::string& n : names) {
    const std::string path = dir + "/" + n;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return STRATA_ERRNO(errno, "open", path);
    std::byte buf[65536];
    for (;;) {
      const ssize_t r = ::read(fd, buf, sizeof buf);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        const int err = errno;
        ::close(fd);
        return STRATA_ERRNO(err, "read", path);
      }
      if (r == 0) break;
      impl->owned.insert(impl->owned.end(), buf, buf + r);
    }
    ::close(fd);
  }
  if (impl->owned.empty()) return not_found("the built-in text directory " + dir + " holds no regular files");
  impl->name = dir + "/* (" + std::to_string(names.size()) + " files)";
  impl->data = impl->owned.data();
  impl->bytes = impl->owned.size();
  return TokenDataset(std::move(impl));
}

TokenDataset TokenDataset::from_tokens(std::vector<std::uint16_t> tokens, std::string name) {
  auto impl = std::make_shared<Impl>();
  impl->name = std::move(name);
  impl->format = TokenFormat::kU16;
  impl->owned.resize(tokens.size() * 2);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    impl->owned[2 * i] = static_cast<std::byte>(tokens[i] & 0xff);
    impl->owned[2 * i + 1] = static_cast<std::byte>(tokens[i] >> 8);
  }
  impl->data = impl->owned.data();
  impl->bytes = impl->owned.size();
  impl->vocab_needed = impl->scan_vocab();
  return TokenDataset(std::move(impl));
}

const std::string& TokenDataset::name() const { return impl_->name; }
TokenFormat TokenDataset::format() const { return impl_->format; }
std::uint64_t TokenDataset::size() const { return impl_->count(); }
std::uint32_t TokenDataset::token(std::uint64_t i) const { return impl_->at(i); }
std::uint32_t TokenDataset::vocab_needed() const { return impl_->vocab_needed; }

Status TokenDataset::check(int vocab, int seq_len) const {
  const std::uint64_t n = size();
  if (seq_len < 1) return invalid_argument("token data: seq_len = " + std::to_string(seq_len) + "; it must be positive");
  if (n < static_cast<std::uint64_t>(seq_len) + 2) {
    return invalid_argument("token data '" + name() + "' has " + std::to_string(n) + " tokens; seq_len " +
                            std::to_string(seq_len) + " needs at least " + std::to_string(seq_len + 2) +
                            " (give more data or a shorter seq_len)");
  }
  if (vocab_needed() > static_cast<std::uint32_t>(std::max(vocab, 0))) {
    std::uint64_t first = 0;
    while (first < n && token(first) < static_cast<std::uint32_t>(vocab)) ++first;
    return invalid_argument("token data '" + name() + "' holds token id " + std::to_string(token(first)) +
                            " at position " + std::to_string(first) + ", outside the model's vocabulary of " +
                            std::to_string(vocab) + " (set train.vocab to at least " +
                            std::to_string(vocab_needed()) + ")");
  }
  return Status::OK();
}

std::uint64_t TokenDataset::offset(std::int64_t step, int micro, int row, const BatchShape& s) const {
  __extension__ typedef unsigned __int128 U;
  const U global_rows = static_cast<U>(s.micro_batch) * static_cast<U>(s.dp_ranks);
  const U global_row = static_cast<U>(s.dp_rank) * static_cast<U>(s.micro_batch) + static_cast<U>(row);
  const U start = ((static_cast<U>(step) * static_cast<U>(s.grad_accum) + static_cast<U>(micro)) * global_rows +
                   global_row) *
                  static_cast<U>(s.seq_len);
  const U modulus = static_cast<U>(size() - static_cast<std::uint64_t>(s.seq_len) - 1);
  return static_cast<std::uint64_t>(start % modulus);
}

Status TokenDataset::batch(std::int64_t step, int micro, const BatchShape& s, std::span<std::int32_t> inputs,
                           std::span<std::int32_t> targets) const {
  if (s.micro_batch < 1 || s.grad_accum < 1 || s.seq_len < 1) {
    return invalid_argument("token data: batch shape must be positive (micro_batch " + std::to_string(s.micro_batch) +
                            ", grad_accum " + std::to_string(s.grad_accum) + ", seq_len " +
                            std::to_string(s.seq_len) + ")");
  }
  if (s.dp_ranks < 1 || s.dp_rank < 0 || s.dp_rank >= s.dp_ranks) {
    return invalid_argument("token data: data-parallel rank " + std::to_string(s.dp_rank) + " is not one of " +
                            std::to_string(s.dp_ranks) + " ranks");
  }
  if (step < 0 || micro < 0 || micro >= s.grad_accum) {
    return invalid_argument("token data: step " + std::to_string(step) + " micro-step " + std::to_string(micro) +
                            " is outside the run (micro-steps 0.." + std::to_string(s.grad_accum - 1) + ")");
  }
  const std::size_t need = static_cast<std::size_t>(s.micro_batch) * static_cast<std::size_t>(s.seq_len);
  if (inputs.size() != need || targets.size() != need) {
    return invalid_argument("token data: inputs and targets must hold B * T = " + std::to_string(need) + " ids");
  }
  if (size() < static_cast<std::uint64_t>(s.seq_len) + 2) return check(static_cast<int>(vocab_needed()), s.seq_len);
  const auto T = static_cast<std::size_t>(s.seq_len);
  for (int r = 0; r < s.micro_batch; ++r) {
    const std::uint64_t off = offset(step, micro, r, s);
    for (std::size_t t = 0; t < T; ++t) {
      inputs[static_cast<std::size_t>(r) * T + t] = static_cast<std::int32_t>(token(off + t));
      targets[static_cast<std::size_t>(r) * T + t] = static_cast<std::int32_t>(token(off + t + 1));
    }
  }
  return Status::OK();
}

}  // namespace strata
