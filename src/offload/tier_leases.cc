// The tier manager's leases (src/offload/tier_manager.h): pinned host memory and device scratch
// memory that are not blocks, charged to their tier's budget beside the blocks.
#include <algorithm>
#include <string>
#include <utility>

#include "offload/tier_manager.h"
#include "offload/tier_manager_internal.h"

namespace strata::offload {

namespace {

std::uint64_t lease_charge(std::uint64_t bytes) { return round_up(std::max<std::uint64_t>(bytes, 1), kBlockAlignment); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Host leases

Result<HostLease> TierManager::lease_host(std::string_view what, std::uint64_t bytes) {
  const std::uint64_t rounded = lease_charge(bytes);
  {
    std::lock_guard lk(mu_);
    const std::uint64_t used = stats_.tiers[tu(Tier::kHost)].used;
    if (used + rounded > budget(Tier::kHost)) {
      return out_of_memory("tier manager: " + std::string(what) + " needs " + human(rounded) + " of pinned host memory but " +
                           human(used) + " of the " + human(budget(Tier::kHost)) +
                           " host budget (memory.host_budget) are taken; raise the budget");
    }
    charge(Tier::kHost, rounded);
    leased_host_ += rounded;
  }
  auto buffer = device_.allocate_pinned(bytes);
  if (!buffer.ok()) {
    end_host_lease(rounded);
    return buffer.status().with_context("tier manager: " + std::string(what));
  }
  HostLease lease;
  lease.manager_ = this;
  lease.charge_ = rounded;
  lease.buffer_ = std::move(*buffer);
  return lease;
}

void TierManager::end_host_lease(std::uint64_t charge_bytes) {
  std::lock_guard lk(mu_);
  uncharge(Tier::kHost, charge_bytes);
  leased_host_ -= charge_bytes;
  process_pending();  // the room may let a queued copy in
  ready_cv_.notify_all();
}

HostLease& HostLease::operator=(HostLease&& other) noexcept {
  if (this == &other) return *this;
  release();
  manager_ = std::exchange(other.manager_, nullptr);
  charge_ = std::exchange(other.charge_, 0);
  buffer_ = std::move(other.buffer_);
  return *this;
}

void HostLease::release() {
  if (manager_ == nullptr) return;
  buffer_ = PinnedBuffer();
  manager_->end_host_lease(charge_);
  manager_ = nullptr;
  charge_ = 0;
}

// ---------------------------------------------------------------------------------------------
// Device leases

Result<DeviceLease> TierManager::lease_device(std::string_view what, std::uint64_t bytes) {
  if (bytes == 0) return invalid_argument("tier manager: a device lease of 0 bytes for " + std::string(what));
  const std::uint64_t rounded = lease_charge(bytes);
  {
    std::unique_lock lk(mu_);
    STRATA_RETURN_IF_ERROR(reserve_device_lease(lk, what, rounded));
    leased_device_ += rounded;
  }
  auto buffer = allocate_device(bytes);
  if (!buffer.ok()) {
    end_device_lease(rounded, DeviceBuffer());
    return buffer.status().with_context("tier manager: device lease for " + std::string(what));
  }
  DeviceLease lease;
  lease.manager_ = this;
  lease.charge_ = rounded;
  lease.buffer_ = std::move(*buffer);
  return lease;
}

Status TierManager::reserve_device_lease(std::unique_lock<std::mutex>& lk, std::string_view what, std::uint64_t charge_bytes) {
  // Room comes from evicting cached copies, as for a pin; pins, homes and leases stay.
  const Tier t = Tier::kDevice;
  auto refuse = [&](std::string_view why) {
    const std::uint64_t fixed = unevictable_bytes(t, nullptr);
    return out_of_memory("tier manager: " + std::string(what) + " needs " + human(charge_bytes) +
                         " of device memory but the device budget " + human(budget(t)) + " (memory.device_budget) " +
                         std::string(why) + ": " + budget_holders(t, fixed) +
                         "; release pins or leases, or raise memory.device_budget");
  };
  for (;;) {
    if (unevictable_bytes(t, nullptr) + charge_bytes > budget(t)) return refuse("cannot hold it");
    Reserve r = try_reserve(t, charge_bytes, kNoUse, /*all_or_nothing=*/false);
    if (r.reserved) return Status::OK();
    if (!r.progress) return refuse("has nothing left to evict");
    ready_cv_.wait(lk);
  }
}

void TierManager::end_device_lease(std::uint64_t charge_bytes, DeviceBuffer memory) {
  std::lock_guard lk(mu_);
  leased_device_ -= charge_bytes;
  post_free(Tier::kDevice, charge_bytes, std::move(memory), PinnedBuffer());
  process_pending();  // the room may let a queued copy in
  ready_cv_.notify_all();
}

DeviceLease& DeviceLease::operator=(DeviceLease&& other) noexcept {
  if (this == &other) return *this;
  release();
  manager_ = std::exchange(other.manager_, nullptr);
  charge_ = std::exchange(other.charge_, 0);
  buffer_ = std::move(other.buffer_);
  return *this;
}

Result<DeviceView> DeviceLease::view(DType dtype, std::uint64_t first_element, std::uint64_t count) const {
  const std::uint64_t size = dtype_size(dtype);
  if (first_element > buffer_.size() / size) {
    return invalid_argument("device lease view: element " + std::to_string(first_element) + " is beyond the lease's " +
                            std::to_string(buffer_.size() / size) + " " + std::string(dtype_name(dtype)) + " elements");
  }
  return buffer_.view(dtype, first_element * size, count);
}

void DeviceLease::release() {
  if (manager_ == nullptr) return;
  manager_->end_device_lease(charge_, std::move(buffer_));
  manager_ = nullptr;
  charge_ = 0;
}

}  // namespace strata::offload
