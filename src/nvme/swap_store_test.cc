// Tests of the swap store: integrity of random slot sizes under concurrent reads, writes,
// releases and reuse on every engine (direct and buffered); striping over two directories;
// checksums catching a flipped byte; private files removed on close; space errors.
#include "nvme/swap_store.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "nvme/nvme_test_util.h"
#include "strata/units.h"

namespace strata::nvme {
namespace {

using testing::AlignedBytes;
using testing::ScratchDir;
using testing::fill_random;

struct StoreCase {
  std::string engine;
  bool direct;
  bool checksums;
  std::string label() const {
    return (engine == "io_uring" ? std::string("uring") : engine) + (direct ? "_direct" : "_buffered") +
           (checksums ? "_crc" : "");
  }
};

NvmeConfig config(const std::string& engine, bool direct, bool checksums, std::uint64_t stripe = 64 * KiB) {
  NvmeConfig c;
  c.engine = engine;
  c.direct = direct;
  c.checksums = checksums;
  c.block_size = stripe;
  c.queue_depth = 8;
  c.registered_buffers = false;
  return c;
}

std::vector<std::byte> read_raw(const std::string& file, std::uint64_t offset, std::uint64_t len) {
  std::vector<std::byte> out(len);
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << file;
  if (fd < 0) return out;
  EXPECT_EQ(::pread(fd, out.data(), len, static_cast<off_t>(offset)), static_cast<ssize_t>(len));
  ::close(fd);
  return out;
}

bool entries_in(const std::string& dir) {
  return std::filesystem::directory_iterator(dir) != std::filesystem::directory_iterator();
}

class StoreIntegrity : public ::testing::TestWithParam<StoreCase> {};

// Slots of random sizes (most not multiples of 4096, some smaller than a sector, some many
// stripes long) written and read many at a time, released and reused; every read checked
// byte for byte, and the bytes around each destination buffer checked untouched.
TEST_P(StoreIntegrity, RandomSlotsSurviveConcurrentWritesReadsAndReuse) {
  const StoreCase c = GetParam();
  ScratchDir dir("store");
  if (c.direct && !testing::supports_direct(dir.path())) GTEST_SKIP() << "no O_DIRECT under " << dir.path();
  auto engine = make_io_engine(config(c.engine, c.direct, c.checksums));
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto store = SwapStore::create({{dir.sub("a")}, 24 * MiB}, **engine);
  ASSERT_TRUE(store.ok()) << store.status();
  SwapStore& s = **store;

  std::mt19937_64 rng(0x5EED ^ std::hash<std::string>()(c.label()));
  struct Live {
    SwapSlot slot;
    std::vector<std::byte> data;
  };
  std::vector<Live> live;
  int ops = 0;
  int odd_sizes = 0;
  constexpr std::size_t kGuard = 64;
  constexpr int kRounds = 40;
  for (int round = 0; round < kRounds; ++round) {
    // Allocate and write a batch of new slots, all in flight together.
    std::vector<std::shared_ptr<IoCompletion>> pending;
    std::vector<AlignedBytes> staging;
    const int fresh = 12 + static_cast<int>(rng() % 8);
    for (int i = 0; i < fresh; ++i) {
      std::uint64_t size;
      const std::uint64_t kind = rng() % 6;
      if (kind == 0) {
        size = 1 + rng() % 600;  // below a sector or two
      } else if (kind == 1) {
        size = (1 + rng() % 16) * 4096;  // page multiples
      } else if (kind == 2) {
        size = 64 * KiB * (1 + rng() % 4) + (rng() % 3) - 1;  // around stripe boundaries
      } else {
        size = 1 + rng() % (300 * KiB);
      }
      auto slot = s.allocate(size);
      if (!slot.ok()) {
        ASSERT_EQ(slot.status().code(), StatusCode::kOutOfSpace) << slot.status();
        break;
      }
      odd_sizes += size % 4096 != 0 ? 1 : 0;
      Live l{*slot, std::vector<std::byte>(size)};
      fill_random(l.data, rng);
      // One in five writes comes from an unaligned buffer (copied under O_DIRECT).
      staging.emplace_back(size, 4096, rng() % 5 == 0 ? 8 : 0);
      std::memcpy(staging.back().data(), l.data.data(), size);
      auto w = s.write(*slot, staging.back().cspan());
      ASSERT_TRUE(w.ok()) << w.status();
      pending.push_back(*w);
      live.push_back(std::move(l));
      ++ops;
    }
    for (auto& p : pending) ASSERT_TRUE(p->wait().ok()) << p->wait();
    staging.clear();

    // Read a random subset back, concurrently, into guarded buffers.
    std::vector<std::size_t> picks;
    for (std::size_t i = 0; i < live.size(); ++i) {
      if (rng() % 2 == 0) picks.push_back(i);
    }
    std::vector<AlignedBytes> outs;
    std::vector<std::byte*> dsts;
    outs.reserve(picks.size());
    pending.clear();
    for (std::size_t i : picks) {
      const std::size_t size = live[i].data.size();
      // One in five reads lands in an unaligned buffer (read via an aligned copy under O_DIRECT).
      outs.emplace_back(size + kGuard, 4096, rng() % 5 == 0 ? 3 : 0);
      std::memset(outs.back().data(), 0xA5, size + kGuard);
      dsts.push_back(outs.back().data());
      auto r = s.read(live[i].slot, {dsts.back(), size});
      ASSERT_TRUE(r.ok()) << r.status();
      pending.push_back(*r);
      ++ops;
    }
    for (std::size_t k = 0; k < picks.size(); ++k) {
      Status st = pending[k]->wait();
      ASSERT_TRUE(st.ok()) << st;
      const Live& l = live[picks[k]];
      const std::size_t size = l.data.size();
      ASSERT_EQ(std::memcmp(dsts[k], l.data.data(), size), 0) << "round " << round << " slot size " << size;
      for (std::size_t g = 0; g < kGuard; ++g) {
        ASSERT_EQ(dsts[k][size + g], std::byte{0xA5}) << "byte " << g << " past a " << size << "-byte read was overwritten";
      }
    }
    // Release about a third, so later rounds reuse their space.
    for (std::size_t i = 0; i < live.size();) {
      if (rng() % 3 == 0) {
        ASSERT_TRUE(s.release(live[i].slot).ok());
        live[i] = std::move(live.back());
        live.pop_back();
      } else {
        ++i;
      }
    }
  }
  EXPECT_GE(ops, 1000);
  EXPECT_GT(odd_sizes, 100);
  SwapStats st = s.stats();
  EXPECT_EQ(st.checksum_failures, 0u);
  EXPECT_EQ(st.slots, live.size());
  if (c.direct) {
    EXPECT_GT(st.tail_bounces, 0u);
    EXPECT_GT(st.unaligned_copies, 0u);
  }
  std::vector<std::string> dirs = s.run_directories();
  ASSERT_TRUE(s.close().ok());
  for (const std::string& d : dirs) EXPECT_FALSE(std::filesystem::exists(d)) << d;
  EXPECT_FALSE(entries_in(dir.path() + "/a"));
}

INSTANTIATE_TEST_SUITE_P(Engines, StoreIntegrity,
                         ::testing::Values(StoreCase{"io_uring", true, true}, StoreCase{"io_uring", false, false},
                                           StoreCase{"libaio", true, false}, StoreCase{"libaio", false, true},
                                           StoreCase{"posix", true, false}, StoreCase{"posix", false, true}),
                         [](const ::testing::TestParamInfo<StoreCase>& i) { return i.param.label(); });

TEST(SwapStore, StripesRoundRobinOverTwoDirectories) {
  ScratchDir dir("stripe");
  bool direct = testing::supports_direct(dir.path());
  auto engine = make_io_engine(config("io_uring", direct, false, 64 * KiB));
  ASSERT_TRUE(engine.ok()) << engine.status();
  const std::string a = dir.sub("drive0");
  const std::string b = dir.sub("drive1");
  auto store = SwapStore::create({{a, b}, 8 * MiB}, **engine);
  ASSERT_TRUE(store.ok()) << store.status();
  SwapStore& s = **store;
  ASSERT_EQ(s.files().size(), 2u);
  EXPECT_EQ(s.files()[0].rfind(a + "/strata-swap-", 0), 0u) << s.files()[0];
  EXPECT_EQ(s.files()[1].rfind(b + "/strata-swap-", 0), 0u) << s.files()[1];

  const std::uint64_t size = 5 * 64 * KiB + 1234;  // five full stripe units and a partial sixth
  auto slot = s.allocate(size);
  ASSERT_TRUE(slot.ok()) << slot.status();
  std::vector<std::byte> data(size);
  std::mt19937_64 rng(11);
  fill_random(data, rng);
  AlignedBytes src(size);
  std::memcpy(src.data(), data.data(), size);
  auto w = s.write(*slot, src.cspan());
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->wait().ok());

