// Crash-safe checkpoints (strata/checkpoint.h): write to a temporary directory, fsync, rename
// into place; manifest with per-file CRC-32C; verification before any state is touched.
#include "strata/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "engine/checkpoint_io.h"
#include "nvme/crc32c.h"
#include "strata/log.h"

namespace strata {

namespace ckpt {

namespace fs = std::filesystem;

Status write_all(int fd, const void* data, std::size_t n, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return STRATA_ERRNO(errno, "write", path);
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return Status::OK();
}

Status read_all(int fd, void* data, std::size_t n, const std::string& path) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      return STRATA_ERRNO(errno, "read", path);
    }
    if (r == 0) return data_corruption("checkpoint file " + path + " ends early (truncated)");
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return Status::OK();
}

Status fsync_path(const std::string& path, bool directory) {
  Fd f(::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC));
  if (f.fd < 0) return STRATA_ERRNO(errno, "open for fsync", path);
  if (::fsync(f.fd) != 0) return STRATA_ERRNO(errno, "fsync", path);
  return Status::OK();
}

// A new file written in full, fsynced; returns its CRC-32C.
class FileWriter {
 public:
  static Result<std::unique_ptr<FileWriter>> open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return STRATA_ERRNO(errno, "create", path);
    return std::unique_ptr<FileWriter>(new FileWriter(fd, path));
  }
  Status append(const void* data, std::size_t n) {
    crc_ = nvme::crc32c(data, n, crc_);
    bytes_ += n;
    return write_all(fd_.fd, data, n, path_);
  }
  Status finish() {
    if (::fsync(fd_.fd) != 0) return STRATA_ERRNO(errno, "fsync", path_);
    if (::close(fd_.fd) != 0) {
      fd_.fd = -1;
      return STRATA_ERRNO(errno, "close", path_);
    }
    fd_.fd = -1;
    return Status::OK();
  }
  std::uint32_t crc() const { return crc_; }
  std::uint64_t bytes() const { return bytes_; }

 private:
  FileWriter(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  Fd fd_;
  std::string path_;
  std::uint32_t crc_ = 0;
  std::uint64_t bytes_ = 0;
};

Status remove_tree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) return io_error("checkpoint: removing " + path + ": " + ec.message());
  return Status::OK();
}

Status pwrite_all(int fd, const void* data, std::size_t n, std::uint64_t offset, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return STRATA_ERRNO(errno, "write", path);
    }
    p += w;
    offset += static_cast<std::uint64_t>(w);
    n -= static_cast<std::size_t>(w);
  }
  return Status::OK();
}

}  // namespace ckpt

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace ckpt;

json dims_json(const ModelDims& d) {
  return json{{"n_layer", d.n_layer}, {"n_head", d.n_head}, {"n_embd", d.n_embd}, {"vocab", d.vocab}, {"seq_len", d.seq_len}};
}

