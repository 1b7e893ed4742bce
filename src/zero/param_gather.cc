#include "zero/param_gather.h"

namespace strata::zero {

Status ParamGather::gather(std::size_t b, Stream& stream) {
  if (!pending_[b]) return Status::OK();
  pending_[b] = false;
  const std::uint64_t vs = dtype_size(dtype_);
  const FlatRange all = layout_->bucket(b);
  const FlatRange mine = layout_->slice(b, static_cast<std::uint64_t>(dp_->rank()));
  const CommType type = comm_type_of(dtype_);
  STRATA_ASSIGN_OR_RETURN(DeviceRange whole, values_->range(all.first * vs, all.count * vs));
  STRATA_ASSIGN_OR_RETURN(DeviceRange part, values_->range(mine.first * vs, mine.count * vs));
  return dp_->all_gather({part, type, mine.count}, {whole, type, all.count}, stream);
}

Status ParamGather::gather_all(Stream& stream) {
  for (std::size_t b = 0; b < pending_.size(); ++b) STRATA_RETURN_IF_ERROR(gather(b, stream));
  return Status::OK();
}

}  // namespace strata::zero
