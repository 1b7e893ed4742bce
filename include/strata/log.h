// strata/log.h — the one logger of the library. It writes to stderr (never stdout: the CLI
// owns the terminal) with a level, a monotonic timestamp and the source location.
//
// Level from STRATA_LOG_LEVEL (trace, debug, info, warn, error, off; default info) or
// set_log_level(). `STRATA_LOG(kWarn) << "..." ;` builds the line and emits it whole.
// `STRATA_LOG_ONCE(kWarn, "key") << ...` emits at most once per key per process (used for
// deliberate fallbacks, which are logged once and counted in statistics).
//
// Thread-safety: all functions are safe to call from any thread; lines never interleave.
#pragma once

#include <sstream>
#include <string>
#include <string_view>

namespace strata {

enum class LogLevel { kTrace = 0, kDebug, kInfo, kWarn, kError, kOff };

void set_log_level(LogLevel level);
LogLevel log_level();
bool log_enabled(LogLevel level);
// Parses "trace".."off"; returns false for an unknown name.
bool parse_log_level(std::string_view name, LogLevel* out);

// Redirects log lines to `sink` (for tests); nullptr restores stderr.
using LogSink = void (*)(LogLevel, const std::string& line);
void set_log_sink(LogSink sink);

// Lines of a multi-rank job carry their rank ("[strata I r3 ...]"): the rank of the calling
// thread when set (ranks that are threads of one process), else the process's (one rank per
// process under MPI); -1 clears it.
void set_log_process_rank(int rank);
void set_log_thread_rank(int rank);
// The rank the calling thread's lines carry; -1 when none.
int log_rank();

// True the first time it is called with `key` in this process.
bool log_first_time(std::string_view key);

namespace detail {
class LogLine {
 public:
  LogLine(LogLevel level, const char* file, int line);
  ~LogLine();
  LogLine(const LogLine&) = delete;
  LogLine& operator=(const LogLine&) = delete;
  template <typename T>
  LogLine& operator<<(const T& v) {
    os_ << v;
    return *this;
  }

 private:
  LogLevel level_;
  std::ostringstream os_;
};
}  // namespace detail
}  // namespace strata

#define STRATA_LOG(level)                                               \
  if (!::strata::log_enabled(::strata::LogLevel::level)) {              \
  } else                                                                \
    ::strata::detail::LogLine(::strata::LogLevel::level, __FILE__, __LINE__)

#define STRATA_LOG_ONCE(level, key)                                                     \
  if (!::strata::log_enabled(::strata::LogLevel::level) || !::strata::log_first_time(key)) { \
  } else                                                                                \
    ::strata::detail::LogLine(::strata::LogLevel::level, __FILE__, __LINE__)
