// The `strata` executable: dispatches to registered subcommands.
#include <algorithm>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "cli/command.h"
#include "strata/profile.h"

namespace strata::cli {

std::vector<Command>& commands() {
  static std::vector<Command> all;
  return all;
}

Registrar::Registrar(std::string name, std::string summary, CommandFn fn) {
  commands().push_back(Command{std::move(name), std::move(summary), std::move(fn)});
}

namespace {

void print_help(std::ostream& os) {
  os << "strata " << version() << " — train models larger than accelerator memory\n\n"
     << "usage: strata COMMAND [options]\n\ncommands:\n";
  std::vector<Command> sorted = commands();
  std::sort(sorted.begin(), sorted.end(), [](const Command& a, const Command& b) { return a.name < b.name; });
  for (const Command& c : sorted) {
    os << "  " << c.name << std::string(c.name.size() < 18 ? 18 - c.name.size() : 1, ' ') << c.summary << "\n";
  }
  os << "\n  --help, help CMD  show help (for one command)\n  --version         print the version\n";
}

// Finds the command whose words match the longest prefix of argv[1..]; sets *words.
const Command* find_command(int argc, char** argv, int* words) {
  const Command* best = nullptr;
  int best_words = 0;
  for (const Command& c : commands()) {
    int n = 0;
    std::size_t pos = 0;
    bool match = true;
    while (pos < c.name.size()) {
      std::size_t sp = c.name.find(' ', pos);
      std::string word = c.name.substr(pos, sp == std::string::npos ? std::string::npos : sp - pos);
      if (1 + n >= argc || word != argv[1 + n]) {
        match = false;
        break;
      }
      ++n;
      pos = sp == std::string::npos ? c.name.size() : sp + 1;
    }
    if (match && n > best_words) {
      best = &c;
      best_words = n;
    }
  }
  *words = best_words;
  return best;
}

}  // namespace
}  // namespace strata::cli

int main(int argc, char** argv) {
  using namespace strata::cli;
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    print_help(argc < 2 ? std::cerr : std::cout);
    return argc < 2 ? kExitUsage : kExitOk;
  }
  if (std::strcmp(argv[1], "--version") == 0) {
    std::cout << "strata " << strata::version() << "\n";
    return kExitOk;
  }
  if (std::strcmp(argv[1], "help") == 0) {
    if (argc < 3) {
      print_help(std::cout);
      return kExitOk;
    }
    int words = 0;
    const Command* c = find_command(argc - 1, argv + 1, &words);
    if (c == nullptr) {
      std::cerr << "strata: unknown command '" << argv[2] << "'; see 'strata --help'\n";
      return kExitUsage;
    }
    std::string name = c->name;
    std::vector<char*> args = {name.data(), const_cast<char*>("--help")};
    return c->run(2, args.data());
  }
  int words = 0;
  const Command* c = find_command(argc, argv, &words);
  if (c == nullptr) {
    std::string typed;
    for (int i = 1; i < argc && i < 3; ++i) typed += (i > 1 ? " " : "") + std::string(argv[i]);
    std::cerr << "strata: unknown command '" << typed << "'; see 'strata --help'\n";
    return kExitUsage;
  }
  std::string name = c->name;
  std::vector<char*> args;
  args.push_back(name.data());
  for (int i = 1 + words; i < argc; ++i) args.push_back(argv[i]);
  try {
    return c->run(static_cast<int>(args.size()), args.data());
  } catch (const std::exception& e) {
    std::cerr << "strata " << name << ": " << e.what() << "\n";
    return kExitUsage;
  }
}
