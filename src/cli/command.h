// src/cli/command.h — the registry of `strata` subcommands.
//
// Each command lives in its own file and registers itself with STRATA_COMMAND; main()
// dispatches on the longest matching name ("bench nvme" before "bench"). A command owns
// the terminal while it runs, parses its own options (cxxopts) and returns the process exit
// code: 0 success, 1 the work failed, 2 a usage or input error.
//
// Thread-safety: registration happens during static initialisation; lookups after main()
// starts are read-only.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace strata::cli {

using CommandFn = std::function<int(int argc, char** argv)>;

struct Command {
  std::string name;     // "profile check", "bench nvme"
  std::string summary;  // one line for `strata --help`
  CommandFn run;        // argv[0] is the full command name
};

std::vector<Command>& commands();

struct Registrar {
  Registrar(std::string name, std::string summary, CommandFn fn);
};

// Process exit codes.
constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

}  // namespace strata::cli

#define STRATA_CLI_CONCAT_INNER_(a, b) a##b
#define STRATA_CLI_CONCAT_(a, b) STRATA_CLI_CONCAT_INNER_(a, b)
#define STRATA_COMMAND(name, summary, fn) \
  static ::strata::cli::Registrar STRATA_CLI_CONCAT_(strata_command_, __LINE__)(name, summary, fn)
