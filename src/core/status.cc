#include "strata/status.h"

#include <cerrno>
#include <cstring>
#include <string>

namespace strata {

std::string_view status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kNotFound: return "not found";
    case StatusCode::kPermissionDenied: return "permission denied";
    case StatusCode::kIoError: return "I/O error";
    case StatusCode::kOutOfSpace: return "out of space";
    case StatusCode::kOutOfMemory: return "out of memory";
    case StatusCode::kDataCorruption: return "data corruption";
    case StatusCode::kUnavailable: return "unavailable";
    case StatusCode::kFailedPrecondition: return "failed precondition";
    case StatusCode::kInternal: return "internal error";
  }
  return "unknown";
}

std::string Status::to_string() const {
  if (ok()) return "OK";
  std::string s(status_code_name(code_));
  s += ": ";
  s += message_;
  return s;
}

Status Status::with_context(std::string_view context) const {
  if (ok()) return *this;
  std::string m(context);
  m += ": ";
  m += message_;
  return Status(code_, std::move(m));
}

std::ostream& operator<<(std::ostream& os, const Status& s) { return os << s.to_string(); }

Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
Status permission_denied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
Status io_error(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
Status out_of_space(std::string m) { return {StatusCode::kOutOfSpace, std::move(m)}; }
Status out_of_memory(std::string m) { return {StatusCode::kOutOfMemory, std::move(m)}; }
Status data_corruption(std::string m) { return {StatusCode::kDataCorruption, std::move(m)}; }
Status unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
Status failed_precondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

Status errno_status(int err, std::string_view operation, std::string_view object,
                    const char* file, int line) {
  std::string m(operation);
  if (!object.empty()) {
    m += " '";
    m += object;
    m += "'";
  }
  m += ": ";
  m += std::strerror(err);
  const char* name = strerrorname_np(err);
  if (name != nullptr) {
    m += " (";
    m += name;
    m += ")";
  }
  if (file != nullptr) {
    const char* base = std::strrchr(file, '/');
    m += " [";
    m += base != nullptr ? base + 1 : file;
    m += ":";
    m += std::to_string(line);
    m += "]";
  }
  StatusCode code = StatusCode::kIoError;
  switch (err) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG: code = StatusCode::kOutOfSpace; break;
    case ENOENT:
    case ENOTDIR: code = StatusCode::kNotFound; break;
    case EACCES:
    case EPERM:
    case EROFS: code = StatusCode::kPermissionDenied; break;
    case ENOMEM: code = StatusCode::kOutOfMemory; break;
    case EINVAL: code = StatusCode::kInvalidArgument; break;
    case ENOSYS:
    case EOPNOTSUPP: code = StatusCode::kUnavailable; break;
    default: break;
  }
  return {code, std::move(m)};
}

}  // namespace strata
