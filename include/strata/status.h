// strata/status.h — errors as values: Status, Result<T> and the propagation macros.
//
// Every operation that can fail returns a [[nodiscard]] Status or Result<T>. A Status carries
// a code (what kind of failure, so callers can react) and a message that names the operation
// and the object it failed on (so users can act). No exception crosses the public API.
//
// Thread-safety: Status and Result are values; distinct objects may be used from distinct
// threads freely, one object needs external synchronisation like any value type.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>

namespace strata {

enum class StatusCode : std::uint8_t {
  kOk = 0,
  kInvalidArgument,     // the caller (or a profile, or a command line) asked for something wrong
  kNotFound,            // a file, key, tensor or device that should exist does not
  kPermissionDenied,    // the OS refused access to a path or resource
  kIoError,             // a read, write, sync or other I/O operation failed
  kOutOfSpace,          // a disk or file system is full
  kOutOfMemory,         // a memory pool or a configured budget cannot satisfy a request
  kDataCorruption,      // bytes read back are not what was written (checksum, format)
  kUnavailable,         // a backend or piece of hardware is not present on this machine
  kFailedPrecondition,  // the object is not in a state that allows the operation
  kInternal,            // a bug in strata; the message says where
};

// Stable lower-case name of a code, e.g. "out of space".
std::string_view status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {
    if (code_ == StatusCode::kOk) message_.clear();
  }

  static Status OK() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "out of space: write '/nvme/swap.0' at offset 4096: No space left on device (ENOSPC)"
  std::string to_string() const;

  // Returns a copy whose message is prefixed by `context: `. OK stays OK.
  Status with_context(std::string_view context) const;

  // Marks a Status as deliberately unchecked (e.g. best-effort cleanup on an error path).
  void ignore() const {}

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

std::ostream& operator<<(std::ostream& os, const Status& s);

// Constructors for each code; the message should name the operation and the object.
Status invalid_argument(std::string message);
Status not_found(std::string message);
Status permission_denied(std::string message);
Status io_error(std::string message);
Status out_of_space(std::string message);
Status out_of_memory(std::string message);
Status data_corruption(std::string message);
Status unavailable(std::string message);
Status failed_precondition(std::string message);
Status internal_error(std::string message);

// The one helper that turns an errno value into a Status. `operation` says what was being
// done ("open", "pwrite at offset 4096"), `object` what it was done to (usually a path).
// ENOSPC/EDQUOT become kOutOfSpace, ENOENT kNotFound, EACCES/EPERM/EROFS kPermissionDenied,
// ENOMEM kOutOfMemory, EINVAL kInvalidArgument, everything else kIoError.
Status errno_status(int err, std::string_view operation, std::string_view object,
                    const char* file, int line);
#define STRATA_ERRNO(err, operation, object) \
  ::strata::errno_status((err), (operation), (object), __FILE__, __LINE__)

// Result<T>: a T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (status_.ok()) status_ = internal_error("Result constructed from an OK Status without a value");
  }

  bool ok() const { return value_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Status& status() const { return status_; }

  // REQUIRES: ok().
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }
  T&& operator*() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

  T value_or(T fallback) const& { return ok() ? *value_ : std::move(fallback); }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace strata

#define STRATA_CONCAT_INNER_(a, b) a##b
#define STRATA_CONCAT_(a, b) STRATA_CONCAT_INNER_(a, b)

// Returns the Status of `expr` from the enclosing function when it is not OK.
#define STRATA_RETURN_IF_ERROR(expr)                  \
  do {                                                \
    ::strata::Status strata_status_ = (expr);         \
    if (!strata_status_.ok()) return strata_status_;  \
  } while (0)

// `STRATA_ASSIGN_OR_RETURN(auto x, make_x());` declares x from a Result or returns its Status.
#define STRATA_ASSIGN_OR_RETURN(lhs, expr) \
  STRATA_ASSIGN_OR_RETURN_IMPL_(STRATA_CONCAT_(strata_result_, __LINE__), lhs, expr)
#define STRATA_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()