  auto layout = s.layout(*slot);
  ASSERT_TRUE(layout.ok());
  ASSERT_EQ(layout->size(), 6u);
  std::uint64_t per_path[2] = {0, 0};
  for (std::size_t i = 0; i < layout->size(); ++i) {
    const SwapChunk& ch = (*layout)[i];
    EXPECT_EQ(ch.path, ((*layout)[0].path + i) % 2) << "stripe unit " << i << " must alternate drives";
    EXPECT_EQ(ch.slot_offset, i * 64 * KiB);
    EXPECT_EQ(ch.length, i < 5 ? 64 * KiB : 1234u);
    EXPECT_EQ(ch.file, s.files()[ch.path]);
    // The bytes are really in that file at that offset.
    std::vector<std::byte> raw = read_raw(ch.file, ch.file_offset, ch.length);
    EXPECT_EQ(std::memcmp(raw.data(), data.data() + ch.slot_offset, ch.length), 0) << "unit " << i;
    per_path[ch.path] += ch.length;
  }
  EXPECT_GT(per_path[0], 2 * 64 * KiB);
  EXPECT_GT(per_path[1], 2 * 64 * KiB);
  // The padding after the tail is zeros, never stray memory.
  const SwapChunk& last = layout->back();
  std::uint64_t pad = (last.length + s.alignment() - 1) / s.alignment() * s.alignment() - last.length;
  std::vector<std::byte> padding = read_raw(last.file, last.file_offset + last.length, pad);
  for (std::byte x : padding) ASSERT_EQ(x, std::byte{0});

