// The [nvme] section that `strata bench nvme --emit-profile` writes is accepted by the
// profile loader and means exactly the configuration it was written from.
#include "nvme/nvme_profile.h"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "nvme/io_engine.h"
#include "nvme/nvme_test_util.h"
#include "strata/units.h"

namespace strata::nvme {
namespace {

TEST(NvmeProfile, EmittedSectionLoadsBackThroughProfileLoad) {
  testing::ScratchDir dir("profile");
  NvmeConfig tuned;
  tuned.engine = "libaio";
  tuned.block_size = 8 * MiB;
  tuned.queue_depth = 64;
  tuned.threads = 2;
  tuned.direct = false;
  tuned.registered_buffers = false;
  tuned.sqpoll = false;
  tuned.checksums = true;
  NvmeConfig polled;
  polled.sqpoll = true;
  polled.block_size = 128 * KiB;
  for (const NvmeConfig& c : {NvmeConfig{}, tuned, polled}) {
    const std::string path = dir.path() + "/nvme.toml";
    ASSERT_TRUE(write_nvme_profile(path, c, "measured by strata bench nvme\non ext4 /dev/vda").ok());
    auto loaded = Profile::load(path);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->nvme, c);
    EXPECT_TRUE(validate_nvme_config(loaded->nvme).ok());
    // Everything else keeps its defaults.
    Profile expected;
    expected.nvme = c;
    EXPECT_EQ(loaded->memory, expected.memory);
    EXPECT_EQ(loaded->zero, expected.zero);
  }
  std::ifstream in(dir.path() + "/nvme.toml");
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_NE(text.str().find("block_size = \"128KiB\""), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("# on ext4 /dev/vda\n"), std::string::npos) << text.str();
  EXPECT_EQ(text.str().find("nvme.toml.tmp"), std::string::npos);
}

TEST(NvmeProfile, EveryEngineNameRoundTrips) {
  for (const std::string& name : io_engine_names()) {
    NvmeConfig c;
    c.engine = name;
    c.registered_buffers = name == "io_uring";
    auto p = Profile::from_toml_string(nvme_section_toml(c, ""), "emitted.toml");
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->nvme.engine, name);
  }
}

TEST(NvmeProfile, UnwritableDestinationIsAnError) {
  Status s = write_nvme_profile("/nonexistent-dir/x.toml", NvmeConfig{}, "");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("/nonexistent-dir/x.toml"), std::string::npos) << s;
}

}  // namespace
}  // namespace strata::nvme
