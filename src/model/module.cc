// Parameters, Modules, hooks and the counter-based initialisation of strata/model.h.
#include "model/init_rng.h"
#include "strata/model.h"

namespace strata {

// ---------------------------------------------------------------------------------------------
// Parameter

Parameter::Parameter(std::string name, std::vector<std::int64_t> shape, ParamInit init, float init_std)
    : name_(std::move(name)), shape_(std::move(shape)), numel_(1), init_(init), init_std_(init_std) {
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
        out[static_cast<std::size_t>(i)] =
            static_cast<float>(static_cast<double>(rng::normal_at(key, first + static_cast<std::uint64_t>(i))) * sd);
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
  storage_.push_back(std::make_unique<Parameter>(std::move(full_name), std::move(shape), init, init_std));
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
