// Profile: names, presets, cross-field validation and the normalised TOML/JSON writers.
// Parsing lives in profile_io.cc.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/profile_internal.h"
#include "strata/profile.h"
#include "strata/units.h"

namespace strata {

#ifndef STRATA_VERSION
#define STRATA_VERSION "0.0.0"
#endif
std::string_view version() { return STRATA_VERSION; }

std::string_view offload_target_name(OffloadTarget t) {
  switch (t) {
    case OffloadTarget::kNone: return "none";
    case OffloadTarget::kCpu: return "cpu";
    case OffloadTarget::kNvme: return "nvme";
  }
  return "?";
}

std::string_view pipeline_schedule_name(PipelineSchedule s) {
  switch (s) {
    case PipelineSchedule::kGPipe: return "gpipe";
    case PipelineSchedule::k1F1B: return "1f1b";
    case PipelineSchedule::kInterleaved: return "interleaved";
    case PipelineSchedule::kZbH1: return "zb-h1";
  }
  return "?";
}

std::uint64_t ModelDims::parameter_count() const {
  const std::uint64_t C = static_cast<std::uint64_t>(n_embd);
  const std::uint64_t L = static_cast<std::uint64_t>(n_layer);
  const std::uint64_t V = static_cast<std::uint64_t>(vocab);
  const std::uint64_t T = static_cast<std::uint64_t>(seq_len);
  // wte + wpe + per block (ln_1, c_attn, attn c_proj, ln_2, c_fc, mlp c_proj) + ln_f; head tied.
  return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C;
}

namespace {
struct Preset {
  const char* name;
  ModelDims dims;
};
// n_layer, n_head, n_embd, vocab, seq_len
constexpr Preset kPresets[] = {
    {"tiny", {2, 2, 32, 256, 32}},
    {"small", {4, 4, 128, 256, 64}},
    {"default", {4, 4, 256, 256, 128}},
    {"gpt2", {12, 12, 768, 50257, 1024}},
    {"gpt2-medium", {24, 16, 1024, 50257, 1024}},
    {"gpt2-large", {36, 20, 1280, 50257, 1024}},
    {"gpt2-xl", {48, 25, 1600, 50257, 1024}},
    {"2b", {26, 20, 2560, 50257, 1024}},
    {"4b", {34, 24, 3072, 50257, 1024}},
    {"7b", {32, 32, 4096, 50257, 2048}},
};

// What a swap path may hold, in the order Profile::for_rank() takes their values.
constexpr std::string_view kRankPlaceholders[] = {"{rank}", "{local_rank}"};

// The first "{...}" of a swap path that is not one of kRankPlaceholders; empty when none.
std::string unknown_placeholder(const std::string& path) {
  for (std::size_t open = path.find('{'); open != std::string::npos; open = path.find('{', open + 1)) {
    const std::size_t close = path.find('}', open);
    std::string word = close == std::string::npos ? path.substr(open) : path.substr(open, close - open + 1);
    if (std::find(std::begin(kRankPlaceholders), std::end(kRankPlaceholders), word) == std::end(kRankPlaceholders)) {
      return word;
    }
  }
  return {};
}

void replace_all(std::string& s, std::string_view from, const std::string& to) {
  for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
}

void expand_rank_paths(std::vector<std::string>& paths, int rank, int local_rank) {
  const int values[] = {rank, local_rank};
  for (std::string& path : paths) {
    for (std::size_t i = 0; i < std::size(kRankPlaceholders); ++i) {
      replace_all(path, kRankPlaceholders[i], std::to_string(values[i]));
    }
  }
}
}  // namespace

Profile Profile::for_rank(int rank, int local_rank) const {
  Profile p = *this;
  expand_rank_paths(p.offload_optimizer.nvme_path, rank, local_rank);
  expand_rank_paths(p.offload_param.nvme_path, rank, local_rank);
  return p;
}

bool model_preset(std::string_view name, ModelDims* out) {
  for (const Preset& p : kPresets) {
    if (name == p.name) {
      *out = p.dims;
      return true;
    }
  }
  return false;
}

std::vector<std::string> model_preset_names() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.emplace_back(p.name);
  return names;
}

