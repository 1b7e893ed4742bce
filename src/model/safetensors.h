// src/model/safetensors.h — reading and writing the safetensors format (Hugging Face), the
// weights interchange of strata, plus the GPT-2 mapping (names, shapes, dtypes) on top of it.
//
// The format: an 8-byte little-endian header length H, H bytes of JSON, then the data. The JSON
// object maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data) and may hold "__metadata__", a string-to-string map.
//
// The reader validates strictly and names the offending tensor: H at most 100 MiB and inside
// the file; the header is one JSON object without duplicate names; every entry has exactly the
// three fields with the right types; dtype is a safetensors dtype; shape entries are
// non-negative; begin <= end <= data size and end - begin = elements x dtype size (overflow
// checked); the tensors cover the data exactly, without overlaps or holes. Values are read
// through pread, so a file larger than memory reads chunk by chunk.
//
// The writer writes the JSON header (padded with spaces to a multiple of 8 bytes), then every
// tensor in the order given, to a temporary file in the same directory that is fsynced and
// renamed over the destination, so an interrupted export never leaves a partial file behind.
//
// Thread-safety: a Reader may be read from several threads (pread); writing is one call.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "strata/dtype.h"
#include "strata/model.h"
#include "strata/status.h"

namespace strata::safetensors {

// The header-length bound (the reference implementation's limit).
constexpr std::uint64_t kMaxHeaderBytes = 100ULL << 20;

struct TensorInfo {
  std::string name;
  std::string dtype;                 // as in the file: "F32", "BF16", "F16", "F64", "I64", ...
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;           // byte offsets in the data section
  std::uint64_t end = 0;
  std::uint64_t numel() const;
  std::string shape_string() const;  // "(768, 2304)"
};

// The strata dtype of a safetensors dtype name (F32, BF16, F16); false for any other.
bool to_dtype(const std::string& name, DType* out);
const char* dtype_tag(DType t);  // "F32", "BF16", "F16"

class Reader {
 public:
  static Result<Reader> open(const std::string& path);
  Reader(Reader&&) noexcept;
  Reader& operator=(Reader&&) noexcept;
  ~Reader();

  const std::string& path() const { return path_; }
  // In file order of their offsets.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Elements [first, first + out.size()) of `t` converted to fp32. Fails for dtypes other than
  // F32, BF16, F16 and for a range outside the tensor.
  Status read_f32(const TensorInfo& t, std::uint64_t first, std::span<float> out) const;

 private:
  Reader() = default;
  std::string path_;
  int fd_ = -1;
  std::uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct WriteEntry {
  std::string name;
  std::vector<std::int64_t> shape;
  DType dtype = DType::kF32;
};

// Fills `out` with elements [first, first + out.size()) of entry `index`, in fp32.
using Producer = std::function<Status(std::size_t index, std::uint64_t first, std::span<float> out)>;

Status write(const std::string& path, const std::vector<WriteEntry>& entries,
             const std::map<std::string, std::string>& metadata, const Producer& produce);

// ---- GPT-2 ----

// Checks that `file` holds exactly the parameters of `model` (Hugging Face GPT-2 names, an
// optional "transformer." prefix on every name, Conv1D (in, out) layouts) with the model's
// shapes and a readable dtype. Tensors the Hugging Face checkpoints also carry and strata does
// not need — the causal-mask buffers h.<i>.attn.bias and h.<i>.attn.masked_bias, and an
// lm_head.weight equal to wte.weight — are accepted and skipped. The Status names the tensor.
Status check_gpt_file(const Reader& file, const Gpt& model);

// Reads every parameter of `model` from `path` (after check_gpt_file) and hands its fp32 values
// to `sink` in chunks: sink(parameter, first element, values).
using ParamSink = std::function<Status(const Parameter& p, std::uint64_t first, std::span<const float> values)>;
Status import_gpt(const std::string& path, const Gpt& model, const ParamSink& sink);

// Writes every parameter of `model` as `dtype` (F32, BF16 or F16) under its Hugging Face name,
// taking the fp32 values from `source`, with metadata {"format": "pt"} and the model's
// dimensions ("strata.n_layer", ...).
using ParamSource = std::function<Status(const Parameter& p, std::uint64_t first, std::span<float> out)>;
Status export_gpt(const std::string& path, const Gpt& model, DType dtype, const ParamSource& source);

}  // namespace strata::safetensors
