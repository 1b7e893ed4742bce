// The sharded save of strata/checkpoint.h (ZeRO stages 1 to 3), a collective of the
// data-parallel group, in the same world-size-independent format as every other save:
//   0. rank 0 makes the temporary directory and the three state files at their full size;
//   1. every rank writes its own elements of each file at their global offsets and fsyncs;
//   2. only once every rank has (the ranks agree by a host all-reduce after each phase) does
//      rank 0 checksum the files, write the manifest and rename the directory into place.
// A save killed at any point leaves at most the temporary directory, which loading ignores and
// the next save removes: the previous checkpoint stays whole. A rank that fails a phase makes
// every rank return an error naming it. The directory must be one that every rank reaches (on
// several hosts, a shared file system).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "engine/checkpoint_io.h"
#include "nvme/crc32c.h"
#include "strata/log.h"

namespace strata::ckpt {

namespace {

// The ranks that report failure, agreed by every rank.
Result<std::vector<int>> failed_ranks(Communicator& group, const Status& mine) {
  std::vector<double> flags(static_cast<std::size_t>(group.size()), 0.0);
  flags[static_cast<std::size_t>(group.rank())] = mine.ok() ? 0.0 : 1.0;
  STRATA_RETURN_IF_ERROR(group.all_reduce_host(flags, ReduceOp::kSum));
  std::vector<int> out;
  for (std::size_t r = 0; r < flags.size(); ++r) {
    if (flags[r] > 0) out.push_back(static_cast<int>(r));
  }
  return out;
}

// This rank's own error, or one naming the ranks that failed.
Status phase_failed(const Status& mine, const std::vector<int>& ranks, const std::string& phase) {
  if (!mine.ok()) return mine.with_context("checkpoint: " + phase);
  std::string names;
  for (int r : ranks) names += (names.empty() ? "" : ", ") + std::to_string(r);
  return unavailable("checkpoint: " + phase + " failed on rank " + names + " (its message says why)");
}

std::uint64_t total_elements(Trainer& t) {
  std::uint64_t n = 0;
  for (const Parameter* p : t.model().parameters()) n += p->numel();
  return n;
}

// Phase 0 (rank 0): the temporary directory and the state files, each of its full size.
Status create_files(Trainer& t, const std::string& dir, const std::string& tmp) {
  STRATA_RETURN_IF_ERROR(prepare_dir(dir));
  if (::mkdir(tmp.c_str(), 0700) != 0) return STRATA_ERRNO(errno, "mkdir", tmp);
  const auto bytes = static_cast<off_t>(total_elements(t) * sizeof(float));
  for (OptimizerState which : kTensors) {
    const std::string path = tmp + "/" + file_of(which);
    Fd f(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (f.fd < 0) return STRATA_ERRNO(errno, "create", path);
    if (::ftruncate(f.fd, bytes) != 0) return STRATA_ERRNO(errno, "truncate", path);
  }
  return Status::OK();
}

// Phase 1 (every rank): its elements of every state file, at their global offsets, fsynced.
Status write_own_elements(Trainer& t, const std::string& tmp) {
  std::vector<float> buf;
  for (OptimizerState which : kTensors) {
    const std::string path = tmp + "/" + file_of(which);
    Fd f(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (f.fd < 0) return STRATA_ERRNO(errno, "open", path);
    std::uint64_t offset = 0;
    for (const Parameter* p : t.model().parameters()) {
      const auto [lo, hi] = t.owned_elements(*p);
      for (std::uint64_t first = lo; first < hi;) {
        const std::size_t n = std::min<std::uint64_t>(kSlice, hi - first);
        buf.resize(n);
        STRATA_RETURN_IF_ERROR(t.optimizer().read_state(*p, which, first, buf).with_context("checkpoint: reading " + p->name()));
        STRATA_RETURN_IF_ERROR(pwrite_all(f.fd, buf.data(), n * sizeof(float), (offset + first) * sizeof(float), path));
        first += n;
      }
      offset += p->numel();
    }
    if (::fsync(f.fd) != 0) return STRATA_ERRNO(errno, "fsync", path);
  }
  return Status::OK();
}

// Phase 2 (rank 0): every file's size and CRC-32C, read back whole.
Result<json> checksum_files(const std::string& tmp) {
  json files = json::array();
  std::vector<char> buf(8 << 20);
  for (OptimizerState which : kTensors) {
    const std::string name = file_of(which);
    const std::string path = tmp + "/" + name;
    Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (f.fd < 0) return STRATA_ERRNO(errno, "open", path);
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) return STRATA_ERRNO(errno, "stat", path);
    const auto bytes = static_cast<std::uint64_t>(st.st_size);
    std::uint32_t crc = 0;
    for (std::uint64_t done = 0; done < bytes;) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), bytes - done));
      STRATA_RETURN_IF_ERROR(read_all(f.fd, buf.data(), n, path));
      crc = nvme::crc32c(buf.data(), n, crc);
      done += n;
    }
    files.push_back(json{{"name", name}, {"bytes", bytes}, {"crc32c", crc}});
  }
  return files;
}

}  // namespace

Result<std::string> save_sharded(Trainer& trainer, const std::string& dir, const CheckpointOptions& options) {
  Communicator* group = trainer.dp_group();
  if (group == nullptr) return internal_error("checkpoint: a sharded save needs the data-parallel group");
  const bool root = group->rank() == 0;
  // Any update still running ends first (and, delayed, reaches the device): see write_checkpoint.
  Status mine = trainer.optimizer().synchronize().with_context("finishing the running update");
  std::vector<double> pid = {root ? static_cast<double>(::getpid()) : 0.0};
  STRATA_RETURN_IF_ERROR(group->all_reduce_host(pid, ReduceOp::kMax));
  const std::string tmp = tmp_path(dir, trainer.steps_done(), static_cast<long>(pid[0]));
  if (root && mine.ok()) mine = create_files(trainer, dir, tmp);
  STRATA_ASSIGN_OR_RETURN(std::vector<int> failed, failed_ranks(*group, mine));
  auto give_up = [&](const Status& why) -> Status {
    if (root) remove_tree(tmp).ignore();
    return why.with_context("checkpoint of step " + std::to_string(trainer.steps_done()) + " in " + dir +
                            " not written (earlier checkpoints are intact)");
  };
  if (!failed.empty()) return give_up(phase_failed(mine, failed, "preparing the directory"));

  mine = write_own_elements(trainer, tmp);
  STRATA_ASSIGN_OR_RETURN(failed, failed_ranks(*group, mine));
  if (!failed.empty()) return give_up(phase_failed(mine, failed, "writing a rank's shard"));

  Result<std::string> published = dir + "/" + step_name(trainer.steps_done());
  if (root) {
    auto files = checksum_files(tmp);
    Status manifest = files.ok() ? write_manifest(trainer, *files, tmp) : files.status();
    published = manifest.ok() ? publish(trainer, dir, tmp, options) : Result<std::string>(give_up(manifest));
  }
  STRATA_ASSIGN_OR_RETURN(failed, failed_ranks(*group, published.status()));
  if (!failed.empty()) return published.ok() ? phase_failed(Status::OK(), failed, "writing the manifest") : published.status();
  return published;
}

}  // namespace strata::ckpt
