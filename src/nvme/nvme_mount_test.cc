// Behaviour on real file systems that refuse O_DIRECT (ramfs) or are full (a 1 MiB tmpfs).
// The test process moves into a private mount namespace first, so its mounts are invisible
// to the rest of the machine and vanish when it exits. Without the privilege to do that
// (not root, no CAP_SYS_ADMIN, or a container that forbids it) the tests skip.
#include <sched.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "nvme/file.h"
#include "nvme/io_engine.h"
#include "nvme/nvme_test_util.h"
#include "nvme/swap_store.h"
#include "strata/units.h"

namespace strata::nvme {
namespace {

std::string& namespace_problem() {
  static std::string problem = "not attempted";
  return problem;
}

// Runs before any test (and so before any thread exists, which unshare requires).
class PrivateMounts : public ::testing::Environment {
 public:
  void SetUp() override {
    if (::unshare(CLONE_NEWNS) != 0) {
      namespace_problem() = std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno);
      return;
    }
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      namespace_problem() = std::string("making / private: ") + std::strerror(errno);
      return;
    }
    namespace_problem().clear();
  }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new PrivateMounts);

// A file system mounted on a fresh directory for the duration of a test.
class Mounted {
 public:
  Mounted(const std::string& dir, const char* type, const char* options) : dir_(dir) {
    if (::mount(type, dir.c_str(), type, 0, options) == 0) {
      mounted_ = true;
    } else {
      error_ = std::string("mount -t ") + type + ": " + std::strerror(errno);
    }
  }
  ~Mounted() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool ok() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

#define SKIP_WITHOUT_MOUNTS()                                                                 \
  if (!namespace_problem().empty()) {                                                         \
    GTEST_SKIP() << "needs a private mount namespace (root or CAP_SYS_ADMIN): " << namespace_problem(); \
  }

NvmeConfig config(const std::string& engine, bool direct) {
  NvmeConfig c;
  c.engine = engine;
  c.direct = direct;
  c.registered_buffers = false;
  c.block_size = 64 * KiB;
  c.queue_depth = 4;
  return c;
}

bool empty_dir(const std::string& d) {
  return std::filesystem::directory_iterator(d) == std::filesystem::directory_iterator();
}

TEST(OnRamfs, DirectIoRefusalNamesTheFixAndBufferedIoWorks) {
  SKIP_WITHOUT_MOUNTS();
  testing::ScratchDir scratch("ramfs");
  const std::string dir = scratch.sub("mnt");
  Mounted m(dir, "ramfs", "mode=0755");
  if (!m.ok()) GTEST_SKIP() << m.error();

  OpenOptions o;
  o.create = true;
  o.direct = true;
  auto fd = open_data_file(AT_FDCWD, dir + "/f", o, dir + "/f");
  ASSERT_FALSE(fd.ok()) << "ramfs accepted O_DIRECT; this test needs a file system that refuses it";
  EXPECT_EQ(fd.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(fd.status().message().find("direct = false"), std::string::npos) << fd.status();
  EXPECT_NE(fd.status().message().find("engine = \"posix\""), std::string::npos) << fd.status();

  for (const char* engine : {"io_uring", "libaio", "posix"}) {
    auto e = make_io_engine(config(engine, true));
    ASSERT_TRUE(e.ok()) << e.status();
    auto store = SwapStore::create({{dir}, MiB}, **e);
    ASSERT_FALSE(store.ok()) << engine << ": no silent fallback to buffered I/O";
    EXPECT_NE(store.status().message().find("O_DIRECT"), std::string::npos) << store.status();
    EXPECT_NE(store.status().message().find("direct = false"), std::string::npos) << store.status();
    EXPECT_NE(store.status().message().find(dir), std::string::npos) << store.status();
    EXPECT_TRUE(empty_dir(dir)) << "a failed start leaves nothing behind";
  }

  // The fix the message names works.
  auto e = make_io_engine(config("posix", false));
  ASSERT_TRUE(e.ok());
  auto store = SwapStore::create({{dir}, MiB}, **e);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->stats().zero_fill_preallocations, 1u) << "ramfs has no fallocate: zeros are written";
  auto slot = (*store)->allocate(5000);
  ASSERT_TRUE(slot.ok());
  std::vector<std::byte> data(5000, std::byte{0x5A});
  auto w = (*store)->write(*slot, data);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->wait().ok());
  std::vector<std::byte> back(5000);
  auto r = (*store)->read(*slot, back);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE((*r)->wait().ok());
  EXPECT_EQ(back, data);
  ASSERT_TRUE((*store)->close().ok());
  EXPECT_TRUE(empty_dir(dir));
}

TEST(OnFullTmpfs, StartupFailsWithBytesNeededFreeAndPath) {
  SKIP_WITHOUT_MOUNTS();
  testing::ScratchDir scratch("tmpfs");
  const std::string dir = scratch.sub("mnt");
  Mounted m(dir, "tmpfs", "size=1m,mode=0755");
  if (!m.ok()) GTEST_SKIP() << m.error();
  auto e = make_io_engine(config("io_uring", testing::supports_direct(dir)));
  ASSERT_TRUE(e.ok());

  auto big = SwapStore::create({{dir}, 2 * MiB}, **e);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), StatusCode::kOutOfSpace);
  const std::string& msg = big.status().message();
  EXPECT_NE(msg.find("need 2097152 bytes (2.00 MiB)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1048576 bytes (1.00 MiB) are free"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'" + dir + "'"), std::string::npos) << msg;
  EXPECT_TRUE(empty_dir(dir));

  // Something else takes most of the space: the numbers follow.
  {
    std::ofstream filler(dir + "/other", std::ios::binary);
    std::vector<char> bytes(700 * 1024, 'x');
    filler.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  auto after = SwapStore::create({{dir}, 512 * KiB}, **e);
  ASSERT_FALSE(after.ok());
  EXPECT_NE(after.status().message().find("need 524288 bytes"), std::string::npos) << after.status();
  EXPECT_NE(after.status().message().find("331776 bytes"), std::string::npos) << after.status();

  // What fits is preallocated in full: slots then never hit ENOSPC.
  auto fits = SwapStore::create({{dir}, 256 * KiB}, **e);
  ASSERT_TRUE(fits.ok()) << fits.status();
  auto avail = free_bytes(dir);
  ASSERT_TRUE(avail.ok());
  EXPECT_LE(*avail, 1 * MiB - 700 * KiB - 256 * KiB);
  std::vector<std::byte> data(64 * KiB, std::byte{3});
  std::vector<std::shared_ptr<IoCompletion>> cs;
  for (int i = 0; i < 4; ++i) {
    auto slot = (*fits)->allocate(64 * KiB);
    ASSERT_TRUE(slot.ok()) << slot.status();
    auto w = (*fits)->write(*slot, data);
    ASSERT_TRUE(w.ok());
    cs.push_back(*w);
  }
  for (auto& c : cs) EXPECT_TRUE(c->wait().ok()) << c->wait();
  EXPECT_EQ((*fits)->allocate(1).status().code(), StatusCode::kOutOfSpace);
}

}  // namespace
}  // namespace strata::nvme
