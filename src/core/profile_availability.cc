// Which profile keys this build can honour. Every key of `strata profile defaults` is either
// read by the layer it configures or listed here; a listed key keeps its documented default
// and a run refuses any other value of it, naming the key, instead of ignoring it. An entry
// leaves this table in the change that makes its key do what the defaults document says.
#include <string>
#include <vector>

#include "strata/profile.h"

namespace strata {

namespace {

struct PendingKey {
  const char* key;
  const char* default_text;              // as `strata profile defaults` spells it
  const char* why;                       // what is missing, and where it will come from
  bool (*is_default)(const Profile& p);  // true when the key holds its default
};

#define STRATA_PENDING_KEY(key, member, default_text, why) \
  PendingKey { key, default_text, why, [](const Profile& p) { return p.member == Profile{}.member; } }

const std::vector<PendingKey>& pending_keys() {
  static const std::vector<PendingKey> keys = {
      STRATA_PENDING_KEY("offload.optimizer.pin_memory", offload_optimizer.pin_memory, "true",
                         "every host buffer is page-locked; unpinned staging buffers are not implemented"),
      STRATA_PENDING_KEY("parallel.hierarchical_allreduce", parallel.hierarchical_allreduce, "false",
                         "gradients are reduced once data-parallel training lands"),
      STRATA_PENDING_KEY("activation.offload", activation.offload, "false",
                         "checkpointed activations stay in device memory"),
  };
  return keys;
}

#undef STRATA_PENDING_KEY

}  // namespace

std::vector<std::string> unavailable_profile_keys() {
  std::vector<std::string> out;
  for (const PendingKey& k : pending_keys()) out.emplace_back(k.key);
  return out;
}

Status Profile::check_available() const {
  std::string refused;
  for (const PendingKey& k : pending_keys()) {
    if (k.is_default(*this)) continue;
    refused += std::string(refused.empty() ? "" : "; ") + k.key + " is not available yet (" + k.why +
               "): remove it or set it to its default " + k.default_text;
  }
  if (refused.empty()) return Status::OK();
  return unavailable(refused);
}

}  // namespace strata
