// `strata checkpoint info DIR` and `strata checkpoint verify DIR`: what a checkpoint holds, and
// whether every one of its files still has the bytes it was written with (strata/checkpoint.h).
// DIR is a checkpoint directory or a directory of them (the newest complete one). Neither
// needs a profile or touches any state; a checkpoint saved on any grid reads the same.
#include <cstdint>
#include <cxxopts.hpp>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/command.h"
#include "strata/checkpoint.h"
#include "strata/units.h"

namespace strata::cli {
namespace {

using json = nlohmann::json;

// Parses `argv` as "NAME DIR [--json]"; returns the exit code on a usage error or help.
struct Args {
  std::string dir;
  bool json = false;
};
int parse(int argc, char** argv, const char* name, const char* what, Args* out) {
  cxxopts::Options opts(name, what);
  opts.add_options()("json", "print the summary as JSON")("h,help", "show this help")(
      "dir", "a checkpoint directory (holding manifest.json) or a directory of them",
      cxxopts::value<std::string>());
  opts.parse_positional({"dir"});
  opts.positional_help("DIR");
  try {
    auto a = opts.parse(argc, argv);
    if (a.count("help")) {
      std::cout << opts.help();
      return kExitOk;
    }
    if (!a.count("dir") || !a.unmatched().empty()) {
      std::cerr << name << ": give one checkpoint directory\n" << opts.help();
      return kExitUsage;
    }
    out->dir = a["dir"].as<std::string>();
    out->json = a.count("json") > 0;
  } catch (const std::exception& e) {
    std::cerr << name << ": " << e.what() << "\n" << opts.help();
    return kExitUsage;
  }
  return -1;
}

// The summary both commands print: what saved it, the step, the model, the tensors and the files.
json summary(const CheckpointManifest& c) {
  const json m = json::parse(c.manifest);
  std::uint64_t elements = 0;
  for (const json& p : m["parameters"]) elements += p.value("numel", std::uint64_t{0});
  json files = json::array();
  for (const json& f : m["files"]) {
    files.push_back({{"name", f["name"]}, {"bytes", f["bytes"]}, {"crc32c", f["crc32c"]}});
  }
  return {{"path", c.path},
          {"step", m["step"]},
          {"optimizer_updates", m["optimizer_updates"]},
          {"saved_by", m.value("saved_by", json(nullptr))},
          {"optimizer", m["optimizer"]},
          {"model", m["model"]},
          {"tensors", m["parameters"].size()},
          {"elements", elements},
          {"files", files},
          {"checksums", c.checksums_verified ? "verified: every file re-read matches its CRC-32C"
                                             : "recorded; sizes checked (strata checkpoint verify re-reads them)"}};
}

void print_text(const json& s) {
  std::cout << "checkpoint " << s["path"].get<std::string>() << "\n"
            << "  step " << s["step"] << ", optimizer updates " << s["optimizer_updates"] << "\n";
  const json& g = s["saved_by"];
  auto where = [](const json& device) {
    const std::string d = device.get<std::string>();
    return d == "none" ? std::string("the device") : d;
  };
  if (g.is_object()) {
    std::cout << "  saved by dp " << g["dp"] << " x tp " << g["tp"] << " x pp " << g["pp"] << ", ZeRO stage "
              << g["zero_stage"] << ", optimizer on " << where(g["optimizer_device"]) << ", parameters on "
              << where(g["param_device"]) << "\n";
  } else {
    std::cout << "  saved by a grid this checkpoint does not record\n";
  }
  std::cout << "  model " << s["model"]["dims"].dump() << ", " << s["model"]["dtype"].get<std::string>() << "; optimizer "
            << s["optimizer"]["type"].get<std::string>() << "\n"
            << "  " << s["tensors"] << " tensors, " << s["elements"] << " elements (whole tensors, any grid resumes it)\n";
  for (const json& f : s["files"]) {
    std::cout << "  " << f["name"].get<std::string>() << "  "
              << format_bytes_human(static_cast<double>(f["bytes"].get<std::uint64_t>())) << "  crc32c "
              << f["crc32c"] << "\n";
  }
  std::cout << "  checksums " << s["checksums"].get<std::string>() << "\n";
}

int run(int argc, char** argv, const char* name, const char* what, bool verify) {
  Args a;
  if (int code = parse(argc, argv, name, what, &a); code >= 0) return code;
  auto c = read_checkpoint_manifest(a.dir, verify);
  if (!c.ok()) {
    std::cerr << name << ": " << c.status() << "\n";
    return kExitFailed;
  }
  const json s = summary(*c);
  if (a.json) {
    std::cout << s.dump(1) << "\n";
  } else {
    print_text(s);
  }
  return kExitOk;
}

int checkpoint_info(int argc, char** argv) {
  return run(argc, argv, "strata checkpoint info",
             "What a checkpoint holds: the grid, ZeRO stage and offload that saved it, the step, the tensors and files.",
             false);
}

int checkpoint_verify(int argc, char** argv) {
  return run(argc, argv, "strata checkpoint verify",
             "Re-read every file of a checkpoint and check it against its recorded size and CRC-32C.", true);
}

}  // namespace

STRATA_COMMAND("checkpoint info", "what a checkpoint holds: grid, stage, step, tensors, files", checkpoint_info);
STRATA_COMMAND("checkpoint verify", "re-read every file of a checkpoint against its checksum", checkpoint_verify);

}  // namespace strata::cli