namespace profile_detail {

std::vector<FieldError> validate_fields(const Profile& p) {
  std::vector<FieldError> errors;
  auto fail = [&](std::string key, std::string msg) { errors.push_back({std::move(key), std::move(msg)}); };

  if (p.offload_optimizer.device == OffloadTarget::kNvme && p.offload_optimizer.nvme_path.empty()) {
    fail("offload.optimizer.nvme_path",
         "required when offload.optimizer.device = \"nvme\": give one directory per drive, e.g. nvme_path = \"/mnt/nvme0/strata\"");
  }
  auto check_placeholders = [&](const char* key, const std::vector<std::string>& paths) {
    for (const std::string& path : paths) {
      if (std::string word = unknown_placeholder(path); !word.empty()) {
        fail(key, "'" + path + "' holds '" + word + "'; the placeholders a swap path may hold are {rank} and {local_rank}");
      }
    }
  };
  check_placeholders("offload.optimizer.nvme_path", p.offload_optimizer.nvme_path);
  check_placeholders("offload.param.nvme_path", p.offload_param.nvme_path);
  if (p.offload_optimizer.delayed_update && p.offload_optimizer.device == OffloadTarget::kNone) {
    fail("offload.optimizer.delayed_update",
         "the delayed update runs the offloaded optimizer behind the next step: it needs offload.optimizer.device = "
         "\"cpu\" or \"nvme\", or delayed_update = false");
  }
  if (p.offload_param.device == OffloadTarget::kNvme && p.offload_param.nvme_path.empty()) {
    fail("offload.param.nvme_path",
         "required when offload.param.device = \"nvme\": give one directory per drive, e.g. nvme_path = \"/mnt/nvme0/strata\"");
  }
  if (p.offload_param.device != OffloadTarget::kNone && p.zero.stage != 3) {
    fail("offload.param.device", "parameter offload needs ZeRO stage 3 (zero.stage = 3); found zero.stage = " +
                                     std::to_string(p.zero.stage));
  }
  if (p.offload_param.device != OffloadTarget::kNone && p.zero.stage == 3 &&
      p.offload_optimizer.device == OffloadTarget::kNone) {
    fail("offload.param.device", "parameter offload keeps each rank's parameter shard in the offloaded optimizer's "
                                 "host memory or NVMe swap, where its update runs; the device optimizer has neither: "
                                 "set offload.optimizer.device = \"cpu\" or \"nvme\"");
  }
  if (p.offload_param.device == OffloadTarget::kNvme &&
      static_cast<std::uint64_t>(p.offload_param.buffer_count) * p.offload_param.buffer_size > p.memory.host_budget) {
    fail("offload.param.buffer_size",
         "offload.param.buffer_count x buffer_size = " +
             format_bytes(static_cast<std::uint64_t>(p.offload_param.buffer_count) * p.offload_param.buffer_size) +
             " exceeds memory.host_budget = " + format_bytes(p.memory.host_budget) +
             "; lower buffer_count or buffer_size, or raise host_budget");
  }
  if (p.offload_param.device == OffloadTarget::kNvme && p.offload_param.buffer_size > p.memory.device_budget) {
    fail("offload.param.buffer_size", "offload.param.buffer_size = " + format_bytes(p.offload_param.buffer_size) +
                                          " exceeds memory.device_budget = " + format_bytes(p.memory.device_budget));
  }
  if (p.nvme.block_size > p.memory.host_budget) {
    fail("nvme.block_size", "nvme.block_size = " + format_bytes(p.nvme.block_size) +
                                " exceeds memory.host_budget = " + format_bytes(p.memory.host_budget) +
                                ": a budget smaller than one I/O buffer cannot work");
  }
  if (p.nvme.direct && p.nvme.block_size % 4096 != 0) {
    fail("nvme.block_size", "with nvme.direct = true the block size must be a multiple of 4096 bytes; found " +
                                std::to_string(p.nvme.block_size));
  }
  if (p.nvme.sqpoll && p.nvme.engine != "io_uring") {
    fail("nvme.sqpoll", "sqpoll is an io_uring feature; nvme.engine is \"" + p.nvme.engine + "\"");
  }
  if (p.nvme.registered_buffers && p.nvme.engine != "io_uring") {
    fail("nvme.registered_buffers", "registered buffers are an io_uring feature; set registered_buffers = false for engine \"" +
                                        p.nvme.engine + "\"");
  }

  const ModelDims& d = p.train.dims;
  if (d.n_head > 0 && d.n_embd % d.n_head != 0) {
    fail("train.n_embd", "n_embd = " + std::to_string(d.n_embd) + " is not divisible by n_head = " + std::to_string(d.n_head));
  }
  if (p.parallel.tp > 1 && d.n_head % p.parallel.tp != 0) {
    fail("parallel.tp", "tp = " + std::to_string(p.parallel.tp) + " does not divide train.n_head = " + std::to_string(d.n_head));
  }
  if (p.parallel.pp > 1 || p.parallel.virtual_stages > 1) {
    int chunks = p.parallel.pp * p.parallel.virtual_stages;
    if (d.n_layer % chunks != 0) {
      fail("parallel.virtual_stages", "pp x virtual_stages = " + std::to_string(chunks) +
                                          " does not divide train.n_layer = " + std::to_string(d.n_layer));
    }
  }
  if (p.parallel.virtual_stages > 1 && p.parallel.schedule != PipelineSchedule::kInterleaved) {
    fail("parallel.virtual_stages", "virtual_stages > 1 needs schedule = \"interleaved\"; found \"" +
                                        std::string(pipeline_schedule_name(p.parallel.schedule)) + "\"");
  }
  if (p.parallel.pp > 1 && p.parallel.schedule == PipelineSchedule::kZbH1 && p.activation.checkpointing) {
    fail("parallel.schedule", "\"zb-h1\" defers the weight gradients, which read the blocks' activations after "
                              "backward, and activation.checkpointing keeps none: choose another schedule or turn "
                              "checkpointing off");
  }
  if (p.parallel.pp > 1 && p.parallel.schedule != PipelineSchedule::kGPipe && p.train.grad_accum < p.parallel.pp) {
    fail("train.grad_accum", "the pipeline's micro-batches per step are train.grad_accum = " +
                                 std::to_string(p.train.grad_accum) + ", fewer than its pp = " +
                                 std::to_string(p.parallel.pp) + " stages: set grad_accum to at least pp");
  }
  if (p.precision.dtype == DType::kF16 && !p.precision.dynamic_loss_scale && p.precision.loss_scale <= 0) {
    fail("precision.loss_scale", "fp16 needs loss_scale = \"dynamic\" or a positive number");
  }
  if (p.precision.grad_dtype != DType::kF32 && p.precision.grad_dtype != p.precision.dtype) {
    fail("precision.grad_dtype", "grad_dtype = \"" + std::string(dtype_name(p.precision.grad_dtype)) +
                                     "\" must be \"fp32\" or the same as precision.dtype (\"" +
                                     std::string(dtype_name(p.precision.dtype)) + "\")");
  }
  if (p.precision.dynamic_loss_scale && p.precision.min_loss_scale > std::ldexp(1.0, p.precision.initial_scale_power)) {
    fail("precision.min_loss_scale", "min_loss_scale exceeds the initial scale 2^initial_scale_power");
  }
  if (p.train.checkpoint_every > 0 && p.train.checkpoint_dir.empty()) {
    fail("train.checkpoint_every", "checkpoint_every needs train.checkpoint_dir (or --checkpoint-dir)");
  }
  return errors;
}

}  // namespace profile_detail

