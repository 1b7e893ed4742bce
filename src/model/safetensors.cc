// The safetensors reader and writer of safetensors.h, and the GPT-2 mapping.
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "kernels/numeric.h"
#include "strata/log.h"

namespace strata::safetensors {

namespace {

using json = nlohmann::json;

// Element sizes of the safetensors dtypes.
const std::map<std::string, std::uint64_t>& dtype_sizes() {
  static const std::map<std::string, std::uint64_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2},  {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8}};
  return sizes;
}

Status bad(const std::string& path, const std::string& what) {
  return data_corruption("safetensors '" + path + "': " + what);
}

Status pread_all(int fd, std::byte* dst, std::size_t n, std::uint64_t at, const std::string& path) {
  while (n > 0) {
    const ssize_t r = ::pread(fd, dst, n, static_cast<off_t>(at));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return STRATA_ERRNO(errno, "pread at offset " + std::to_string(at), path);
    if (r == 0) return bad(path, "the file ends at offset " + std::to_string(at) + ", inside a tensor");
    dst += r;
    n -= static_cast<std::size_t>(r);
    at += static_cast<std::uint64_t>(r);
  }
  return Status::OK();
}

Status write_all(int fd, const std::byte* src, std::size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, src, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return STRATA_ERRNO(errno, "write", path);
    src += w;
    n -= static_cast<std::size_t>(w);
  }
  return Status::OK();
}

// Elements converted per read or write call.
constexpr std::uint64_t kChunk = 1ULL << 20;

}  // namespace

std::uint64_t TensorInfo::numel() const {
  std::uint64_t n = 1;
  for (std::int64_t d : shape) n *= static_cast<std::uint64_t>(d);
  return n;
}

