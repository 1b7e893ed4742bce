#include "nvme/io_piece.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <climits>
#include <string>

namespace strata::nvme {

std::string path_of_fd(int fd) {
  char link[64];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  char target[PATH_MAX];
  ssize_t n = ::readlink(link, target, sizeof target - 1);
  if (n <= 0) return "fd " + std::to_string(fd);
  return std::string(target, static_cast<std::size_t>(n));
}

Status piece_error(const IoPiece& piece, int err) {
  std::string what = std::string(io_op_name(piece.op)) + " of " + std::to_string(piece.remaining()) +
                     " bytes at offset " + std::to_string(piece.next_offset()) + " of";
  std::string path = path_of_fd(piece.fd);
  if (err == EINVAL) {
    int flags = ::fcntl(piece.fd, F_GETFL);
    if (flags >= 0 && (flags & O_DIRECT) != 0) {
      return invalid_argument(
          what + " '" + path +
          "' was refused with EINVAL on an O_DIRECT file: either the file system does not support "
          "O_DIRECT or the offset, length or buffer address (" +
          std::to_string(reinterpret_cast<std::uintptr_t>(piece.next_data())) +
          ") is not a multiple of its logical block size; set direct = false in [nvme] "
          "(or engine = \"posix\" with direct = false) for file systems without O_DIRECT");
    }
  }
  return STRATA_ERRNO(err, what, path);
}

PieceStep advance_piece(IoPiece& piece, std::int64_t result, Status* error) {
  if (result < 0) {
    int err = static_cast<int>(-result);
    if (err == EAGAIN || err == EINTR) {
      if (++piece.retries > kMaxPieceRetries) {
        *error = piece_error(piece, err).with_context(
            "gave up after " + std::to_string(kMaxPieceRetries) + " retries without progress");
        return PieceStep::kFailed;
      }
      return PieceStep::kResubmitRetry;
    }
    *error = piece_error(piece, err);
    return PieceStep::kFailed;
  }
  auto moved = static_cast<std::uint64_t>(result);
  if (moved > piece.remaining()) {
    *error = internal_error("the kernel reported " + std::to_string(moved) + " bytes for a " +
                            std::to_string(piece.remaining()) + "-byte " +
                            std::string(io_op_name(piece.op)) + " of '" + path_of_fd(piece.fd) + "'");
    return PieceStep::kFailed;
  }
  if (moved == 0) {
    if (piece.op == IoOp::kRead) {
      *error = io_error("read of " + std::to_string(piece.remaining()) + " bytes at offset " +
                        std::to_string(piece.next_offset()) + " of '" + path_of_fd(piece.fd) +
                        "' reached the end of the file (the file is shorter than expected)");
      return PieceStep::kFailed;
    }
    // A write that moves nothing without an error is retried like EAGAIN, bounded.
    if (++piece.retries > kMaxPieceRetries) {
      *error = io_error("write of " + std::to_string(piece.remaining()) + " bytes at offset " +
                        std::to_string(piece.next_offset()) + " of '" + path_of_fd(piece.fd) +
                        "' made no progress after " + std::to_string(kMaxPieceRetries) + " attempts");
      return PieceStep::kFailed;
    }
    return PieceStep::kResubmitRetry;
  }
  piece.done += moved;
  piece.retries = 0;
  return piece.done == piece.length ? PieceStep::kComplete : PieceStep::kResubmitShort;
}

}  // namespace strata::nvme
