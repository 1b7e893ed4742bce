#include "nvme/swap_store.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

#include "nvme/crc32c.h"
#include "strata/log.h"
#include "strata/units.h"

namespace strata::nvme {
namespace {

constexpr const char* kFileName = "swap.data";
constexpr std::uint64_t kPage = 4096;

std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<std::byte, FreeDeleter>;

AlignedBuffer aligned_buffer(std::uint64_t alignment, std::uint64_t size) {
  auto* p = static_cast<std::byte*>(std::aligned_alloc(alignment, align_up(size, alignment)));
  return AlignedBuffer(p);
}

std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string bytes_with_human(std::uint64_t b) {
  return std::to_string(b) + " bytes (" + format_bytes_human(static_cast<double>(b)) + ")";
}

Status file_too_large(const std::string& file, std::uint64_t size) {
  return out_of_space("preallocating " + bytes_with_human(size) + " for swap file '" + file +
                      "' exceeds the largest file this process may create (RLIMIT_FSIZE, see 'ulimit -f') or the "
                      "file system's maximum file size; raise the limit, lower the swap capacity, or add nvme_path "
                      "directories");
}

// Bounce buffers and checksums that must live until an operation's completion finishes.
struct OpState {
  AlignedBuffer whole;                     // the entire slot, padded (unaligned caller buffer)
  struct Tail {
    AlignedBuffer buffer;
    std::uint64_t slot_offset;
    std::uint64_t length;
  };
  std::vector<Tail> tails;
  std::vector<std::uint32_t> crcs;
};

}  // namespace

SwapStore::SwapStore(IoEngine& engine, std::vector<std::string> paths)
    : engine_(engine),
      direct_(engine.config().direct),
      checksums_(engine.config().checksums),
      stripe_(engine.config().block_size),
      paths_(std::move(paths)) {}

Result<std::unique_ptr<SwapStore>> SwapStore::create(const SwapStoreOptions& options, IoEngine& engine) {
  if (options.paths.empty()) {
    return invalid_argument("swap store: no nvme_path given; list at least one directory on an NVMe drive");
  }
  if (options.capacity == 0) return invalid_argument("swap store: capacity is 0 bytes");
  for (std::size_t i = 0; i < options.paths.size(); ++i) {
    if (options.paths[i].empty()) return invalid_argument("swap store: nvme_path[" + std::to_string(i) + "] is empty");
    for (std::size_t j = 0; j < i; ++j) {
      if (options.paths[i] == options.paths[j]) {
        return invalid_argument("swap store: nvme_path lists '" + options.paths[i] + "' twice");
      }
    }
  }
  std::unique_ptr<SwapStore> store(new SwapStore(engine, options.paths));
  Status s = store->init(options.capacity);
  if (!s.ok()) {
    store->close().ignore();  // removes whatever was created
    return s;
  }
  return store;
}

SwapStore::~SwapStore() {
  Status s = close();
  if (!s.ok()) {
    STRATA_LOG(kWarn) << "swap store cleanup: " << s;
  }
}

Status SwapStore::space_error(const std::string& what, std::size_t path_index, std::uint64_t needed) const {
  const std::string& path = path_state_[path_index].path;
  Result<std::uint64_t> avail = free_bytes(path);
  std::string free_text = avail.ok() ? bytes_with_human(*avail) : "an unknown number of bytes";
  return out_of_space(what + ": need " + bytes_with_human(needed) + " under '" + path + "' but " + free_text +
                      " are free; free up space there, lower the swap capacity, or add nvme_path directories "
                      "on other drives");
}

Status SwapStore::check_space(const std::vector<std::uint64_t>& sizes) const {
  // Exceeding RLIMIT_FSIZE would raise SIGXFSZ, which kills the process by default.
  struct rlimit fsize {};
  if (::getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_cur != RLIM_INFINITY) {
    for (std::size_t i = 0; i < path_state_.size(); ++i) {
      if (sizes[i] > fsize.rlim_cur) return file_too_large(path_state_[i].file_path, sizes[i]);
    }
  }
  // Paths on the same file system share its free space.
  std::map<dev_t, std::pair<std::uint64_t, std::vector<std::size_t>>> by_device;
  for (std::size_t i = 0; i < path_state_.size(); ++i) {
    struct stat st {};
    if (::fstat(path_state_[i].parent_fd.get(), &st) != 0) return STRATA_ERRNO(errno, "stat", path_state_[i].path);
    auto& entry = by_device[st.st_dev];
    entry.first += sizes[i];
    entry.second.push_back(i);
  }
  for (const auto& [dev, entry] : by_device) {
    const std::size_t first = entry.second.front();
    STRATA_ASSIGN_OR_RETURN(std::uint64_t avail, free_bytes(path_state_[first].path));
    if (entry.first > avail) {
      std::string what = "not enough free space to preallocate swap files";
      if (entry.second.size() > 1) {
        what += " for";
        for (std::size_t i : entry.second) what += " '" + path_state_[i].path + "'";
        what += " (one file system)";
      }
      return space_error(what, first, entry.first);
    }
  }
  return Status::OK();
}

Status SwapStore::preallocate(PathState& p, std::uint64_t size) {
  if (::fallocate(p.file_fd.get(), 0, 0, static_cast<off_t>(size)) == 0) return Status::OK();
  int err = errno;
  if (err == ENOSPC || err == EDQUOT) {
    std::size_t index = static_cast<std::size_t>(&p - path_state_.data());
    return space_error("preallocating swap file '" + p.file_path + "' failed (" +
                           std::string(strerrorname_np(err) != nullptr ? strerrorname_np(err) : "no space") + ")",
                       index, size);
  }
  if (err == EFBIG) return file_too_large(p.file_path, size);
  if (err != EOPNOTSUPP) {
    return STRATA_ERRNO(err, "fallocate of " + bytes_with_human(size) + " for", p.file_path);
  }
  // No fallocate on this file system: reserve the space by writing zeros, so that running
  // out still happens now rather than mid-training.
  STRATA_LOG_ONCE(kWarn, "swap-zero-fill") << "swap store: the file system of '" << p.path
                                           << "' has no fallocate; preallocating by writing zeros";
  const std::uint64_t chunk = std::max<std::uint64_t>(stripe_, mem_alignment_);
  AlignedBuffer zeros = aligned_buffer(std::max<std::uint64_t>(mem_alignment_, kPage), chunk);
  if (zeros == nullptr) return out_of_memory("swap store: no memory for a " + bytes_with_human(chunk) + " zero buffer");
  std::memset(zeros.get(), 0, chunk);
  for (std::uint64_t off = 0; off < size;) {
    std::uint64_t n = std::min(chunk, size - off);
    ssize_t w = ::pwrite(p.file_fd.get(), zeros.get(), n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      if (e == ENOSPC || e == EDQUOT) {
        return space_error("preallocating swap file '" + p.file_path + "' by writing zeros failed",
                           static_cast<std::size_t>(&p - path_state_.data()), size);
      }
      return STRATA_ERRNO(e, "write of zeros at offset " + std::to_string(off) + " of", p.file_path);
    }
    off += static_cast<std::uint64_t>(w);
  }
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.zero_fill_preallocations;
  return Status::OK();
}

Status SwapStore::init(std::uint64_t capacity) {
  path_state_.resize(paths_.size());
  std::uint32_t rnd = 0;
  for (std::size_t i = 0; i < paths_.size(); ++i) {
    PathState& p = path_state_[i];
    p.path = paths_[i];
    int pfd = ::open(p.path.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    if (pfd < 0) {
      int err = errno;
      if (err == ENOENT) return not_found("nvme_path '" + p.path + "' does not exist; create it or correct nvme_path");
      if (err == ENOTDIR) return invalid_argument("nvme_path '" + p.path + "' is not a directory");
      return STRATA_ERRNO(err, "open nvme_path", p.path);
    }
    p.parent_fd.reset(pfd);
    // A private directory per run: 0700, a name nobody can predict, created exclusively.
    for (int attempt = 0;; ++attempt) {
      if (::getrandom(&rnd, sizeof rnd, 0) != static_cast<ssize_t>(sizeof rnd)) rnd = rnd * 2654435761u + 1;
      char name[64];
      std::snprintf(name, sizeof name, "strata-swap-%d-%08x", static_cast<int>(::getpid()), rnd);
      if (::mkdirat(p.parent_fd.get(), name, 0700) == 0) {
        p.dir_name = name;
        p.dir_created = true;
        break;
      }
      if (errno != EEXIST || attempt >= 16) {
        return STRATA_ERRNO(errno, "create the swap directory '" + std::string(name) + "' in", p.path);
      }
    }
    p.dir_path = p.path + (p.path.back() == '/' ? "" : "/") + p.dir_name;
    int dfd = ::openat(p.parent_fd.get(), p.dir_name.c_str(), O_DIRECTORY | O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) return STRATA_ERRNO(errno, "open the swap directory", p.dir_path);
    p.dir_fd.reset(dfd);
    if (::fchmod(p.dir_fd.get(), 0700) != 0) return STRATA_ERRNO(errno, "chmod 0700", p.dir_path);
    p.file_path = p.dir_path + "/" + kFileName;
    OpenOptions open_options;
    open_options.create = true;
    open_options.direct = direct_;
    STRATA_ASSIGN_OR_RETURN(UniqueFd fd, open_data_file(p.dir_fd.get(), kFileName, open_options, p.file_path));
    p.file_fd = std::move(fd);
    p.file_created = true;
    if (::fchmod(p.file_fd.get(), 0600) != 0) return STRATA_ERRNO(errno, "chmod 0600", p.file_path);
    DioAlignment a = query_dio_alignment(p.file_fd.get());
    alignment_ = std::max(i == 0 ? 0u : alignment_, a.offset);
    mem_alignment_ = std::max(i == 0 ? 0u : mem_alignment_, a.memory);
  }
  if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0) {
    return internal_error("swap store: direct-I/O alignment " + std::to_string(alignment_) + " is not a power of two");
  }
  mem_alignment_ = std::max<std::uint32_t>(mem_alignment_, 512);
  if (stripe_ % alignment_ != 0) {
    return invalid_argument("nvme.block_size " + format_bytes(stripe_) +
                            " is not a multiple of the drive's logical block size " + std::to_string(alignment_));
  }
  const std::uint64_t granule = std::max<std::uint64_t>(alignment_, kPage);
  const std::uint64_t n = paths_.size();
  const std::uint64_t per_path = align_up((capacity + n - 1) / n, granule);
  std::vector<std::uint64_t> sizes(paths_.size(), per_path);
  STRATA_RETURN_IF_ERROR(check_space(sizes));
  for (std::size_t i = 0; i < path_state_.size(); ++i) {
    PathState& p = path_state_[i];
    STRATA_RETURN_IF_ERROR(preallocate(p, per_path));
    p.file_size = per_path;
    if (direct_) {
      // Some file systems accept O_DIRECT at open and refuse it on the first transfer.
      AlignedBuffer probe = aligned_buffer(mem_alignment_, alignment_);
      if (probe == nullptr) return out_of_memory("swap store: no memory for a probe buffer");
      if (::pread(p.file_fd.get(), probe.get(), alignment_, 0) < 0) {
        if (errno == EINVAL) return direct_io_refused(p.file_path, "reading");
        return STRATA_ERRNO(errno, "read probe of", p.file_path);
      }
    }
    p.allocator = std::make_unique<ExtentAllocator>(per_path);
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.capacity_bytes = per_path * n;
  return Status::OK();
}

std::vector<SwapStore::Unit> SwapStore::units(const Slot& s) const {
  std::vector<Unit> out;
  const std::uint64_t n = paths_.size();
  const std::uint64_t count = (s.size + stripe_ - 1) / stripe_;
  out.reserve(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    auto p = static_cast<std::uint32_t>((s.first_path + i) % n);
    Unit u;
    u.path = p;
    u.file_offset = s.extents[p].offset + (i / n) * stripe_;
    u.slot_offset = i * stripe_;
    u.length = std::min(stripe_, s.size - i * stripe_);
    out.push_back(u);
  }
  return out;
}

Result<SwapStore::Slot*> SwapStore::lookup(SwapSlot slot) {
  if (slot.index >= slots_.size() || !slots_[slot.index].live || slots_[slot.index].generation != slot.generation) {
    return invalid_argument("swap slot " + std::to_string(slot.index) + " (generation " +
                            std::to_string(slot.generation) + ") is not allocated (released or never allocated)");
  }
  return &slots_[slot.index];
}

Result<const SwapStore::Slot*> SwapStore::lookup(SwapSlot slot) const {
  if (slot.index >= slots_.size() || !slots_[slot.index].live || slots_[slot.index].generation != slot.generation) {
    return invalid_argument("swap slot " + std::to_string(slot.index) + " (generation " +
                            std::to_string(slot.generation) + ") is not allocated (released or never allocated)");
  }
  return &slots_[slot.index];
}

Result<SwapSlot> SwapStore::allocate(std::uint64_t bytes) {
  if (bytes == 0) return invalid_argument("swap store: a slot of 0 bytes was requested");
  const std::uint32_t n = static_cast<std::uint32_t>(paths_.size());
  const std::uint64_t granule = std::max<std::uint64_t>(alignment_, kPage);
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return failed_precondition("swap store is closed");
  // Start on the path with most free space; among equals, continue the round-robin.
  std::uint32_t first = next_first_path_ % n;
  for (std::uint32_t k = 0; k < n; ++k) {
    std::uint32_t p = (next_first_path_ + k) % n;
    if (path_state_[p].allocator->free_bytes() > path_state_[first].allocator->free_bytes()) first = p;
  }
  next_first_path_ = (first + 1) % n;

  Slot s;
  s.live = true;
  s.size = bytes;
  s.first_path = first;
  s.extents.assign(n, Extent{});
  // Bytes each path holds: its stripe units, each padded to the alignment.
  std::vector<std::uint64_t> need(n, 0);
  const std::uint64_t count = (bytes + stripe_ - 1) / stripe_;
  for (std::uint64_t i = 0; i < count; ++i) {
    std::uint64_t len = std::min(stripe_, bytes - i * stripe_);
    need[(first + i) % n] += align_up(len, alignment_);
  }
  for (std::uint32_t p = 0; p < n; ++p) {
    if (need[p] == 0) continue;
    std::uint64_t len = align_up(need[p], granule);
    std::optional<std::uint64_t> off = path_state_[p].allocator->allocate(len);
    if (!off) {
      for (std::uint32_t q = 0; q < p; ++q) {
        if (s.extents[q].length != 0) path_state_[q].allocator->release(s.extents[q].offset, s.extents[q].length).ignore();
      }
      const ExtentAllocator& a = *path_state_[p].allocator;
      return out_of_space("swap store full: a slot of " + bytes_with_human(bytes) + " needs " + bytes_with_human(len) +
                          " in '" + path_state_[p].file_path + "' whose largest free range is " +
                          bytes_with_human(a.largest_free()) + " (" + bytes_with_human(a.free_bytes()) + " free of " +
                          bytes_with_human(a.capacity()) + "); raise the swap capacity");
    }
    s.extents[p] = Extent{*off, len};
  }
  std::uint32_t index;
  if (!free_slots_.empty()) {
    index = free_slots_.back();
    free_slots_.pop_back();
    s.generation = slots_[index].generation + 1;
    slots_[index] = std::move(s);
  } else {
    index = static_cast<std::uint32_t>(slots_.size());
    slots_.push_back(std::move(s));
  }
  ++stats_.slots;
  stats_.slot_bytes += bytes;
  for (const Extent& e : slots_[index].extents) stats_.reserved_bytes += e.length;
  return SwapSlot{index, slots_[index].generation};
}

Status SwapStore::release(SwapSlot slot) {
  std::lock_guard<std::mutex> lock(mu_);
  STRATA_ASSIGN_OR_RETURN(Slot * s, lookup(slot));
  if (s->writing || s->readers > 0) {
    return failed_precondition("swap slot " + std::to_string(slot.index) + " released while an I/O on it is in flight");
  }
  Status result;
  for (std::size_t p = 0; p < s->extents.size(); ++p) {
    const Extent& e = s->extents[p];
    if (e.length == 0) continue;
    Status r = path_state_[p].allocator->release(e.offset, e.length);
    if (!r.ok() && result.ok()) result = r;
    stats_.reserved_bytes -= e.length;
  }
  --stats_.slots;
  stats_.slot_bytes -= s->size;
  s->live = false;
  s->extents.clear();
  s->crcs.clear();
  s->state = SlotState::kEmpty;
  free_slots_.push_back(slot.index);
  return result;
}

void SwapStore::op_started() { ++ops_in_flight_; }

void SwapStore::op_finished() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--ops_in_flight_ == 0) idle_cv_.notify_all();
}

