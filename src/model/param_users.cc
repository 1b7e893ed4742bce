// The parameter use counts of model/param_users.h.
#include "model/param_users.h"

namespace strata::model {

ParamUsers::ParamUsers(const Module& root) {
  count(root);
  reset();
}

void ParamUsers::count(const Module& m) {
  for (const Parameter* p : m.own_parameters()) ++counts_[p].users;
  for (const Parameter* p : m.tied_parameters()) ++counts_[p].users;
  for (const Module* c : m.children()) count(*c);
}

int ParamUsers::users(const Parameter& p) const {
  auto it = counts_.find(&p);
  return it == counts_.end() ? 0 : it->second.users;
}

void ParamUsers::reset() {
  for (auto& entry : counts_) entry.second.left = entry.second.users;
}

bool ParamUsers::finish_use(const Parameter& p) {
  auto it = counts_.find(&p);
  if (it == counts_.end()) return false;
  Count& c = it->second;
  return c.left > 0 && --c.left == 0;
}

}  // namespace strata::model