Status Profile::validate() const {
  auto errors = profile_detail::validate_fields(*this);
  if (errors.empty()) return Status::OK();
  return invalid_argument(errors.front().key + ": " + errors.front().message);
}

// ---- writers ---------------------------------------------------------------------------------

namespace {

std::string toml_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string toml_double(double v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, res.ptr);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string toml_paths(const std::vector<std::string>& paths) {
  std::string s = "[";
  for (std::size_t i = 0; i < paths.size(); ++i) s += (i ? ", " : "") + toml_string(paths[i]);
  return s + "]";
}

std::string toml_bool(bool b) { return b ? "true" : "false"; }
std::string toml_bytes(std::uint64_t b) { return toml_string(format_bytes(b)); }

}  // namespace

std::string Profile::to_toml() const {
  std::ostringstream o;
  o << "[memory]\n"
    << "device_budget = " << toml_bytes(memory.device_budget) << "\n"
    << "host_budget = " << toml_bytes(memory.host_budget) << "\n"
    << "host_device_bandwidth = " << toml_bytes(memory.host_device_bandwidth) << "\n\n";
  o << "[offload.optimizer]\n"
    << "device = " << toml_string(offload_target_name(offload_optimizer.device)) << "\n"
    << "nvme_path = " << toml_paths(offload_optimizer.nvme_path) << "\n"
    << "pin_memory = " << toml_bool(offload_optimizer.pin_memory) << "\n"
    << "buffer_count = " << offload_optimizer.buffer_count << "\n"
    << "buffer_size = " << toml_bytes(offload_optimizer.buffer_size) << "\n"
    << "pipeline_read = " << toml_bool(offload_optimizer.pipeline_read) << "\n"
    << "pipeline_write = " << toml_bool(offload_optimizer.pipeline_write) << "\n"
    << "overlap_step = " << toml_bool(offload_optimizer.overlap_step) << "\n"
    << "delayed_update = " << toml_bool(offload_optimizer.delayed_update) << "\n"
    << "delayed_update_warmup = " << offload_optimizer.delayed_update_warmup << "\n\n";
  o << "[offload.param]\n"
    << "device = " << toml_string(offload_target_name(offload_param.device)) << "\n"
    << "nvme_path = " << toml_paths(offload_param.nvme_path) << "\n"
    << "max_in_cpu = " << toml_bytes(offload_param.max_in_cpu) << "\n"
    << "buffer_count = " << offload_param.buffer_count << "\n"
    << "buffer_size = " << toml_bytes(offload_param.buffer_size) << "\n\n";
  o << "[nvme]\n"
    << "engine = " << toml_string(nvme.engine) << "\n"
    << "block_size = " << toml_bytes(nvme.block_size) << "\n"
    << "queue_depth = " << nvme.queue_depth << "\n"
    << "threads = " << nvme.threads << "\n"
    << "direct = " << toml_bool(nvme.direct) << "\n"
    << "registered_buffers = " << toml_bool(nvme.registered_buffers) << "\n"
    << "sqpoll = " << toml_bool(nvme.sqpoll) << "\n"
    << "checksums = " << toml_bool(nvme.checksums) << "\n\n";
  o << "[zero]\n"
    << "stage = " << zero.stage << "\n"
    << "reduce_bucket_size = " << toml_bytes(zero.reduce_bucket_size) << "\n"
    << "allgather_bucket_size = " << toml_bytes(zero.allgather_bucket_size) << "\n"
    << "prefetch_bucket_size = " << toml_bytes(zero.prefetch_bucket_size) << "\n"
    << "max_live_parameters = " << zero.max_live_parameters << "\n"
    << "param_persistence_threshold = " << zero.param_persistence_threshold << "\n"
    << "max_reuse_distance = " << zero.max_reuse_distance << "\n"
    << "overlap_comm = " << toml_bool(zero.overlap_comm) << "\n\n";
  o << "[parallel]\n"
    << "dp = " << parallel.dp << "\n"
    << "tp = " << parallel.tp << "\n"
    << "sequence_parallel = " << toml_bool(parallel.sequence_parallel) << "\n"
    << "pp = " << parallel.pp << "\n"
    << "schedule = " << toml_string(pipeline_schedule_name(parallel.schedule)) << "\n"
    << "virtual_stages = " << parallel.virtual_stages << "\n"
    << "comm = " << toml_string(parallel.comm) << "\n"
    << "check_collectives = " << toml_bool(parallel.check_collectives) << "\n"
    << "comm_timeout = " << toml_double(parallel.comm_timeout) << "\n"
    << "hierarchical_allreduce = " << toml_bool(parallel.hierarchical_allreduce) << "\n\n";
  o << "[precision]\n"
    << "dtype = " << toml_string(dtype_name(precision.dtype)) << "\n"
    << "grad_dtype = " << toml_string(dtype_name(precision.grad_dtype)) << "\n"
    << "loss_scale = " << (precision.dynamic_loss_scale ? toml_string("dynamic") : toml_double(precision.loss_scale)) << "\n"
    << "initial_scale_power = " << precision.initial_scale_power << "\n"
    << "scale_window = " << precision.scale_window << "\n"
    << "hysteresis = " << precision.hysteresis << "\n"
    << "min_loss_scale = " << toml_double(precision.min_loss_scale) << "\n\n";
  o << "[optimizer]\n"
    << "type = " << toml_string(optimizer.type) << "\n"
    << "lr = " << toml_double(optimizer.lr) << "\n"
    << "betas = [" << toml_double(optimizer.beta1) << ", " << toml_double(optimizer.beta2) << "]\n"
    << "eps = " << toml_double(optimizer.eps) << "\n"
    << "weight_decay = " << toml_double(optimizer.weight_decay) << "\n"
    << "bias_correction = " << toml_bool(optimizer.bias_correction) << "\n"
    << "grad_clip = " << toml_double(optimizer.grad_clip) << "\n\n";
  o << "[activation]\n"
    << "checkpointing = " << toml_bool(activation.checkpointing) << "\n"
    << "offload = " << toml_bool(activation.offload) << "\n\n";
  o << "[train]\n"
    << "model = " << toml_string(train.model) << "\n"
    << "n_layer = " << train.dims.n_layer << "\n"
    << "n_head = " << train.dims.n_head << "\n"
    << "n_embd = " << train.dims.n_embd << "\n"
    << "vocab = " << train.dims.vocab << "\n"
    << "seq_len = " << train.dims.seq_len << "\n"
    << "micro_batch = " << train.micro_batch << "\n"
    << "grad_accum = " << train.grad_accum << "\n"
    << "steps = " << train.steps << "\n"
    << "seed = " << train.seed << "\n"
    << "data = " << toml_string(train.data) << "\n"
    << "checkpoint_dir = " << toml_string(train.checkpoint_dir) << "\n"
    << "checkpoint_every = " << train.checkpoint_every << "\n";
  return o.str();
}

