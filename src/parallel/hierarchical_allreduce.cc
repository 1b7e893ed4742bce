#include "parallel/hierarchical_allreduce.h"

#include "parallel/comm_internal.h"

namespace strata::parallel {

Result<std::unique_ptr<HierarchicalAllReduce>> HierarchicalAllReduce::create(Communicator& world) {
  std::unique_ptr<HierarchicalAllReduce> h(new HierarchicalAllReduce());
  h->world_ = &world;
  STRATA_ASSIGN_OR_RETURN(h->node_, world.split(world.node(), world.rank()));
  STRATA_ASSIGN_OR_RETURN(h->cross_, world.split(h->node_->rank(), world.node()));
  return h;
}

namespace {

CommBuffer part(const CommBuffer& b, std::size_t first, std::size_t count) {
  const std::size_t esize = comm_type_size(b.type);
  return {*b.range.subrange(first * esize, count * esize), b.type, count};
}

}  // namespace

Status HierarchicalAllReduce::all_reduce(const CommBuffer& send, const CommBuffer& recv, ReduceOp op, Stream& stream) {
  STRATA_RETURN_IF_ERROR(comm::check_collective(CommKind::kAllReduce, send, recv, world_->size(), world_->rank()));
  const auto per_node = static_cast<std::size_t>(node_->size());
  const std::size_t prefix = recv.count - recv.count % per_node;
  const std::size_t shard_count = prefix / per_node;
  if (shard_count == 0) return world_->all_reduce(send, recv, op, stream);
  Device& device = stream.device();
  if (send.range.address() != recv.range.address()) {
    STRATA_RETURN_IF_ERROR(device.copy_on_device(*recv.range.subrange(0, recv.bytes()), *send.range.subrange(0, send.bytes()), stream));
  }
  STRATA_ASSIGN_OR_RETURN(DeviceBuffer scratch, device.allocate(shard_count * comm_type_size(recv.type)));
  const CommBuffer shard{scratch.range(), recv.type, shard_count};
  auto held = std::make_shared<DeviceBuffer>(std::move(scratch));
  const CommBuffer body = part(recv, 0, prefix);
  Status st = node_->reduce_scatter(body, shard, op, stream);
  if (st.ok()) st = cross_->all_reduce(shard, shard, op, stream);
  if (st.ok()) st = node_->all_gather(shard, body, stream);
  if (st.ok() && prefix < recv.count) {
    const CommBuffer tail = part(recv, prefix, recv.count - prefix);
    st = world_->all_reduce(tail, tail, op, stream);
  }
  // The scratch shard is freed once the stream has passed the operations that use it.
  Status released = stream.launch_host_func([held]() mutable { held->reset(); });
  return st.ok() ? released : st;
}

}  // namespace strata::parallel