std::string TensorInfo::shape_string() const {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

bool to_dtype(const std::string& name, DType* out) {
  if (name == "F32") *out = DType::kF32;
  else if (name == "BF16") *out = DType::kBF16;
  else if (name == "F16") *out = DType::kF16;
  else return false;
  return true;
}

const char* dtype_tag(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// Reader

Reader::Reader(Reader&& o) noexcept
    : path_(std::move(o.path_)), fd_(std::exchange(o.fd_, -1)), data_start_(o.data_start_),
      tensors_(std::move(o.tensors_)), metadata_(std::move(o.metadata_)) {}

Reader& Reader::operator=(Reader&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(o.path_);
    fd_ = std::exchange(o.fd_, -1);
    data_start_ = o.data_start_;
    tensors_ = std::move(o.tensors_);
    metadata_ = std::move(o.metadata_);
  }
  return *this;
}

Reader::~Reader() {
  if (fd_ >= 0) ::close(fd_);
}

Result<Reader> Reader::open(const std::string& path) {
  Reader r;
  r.path_ = path;
  r.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (r.fd_ < 0) return STRATA_ERRNO(errno, "open safetensors file", path);
  struct stat sb;
  if (fstat(r.fd_, &sb) != 0) return STRATA_ERRNO(errno, "stat", path);
  if (!S_ISREG(sb.st_mode)) return invalid_argument("safetensors '" + path + "' is not a regular file");
  const auto file_size = static_cast<std::uint64_t>(sb.st_size);
  if (file_size < 8) {
    return bad(path, "the file has " + std::to_string(file_size) +
                         " bytes; a safetensors file starts with an 8-byte header length");
  }
  unsigned char len_bytes[8];
  STRATA_RETURN_IF_ERROR(pread_all(r.fd_, reinterpret_cast<std::byte*>(len_bytes), 8, 0, path));
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | len_bytes[i];
  if (header_len > kMaxHeaderBytes) {
    return bad(path, "header length " + std::to_string(header_len) + " exceeds the bound of " +
                         std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (header_len > file_size - 8) {
    return bad(path, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                         std::to_string(file_size) + " bytes)");
  }
  std::string text(header_len, '\0');
  STRATA_RETURN_IF_ERROR(pread_all(r.fd_, reinterpret_cast<std::byte*>(text.data()), header_len, 8, path));
  r.data_start_ = 8 + header_len;
  const std::uint64_t data_len = file_size - r.data_start_;

  // Parse, refusing duplicate tensor names (a JSON object keeps only the last).
  std::set<std::string> seen;
  std::string duplicate;
  json header;
  try {
    header = json::parse(text, [&](int depth, json::parse_event_t ev, json& v) {
      if (depth == 1 && ev == json::parse_event_t::key && v.is_string()) {
        if (!seen.insert(v.get<std::string>()).second && duplicate.empty()) duplicate = v.get<std::string>();
      }
      return true;
    });
  } catch (const json::exception& e) {
    return bad(path, std::string("the header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) return bad(path, "tensor '" + duplicate + "' appears twice in the header");
  if (!header.is_object()) return bad(path, "the header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) return bad(path, "__metadata__ is not an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m.value().is_string()) return bad(path, "__metadata__ value '" + m.key() + "' is not a string");
        r.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string who = "tensor '" + name + "'";
    if (!e.is_object()) return bad(path, who + " is not an object");
    for (auto f = e.begin(); f != e.end(); ++f) {
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets") {
        return bad(path, who + " has an unknown field '" + f.key() + "'");
      }
    }
    if (!e.contains("dtype") || !e["dtype"].is_string()) return bad(path, who + " has no dtype string");
    if (!e.contains("shape") || !e["shape"].is_array()) return bad(path, who + " has no shape array");
    if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2) {
      return bad(path, who + " has no data_offsets pair");
    }
    TensorInfo t;
    t.name = name;
    t.dtype = e["dtype"].get<std::string>();
    auto size_it = dtype_sizes().find(t.dtype);
    if (size_it == dtype_sizes().end()) return bad(path, who + " has an unknown dtype '" + t.dtype + "'");
    std::uint64_t numel = 1;
    for (const json& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<std::int64_t>() < 0) {
        return bad(path, who + " has a shape entry that is not a non-negative integer: " + d.dump());
      }
      t.shape.push_back(d.get<std::int64_t>());
      if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(t.shape.back()), &numel)) {
        return bad(path, who + " has a shape whose element count overflows");
      }
    }
    for (const json& o : e["data_offsets"]) {
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<std::int64_t>() >= 0)) {
        return bad(path, who + " has a data offset that is not a non-negative integer: " + o.dump());
      }
    }
    t.begin = e["data_offsets"][0].get<std::uint64_t>();
    t.end = e["data_offsets"][1].get<std::uint64_t>();
    if (t.begin > t.end) {
      return bad(path, who + " has data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                           "] that run backwards");
    }
    if (t.end > data_len) {
      return bad(path, who + " has data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                           "] outside the data section of " + std::to_string(data_len) + " bytes");
    }
    std::uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, size_it->second, &bytes) || bytes != t.end - t.begin) {
      return bad(path, who + " has " + std::to_string(t.end - t.begin) + " bytes of data, but shape " +
                           t.shape_string() + " of " + t.dtype + " needs " + std::to_string(numel * size_it->second));
    }
    r.tensors_.push_back(std::move(t));
  }
  std::sort(r.tensors_.begin(), r.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t at = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : r.tensors_) {
    if (t.begin < at) {
      return bad(path, "tensor '" + t.name + "' overlaps tensor '" + (prev ? prev->name : "") + "' in the data");
    }
    if (t.begin > at) {
      return bad(path, "data bytes [" + std::to_string(at) + ", " + std::to_string(t.begin) +
                           ") belong to no tensor (before '" + t.name + "')");
    }
    at = t.end;
    prev = &t;
  }
  if (at != data_len) {
    return bad(path, "data bytes [" + std::to_string(at) + ", " + std::to_string(data_len) +
                         ") at the end of the file belong to no tensor");
  }
  return r;
}