bool is_checkpoint_name(const std::string& name) {
  if (name.size() != 13 || name.rfind("step-", 0) != 0) return false;
  return std::all_of(name.begin() + 5, name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Complete checkpoints in `dir`, oldest first.
std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (is_checkpoint_name(n) && e.is_directory(ec)) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Appends every parameter's `which` state to `w`, from this rank's optimizer, which holds all
// of it.
Status append_state(Trainer& trainer, OptimizerState which, FileWriter& w) {
  std::vector<float> buf;
  for (const Parameter* p : trainer.model().parameters()) {
    for (std::uint64_t first = 0; first < p->numel();) {
      const std::size_t n = std::min<std::uint64_t>(kSlice, p->numel() - first);
      buf.resize(n);
      STRATA_RETURN_IF_ERROR(trainer.optimizer().read_state(*p, which, first, buf).with_context("checkpoint: reading " + p->name()));
      STRATA_RETURN_IF_ERROR(w.append(buf.data(), n * sizeof(float)));
      first += n;
    }
  }
  return Status::OK();
}

// The same from tensor shards and pipeline stages: every rank gathers each whole tensor of the
// whole model (Trainer::read_model_state), the writer (w non-null) appends it; a write that
// fails stops the writing, not the gathers.
Status append_whole_state(Trainer& trainer, OptimizerState which, FileWriter* w) {
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Gpt> shapes, trainer.whole_model());
  std::vector<float> whole;
  Status failed;
  for (const Parameter* p : shapes->parameters()) {
    STRATA_RETURN_IF_ERROR(trainer.read_model_state(p->name(), which, &whole).with_context("checkpoint: gathering " + p->name()));
    if (w != nullptr && failed.ok()) failed = w->append(whole.data(), whole.size() * sizeof(float));
  }
  return failed;
}

Status write_checkpoint(Trainer& trainer, const std::string& tmp) {
  // Any update still running ends first, and its weights reach the device: with the delayed
  // update the step after a checkpoint then sees the same weights in the saving run as in a run
  // resumed from it (set_master puts the masters on the device).
  STRATA_RETURN_IF_ERROR(trainer.optimizer().synchronize().with_context("checkpoint: finishing the running update"));
  json files = json::array();
  for (OptimizerState which : kTensors) {
    const std::string name = file_of(which);
    STRATA_ASSIGN_OR_RETURN(auto w, FileWriter::open(tmp + "/" + name));
    STRATA_RETURN_IF_ERROR(append_state(trainer, which, *w));
    STRATA_RETURN_IF_ERROR(w->finish());
    files.push_back(json{{"name", name}, {"bytes", w->bytes()}, {"crc32c", w->crc()}});
  }
  return write_manifest(trainer, files, tmp);
}

// Reads and checks the manifest; verifies every file's size and checksum.
// Reads and checks the manifest, and that every file it lists exists with its size.
Result<json> read_manifest(const std::string& dir) {
  const std::string mpath = dir + "/" + kManifest;
  Fd f(::open(mpath.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) {
    if (errno == ENOENT) return not_found("checkpoint " + dir + ": " + kManifest + " is missing (not a checkpoint, or an incomplete one)");
    return STRATA_ERRNO(errno, "open", mpath);
  }
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return STRATA_ERRNO(errno, "stat", mpath);
  if (st.st_size > (64 << 20)) return data_corruption("checkpoint file " + mpath + " is implausibly large for a manifest");
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  STRATA_RETURN_IF_ERROR(read_all(f.fd, text.data(), text.size(), mpath));
  json m = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (m.is_discarded() || !m.is_object()) return data_corruption("checkpoint file " + mpath + " is not valid JSON");
  auto bad = [&](const std::string& what) { return data_corruption("checkpoint file " + mpath + ": " + what); };
  if (!m.contains("format") || m["format"] != kFormat) return bad("\"format\" is not \"" + std::string(kFormat) + "\"");
  if (!m.contains("version") || !m["version"].is_number_integer() || m["version"] != kVersion) {
    return bad("unsupported \"version\" (this build reads version " + std::to_string(kVersion) + ")");
  }
  for (const char* key : {"step", "optimizer_updates"}) {
    if (!m.contains(key) || !m[key].is_number_integer() || m[key].get<std::int64_t>() < 0) {
      return bad(std::string("\"") + key + "\" must be a non-negative integer");
    }
  }
  if (!m.contains("loss_scale") || !m["loss_scale"].is_object() || !m["loss_scale"].contains("scale") ||
      !m["loss_scale"]["scale"].is_number() || !m["loss_scale"].contains("clean_steps") ||
      !m["loss_scale"]["clean_steps"].is_number_integer() || !m["loss_scale"].contains("tolerance_left") ||
      !m["loss_scale"]["tolerance_left"].is_number_integer()) {
    return bad("\"loss_scale\" must hold scale, clean_steps and tolerance_left");
  }
  if (!m.contains("model") || !m["model"].is_object() || !m.contains("parameters") || !m["parameters"].is_array() ||
      !m.contains("optimizer") || !m["optimizer"].is_object()) {
    return bad("\"model\", \"optimizer\" and \"parameters\" are required");
  }
  if (!m.contains("files") || !m["files"].is_array()) return bad("\"files\" must be an array");
  for (const json& e : m["files"]) {
    if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || !e.contains("bytes") ||
        !e["bytes"].is_number_unsigned() || !e.contains("crc32c") || !e["crc32c"].is_number_unsigned()) {
      return bad("each entry of \"files\" needs name, bytes and crc32c");
    }
    const std::string name = e["name"];
    if (name.find('/') != std::string::npos || name.empty() || name[0] == '.') return bad("file name \"" + name + "\" is not allowed");
    const std::string path = dir + "/" + name;
    Fd d(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (d.fd < 0) {
      if (errno == ENOENT) return data_corruption("checkpoint file " + path + " is missing");
      return STRATA_ERRNO(errno, "open", path);
    }
    struct stat fst {};
    if (::fstat(d.fd, &fst) != 0) return STRATA_ERRNO(errno, "stat", path);
    const std::uint64_t want = e["bytes"];
    if (static_cast<std::uint64_t>(fst.st_size) != want) {
      return data_corruption("checkpoint file " + path + " has " + std::to_string(fst.st_size) + " bytes; the manifest says " +
                             std::to_string(want) + " (truncated or replaced)");
    }
  }
  return m;
}

// read_manifest(), then every file re-read against its CRC-32C.
Result<json> verify(const std::string& dir) {
  STRATA_ASSIGN_OR_RETURN(json m, read_manifest(dir));
  std::vector<char> buf(8 << 20);
  for (const json& e : m["files"]) {
    const std::string path = dir + "/" + e["name"].get<std::string>();
    Fd d(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (d.fd < 0) return STRATA_ERRNO(errno, "open", path);
    const std::uint64_t want = e["bytes"];
    std::uint32_t crc = 0;
    for (std::uint64_t left = want; left > 0;) {
      const std::size_t n = std::min<std::uint64_t>(left, buf.size());
      STRATA_RETURN_IF_ERROR(read_all(d.fd, buf.data(), n, path));
      crc = nvme::crc32c(buf.data(), n, crc);
      left -= n;
    }
    if (crc != e["crc32c"].get<std::uint32_t>()) {
      return data_corruption("checkpoint file " + path + " fails its CRC-32C checksum (the bytes changed after it was written)");
    }
  }
  return m;
}

// The checkpoint must describe `trainer`'s model and optimizer.
Status check_match(const json& m, Trainer& trainer, const std::string& dir) {
  const std::string mpath = dir + "/" + kManifest;
  auto mismatch = [&](const std::string& what) {
    return failed_precondition("checkpoint " + mpath + " does not match this run: " + what);
  };
  const GptConfig& gc = trainer.model().config();
  const json want = dims_json(gc.dims);
  const json& have = m["model"].value("dims", json::object());
  for (auto it = want.begin(); it != want.end(); ++it) {
    if (!have.contains(it.key()) || have[it.key()] != it.value()) {
      return mismatch("model " + it.key() + " is " + (have.contains(it.key()) ? have[it.key()].dump() : "absent") +
                      " in the checkpoint and " + it.value().dump() + " in the profile");
    }
  }
  const std::string dt = m["model"].value("dtype", "");
  if (dt != dtype_name(gc.dtype)) {
    return mismatch("precision.dtype is " + dt + " in the checkpoint and " + std::string(dtype_name(gc.dtype)) + " in the profile");
  }
  const std::string ot = m["optimizer"].value("type", "");
  if (ot != trainer.profile().optimizer.type) {
    return mismatch("optimizer.type is " + ot + " in the checkpoint and " + trainer.profile().optimizer.type + " in the profile");
  }
  // Whole tensors, whatever the grid that saved and the one that resumes.
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Gpt> whole, trainer.whole_model());
  const auto params = whole->parameters();
  const json& mp = m["parameters"];
  if (mp.size() != params.size()) {
    return mismatch(std::to_string(mp.size()) + " parameters in the checkpoint, " + std::to_string(params.size()) + " in the model");
  }
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < params.size(); ++i) {
    const json& e = mp[i];
    if (!e.is_object() || e.value("name", "") != params[i]->name() || e.value("numel", std::uint64_t{0}) != params[i]->numel() ||
        e.value("offset", std::uint64_t{~0ULL}) != offset) {
      return mismatch("parameter " + std::to_string(i) + " is " + e.dump() + " in the checkpoint and " + params[i]->name() +
                      " with " + std::to_string(params[i]->numel()) + " elements in the model");
    }
    offset += params[i]->numel();
  }
  for (OptimizerState which : kTensors) {
    const std::string name = file_of(which);
    bool found = false;
    for (const json& e : m["files"]) {
      if (e["name"] == name) {
        found = true;
        if (e["bytes"].get<std::uint64_t>() != offset * sizeof(float)) {
          return data_corruption("checkpoint " + mpath + ": " + name + " holds " + e["bytes"].dump() + " bytes; " +
                                 std::to_string(offset) + " parameters need " + std::to_string(offset * sizeof(float)));
        }
      }
    }
    if (!found) return data_corruption("checkpoint " + mpath + ": \"files\" does not list " + name);
  }
  return Status::OK();
}

}  // namespace

