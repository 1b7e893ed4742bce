// src/nvme/swap_store.h — SwapStore: slots of bytes in swap files on one or more NVMe
// directories, read and written asynchronously through an IoEngine.
//
// Layout. Each nvme_path gets a private per-run directory (strata-swap-<pid>-<random>,
// mode 0700) holding one swap file (mode 0600, created exclusively, never through a
// symbolic link), preallocated with fallocate at creation so that a full disk fails now,
// with the bytes needed, the bytes free and the path, instead of in the middle of training.
// A slot's bytes are cut into stripe units of nvme.block_size; unit i lives on path
// (first + i) mod N, so one large slot is read from every drive at once and a slot's share
// on each drive is one contiguous extent. The first path of a new slot is the one with most
// free space (round-robin among equals). Extents are padded to the device's direct-I/O
// alignment (its logical block size, queried with statx or sysfs, default 4096) and placed
// on 4 KiB boundaries; a slot's size is exact: the padded tail is never returned or lost.
//
// Buffers. Under O_DIRECT the caller's buffer is used in place when its address is aligned
// (the pinned pool's are); only the last partial block goes through a small aligned bounce
// buffer. An unaligned buffer is copied whole (logged once and counted in stats()).
//
// Checksums. With nvme.checksums each stripe unit carries a CRC-32C computed from the
// caller's bytes on write and verified on read; a mismatch fails the read with
// kDataCorruption naming the file and the offset.
//
// Files and directories are removed by close() (and by the destructor).
//
// Thread-safety: all members may be called from any thread. Several reads of one slot may
// run at once; a write of a slot excludes every other operation on it, and release()
// requires the slot to be idle (violations are failed_precondition, not corruption).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "nvme/extent_allocator.h"
#include "nvme/file.h"
#include "nvme/io_engine.h"

namespace strata::nvme {

struct SwapStoreOptions {
  std::vector<std::string> paths;  // nvme_path directories; one per drive
  std::uint64_t capacity = 0;      // bytes of slot space, split evenly across the paths
};

// A slot handle; stale handles (released slots) are detected by the generation.
struct SwapSlot {
  std::uint32_t index = UINT32_MAX;
  std::uint32_t generation = 0;
  bool valid() const { return index != UINT32_MAX; }
};

// Where one stripe unit of a slot lives (for tests and diagnostics).
struct SwapChunk {
  std::uint32_t path = 0;          // index into the store's paths
  std::string file;                // swap file path
  std::uint64_t file_offset = 0;
  std::uint64_t slot_offset = 0;   // first byte of the unit within the slot
  std::uint64_t length = 0;        // bytes of data (the padding is not counted)
};

struct SwapStats {
  std::uint64_t slots = 0;              // live slots
  std::uint64_t slot_bytes = 0;         // bytes of live slots (exact sizes)
  std::uint64_t reserved_bytes = 0;     // bytes of swap files taken by live slots (padded)
  std::uint64_t capacity_bytes = 0;     // bytes of all swap files
  std::uint64_t reads = 0;
  std::uint64_t writes = 0;
  std::uint64_t bytes_read = 0;
  std::uint64_t bytes_written = 0;
  std::uint64_t tail_bounces = 0;       // partial last blocks staged through a bounce buffer
  std::uint64_t unaligned_copies = 0;   // whole buffers copied because their address was unaligned
  std::uint64_t checksum_failures = 0;
  std::uint64_t zero_fill_preallocations = 0;  // files preallocated by writing zeros (no fallocate)
};

class SwapStore {
 public:
  // Creates the per-run directories and swap files and preallocates them. The engine's
  // config decides O_DIRECT, the stripe unit (block_size) and checksums.
  // REQUIRES: `engine` outlives the store.
  static Result<std::unique_ptr<SwapStore>> create(const SwapStoreOptions& options, IoEngine& engine);

  ~SwapStore();
  SwapStore(const SwapStore&) = delete;
  SwapStore& operator=(const SwapStore&) = delete;