const TensorInfo* Reader::find(const std::string& name) const {
  for (const TensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

Status Reader::read_f32(const TensorInfo& t, std::uint64_t first, std::span<float> out) const {
  DType dt;
  if (!to_dtype(t.dtype, &dt)) {
    return invalid_argument("safetensors '" + path_ + "': tensor '" + t.name + "' is " + t.dtype +
                            "; strata reads F32, BF16 and F16");
  }
  if (first > t.numel() || out.size() > t.numel() - first) {
    return invalid_argument("safetensors '" + path_ + "': elements [" + std::to_string(first) + ", +" +
                            std::to_string(out.size()) + ") are outside tensor '" + t.name + "'");
  }
  const std::size_t es = dtype_size(dt);
  std::vector<std::byte> buf;
  for (std::uint64_t done = 0; done < out.size();) {
    const std::uint64_t n = std::min<std::uint64_t>(kChunk, out.size() - done);
    buf.resize(n * es);
    STRATA_RETURN_IF_ERROR(pread_all(fd_, buf.data(), buf.size(), data_start_ + t.begin + (first + done) * es, path_));
    for (std::uint64_t i = 0; i < n; ++i) {
      float v;
      if (dt == DType::kF32) {
        std::memcpy(&v, buf.data() + 4 * i, 4);
      } else {
        std::uint16_t h;
        std::memcpy(&h, buf.data() + 2 * i, 2);
        v = dt == DType::kBF16 ? num::bf16_to_f32(h) : num::f16_to_f32(h);
      }
      out[done + i] = v;
    }
    done += n;
  }
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Writer

Status write(const std::string& path, const std::vector<WriteEntry>& entries,
             const std::map<std::string, std::string>& metadata, const Producer& produce) {
  // The header: metadata first, then the tensors in the order given, data back to back.
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t at = 0;
  std::set<std::string> names;
  for (const WriteEntry& e : entries) {
    if (!names.insert(e.name).second) return invalid_argument("safetensors write: tensor '" + e.name + "' given twice");
    std::uint64_t n = 1;
    for (std::int64_t d : e.shape) {
      if (d < 0) return invalid_argument("safetensors write: tensor '" + e.name + "' has a negative dimension");
      n *= static_cast<std::uint64_t>(d);
    }
    const std::uint64_t end = at + n * dtype_size(e.dtype);
    header[e.name] = {{"dtype", dtype_tag(e.dtype)}, {"shape", e.shape}, {"data_offsets", {at, end}}};
    at = end;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return STRATA_ERRNO(errno, "create", tmp);
  auto fail = [&](Status s) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };
  std::byte len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::byte>((text.size() >> (8 * i)) & 0xff);
  if (Status s = write_all(fd, len, 8, tmp); !s.ok()) return fail(s);
  if (Status s = write_all(fd, reinterpret_cast<const std::byte*>(text.data()), text.size(), tmp); !s.ok()) return fail(s);

  std::vector<float> values;
  std::vector<std::byte> bytes;
  for (std::size_t k = 0; k < entries.size(); ++k) {
    const WriteEntry& e = entries[k];
    std::uint64_t n = 1;
    for (std::int64_t d : e.shape) n *= static_cast<std::uint64_t>(d);
    const std::size_t es = dtype_size(e.dtype);
    for (std::uint64_t done = 0; done < n;) {
      const std::uint64_t c = std::min<std::uint64_t>(kChunk, n - done);
      values.resize(c);
      if (Status s = produce(k, done, values); !s.ok()) return fail(s.with_context("safetensors write '" + e.name + "'"));
      bytes.resize(c * es);
      for (std::uint64_t i = 0; i < c; ++i) {
        if (e.dtype == DType::kF32) {
          std::memcpy(bytes.data() + 4 * i, &values[i], 4);
        } else {
          const std::uint16_t h = e.dtype == DType::kBF16 ? num::f32_to_bf16(values[i]) : num::f32_to_f16(values[i]);
          std::memcpy(bytes.data() + 2 * i, &h, 2);
        }
      }
      if (Status s = write_all(fd, bytes.data(), bytes.size(), tmp); !s.ok()) return fail(s);
      done += c;
    }
  }
  if (::fsync(fd) != 0) return fail(STRATA_ERRNO(errno, "fsync", tmp));
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return STRATA_ERRNO(err, "close", tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return STRATA_ERRNO(err, "rename " + tmp + " to", path);
  }
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// GPT-2

namespace {

// "transformer." when every tensor name of the file carries it (a GPT2LMHeadModel checkpoint).
std::string name_prefix(const Reader& file) {
  const std::string p = "transformer.";
  bool all = !file.tensors().empty();
  for (const TensorInfo& t : file.tensors()) {
    if (t.name.rfind(p, 0) != 0 && t.name != "lm_head.weight") all = false;
  }
  return all ? p : "";
}

// HF checkpoints' causal-mask buffers, which carry no weights.
bool is_mask_buffer(const std::string& n) {
  if (n.rfind("h.", 0) != 0) return false;
  return n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias");
}

Status same_tensor_values(const Reader& file, const TensorInfo& a, const TensorInfo& b) {
  std::vector<float> va, vb;
  for (std::uint64_t done = 0; done < a.numel();) {
    const std::uint64_t n = std::min<std::uint64_t>(kChunk, a.numel() - done);
    va.resize(n);
    vb.resize(n);
    STRATA_RETURN_IF_ERROR(file.read_f32(a, done, va));
    STRATA_RETURN_IF_ERROR(file.read_f32(b, done, vb));
    if (va != vb) {
      return invalid_argument("safetensors '" + file.path() + "': tensor '" + b.name + "' differs from '" + a.name +
                              "', but strata's GPT-2 ties the output head to the token embedding");
    }
    done += n;
  }
  return Status::OK();
}

}  // namespace

Status check_gpt_file(const Reader& file, const Gpt& model) {
  const std::string prefix = name_prefix(file);
  const ModelDims& d = model.config().dims;
  const std::string dims = "n_layer=" + std::to_string(d.n_layer) + ", n_head=" + std::to_string(d.n_head) +
                           ", n_embd=" + std::to_string(d.n_embd) + ", vocab=" + std::to_string(d.vocab) +
                           ", seq_len=" + std::to_string(d.seq_len);
  std::set<std::string> expected;
  for (const Parameter* p : model.parameters()) {
    expected.insert(prefix + p->name());
    const TensorInfo* t = file.find(prefix + p->name());
    if (t == nullptr) {
      return invalid_argument("safetensors '" + file.path() + "': tensor '" + prefix + p->name() +
                              "' is missing (the model has " + dims + ")");
    }
    DType dt;
    if (!to_dtype(t->dtype, &dt)) {
      return invalid_argument("safetensors '" + file.path() + "': tensor '" + t->name + "' is " + t->dtype +
                              "; strata reads F32, BF16 and F16");
    }
    if (t->shape != p->shape()) {
      return invalid_argument("safetensors '" + file.path() + "': tensor '" + t->name + "' has shape " +
                              t->shape_string() + ", but the model (" + dims + ") expects " + p->shape_string());
    }
  }
  for (const TensorInfo& t : file.tensors()) {
    if (expected.count(t.name)) continue;
    const std::string bare = t.name.substr(t.name.rfind(prefix, 0) == 0 ? prefix.size() : 0);
    if (is_mask_buffer(bare)) continue;
    if (t.name == "lm_head.weight") {
      const TensorInfo* wte = file.find(prefix + "wte.weight");
      if (t.shape != wte->shape) {
        return invalid_argument("safetensors '" + file.path() + "': tensor 'lm_head.weight' has shape " +
                                t.shape_string() + ", unlike the tied wte.weight " + wte->shape_string());
      }
      STRATA_RETURN_IF_ERROR(same_tensor_values(file, *wte, t));
      continue;
    }
    return invalid_argument("safetensors '" + file.path() + "': tensor '" + t.name +
                            "' is not a parameter of this GPT-2 (" + dims + ")");
  }
  return Status::OK();
}

Status import_gpt(const std::string& path, const Gpt& model, const ParamSink& sink) {
  STRATA_ASSIGN_OR_RETURN(Reader file, Reader::open(path));
  STRATA_RETURN_IF_ERROR(check_gpt_file(file, model));
  const std::string prefix = name_prefix(file);
  std::vector<float> buf;
  for (const Parameter* p : model.parameters()) {
    const TensorInfo& t = *file.find(prefix + p->name());
    for (std::uint64_t done = 0; done < t.numel();) {
      const std::uint64_t n = std::min<std::uint64_t>(kChunk, t.numel() - done);
      buf.resize(n);
      STRATA_RETURN_IF_ERROR(file.read_f32(t, done, buf));
      STRATA_RETURN_IF_ERROR(sink(*p, done, buf));
      done += n;
    }
  }
  return Status::OK();
}

Status export_gpt(const std::string& path, const Gpt& model, DType dtype, const ParamSource& source) {
  const std::vector<Parameter*> params = model.parameters();
  std::vector<WriteEntry> entries;
  for (const Parameter* p : params) entries.push_back(WriteEntry{p->name(), p->shape(), dtype});
  const ModelDims& d = model.config().dims;
  const std::map<std::string, std::string> meta = {
      {"format", "pt"},
      {"strata.model", "gpt2"},
      {"strata.n_layer", std::to_string(d.n_layer)},
      {"strata.n_head", std::to_string(d.n_head)},
      {"strata.n_embd", std::to_string(d.n_embd)},
      {"strata.vocab", std::to_string(d.vocab)},
      {"strata.seq_len", std::to_string(d.seq_len)},
  };
  return write(path, entries, meta, [&](std::size_t index, std::uint64_t first, std::span<float> out) {
    return source(*params[index], first, out);
  });
}

}  // namespace strata::safetensors