namespace ckpt {

Status write_manifest(Trainer& trainer, const json& files, const std::string& tmp) {
  const Profile& prof = trainer.profile();
  const GptConfig& gc = trainer.model().config();
  StepOptimizer& opt = trainer.optimizer();
  json params = json::array();
  std::uint64_t offset = 0;
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Gpt> whole, trainer.whole_model());
  for (const Parameter* p : whole->parameters()) {
    params.push_back(json{{"name", p->name()}, {"numel", p->numel()}, {"offset", offset}});
    offset += p->numel();
  }
  const LossScaleState ls = trainer.loss_scale_state();
  json m;
  m["format"] = kFormat;
  m["version"] = kVersion;
  m["step"] = trainer.steps_done();
  m["optimizer_updates"] = opt.updates();
  m["optimizer"] = {{"type", prof.optimizer.type}, {"backend", opt.name()}};
  m["loss_scale"] = {{"scale", ls.scale}, {"clean_steps", ls.clean_steps}, {"tolerance_left", ls.tolerance_left}};
  m["data"] = {{"next_step", trainer.steps_done()},
               {"micro_batch", prof.train.micro_batch},
               {"grad_accum", prof.train.grad_accum},
               {"sampling", "strata/data.h sequential: offset (((s*A + a)*B + r)*T) mod (N - T - 1)"}};
  m["rng"] = {{"seed", prof.train.seed}, {"kind", "counter-based (seed, name, index); no other random state"}};
  m["model"] = {{"dims", dims_json(gc.dims)},
                {"dtype", std::string(dtype_name(gc.dtype))},
                {"grad_dtype", std::string(dtype_name(gc.grad_dtype))}};
  m["parameters"] = params;
  m["saved_by"] = {{"dp", trainer.dp_size()},
                   {"tp", trainer.tp_group() == nullptr ? 1 : trainer.tp_group()->size()},
                   {"pp", trainer.pp_group() == nullptr ? 1 : trainer.pp_group()->size()},
                   {"zero_stage", trainer.zero_stage()},
                   {"optimizer_device", std::string(offload_target_name(prof.offload_optimizer.device))},
                   {"param_device", std::string(offload_target_name(prof.offload_param.device))}};
  m["files"] = files;
  const std::string text = m.dump(1);
  const std::string mpath = tmp + "/" + kManifest;
  STRATA_ASSIGN_OR_RETURN(auto w, FileWriter::open(mpath));
  STRATA_RETURN_IF_ERROR(w->append(text.data(), text.size()));
  STRATA_RETURN_IF_ERROR(w->finish());
  return fsync_path(tmp, /*directory=*/true);
}

