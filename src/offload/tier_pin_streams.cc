// The tier manager's pins and streams (src/offload/tier_manager.h): typed device views of a
// pin, a stream waiting for a pin's data (ready_on) and a pin released in a stream's order
// (release_after).
//
// A stream waits for a load already enqueued on one of the manager's copy streams through an
// event recorded there, device-side; for anything else (a load waiting for room, for NVMe
// reads, or a write pin waiting for other transfers) through a HostSignal that the dispatcher
// sets when the pin becomes ready, never under the manager's lock, since setting it may run
// a device's own callbacks. A deferred release runs in a host function of the stream: it
// takes the lock, releases, and enqueues nothing.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "offload/tier_manager.h"
#include "offload/tier_manager_internal.h"

namespace strata::offload {

// ---------------------------------------------------------------------------------------------
// Pin

Result<DeviceView> Pin::device_view(DType dtype, std::uint64_t first_element, std::uint64_t count) const {
  if (!state_) return failed_precondition("device_view on an empty pin (released or moved from)");
  return manager_->pin_device_view(*state_, dtype, first_element, count);
}

Status Pin::ready_on(Stream& stream) {
  if (!state_) return failed_precondition("ready_on on an empty pin (released or moved from)");
  return manager_->pin_ready_on(*state_, stream);
}

Status Pin::release_after(Stream& stream) {
  if (!state_) return failed_precondition("release_after on an empty pin (released or moved from)");
  STRATA_RETURN_IF_ERROR(manager_->release_pin_after(state_, stream));
  state_.reset();
  manager_ = nullptr;
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Views (called by Pin; takes mu_)

Result<DeviceView> TierManager::pin_device_view(const PinState& p, DType dtype, std::uint64_t first,
                                                std::uint64_t count) const {
  std::lock_guard lk(mu_);
  const Block* b = lookup(p.id);
  const std::string name = b != nullptr ? b->name : std::string("(dropped)");
  if (p.tier != Tier::kDevice) {
    return failed_precondition("device_view of block '" + name + "': the pin is in host memory; use host_bytes()");
  }
  if (!p.counted || b == nullptr) {
    if (!p.error.ok()) return p.error.with_context("device_view of block '" + name + "'");
    return failed_precondition("device_view of block '" + name + "': the pin is no longer held");
  }
  const Copy& c = b->copy(Tier::kDevice);
  if (!c.device_mem) {
    return failed_precondition("device_view of block '" + name +
                               "': its device memory is not placed yet; call wait() or ready_on() first");
  }
  const std::uint64_t size = dtype_size(dtype);
  const std::uint64_t elements = b->bytes / size;
  if (first > elements || count > elements - first) {
    return invalid_argument("device_view of block '" + name + "' (" + std::to_string(b->bytes) + " bytes, " +
                            std::to_string(elements) + " " + std::string(dtype_name(dtype)) + " elements): elements [" +
                            std::to_string(first) + ", " + std::to_string(first) + " + " + std::to_string(count) +
                            ") are out of bounds");
  }
  return c.device_mem.view(dtype, first * size, count);
}

// ---------------------------------------------------------------------------------------------
// A stream waiting for a pin (called by Pin; takes mu_)

bool TierManager::placed(const Block& b, Tier t) const {
  const Copy& c = b.copy(t);
  return t == Tier::kDevice ? static_cast<bool>(c.device_mem) : static_cast<bool>(c.host_mem);
}

const TierManager::Xfer* TierManager::load_into(const Block& b, Tier t) const {
  for (const auto& x : xfers_) {
    if (x->b == &b && x->dst == t && !x->write_back) return x.get();
  }
  return nullptr;
}

bool TierManager::copy_coming(const Block& b, const PinState& p) const {
  // A load that is one copy on a copy stream is enqueued by the dispatcher right after its
  // memory is placed; worth waiting for, unlike NVMe reads or staging.
  if (p.access != Access::kRead) return false;
  const Xfer* x = load_into(b, p.tier);
  if (x == nullptr || !x->error.ok() || x->copies_enqueued == x->chunks) return false;
  return x->route == Route::kHostToDevice || x->route == Route::kDeviceToHost ||
         (x->route == Route::kZero && x->dst == Tier::kDevice);
}

Stream* TierManager::enqueued_load_stream(const Block& b, const PinState& p) const {
  // Only a read pin is ready exactly when its load completes; a write pin also waits for the
  // block's other transfers, which only the manager sees end.
  if (p.access != Access::kRead) return nullptr;
  const Xfer* x = load_into(b, p.tier);
  if (x == nullptr || x->copy_stream == nullptr || x->copies_enqueued != x->chunks) return nullptr;
  return x->error.ok() && x->version == b.version ? x->copy_stream : nullptr;
}

void TierManager::post_signals(PinState& p, const Status& status) {
  if (p.signals.empty()) return;
  post([signals = std::exchange(p.signals, {}), status] {
    for (const auto& s : signals) s->set(status);
  });
}

Status TierManager::pin_ready_on(PinState& p, Stream& stream) {
  if (&stream.device() != &device_) {
    return invalid_argument("ready_on: stream '" + stream.name() + "' belongs to another device than the tier manager's");
  }
  std::shared_ptr<HostSignal> signal;
  Stream* copy_stream = nullptr;
  std::string name;
  {
    std::unique_lock lk(mu_);
    const Block* b = lookup(p.id);
    if (b == nullptr) return failed_precondition("ready_on: the pinned block is not registered");
    name = b->name;
    ready_cv_.wait(lk, [&] { return p.ready || !p.counted || (placed(*b, p.tier) && !copy_coming(*b, p)); });
    if (p.ready) return p.error;
    if (!p.counted) return failed_precondition("ready_on of block '" + name + "': the pin is no longer held");
    copy_stream = enqueued_load_stream(*b, p);
    if (copy_stream == nullptr) {
      signal = HostSignal::make();
      p.signals.push_back(signal);
    }
  }
  const std::string what = "ready_on of block '" + name + "' (stream '" + stream.name() + "')";
  if (copy_stream != nullptr) {
    STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Event> event, device_.create_event());
    STRATA_RETURN_IF_ERROR(copy_stream->record(*event).with_context(what));
    return stream.wait(*event).with_context(what);
  }
  return stream.wait_host(std::move(signal)).with_context(what);
}

// ---------------------------------------------------------------------------------------------
// A pin released in a stream's order (called by Pin; takes mu_)

Status TierManager::release_pin_after(const std::shared_ptr<PinState>& p, Stream& stream) {
  if (&stream.device() != &device_) {
    return invalid_argument("release_after: stream '" + stream.name() + "' belongs to another device than the tier manager's");
  }
  {
    std::lock_guard lk(mu_);
    if (!p->counted) return Status::OK();  // a failed load holds nothing
    ++deferred_releases_;
  }
  Status st = stream.launch_host_func([this, p] {
    std::lock_guard lk(mu_);
    release_pin_locked(*p);
    --deferred_releases_;
    ready_cv_.notify_all();
  });
  if (!st.ok()) {
    std::lock_guard lk(mu_);
    --deferred_releases_;
    ready_cv_.notify_all();
    return st.with_context("release_after: stream '" + stream.name() + "'");
  }
  return Status::OK();
}

}  // namespace strata::offload
