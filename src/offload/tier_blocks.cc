// The tier manager's registry (src/offload/tier_manager.h): registering blocks (their spec,
// home reservation and home memory), the slot table of ids, dropping blocks and freeing them
// once their transfers are done.
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nvme/swap_store.h"
#include "offload/tier_manager.h"
#include "offload/tier_manager_internal.h"
#include "strata/log.h"

namespace strata::offload {

// ---------------------------------------------------------------------------------------------
// Registration

Result<BlockId> TierManager::register_block(const BlockSpec& spec) {
  const std::uint64_t charge_bytes = round_up(spec.bytes, kBlockAlignment);
  STRATA_RETURN_IF_ERROR(check_spec(spec, charge_bytes));
  {
    std::unique_lock lk(mu_);
    STRATA_RETURN_IF_ERROR(reserve_home(lk, spec, charge_bytes));
    stats_.tiers[tu(spec.home)].home_bytes += charge_bytes;
  }

  auto b = std::make_unique<Block>();
  b->name = spec.name;
  b->bytes = spec.bytes;
  b->charge = charge_bytes;
  b->home = spec.home;
  b->fastest = spec.fastest;
  b->host_copies = spec.host_copies || spec.home == Tier::kHost;
  const Status st = spec.home == Tier::kNvme ? allocate_slots(*b) : allocate_home_copy(*b);
  if (!st.ok()) {
    std::lock_guard g(mu_);
    uncharge(spec.home, charge_bytes);
    stats_.tiers[tu(spec.home)].home_bytes -= charge_bytes;
    process_pending();
    return st.with_context("register block '" + spec.name + "'");
  }

  std::lock_guard lk(mu_);
  return insert_block(std::move(b));
}

Status TierManager::check_spec(const BlockSpec& spec, std::uint64_t charge_bytes) const {
  if (spec.name.empty()) return invalid_argument("register block: the name is empty (names appear in errors and statistics)");
  if (spec.bytes == 0) return invalid_argument("register block '" + spec.name + "': the size is 0");
  if (spec.fastest == Tier::kNvme) {
    return invalid_argument("register block '" + spec.name + "': fastest tier nvme; blocks are used from device or host memory");
  }
  if (ti(spec.fastest) > ti(spec.home)) {
    return invalid_argument("register block '" + spec.name + "': fastest tier " + std::string(tier_name(spec.fastest)) +
                            " is slower than its home " + std::string(tier_name(spec.home)));
  }
  if (spec.home == Tier::kNvme && swap_ == nullptr) {
    return failed_precondition("register block '" + spec.name +
                               "' homed on nvme: this tier manager has no swap store (set nvme_path in the profile)");
  }
  for (int t = ti(spec.fastest); t <= ti(spec.home); ++t) {
    const Tier tier = static_cast<Tier>(t);
    if (tier == Tier::kHost && !spec.host_copies && spec.home != Tier::kHost) continue;
    if (charge_bytes > budget(tier)) {
      return invalid_argument("register block '" + spec.name + "' (" + human(spec.bytes) + "): larger than the " +
                              std::string(tier_name(tier)) + " budget " + human(budget(tier)) + " (" +
                              budget_key(tier) + "); a block must fit in every tier it is used in: split it or raise the budget");
    }
  }
  return Status::OK();
}

Status TierManager::reserve_home(std::unique_lock<std::mutex>& lk, const BlockSpec& spec, std::uint64_t charge_bytes) {
  if (spec.home == Tier::kNvme) {
    TierUsage& u = stats_.tiers[ti(Tier::kNvme)];
    if (u.used + charge_bytes > budget(Tier::kNvme)) {
      return out_of_space("register block '" + spec.name + "' (" + human(spec.bytes) + ") on nvme: " + human(u.used) +
                          " of the " + human(budget(Tier::kNvme)) + " NVMe budget are taken by other blocks; " +
                          "raise the swap capacity or drop blocks");
    }
    charge(Tier::kNvme, charge_bytes);
    return Status::OK();
  }
  // Home memory is permanent: room comes from evicting cached copies, never from pins.
  for (;;) {
    Block probe;
    probe.name = spec.name;
    probe.charge = charge_bytes;
    if (unevictable_bytes(spec.home, nullptr) + charge_bytes > budget(spec.home)) {
      return budget_error(spec.home, probe, "as its home");
    }
    Reserve r = try_reserve(spec.home, charge_bytes, kNoUse, false);
    if (r.reserved) return Status::OK();
    if (!r.progress) return budget_error(spec.home, probe, "as its home (nothing can be evicted)");
    ready_cv_.wait(lk);
  }
}

Status TierManager::allocate_slots(Block& b) {
  const std::uint64_t cs = options_.staging_buffer_size;
  for (std::uint64_t off = 0; off < b.bytes; off += cs) {
    auto slot = swap_->allocate(std::min(cs, b.bytes - off));
    if (!slot.ok()) {
      for (const nvme::SwapSlot& s : b.slots) swap_->release(s).ignore();
      return slot.status();
    }
    b.slots.push_back(*slot);
  }
  return Status::OK();
}

Status TierManager::allocate_home_copy(Block& b) {
  // Allocations run on the dispatcher so that they follow the frees decided before them.
  Copy& h = b.copy(b.home);
  if (b.home == Tier::kDevice) {
    auto mem = allocate_device(b.charge);
    if (!mem.ok()) return mem.status();
    h.device_mem = std::move(mem).value();
    Status st = device_.fill(h.device_mem.view(DType::kF32), 0.0f, *aux_);
    if (st.ok()) st = aux_->synchronize();
    if (!st.ok()) {
      auto holder = std::make_shared<DeviceBuffer>(std::move(h.device_mem));
      {
        std::lock_guard g(mu_);
        post([holder] { holder->reset(); });
      }
      return st;
    }
  } else {
    auto mem = allocate_host(b.charge);
    if (!mem.ok()) return mem.status();
    h.host_mem = std::move(mem).value();
    std::memset(h.host_mem.data(), 0, h.host_mem.size());
  }
  Totals::init_home(h);  // the block is not registered yet: nothing counts it
  h.version = 0;
  return Status::OK();
}

BlockId TierManager::insert_block(std::unique_ptr<Block> b) {
  std::uint32_t index;
  if (!free_slots_.empty()) {
    index = free_slots_.back();
    free_slots_.pop_back();
  } else {
    index = static_cast<std::uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  if (++next_generation_ == 0) ++next_generation_;
  const std::uint64_t gen = next_generation_;
  b->id = BlockId{(gen << 32) | (static_cast<std::uint64_t>(index) + 1)};
  Block* raw = b.get();
  slots_[index] = std::move(b);
  raw->live_index = live_.size();
  live_.push_back(raw);
  ++stats_.blocks;
  return raw->id;
}

void TierManager::remove_live(Block& b) {
  Block* last = live_.back();
  live_[b.live_index] = last;
  last->live_index = b.live_index;
  live_.pop_back();
  b.live_index = detail::kNotListed;
}

Status TierManager::drop(BlockId id) {
  std::lock_guard lk(mu_);
  Block* b = lookup(id);
  if (b == nullptr) return not_found("drop: block id " + std::to_string(id.value) + " is not registered (dropped already?)");
  if (b->read_pins + b->write_pins > 0) {
    return failed_precondition("drop block '" + b->name + "': it has " + std::to_string(b->read_pins + b->write_pins) +
                               " pin(s); release them first");
  }
  for (Tier t : {Tier::kDevice, Tier::kHost}) {
    if (b->copy(t).state() == CopyState::kQueued) totals_->set_state(*b, t, CopyState::kAbsent);
  }
  totals_->forget(*b);
  remove_live(*b);
  const std::uint64_t index = (id.value & 0xffffffffULL) - 1;
  zombies_.push_back(std::move(slots_[index]));
  free_slots_.push_back(static_cast<std::uint32_t>(index));
  --stats_.blocks;
  destroy_if_dead(*b);
  process_pending();
  return Status::OK();
}

void TierManager::destroy_if_dead(Block& b) {
  if (!b.dropped() || b.transfers > 0) return;
  for (Tier t : {Tier::kDevice, Tier::kHost}) {
    Copy& c = b.copy(t);
    if (c.home()) {
      post_free(t, b.charge, std::move(c.device_mem), std::move(c.host_mem));
    } else if (c.charged || c.device_mem || c.host_mem) {
      free_copy(b, t);
    }
  }
  if (b.home != Tier::kNvme) stats_.tiers[tu(b.home)].home_bytes -= b.charge;
  if (b.home == Tier::kNvme) {
    uncharge(Tier::kNvme, b.charge);
    stats_.tiers[ti(Tier::kNvme)].home_bytes -= b.charge;
    std::vector<nvme::SwapSlot> slots = std::move(b.slots);
    nvme::SwapStore* swap = swap_;
    post([swap, slots] {
      for (const nvme::SwapSlot& s : slots) {
        Status st = swap->release(s);
        if (!st.ok()) {
          STRATA_LOG(kWarn) << "tier manager: releasing a swap slot failed: " << st;
        }
      }
    });
  }
  auto it = std::find_if(zombies_.begin(), zombies_.end(), [&](const auto& z) { return z.get() == &b; });
  if (it != zombies_.end()) zombies_.erase(it);
}

}  // namespace strata::offload
