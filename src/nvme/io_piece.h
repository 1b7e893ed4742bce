// src/nvme/io_piece.h — the request record every backend keeps per in-flight operation
// (liburing's io_uring-cp.c `struct io_data`), and the one place that decides what a
// transfer result means: done, resubmit the rest (short transfer, EAGAIN, EINTR) or fail.
//
// Thread-safety: an IoPiece is owned by one I/O thread at a time; the functions are pure
// apart from reading /proc for error messages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "nvme/io_engine.h"

namespace strata::nvme {

struct IoPiece {
  IoOp op = IoOp::kRead;
  int fd = -1;
  std::uint64_t offset = 0;       // file offset of the piece's first byte
  std::byte* data = nullptr;      // buffer of the piece's first byte
  std::uint64_t length = 0;       // bytes in the piece
  std::uint64_t done = 0;         // bytes already transferred
  int fixed_index = -1;           // registered buffer holding `data`, or -1
  int retries = 0;                // consecutive resubmissions without progress
  std::shared_ptr<IoCompletion> completion;

  std::uint64_t remaining() const { return length - done; }
  std::uint64_t next_offset() const { return offset + done; }
  std::byte* next_data() const { return data + done; }
};

enum class PieceStep : std::uint8_t {
  kComplete,        // every byte moved
  kResubmitShort,   // part moved; submit the rest from next_offset()
  kResubmitRetry,   // nothing moved but the kernel asked to try again (EAGAIN, EINTR)
  kFailed,          // *error holds the Status
};

// Consecutive no-progress resubmissions after which a piece fails instead of spinning.
constexpr int kMaxPieceRetries = 10000;

// Applies the result of one transfer of the outstanding part: bytes moved (>= 0) or
// -errno. A read that moves 0 bytes hit the end of the file and fails.
PieceStep advance_piece(IoPiece& piece, std::int64_t result, Status* error);

// Status for a piece that failed with `err`, naming operation, length, offset and file.
// EINVAL on an O_DIRECT descriptor explains alignment and names the profile fix.
Status piece_error(const IoPiece& piece, int err);

// The path behind a descriptor (from /proc/self/fd), or "fd N" when it cannot be read.
std::string path_of_fd(int fd);

}  // namespace strata::nvme
