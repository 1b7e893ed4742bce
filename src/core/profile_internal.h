// src/core/profile_internal.h — pieces shared by the profile parser and validator.
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <vector>

#include "strata/profile.h"

namespace strata::profile_detail {

// A cross-field error: the dotted key path it is about ("parallel.virtual_stages") and what
// is wrong. The loaders turn the key path into a location in the document.
struct FieldError {
  std::string key;
  std::string message;
};

std::vector<FieldError> validate_fields(const Profile& p);

// Smallest edit distance (insert, delete, substitute, swap of neighbours) between two keys.
int edit_distance(const std::string& a, const std::string& b);

}  // namespace strata::profile_detail
