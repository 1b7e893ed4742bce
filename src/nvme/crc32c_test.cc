// CRC-32C: the SSE4.2 path against the table-driven reference, on known vectors and on
// random data of every small length and alignment.
#include "nvme/crc32c.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace strata::nvme {
namespace {

TEST(Crc32c, KnownVectors) {
  const char* check = "123456789";
  EXPECT_EQ(crc32c_scalar(check, 9), 0xE3069283u);
  EXPECT_EQ(crc32c(check, 9), 0xE3069283u);
  EXPECT_EQ(crc32c_scalar("", 0), 0u);
  // RFC 3720 (iSCSI) B.4: 32 bytes of zeros and 32 bytes of 0xFF.
  std::vector<unsigned char> zeros(32, 0), ones(32, 0xFF), inc(32);
  for (int i = 0; i < 32; ++i) inc[static_cast<std::size_t>(i)] = static_cast<unsigned char>(i);
  EXPECT_EQ(crc32c_scalar(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(crc32c_scalar(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(crc32c_scalar(inc.data(), 32), 0x46DD794Eu);
}

TEST(Crc32c, HardwareMatchesReference) {
  if (!crc32c_hardware_available()) GTEST_SKIP() << "this CPU has no SSE4.2 crc32 instruction";
  std::mt19937_64 rng(42);
  std::vector<unsigned char> buf(70000);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (std::size_t misalign = 0; misalign < 8; ++misalign) {
    for (std::size_t len = 0; len < 300; ++len) {
      ASSERT_EQ(crc32c_sse42(buf.data() + misalign, len), crc32c_scalar(buf.data() + misalign, len))
          << "len " << len << " misalign " << misalign;
    }
  }
  for (std::size_t len : {4095u, 4096u, 65536u, 69999u}) {
    EXPECT_EQ(crc32c_sse42(buf.data() + 1, len), crc32c_scalar(buf.data() + 1, len)) << len;
  }
}

TEST(Crc32c, ChainsAndDetectsSingleBitFlips) {
  std::mt19937_64 rng(7);
  std::vector<unsigned char> buf(10000);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  std::uint32_t whole = crc32c(buf.data(), buf.size());
  std::uint32_t parts = crc32c(buf.data() + 3333, buf.size() - 3333, crc32c(buf.data(), 3333));
  EXPECT_EQ(whole, parts);
  for (int i = 0; i < 200; ++i) {
    std::size_t pos = rng() % buf.size();
    unsigned char bit = static_cast<unsigned char>(1u << (rng() % 8));
    buf[pos] ^= bit;
    EXPECT_NE(crc32c(buf.data(), buf.size()), whole);
    buf[pos] ^= bit;
  }
}

}  // namespace
}  // namespace strata::nvme
