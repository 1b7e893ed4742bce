// Profile parsing. TOML (toml++) and JSON (nlohmann) documents are first turned into one
// small tree of Nodes that remember where each value came from (file:line:column for TOML,
// file and JSON pointer for JSON); a single schema-driven reader then fills the Profile, so
// both formats accept exactly the same keys and report errors the same way.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "core/profile_internal.h"
#include "strata/profile.h"
#include "strata/units.h"

namespace strata {
namespace profile_detail {

int edit_distance(const std::string& a, const std::string& b) {
  const std::size_t n = a.size(), m = b.size();
  std::vector<std::vector<int>> d(n + 1, std::vector<int>(m + 1));
  for (std::size_t i = 0; i <= n; ++i) d[i][0] = static_cast<int>(i);
  for (std::size_t j = 0; j <= m; ++j) d[0][j] = static_cast<int>(j);
  for (std::size_t i = 1; i <= n; ++i) {
    for (std::size_t j = 1; j <= m; ++j) {
      int cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

}  // namespace profile_detail

namespace {

using profile_detail::FieldError;

constexpr int kMaxDepth = 32;

struct Node {
  enum class Kind { kTable, kArray, kString, kInt, kFloat, kBool, kOther };
  Kind kind = Kind::kOther;
  std::string where;  // "file.toml:3:5" or "file.json at /memory/x"
  std::string str;
  std::int64_t integer = 0;
  double number = 0;
  bool boolean = false;
  std::vector<std::pair<std::string, Node>> members;  // tables, in document order
  std::vector<Node> items;                            // arrays
  std::string other_type;                             // for kOther: "date", "time", "null", ...
};

std::string describe(const Node& n) {
  switch (n.kind) {
    case Node::Kind::kTable: return "a table";
    case Node::Kind::kArray: return "an array";
    case Node::Kind::kString: return "the string \"" + n.str.substr(0, 60) + "\"";
    case Node::Kind::kInt: return "the integer " + std::to_string(n.integer);
    case Node::Kind::kFloat: {
      std::ostringstream o;
      o << "the number " << n.number;
      return o.str();
    }
    case Node::Kind::kBool: return n.boolean ? "the boolean true" : "the boolean false";
    case Node::Kind::kOther: return "a " + n.other_type;
  }
  return "a value";
}

// ---- TOML → Node ----

std::string toml_where(std::string_view origin, const toml::source_region& r) {
  return std::string(origin) + ":" + std::to_string(r.begin.line) + ":" + std::to_string(r.begin.column);
}

Result<Node> from_toml_node(const toml::node& tn, std::string_view origin, int depth) {
  if (depth > kMaxDepth) return invalid_argument(toml_where(origin, tn.source()) + ": nesting deeper than " + std::to_string(kMaxDepth) + " levels");
  Node n;
  n.where = toml_where(origin, tn.source());
  if (const toml::table* t = tn.as_table()) {
    n.kind = Node::Kind::kTable;
    for (auto&& [k, v] : *t) {
      STRATA_ASSIGN_OR_RETURN(Node child, from_toml_node(v, origin, depth + 1));
      if (child.where.empty() || v.source().begin.line == 0) child.where = n.where;
      n.members.emplace_back(std::string(k.str()), std::move(child));
    }
    // toml++ iterates tables in key order; keep document order for error reporting.
    std::stable_sort(n.members.begin(), n.members.end(), [&](const auto& a, const auto& b) {
      const auto* na = t->get(a.first);
      const auto* nb = t->get(b.first);
      auto la = na->source().begin, lb = nb->source().begin;
      return la.line != lb.line ? la.line < lb.line : la.column < lb.column;
    });
  } else if (const toml::array* a = tn.as_array()) {
    n.kind = Node::Kind::kArray;
    for (const toml::node& v : *a) {
      STRATA_ASSIGN_OR_RETURN(Node child, from_toml_node(v, origin, depth + 1));
      n.items.push_back(std::move(child));
    }
  } else if (auto s = tn.value<std::string>(); s && tn.is_string()) {
    n.kind = Node::Kind::kString;
    n.str = *s;
  } else if (tn.is_integer()) {
    n.kind = Node::Kind::kInt;
    n.integer = *tn.value<std::int64_t>();
  } else if (tn.is_floating_point()) {
    n.kind = Node::Kind::kFloat;
    n.number = *tn.value<double>();
  } else if (tn.is_boolean()) {
    n.kind = Node::Kind::kBool;
    n.boolean = *tn.value<bool>();
  } else {
    n.kind = Node::Kind::kOther;
    n.other_type = tn.is_date() ? "date" : tn.is_time() ? "time" : "date-time";
  }
  return n;
}

// ---- JSON → Node ----

std::string escape_pointer_token(const std::string& k) {
  std::string out;
  for (char c : k) {
    if (c == '~') out += "~0";
    else if (c == '/') out += "~1";
    else out += c;
  }
  return out;
}

Result<Node> from_json_node(const nlohmann::ordered_json& j, std::string_view origin, const std::string& pointer, int depth) {
  if (depth > kMaxDepth) return invalid_argument(std::string(origin) + " at " + pointer + ": nesting deeper than " + std::to_string(kMaxDepth) + " levels");
  Node n;
  n.where = std::string(origin) + " at " + (pointer.empty() ? "/" : pointer);
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::object:
      n.kind = Node::Kind::kTable;
      for (auto it = j.begin(); it != j.end(); ++it) {
        STRATA_ASSIGN_OR_RETURN(Node child, from_json_node(it.value(), origin, pointer + "/" + escape_pointer_token(it.key()), depth + 1));
        n.members.emplace_back(it.key(), std::move(child));
      }
      break;
    case nlohmann::ordered_json::value_t::array: {
      n.kind = Node::Kind::kArray;
      std::size_t i = 0;
      for (const auto& v : j) {
        STRATA_ASSIGN_OR_RETURN(Node child, from_json_node(v, origin, pointer + "/" + std::to_string(i++), depth + 1));
        n.items.push_back(std::move(child));
      }
      break;
    }
    case nlohmann::ordered_json::value_t::string:
      n.kind = Node::Kind::kString;
      n.str = j.get<std::string>();
      break;
    case nlohmann::ordered_json::value_t::number_integer:
      n.kind = Node::Kind::kInt;
      n.integer = j.get<std::int64_t>();
      break;
    case nlohmann::ordered_json::value_t::number_unsigned: {
      auto u = j.get<std::uint64_t>();
      if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        n.kind = Node::Kind::kFloat;  // reported as out of range by the reader
        n.number = static_cast<double>(u);
      } else {
        n.kind = Node::Kind::kInt;
        n.integer = static_cast<std::int64_t>(u);
      }
      break;
    }
    case nlohmann::ordered_json::value_t::number_float:
      n.kind = Node::Kind::kFloat;
      n.number = j.get<double>();
      break;
    case nlohmann::ordered_json::value_t::boolean:
      n.kind = Node::Kind::kBool;
      n.boolean = j.get<bool>();
      break;
    default:
      n.kind = Node::Kind::kOther;
      n.other_type = "null";
      break;
  }
  return n;
}

// ---- the schema-driven reader ----

std::string suggestion(const std::string& key, const std::vector<std::string>& known, const std::string& prefix) {
  std::string best;
  int best_d = std::numeric_limits<int>::max();
  for (const std::string& k : known) {
    int d = profile_detail::edit_distance(key, k);
    if (d < best_d) {
      best_d = d;
      best = k;
    }
  }
  int limit = std::max<int>(2, static_cast<int>(key.size()) / 3);
  if (!best.empty() && best_d <= limit) return "; did you mean '" + prefix + best + "'?";
  std::string list;
  for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
  return "; known keys here: " + list;
}

class Section {
 public:
  // `node` may be null (section absent: every key keeps its default).
  Section(const Node* node, std::string path) : node_(node), path_(std::move(path)) {}

  Status bytes(const char* key, std::uint64_t* out, std::uint64_t min = 0) {
    const Node* v = take(key);
    if (v == nullptr) return Status::OK();
    if (v->kind == Node::Kind::kInt) {
      if (v->integer < 0) return error(*v, key, "a non-negative byte size", describe(*v));
      *out = static_cast<std::uint64_t>(v->integer);
    } else if (v->kind == Node::Kind::kString) {
      auto r = parse_bytes(v->str);
      if (!r) return invalid_argument(v->where + ": " + full(key) + ": " + r.status().message());
      *out = *r;
    } else {
      return error(*v, key, "a byte size such as \"64MiB\" or an integer number of bytes", describe(*v));
    }
    if (*out < min) return error(*v, key, "at least " + format_bytes(min), format_bytes(*out));
    return Status::OK();
  }

  Status bandwidth(const char* key, std::uint64_t* out) {
    const Node* v = take(key);
    if (v == nullptr) return Status::OK();
    if (v->kind == Node::Kind::kInt && v->integer >= 0) {
      *out = static_cast<std::uint64_t>(v->integer);
      return Status::OK();
    }
    if (v->kind != Node::Kind::kString) return error(*v, key, "a bandwidth such as \"25GB/s\" (or \"0\" for none)", describe(*v));
    auto r = parse_bandwidth(v->str);
    if (!r) return invalid_argument(v->where + ": " + full(key) + ": " + r.status().message());
    *out = *r;
    return Status::OK();
  }

  template <typename Int>
  Status integer(const char* key, Int* out, std::int64_t lo, std::int64_t hi) {
    const Node* v = take(key);
    if (v == nullptr) return Status::OK();
    std::string range = "an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
    if (v->kind == Node::Kind::kFloat && std::isfinite(v->number) && v->number == std::floor(v->number) &&
        std::fabs(v->number) < 9e15) {
      // JSON writers often emit 4.0 for 4; accept exact integers.
      Node copy = *v;
      copy.kind = Node::Kind::kInt;
      copy.integer = static_cast<std::int64_t>(v->number);
      return store_int(copy, key, out, lo, hi, range);
    }
    if (v->kind != Node::Kind::kInt) return error(*v, key, range, describe(*v));
    return store_int(*v, key, out, lo, hi, range);
  }

  Status number(const char* key, double* out, double lo, double hi, bool lo_open = false) {
    const Node* v = take(key);
    if (v == nullptr) return Status::OK();
    return store_number(*v, full(key), out, lo, hi, lo_open);
  }

  Status boolean(const char* key, bool* out) {
    const Node* v = take(key);
    if (v == nullptr) return Status::OK();
    if (v->kind != Node::Kind::kBool) return error(*v, key, "true or false", describe(*v));
    *out = v->boolean;
    return Status::OK();
  }

  Status text(const char* key, std::string* out) {
    const Node* v = take(key);
    if (v == nullptr) return Status::OK();
    if (v->kind != Node::Kind::kString) return error(*v, key, "a string", describe(*v));
    *out = v->str;
    return Status::OK();
  }

  // One of `options`; *index receives its position.
  Status choice(const char* key, int* index, const std::vector<std::string>& options) {
    const Node* v = take(key);
    if (v == nullptr) return Status::OK();
    std::string list;
    for (const auto& o : options) list += (list.empty() ? "" : ", ") + ("\"" + o + "\"");
    if (v->kind != Node::Kind::kString) return error(*v, key, "one of " + list, describe(*v));
    for (std::size_t i = 0; i < options.size(); ++i) {
      if (v->str == options[i]) {
        *index = static_cast<int>(i);
        return Status::OK();
      }
    }
    return error(*v, key, "one of " + list, describe(*v));
  }

  // A string or an array of strings.
  Status paths(const char* key, std::vector<std::string>* out) {
    const Node* v = take(key);
    if (v == nullptr) return Status::OK();
    out->clear();
    if (v->kind == Node::Kind::kString) {
      if (v->str.empty()) return error(*v, key, "a non-empty directory path", "an empty string");
      out->push_back(v->str);
      return Status::OK();
    }
    if (v->kind != Node::Kind::kArray) return error(*v, key, "a directory path or a list of them", describe(*v));
    for (const Node& item : v->items) {
      if (item.kind != Node::Kind::kString || item.str.empty()) {
        return invalid_argument(item.where + ": " + full(key) + ": expected each entry to be a non-empty directory path, found " + describe(item));
      }
      out->push_back(item.str);
    }
    return Status::OK();
  }

  // A two-element array of numbers in [0, 1).
  Status betas(const char* key, double* b1, double* b2) {
    const Node* v = take(key);
    if (v == nullptr) return Status::OK();
    if (v->kind != Node::Kind::kArray || v->items.size() != 2) {
      return error(*v, key, "an array of two numbers [beta1, beta2]", describe(*v) + (v->kind == Node::Kind::kArray ? " of " + std::to_string(v->items.size()) + " elements" : ""));
    }
    STRATA_RETURN_IF_ERROR(store_number(v->items[0], full(key) + "[0]", b1, 0.0, 1.0, false, true));
    return store_number(v->items[1], full(key) + "[1]", b2, 0.0, 1.0, false, true);
  }

  // The loss scale: "dynamic" or a positive number.
  Status loss_scale(const char* key, bool* dynamic, double* value) {
    const Node* v = take(key);
    if (v == nullptr) return Status::OK();
    if (v->kind == Node::Kind::kString) {
      if (v->str != "dynamic") return error(*v, key, "\"dynamic\" or a positive number", describe(*v));
      *dynamic = true;
      return Status::OK();
    }
    *dynamic = false;
    return store_number(*v, full(key), value, 0.0, 1e38, true);
  }

  // Sub-table, or null when absent. An entry that is not a table is an error.
  Result<const Node*> table(const char* key) {
    const Node* v = take(key);
    if (v == nullptr) return static_cast<const Node*>(nullptr);
    if (v->kind != Node::Kind::kTable) return error(*v, key, "a table [" + full(key) + "]", describe(*v));
    return v;
  }

  // Every key present must have been read.
  // A key that is gone: its presence is an error saying what replaced it.
  Status moved(const char* key, const std::string& instead) {
    const Node* v = take(key);
    if (v == nullptr) return Status::OK();
    std::string prefix = path_.empty() ? "" : path_ + ".";
    return invalid_argument(v->where + ": " + prefix + key + " is no longer a key: " + instead + "; set that instead");
  }

  Status finish() const {
    if (node_ == nullptr) return Status::OK();
    for (const auto& [k, v] : node_->members) {
      if (std::find(used_.begin(), used_.end(), k) != used_.end()) continue;
      std::string prefix = path_.empty() ? "" : path_ + ".";
      return invalid_argument(v.where + ": " + prefix + k + ": unknown key" + suggestion(k, known_, prefix));
    }
    return Status::OK();
  }

 private:
  const Node* take(const char* key) {
    known_.emplace_back(key);
    if (node_ == nullptr) return nullptr;
    for (const auto& [k, v] : node_->members) {
      if (k == key) {
        used_.emplace_back(key);
        return &v;
      }
    }
    return nullptr;
  }

  std::string full(const char* key) const { return path_.empty() ? std::string(key) : path_ + "." + key; }

  Status error(const Node& v, const char* key, const std::string& expected, const std::string& found) const {
    return invalid_argument(v.where + ": " + full(key) + ": expected " + expected + ", found " + found);
  }

  template <typename Int>
  Status store_int(const Node& v, const char* key, Int* out, std::int64_t lo, std::int64_t hi, const std::string& range) {
    if (v.integer < lo || v.integer > hi) return error(v, key, range, describe(v));
    *out = static_cast<Int>(v.integer);
    return Status::OK();
  }

  static Status store_number(const Node& v, const std::string& key, double* out, double lo, double hi, bool lo_open,
                             bool hi_open = false) {
    double x;
    if (v.kind == Node::Kind::kFloat) x = v.number;
    else if (v.kind == Node::Kind::kInt) x = static_cast<double>(v.integer);
    else return invalid_argument(v.where + ": " + key + ": expected a number, found " + describe(v));
    std::ostringstream range;
    range << "a number " << (lo_open ? "> " : ">= ") << lo << " and " << (hi_open ? "< " : "<= ") << hi;
    if (!std::isfinite(x) || (lo_open ? x <= lo : x < lo) || (hi_open ? x >= hi : x > hi)) {
      return invalid_argument(v.where + ": " + key + ": expected " + range.str() + ", found " + describe(v));
    }
    *out = x;
    return Status::OK();
  }

  const Node* node_;
  std::string path_;
  std::vector<std::string> known_;
  std::vector<std::string> used_;
};

constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();

Status read_profile(const Node& root, Profile* p) {
  Section top(&root, "");
  STRATA_ASSIGN_OR_RETURN(const Node* memory, top.table("memory"));
  STRATA_ASSIGN_OR_RETURN(const Node* offload, top.table("offload"));
  STRATA_ASSIGN_OR_RETURN(const Node* nvme, top.table("nvme"));
  STRATA_ASSIGN_OR_RETURN(const Node* zero, top.table("zero"));
  STRATA_ASSIGN_OR_RETURN(const Node* parallel, top.table("parallel"));
  STRATA_ASSIGN_OR_RETURN(const Node* precision, top.table("precision"));
  STRATA_ASSIGN_OR_RETURN(const Node* optimizer, top.table("optimizer"));
  STRATA_ASSIGN_OR_RETURN(const Node* activation, top.table("activation"));
  STRATA_ASSIGN_OR_RETURN(const Node* train, top.table("train"));
  STRATA_RETURN_IF_ERROR(top.finish());

  {
    Section s(memory, "memory");
    STRATA_RETURN_IF_ERROR(s.bytes("device_budget", &p->memory.device_budget, 4096));
    STRATA_RETURN_IF_ERROR(s.bytes("host_budget", &p->memory.host_budget, 4096));
    STRATA_RETURN_IF_ERROR(s.bandwidth("host_device_bandwidth", &p->memory.host_device_bandwidth));
    STRATA_RETURN_IF_ERROR(s.finish());
  }
  const std::vector<std::string> targets = {"none", "cpu", "nvme"};
  {
    Section off(offload, "offload");
    STRATA_ASSIGN_OR_RETURN(const Node* opt, off.table("optimizer"));
    STRATA_ASSIGN_OR_RETURN(const Node* param, off.table("param"));
    STRATA_RETURN_IF_ERROR(off.finish());

    Section s(opt, "offload.optimizer");
    int t = static_cast<int>(p->offload_optimizer.device);
    STRATA_RETURN_IF_ERROR(s.choice("device", &t, targets));
    p->offload_optimizer.device = static_cast<OffloadTarget>(t);
    STRATA_RETURN_IF_ERROR(s.paths("nvme_path", &p->offload_optimizer.nvme_path));
    STRATA_RETURN_IF_ERROR(s.boolean("pin_memory", &p->offload_optimizer.pin_memory));
    STRATA_RETURN_IF_ERROR(s.integer("buffer_count", &p->offload_optimizer.buffer_count, 2, 1024));
    STRATA_RETURN_IF_ERROR(s.bytes("buffer_size", &p->offload_optimizer.buffer_size, 4096));
    STRATA_RETURN_IF_ERROR(s.boolean("pipeline_read", &p->offload_optimizer.pipeline_read));
    STRATA_RETURN_IF_ERROR(s.boolean("pipeline_write", &p->offload_optimizer.pipeline_write));
    STRATA_RETURN_IF_ERROR(s.boolean("overlap_step", &p->offload_optimizer.overlap_step));
    STRATA_RETURN_IF_ERROR(s.boolean("delayed_update", &p->offload_optimizer.delayed_update));
    STRATA_RETURN_IF_ERROR(s.integer("delayed_update_warmup", &p->offload_optimizer.delayed_update_warmup, 0, 1000000000));
    STRATA_RETURN_IF_ERROR(s.finish());

    Section q(param, "offload.param");
    t = static_cast<int>(p->offload_param.device);
    STRATA_RETURN_IF_ERROR(q.choice("device", &t, targets));
    p->offload_param.device = static_cast<OffloadTarget>(t);
    STRATA_RETURN_IF_ERROR(q.paths("nvme_path", &p->offload_param.nvme_path));
    STRATA_RETURN_IF_ERROR(q.bytes("max_in_cpu", &p->offload_param.max_in_cpu));
    STRATA_RETURN_IF_ERROR(q.integer("buffer_count", &p->offload_param.buffer_count, 1, 1024));
    STRATA_RETURN_IF_ERROR(q.bytes("buffer_size", &p->offload_param.buffer_size, 4096));
    STRATA_RETURN_IF_ERROR(q.finish());
  }
  {
    Section s(nvme, "nvme");
    const std::vector<std::string> engines = {"io_uring", "libaio", "posix"};
    int e = static_cast<int>(std::find(engines.begin(), engines.end(), p->nvme.engine) - engines.begin());
    STRATA_RETURN_IF_ERROR(s.choice("engine", &e, engines));
    p->nvme.engine = engines[static_cast<std::size_t>(e)];
    STRATA_RETURN_IF_ERROR(s.bytes("block_size", &p->nvme.block_size, 512));
    STRATA_RETURN_IF_ERROR(s.integer("queue_depth", &p->nvme.queue_depth, 1, 4096));
    STRATA_RETURN_IF_ERROR(s.integer("threads", &p->nvme.threads, 1, 64));
    STRATA_RETURN_IF_ERROR(s.boolean("direct", &p->nvme.direct));
    STRATA_RETURN_IF_ERROR(s.boolean("registered_buffers", &p->nvme.registered_buffers));
    STRATA_RETURN_IF_ERROR(s.boolean("sqpoll", &p->nvme.sqpoll));
    STRATA_RETURN_IF_ERROR(s.boolean("checksums", &p->nvme.checksums));
    STRATA_RETURN_IF_ERROR(s.finish());
  }
  {
    Section s(zero, "zero");
    STRATA_RETURN_IF_ERROR(s.integer("stage", &p->zero.stage, 0, 3));
    STRATA_RETURN_IF_ERROR(s.bytes("reduce_bucket_size", &p->zero.reduce_bucket_size, 4096));
    STRATA_RETURN_IF_ERROR(s.bytes("allgather_bucket_size", &p->zero.allgather_bucket_size, 4096));
    STRATA_RETURN_IF_ERROR(s.bytes("prefetch_bucket_size", &p->zero.prefetch_bucket_size));
    STRATA_RETURN_IF_ERROR(s.integer("max_live_parameters", &p->zero.max_live_parameters, 1, std::numeric_limits<std::int64_t>::max()));
    STRATA_RETURN_IF_ERROR(s.integer("param_persistence_threshold", &p->zero.param_persistence_threshold, 0, std::numeric_limits<std::int64_t>::max()));
    STRATA_RETURN_IF_ERROR(s.integer("max_reuse_distance", &p->zero.max_reuse_distance, 0, std::numeric_limits<std::int64_t>::max()));
    STRATA_RETURN_IF_ERROR(s.boolean("overlap_comm", &p->zero.overlap_comm));
    STRATA_RETURN_IF_ERROR(s.finish());
  }
  {
    Section s(parallel, "parallel");
    STRATA_RETURN_IF_ERROR(s.integer("dp", &p->parallel.dp, 1, 65536));
    STRATA_RETURN_IF_ERROR(s.integer("tp", &p->parallel.tp, 1, 1024));
    STRATA_RETURN_IF_ERROR(s.boolean("sequence_parallel", &p->parallel.sequence_parallel));
    STRATA_RETURN_IF_ERROR(s.integer("pp", &p->parallel.pp, 1, 1024));
    int sched = static_cast<int>(p->parallel.schedule);
    STRATA_RETURN_IF_ERROR(s.choice("schedule", &sched, {"gpipe", "1f1b", "interleaved", "zb-h1"}));
    p->parallel.schedule = static_cast<PipelineSchedule>(sched);
    STRATA_RETURN_IF_ERROR(s.moved("micro_batches", "the pipeline's micro-batches per step are train.grad_accum"));
    STRATA_RETURN_IF_ERROR(s.integer("virtual_stages", &p->parallel.virtual_stages, 1, 1024));
    int comm = 0;
    const std::vector<std::string> backends = {"auto", "local", "mpi", "nccl"};
    comm = static_cast<int>(std::find(backends.begin(), backends.end(), p->parallel.comm) - backends.begin());
    STRATA_RETURN_IF_ERROR(s.choice("comm", &comm, backends));
    p->parallel.comm = backends[static_cast<std::size_t>(comm)];
    STRATA_RETURN_IF_ERROR(s.boolean("check_collectives", &p->parallel.check_collectives));
    STRATA_RETURN_IF_ERROR(s.number("comm_timeout", &p->parallel.comm_timeout, 0, 86400, true));
    STRATA_RETURN_IF_ERROR(s.boolean("hierarchical_allreduce", &p->parallel.hierarchical_allreduce));
    STRATA_RETURN_IF_ERROR(s.finish());
  }
  {
    Section s(precision, "precision");
    int dt = static_cast<int>(p->precision.dtype);
    STRATA_RETURN_IF_ERROR(s.choice("dtype", &dt, {"fp32", "bf16", "fp16"}));
    p->precision.dtype = static_cast<DType>(dt);
    int gdt = static_cast<int>(p->precision.grad_dtype);
    STRATA_RETURN_IF_ERROR(s.choice("grad_dtype", &gdt, {"fp32", "bf16", "fp16"}));
    p->precision.grad_dtype = static_cast<DType>(gdt);
    STRATA_RETURN_IF_ERROR(s.loss_scale("loss_scale", &p->precision.dynamic_loss_scale, &p->precision.loss_scale));
    STRATA_RETURN_IF_ERROR(s.integer("initial_scale_power", &p->precision.initial_scale_power, 0, 64));
    STRATA_RETURN_IF_ERROR(s.integer("scale_window", &p->precision.scale_window, 1, kIntMax));
    STRATA_RETURN_IF_ERROR(s.integer("hysteresis", &p->precision.hysteresis, 1, kIntMax));
    STRATA_RETURN_IF_ERROR(s.number("min_loss_scale", &p->precision.min_loss_scale, 0.0, 1e38, true));
    STRATA_RETURN_IF_ERROR(s.finish());
  }
  {
    Section s(optimizer, "optimizer");
    const std::vector<std::string> types = {"adam", "adamw"};
    int t = p->optimizer.type == "adam" ? 0 : 1;
    STRATA_RETURN_IF_ERROR(s.choice("type", &t, types));
    p->optimizer.type = types[static_cast<std::size_t>(t)];
    STRATA_RETURN_IF_ERROR(s.number("lr", &p->optimizer.lr, 0.0, 10.0));
    STRATA_RETURN_IF_ERROR(s.betas("betas", &p->optimizer.beta1, &p->optimizer.beta2));
    STRATA_RETURN_IF_ERROR(s.number("eps", &p->optimizer.eps, 0.0, 1.0, true));
    STRATA_RETURN_IF_ERROR(s.number("weight_decay", &p->optimizer.weight_decay, 0.0, 1.0));
    STRATA_RETURN_IF_ERROR(s.boolean("bias_correction", &p->optimizer.bias_correction));
    STRATA_RETURN_IF_ERROR(s.number("grad_clip", &p->optimizer.grad_clip, 0.0, 1e30));
    STRATA_RETURN_IF_ERROR(s.finish());
  }
  {
    Section s(activation, "activation");
    STRATA_RETURN_IF_ERROR(s.boolean("checkpointing", &p->activation.checkpointing));
    STRATA_RETURN_IF_ERROR(s.boolean("offload", &p->activation.offload));
    STRATA_RETURN_IF_ERROR(s.finish());
  }
  {
    Section s(train, "train");
    std::vector<std::string> presets = model_preset_names();
    int m = static_cast<int>(std::find(presets.begin(), presets.end(), p->train.model) - presets.begin());
    STRATA_RETURN_IF_ERROR(s.choice("model", &m, presets));
    p->train.model = presets[static_cast<std::size_t>(m)];
    if (!model_preset(p->train.model, &p->train.dims)) return internal_error("preset " + p->train.model + " vanished");
    STRATA_RETURN_IF_ERROR(s.integer("n_layer", &p->train.dims.n_layer, 1, 1024));
    STRATA_RETURN_IF_ERROR(s.integer("n_head", &p->train.dims.n_head, 1, 1024));
    STRATA_RETURN_IF_ERROR(s.integer("n_embd", &p->train.dims.n_embd, 1, 65536));
    STRATA_RETURN_IF_ERROR(s.integer("vocab", &p->train.dims.vocab, 2, 1 << 24));
    STRATA_RETURN_IF_ERROR(s.integer("seq_len", &p->train.dims.seq_len, 1, 1 << 20));
    STRATA_RETURN_IF_ERROR(s.integer("micro_batch", &p->train.micro_batch, 1, 1 << 20));
    STRATA_RETURN_IF_ERROR(s.integer("grad_accum", &p->train.grad_accum, 1, 1 << 20));
    STRATA_RETURN_IF_ERROR(s.integer("steps", &p->train.steps, 0, kIntMax));
    STRATA_RETURN_IF_ERROR(s.integer("seed", &p->train.seed, 0, std::numeric_limits<std::int64_t>::max()));
    STRATA_RETURN_IF_ERROR(s.text("data", &p->train.data));
    STRATA_RETURN_IF_ERROR(s.text("checkpoint_dir", &p->train.checkpoint_dir));
    STRATA_RETURN_IF_ERROR(s.integer("checkpoint_every", &p->train.checkpoint_every, 0, kIntMax));
    STRATA_RETURN_IF_ERROR(s.finish());
  }
  return Status::OK();
}

// Finds the node a dotted key path names or, when the key is absent, its deepest ancestor
// present in the document (the root itself does not count), for locating cross-field errors.
const Node* find_path(const Node& root, const std::string& key) {
  const Node* cur = &root;
  const Node* found = nullptr;
  std::size_t pos = 0;
  while (true) {
    std::size_t dot = key.find('.', pos);
    std::string part = key.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    const Node* next = nullptr;
    for (const auto& [k, v] : cur->members) {
      if (k == part) next = &v;
    }
    if (next == nullptr) return found;
    found = cur = next;
    if (dot == std::string::npos) return found;
    pos = dot + 1;
  }
}

Result<Profile> build(const Node& root, std::string_view origin, const ProfileEdit& edit) {
  Profile p;
  if (!model_preset(p.train.model, &p.train.dims)) return internal_error("default preset missing");
  STRATA_RETURN_IF_ERROR(read_profile(root, &p));
  if (edit) STRATA_RETURN_IF_ERROR(edit(p));
  auto errors = profile_detail::validate_fields(p);
  if (!errors.empty()) {
    const FieldError& e = errors.front();
    const Node* at = find_path(root, e.key);
    std::string where = at != nullptr ? at->where : std::string(origin);
    return invalid_argument(where + ": " + e.key + ": " + e.message);
  }
  return p;
}

}  // namespace

Result<Profile> Profile::from_toml_string(std::string_view text, std::string_view origin, const ProfileEdit& edit) {
  toml::table table;
  try {
    table = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    return invalid_argument(toml_where(origin, e.source()) + ": not valid TOML: " + std::string(e.description()));
  } catch (const std::exception& e) {
    return invalid_argument(std::string(origin) + ": not valid TOML: " + e.what());
  }
  STRATA_ASSIGN_OR_RETURN(Node root, from_toml_node(table, origin, 0));
  return build(root, origin, edit);
}

Result<Profile> Profile::from_json_string(std::string_view text, std::string_view origin, const ProfileEdit& edit) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    return invalid_argument(std::string(origin) + ": not valid JSON at byte " + std::to_string(e.byte) + ": " + e.what());
  } catch (const std::exception& e) {
    return invalid_argument(std::string(origin) + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) return invalid_argument(std::string(origin) + ": expected a JSON object at the top level");
  STRATA_ASSIGN_OR_RETURN(Node root, from_json_node(j, origin, "", 0));
  return build(root, origin, edit);
}

Result<Profile> Profile::load(const std::string& path, const ProfileEdit& edit) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return invalid_argument("profile '" + path + "' is a directory; give the path of a .toml or .json file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return STRATA_ERRNO(errno, "open profile", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return STRATA_ERRNO(errno, "read profile", path);
  std::string text = ss.str();
  auto ends_with = [&](std::string_view suf) {
    return path.size() >= suf.size() && path.compare(path.size() - suf.size(), suf.size(), suf) == 0;
  };
  if (ends_with(".toml")) return from_toml_string(text, path, edit);
  if (ends_with(".json")) return from_json_string(text, path, edit);
  return invalid_argument("profile '" + path + "': unknown format; name the file *.toml or *.json");
}

}  // namespace strata