  // Small slots (one 4 KiB extent each) start on the drive with more free space: first they
  // make up the 60 KiB the striped slot left uneven (15 slots), then they alternate.
  const std::uint32_t fuller = (*layout)[0].path;  // it holds units 0, 2 and 4
  int starts[2] = {0, 0};
  for (int i = 0; i < 41; ++i) {
    auto small = s.allocate(1000);
    ASSERT_TRUE(small.ok());
    starts[(*s.layout(*small))[0].path]++;
  }
  EXPECT_EQ(starts[1 - fuller], 28);
  EXPECT_EQ(starts[fuller], 13);

  AlignedBytes back(size);
  auto r = s.read(*slot, back.span());
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE((*r)->wait().ok());
  EXPECT_EQ(std::memcmp(back.data(), data.data(), size), 0);
}

// Flips one byte of a slot in the swap file behind the store's back.
void flip_byte(const SwapChunk& chunk, std::uint64_t at) {
  int fd = ::open(chunk.file.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  unsigned char b = 0;
  ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(chunk.file_offset + at)), 1);
  b ^= 0x10;
  ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(chunk.file_offset + at)), 1);
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);
}

TEST(SwapStore, ChecksumDetectsAFlippedByteAndNamesFileAndOffset) {
  for (bool direct : {true, false}) {
    ScratchDir dir("crc");
    if (direct && !testing::supports_direct(dir.path())) continue;
    for (bool checksums : {true, false}) {
      auto engine = make_io_engine(config("io_uring", direct, checksums, 64 * KiB));
      ASSERT_TRUE(engine.ok()) << engine.status();
      auto store = SwapStore::create({{dir.path()}, 4 * MiB}, **engine);
      ASSERT_TRUE(store.ok()) << store.status();
      SwapStore& s = **store;
      const std::uint64_t size = 3 * 64 * KiB + 777;
      auto slot = s.allocate(size);
      ASSERT_TRUE(slot.ok());
      AlignedBytes data(size);
      std::mt19937_64 rng(5);
      fill_random(data.span(), rng);
      auto w = s.write(*slot, data.cspan());
      ASSERT_TRUE(w.ok());
      ASSERT_TRUE((*w)->wait().ok());
      auto layout = s.layout(*slot);
      ASSERT_TRUE(layout.ok());
      const SwapChunk& victim = (*layout)[2];
      flip_byte(victim, 4321);

      AlignedBytes back(size);
      auto r = s.read(*slot, back.span());
      ASSERT_TRUE(r.ok());
      Status st = (*r)->wait();
      if (checksums) {
        EXPECT_EQ(st.code(), StatusCode::kDataCorruption) << st;
        EXPECT_NE(st.message().find(victim.file), std::string::npos) << st;
        EXPECT_NE(st.message().find("at offset " + std::to_string(victim.file_offset)), std::string::npos) << st;
        EXPECT_EQ(s.stats().checksum_failures, 1u);
      } else {
        // Without checksums the flip goes unnoticed: proof that the flip really landed and
        // that it is the checksum that catches it.
        EXPECT_TRUE(st.ok()) << st;
        EXPECT_NE(std::memcmp(back.data(), data.data(), size), 0);
        EXPECT_EQ(std::to_integer<int>(back.data()[victim.slot_offset + 4321] ^ data.data()[victim.slot_offset + 4321]),
                  0x10);
      }
      // The tail unit has its own checksum too.
      if (checksums) {
        auto w2 = s.write(*slot, data.cspan());
        ASSERT_TRUE(w2.ok());
        ASSERT_TRUE((*w2)->wait().ok());
        flip_byte(layout->back(), 776);  // the slot's very last byte
        auto r2 = s.read(*slot, back.span());
        ASSERT_TRUE(r2.ok());
        Status st2 = (*r2)->wait();
        EXPECT_EQ(st2.code(), StatusCode::kDataCorruption) << st2;
        EXPECT_NE(st2.message().find("at offset " + std::to_string(layout->back().file_offset)), std::string::npos)
            << st2;
      }
    }
  }
}

