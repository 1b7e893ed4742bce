#include "nvme/nvme_profile.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "strata/units.h"

namespace strata::nvme {
namespace {

std::string toml_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

std::string nvme_section_toml(const NvmeConfig& c, std::string_view comment) {
  std::ostringstream os;
  std::istringstream lines{std::string(comment)};
  std::string line;
  while (std::getline(lines, line)) os << "# " << line << "\n";
  os << "[nvme]\n"
     << "engine = " << toml_string(c.engine) << "\n"
     << "block_size = " << toml_string(format_bytes(c.block_size)) << "\n"
     << "queue_depth = " << c.queue_depth << "\n"
     << "threads = " << c.threads << "\n"
     << "direct = " << (c.direct ? "true" : "false") << "\n"
     << "registered_buffers = " << (c.registered_buffers ? "true" : "false") << "\n"
     << "sqpoll = " << (c.sqpoll ? "true" : "false") << "\n"
     << "checksums = " << (c.checksums ? "true" : "false") << "\n";
  return os.str();
}

Status write_nvme_profile(const std::string& path, const NvmeConfig& config, std::string_view comment) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return STRATA_ERRNO(errno, "create", tmp);
    out << nvme_section_toml(config, comment);
    out.flush();
    if (!out) return STRATA_ERRNO(errno, "write", tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    Status s = STRATA_ERRNO(errno, "rename to '" + path + "' from", tmp);
    std::remove(tmp.c_str());
    return s;
  }
  return Status::OK();
}

}  // namespace strata::nvme
