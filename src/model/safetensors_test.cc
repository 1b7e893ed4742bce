// safetensors: a GPT-2 round trip in every dtype, and every malformed-header case the reader
// must refuse (with the offending tensor named).
#include "model/safetensors.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/remove_at_exit.h"
#include "kernels/numeric.h"

namespace strata::safetensors {
namespace {

using json = nlohmann::json;

std::string tmp_path(const std::string& name) {
  const char* base = std::getenv("STRATA_TEST_TMPDIR");
  std::string d = std::string(base ? base : "/tmp") + "/safetensors_test." + std::to_string(::getpid());
  ::mkdir(base ? base : "/tmp", 0755);
  ::mkdir(d.c_str(), 0755);
  strata::remove_at_exit(d);
  return d + "/" + name;
}

// A file with the given raw header text and data bytes; `len` overrides the length field.
std::string raw_file(const std::string& name, const std::string& header, std::size_t data_bytes,
                     std::uint64_t len = ~0ULL) {
  if (len == ~0ULL) len = header.size();
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  bytes += header;
  bytes.append(data_bytes, '\0');
  const std::string path = tmp_path(name);
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

// Opening must fail with data corruption and a message containing `want`.
void expect_refused(const std::string& path, const std::string& want) {
  auto r = Reader::open(path);
  ASSERT_FALSE(r.ok()) << "accepted " << path;
  EXPECT_EQ(r.status().code(), StatusCode::kDataCorruption) << r.status();
  EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status();
}

std::unique_ptr<Gpt> tiny_gpt() {
  GptConfig c;
  EXPECT_TRUE(model_preset("tiny", &c.dims));
  return std::move(*Gpt::create(c));
}

// fp32 values of every parameter: the initial values under seed 3.
Status init_source(const Parameter& p, std::uint64_t first, std::span<float> out) {
  init_parameter_values(p, 3, first, out);
  return Status::OK();
}

TEST(Safetensors, GptRoundTripInEveryDtype) {
  auto gpt = tiny_gpt();
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    const std::string path = tmp_path(std::string("tiny.") + std::string(dtype_name(t)) + ".safetensors");
    ASSERT_TRUE(export_gpt(path, *gpt, t, init_source).ok());
    auto r = Reader::open(path);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->metadata().at("format"), "pt");
    EXPECT_EQ(r->metadata().at("strata.n_layer"), "2");
    EXPECT_EQ(r->tensors().size(), gpt->parameters().size());
    const TensorInfo* w = r->find("h.1.attn.c_attn.weight");
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->dtype, dtype_tag(t));
    EXPECT_EQ(w->shape, (std::vector<std::int64_t>{32, 96}));  // Conv1D (in, out)
    ASSERT_TRUE(check_gpt_file(*r, *gpt).ok());

    std::size_t checked = 0;
    Status st = import_gpt(path, *gpt, [&](const Parameter& p, std::uint64_t first, std::span<const float> v) {
      std::vector<float> want(v.size());
      init_parameter_values(p, 3, first, want);
      for (std::size_t i = 0; i < v.size(); ++i) {
        const float exp = t == DType::kF32    ? want[i]
                          : t == DType::kBF16 ? num::bf16_to_f32(num::f32_to_bf16(want[i]))
                                              : num::f16_to_f32(num::f32_to_f16(want[i]));
        if (v[i] != exp) return internal_error(p.name() + "[" + std::to_string(first + i) + "] differs");
      }
      checked += v.size();
      return Status::OK();
    });
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_EQ(checked, gpt->config().dims.parameter_count());
  }
  // The header is padded to 8 bytes and the file holds nothing else.
  std::ifstream f(tmp_path("tiny.fp32.safetensors"), std::ios::binary | std::ios::ate);
  const auto size = static_cast<std::uint64_t>(f.tellg());
  EXPECT_EQ(size, 8 + [&] {
    f.seekg(0);
    unsigned char b[8];
    f.read(reinterpret_cast<char*>(b), 8);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = n << 8 | b[i];
    EXPECT_EQ(n % 8, 0u);
    return n;
  }() + gpt->config().dims.parameter_count() * 4);
}