  // A slot for `bytes` bytes. Fails with kOutOfSpace (naming the sizes) when the swap files
  // cannot hold it.
  Result<SwapSlot> allocate(std::uint64_t bytes);
  // REQUIRES: no operation on the slot in flight.
  Status release(SwapSlot slot);

  // Asynchronous write of the whole slot. `data.size()` must equal the slot's size; `data`
  // must stay valid and unchanged until the completion finishes. `then`, if given, runs as
  // the completion's finalizer after the store's own bookkeeping.
  Result<std::shared_ptr<IoCompletion>> write(SwapSlot slot, std::span<const std::byte> data,
                                              IoCompletion::Finalizer then = {});
  // Asynchronous read of the whole slot into `out` (`out.size()` == slot size). The bytes
  // are in `out` once the completion finishes OK (tails copied, checksums verified).
  // Reading a slot that was never written, or whose last write failed, is an error.
  Result<std::shared_ptr<IoCompletion>> read(SwapSlot slot, std::span<std::byte> out,
                                             IoCompletion::Finalizer then = {});

  // Waits for this store's operations, then removes the swap files and directories.
  // Idempotent. Further operations fail.
  Status close();

  Result<std::uint64_t> slot_size(SwapSlot slot) const;
  Result<std::vector<SwapChunk>> layout(SwapSlot slot) const;
  const std::vector<std::string>& paths() const { return paths_; }
  std::vector<std::string> run_directories() const;
  std::vector<std::string> files() const;
  std::uint32_t alignment() const { return alignment_; }
  SwapStats stats() const;

 private:
  struct PathState {
    std::string path;          // the nvme_path as given
    std::string dir_name;      // strata-swap-<pid>-<random>
    std::string dir_path;      // path/dir_name
    std::string file_path;     // dir_path/swap.data
    UniqueFd parent_fd;
    UniqueFd dir_fd;
    UniqueFd file_fd;
    bool file_created = false;
    bool dir_created = false;
    std::uint64_t file_size = 0;
    std::unique_ptr<ExtentAllocator> allocator;
  };
  struct Extent {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;  // 0: the slot has no unit on this path
  };
  enum class SlotState : std::uint8_t { kEmpty, kValid };
  struct Slot {
    bool live = false;
    std::uint32_t generation = 0;
    std::uint64_t size = 0;
    std::uint32_t first_path = 0;
    std::vector<Extent> extents;     // per path
    std::vector<std::uint32_t> crcs; // per stripe unit, valid in kValid with checksums
    SlotState state = SlotState::kEmpty;
    int readers = 0;
    bool writing = false;
  };
  // One stripe unit as the store transfers it.
  struct Unit {
    std::uint32_t path;
    std::uint64_t file_offset;
    std::uint64_t slot_offset;
    std::uint64_t length;
  };

  SwapStore(IoEngine& engine, std::vector<std::string> paths);
  Status init(std::uint64_t capacity);
  Status check_space(const std::vector<std::uint64_t>& sizes) const;
  Status preallocate(PathState& p, std::uint64_t size);
  std::vector<Unit> units(const Slot& s) const;   // REQUIRES: mu_ held or slot pinned
  Result<Slot*> lookup(SwapSlot slot);             // REQUIRES: mu_ held
  Result<const Slot*> lookup(SwapSlot slot) const; // REQUIRES: mu_ held
  Status space_error(const std::string& what, std::size_t path_index, std::uint64_t needed) const;
  void op_started();
  void op_finished();

  IoEngine& engine_;
  const bool direct_;
  const bool checksums_;
  const std::uint64_t stripe_;
  std::vector<std::string> paths_;
  std::uint32_t alignment_ = 4096;   // offsets and lengths under O_DIRECT
  std::uint32_t mem_alignment_ = 4096;
  std::vector<PathState> path_state_;

  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  std::vector<Slot> slots_;              // guarded by mu_
  std::vector<std::uint32_t> free_slots_;  // guarded by mu_
  std::uint32_t next_first_path_ = 0;    // guarded by mu_
  std::uint64_t ops_in_flight_ = 0;      // guarded by mu_
  bool closed_ = false;                  // guarded by mu_
  SwapStats stats_;                      // guarded by mu_
};

}  // namespace strata::nvme