std::string Profile::to_json() const {
  using nlohmann::ordered_json;
  ordered_json j;
  j["memory"] = {{"device_budget", format_bytes(memory.device_budget)},
                 {"host_budget", format_bytes(memory.host_budget)},
                 {"host_device_bandwidth", format_bytes(memory.host_device_bandwidth)}};
  j["offload"]["optimizer"] = {{"device", offload_target_name(offload_optimizer.device)},
                               {"nvme_path", offload_optimizer.nvme_path},
                               {"pin_memory", offload_optimizer.pin_memory},
                               {"buffer_count", offload_optimizer.buffer_count},
                               {"buffer_size", format_bytes(offload_optimizer.buffer_size)},
                               {"pipeline_read", offload_optimizer.pipeline_read},
                               {"pipeline_write", offload_optimizer.pipeline_write},
                               {"overlap_step", offload_optimizer.overlap_step},
                               {"delayed_update", offload_optimizer.delayed_update},
                               {"delayed_update_warmup", offload_optimizer.delayed_update_warmup}};
  j["offload"]["param"] = {{"device", offload_target_name(offload_param.device)},
                           {"nvme_path", offload_param.nvme_path},
                           {"max_in_cpu", format_bytes(offload_param.max_in_cpu)},
                           {"buffer_count", offload_param.buffer_count},
                           {"buffer_size", format_bytes(offload_param.buffer_size)}};
  j["nvme"] = {{"engine", nvme.engine},
               {"block_size", format_bytes(nvme.block_size)},
               {"queue_depth", nvme.queue_depth},
               {"threads", nvme.threads},
               {"direct", nvme.direct},
               {"registered_buffers", nvme.registered_buffers},
               {"sqpoll", nvme.sqpoll},
               {"checksums", nvme.checksums}};
  j["zero"] = {{"stage", zero.stage},
               {"reduce_bucket_size", format_bytes(zero.reduce_bucket_size)},
               {"allgather_bucket_size", format_bytes(zero.allgather_bucket_size)},
               {"prefetch_bucket_size", format_bytes(zero.prefetch_bucket_size)},
               {"max_live_parameters", zero.max_live_parameters},
               {"param_persistence_threshold", zero.param_persistence_threshold},
               {"max_reuse_distance", zero.max_reuse_distance},
               {"overlap_comm", zero.overlap_comm}};
  j["parallel"] = {{"dp", parallel.dp},
                   {"tp", parallel.tp},
                   {"sequence_parallel", parallel.sequence_parallel},
                   {"pp", parallel.pp},
                   {"schedule", pipeline_schedule_name(parallel.schedule)},
                   {"virtual_stages", parallel.virtual_stages},
                   {"comm", parallel.comm},
                   {"check_collectives", parallel.check_collectives},
                   {"comm_timeout", parallel.comm_timeout},
                   {"hierarchical_allreduce", parallel.hierarchical_allreduce}};
  ordered_json scale = precision.dynamic_loss_scale ? ordered_json("dynamic") : ordered_json(precision.loss_scale);
  j["precision"] = {{"dtype", dtype_name(precision.dtype)},
                    {"grad_dtype", dtype_name(precision.grad_dtype)},
                    {"loss_scale", scale},
                    {"initial_scale_power", precision.initial_scale_power},
                    {"scale_window", precision.scale_window},
                    {"hysteresis", precision.hysteresis},
                    {"min_loss_scale", precision.min_loss_scale}};
  j["optimizer"] = {{"type", optimizer.type},
                    {"lr", optimizer.lr},
                    {"betas", {optimizer.beta1, optimizer.beta2}},
                    {"eps", optimizer.eps},
                    {"weight_decay", optimizer.weight_decay},
                    {"bias_correction", optimizer.bias_correction},
                    {"grad_clip", optimizer.grad_clip}};
  j["activation"] = {{"checkpointing", activation.checkpointing}, {"offload", activation.offload}};
  j["train"] = {{"model", train.model},
                {"n_layer", train.dims.n_layer},
                {"n_head", train.dims.n_head},
                {"n_embd", train.dims.n_embd},
                {"vocab", train.dims.vocab},
                {"seq_len", train.dims.seq_len},
                {"micro_batch", train.micro_batch},
                {"grad_accum", train.grad_accum},
                {"steps", train.steps},
                {"seed", train.seed},
                {"data", train.data},
                {"checkpoint_dir", train.checkpoint_dir},
                {"checkpoint_every", train.checkpoint_every}};
  return j.dump(2) + "\n";
}

