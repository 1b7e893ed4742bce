#include "strata/units.h"

#include <gtest/gtest.h>

namespace strata {
namespace {

std::uint64_t ok_bytes(const char* s) {
  auto r = parse_bytes(s);
  EXPECT_TRUE(r.ok()) << s << ": " << r.status();
  return r.value_or(0);
}

std::string err(const char* s) {
  auto r = parse_bytes(s);
  EXPECT_FALSE(r.ok()) << s << " parsed as " << r.value_or(0);
  return r.status().message();
}

TEST(Units, Parses) {
  EXPECT_EQ(ok_bytes("4096"), 4096u);
  EXPECT_EQ(ok_bytes("0"), 0u);
  EXPECT_EQ(ok_bytes("64KiB"), 65536u);
  EXPECT_EQ(ok_bytes("1MiB"), 1048576u);
  EXPECT_EQ(ok_bytes("1.5GB"), 1500000000u);
  EXPECT_EQ(ok_bytes("2GiB"), 2147483648u);
  EXPECT_EQ(ok_bytes(" 2 gib "), 2147483648u);
  EXPECT_EQ(ok_bytes("0.5KiB"), 512u);
  EXPECT_EQ(ok_bytes("10B"), 10u);
  EXPECT_EQ(ok_bytes("16TiB"), 16ULL << 40);
  EXPECT_EQ(ok_bytes("18446744073709551615"), UINT64_MAX);
}

TEST(Units, Errors) {
  EXPECT_NE(err("-1").find("negative"), std::string::npos);
  EXPECT_NE(err("-4KiB").find("negative"), std::string::npos);
  EXPECT_NE(err("18446744073709551616").find("overflows"), std::string::npos);
  EXPECT_NE(err("17179869184GiB").find("overflows"), std::string::npos);
  EXPECT_NE(err("99999999999999999999999999999999999").find("overflows"), std::string::npos);
  EXPECT_NE(err("12 parsecs").find("unknown unit 'parsecs'"), std::string::npos);
  EXPECT_NE(err("1.5").find("whole number of bytes"), std::string::npos);
  EXPECT_NE(err("1.0001KiB").find("whole number of bytes"), std::string::npos);
  EXPECT_NE(err("").find("empty"), std::string::npos);
  EXPECT_NE(err("MiB").find("does not start with a number"), std::string::npos);
  EXPECT_NE(err(".").find("does not start with a number"), std::string::npos);
}

TEST(Units, Bandwidth) {
  auto r = parse_bandwidth("25GB/s");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 25000000000u);
  EXPECT_EQ(parse_bandwidth("12GiB").value_or(0), 12ULL << 30);
  EXPECT_FALSE(parse_bandwidth("fast/s").ok());
}

TEST(Units, FormatRoundTrips) {
  for (std::uint64_t v : {0ULL, 1ULL, 4096ULL, 65536ULL, 1ULL << 20, 3ULL << 30, 1500000000ULL, 12345ULL, 7ULL << 40}) {
    auto back = parse_bytes(format_bytes(v));
    ASSERT_TRUE(back.ok()) << format_bytes(v);
    EXPECT_EQ(*back, v);
  }
  EXPECT_EQ(format_bytes(64 * MiB), "64MiB");
  EXPECT_EQ(format_bytes(1500), "1500");
  EXPECT_EQ(format_bytes_human(1.5 * GiB), "1.50 GiB");
}

}  // namespace
}  // namespace strata
