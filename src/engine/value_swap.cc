#include "engine/value_swap.h"

#include <algorithm>

#include "strata/log.h"
#include "strata/units.h"

namespace strata::engine {
namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kSlotBytes = 4ULL << 20;  // swap slot: the I/O unit of a block

std::uint64_t round_up(std::uint64_t x, std::uint64_t q) { return (x + q - 1) / q * q; }

}  // namespace

Result<std::unique_ptr<ValueSwap>> ValueSwap::create(const Profile& profile, Device& device, DType dtype,
                                                     std::vector<Range> chunks, std::vector<Range> pieces) {
  const ParamOffloadConfig& pc = profile.offload_param;
  if (chunks.empty()) return invalid_argument("parameter swap: no values to home");
  std::unique_ptr<ValueSwap> s(new ValueSwap());
  s->dtype_ = dtype;
  s->chunk_elems_ = chunks.front().n;
  for (const Range& c : chunks) s->block_bytes_ = std::max(s->block_bytes_, round_up(c.n * dtype_size(dtype), kPage));
  s->chunks_ = std::move(chunks);
  s->pieces_ = std::move(pieces);
  s->buffer_bytes_ = pc.buffer_size;
  s->max_in_cpu_ = pc.max_in_cpu;
  s->pool_bytes_ = static_cast<std::uint64_t>(std::max(pc.buffer_count, 0)) * pc.buffer_size;
  if (pc.buffer_count < 2) {
    return invalid_argument("offload.param.buffer_count = " + std::to_string(pc.buffer_count) +
                            ": parameters on NVMe need at least 2 pinned buffers (one the optimizer writes, one "
                            "on its way to the device)");
  }
  if (s->block_bytes_ > pc.buffer_size) {
    return invalid_argument("offload.param.buffer_size = " + format_bytes(pc.buffer_size) +
                            " is smaller than one block of parameter values (" + format_bytes(s->block_bytes_) +
                            ": the values of one offload.optimizer.buffer_size chunk of optimizer state): raise "
                            "offload.param.buffer_size to at least that, or lower offload.optimizer.buffer_size");
  }
  STRATA_RETURN_IF_ERROR(s->open(profile, device));
  return s;
}

Status ValueSwap::open(const Profile& profile, Device& device) {
  const ParamOffloadConfig& pc = profile.offload_param;
  if (pc.nvme_path.empty()) {
    return invalid_argument("offload.param.nvme_path: device = \"nvme\" needs at least one swap directory");
  }
  std::uint64_t values = 0;
  for (const Range& c : chunks_) values += round_up(c.n * dtype_size(dtype_), kPage);
  STRATA_ASSIGN_OR_RETURN(engine_, nvme::make_io_engine(profile.nvme));
  nvme::SwapStoreOptions so;
  so.paths = pc.nvme_path;
  // Extents are padded to the direct-I/O alignment on every path a block stripes over.
  so.capacity = values + chunks_.size() * pc.nvme_path.size() * 2 * kPage;
  auto store = nvme::SwapStore::create(so, *engine_);
  if (!store.ok()) return store.status().with_context("parameter swap (" + format_bytes_human(values) + " of values)");
  store_ = std::move(*store);

  offload::TierOptions to;
  to.device_budget = 0;  // the fetch copies host -> device into its own gather buffers
  to.staging_buffers = 1;  // unused (no NVMe <-> device route); sets the swap slot size
  to.staging_buffer_size = std::min(block_bytes_, kSlotBytes);
  to.host_budget = pool_bytes_ + to.staging_buffer_size;
  to.tracing = false;  // the fetch reads ahead along its own recorded order
  to.prefetch_bytes = 0;
  STRATA_ASSIGN_OR_RETURN(tiers_, offload::TierManager::create(device, store_.get(), to));
  for (std::size_t k = 0; k < chunks_.size(); ++k) {
    offload::BlockSpec spec;
    spec.name = "param.values." + std::to_string(k);
    spec.bytes = round_up(chunks_[k].n * dtype_size(dtype_), kPage);
    spec.home = Tier::kNvme;
    spec.fastest = Tier::kHost;
    auto id = tiers_->register_block(spec);
    if (!id.ok()) return id.status().with_context("parameter swap: block " + std::to_string(k));
    blocks_.push_back(*id);
  }
  STRATA_LOG(kInfo) << "parameter swap: " << format_bytes_human(values) << " of " << dtype_name(dtype_)
                    << " values in " << blocks_.size() << " blocks on NVMe, " << format_bytes_human(pool_bytes_)
                    << " of pinned buffers, up to " << format_bytes_human(read_ahead()) << " read ahead";
  return Status::OK();
}

