// strata/profile.h — the offload profile: one TOML or JSON document configures a run.
//
// Both formats have the same keys and map to the same Profile. Sizes take units ("64MiB",
// "1.5GB"; a plain integer is bytes). Validation is strict: an unknown key is an error naming
// the full key path and the nearest known key; a wrong type, an out-of-range value or an
// impossible combination is an error with the location (file:line:column for TOML, file and
// JSON pointer for JSON), what was expected and what was found. A key that is absent takes
// the default documented below and printed by `strata profile defaults`.
//
// Thread-safety: Profile is a plain value. The load/parse functions are reentrant.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "strata/dtype.h"
#include "strata/status.h"

namespace strata {

// Where a group of tensors lives when it is not in use on the device.
enum class OffloadTarget : std::uint8_t { kNone = 0, kCpu, kNvme };
std::string_view offload_target_name(OffloadTarget t);

enum class PipelineSchedule : std::uint8_t { kGPipe = 0, k1F1B, kInterleaved, kZbH1 };
std::string_view pipeline_schedule_name(PipelineSchedule s);

struct MemoryConfig {
  std::uint64_t device_budget = 2ULL << 30;       // bytes of accelerator memory strata may use
  std::uint64_t host_budget = 8ULL << 30;         // bytes of pinned host memory strata may use
  std::uint64_t host_device_bandwidth = 0;        // bytes/s throttle for the host-emulated device; 0 = none
  bool operator==(const MemoryConfig&) const = default;
};

struct OptimizerOffloadConfig {
  OffloadTarget device = OffloadTarget::kNone;    // where fp32 master weights and moments live
  // Swap directories; several stripe across drives. "{rank}" and "{local_rank}" in a path
  // stand for the global rank and the rank within its node (Profile::for_rank), e.g.
  // "/mnt/nvme{local_rank}/strata" gives each rank of a node its own drive. Each rank makes its
  // own private directory in each path, so ranks may share one.
  std::vector<std::string> nvme_path;
  bool pin_memory = true;                         // page-lock host buffers
  int buffer_count = 4;                           // pinned staging buffers for the NVMe pipeline
  std::uint64_t buffer_size = 8ULL << 20;         // bytes of state per buffer (one chunk of the pipeline)
  bool pipeline_read = true;                      // read chunk i+1 while chunk i is updated
  bool pipeline_write = true;                     // write chunk i-1 while chunk i is updated
  bool overlap_step = true;                       // update step s while step s+1's forward runs
  bool delayed_update = false;                    // one-step delayed parameter update (DPU)
  int delayed_update_warmup = 40;                 // updates applied undelayed before DPU starts
  bool operator==(const OptimizerOffloadConfig&) const = default;
};

struct ParamOffloadConfig {
  OffloadTarget device = OffloadTarget::kNone;    // where parameters live between uses
  std::vector<std::string> nvme_path;             // as offload.optimizer.nvme_path
  std::uint64_t max_in_cpu = 1ULL << 30;          // bytes of parameters kept in host RAM with nvme
  int buffer_count = 5;                           // pinned staging buffers for parameters
  std::uint64_t buffer_size = 64ULL << 20;        // bytes per staging buffer
  bool operator==(const ParamOffloadConfig&) const = default;
};

struct NvmeConfig {
  std::string engine = "io_uring";                // io_uring | libaio | posix
  std::uint64_t block_size = 1ULL << 20;          // bytes per I/O request
  int queue_depth = 16;                           // requests in flight per thread
  int threads = 1;                                // I/O threads (rings), for striping
  bool direct = true;                             // O_DIRECT
  bool registered_buffers = true;                 // io_uring fixed buffers
  bool sqpoll = false;                            // io_uring kernel submission polling
  bool checksums = false;                         // crc32c per block, verified on read
  bool operator==(const NvmeConfig&) const = default;
};

struct ZeroConfig {
  int stage = 0;                                  // 0 (plain data parallel) .. 3
  std::uint64_t reduce_bucket_size = 25ULL << 20;     // bytes of gradients per reduce
  std::uint64_t allgather_bucket_size = 25ULL << 20;  // bytes of parameters per all-gather
  std::uint64_t prefetch_bucket_size = 50ULL << 20;   // bytes fetched ahead of use
  std::uint64_t max_live_parameters = 1000000000;     // parameters resident at once (elements)
  std::uint64_t param_persistence_threshold = 100000; // parameters smaller than this stay resident (elements)
  std::uint64_t max_reuse_distance = 1000000000;      // kept gathered when used again within this (elements)
  bool overlap_comm = true;
  bool operator==(const ZeroConfig&) const = default;
};

struct ParallelConfig {
  int dp = 1;
  int tp = 1;
  bool sequence_parallel = false;                 // Megatron's, with tp > 1
  int pp = 1;
  PipelineSchedule schedule = PipelineSchedule::k1F1B;  // micro-batches per step: train.grad_accum
  int virtual_stages = 1;                         // model chunks per stage (interleaved schedule)
  std::string comm = "auto";                      // communicator backend: auto | local | mpi | nccl
  bool check_collectives = false;                 // fingerprint collectives; mismatches fail, never hang
  double comm_timeout = 300;                      // seconds any wait for another rank may take
  bool hierarchical_allreduce = false;            // reduce within nodes, then across them
  bool operator==(const ParallelConfig&) const = default;
};

struct PrecisionConfig {
  DType dtype = DType::kF32;                      // parameter and activation type
  DType grad_dtype = DType::kF32;                 // parameter gradients: fp32 or `dtype`
  bool dynamic_loss_scale = true;                 // loss_scale = "dynamic"
  double loss_scale = 0;                          // static scale when not dynamic
  int initial_scale_power = 16;                   // dynamic scaling starts at 2^this
  int scale_window = 1000;                        // clean steps before the scale doubles
  int hysteresis = 2;                             // overflows tolerated before the scale halves
  double min_loss_scale = 1;
  bool operator==(const PrecisionConfig&) const = default;
};

struct OptimizerConfig {
  std::string type = "adamw";                     // adam | adamw
  double lr = 3e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool bias_correction = true;
  double grad_clip = 1.0;                         // global-norm clip; 0 = off
  bool operator==(const OptimizerConfig&) const = default;
};

struct ActivationConfig {
  bool checkpointing = false;                     // recompute each block in backward
  bool offload = false;                           // keep checkpointed activations in host memory
  bool operator==(const ActivationConfig&) const = default;
};

// Model dimensions. A preset fills them; explicit keys override the preset.
struct ModelDims {
  int n_layer = 0;
  int n_head = 0;
  int n_embd = 0;
  int vocab = 0;
  int seq_len = 0;
  bool operator==(const ModelDims&) const = default;
  // Parameters of a GPT-2 with these dimensions (tied head).
  std::uint64_t parameter_count() const;
};

// Known presets: tiny, small, default, gpt2, gpt2-medium, gpt2-large, gpt2-xl, 2b, 7b.
// Returns false for an unknown name.
bool model_preset(std::string_view name, ModelDims* out);
std::vector<std::string> model_preset_names();

struct TrainConfig {
  std::string model = "default";                  // preset name
  ModelDims dims;                                 // resolved: preset overridden by explicit keys
  int micro_batch = 8;                            // sequences per micro-batch
  int grad_accum = 1;                             // micro-batches per optimizer step
  int steps = 300;
  std::uint64_t seed = 1234;
  std::string data;                               // token source; empty = the built-in default text
  std::string checkpoint_dir;                     // empty = no checkpoints
  int checkpoint_every = 0;                       // steps between checkpoints; 0 = only at the end
  bool operator==(const TrainConfig&) const = default;
};

struct Profile;

// Changes a loader applies after reading the document's keys and before the cross-key checks,
// e.g. the command line's overrides (`strata train --checkpoint-dir`), so that a check such as
// "checkpoint_every needs checkpoint_dir" sees the value the run will use. A non-OK Status
// aborts the load with that Status.
using ProfileEdit = std::function<Status(Profile&)>;

struct Profile {
  MemoryConfig memory;
  OptimizerOffloadConfig offload_optimizer;
  ParamOffloadConfig offload_param;
  NvmeConfig nvme;
  ZeroConfig zero;
  ParallelConfig parallel;
  PrecisionConfig precision;
  OptimizerConfig optimizer;
  ActivationConfig activation;
  TrainConfig train;
  bool operator==(const Profile&) const = default;