std::string Profile::defaults_toml() {
  return R"(# strata offload profile: every key with its default value.
# Sizes take units: "4096" (bytes), "64KiB", "1MiB", "1.5GB", "2GiB". Unknown keys are errors.

[memory]
# Accelerator memory strata may use (hard limit; the host-emulated device enforces it too).
device_budget = "2GiB"
# Pinned host memory strata may use (hard limit).
host_budget = "8GiB"
# Throttle for copies to and from the host-emulated device, e.g. "25GB/s" (PCIe Gen4 x16);
# "0" means unthrottled. Ignored by real accelerators.
host_device_bandwidth = "0"

[offload.optimizer]
# Where fp32 master weights and Adam moments live: "none" (device), "cpu" (pinned host), "nvme".
device = "none"
# Swap directories for device = "nvme": one string, or a list to stripe over several drives.
# "{rank}" and "{local_rank}" in a path stand for the rank and its place on its node, e.g.
# "/mnt/nvme{local_rank}/strata" for a drive per rank; ranks may also share a directory.
nvme_path = []
# Page-lock host buffers (faster copies; counted against memory.host_budget).
pin_memory = true
# Pinned staging buffers in the NVMe optimizer pipeline (read i+1, update i, write i-1).
buffer_count = 4
# Bytes of fp32 state (master, exp_avg, exp_avg_sq) per buffer: one chunk of the pipeline.
buffer_size = "8MiB"
# Overlap reading the next chunk, and writing the previous one, with the update.
pipeline_read = true
pipeline_write = true
# Run step s's update while step s+1's forward runs; each module waits only for the chunks
# holding its parameters. The result is the same to the bit; false updates everything first.
overlap_step = true
# One-step delayed parameter update (ZeRO-Offload's DPU): step s's update runs during step
# s+1's whole forward and backward, which therefore use the weights from before step s's
# update (gradients one step stale). Takes the update off the critical path when the state
# moves slower than forward alone; needs device = "cpu" or "nvme". Changes the numerics.
delayed_update = false
# Updates applied without delay first (early training moves the weights fastest).
delayed_update_warmup = 40

[offload.param]
# Where parameters live between uses: "none", "cpu" (the offloaded optimizer's pinned
# weights) or "nvme" (a swap of their own); both need zero.stage = 3 and an offloaded optimizer.
device = "none"
# With "nvme": one swap directory per drive ({rank} and {local_rank} as above).
nvme_path = []
# With "nvme": the most parameter bytes read from NVMe into host memory ahead of their gathers.
max_in_cpu = "1GiB"
# With "nvme": the pinned buffers parameters are cached in, count and size of each; a buffer
# holds at least one block (the values of one offload.optimizer.buffer_size chunk of state).
buffer_count = 5
buffer_size = "64MiB"

[nvme]
# I/O engine: "io_uring", "libaio" or "posix" (pread/pwrite; for file systems without O_DIRECT).
engine = "io_uring"
# Bytes per I/O request, requests in flight per thread, and I/O threads (rings).
block_size = "1MiB"
queue_depth = 16
threads = 1
# O_DIRECT (bypass the page cache). tmpfs refuses it: set false there, or use engine = "posix".
direct = true
# io_uring only: register the pinned buffers once; kernel-side submission polling.
registered_buffers = true
sqpoll = false
# crc32c per block, verified on every read.
checksums = false

[zero]
# ZeRO stage: 0 (plain data parallel), 1 (optimizer states), 2 (+ gradients), 3 (+ parameters).
stage = 0
reduce_bucket_size = "25MiB"
allgather_bucket_size = "25MiB"
# Stage 3: bytes of parameters gathered ahead of use, and gathered parameters (elements) held
# at once; a module's parameters with at most this many elements stay gathered; parameters
# used again within this many gathered elements are kept instead of released.
prefetch_bucket_size = "50MiB"
max_live_parameters = 1000000000
param_persistence_threshold = 100000
max_reuse_distance = 1000000000
# Overlap gradient reduction with backward.
overlap_comm = true

[parallel]
# Data-, tensor- and pipeline-parallel degrees; their product is the number of ranks.
dp = 1
tp = 1
# With tp > 1: the LayerNorm and residual regions split along the sequence (Megatron's), each
# block's all-reduces becoming reduce-scatters and all-gathers of the same volume, so their
# activations take 1/tp of the memory; micro_batch x seq_len must divide by tp.
sequence_parallel = false
pp = 1
# Pipeline schedule: "gpipe", "1f1b", "interleaved" (virtual_stages model chunks per stage)
# or "zb-h1" (zero bubble: backward split into its input- and weight-gradient halves). A step
# runs train.grad_accum micro-batches through the pipeline (at least pp of them, but for gpipe).
schedule = "1f1b"
virtual_stages = 1
# Communicator: "auto" (mpi when started by an MPI launcher with more than one process,
# local otherwise), "local" (ranks are threads: strata train --ranks N), "mpi", "nccl" (GPUs).
comm = "auto"
# Fingerprint every collective so that ranks that enqueue different ones fail naming both
# sides instead of hanging (one small extra exchange per collective with mpi).
check_collectives = false
# Seconds any wait for another rank may take before the job fails naming the rank.
comm_timeout = 300.0
# Two-level all-reduce: within each node, then across nodes (1/ranks-per-node of the bytes
# cross the slow links).
hierarchical_allreduce = false

[precision]
# Parameter and activation type: "fp32", "bf16" or "fp16" (master weights stay fp32).
dtype = "fp32"
# Parameter gradient type: "fp32", or the same as dtype (half the gradient memory on the
# device and in pinned host RAM; accumulation then rounds to that type).
grad_dtype = "fp32"
# "dynamic" or a fixed number; used with fp16.
loss_scale = "dynamic"
initial_scale_power = 16
scale_window = 1000
hysteresis = 2
min_loss_scale = 1.0

[optimizer]
# "adam" (L2 weight decay added to the gradient) or "adamw" (decoupled weight decay).
type = "adamw"
lr = 0.0003
betas = [0.9, 0.999]
eps = 1e-08
weight_decay = 0.0
bias_correction = true
# Clip the global gradient norm to this value; 0 turns clipping off.
grad_clip = 1.0

[activation]
# Recompute each transformer block in backward instead of storing its activations.
checkpointing = false
# Keep checkpointed activations in host memory.
offload = false

[train]
# Model preset: tiny, small, default, gpt2, gpt2-medium, gpt2-large, gpt2-xl, 2b, 7b.
# n_layer, n_head, n_embd, vocab and seq_len override the preset's dimensions.
model = "default"
# Sequences per micro-batch, and micro-batches accumulated per optimizer step.
micro_batch = 8
grad_accum = 1
steps = 300
seed = 1234
# Token source: a text file (byte tokens) or a .u16 file of little-endian uint16 tokens;
# "" uses the built-in default text.
data = ""
# Checkpoints: a directory, and steps between saves (0 = only at the end).
checkpoint_dir = ""
checkpoint_every = 0
)";
}

}  // namespace strata
