#include "strata/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>

namespace strata {
namespace {

LogLevel initial_level() {
  const char* env = std::getenv("STRATA_LOG_LEVEL");
  LogLevel level = LogLevel::kInfo;
  if (env != nullptr && !parse_log_level(env, &level)) {
    std::fprintf(stderr, "strata: STRATA_LOG_LEVEL='%s' is not one of trace, debug, info, warn, error, off; using info\n", env);
  }
  return level;
}

std::atomic<int>& level_ref() {
  static std::atomic<int> level{static_cast<int>(initial_level())};
  return level;
}

std::mutex& log_mutex() {
  static std::mutex m;
  return m;
}

std::atomic<LogSink> g_sink{nullptr};

const auto g_start = std::chrono::steady_clock::now();

const char* level_tag(LogLevel l) {
  switch (l) {
    case LogLevel::kTrace: return "T";
    case LogLevel::kDebug: return "D";
    case LogLevel::kInfo: return "I";
    case LogLevel::kWarn: return "W";
    case LogLevel::kError: return "E";
    case LogLevel::kOff: return "-";
  }
  return "?";
}

}  // namespace

void set_log_level(LogLevel level) { level_ref().store(static_cast<int>(level)); }
LogLevel log_level() { return static_cast<LogLevel>(level_ref().load()); }
bool log_enabled(LogLevel level) {
  return level != LogLevel::kOff && static_cast<int>(level) >= level_ref().load(std::memory_order_relaxed);
}

bool parse_log_level(std::string_view name, LogLevel* out) {
  static constexpr std::pair<const char*, LogLevel> kNames[] = {
      {"trace", LogLevel::kTrace}, {"debug", LogLevel::kDebug}, {"info", LogLevel::kInfo},
      {"warn", LogLevel::kWarn},   {"error", LogLevel::kError}, {"off", LogLevel::kOff}};
  for (const auto& [n, l] : kNames) {
    if (name == n) {
      *out = l;
      return true;
    }
  }
  return false;
}

void set_log_sink(LogSink sink) { g_sink.store(sink); }

bool log_first_time(std::string_view key) {
  static std::mutex m;
  static std::set<std::string, std::less<>> seen;
  std::lock_guard<std::mutex> lock(m);
  return seen.emplace(key).second;
}

namespace {
std::atomic<int> g_process_rank{-1};
thread_local int t_thread_rank = -1;
}  // namespace

void set_log_process_rank(int rank) { g_process_rank.store(rank); }
void set_log_thread_rank(int rank) { t_thread_rank = rank; }
int log_rank() { return t_thread_rank >= 0 ? t_thread_rank : g_process_rank.load(); }

namespace detail {

LogLine::LogLine(LogLevel level, const char* file, int line) : level_(level) {
  double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
  const char* base = std::strrchr(file, '/');
  const int rank = log_rank();
  char who[16] = "";
  if (rank >= 0) std::snprintf(who, sizeof who, " r%d", rank);
  char head[176];
  std::snprintf(head, sizeof head, "[strata %s%s %9.3f %s:%d] ", level_tag(level), who, t,
                base != nullptr ? base + 1 : file, line);
  os_ << head;
}

LogLine::~LogLine() {
  std::string s = os_.str();
  LogSink sink = g_sink.load();
  if (sink != nullptr) {
    sink(level_, s);
    return;
  }
  s += '\n';
  std::lock_guard<std::mutex> lock(log_mutex());
  std::fwrite(s.data(), 1, s.size(), stderr);
}

}  // namespace detail
}  // namespace strata
