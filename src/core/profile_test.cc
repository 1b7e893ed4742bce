#include "strata/profile.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace strata {
namespace {

Profile parse_toml(const std::string& text) {
  auto r = Profile::from_toml_string(text, "t.toml");
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : Profile{};
}

std::string toml_error(const std::string& text) {
  auto r = Profile::from_toml_string(text, "bad.toml");
  EXPECT_FALSE(r.ok()) << "accepted:\n" << text;
  return r.status().message();
}

std::string json_error(const std::string& text) {
  auto r = Profile::from_json_string(text, "bad.json");
  EXPECT_FALSE(r.ok()) << "accepted:\n" << text;
  return r.status().message();
}

Profile custom() {
  Profile p;
  p.memory.device_budget = 3ULL << 30;
  p.memory.host_device_bandwidth = 25000000000ULL;
  p.offload_optimizer.device = OffloadTarget::kNvme;
  p.offload_optimizer.nvme_path = {"/mnt/a", "/mnt/b \"quoted\""};
  p.offload_optimizer.buffer_count = 6;
  p.offload_param.device = OffloadTarget::kCpu;
  p.zero.stage = 3;
  p.nvme.engine = "libaio";
  p.nvme.registered_buffers = false;
  p.nvme.block_size = 8ULL << 20;
  p.nvme.queue_depth = 64;
  p.parallel.pp = 2;
  p.parallel.schedule = PipelineSchedule::kInterleaved;
  p.parallel.virtual_stages = 2;
  p.train.grad_accum = 8;
  p.precision.dtype = DType::kF16;
  p.precision.dynamic_loss_scale = false;
  p.precision.loss_scale = 1024.5;
  p.optimizer.type = "adam";
  p.optimizer.lr = 1.25e-4;
  p.optimizer.beta2 = 0.95;
  p.optimizer.weight_decay = 0.1;
  p.activation.checkpointing = true;
  p.train.model = "small";
  model_preset("small", &p.train.dims);
  p.train.dims.seq_len = 48;
  p.train.steps = 17;
  p.train.data = "/usr/share/common-licenses/GPL-3";
  p.train.checkpoint_dir = "ckpt";
  p.train.checkpoint_every = 5;
  return p;
}

TEST(Profile, DefaultsDocumentMatchesStructDefaults) {
  Profile fromdoc = parse_toml(Profile::defaults_toml());
  Profile defaults;
  ASSERT_TRUE(model_preset("default", &defaults.train.dims));
  EXPECT_EQ(fromdoc, defaults);
  EXPECT_TRUE(defaults.validate().ok());
}

TEST(Profile, EmptyDocumentGivesDefaults) {
  Profile p = parse_toml("");
  EXPECT_EQ(p.train.model, "default");
  EXPECT_EQ(p.train.dims.n_embd, 256);
  auto j = Profile::from_json_string("{}", "e.json");
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(*j, p);
}

TEST(Profile, TomlRoundTrip) {
  Profile p = custom();
  ASSERT_TRUE(p.validate().ok()) << p.validate();
  std::string toml = p.to_toml();
  Profile back = parse_toml(toml);
  EXPECT_EQ(back, p) << toml;
  EXPECT_EQ(back.to_toml(), toml);
}

TEST(Profile, JsonRoundTrip) {
  Profile p = custom();
  std::string json = p.to_json();
  auto back = Profile::from_json_string(json, "p.json");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
  EXPECT_EQ(*back, p);
  EXPECT_EQ(back->to_json(), json);
  // And across formats.
  auto via_toml = Profile::from_toml_string(back->to_toml(), "x.toml");
  ASSERT_TRUE(via_toml.ok());
  EXPECT_EQ(*via_toml, p);
}

TEST(Profile, UnitsAndSingleNvmePath) {
  Profile p = parse_toml(R"(
[memory]
device_budget = "1.5GB"
host_budget = 1073741824
host_device_bandwidth = "25GB/s"
[offload.optimizer]
device = "nvme"
nvme_path = "/tmp/swap"
)");
  EXPECT_EQ(p.memory.device_budget, 1500000000u);
  EXPECT_EQ(p.memory.host_budget, 1ULL << 30);
  EXPECT_EQ(p.memory.host_device_bandwidth, 25000000000u);
  ASSERT_EQ(p.offload_optimizer.nvme_path.size(), 1u);
  EXPECT_EQ(p.offload_optimizer.nvme_path[0], "/tmp/swap");
}

TEST(Profile, RankPlaceholdersInSwapPathsGiveEachRankItsOwn) {
  Profile p = parse_toml(R"(
[zero]
stage = 3
[offload.optimizer]
device = "nvme"
nvme_path = ["/mnt/nvme{local_rank}/opt", "/tmp/r{rank}-{rank}"]
[offload.param]
device = "nvme"
nvme_path = "/tmp/params"
)");
  const Profile mine = p.for_rank(13, 5);
  EXPECT_EQ(mine.offload_optimizer.nvme_path, (std::vector<std::string>{"/mnt/nvme5/opt", "/tmp/r13-13"}));
  EXPECT_EQ(mine.offload_param.nvme_path, (std::vector<std::string>{"/tmp/params"}));
  Profile expected = p;
  expected.offload_optimizer.nvme_path = mine.offload_optimizer.nvme_path;
  EXPECT_EQ(mine, expected);  // nothing else changes
}

// One test per error class, with the exact message.
TEST(ProfileErrors, UnknownKeySuggestsNearest) {
  EXPECT_EQ(toml_error("[memory]\ndevice_budgte = \"1GiB\"\n"),
            "bad.toml:2:17: memory.device_budgte: unknown key; did you mean 'memory.device_budget'?");
  EXPECT_EQ(json_error(R"({"memory": {"device_budgte": "1GiB"}})"),
            "bad.json at /memory/device_budgte: memory.device_budgte: unknown key; did you mean 'memory.device_budget'?");
}

TEST(ProfileErrors, UnknownKeyListsKnownKeysWhenNothingIsNear) {
  EXPECT_EQ(toml_error("[activation]\nzzzzzzzzzz = true\n"),
            "bad.toml:2:14: activation.zzzzzzzzzz: unknown key; known keys here: checkpointing, offload");
}

TEST(ProfileErrors, AKeyThatIsGoneNamesWhatReplacedIt) {
  EXPECT_EQ(toml_error("[parallel]\nmicro_batches = 8\n"),
            "bad.toml:2:17: parallel.micro_batches is no longer a key: the pipeline's micro-batches per step are "
            "train.grad_accum; set that instead");
}

TEST(ProfileErrors, UnknownSection) {
  EXPECT_EQ(toml_error("[optimiser]\nlr = 0.1\n"),
            "bad.toml:1:1: optimiser: unknown key; did you mean 'optimizer'?");
}

TEST(ProfileErrors, WrongType) {
  EXPECT_EQ(toml_error("[nvme]\nqueue_depth = \"deep\"\n"),
            "bad.toml:2:15: nvme.queue_depth: expected an integer from 1 to 4096, found the string \"deep\"");
  EXPECT_EQ(json_error(R"({"nvme": {"direct": 1}})"),
            "bad.json at /nvme/direct: nvme.direct: expected true or false, found the integer 1");
  EXPECT_EQ(toml_error("memory = 5\n"),
            "bad.toml:1:10: memory: expected a table [memory], found the integer 5");
}

TEST(ProfileErrors, OutOfRange) {
  EXPECT_EQ(toml_error("[zero]\nstage = 4\n"), "bad.toml:2:9: zero.stage: expected an integer from 0 to 3, found the integer 4");
  EXPECT_EQ(toml_error("[optimizer]\nbetas = [0.9, 1.5]\n"),
            "bad.toml:2:15: optimizer.betas[1]: expected a number >= 0 and < 1, found the number 1.5");
}

TEST(ProfileErrors, BadChoice) {
  EXPECT_EQ(toml_error("[nvme]\nengine = \"spdk\"\n"),
            "bad.toml:2:10: nvme.engine: expected one of \"io_uring\", \"libaio\", \"posix\", found the string \"spdk\"");
}

TEST(ProfileErrors, BadSize) {
  EXPECT_EQ(toml_error("[memory]\nhost_budget = \"-4GiB\"\n"),
            "bad.toml:2:15: memory.host_budget: byte size '-4GiB' is negative");
  EXPECT_EQ(toml_error("[memory]\nhost_budget = \"4 furlongs\"\n"),
            "bad.toml:2:15: memory.host_budget: byte size '4 furlongs' has unknown unit 'furlongs'; known units: B, KB, MB, GB, TB "
            "(powers of 1000), KiB, MiB, GiB, TiB (powers of 1024)");
}

TEST(ProfileErrors, ImpossibleCombinations) {
  EXPECT_EQ(toml_error("[offload.optimizer]\ndevice = \"nvme\"\n"),
            "bad.toml:1:1: offload.optimizer.nvme_path: required when offload.optimizer.device = \"nvme\": give one directory "
            "per drive, e.g. nvme_path = \"/mnt/nvme0/strata\"");
  EXPECT_EQ(toml_error("[offload.param]\nnvme_path = \"/mnt/nvme{node}\"\n"),
            "bad.toml:2:13: offload.param.nvme_path: '/mnt/nvme{node}' holds '{node}'; the placeholders a swap path may "
            "hold are {rank} and {local_rank}");
  EXPECT_EQ(toml_error("[parallel]\npp = 3\n"),
            "bad.toml:1:1: parallel.virtual_stages: pp x virtual_stages = 3 does not divide train.n_layer = 4");
  EXPECT_NE(toml_error("[parallel]\npp = 2\nschedule = \"zb-h1\"\n[activation]\ncheckpointing = true\n[train]\ngrad_accum = 2\n")
                .find("parallel.schedule: \"zb-h1\" defers the weight gradients"),
            std::string::npos);
  EXPECT_NE(toml_error("[parallel]\npp = 2\n").find("train.grad_accum = 1, fewer than its pp = 2 stages"), std::string::npos);
  EXPECT_EQ(toml_error("[memory]\nhost_budget = \"64KiB\"\n"),
            "bad.toml: nvme.block_size: nvme.block_size = 1MiB exceeds memory.host_budget = 64KiB: a budget smaller than "
            "one I/O buffer cannot work");
  EXPECT_NE(toml_error("[precision]\ndtype = \"bf16\"\ngrad_dtype = \"fp16\"\n")
                .find("precision.grad_dtype: grad_dtype = \"fp16\" must be \"fp32\" or the same as precision.dtype (\"bf16\")"),
            std::string::npos);
  EXPECT_NE(toml_error("[zero]\nstage = 3\n[offload.param]\ndevice = \"cpu\"\n")
                .find("offload.param.device: parameter offload keeps each rank's parameter shard in the offloaded "
                      "optimizer's host memory or NVMe swap"),
            std::string::npos);
  EXPECT_EQ(toml_error("[offload.param]\ndevice = \"cpu\"\n"),
            "bad.toml:2:10: offload.param.device: parameter offload needs ZeRO stage 3 (zero.stage = 3); found zero.stage = 0");
  EXPECT_NE(toml_error("[offload.optimizer]\ndelayed_update = true\n")
                .find("offload.optimizer.delayed_update: the delayed update runs the offloaded optimizer behind the next "
                      "step: it needs offload.optimizer.device = \"cpu\" or \"nvme\""),
            std::string::npos);
  EXPECT_NE(toml_error("[offload.optimizer]\ndevice = \"cpu\"\ndelayed_update_warmup = -1\n").find("delayed_update_warmup"),
            std::string::npos);
}

TEST(ProfileErrors, SyntaxErrors) {
  std::string t = toml_error("[memory\n");
  EXPECT_EQ(t.rfind("bad.toml:1:", 0), 0u) << t;
  EXPECT_NE(t.find("not valid TOML"), std::string::npos) << t;
  std::string j = json_error("{\"memory\": ");
  EXPECT_NE(j.find("not valid JSON"), std::string::npos) << j;
  EXPECT_EQ(json_error("[1, 2]"), "bad.json: expected a JSON object at the top level");
}

TEST(ProfileErrors, Files) {
  auto missing = Profile::load("/nonexistent/strata.toml");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/strata.toml"), std::string::npos);
  auto dir = Profile::load("/tmp");
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.status().message().find("is a directory"), std::string::npos);
  auto dir2 = std::filesystem::temp_directory_path() / "strata_profile_test.yaml";
  { std::ofstream(dir2) << "a: 1\n"; }
  auto yaml = Profile::load(dir2.string());
  ASSERT_FALSE(yaml.ok());
  EXPECT_NE(yaml.status().message().find("*.toml or *.json"), std::string::npos);
  std::filesystem::remove(dir2);
}

TEST(Profile, ParameterCount) {
  ModelDims d;
  ASSERT_TRUE(model_preset("gpt2", &d));
  EXPECT_EQ(d.parameter_count(), 124439808u);  // Hugging Face gpt2
  ASSERT_TRUE(model_preset("2b", &d));
  EXPECT_GT(d.parameter_count() * 12, 24ULL << 30);  // fp32 master + two moments exceed 24 GiB
  ASSERT_TRUE(model_preset("4b", &d));
  EXPECT_GE(d.parameter_count(), 4000000000u);
}

}  // namespace
}  // namespace strata
