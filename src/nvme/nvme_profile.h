// src/nvme/nvme_profile.h — writes an [nvme] profile section (what `strata bench nvme
// --emit-profile` produces), with the key names of strata::NvmeConfig and sizes in units,
// so that `strata profile check` and Profile::load accept it.
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>

#include "strata/profile.h"
#include "strata/status.h"

namespace strata::nvme {

// A TOML document holding one [nvme] table; `comment` (may be empty) becomes leading
// "# " lines.
std::string nvme_section_toml(const NvmeConfig& config, std::string_view comment);

// Writes the document to `path` (replacing it atomically via a temporary file).
Status write_nvme_profile(const std::string& path, const NvmeConfig& config, std::string_view comment);

}  // namespace strata::nvme
