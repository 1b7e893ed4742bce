// Token data: byte and uint16 files, the built-in text, and the documented sampling rule.
#include <gtest/gtest.h>

#include <algorithm>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/remove_at_exit.h"
#include "strata/data.h"

namespace strata {
namespace {

std::string tmp_dir() {
  const char* base = std::getenv("STRATA_TEST_TMPDIR");
  std::string d = std::string(base ? base : "/tmp") + "/token_data_test." + std::to_string(::getpid());
  ::mkdir(base ? base : "/tmp", 0755);
  ::mkdir(d.c_str(), 0755);
  strata::remove_at_exit(d);
  return d;
}

std::string write_file(const std::string& name, const std::string& bytes) {
  const std::string path = tmp_dir() + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(TokenData, BytesFileIsOneTokenPerByte) {
  const std::string text = "Hello, \xff world!\n";
  auto d = TokenDataset::open(write_file("hello.txt", text));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->format(), TokenFormat::kBytes);
  EXPECT_EQ(d->size(), text.size());
  EXPECT_EQ(d->vocab_needed(), 256u);
  for (std::size_t i = 0; i < text.size(); ++i) EXPECT_EQ(d->token(i), static_cast<unsigned char>(text[i]));
}

TEST(TokenData, SamplingFollowsTheDocumentedFormula) {
  std::vector<std::uint16_t> tokens(50);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::uint16_t>(1000 + i);
  TokenDataset d = TokenDataset::from_tokens(tokens, "counting");
  const BatchShape s{3, 2, 4};  // B = 3, A = 2, T = 4; N - T - 1 = 45
  EXPECT_EQ(d.offset(0, 0, 0, s), 0u);
  EXPECT_EQ(d.offset(0, 0, 2, s), 8u);
  EXPECT_EQ(d.offset(0, 1, 0, s), 12u);
  EXPECT_EQ(d.offset(1, 1, 2, s), ((1 * 2 + 1) * 3 + 2) * 4 % 45u);  // 44
  EXPECT_EQ(d.offset(2, 0, 0, s), (2 * 2 * 3 * 4) % 45u);           // 48 wraps to 3
  // Exact integer arithmetic even where s * A * B * T overflows 64 bits.
  const std::int64_t big = std::int64_t{1} << 62;
  __extension__ typedef unsigned __int128 U128;
  const U128 want = (static_cast<U128>(big) * 2 * 3 * 4) % 45;
  EXPECT_EQ(d.offset(big, 0, 0, s), static_cast<std::uint64_t>(want));

  std::vector<std::int32_t> in(12), tg(12);
  ASSERT_TRUE(d.batch(1, 1, s, in, tg).ok());
  for (int r = 0; r < 3; ++r) {
    const std::uint64_t off = d.offset(1, 1, r, s);
    for (int t = 0; t < 4; ++t) {
      EXPECT_EQ(in[static_cast<std::size_t>(r * 4 + t)], static_cast<std::int32_t>(1000 + off + t));
      EXPECT_EQ(tg[static_cast<std::size_t>(r * 4 + t)], static_cast<std::int32_t>(1000 + off + t + 1));
    }
  }
  // Gradient accumulation walks the same rows as a bigger micro-batch: (A=2, B=1) == (A=1, B=2).
  std::vector<std::int32_t> a0(4), a1(4), t0(4), t1(4), b(8), tb(8);
  ASSERT_TRUE(d.batch(3, 0, BatchShape{1, 2, 4}, a0, t0).ok());
  ASSERT_TRUE(d.batch(3, 1, BatchShape{1, 2, 4}, a1, t1).ok());
  ASSERT_TRUE(d.batch(3, 0, BatchShape{2, 1, 4}, b, tb).ok());
  a0.insert(a0.end(), a1.begin(), a1.end());
  EXPECT_EQ(a0, b);
}

// Rank d of D reads rows [d * B, (d + 1) * B) of the one-rank batch with micro_batch D * B.
TEST(TokenData, DataParallelRanksReadTheirRowsOfTheGlobalBatch) {
  std::vector<std::uint16_t> tokens(5000);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::uint16_t>(i % 251);
  const TokenDataset d = TokenDataset::from_tokens(tokens, "ramp");
  constexpr int kB = 2, kT = 16, kA = 3;
  for (int ranks : {2, 3}) {
    const BatchShape global{kB * ranks, kA, kT};
    std::vector<std::int32_t> gin(static_cast<std::size_t>(kB * ranks * kT)), gtg(gin.size());
    for (std::int64_t step : {0, 7}) {
      for (int micro = 0; micro < kA; ++micro) {
        ASSERT_TRUE(d.batch(step, micro, global, gin, gtg).ok());
        for (int rank = 0; rank < ranks; ++rank) {
          const BatchShape mine{kB, kA, kT, ranks, rank};
          std::vector<std::int32_t> in(static_cast<std::size_t>(kB * kT)), tg(in.size());
          ASSERT_TRUE(d.batch(step, micro, mine, in, tg).ok());
          const auto first = gin.begin() + static_cast<std::ptrdiff_t>(rank * kB * kT);
          EXPECT_TRUE(std::equal(in.begin(), in.end(), first)) << "rank " << rank << " of " << ranks;
          EXPECT_TRUE(std::equal(tg.begin(), tg.end(), gtg.begin() + (first - gin.begin()))) << "rank " << rank;
        }
      }
    }
  }
  std::vector<std::int32_t> in(kB * kT), tg(in.size());
  EXPECT_FALSE(d.batch(0, 0, BatchShape{kB, 1, kT, 2, 2}, in, tg).ok());
}

TEST(TokenData, U16FilesAreLittleEndianAndCheckedAgainstTheVocabulary) {
  std::string bytes;
  for (std::uint16_t v : {1, 258, 50256, 7}) {
    bytes.push_back(static_cast<char>(v & 0xff));
    bytes.push_back(static_cast<char>(v >> 8));
  }
  auto d = TokenDataset::open(write_file("toks.u16", bytes));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->format(), TokenFormat::kU16);
  ASSERT_EQ(d->size(), 4u);
  EXPECT_EQ(d->token(1), 258u);
  EXPECT_EQ(d->token(2), 50256u);
  EXPECT_EQ(d->vocab_needed(), 50257u);
  EXPECT_TRUE(d->check(50257, 2).ok());
  Status small = d->check(256, 2);
  EXPECT_EQ(small.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(small.message().find("token id 258 at position 1"), std::string::npos) << small;
  EXPECT_NE(small.message().find("at least 50257"), std::string::npos) << small;
  Status short_data = d->check(50257, 3);
  EXPECT_EQ(short_data.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(short_data.message().find("needs at least 5"), std::string::npos) << short_data;

  auto odd = TokenDataset::open(write_file("odd.u16", "abc"));
  ASSERT_FALSE(odd.ok());
  EXPECT_EQ(odd.status().code(), StatusCode::kDataCorruption);
  // An explicit format overrides the extension.
  auto as_bytes = TokenDataset::open(write_file("odd2.u16", "abc"), TokenFormat::kBytes);
  ASSERT_TRUE(as_bytes.ok());
  EXPECT_EQ(as_bytes->size(), 3u);
}

TEST(TokenData, BuiltInTextIsTheRegularFilesOfCommonLicenses) {
  auto d = TokenDataset::default_text();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_GT(d->size(), 100000u);
  EXPECT_TRUE(d->check(256, 1024).ok());
  // Symbolic links (GPL -> GPL-3) are not repeated: the size is the sum of the regular files.
  std::uint64_t total = 0;
  for (const char* n : {"Apache-2.0", "GPL-3", "LGPL-2.1"}) {
    struct stat sb;
    if (::lstat((std::string(TokenDataset::kDefaultTextDir) + "/" + n).c_str(), &sb) == 0) total += sb.st_size;
  }
  EXPECT_GT(d->size(), total);
  struct stat gpl;
  if (::lstat("/usr/share/common-licenses/GPL", &gpl) == 0 && S_ISLNK(gpl.st_mode)) {
    auto gpl3 = TokenDataset::open("/usr/share/common-licenses/GPL-3");
    ASSERT_TRUE(gpl3.ok());
    // Opening a link by name works like any file.
    auto via_link = TokenDataset::open("/usr/share/common-licenses/GPL");
    ASSERT_TRUE(via_link.ok());
    EXPECT_EQ(via_link->size(), gpl3->size());
  }
}

TEST(TokenData, ErrorsNameTheFileAndTheCause) {
  auto missing = TokenDataset::open("/nonexistent/strata/data.txt");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/strata/data.txt"), std::string::npos);
  auto dir = TokenDataset::open("/usr/share");
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.status().code(), StatusCode::kInvalidArgument);

  auto empty = TokenDataset::open(write_file("empty.txt", ""));
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->size(), 0u);
  std::vector<std::int32_t> in(4), tg(4);
  Status st = empty->batch(0, 0, BatchShape{1, 1, 4}, in, tg);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("has 0 tokens"), std::string::npos) << st;

  TokenDataset d = TokenDataset::from_tokens(std::vector<std::uint16_t>(100, 3), "threes");
  EXPECT_EQ(d.batch(0, 2, BatchShape{1, 2, 4}, in, tg).code(), StatusCode::kInvalidArgument);  // micro >= A
  EXPECT_EQ(d.batch(-1, 0, BatchShape{1, 1, 4}, in, tg).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(d.batch(0, 0, BatchShape{2, 1, 4}, in, tg).code(), StatusCode::kInvalidArgument);  // spans too short
  EXPECT_EQ(d.batch(0, 0, BatchShape{0, 1, 4}, in, tg).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata
