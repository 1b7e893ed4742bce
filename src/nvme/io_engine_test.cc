// Tests of the IoEngine backends: integrity under thousands of random concurrent reads and
// writes (every engine, direct and buffered, io_uring with fixed buffers, SQPOLL and two
// rings), splitting, shared completions, chaining from finalizers, and error reporting.
#include "nvme/io_engine.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "nvme/file.h"
#include "nvme/io_piece.h"
#include "nvme/nvme_test_util.h"

namespace strata::nvme {
namespace {

using testing::AlignedBytes;
using testing::ScratchDir;
using testing::fill_random;

struct EngineCase {
  std::string engine;
  bool direct;
  bool registered = false;
  bool sqpoll = false;
  int threads = 1;
  std::string label() const {
    std::string s = engine == "io_uring" ? "uring" : engine;
    s += direct ? "_direct" : "_buffered";
    if (registered) s += "_fixed";
    if (sqpoll) s += "_sqpoll";
    if (threads > 1) s += "_t" + std::to_string(threads);
    return s;
  }
};

NvmeConfig config_for(const EngineCase& c, std::uint64_t block_size = 64 * 1024, int qd = 8) {
  NvmeConfig cfg;
  cfg.engine = c.engine;
  cfg.direct = c.direct;
  cfg.registered_buffers = c.registered;
  cfg.sqpoll = c.sqpoll;
  cfg.threads = c.threads;
  cfg.block_size = block_size;
  cfg.queue_depth = qd;
  return cfg;
}

UniqueFd make_file(const std::string& path, bool direct, std::uint64_t size) {
  OpenOptions o;
  o.create = true;
  o.direct = direct;
  auto fd = open_data_file(AT_FDCWD, path, o, path);
  EXPECT_TRUE(fd.ok()) << fd.status();
  if (!fd.ok()) return UniqueFd();
  EXPECT_EQ(::ftruncate(fd->get(), static_cast<off_t>(size)), 0);
  return std::move(fd).value();
}

class EngineIntegrity : public ::testing::TestWithParam<EngineCase> {};

// Rounds of random non-overlapping reads and writes of random sizes, many in flight at
// once, checked against a shadow copy of the file.
TEST_P(EngineIntegrity, RandomConcurrentReadsAndWritesMatchShadow) {
  const EngineCase c = GetParam();
  ScratchDir dir("engine");
  if (c.direct && !testing::supports_direct(dir.path())) GTEST_SKIP() << "no O_DIRECT under " << dir.path();
  constexpr std::uint64_t kFile = 8ULL << 20;
  UniqueFd fd = make_file(dir.path() + "/data", c.direct, kFile);
  ASSERT_TRUE(fd.valid());
  const std::uint64_t unit = c.direct ? query_dio_alignment(fd.get()).offset : 1;

  auto engine = make_io_engine(config_for(c));
  ASSERT_TRUE(engine.ok()) << engine.status();
  IoEngine& e = **engine;
  EXPECT_EQ(e.name(), c.engine);

  // Registered buffers: one arena that every op buffer is carved from.
  constexpr std::size_t kArena = 12ULL << 20;
  AlignedBytes arena(kArena);
  if (c.registered) {
    std::span<std::byte> whole = arena.span();
    ASSERT_TRUE(e.register_buffers(std::span<const std::span<std::byte>>(&whole, 1)).ok());
  }

  std::mt19937_64 rng(0xC0FFEE ^ std::hash<std::string>()(c.label()));
  std::vector<std::byte> shadow(kFile);
  fill_random(shadow, rng);
  {
    std::memcpy(arena.data(), shadow.data(), kFile);
    auto done = IoCompletion::make();
    ASSERT_TRUE(e.submit(IoRequest::write(fd.get(), 0, {arena.data(), kFile}, done)).ok());
    ASSERT_TRUE(done->wait().ok());
    EXPECT_EQ(done->bytes_transferred(), kFile);
  }

  struct Op {
    IoOp op;
    std::uint64_t offset;
    std::uint64_t length;
    std::byte* buf;
    std::shared_ptr<IoCompletion> completion;
  };
  int total_ops = 0;
  int non4k_sizes = 0;
  constexpr int kRounds = 50;
  constexpr int kOpsPerRound = 60;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<Op> ops;
    std::size_t arena_used = 0;
    int attempts = 0;
    while (static_cast<int>(ops.size()) < kOpsPerRound && attempts++ < 10 * kOpsPerRound) {
      std::uint64_t len = std::uniform_int_distribution<std::uint64_t>(1, 160 * 1024 / unit)(rng) * unit;
      if (!c.direct) len = std::uniform_int_distribution<std::uint64_t>(1, 160 * 1024)(rng);
      std::uint64_t off = std::uniform_int_distribution<std::uint64_t>(0, (kFile - len) / unit)(rng) * unit;
      bool overlaps = std::any_of(ops.begin(), ops.end(), [&](const Op& o) {
        return off < o.offset + o.length && o.offset < off + len;
      });
      if (overlaps) continue;
      std::size_t start = (arena_used + 4095) / 4096 * 4096;
      if (!c.direct) start = arena_used + (rng() % 7);  // unaligned buffers are fine without O_DIRECT
      if (start + len > kArena) break;
      arena_used = start + len;
      Op op{rng() % 2 == 0 ? IoOp::kRead : IoOp::kWrite, off, len, arena.data() + start, nullptr};
      if (op.op == IoOp::kWrite) fill_random({op.buf, len}, rng);
      non4k_sizes += len % 4096 != 0 ? 1 : 0;
      ops.push_back(op);
    }
    // Every third op shares one completion with its neighbours in the same batch.
    std::vector<IoRequest> batch;
    std::shared_ptr<IoCompletion> shared = IoCompletion::make();
    bool shared_used = false;
    for (std::size_t i = 0; i < ops.size(); ++i) {
      Op& o = ops[i];
      if (i % 3 == 0) {
        o.completion = shared;
        shared_used = true;
      } else {
        o.completion = IoCompletion::make();
      }
      batch.push_back(o.op == IoOp::kRead ? IoRequest::read(fd.get(), o.offset, {o.buf, o.length}, o.completion)
                                          : IoRequest::write(fd.get(), o.offset, {o.buf, o.length}, o.completion));
      if (batch.size() == 16) {  // several submissions per round, all in flight together
        ASSERT_TRUE(e.submit(batch).ok());
        batch.clear();
        if (shared_used) {
          shared = IoCompletion::make();
          shared_used = false;
        }
      }
    }
    if (!batch.empty()) {
      ASSERT_TRUE(e.submit(batch).ok());
    }
    for (Op& o : ops) {
      Status st = o.completion->wait();
      ASSERT_TRUE(st.ok()) << st;
      if (o.op == IoOp::kRead) {
        ASSERT_EQ(std::memcmp(o.buf, shadow.data() + o.offset, o.length), 0)
            << "round " << round << " read at " << o.offset << " length " << o.length;
      } else {
        std::memcpy(shadow.data() + o.offset, o.buf, o.length);
      }
    }
    total_ops += static_cast<int>(ops.size());
  }
  ASSERT_TRUE(e.drain().ok());
  EXPECT_GE(total_ops, 2000);
  EXPECT_GT(non4k_sizes, total_ops / 2) << "sizes that are not multiples of 4096 must be exercised";

  // The file holds exactly the shadow.
  auto done = IoCompletion::make();
  ASSERT_TRUE(e.submit(IoRequest::read(fd.get(), 0, {arena.data(), kFile}, done)).ok());
  ASSERT_TRUE(done->wait().ok());
  EXPECT_EQ(std::memcmp(arena.data(), shadow.data(), kFile), 0);

  IoStats s = e.stats();
  EXPECT_GT(s.pieces, static_cast<std::uint64_t>(total_ops));  // large requests were split
  EXPECT_EQ(s.failed, 0u);
  if (c.registered) {
    EXPECT_GT(s.fixed_buffer_pieces, 0u);
  } else {
    EXPECT_EQ(s.fixed_buffer_pieces, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Engines, EngineIntegrity,
    ::testing::Values(EngineCase{"io_uring", true}, EngineCase{"io_uring", false}, EngineCase{"libaio", true},
                      EngineCase{"libaio", false}, EngineCase{"posix", true}, EngineCase{"posix", false},
                      EngineCase{"io_uring", true, true}, EngineCase{"io_uring", true, false, true},
                      EngineCase{"io_uring", true, true, false, 2}, EngineCase{"libaio", true, false, false, 2},
                      EngineCase{"posix", false, false, false, 2}),
    [](const ::testing::TestParamInfo<EngineCase>& i) { return i.param.label(); });

class EngineBasics : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineBasics, SplitsLargeRequestsIntoBlockSizePieces) {
  ScratchDir dir("split");
  EngineCase c{GetParam(), testing::supports_direct(dir.path())};
  constexpr std::uint64_t kLen = (1ULL << 20) + 3 * 4096;  // 16 full pieces and a short one
  UniqueFd fd = make_file(dir.path() + "/f", c.direct, kLen);
  auto engine = make_io_engine(config_for(c, 64 * 1024, 4));
  ASSERT_TRUE(engine.ok()) << engine.status();
  AlignedBytes buf(kLen);
  std::mt19937_64 rng(7);
  fill_random(buf.span(), rng);
  auto w = IoCompletion::make();
  ASSERT_TRUE((*engine)->submit(IoRequest::write(fd.get(), 0, buf.cspan(), w)).ok());
  ASSERT_TRUE(w->wait().ok());
  EXPECT_EQ((*engine)->stats().pieces, 17u);
  EXPECT_EQ((*engine)->stats().bytes_written, kLen);
  AlignedBytes back(kLen);
  auto r = IoCompletion::make();
  ASSERT_TRUE((*engine)->submit(IoRequest::read(fd.get(), 0, back.span(), r)).ok());
  ASSERT_TRUE(r->wait().ok());
  EXPECT_EQ(std::memcmp(buf.data(), back.data(), kLen), 0);
  IoCapabilities caps = (*engine)->capabilities();
  EXPECT_EQ(caps.max_queue_depth, 4);
  EXPECT_EQ(caps.threads, 1);
  EXPECT_TRUE(caps.direct_io);
}

// The ring backends keep queue_depth pieces in flight: a ring never exceeds the depth and
// reaches it for a request of many pieces (queued before the ring wakes, so the first refill
// takes a full ring whatever the disk's speed).
TEST_P(EngineBasics, ReachesItsQueueDepthWithoutExceedingIt) {
  if (GetParam() == "posix") GTEST_SKIP() << "the posix engine runs one piece per thread; it has no ring";
  ScratchDir dir("depth");
  EngineCase c{GetParam(), testing::supports_direct(dir.path())};
  constexpr std::uint64_t kLen = 16ULL << 20;  // 256 pieces of 64 KiB
  constexpr int kDepth = 4;
  UniqueFd fd = make_file(dir.path() + "/f", c.direct, kLen);
  auto engine = make_io_engine(config_for(c, 64 * 1024, kDepth));
  ASSERT_TRUE(engine.ok()) << engine.status();
  AlignedBytes buf(kLen);
  std::mt19937_64 rng(11);
  fill_random(buf.span(), rng);
  auto w = IoCompletion::make();
  ASSERT_TRUE((*engine)->submit(IoRequest::write(fd.get(), 0, buf.cspan(), w)).ok());
  ASSERT_TRUE(w->wait().ok());
  AlignedBytes back(kLen);
  auto r = IoCompletion::make();
  ASSERT_TRUE((*engine)->submit(IoRequest::read(fd.get(), 0, back.span(), r)).ok());
  ASSERT_TRUE(r->wait().ok());
  EXPECT_EQ(std::memcmp(buf.data(), back.data(), kLen), 0);
  const IoStats s = (*engine)->stats();
  EXPECT_EQ(s.pieces, 512u);
  EXPECT_EQ(s.max_in_flight, static_cast<std::uint64_t>(kDepth));
  EXPECT_LE(s.topped_up, s.pieces);
}

// The ring tops its queue up as completions arrive instead of waiting for it to empty (waves).
// Made independent of the disk's speed by holding one completion back: the first piece reads
// from a pipe that the test fills only after everything else has completed, so each later
// piece is submitted while that one is in flight. libaio cannot be held back this way: Linux
// AIO performs a pipe read inside io_submit, which would stall the ring itself.
TEST_P(EngineBasics, TopsUpItsQueueWhileAPieceIsStillInFlight) {
  if (GetParam() != "io_uring") GTEST_SKIP() << "a held-back completion needs io_uring's asynchronous pipe reads";
  ScratchDir dir("topup");
  EngineCase c{GetParam(), false};
  constexpr std::uint64_t kBlock = 4096;
  constexpr int kDepth = 4;
  constexpr std::uint64_t kPieces = 64;
  UniqueFd file = make_file(dir.path() + "/f", false, kBlock * kPieces);
  auto engine = make_io_engine(config_for(c, kBlock, kDepth));
  ASSERT_TRUE(engine.ok()) << engine.status();
  // Declared after the engine, so an early return closes the pipe first: the held read then
  // ends (at end of file) and the engine's destructor does not wait for it forever.
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  UniqueFd gate_out(pipe_fds[0]), gate_in(pipe_fds[1]);
  AlignedBytes held(kBlock), data(kBlock * kPieces);
  std::mt19937_64 rng(5);
  fill_random(data.span(), rng);
  auto gated = IoCompletion::make();
  auto rest = IoCompletion::make();
  // One batch: the ring's first refill takes the gated read and kDepth - 1 pieces of the write.
  const IoRequest batch[] = {IoRequest::read(gate_out.get(), 0, held.span(), gated),
                             IoRequest::write(file.get(), 0, data.cspan(), rest)};
  ASSERT_TRUE((*engine)->submit(batch).ok());
  ASSERT_TRUE(rest->wait().ok());
  EXPECT_FALSE(gated->done());
  const IoStats s = (*engine)->stats();
  EXPECT_EQ(s.max_in_flight, static_cast<std::uint64_t>(kDepth));
  EXPECT_EQ(s.topped_up, kPieces - (kDepth - 1)) << "every piece after the first refill joins a ring still holding one";
  std::vector<char> release(kBlock, 'g');
  ASSERT_EQ(::write(gate_in.get(), release.data(), kBlock), static_cast<ssize_t>(kBlock));
  ASSERT_TRUE(gated->wait().ok());
  EXPECT_EQ(held.data()[kBlock - 1], std::byte{'g'});
}

// A finalizer that submits the next request keeps a chain going without the caller: the
// way a benchmark keeps its queue full.
TEST_P(EngineBasics, FinalizersMaySubmitAndDrainWaitsForChains) {
  ScratchDir dir("chain");
  EngineCase c{GetParam(), false};
  constexpr std::uint64_t kBlock = 8192;
  constexpr int kChains = 4;
  constexpr int kPerChain = 50;
  UniqueFd fd = make_file(dir.path() + "/f", false, kBlock * kChains * kPerChain);
  auto engine = make_io_engine(config_for(c, 4096, 4));
  ASSERT_TRUE(engine.ok()) << engine.status();
  IoEngine& e = **engine;
  AlignedBytes buf(kBlock * kChains);
  std::atomic<int> completed{0};
  std::atomic<int> errors{0};
  std::function<void(int, int)> issue = [&](int chain, int step) {
    auto comp = IoCompletion::make([&, chain, step](Status st) {
      if (!st.ok()) ++errors;
      ++completed;
      if (step + 1 < kPerChain) issue(chain, step + 1);
      return st;
    });
    std::uint64_t off = (static_cast<std::uint64_t>(step) * kChains + static_cast<std::uint64_t>(chain)) * kBlock;
    Status s = e.submit(IoRequest::write(fd.get(), off, {buf.data() + chain * kBlock, kBlock}, comp));
    if (!s.ok()) ++errors;
  };
  for (int ch = 0; ch < kChains; ++ch) issue(ch, 0);
  ASSERT_TRUE(e.drain().ok());
  EXPECT_EQ(completed.load(), kChains * kPerChain);
  EXPECT_EQ(errors.load(), 0);
}

TEST_P(EngineBasics, ReadPastEndOfFileFailsNamingTheFile) {
  ScratchDir dir("eof");
  EngineCase c{GetParam(), false};
  std::string path = dir.path() + "/short";
  UniqueFd fd = make_file(path, false, 10000);
  auto engine = make_io_engine(config_for(c, 4096, 4));
  ASSERT_TRUE(engine.ok()) << engine.status();
  AlignedBytes buf(20000);
  auto r = IoCompletion::make();
  ASSERT_TRUE((*engine)->submit(IoRequest::read(fd.get(), 0, buf.span(), r)).ok());
  Status st = r->wait();
  EXPECT_EQ(st.code(), StatusCode::kIoError) << st;
  EXPECT_NE(st.message().find(path), std::string::npos) << st;
  EXPECT_NE(st.message().find("end of the file"), std::string::npos) << st;
  // The bytes that exist were read; the error is not lost by drain either.
  EXPECT_EQ(r->bytes_transferred(), 10000u);
  Status d = (*engine)->drain();
  EXPECT_FALSE(d.ok());
  EXPECT_NE(d.message().find("I/O operation(s) failed"), std::string::npos) << d;
  EXPECT_TRUE((*engine)->drain().ok()) << "a drain reports each failure once";
}

TEST_P(EngineBasics, KernelErrorsBecomeStatusesNamingOperationAndFile) {
  ScratchDir dir("ebadf");
  EngineCase c{GetParam(), false};
  std::string path = dir.path() + "/ro";
  {
    UniqueFd w = make_file(path, false, 8192);
  }
  int ro = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(ro, 0);
  UniqueFd fd(ro);
  auto engine = make_io_engine(config_for(c, 4096, 4));
  ASSERT_TRUE(engine.ok()) << engine.status();
  AlignedBytes buf(8192);
  auto w = IoCompletion::make();
  ASSERT_TRUE((*engine)->submit(IoRequest::write(fd.get(), 0, buf.cspan(), w)).ok());
  Status st = w->wait();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("EBADF"), std::string::npos) << st;
  EXPECT_NE(st.message().find(path), std::string::npos) << st;
  EXPECT_NE(st.message().find("write of"), std::string::npos) << st;
  (*engine)->drain().ignore();
}

TEST_P(EngineBasics, RejectsMalformedRequestsWithoutQueueingAny) {
  auto engine = make_io_engine(config_for(EngineCase{GetParam(), true}, 4096, 4));
  ASSERT_TRUE(engine.ok()) << engine.status();
  AlignedBytes buf(8192);
  auto good = IoCompletion::make();
  auto other = IoCompletion::make();
  std::vector<IoRequest> batch = {IoRequest::read(0, 0, {buf.data(), 4096}, good),
                                  IoRequest::read(0, 100, {buf.data(), 4096}, other)};
  Status st = (*engine)->submit(batch);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("request 1"), std::string::npos) << st;
  EXPECT_NE(st.message().find("O_DIRECT"), std::string::npos) << st;
  EXPECT_FALSE(good->done());
  EXPECT_EQ(good->wait().code(), StatusCode::kFailedPrecondition) << "never armed, so waiting must not block";
  EXPECT_EQ((*engine)->submit(IoRequest::read(0, 0, {buf.data(), 0}, good)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*engine)->submit(IoRequest::read(-1, 0, {buf.data(), 4096}, good)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*engine)->submit(IoRequest::read(0, 0, {buf.data(), 4096}, nullptr)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*engine)->stats().pieces, 0u);
  EXPECT_TRUE((*engine)->drain().ok());
}

TEST_P(EngineBasics, CompletionsAreSingleUse) {
  ScratchDir dir("reuse");
  UniqueFd fd = make_file(dir.path() + "/f", false, 4096);
  auto engine = make_io_engine(config_for(EngineCase{GetParam(), false}, 4096, 2));
  ASSERT_TRUE(engine.ok()) << engine.status();
  AlignedBytes buf(4096);
  auto c = IoCompletion::make();
  ASSERT_TRUE((*engine)->submit(IoRequest::read(fd.get(), 0, buf.span(), c)).ok());
  ASSERT_TRUE(c->wait().ok());
  EXPECT_EQ((*engine)->submit(IoRequest::read(fd.get(), 0, buf.span(), c)).code(), StatusCode::kFailedPrecondition);
}

INSTANTIATE_TEST_SUITE_P(Engines, EngineBasics, ::testing::Values("io_uring", "libaio", "posix"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           return i.param == "io_uring" ? std::string("uring") : i.param;
                         });

TEST(DioAlignment, QueriedFromTheFileSystemOrTheDevice) {
  ScratchDir dir("align");
  UniqueFd fd = make_file(dir.path() + "/f", false, 4096);
  DioAlignment a = query_dio_alignment(fd.get());
  EXPECT_GE(a.offset, 512u);
  EXPECT_EQ(a.offset & (a.offset - 1), 0u) << "a power of two";
  EXPECT_FALSE(a.source.empty());
  StorageInfo info = describe_storage(dir.path());
  if (info.logical_block_size != 0 && a.source != "statx") {
    EXPECT_EQ(a.offset, info.logical_block_size);
  }
  // The block device itself answers BLKSSZGET (when this process may open it).
  if (!info.block_device.empty()) {
    int dev = ::open(("/dev/" + info.block_device).c_str(), O_RDONLY | O_CLOEXEC);
    if (dev >= 0) {
      UniqueFd d(dev);
      DioAlignment b = query_dio_alignment(d.get());
      EXPECT_EQ(b.source, "BLKSSZGET");
      EXPECT_EQ(b.offset, info.logical_block_size);
    }
  }
}

