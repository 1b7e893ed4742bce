// src/model/param_users.h — how many modules of a model use each parameter (the module that
// owns it, plus every module that ties it: wte is used by "embeddings" and by the tied
// "lm_head"), and a per-pass countdown of them. A parameter's gradient is final once every
// module using it has run backward in the step's last micro-step; whoever moves or reduces
// gradients while backward goes on (the offloaded optimizer today, ZeRO's gradient buckets
// next) asks this, instead of counting the tree again.
//
// Thread-safety: one thread at a time (the thread that runs the model's backward).
#pragma once

#include <unordered_map>

#include "strata/model.h"

namespace strata::model {

class ParamUsers {
 public:
  ParamUsers() = default;  // counts nothing
  // Counts, over `root`'s whole tree, the modules owning or tying each parameter; then reset().
  explicit ParamUsers(const Module& root);

  // The modules using `p`; 0 for a parameter `root`'s tree never mentions.
  int users(const Parameter& p) const;

  // Starts a pass: every parameter waits for all its users again.
  void reset();
  // One module using `p` has finished its backward. True when it was the last one, so `p`'s
  // gradient is now final; false before that, after it, and for a parameter not counted.
  bool finish_use(const Parameter& p);

 private:
  struct Count {
    int users = 0;
    int left = 0;
  };
  void count(const Module& m);

  std::unordered_map<const Parameter*, Count> counts_;
};

}  // namespace strata::model