Status prepare_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return io_error("checkpoint: creating " + dir + ": " + ec.message());
  // Temporary directories of saves that were killed.
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(".step-", 0) == 0 && n.find(".tmp-") != std::string::npos) STRATA_RETURN_IF_ERROR(remove_tree(e.path().string()));
  }
  return Status::OK();
}

std::string tmp_path(const std::string& dir, std::int64_t step, long pid) {
  return dir + "/." + step_name(step) + ".tmp-" + std::to_string(pid);
}

Result<std::string> publish(Trainer& trainer, const std::string& dir, const std::string& tmp, const CheckpointOptions& options) {
  std::error_code ec;
  const std::string name = step_name(trainer.steps_done());
  const std::string final_path = dir + "/" + name;
  Status s;
  if (fs::exists(final_path, ec)) s = remove_tree(final_path);  // the same step saved again
  if (s.ok() && ::rename(tmp.c_str(), final_path.c_str()) != 0) s = STRATA_ERRNO(errno, "rename", tmp + " -> " + final_path);
  if (s.ok()) s = fsync_path(dir, /*directory=*/true);
  if (!s.ok()) {
    remove_tree(tmp).ignore();
    return s.with_context("checkpoint of step " + std::to_string(trainer.steps_done()) + " in " + dir +
                          " not written (earlier checkpoints are intact)");
  }
  const auto all = list_checkpoints(dir);
  const std::size_t keep = static_cast<std::size_t>(std::max(1, options.keep));
  for (std::size_t i = 0; i + keep < all.size(); ++i) {
    if (all[i] != name) STRATA_RETURN_IF_ERROR(remove_tree(dir + "/" + all[i]));
  }
  STRATA_LOG(kInfo) << "checkpoint: step " << trainer.steps_done() << " saved in " << final_path;
  return final_path;
}

}  // namespace ckpt