TEST(SwapStore, FilesArePrivateAndRemovedOnClose) {
  ScratchDir dir("private");
  auto engine = make_io_engine(config("posix", false, false));
  ASSERT_TRUE(engine.ok());
  std::vector<std::string> dirs;
  std::vector<std::string> files;
  {
    auto store = SwapStore::create({{dir.path()}, 1 * MiB}, **engine);
    ASSERT_TRUE(store.ok()) << store.status();
    dirs = (*store)->run_directories();
    files = (*store)->files();
    struct stat st {};
    ASSERT_EQ(::lstat(dirs[0].c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0700u);
    ASSERT_EQ(::lstat(files[0].c_str(), &st), 0);
    EXPECT_TRUE(S_ISREG(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, 0600u);
    EXPECT_GE(static_cast<std::uint64_t>(st.st_blocks) * 512, 1 * MiB) << "the file is preallocated, not sparse";
    EXPECT_NE(dirs[0].find("strata-swap-" + std::to_string(::getpid()) + "-"), std::string::npos) << dirs[0];
  }  // destructor cleans up
  EXPECT_FALSE(std::filesystem::exists(files[0]));
  EXPECT_FALSE(std::filesystem::exists(dirs[0]));
  EXPECT_FALSE(entries_in(dir.path()));
}

TEST(SwapStore, SymbolicLinksAreNeverFollowed) {
  ScratchDir dir("symlink");
  std::string target = dir.path() + "/victim";
  {
    std::FILE* f = std::fopen(target.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs("precious", f);
    std::fclose(f);
  }
  std::string link = dir.path() + "/swap.data";
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  OpenOptions o;
  auto opened = open_data_file(AT_FDCWD, link, o, link);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(opened.status().message().find("symbolic link"), std::string::npos) << opened.status();
  o.create = true;
  EXPECT_FALSE(open_data_file(AT_FDCWD, link, o, link).ok()) << "creation is exclusive";
  EXPECT_EQ(std::filesystem::file_size(target), 8u);
}

TEST(SwapStore, NotEnoughSpaceFailsAtCreationWithTheNumbers) {
  ScratchDir dir("nospace");
  auto engine = make_io_engine(config("posix", false, false));
  ASSERT_TRUE(engine.ok());
  auto avail = free_bytes(dir.path());
  ASSERT_TRUE(avail.ok());
  const std::uint64_t want = *avail + 64 * GiB;
  auto store = SwapStore::create({{dir.sub("x"), dir.sub("y")}, want}, **engine);
  ASSERT_FALSE(store.ok());
  const Status& st = store.status();
  EXPECT_EQ(st.code(), StatusCode::kOutOfSpace) << st;
  const std::string& m = st.message();
  EXPECT_NE(m.find(dir.path() + "/x"), std::string::npos) << m;
  EXPECT_NE(m.find(dir.path() + "/y"), std::string::npos) << m << " (both paths share one file system)";
  EXPECT_NE(m.find("need "), std::string::npos) << m;
  EXPECT_NE(m.find(" are free"), std::string::npos) << m;
  // The number of bytes needed is the total padded to the 4 KiB granule.
  std::uint64_t per_path = ((want + 1) / 2 + 4095) / 4096 * 4096;
  EXPECT_NE(m.find(std::to_string(2 * per_path) + " bytes"), std::string::npos) << m;
  EXPECT_FALSE(entries_in(dir.path() + "/x")) << "nothing is left behind";
  EXPECT_FALSE(entries_in(dir.path() + "/y"));
}

// A file-size limit too small for the swap file fails at creation, before fallocate would
// raise SIGXFSZ, naming the limit, the size and the file.
TEST(SwapStore, FileSizeLimitFailsAtCreation) {
  ScratchDir dir("fsize");
  auto engine = make_io_engine(config("posix", false, false));
  ASSERT_TRUE(engine.ok());
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  struct rlimit small = old;
  small.rlim_cur = 1 * MiB;
  auto previous = std::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  auto store = SwapStore::create({{dir.path()}, 4 * MiB}, **engine);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &old), 0);
  std::signal(SIGXFSZ, previous);
  ASSERT_FALSE(store.ok());
  const std::string& m = store.status().message();
  EXPECT_EQ(store.status().code(), StatusCode::kOutOfSpace) << m;
  EXPECT_NE(m.find("4194304 bytes"), std::string::npos) << m;
  EXPECT_NE(m.find(dir.path() + "/strata-swap-"), std::string::npos) << m;
  EXPECT_NE(m.find("RLIMIT_FSIZE"), std::string::npos) << m;
  EXPECT_FALSE(entries_in(dir.path()));
}

TEST(SwapStore, SlotsAreReusedAndExhaustionIsAClearError) {
  ScratchDir dir("slots");
  auto engine = make_io_engine(config("posix", false, false, 64 * KiB));
  ASSERT_TRUE(engine.ok());
  auto store = SwapStore::create({{dir.path()}, 1 * MiB}, **engine);
  ASSERT_TRUE(store.ok()) << store.status();
  SwapStore& s = **store;
  std::vector<SwapSlot> slots;
  for (;;) {
    auto slot = s.allocate(100 * KiB);
    if (!slot.ok()) {
      EXPECT_EQ(slot.status().code(), StatusCode::kOutOfSpace);
      EXPECT_NE(slot.status().message().find("swap store full"), std::string::npos) << slot.status();
      EXPECT_NE(slot.status().message().find("raise the swap capacity"), std::string::npos) << slot.status();
      break;
    }
    slots.push_back(*slot);
  }
  ASSERT_EQ(slots.size(), 10u);  // 100 KiB rounds to 100 KiB (4 KiB granule): 10 fit in 1 MiB
  std::vector<std::byte> data(100 * KiB, std::byte{7});
  auto w = s.write(slots[3], data);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->wait().ok());
  ASSERT_TRUE(s.release(slots[3]).ok());
  EXPECT_EQ(s.release(slots[3]).code(), StatusCode::kInvalidArgument) << "a released handle is stale";
  std::vector<std::byte> out(100 * KiB);
  EXPECT_EQ(s.read(slots[3], out).status().code(), StatusCode::kInvalidArgument);
  auto again = s.allocate(100 * KiB);
  ASSERT_TRUE(again.ok()) << "released space is reused";
  EXPECT_EQ(again->index, slots[3].index);
  EXPECT_NE(again->generation, slots[3].generation);
  EXPECT_EQ(s.read(*again, out).status().code(), StatusCode::kFailedPrecondition) << "never written";
  EXPECT_EQ(s.write(*again, std::span<const std::byte>(data).first(10)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.allocate(0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.stats().slots, 10u);
}

TEST(SwapStore, ConfigurationErrorsNameTheCause) {
  ScratchDir dir("cfg");
  auto engine = make_io_engine(config("posix", false, false));
  ASSERT_TRUE(engine.ok());
  auto missing = SwapStore::create({{dir.path() + "/nope"}, MiB}, **engine);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir.path() + "/nope"), std::string::npos);
  EXPECT_EQ(SwapStore::create({{}, MiB}, **engine).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SwapStore::create({{dir.path(), dir.path()}, MiB}, **engine).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SwapStore::create({{dir.path()}, 0}, **engine).status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(entries_in(dir.path()));
}

}  // namespace
}  // namespace strata::nvme