Result<std::shared_ptr<IoCompletion>> SwapStore::write(SwapSlot slot, std::span<const std::byte> data,
                                                       IoCompletion::Finalizer then) {
  std::vector<Unit> us;
  std::uint64_t size;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return failed_precondition("swap store is closed");
    STRATA_ASSIGN_OR_RETURN(Slot * s, lookup(slot));
    if (data.size() != s->size) {
      return invalid_argument("swap write of " + std::to_string(data.size()) + " bytes to slot " +
                              std::to_string(slot.index) + " of " + std::to_string(s->size) + " bytes");
    }
    if (s->writing || s->readers > 0) {
      return failed_precondition("swap slot " + std::to_string(slot.index) + " written while another I/O on it is in flight");
    }
    s->writing = true;
    us = units(*s);
    size = s->size;
    op_started();
  }
  auto state = std::make_shared<OpState>();
  const std::byte* src = data.data();
  bool copied = false;
  if (direct_ && reinterpret_cast<std::uintptr_t>(src) % mem_alignment_ != 0) {
    state->whole = aligned_buffer(mem_alignment_, align_up(size, alignment_));
    if (state->whole != nullptr) {
      std::memcpy(state->whole.get(), src, size);
      std::memset(state->whole.get() + size, 0, align_up(size, alignment_) - size);
      src = state->whole.get();
      copied = true;
      STRATA_LOG_ONCE(kWarn, "swap-unaligned-write")
          << "swap store: a write buffer is not " << mem_alignment_
          << "-byte aligned; it is copied before O_DIRECT (use the pinned pool's buffers to avoid the copy)";
    }
  }
  if (checksums_) {
    state->crcs.reserve(us.size());
    for (const Unit& u : us) state->crcs.push_back(crc32c(src + u.slot_offset, u.length));
  }
  auto completion = IoCompletion::make([this, slot, state, then = std::move(then), size](Status st) mutable {
    {
      std::lock_guard<std::mutex> lock(mu_);
      Slot& s = slots_[slot.index];  // live: release() refuses while writing
      s.writing = false;
      if (st.ok()) {
        s.state = SlotState::kValid;
        s.crcs = std::move(state->crcs);
        ++stats_.writes;
        stats_.bytes_written += size;
      } else {
        s.state = SlotState::kEmpty;  // a failed write leaves the slot unreadable
      }
    }
    state.reset();
    Status out = then ? then(std::move(st)) : std::move(st);
    op_finished();
    return out;
  });
  std::vector<IoRequest> reqs;
  reqs.reserve(us.size() + 1);
  const bool padded = state->whole != nullptr;
  Status prep;
  if (direct_ && !padded && reinterpret_cast<std::uintptr_t>(src) % mem_alignment_ != 0) {
    prep = out_of_memory("swap store: no memory to align a " + bytes_with_human(size) + " write");
  }
  for (const Unit& u : us) {
    if (!prep.ok()) break;
    int fd = path_state_[u.path].file_fd.get();
    if (!direct_) {
      reqs.push_back(IoRequest::write(fd, u.file_offset, {src + u.slot_offset, u.length}, completion));
      continue;
    }
    std::uint64_t body = u.length / alignment_ * alignment_;
    std::uint64_t tail = u.length - body;
    if (body > 0) reqs.push_back(IoRequest::write(fd, u.file_offset, {src + u.slot_offset, body}, completion));
    if (tail == 0) continue;
    if (padded) {  // the copy is zero-padded to the alignment already
      reqs.push_back(IoRequest::write(fd, u.file_offset + body, {src + u.slot_offset + body, alignment_}, completion));
      continue;
    }
    OpState::Tail t{aligned_buffer(mem_alignment_, alignment_), u.slot_offset + body, tail};
    if (t.buffer == nullptr) {
      prep = out_of_memory("swap store: no memory for a tail buffer");
      break;
    }
    std::memcpy(t.buffer.get(), src + u.slot_offset + body, tail);
    std::memset(t.buffer.get() + tail, 0, alignment_ - tail);
    reqs.push_back(IoRequest::write(fd, u.file_offset + body, {t.buffer.get(), alignment_}, completion));
    state->tails.push_back(std::move(t));
  }
  if (prep.ok()) prep = engine_.submit(reqs);
  if (!prep.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    slots_[slot.index].writing = false;
    if (--ops_in_flight_ == 0) idle_cv_.notify_all();
    return prep.with_context("swap write of slot " + std::to_string(slot.index));
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.tail_bounces += state->tails.size();
  if (copied) ++stats_.unaligned_copies;
  return completion;
}