std::string checkpoint_name(std::int64_t step) { return step_name(step); }

bool checkpoint_due(const TrainConfig& train, std::int64_t steps_done, bool last) {
  if (train.checkpoint_dir.empty() || steps_done <= 0) return false;
  if (last) return true;
  return train.checkpoint_every > 0 && steps_done % train.checkpoint_every == 0;
}

Result<std::string> latest_checkpoint(const std::string& dir) {
  const auto all = list_checkpoints(dir);
  if (all.empty()) return not_found("no checkpoint (step-NNNNNNNN directory) in " + dir);
  return dir + "/" + all.back();
}

// A tensor- or pipeline-parallel save: every rank gathers each whole tensor over its dp, tp and
// pp groups, and global rank 0 writes the files of a one-rank checkpoint (which any grid
// resumes).
Result<std::string> save_gathered(Trainer& trainer, const std::string& dir, const CheckpointOptions& options) {
  const bool writer = trainer.dp_rank() == 0 && (trainer.tp_group() == nullptr || trainer.tp_group()->rank() == 0) &&
                      (trainer.pp_group() == nullptr || trainer.pp_group()->rank() == 0);
  STRATA_RETURN_IF_ERROR(trainer.optimizer().synchronize().with_context("checkpoint: finishing the running update"));
  const std::string tmp = tmp_path(dir, trainer.steps_done(), static_cast<long>(::getpid()));
  Status failed;
  if (writer) {
    failed = prepare_dir(dir);
    if (failed.ok() && ::mkdir(tmp.c_str(), 0700) != 0) failed = STRATA_ERRNO(errno, "mkdir", tmp);
  }
  json files = json::array();
  for (OptimizerState which : kTensors) {
    std::unique_ptr<FileWriter> w;
    if (writer && failed.ok()) {
      auto opened = FileWriter::open(tmp + "/" + file_of(which));
      if (opened.ok()) w = std::move(*opened);
      else failed = opened.status();
    }
    Status appended = append_whole_state(trainer, which, w.get());
    if (failed.ok()) failed = appended;
    if (w != nullptr && failed.ok()) failed = w->finish();
    if (w != nullptr && failed.ok()) files.push_back(json{{"name", file_of(which)}, {"bytes", w->bytes()}, {"crc32c", w->crc()}});
  }
  if (!writer) {
    if (!failed.ok()) return failed;
    return dir + "/" + step_name(trainer.steps_done());
  }
  if (failed.ok()) failed = write_manifest(trainer, files, tmp);
  if (!failed.ok()) {
    remove_tree(tmp).ignore();
    return failed.with_context("checkpoint of step " + std::to_string(trainer.steps_done()) + " in " + dir +
                               " not written (earlier checkpoints are intact)");
  }
  return publish(trainer, dir, tmp, options);
}

