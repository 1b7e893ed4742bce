#include "strata/status.h"

#include <cerrno>

#include <gtest/gtest.h>

namespace strata {
namespace {

Result<int> half(int x) {
  if (x % 2 != 0) return invalid_argument("half of " + std::to_string(x) + ": odd");
  return x / 2;
}

Result<int> quarter(int x) {
  STRATA_ASSIGN_OR_RETURN(int h, half(x));
  STRATA_ASSIGN_OR_RETURN(int q, half(h));
  return q;
}

Status check_positive(int x) {
  if (x <= 0) return invalid_argument("not positive");
  return Status::OK();
}

Status both_positive(int a, int b) {
  STRATA_RETURN_IF_ERROR(check_positive(a));
  STRATA_RETURN_IF_ERROR(check_positive(b));
  return Status::OK();
}

TEST(Status, OkAndCodes) {
  Status ok;
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.to_string(), "OK");
  Status s = out_of_space("write '/x'");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOutOfSpace);
  EXPECT_EQ(s.to_string(), "out of space: write '/x'");
  EXPECT_EQ(s.with_context("checkpoint").message(), "checkpoint: write '/x'");
  EXPECT_TRUE(Status().with_context("x").ok());
}

TEST(Status, ErrnoMapping) {
  Status s = STRATA_ERRNO(ENOSPC, "pwrite at offset 4096", "/swap/a");
  EXPECT_EQ(s.code(), StatusCode::kOutOfSpace);
  EXPECT_NE(s.message().find("pwrite at offset 4096 '/swap/a'"), std::string::npos) << s;
  EXPECT_NE(s.message().find("ENOSPC"), std::string::npos) << s;
  EXPECT_NE(s.message().find("status_test.cc:"), std::string::npos) << s;
  EXPECT_EQ(STRATA_ERRNO(ENOENT, "open", "/nope").code(), StatusCode::kNotFound);
  EXPECT_EQ(STRATA_ERRNO(EACCES, "open", "/root").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(STRATA_ERRNO(EIO, "read", "/dev").code(), StatusCode::kIoError);
  EXPECT_EQ(STRATA_ERRNO(EINVAL, "open O_DIRECT", "/tmp").code(), StatusCode::kInvalidArgument);
}

TEST(Result, ValueAndPropagation) {
  auto q = quarter(12);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(*q, 3);
  auto bad = quarter(6);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "half of 3: odd");
  EXPECT_EQ(bad.value_or(-1), -1);
  EXPECT_TRUE(both_positive(1, 2).ok());
  EXPECT_EQ(both_positive(1, -2).message(), "not positive");
}

TEST(Result, OkStatusWithoutValueIsInternal) {
  Result<int> r{Status::OK()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace strata