ValueSwap::~ValueSwap() {
  tiers_.reset();  // before the swap store and the engine it reads from
  if (store_) store_->close().ignore();
}

Result<offload::Pin> ValueSwap::pin_for_write(std::size_t k, bool whole) {
  return tiers_->acquire(blocks_.at(k), Tier::kHost, whole ? Access::kOverwrite : Access::kWrite);
}

std::vector<zero::HostSegment> ValueSwap::segments(std::size_t piece, std::uint64_t at) const {
  std::vector<zero::HostSegment> out;
  if (piece >= pieces_.size()) return out;
  const std::uint64_t first = pieces_[piece].first, n = pieces_[piece].n;
  const std::uint64_t vs = dtype_size(dtype_);
  for (std::uint64_t done = 0; done < n;) {
    const auto k = static_cast<std::size_t>((first + done) / chunk_elems_);
    const std::uint64_t off = first + done - chunks_[k].first;
    const std::uint64_t len = std::min(n - done, chunks_[k].n - off);
    zero::HostSegment s;
    s.at = at + done;
    s.tiers = tiers_.get();
    s.block = blocks_[k];
    s.offset = off * vs;
    s.size = len * vs;
    s.pinned = round_up(chunks_[k].n * vs, kPage);
    out.push_back(s);
    done += len;
  }
  return out;
}

std::uint64_t ValueSwap::fetch_pin_limit() const { return pool_bytes_ - block_bytes_; }

Status ValueSwap::check_window(std::uint64_t elements, const std::string& what) const {
  // Values spread over blocks: each block they touch is pinned whole, one more at each end.
  const std::uint64_t blocks = (elements * dtype_size(dtype_) + block_bytes_ - 1) / block_bytes_ + 2;
  const std::uint64_t need = (blocks + 1) * block_bytes_;
  auto buffers_for = [&](std::uint64_t bytes) { return std::to_string((bytes + buffer_bytes_ - 1) / buffer_bytes_); };
  if (need > pool_bytes_) {
    return out_of_memory("parameter swap: " + what + " (" + std::to_string(elements) + " values) span up to " +
                         std::to_string(blocks) + " blocks of " + format_bytes(block_bytes_) +
                         ", which with the block the optimizer writes need " + format_bytes(need) +
                         " of pinned buffers, but offload.param.buffer_count x buffer_size = " +
                         format_bytes(pool_bytes_) + ": raise offload.param.buffer_count to at least " +
                         buffers_for(need) + ", or lower zero.prefetch_bucket_size");
  }
  // The blocks read ahead wait beside those the window's copies still hold: where the pool
  // cannot hold both, the read-ahead is given up under load and the fetch waits for NVMe.
  if (need + max_in_cpu_ > pool_bytes_) {
    STRATA_LOG(kWarn) << "parameter swap: " << what << " and the block the optimizer writes hold up to "
                      << format_bytes_human(need) << " of the " << format_bytes_human(pool_bytes_)
                      << " of pinned buffers, which leaves "
                      << format_bytes_human(pool_bytes_ - need) << " of the " << format_bytes_human(max_in_cpu_)
                      << " of offload.param.max_in_cpu to read ahead; the fetch may wait for NVMe reads: raise "
                      << "offload.param.buffer_count to " << buffers_for(need + max_in_cpu_)
                      << " or lower max_in_cpu";
  }
  return Status::OK();
}

}  // namespace strata::engine