Result<std::string> save_checkpoint(Trainer& trainer, const std::string& dir, const CheckpointOptions& options) {
  if (dir.empty()) return invalid_argument("checkpoint: the directory is empty");
  if (trainer.tp_group() != nullptr || trainer.pp_group() != nullptr) return save_gathered(trainer, dir, options);
  // One rank holds everything, whatever its ZeRO stage.
  if (trainer.zero_stage() >= 1 && trainer.dp_group() != nullptr) return save_sharded(trainer, dir, options);
  STRATA_RETURN_IF_ERROR(prepare_dir(dir));
  const std::string tmp = tmp_path(dir, trainer.steps_done(), static_cast<long>(::getpid()));
  if (::mkdir(tmp.c_str(), 0700) != 0) return STRATA_ERRNO(errno, "mkdir", tmp);
  if (Status s = write_checkpoint(trainer, tmp); !s.ok()) {
    remove_tree(tmp).ignore();
    return s.with_context("checkpoint of step " + std::to_string(trainer.steps_done()) + " in " + dir +
                          " not written (earlier checkpoints are intact)");
  }
  return publish(trainer, dir, tmp, options);
}

namespace {

// `path` itself when it holds a manifest, else its newest complete checkpoint.
Result<std::string> resolve(const std::string& path) {
  std::error_code ec;
  if (fs::exists(path + "/" + kManifest, ec)) return path;
  if (!fs::is_directory(path, ec)) return not_found("checkpoint: " + path + " does not exist");
  auto latest = latest_checkpoint(path);
  if (!latest.ok()) return not_found("checkpoint: " + path + " holds no manifest.json and no step-NNNNNNNN checkpoint");
  return latest;
}

}  // namespace

Result<CheckpointManifest> read_checkpoint_manifest(const std::string& path, bool verify_checksums) {
  STRATA_ASSIGN_OR_RETURN(std::string dir, resolve(path));
  STRATA_ASSIGN_OR_RETURN(json m, verify_checksums ? verify(dir) : read_manifest(dir));
  return CheckpointManifest{dir, m.dump(1), verify_checksums};
}

Result<std::string> load_checkpoint(Trainer& trainer, const std::string& path) {
  STRATA_ASSIGN_OR_RETURN(std::string dir, resolve(path));
  STRATA_ASSIGN_OR_RETURN(json m, verify(dir));
  STRATA_RETURN_IF_ERROR(check_match(m, trainer, dir));
  StepOptimizer& opt = trainer.optimizer();
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Gpt> whole, trainer.whole_model());
  std::vector<float> buf;
  for (OptimizerState which : kTensors) {
    const std::string fpath = dir + "/" + file_of(which);
    Fd f(::open(fpath.c_str(), O_RDONLY | O_CLOEXEC));
    if (f.fd < 0) return STRATA_ERRNO(errno, "open", fpath);
    for (Parameter* q : whole->parameters()) {
      Parameter* p = trainer.model().find_parameter(q->name());
      if (p == nullptr || p->shard().split()) {  // another stage's, or a tensor shard: read whole
        buf.resize(q->numel());
        STRATA_RETURN_IF_ERROR(read_all(f.fd, buf.data(), buf.size() * sizeof(float), fpath));
        STRATA_RETURN_IF_ERROR(trainer.write_model_state(q->name(), which, buf).with_context("checkpoint: restoring " + q->name()));
        continue;
      }
      for (std::uint64_t first = 0; first < p->numel();) {
        const std::size_t n = std::min<std::uint64_t>(kSlice, p->numel() - first);
        buf.resize(n);
        STRATA_RETURN_IF_ERROR(read_all(f.fd, buf.data(), n * sizeof(float), fpath));
        STRATA_RETURN_IF_ERROR(trainer.write_state(*p, which, first, buf).with_context("checkpoint: restoring " + p->name()));
        first += n;
      }
    }
  }
  STRATA_RETURN_IF_ERROR(opt.set_updates(m["optimizer_updates"].get<std::int64_t>()));
  LossScaleState ls;
  ls.scale = m["loss_scale"]["scale"].get<double>();
  ls.clean_steps = m["loss_scale"]["clean_steps"].get<int>();
  ls.tolerance_left = m["loss_scale"]["tolerance_left"].get<int>();
  STRATA_RETURN_IF_ERROR(trainer.restore_progress(m["step"].get<std::int64_t>(), ls));
  STRATA_LOG(kInfo) << "checkpoint: resumed from " << dir << " at step " << trainer.steps_done();
  return dir;
}

}  // namespace strata