TEST(EngineRegistry, UnknownNameListsKnownEngines) {
  NvmeConfig cfg;
  cfg.engine = "spdk";
  auto e = make_io_engine(cfg);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  const std::string& m = e.status().message();
  EXPECT_NE(m.find("\"spdk\""), std::string::npos) << m;
  for (const std::string& n : io_engine_names()) EXPECT_NE(m.find("\"" + n + "\""), std::string::npos) << m;
  EXPECT_EQ(io_engine_names(), (std::vector<std::string>{"io_uring", "libaio", "posix"}));
}

TEST(EngineRegistry, ValidatesRanges) {
  NvmeConfig cfg;
  cfg.block_size = 1000;
  EXPECT_NE(validate_nvme_config(cfg).message().find("nvme.block_size"), std::string::npos);
  cfg = NvmeConfig{};
  cfg.queue_depth = 0;
  EXPECT_NE(validate_nvme_config(cfg).message().find("nvme.queue_depth"), std::string::npos);
  cfg = NvmeConfig{};
  cfg.threads = 0;
  EXPECT_NE(validate_nvme_config(cfg).message().find("nvme.threads"), std::string::npos);
  cfg = NvmeConfig{};
  cfg.engine = "libaio";
  EXPECT_NE(validate_nvme_config(cfg).message().find("nvme.registered_buffers"), std::string::npos)
      << "a feature the backend lacks is refused, not ignored";
  cfg.registered_buffers = false;
  cfg.sqpoll = true;
  EXPECT_NE(validate_nvme_config(cfg).message().find("nvme.sqpoll"), std::string::npos);
  EXPECT_TRUE(validate_nvme_config(NvmeConfig{}).ok());
}

