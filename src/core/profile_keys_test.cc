// Every key of `strata profile defaults` is either read by the layer it configures or refused
// when set to anything but its default: a key that is accepted and then ignored fails here, and
// so does a key added to the profile without being placed in one of the two lists.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "strata/profile.h"

namespace strata {
namespace {

// The dotted key paths of a TOML document written as `[section]` headers and `key = value` lines.
std::vector<std::string> keys_of(const std::string& toml) {
  std::vector<std::string> keys;
  std::istringstream in(toml);
  std::string line, section;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      section = line.substr(1, line.find(']') - 1);
      continue;
    }
    const std::size_t eq = line.find(" = ");
    if (eq != std::string::npos) keys.push_back(section + "." + line.substr(0, eq));
  }
  return keys;
}

std::string read_source(const std::string& relative) {
  std::ifstream f(std::string(STRATA_SOURCE_DIR) + "/" + relative);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// A key that a run honours: the source file that reads it and the text that reads it there.
struct Reader {
  const char* file;
  const char* text;
};

const std::map<std::string, Reader>& honoured_keys() {
  static const std::map<std::string, Reader> keys = {
      {"memory.device_budget", {"src/device/device.cc", "memory.device_budget"}},
      {"memory.host_budget", {"src/engine/offload_adam.cc", "memory.host_budget"}},
      {"memory.host_device_bandwidth", {"src/device/device.cc", "memory.host_device_bandwidth"}},
      {"offload.optimizer.device", {"src/engine/offload_adam.cc", "profile.offload_optimizer.device"}},
      {"offload.optimizer.nvme_path", {"src/engine/offload_adam.cc", "oc.nvme_path"}},
      {"offload.optimizer.buffer_count", {"src/engine/offload_adam.cc", "oc.buffer_count"}},
      {"offload.optimizer.buffer_size", {"src/engine/offload_adam.cc", "offload_optimizer.buffer_size"}},
      {"offload.optimizer.pipeline_read", {"src/engine/offload_adam_pass.cc", "oc.pipeline_read"}},
      {"offload.optimizer.pipeline_write", {"src/engine/offload_adam_pass.cc", "oc.pipeline_write"}},
      {"offload.optimizer.overlap_step", {"src/engine/offload_adam.cc", "oc.overlap_step"}},
      {"offload.optimizer.delayed_update", {"src/engine/offload_adam.cc", "oc.delayed_update"}},
      {"offload.optimizer.delayed_update_warmup", {"src/engine/offload_adam.cc", "oc.delayed_update_warmup"}},
      {"nvme.engine", {"src/nvme/io_engine.cc", "c.engine"}},
      {"nvme.block_size", {"src/nvme/swap_store.cc", "config().block_size"}},
      {"nvme.queue_depth", {"src/nvme/uring_engine.cc", "c.queue_depth"}},
      {"nvme.threads", {"src/nvme/uring_engine.cc", "c.threads"}},
      {"nvme.direct", {"src/nvme/file.cc", "o.direct"}},
      {"nvme.registered_buffers", {"src/nvme/uring_engine.cc", "config().registered_buffers"}},
      {"nvme.sqpoll", {"src/nvme/uring_engine.cc", "c.sqpoll"}},
      {"nvme.checksums", {"src/nvme/swap_store.cc", "config().checksums"}},
      {"precision.dtype", {"src/model/gpt.cc", "profile.precision.dtype"}},
      {"precision.grad_dtype", {"src/model/gpt.cc", "profile.precision.grad_dtype"}},
      {"precision.loss_scale", {"src/engine/loss_scaler.h", "p.loss_scale"}},
      {"precision.initial_scale_power", {"src/engine/loss_scaler.h", "p.initial_scale_power"}},
      {"precision.scale_window", {"src/engine/loss_scaler.h", "p.scale_window"}},
      {"precision.hysteresis", {"src/engine/loss_scaler.h", "p.hysteresis"}},
      {"precision.min_loss_scale", {"src/engine/loss_scaler.h", "min_loss_scale"}},
      {"optimizer.type", {"src/engine/device_adam.cc", "config.type"}},
      {"optimizer.lr", {"src/engine/device_adam.cc", "c.lr"}},
      {"optimizer.betas", {"src/engine/device_adam.cc", "c.beta1"}},
      {"optimizer.eps", {"src/engine/device_adam.cc", "c.eps"}},
      {"optimizer.weight_decay", {"src/engine/device_adam.cc", "c.weight_decay"}},
      {"optimizer.bias_correction", {"src/engine/device_adam.cc", "c.bias_correction"}},
      {"optimizer.grad_clip", {"src/engine/trainer.cc", "optimizer.grad_clip"}},
      {"parallel.comm", {"src/cli/train_ranks.cc", "parallel.comm"}},
      {"parallel.dp", {"src/engine/trainer.cc", "profile.parallel.dp"}},
      {"parallel.tp", {"src/model/gpt.cc", "profile.parallel.tp"}},
      {"parallel.sequence_parallel", {"src/model/gpt.cc", "profile.parallel.sequence_parallel"}},
      {"parallel.pp", {"src/model/gpt.cc", "profile.parallel.pp"}},
      {"parallel.virtual_stages", {"src/model/gpt.cc", "profile.parallel.virtual_stages"}},
      {"parallel.schedule", {"src/engine/pipeline.cc", "profile.parallel.schedule"}},
      {"zero.stage", {"src/engine/data_parallel.cc", "profile.zero.stage"}},
      {"zero.reduce_bucket_size", {"src/engine/data_parallel.cc", "profile.zero.reduce_bucket_size"}},
      {"zero.overlap_comm", {"src/engine/data_parallel.cc", "profile.zero.overlap_comm"}},
      {"zero.allgather_bucket_size", {"src/engine/data_parallel.cc", "profile.zero.allgather_bucket_size"}},
      {"offload.param.device", {"src/engine/data_parallel.cc", "profile.offload_param.device"}},
      {"offload.param.nvme_path", {"src/engine/value_swap.cc", "pc.nvme_path"}},
      {"offload.param.max_in_cpu", {"src/engine/value_swap.cc", "pc.max_in_cpu"}},
      {"offload.param.buffer_count", {"src/engine/value_swap.cc", "pc.buffer_count"}},
      {"offload.param.buffer_size", {"src/engine/value_swap.cc", "pc.buffer_size"}},
      {"zero.prefetch_bucket_size", {"src/engine/data_parallel.cc", "z.prefetch_bucket_size"}},
      {"zero.max_live_parameters", {"src/engine/data_parallel.cc", "z.max_live_parameters"}},
      {"zero.param_persistence_threshold", {"src/engine/data_parallel.cc", "z.param_persistence_threshold"}},
      {"zero.max_reuse_distance", {"src/engine/data_parallel.cc", "z.max_reuse_distance"}},
      {"parallel.check_collectives", {"src/cli/train_ranks.cc", "parallel.check_collectives"}},
      {"parallel.comm_timeout", {"src/cli/train_ranks.cc", "parallel.comm_timeout"}},
      {"activation.checkpointing", {"src/model/gpt.cc", "profile.activation.checkpointing"}},
      {"train.model", {"src/core/profile_io.cc", "model_preset("}},
      {"train.n_layer", {"src/model/gpt.cc", "profile.train.dims"}},
      {"train.n_head", {"src/model/gpt.cc", "profile.train.dims"}},
      {"train.n_embd", {"src/model/gpt.cc", "profile.train.dims"}},
      {"train.vocab", {"src/model/gpt.cc", "profile.train.dims"}},
      {"train.seq_len", {"src/model/gpt.cc", "profile.train.dims"}},
      {"train.micro_batch", {"src/engine/trainer.cc", "train.micro_batch"}},
      {"train.grad_accum", {"src/engine/trainer.cc", "train.grad_accum"}},
      {"train.steps", {"src/cli/train_cmd.cc", "tc.steps"}},
      {"train.seed", {"src/engine/trainer.cc", "tc.seed"}},
      {"train.data", {"src/cli/train_cmd.cc", "train.data"}},
      {"train.checkpoint_dir", {"src/cli/train_cmd.cc", "tc.checkpoint_dir"}},
      {"train.checkpoint_every", {"src/engine/checkpoint.cc", "train.checkpoint_every"}},
  };
  return keys;
}

// For each key that is not available yet: a TOML fragment that sets it to something else
// while keeping the profile valid.
const std::map<std::string, std::string>& non_default_settings() {
  static const std::map<std::string, std::string> s = {
      {"offload.optimizer.pin_memory", "[offload.optimizer]\npin_memory = false\n"},
      {"offload.param.device", "[offload.param]\ndevice = \"cpu\"\n[zero]\nstage = 3\n"},
      {"activation.offload", "[activation]\ncheckpointing = true\noffload = true\n"},
      {"parallel.hierarchical_allreduce", "[parallel]\nhierarchical_allreduce = true\n"},
  };
  return s;
}

// Every key a profile accepts: those `strata profile defaults` documents and those the
// normalised form spells out (the model dimensions, which the defaults leave to the preset).
std::vector<std::string> profile_keys() {
  std::set<std::string> all;
  for (const std::string& k : keys_of(Profile::defaults_toml())) all.insert(k);
  for (const std::string& k : keys_of(Profile{}.to_toml())) all.insert(k);
  return {all.begin(), all.end()};
}

TEST(ProfileKeys, EveryDefaultKeyIsReadOrRefused) {
  const std::vector<std::string> keys = profile_keys();
  ASSERT_GT(keys.size(), 40u);
  const std::vector<std::string> pending = unavailable_profile_keys();
  const std::set<std::string> refused(pending.begin(), pending.end());
  for (const std::string& key : keys) {
    const bool read = honoured_keys().count(key) != 0;
    EXPECT_NE(read, refused.count(key) != 0)
        << key << ": list it in exactly one of honoured_keys() (here, with the code that reads it) and "
        << "unavailable_profile_keys() (src/core/profile_availability.cc)";
    if (!read) continue;
    const Reader& r = honoured_keys().at(key);
    EXPECT_NE(read_source(r.file).find(r.text), std::string::npos)
        << key << ": " << r.file << " no longer contains '" << r.text << "'; point the entry at the code that reads it";
  }
  const std::set<std::string> documented(keys.begin(), keys.end());
  for (const auto& [key, reader] : honoured_keys()) EXPECT_TRUE(documented.count(key)) << key << " is not a profile key";
  for (const std::string& key : pending) EXPECT_TRUE(documented.count(key)) << key << " is not a profile key";
}

TEST(ProfileKeys, ANonDefaultValueOfAnUnavailableKeyIsRefusedNamingIt) {
  auto defaults = Profile::from_toml_string(Profile::defaults_toml(), "defaults");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_TRUE(defaults->check_available().ok()) << defaults->check_available();
  for (const std::string& key : unavailable_profile_keys()) {
    ASSERT_TRUE(non_default_settings().count(key)) << key << ": add a non-default setting for it to this test";
    auto p = Profile::from_toml_string(non_default_settings().at(key), key);
    ASSERT_TRUE(p.ok()) << key << ": " << p.status();
    Status st = p->check_available();
    ASSERT_FALSE(st.ok()) << key << " = a non-default value was accepted";
    EXPECT_EQ(st.code(), StatusCode::kUnavailable);
    EXPECT_NE(st.message().find(key + " is not available yet"), std::string::npos) << st;
    EXPECT_NE(st.message().find("set it to its default"), std::string::npos) << st;
  }
}

// Parameters offload to the host and to NVMe, with the NVMe tier's buffers.
TEST(ProfileKeys, ParameterOffloadToTheHostAndToNvmeIsAvailable) {
  auto cpu = Profile::from_toml_string("[zero]\nstage = 3\n[offload.optimizer]\ndevice = \"cpu\"\n[offload.param]\ndevice = \"cpu\"\n", "cpu");
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_TRUE(cpu->check_available().ok()) << cpu->check_available();
  auto nvme = Profile::from_toml_string("[zero]\nstage = 3\n[offload.optimizer]\ndevice = \"nvme\"\nnvme_path = \"/tmp/o\"\n"
                                        "[offload.param]\ndevice = \"nvme\"\nnvme_path = \"/tmp/p\"\n"
                                        "max_in_cpu = \"2GiB\"\nbuffer_count = 4\nbuffer_size = \"32MiB\"\n", "nvme");
  ASSERT_TRUE(nvme.ok()) << nvme.status();
  EXPECT_TRUE(nvme->check_available().ok()) << nvme->check_available();
}

// Every ZeRO stage and its stage-3 keys are read.
TEST(ProfileKeys, EveryZeroStageAndItsGatherKeysAreAvailable) {
  for (int stage : {1, 2, 3}) {
    auto p = Profile::from_toml_string("[zero]\nstage = " + std::to_string(stage) +
                                           "\nprefetch_bucket_size = \"8MiB\"\nmax_live_parameters = 1000\n"
                                           "param_persistence_threshold = 10\nmax_reuse_distance = 5\n",
                                       "stage");
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->zero.max_reuse_distance, 5u);
    EXPECT_TRUE(p->check_available().ok()) << p->check_available();
  }
}

}  // namespace
}  // namespace strata
