// For tests: runs a shell command line and captures what it prints on stdout.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace strata {

struct CommandRun {
  int exit_code = -1;  // the exit status, or 128 + the signal that ended it; -1 if it did not start
  std::string out;     // stdout (append " 2>&1" to the command for stderr too)
};

inline CommandRun run_command(const std::string& command_line) {
  CommandRun r;
  FILE* p = popen(command_line.c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  for (std::size_t n; (n = std::fread(buf.data(), 1, buf.size(), p)) > 0;) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

}  // namespace strata