// The result classification every backend uses.
TEST(IoPiece, AdvanceHandlesShortTransfersRetriesAndErrors) {
  ScratchDir dir("piece");
  UniqueFd fd = make_file(dir.path() + "/p", false, 4096);
  std::byte buf[100];
  IoPiece p;
  p.op = IoOp::kRead;
  p.fd = fd.get();
  p.offset = 1000;
  p.data = buf;
  p.length = 100;
  Status err;
  EXPECT_EQ(advance_piece(p, 30, &err), PieceStep::kResubmitShort);
  EXPECT_EQ(p.next_offset(), 1030u);
  EXPECT_EQ(p.next_data(), buf + 30);
  EXPECT_EQ(p.remaining(), 70u);
  EXPECT_EQ(advance_piece(p, -EAGAIN, &err), PieceStep::kResubmitRetry);
  EXPECT_EQ(advance_piece(p, -EINTR, &err), PieceStep::kResubmitRetry);
  EXPECT_EQ(p.remaining(), 70u);
  EXPECT_EQ(advance_piece(p, 70, &err), PieceStep::kComplete);
  EXPECT_EQ(p.retries, 0);

  p.done = 0;
  EXPECT_EQ(advance_piece(p, -EIO, &err), PieceStep::kFailed);
  EXPECT_EQ(err.code(), StatusCode::kIoError);
  EXPECT_NE(err.message().find("read of 100 bytes at offset 1000"), std::string::npos) << err;
  EXPECT_NE(err.message().find(dir.path() + "/p"), std::string::npos) << err;

  EXPECT_EQ(advance_piece(p, 0, &err), PieceStep::kFailed) << "a read of 0 bytes is the end of the file";
  EXPECT_EQ(advance_piece(p, 101, &err), PieceStep::kFailed) << "more than asked is a kernel/engine bug";
  EXPECT_EQ(err.code(), StatusCode::kInternal);

  p.op = IoOp::kWrite;
  p.retries = 0;
  EXPECT_EQ(advance_piece(p, 0, &err), PieceStep::kResubmitRetry);
  p.retries = kMaxPieceRetries;
  EXPECT_EQ(advance_piece(p, -EAGAIN, &err), PieceStep::kFailed) << "retries are bounded";
  EXPECT_NE(err.message().find("gave up"), std::string::npos) << err;

  p.retries = 0;
  EXPECT_EQ(advance_piece(p, -ENOSPC, &err), PieceStep::kFailed);
  EXPECT_EQ(err.code(), StatusCode::kOutOfSpace);
}

