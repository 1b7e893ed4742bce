// `strata profile check FILE` and `strata profile defaults`.
#include <cxxopts.hpp>
#include <iostream>

#include "cli/command.h"
#include "strata/profile.h"

namespace strata::cli {
namespace {

int profile_check(int argc, char** argv) {
  cxxopts::Options opts("strata profile check", "Validate an offload profile (TOML or JSON) and print it normalised.");
  opts.add_options()("json", "print the normalised profile as JSON instead of TOML")("h,help", "show this help")(
      "file", "profile path (*.toml or *.json)", cxxopts::value<std::string>());
  opts.parse_positional({"file"});
  opts.positional_help("FILE");
  cxxopts::ParseResult args;
  try {
    args = opts.parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "strata profile check: " << e.what() << "\n" << opts.help();
    return kExitUsage;
  }
  if (args.count("help")) {
    std::cout << opts.help();
    return kExitOk;
  }
  if (!args.count("file")) {
    std::cerr << "strata profile check: missing FILE\n" << opts.help();
    return kExitUsage;
  }
  auto profile = Profile::load(args["file"].as<std::string>());
  if (!profile) {
    std::cerr << "strata profile check: " << profile.status() << "\n";
    return kExitUsage;
  }
  std::cout << (args.count("json") ? profile->to_json() : profile->to_toml());
  // A valid profile that sets a key this build cannot honour yet would be refused by a run.
  if (Status st = profile->check_available(); !st.ok()) {
    std::cerr << "strata profile check: " << args["file"].as<std::string>() << ": " << st.message() << "\n";
    return kExitUsage;
  }
  return kExitOk;
}

int profile_defaults(int argc, char** argv) {
  cxxopts::Options opts("strata profile defaults", "Print a fully commented profile with every default value.");
  opts.add_options()("h,help", "show this help");
  try {
    auto args = opts.parse(argc, argv);
    if (args.count("help")) {
      std::cout << opts.help();
      return kExitOk;
    }
    if (!args.unmatched().empty()) {
      std::cerr << "strata profile defaults: unexpected argument '" << args.unmatched().front() << "'\n";
      return kExitUsage;
    }
  } catch (const std::exception& e) {
    std::cerr << "strata profile defaults: " << e.what() << "\n" << opts.help();
    return kExitUsage;
  }
  std::cout << Profile::defaults_toml();
  return kExitOk;
}

STRATA_COMMAND("profile check", "validate a profile and print it normalised", profile_check);
STRATA_COMMAND("profile defaults", "print the commented default profile", profile_defaults);

}  // namespace
}  // namespace strata::cli