Result<std::shared_ptr<IoCompletion>> SwapStore::read(SwapSlot slot, std::span<std::byte> out,
                                                      IoCompletion::Finalizer then) {
  std::vector<Unit> us;
  std::uint64_t size;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return failed_precondition("swap store is closed");
    STRATA_ASSIGN_OR_RETURN(Slot * s, lookup(slot));
    if (out.size() != s->size) {
      return invalid_argument("swap read of " + std::to_string(out.size()) + " bytes from slot " +
                              std::to_string(slot.index) + " of " + std::to_string(s->size) + " bytes");
    }
    if (s->writing) {
      return failed_precondition("swap slot " + std::to_string(slot.index) + " read while a write to it is in flight");
    }
    if (s->state != SlotState::kValid) {
      return failed_precondition("swap slot " + std::to_string(slot.index) +
                                 " holds no data: it was never written or its last write failed");
    }
    ++s->readers;
    us = units(*s);
    size = s->size;
    op_started();
  }
  auto state = std::make_shared<OpState>();
  std::byte* dst = out.data();
  bool copied = false;
  Status prep;
  if (direct_ && reinterpret_cast<std::uintptr_t>(dst) % mem_alignment_ != 0) {
    state->whole = aligned_buffer(mem_alignment_, align_up(size, alignment_));
    if (state->whole == nullptr) {
      prep = out_of_memory("swap store: no memory to align a " + bytes_with_human(size) + " read");
    } else {
      dst = state->whole.get();
      copied = true;
      STRATA_LOG_ONCE(kWarn, "swap-unaligned-read")
          << "swap store: a read buffer is not " << mem_alignment_
          << "-byte aligned; data is read into an aligned copy first (use the pinned pool's buffers)";
    }
  }
  std::vector<IoRequest> reqs;
  reqs.reserve(us.size() + 1);
  std::shared_ptr<IoCompletion> completion;
  // Gathers the tails and verifies the checksums once every piece has arrived.
  auto finalize = [this, slot, state, us, out, size, then = std::move(then)](Status st) mutable {
    std::uint64_t bad = 0;
    if (st.ok()) {
      for (const OpState::Tail& t : state->tails) std::memcpy(out.data() + t.slot_offset, t.buffer.get(), t.length);
      if (state->whole != nullptr) std::memcpy(out.data(), state->whole.get(), size);
      if (checksums_) {
        std::vector<std::uint32_t> expected;
        {
          std::lock_guard<std::mutex> lock(mu_);
          expected = slots_[slot.index].crcs;  // stable: writes are excluded while reading
        }
        for (std::size_t i = 0; i < us.size() && i < expected.size(); ++i) {
          std::uint32_t got = crc32c(out.data() + us[i].slot_offset, us[i].length);
          if (got == expected[i]) continue;
          ++bad;
          if (st.ok()) {
            st = data_corruption("checksum mismatch in swap file '" + path_state_[us[i].path].file_path +
                                 "' at offset " + std::to_string(us[i].file_offset) + " (" +
                                 std::to_string(us[i].length) + " bytes, bytes " + std::to_string(us[i].slot_offset) +
                                 ".." + std::to_string(us[i].slot_offset + us[i].length) + " of slot " +
                                 std::to_string(slot.index) + "): stored crc32c " + hex32(expected[i]) + ", read " +
                                 hex32(got));
          }
        }
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      --slots_[slot.index].readers;
      stats_.checksum_failures += bad;
      if (st.ok()) {
        ++stats_.reads;
        stats_.bytes_read += size;
      }
    }
    state.reset();
    Status result = then ? then(std::move(st)) : std::move(st);
    op_finished();
    return result;
  };
  completion = IoCompletion::make(std::move(finalize));
  const bool padded = state->whole != nullptr;
  for (const Unit& u : us) {
    if (!prep.ok()) break;
    int fd = path_state_[u.path].file_fd.get();
    if (!direct_) {
      reqs.push_back(IoRequest::read(fd, u.file_offset, {dst + u.slot_offset, u.length}, completion));
      continue;
    }
    std::uint64_t body = u.length / alignment_ * alignment_;
    std::uint64_t tail = u.length - body;
    if (body > 0) reqs.push_back(IoRequest::read(fd, u.file_offset, {dst + u.slot_offset, body}, completion));
    if (tail == 0) continue;
    if (padded) {
      reqs.push_back(IoRequest::read(fd, u.file_offset + body, {dst + u.slot_offset + body, alignment_}, completion));
      continue;
    }
    OpState::Tail t{aligned_buffer(mem_alignment_, alignment_), u.slot_offset + body, tail};
    if (t.buffer == nullptr) {
      prep = out_of_memory("swap store: no memory for a tail buffer");
      break;
    }
    reqs.push_back(IoRequest::read(fd, u.file_offset + body, {t.buffer.get(), alignment_}, completion));
    state->tails.push_back(std::move(t));
  }
  if (prep.ok()) prep = engine_.submit(reqs);
  if (!prep.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    --slots_[slot.index].readers;
    if (--ops_in_flight_ == 0) idle_cv_.notify_all();
    return prep.with_context("swap read of slot " + std::to_string(slot.index));
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.tail_bounces += state->tails.size();
  if (copied) ++stats_.unaligned_copies;
  return completion;
}

Status SwapStore::close() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    closed_ = true;
    idle_cv_.wait(lock, [&] { return ops_in_flight_ == 0; });
  }
  Status result;
  auto note = [&](Status s) {
    if (!s.ok() && result.ok()) result = std::move(s);
  };
  for (PathState& p : path_state_) {
    p.file_fd.reset();
    if (p.file_created) {
      if (::unlinkat(p.dir_fd.get(), kFileName, 0) != 0 && errno != ENOENT) {
        note(STRATA_ERRNO(errno, "remove swap file", p.file_path));
      }
      p.file_created = false;
    }
    p.dir_fd.reset();
    if (p.dir_created) {
      if (::unlinkat(p.parent_fd.get(), p.dir_name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
        note(STRATA_ERRNO(errno, "remove swap directory", p.dir_path));
      }
      p.dir_created = false;
    }
    p.parent_fd.reset();
  }
  return result;
}

Result<std::uint64_t> SwapStore::slot_size(SwapSlot slot) const {
  std::lock_guard<std::mutex> lock(mu_);
  STRATA_ASSIGN_OR_RETURN(const Slot* s, lookup(slot));
  return s->size;
}

Result<std::vector<SwapChunk>> SwapStore::layout(SwapSlot slot) const {
  std::lock_guard<std::mutex> lock(mu_);
  STRATA_ASSIGN_OR_RETURN(const Slot* s, lookup(slot));
  std::vector<SwapChunk> out;
  for (const Unit& u : units(*s)) {
    out.push_back(SwapChunk{u.path, path_state_[u.path].file_path, u.file_offset, u.slot_offset, u.length});
  }
  return out;
}

std::vector<std::string> SwapStore::run_directories() const {
  std::vector<std::string> out;
  for (const PathState& p : path_state_) out.push_back(p.dir_path);
  return out;
}

std::vector<std::string> SwapStore::files() const {
  std::vector<std::string> out;
  for (const PathState& p : path_state_) out.push_back(p.file_path);
  return out;
}

SwapStats SwapStore::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace strata::nvme
