// Feeds thousands of randomly corrupted profiles to both parsers: every one must give a
// Profile or a Status, never a crash (this runs under the sanitizers too).
#include <random>

#include <gtest/gtest.h>

#include "strata/profile.h"

namespace strata {
namespace {

std::string mutate(std::string s, std::mt19937_64& rng) {
  static const char* kFragments[] = {"\"", "[", "]", "{", "}", "=", ":", ",", "\n", "-", "1e999", "99999999999999999999",
                                     "true", "\"1GiB\"", "[[x]]", "nan", "inf", "0x", "\\u0000", "#", "'", "\"\"\"", ".",
                                     "-9223372036854775808", "1.5", "null", "[memory]", "{\"a\":"};
  int edits = 1 + static_cast<int>(rng() % 6);
  for (int e = 0; e < edits && !s.empty(); ++e) {
    std::size_t pos = rng() % s.size();
    switch (rng() % 5) {
      case 0: s.erase(pos, 1 + rng() % 16); break;
      case 1: s.insert(pos, kFragments[rng() % (sizeof kFragments / sizeof *kFragments)]); break;
      case 2: s[pos] = static_cast<char>(rng() % 256); break;
      case 3: {
        std::size_t len = 1 + rng() % 32;
        std::size_t from = rng() % s.size();
        s.insert(pos, s.substr(from, len));
        break;
      }
      case 4: s.resize(pos); break;
    }
  }
  return s;
}

std::string deep_nesting(int depth, bool json) {
  std::string s;
  if (json) {
    s = "{\"memory\": ";
    for (int i = 0; i < depth; ++i) s += "[";
    for (int i = 0; i < depth; ++i) s += "]";
    return s + "}";
  }
  s = "x = ";
  for (int i = 0; i < depth; ++i) s += "[";
  for (int i = 0; i < depth; ++i) s += "]";
  return s + "\n";
}

TEST(ProfileMutation, CorruptedDocumentsNeverCrash) {
  Profile base;
  base.offload_optimizer.device = OffloadTarget::kNvme;
  base.offload_optimizer.nvme_path = {"/tmp/a"};
  const std::string toml = base.to_toml();
  const std::string json = base.to_json();
  std::mt19937_64 rng(20261121);
  int accepted = 0, refused = 0;
  for (int i = 0; i < 4000; ++i) {
    for (bool is_json : {false, true}) {
      std::string doc = mutate(is_json ? json : toml, rng);
      auto r = is_json ? Profile::from_json_string(doc, "m.json") : Profile::from_toml_string(doc, "m.toml");
      if (r.ok()) {
        ++accepted;
        EXPECT_TRUE(r->validate().ok());
      } else {
        ++refused;
        EXPECT_FALSE(r.status().message().empty());
        EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status();
      }
    }
  }
  EXPECT_GT(refused, 1000);
  EXPECT_GT(accepted, 10);  // some mutations only touch values that stay valid
}

TEST(ProfileMutation, DeepNestingIsRefused) {
  for (int depth : {40, 1000, 100000}) {
    auto t = Profile::from_toml_string(deep_nesting(depth, false), "deep.toml");
    EXPECT_FALSE(t.ok());
    auto j = Profile::from_json_string(deep_nesting(depth, true), "deep.json");
    EXPECT_FALSE(j.ok());
  }
}

TEST(ProfileMutation, HugeNumbers) {
  for (const char* v : {"1e308", "-1e308", "9223372036854775807", "18446744073709551615", "1e-320", "-0.0"}) {
    std::string doc = std::string("[optimizer]\nlr = ") + v + "\n";
    auto r = Profile::from_toml_string(doc, "n.toml");
    if (r.ok()) {
      EXPECT_GE(r->optimizer.lr, 0.0);
      EXPECT_LE(r->optimizer.lr, 10.0);
    }
    std::string jdoc = std::string("{\"train\": {\"steps\": ") + v + "}}";
    auto j = Profile::from_json_string(jdoc, "n.json");
    if (j.ok()) {
      EXPECT_GE(j->train.steps, 0);
    }
  }
}

}  // namespace
}  // namespace strata