TEST(IoCompletion, SharedCompletionReportsFirstErrorAndShortTransfers) {
  auto c = IoCompletion::make();
  ASSERT_TRUE(c->arm(2, 200).ok());
  c->finish(Status::OK(), 100);
  EXPECT_FALSE(c->done());
  c->finish(io_error("second failed"), 10);
  EXPECT_TRUE(c->done());
  EXPECT_EQ(c->wait().message(), "second failed");
  EXPECT_EQ(c->bytes_transferred(), 110u);
  EXPECT_FALSE(c->arm(1, 1).ok());

  auto s = IoCompletion::make();
  ASSERT_TRUE(s->arm(1, 4096).ok());
  s->finish(Status::OK(), 4000);
  Status st = s->wait();
  EXPECT_EQ(st.code(), StatusCode::kIoError);
  EXPECT_NE(st.message().find("short transfer: 4000 of 4096"), std::string::npos) << st;

  int calls = 0;
  auto f = IoCompletion::make([&](Status in) {
    ++calls;
    EXPECT_TRUE(in.ok());
    return data_corruption("verified and rejected");
  });
  ASSERT_TRUE(f->arm(1, 1).ok());
  f->finish(Status::OK(), 1);
  EXPECT_EQ(f->wait().code(), StatusCode::kDataCorruption);
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace strata::nvme
