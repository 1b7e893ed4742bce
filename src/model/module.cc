// Parameters, Modules, hooks and the counter-based initialisation of strata/model.h.
#include "model/init_rng.h"
#include "strata/model.h"

namespace strata {

// ---------------------------------------------------------------------------------------------
// Parameter

// ---------------------------------------------------------------------------------------------
// Tensor shards

std::vector<std::int64_t> TensorShard::local_shape() const {
  std::vector<std::int64_t> s = global_shape;
  if (split()) s[static_cast<std::size_t>(dim)] /= size;
  return s;
}

std::uint64_t TensorShard::whole_numel() const {
  std::uint64_t n = 1;
  for (std::size_t i = 0; i < global_shape.size(); ++i) {
    n *= static_cast<std::uint64_t>(i == 0 && rows > 0 ? rows : global_shape[i]);
  }
  return n;
}

Status TensorShard::validate(std::string_view name) const {
  auto bad = [&](const std::string& m) { return invalid_argument("tensor shard of " + std::string(name) + ": " + m); };
  if (size < 1 || rank < 0 || rank >= size) {
    return bad("rank " + std::to_string(rank) + " of " + std::to_string(size) + " is not a rank of the group");
  }
  if (rows > 0 && (dim != 0 || rows > global_shape.front())) {
    return bad("only a tensor split along dimension 0 is padded, and to no more than its extent");
  }
  if (!split()) return Status::OK();
  if (dim >= static_cast<int>(global_shape.size())) {
    return bad("dimension " + std::to_string(dim) + " of a " + std::to_string(global_shape.size()) + "-d tensor");
  }
  const std::int64_t extent = global_shape[static_cast<std::size_t>(dim)];
  if (parts < 1 || extent % (static_cast<std::int64_t>(parts) * size) != 0) {
    return bad("extent " + std::to_string(extent) + " of dimension " + std::to_string(dim) + " does not divide into " +
               std::to_string(parts) + " x " + std::to_string(size) + " equal pieces");
  }
  return Status::OK();
}

std::uint64_t TensorShard::global_index(std::uint64_t local) const {
  if (!split() || size == 1) return local;
  const auto d = static_cast<std::size_t>(dim);
  std::uint64_t inner = 1;
  for (std::size_t i = d + 1; i < global_shape.size(); ++i) inner *= static_cast<std::uint64_t>(global_shape[i]);
  const auto whole = static_cast<std::uint64_t>(global_shape[d]);
  const std::uint64_t mine = whole / static_cast<std::uint64_t>(size);
  const std::uint64_t piece = mine / static_cast<std::uint64_t>(parts);  // of a part, this rank's
  const std::uint64_t outer = local / (mine * inner), rest = local % (mine * inner);
  const std::uint64_t at = rest / inner, in = rest % inner;
  const std::uint64_t part = at / piece, within = at % piece;
  const std::uint64_t global_at = part * (whole / static_cast<std::uint64_t>(parts)) +
                                  static_cast<std::uint64_t>(rank) * piece + within;
  return (outer * whole + global_at) * inner + in;
}

// ---------------------------------------------------------------------------------------------
// Parameter

Parameter::Parameter(std::string name, std::vector<std::int64_t> shape, ParamInit init, float init_std)
    : Parameter(std::move(name), TensorShard{std::move(shape)}, init, init_std) {}

Parameter::Parameter(std::string name, TensorShard shard, ParamInit init, float init_std)
    : name_(std::move(name)),
      shape_(shard.local_shape()),
      shard_(std::move(shard)),
      numel_(1),
      init_(init),
      init_std_(init_std) {
  for (std::int64_t d : shape_) numel_ *= static_cast<std::size_t>(d);
}

std::string Parameter::shape_string() const {
  std::string s = "(";
  for (std::size_t i = 0; i < shape_.size(); ++i) s += (i ? ", " : "") + std::to_string(shape_[i]);
  return s + ")";
}

Status Parameter::bind(DeviceView value, DeviceView grad) {
  if (value.count() != numel_) {
    return invalid_argument("parameter " + name_ + " " + shape_string() + ": value view has " +
                            std::to_string(value.count()) + " elements; expected " + std::to_string(numel_));
  }
  if (!grad.empty() && grad.count() != numel_) {
    return invalid_argument("parameter " + name_ + " " + shape_string() + ": gradient view has " +
                            std::to_string(grad.count()) + " elements; expected " + std::to_string(numel_));
  }
  if (value.dtype() != dtype_ || (!grad.empty() && grad.dtype() != grad_dtype_)) {
    return invalid_argument("parameter " + name_ + ": views are " + std::string(dtype_name(value.dtype())) + " (value) and " +
                            std::string(dtype_name(grad.dtype())) + " (gradient); expected " +
                            std::string(dtype_name(dtype_)) + " and " + std::string(dtype_name(grad_dtype_)));
  }
  value_ = value;
  grad_ = grad;
  return Status::OK();
}

Status Parameter::bind_grad(DeviceView grad) {
  if (!bound()) return failed_precondition("parameter " + name_ + ": bind a value before a gradient");
  return bind(value_, grad);
}

void Parameter::unbind() {
  value_ = DeviceView();
  grad_ = DeviceView();
}

// ---------------------------------------------------------------------------------------------
// Counter-based initialisation

float init_normal(std::uint64_t seed, std::string_view name, std::uint64_t index) {
  return rng::normal_at(rng::stream_key(seed, name), index);
}

void init_parameter_values(const Parameter& p, std::uint64_t seed, std::uint64_t first, std::span<float> out) {
  switch (p.init()) {
    case ParamInit::kOnes:
      for (float& v : out) v = 1.0f;
      return;
    case ParamInit::kZeros:
      for (float& v : out) v = 0.0f;
      return;
    case ParamInit::kNormal: {
      const std::uint64_t key = rng::stream_key(seed, p.name());
      const double sd = p.init_std();
      const auto n = static_cast<std::int64_t>(out.size());
#pragma omp parallel for schedule(static) if (n > 65536)
      for (std::int64_t i = 0; i < n; ++i) {
        const std::uint64_t at = p.shard().global_index(first + static_cast<std::uint64_t>(i));
        out[static_cast<std::size_t>(i)] = static_cast<float>(static_cast<double>(rng::normal_at(key, at)) * sd);
      }
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Hooks and modules

Status ModuleHooks::before_forward(Module&, bool) { return Status::OK(); }
Status ModuleHooks::after_forward(Module&, bool) { return Status::OK(); }
Status ModuleHooks::before_backward(Module&) { return Status::OK(); }
Status ModuleHooks::after_backward(Module&) { return Status::OK(); }

Module::Module(std::string name) : name_(std::move(name)) {}
Module::~Module() = default;

Parameter& Module::add_parameter(std::string full_name, std::vector<std::int64_t> shape, ParamInit init,
                                 float init_std) {
  return add_parameter(std::move(full_name), TensorShard{std::move(shape)}, init, init_std);
}

Parameter& Module::add_parameter(std::string full_name, TensorShard shard, ParamInit init, float init_std) {
  storage_.push_back(std::make_unique<Parameter>(std::move(full_name), std::move(shard), init, init_std));
  own_.push_back(storage_.back().get());
  return *storage_.back();
}

void Module::add_child(Module& child) {
  children_.push_back(&child);
  if (hooks_ != nullptr) child.set_hooks(hooks_);
}

std::vector<Parameter*> Module::parameters() const {
  std::vector<Parameter*> all(own_.begin(), own_.end());
  for (const Module* c : children_) {
    std::vector<Parameter*> sub = c->parameters();
    all.insert(all.end(), sub.begin(), sub.end());
  }
  return all;
}

Parameter* Module::find_parameter(std::string_view name) const {
  for (Parameter* p : own_) {
    if (p->name() == name) return p;
  }
  for (const Module* c : children_) {
    if (Parameter* p = c->find_parameter(name)) return p;
  }
  return nullptr;
}

void Module::set_hooks(ModuleHooks* hooks) {
  hooks_ = hooks;
  for (Module* c : children_) c->set_hooks(hooks);
}

}  // namespace strata