TEST(Safetensors, RefusesEveryMalformedHeader) {
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  // Sanity: the well-formed file opens.
  ASSERT_TRUE(Reader::open(raw_file("good", "{" + ok_entry + "}", 8)).ok());

  {
    const std::string path = tmp_path("short");
    std::ofstream(path, std::ios::binary) << "abc";
    expect_refused(path, "starts with an 8-byte header length");
  }
  expect_refused(raw_file("huge_header", "{}", 0, (100ULL << 20) + 1), "exceeds the bound");
  expect_refused(raw_file("past_eof", "{}", 0, 1000), "runs past the end of the file");
  expect_refused(raw_file("not_json", "{\"a\": ", 0), "not valid JSON");
  expect_refused(raw_file("array", "[1,2]", 0), "not a JSON object");
  expect_refused(raw_file("duplicate", "{" + ok_entry + "," + ok_entry + "}", 8), "tensor 'a' appears twice");
  expect_refused(raw_file("entry_not_object", R"({"a":3})", 0), "tensor 'a' is not an object");
  expect_refused(raw_file("no_dtype", R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), "tensor 'a' has no dtype");
  expect_refused(raw_file("no_shape", R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8), "tensor 'a' has no shape");
  expect_refused(raw_file("no_offsets", R"({"a":{"dtype":"F32","shape":[2]}})", 8), "tensor 'a' has no data_offsets");
  expect_refused(raw_file("three_offsets", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", 8),
                 "no data_offsets pair");
  expect_refused(raw_file("extra_field", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8),
                 "unknown field 'x'");
  expect_refused(raw_file("bad_dtype", R"({"a":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", 8),
                 "unknown dtype 'F17'");
  expect_refused(raw_file("neg_shape", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                 "tensor 'a' has a shape entry");
  expect_refused(raw_file("float_shape", R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
                 "tensor 'a' has a shape entry");
  expect_refused(raw_file("neg_offset", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,8]}})", 8),
                 "tensor 'a' has a data offset");
  expect_refused(raw_file("backwards", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8),
                 "run backwards");
  expect_refused(raw_file("outside", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
                 "outside the data section of 8 bytes");
  expect_refused(raw_file("size_mismatch", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                 "tensor 'a' has 8 bytes of data, but shape (3) of F32 needs 12");
  expect_refused(raw_file("overflow", R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
                 "overflows");
  expect_refused(raw_file("overlap", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                          12),
                 "tensor 'b' overlaps tensor 'a'");
  expect_refused(raw_file("hole", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                          12),
                 "data bytes [4, 8) belong to no tensor (before 'b')");
  expect_refused(raw_file("trailing", "{" + ok_entry + "}", 12), "data bytes [8, 12) at the end of the file");
  expect_refused(raw_file("meta_value", R"({"__metadata__":{"k":1}})", 0), "__metadata__ value 'k' is not a string");
  expect_refused(raw_file("meta_type", R"({"__metadata__":[1]})", 0), "__metadata__ is not an object");

  auto missing = Reader::open(tmp_path("does-not-exist"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

// Writes the tiny GPT's tensors with the edits `edit` makes to the entry list.
std::string gpt_file(const std::string& name, const Gpt& gpt,
                     const std::function<void(std::vector<WriteEntry>&)>& edit) {
  std::vector<WriteEntry> entries;
  for (const Parameter* p : gpt.parameters()) entries.push_back(WriteEntry{p->name(), p->shape(), DType::kF32});
  edit(entries);
  const std::string path = tmp_path(name);
  Status st = write(path, entries, {{"format", "pt"}}, [&](std::size_t i, std::uint64_t first, std::span<float> out) {
    // lm_head.weight copies wte.weight's values when its name says so.
    const std::string& n = entries[i].name;
    const Parameter* p = gpt.find_parameter(n == "lm_head.weight" ? "wte.weight" : n);
    if (p != nullptr && p->numel() >= first + out.size()) {
      init_parameter_values(*p, 3, first, out);
    } else {
      for (float& v : out) v = 0.5f;
    }
    return Status::OK();
  });
  EXPECT_TRUE(st.ok()) << st;
  return path;
}

void expect_gpt_refused(const std::string& path, const Gpt& gpt, const std::string& want) {
  auto r = Reader::open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  Status st = check_gpt_file(*r, gpt);
  ASSERT_FALSE(st.ok()) << path;
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find(want), std::string::npos) << st;
  // import refuses it too, before handing out any value.
  bool called = false;
  EXPECT_FALSE(import_gpt(path, gpt, [&](const Parameter&, std::uint64_t, std::span<const float>) {
                 called = true;
                 return Status::OK();
               }).ok());
  EXPECT_FALSE(called);
}

TEST(Safetensors, GptFileMustMatchTheModel) {
  auto gpt = tiny_gpt();
  expect_gpt_refused(gpt_file("missing", *gpt, [](auto& e) { e.erase(e.begin() + 5); }), *gpt,
                     "tensor 'h.0.attn.c_attn.bias' is missing");
  expect_gpt_refused(gpt_file("shape", *gpt, [](auto& e) { e[4].shape = {96, 32}; }), *gpt,
                     "tensor 'h.0.attn.c_attn.weight' has shape (96, 32), but the model (n_layer=2, n_head=2, "
                     "n_embd=32, vocab=256, seq_len=32) expects (32, 96)");
  expect_gpt_refused(gpt_file("wpe_len", *gpt, [](auto& e) { e[1].shape = {1024, 32}; }), *gpt,
                     "tensor 'wpe.weight' has shape (1024, 32)");
  expect_gpt_refused(gpt_file("extra", *gpt, [](auto& e) { e.push_back(WriteEntry{"h.7.mlp.c_fc.weight", {2}, DType::kF32}); }),
                     *gpt, "tensor 'h.7.mlp.c_fc.weight' is not a parameter of this GPT-2");
  expect_gpt_refused(gpt_file("head_differs", *gpt, [](auto& e) { e.push_back(WriteEntry{"lm_head.weight", {256, 31}, DType::kF32}); }),
                     *gpt, "'lm_head.weight' has shape (256, 31)");

  // A dtype strata cannot read, written by hand: the F64 tensor is named.
  {
    json h;
    std::uint64_t at = 0;
    for (const Parameter* p : gpt->parameters()) {
      const std::uint64_t es = p->name() == "ln_f.bias" ? 8 : 4;
      h[p->name()] = {{"dtype", es == 8 ? "F64" : "F32"}, {"shape", p->shape()}, {"data_offsets", {at, at + p->numel() * es}}};
      at += p->numel() * es;
    }
    expect_gpt_refused(raw_file("f64", h.dump(), at), *gpt, "tensor 'ln_f.bias' is F64; strata reads F32, BF16 and F16");
  }

  // What Hugging Face checkpoints carry beside the weights is accepted.
  auto hf = gpt_file("hf_extras", *gpt, [](auto& e) {
    e.push_back(WriteEntry{"h.0.attn.bias", {1, 1, 32, 32}, DType::kF32});
    e.push_back(WriteEntry{"h.1.attn.masked_bias", {}, DType::kF32});
    e.push_back(WriteEntry{"lm_head.weight", {256, 32}, DType::kF32});
  });
  auto r = Reader::open(hf);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(check_gpt_file(*r, *gpt).ok()) << check_gpt_file(*r, *gpt);
  // ... and so is a GPT2LMHeadModel's "transformer." prefix.
  auto prefixed = gpt_file("prefixed", *gpt, [](auto& e) {
    for (auto& w : e) w.name = "transformer." + w.name;
  });
  std::size_t values = 0;
  EXPECT_TRUE(import_gpt(prefixed, *gpt, [&](const Parameter&, std::uint64_t, std::span<const float> v) {
                values += v.size();
                return Status::OK();
              }).ok());
  EXPECT_EQ(values, gpt->config().dims.parameter_count());
}

TEST(Safetensors, WriterRefusesDuplicatesAndLeavesNoPartialFile) {
  const std::string path = tmp_path("partial.safetensors");
  std::vector<WriteEntry> e = {{"a", {4}, DType::kF32}, {"b", {4}, DType::kF32}};
  Status st = write(path, e, {}, [](std::size_t i, std::uint64_t, std::span<float>) {
    return i == 1 ? io_error("source failed") : Status::OK();
  });
  EXPECT_EQ(st.code(), StatusCode::kIoError);
  EXPECT_NE(st.message().find("'b'"), std::string::npos) << st;
  struct stat sb;
  EXPECT_NE(::stat(path.c_str(), &sb), 0);
  EXPECT_NE(::stat((path + ".tmp." + std::to_string(::getpid())).c_str(), &sb), 0);
  e.push_back({"a", {1}, DType::kF32});
  EXPECT_EQ(write(path, e, {}, [](std::size_t, std::uint64_t, std::span<float>) { return Status::OK(); }).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(write("/nonexistent-dir/x.safetensors", {}, {}, nullptr).code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace strata::safetensors