  // Reads a file; the format follows the extension (.toml, .json). `edit`, when given, runs
  // between reading the keys and the cross-key checks.
  static Result<Profile> load(const std::string& path, const ProfileEdit& edit = {});
  // `origin` names the document in error messages (usually its path).
  static Result<Profile> from_toml_string(std::string_view text, std::string_view origin,
                                          const ProfileEdit& edit = {});
  static Result<Profile> from_json_string(std::string_view text, std::string_view origin,
                                          const ProfileEdit& edit = {});

  // Normalised forms: every key, with units where they are exact.
  std::string to_toml() const;
  std::string to_json() const;

  // The default profile as a commented TOML document that itself passes validation.
  static std::string defaults_toml();

  // Cross-field checks (run by the loaders; call again after editing a Profile in code).
  Status validate() const;

  // OK when this build honours every key as set: a key of unavailable_profile_keys() that
  // holds anything but its default is refused (kUnavailable, naming each such key and its
  // default) rather than ignored. Runs at the start of every run; `strata profile check`
  // reports it too. The loaders do not call it, so a profile for a later build still loads.
  Status check_available() const;

  // The profile as one rank runs it: "{rank}" and "{local_rank}" in the nvme_path entries
  // replaced by `rank` and `local_rank` (Engine::create does this for each rank).
  Profile for_rank(int rank, int local_rank) const;
};

// The keys a profile accepts and documents that nothing in this build reads yet (they belong
// to features still being built); each must hold its default for a run to start.
std::vector<std::string> unavailable_profile_keys();

// Library version, e.g. "0.1.0".
std::string_view version();

}  // namespace strata
