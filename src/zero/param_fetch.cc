// ZeRO stage 3's gathering of parameters, as zero/param_fetch.h describes.
#include "zero/param_fetch.h"

#include <algorithm>
#include <chrono>
#include <limits>

#include "offload/tier_manager.h"
#include "strata/log.h"

namespace strata::zero {

namespace {
constexpr std::size_t kNone = std::numeric_limits<std::size_t>::max();

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Result<std::unique_ptr<ParamFetch>> ParamFetch::create(Communicator& dp, Device& device, const FlatLayout& layout,
                                                       DType dtype, const FetchOptions& options, BeforeGather before) {
  if (layout.shards() != static_cast<std::uint64_t>(dp.size())) {
    return internal_error("ZeRO stage 3: the layout has " + std::to_string(layout.shards()) + " shards for " +
                          std::to_string(dp.size()) + " ranks");
  }
  if (options.largest_use > options.max_live) {
    return internal_error("ZeRO stage 3: a module needs more gathered elements than the window holds");
  }
  std::unique_ptr<ParamFetch> f(new ParamFetch());
  f->dp_ = &dp;
  f->device_ = &device;
  f->layout_ = &layout;
  f->dtype_ = dtype;
  f->options_ = options;
  f->stats_.max_live = options.max_live;
  f->before_ = std::move(before);
  const std::size_t buckets = layout.bucket_count();
  std::uint64_t at = 0;
  for (std::size_t b = 0; b < buckets; ++b) {
    const bool whole = f->count(b) <= options.persistence_threshold;
    f->persistent_.push_back(whole);
    f->home_at_.push_back(at);
    if (whole || !options.host_home) at += whole ? f->count(b) : f->count(b) / layout.shards();
    if (whole) f->stats_.persistent += f->count(b);
    STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Event> e, device.create_event());
    f->ready_.push_back(std::move(e));
  }
  f->host_.resize(buckets);
  f->stale_.assign(buckets, true);
  f->resident_.resize(buckets);
  f->in_use_.assign(buckets, false);
  f->kept_.assign(buckets, false);
  f->ahead_.assign(buckets, false);
  f->acquired_at_.assign(buckets, kNone);
  f->next_use_.assign(buckets, kNone);
  f->home_elements_ = at;
  auto home = device.allocate(std::max<std::uint64_t>(1, at * dtype_size(dtype)));
  if (!home.ok()) return home.status().with_context("ZeRO stage 3: this rank's parameter shard");
  f->home_ = std::move(*home);
  STRATA_RETURN_IF_ERROR(device.fill(f->home_.view(dtype), 0.0f, device.default_stream()));
  STRATA_RETURN_IF_ERROR(device.default_stream().synchronize());
  STRATA_ASSIGN_OR_RETURN(f->fetch_, device.create_stream("zero-3 gathers"));
  STRATA_ASSIGN_OR_RETURN(f->step_start_, device.create_event());
  return f;
}

GatherStats ParamFetch::stats() const {
  GatherStats s = stats_;
  s.stall_s = static_cast<double>(stalled_ns_.load()) * 1e-9;
  return s;
}

ParamFetch::~ParamFetch() {
  // Nothing is freed under a gather or a kernel still reading it.
  if (fetch_ != nullptr) fetch_->synchronize().ignore();
  for (Buffer& b : retiring_) b.retired->synchronize().ignore();
  drop_all_read_ahead();
}

Result<DeviceView> ParamFetch::home_slice(std::size_t b) const {
  if (host_slice(b)) return failed_precondition("ZeRO stage 3: bucket " + std::to_string(b) + "'s slice lives in host memory");
  const std::uint64_t n = layout_->slice(b, 0).count;
  const std::uint64_t r = static_cast<std::uint64_t>(dp_->rank());
  const std::uint64_t at = home_at_[b] + (persistent_[b] ? r * n : 0);
  return home_.view(dtype_, at * dtype_size(dtype_), n);
}

Result<DeviceView> ParamFetch::tensor_view(std::size_t i) const {
  const std::size_t b = layout_->bucket_of(i);
  const std::uint64_t within = layout_->offset(i) - layout_->bucket(b).first;
  const std::uint64_t numel = layout_->tensor(i).numel, vs = dtype_size(dtype_);
  if (persistent_[b]) return home_.view(dtype_, (home_at_[b] + within) * vs, numel);
  if (resident_[b] == nullptr) {
    return internal_error("ZeRO stage 3: " + layout_->tensor(i).name + " is used while not gathered");
  }
  return resident_[b]->memory.view(dtype_, within * vs, numel);
}

Status ParamFetch::begin_step(Stream& stream) {
  STRATA_RETURN_IF_ERROR(invalidate(stream));  // the gathers wait for the stream's work so far
  current_.clear();
  at_ = 0;
  following_ = !recorded_.empty();
  return prefetch();
}

void ParamFetch::set_host_slice(std::size_t b, std::vector<HostSegment> segments) {
  swap_bytes_.resize(host_.size(), 0);
  swap_ahead_.resize(host_.size());
  for (const HostSegment& s : segments) swap_bytes_[b] += s.tiers != nullptr ? s.pinned : 0;
  host_[b] = std::move(segments);
}

void ParamFetch::set_swap(std::uint64_t pin_limit, std::uint64_t read_ahead, std::function<bool(std::size_t b)> updated) {
  options_.swap_pin_limit = pin_limit;
  options_.swap_read_ahead = read_ahead;
  updated_ = std::move(updated);
}

Status ParamFetch::end_step(Stream& stream) {
  STRATA_RETURN_IF_ERROR(fetch_->record(*step_start_));
  STRATA_RETURN_IF_ERROR(stream.wait(*step_start_));
  drop_all_read_ahead();  // none is left unless the order changed; the optimizer writes next
  if (following_ && at_ != recorded_.size()) {
    order_changed("the step ended after fetch " + std::to_string(at_) + " of " + std::to_string(recorded_.size()));
  }
  if (current_ != recorded_) {
    recorded_ = current_;
    recorded_prefix_.assign(1, 0);
    recorded_next_.assign(recorded_.size(), kNone);
    std::vector<std::size_t> last(layout_->bucket_count(), kNone);
    for (std::size_t k = 0; k < recorded_.size(); ++k) {
      const std::size_t b = recorded_[k];
      recorded_prefix_.push_back(recorded_prefix_.back() + (persistent_[b] ? 0 : count(b)));
      if (last[b] != kNone) recorded_next_[last[b]] = k;
      last[b] = k;
    }
  }
  current_.clear();
  return Status::OK();
}

Status ParamFetch::invalidate(Stream& stream) {
  std::fill(stale_.begin(), stale_.end(), true);
  drop_all_read_ahead();
  // Behind the training stream so far, and behind this stream's own gathers.
  STRATA_RETURN_IF_ERROR(stream.record(*step_start_));
  STRATA_RETURN_IF_ERROR(fetch_->wait(*step_start_));
  for (std::size_t b = 0; b < resident_.size(); ++b) {
    if (resident_[b] == nullptr) continue;
    STRATA_RETURN_IF_ERROR(fetch_->record(*resident_[b]->retired));
    retire(b);
  }
  in_use_.assign(in_use_.size(), false);
  return Status::OK();
}

Status ParamFetch::acquire(const std::vector<std::size_t>& buckets, Stream& stream) {
  // The training stream's time in the waits below, bracketed by two host functions on it.
  if (options_.time_stalls) STRATA_RETURN_IF_ERROR(stream.launch_host_func([this] { stall_from_ns_ = now_ns(); }));
  for (std::size_t b : buckets) {
    follow_order(b);
    if (persistent_[b]) {
      if (stale_[b]) STRATA_RETURN_IF_ERROR(gather(b, false));
    } else if (resident_[b] != nullptr) {
      if (kept_[b]) ++stats_.reused;
      if (ahead_[b]) ahead_elements_ -= count(b);
      kept_[b] = ahead_[b] = false;
    } else {
      STRATA_RETURN_IF_ERROR(gather(b, false));
    }
    in_use_[b] = true;
    STRATA_RETURN_IF_ERROR(stream.wait(*ready_[b]));
  }
  if (options_.time_stalls) {
    STRATA_RETURN_IF_ERROR(stream.launch_host_func([this] { stalled_ns_ += now_ns() - stall_from_ns_; }));
  }
  return prefetch();
}

Result<std::vector<bool>> ParamFetch::release(const std::vector<std::size_t>& buckets, Stream& stream) {
  std::vector<bool> resident;
  for (std::size_t b : buckets) {
    in_use_[b] = false;
    if (persistent_[b]) {
      resident.push_back(true);
      continue;
    }
    if (resident_[b] == nullptr) return internal_error("ZeRO stage 3: a bucket is released while not gathered");
    STRATA_RETURN_IF_ERROR(stream.record(*resident_[b]->retired));
    kept_[b] = used_again_soon(b);
    next_use_[b] = kept_[b] ? recorded_next_[acquired_at_[b]] : kNone;
    if (!kept_[b]) retire(b);
    resident.push_back(kept_[b]);
  }
  STRATA_RETURN_IF_ERROR(prefetch());  // into the room just given back
  return resident;
}

void ParamFetch::follow_order(std::size_t b) {
  current_.push_back(b);
  acquired_at_[b] = kNone;
  if (!following_) return;
  if (at_ < recorded_.size() && recorded_[at_] == b) {
    acquired_at_[b] = at_++;
    return;
  }
  order_changed("fetch " + std::to_string(at_) + " of " + std::to_string(recorded_.size()) + " differs");
}

void ParamFetch::order_changed(const std::string& how) {
  following_ = false;
  drop_all_read_ahead();
  if (stats_.order_changes++ > 0) return;
  STRATA_LOG(kWarn) << "ZeRO stage 3: the modules ran in another order than in the recorded step (" << how
                    << "); the rest of this step fetches its parameters on demand and its order is recorded "
                    << "for the next (later changes are counted in the statistics, not logged)";
}

bool ParamFetch::used_again_soon(std::size_t b) const {
  const std::size_t k = acquired_at_[b];
  if (!following_ || k == kNone || recorded_next_[k] == kNone) return false;
  return recorded_prefix_[recorded_next_[k]] - recorded_prefix_[k + 1] <= options_.reuse_distance;
}

Status ParamFetch::prefetch() {
  if (!following_) return Status::OK();
  STRATA_RETURN_IF_ERROR(read_ahead());  // first, so that the gathers below find their pins
  for (std::size_t k = at_; k < recorded_.size(); ++k) {
    const std::size_t b = recorded_[k];
    if (persistent_[b]) {
      if (stale_[b]) STRATA_RETURN_IF_ERROR(gather(b, true));
      continue;
    }
    if (resident_[b] != nullptr) {
      // In use for an earlier fetch and given back before this one: it is gathered again only
      // once released, and what lies beyond must not take the room it will need then.
      if (in_use_[b] && !used_again_soon(b)) break;
      continue;
    }
    if (ahead_elements_ + count(b) > options_.prefetch) break;
    STRATA_ASSIGN_OR_RETURN(bool room, fit(count(b), false, k));
    if (!room) break;
    STRATA_RETURN_IF_ERROR(gather(b, true));
  }
  return read_ahead();  // beyond what was just gathered
}

Status ParamFetch::gather(std::size_t b, bool ahead) {
  STRATA_RETURN_IF_ERROR(before_(b));
  const std::uint64_t vs = dtype_size(dtype_), n = count(b), part = n / layout_->shards();
  const std::uint64_t r = static_cast<std::uint64_t>(dp_->rank());
  const CommType type = comm_type_of(dtype_);
  if (persistent_[b]) {
    STRATA_ASSIGN_OR_RETURN(DeviceView mine, home_slice(b));
    STRATA_ASSIGN_OR_RETURN(DeviceRange whole, home_.range(home_at_[b] * vs, n * vs));
    STRATA_RETURN_IF_ERROR(dp_->all_gather(CommBuffer::of(mine), {whole, type, n}, *fetch_));
    stale_[b] = false;
  } else {
    if (!ahead) {
      STRATA_ASSIGN_OR_RETURN(bool room, fit(n, true, 0));
      if (!room) return internal_error("ZeRO stage 3: the gather window is full of buckets in use");
    }
    STRATA_ASSIGN_OR_RETURN(Buffer buf, take_buffer(b));
    live_ += n;
    STRATA_ASSIGN_OR_RETURN(DeviceRange own, buf.memory.range(r * part * vs, part * vs));
    STRATA_RETURN_IF_ERROR(copy_slice(b, own));
    STRATA_ASSIGN_OR_RETURN(DeviceRange whole, buf.memory.range(0, n * vs));
    STRATA_RETURN_IF_ERROR(dp_->all_gather({own, type, part}, {whole, type, n}, *fetch_));
    resident_[b] = std::make_unique<Buffer>(std::move(buf));
    if (ahead) {
      ahead_[b] = true;
      ahead_elements_ += n;
    }
  }
  STRATA_RETURN_IF_ERROR(fetch_->record(*ready_[b]));
  ++stats_.gathers;
  stats_.gathered += n;
  ++(ahead ? stats_.prefetched : stats_.on_demand);
  return Status::OK();
}

Status ParamFetch::copy_slice(std::size_t b, DeviceRange own) {
  if (!host_slice(b)) {
    STRATA_ASSIGN_OR_RETURN(DeviceView mine, home_slice(b));
    return device_->copy_on_device(own, mine.range(), *fetch_);
  }
  std::vector<offload::Pin> ahead = take_read_ahead(b);
  std::size_t next = 0;
  for (const HostSegment& s : host_[b]) {
    STRATA_ASSIGN_OR_RETURN(DeviceRange to, own.subrange(s.at * dtype_size(dtype_), s.length()));
    if (s.tiers != nullptr) {
      STRATA_RETURN_IF_ERROR(copy_swapped(s, next < ahead.size() ? std::move(ahead[next]) : offload::Pin(), to));
      ++next;
    } else {
      STRATA_RETURN_IF_ERROR(device_->copy_to_device(to, s.bytes, *fetch_));
    }
  }
  return Status::OK();
}

Status ParamFetch::copy_swapped(const HostSegment& s, offload::Pin ahead, DeviceRange to) {
  offload::Pin pin = std::move(ahead);
  if (pin.valid()) {
    ++stats_.swap_ahead;
  } else {
    STRATA_RETURN_IF_ERROR(make_pin_room(s.pinned, true));
    STRATA_ASSIGN_OR_RETURN(pin, s.tiers->acquire(s.block, Tier::kHost, Access::kRead));
  }
  ++stats_.swap_reads;
  const bool waits = !pin.ready();
  const std::int64_t from = waits ? now_ns() : 0;
  STRATA_RETURN_IF_ERROR(pin.wait().with_context("ZeRO stage 3: reading parameters from NVMe"));
  if (waits) {
    ++stats_.swap_waits;
    stats_.swap_wait_s += static_cast<double>(now_ns() - from) * 1e-9;
  }
  STRATA_RETURN_IF_ERROR(device_->copy_to_device(to, pin.host_bytes().subspan(s.offset, s.size), *fetch_));
  STRATA_RETURN_IF_ERROR(pin.release_after(*fetch_));
  SwapRead r;
  STRATA_ASSIGN_OR_RETURN(r.done, device_->create_event());
  STRATA_RETURN_IF_ERROR(fetch_->record(*r.done));  // after the release: done means released
  r.bytes = s.pinned;
  swap_pinned_ += r.bytes;
  swap_reads_.push_back(std::move(r));
  return Status::OK();
}

Status ParamFetch::make_pin_room(std::uint64_t bytes, bool wait) {
  auto fits = [&] { return swap_pinned_ + swap_ahead_bytes_ + bytes <= options_.swap_pin_limit; };
  while (!swap_reads_.empty()) {
    SwapRead& oldest = swap_reads_.front();
    STRATA_ASSIGN_OR_RETURN(const bool done, oldest.done->query());
    if (!done && (fits() || !wait)) return Status::OK();
    if (!done) STRATA_RETURN_IF_ERROR(oldest.done->synchronize());
    swap_pinned_ -= oldest.bytes;
    swap_reads_.pop_front();
  }
  while (wait && !fits() && !swap_ahead_order_.empty()) drop_read_ahead(swap_ahead_order_.back());
  return Status::OK();
}

Status ParamFetch::read_ahead() {
  if (!following_ || !updated_ || options_.swap_read_ahead == 0) return Status::OK();
  STRATA_RETURN_IF_ERROR(make_pin_room(0, false));  // counts the copies done since
  for (std::size_t k = at_; k < recorded_.size(); ++k) {
    const std::size_t b = recorded_[k];
    if (swap_bytes_[b] == 0 || resident_[b] != nullptr || !swap_ahead_[b].empty()) continue;
    if (swap_ahead_bytes_ + swap_bytes_[b] > options_.swap_read_ahead) break;
    if (swap_pinned_ + swap_ahead_bytes_ + swap_bytes_[b] > options_.swap_pin_limit) break;
    if (!updated_(b)) break;  // the optimizer has not written it yet
    for (const HostSegment& s : host_[b]) {
      if (s.tiers == nullptr) continue;
      STRATA_ASSIGN_OR_RETURN(offload::Pin pin, s.tiers->acquire(s.block, Tier::kHost, Access::kRead));
      swap_ahead_[b].push_back(std::move(pin));
    }
    swap_ahead_order_.push_back(b);
    swap_ahead_bytes_ += swap_bytes_[b];
  }
  return Status::OK();
}

std::vector<offload::Pin> ParamFetch::take_read_ahead(std::size_t b) {
  std::vector<offload::Pin> pins;
  if (swap_ahead_.empty() || swap_ahead_[b].empty()) return pins;
  pins = std::move(swap_ahead_[b]);
  swap_ahead_[b].clear();
  swap_ahead_order_.erase(std::find(swap_ahead_order_.begin(), swap_ahead_order_.end(), b));
  swap_ahead_bytes_ -= swap_bytes_[b];
  return pins;
}

void ParamFetch::drop_read_ahead(std::size_t b) {
  for (offload::Pin& pin : take_read_ahead(b)) pin.release();
}

void ParamFetch::drop_all_read_ahead() {
  while (!swap_ahead_order_.empty()) drop_read_ahead(swap_ahead_order_.back());
}

Result<ParamFetch::Buffer> ParamFetch::take_buffer(std::size_t b) {
  const std::uint64_t n = count(b);
  reclaim();
  // A spare of the bucket's size (only that: a larger one would hold more than the window
  // counts for the bucket): after the first step every gather finds one.
  for (std::size_t s = 0; s < spare_.size(); ++s) {
    if (spare_[s].elements != n) continue;
    Buffer buf = std::move(spare_[s]);
    spare_.erase(spare_.begin() + static_cast<std::ptrdiff_t>(s));
    return buf;
  }
  STRATA_RETURN_IF_ERROR(free_memory(n));
  auto buf = allocate(n);
  if (!buf.ok()) {
    return buf.status().with_context("ZeRO stage 3: gathering " + std::to_string(n) + " parameters of " +
                                     layout_->tensor(layout_->bucket_tensors(b).first).name + " with " +
                                     std::to_string(stats_.held) + " gathered already");
  }
  return buf;
}

Result<ParamFetch::Buffer> ParamFetch::allocate(std::uint64_t elements) {
  auto memory = device_->allocate(elements * dtype_size(dtype_));
  if (!memory.ok()) {
    // Whatever retires still occupies device memory: wait for it and free it, then retry.
    for (Buffer& r : retiring_) STRATA_RETURN_IF_ERROR(r.retired->synchronize());
    reclaim();
    for (const Buffer& s : spare_) stats_.held -= s.elements;
    spare_.clear();
    memory = device_->allocate(elements * dtype_size(dtype_));
    if (!memory.ok()) return memory.status();
  }
  Buffer buf;
  buf.memory = std::move(*memory);
  buf.elements = elements;
  STRATA_ASSIGN_OR_RETURN(buf.retired, device_->create_event());
  stats_.held += elements;
  stats_.peak_held = std::max(stats_.peak_held, stats_.held);
  return buf;
}

Status ParamFetch::reserve(std::uint64_t elements) {
  STRATA_RETURN_IF_ERROR(free_memory(elements));
  STRATA_ASSIGN_OR_RETURN(Buffer buf, allocate(elements));
  spare_.push_back(std::move(buf));
  return Status::OK();
}

Result<bool> ParamFetch::fit(std::uint64_t need, bool on_demand, std::size_t position) {
  while (live_ + need > options_.max_live) {
    // The kept bucket used again last (and, before the position, not at all); then, on demand,
    // any prefetch the changed order left unused.
    std::size_t victim = kNone;
    for (std::size_t b = 0; b < resident_.size(); ++b) {
      if (resident_[b] == nullptr || !kept_[b] || (!on_demand && next_use_[b] <= position)) continue;
      if (victim == kNone || next_use_[b] > next_use_[victim]) victim = b;
    }
    for (std::size_t b = 0; on_demand && victim == kNone && b < resident_.size(); ++b) {
      if (resident_[b] != nullptr && ahead_[b]) victim = b;
    }
    if (victim == kNone) return false;
    // A kept bucket's event was recorded at its release; an unused prefetch's is its gather.
    if (ahead_[victim]) STRATA_RETURN_IF_ERROR(fetch_->record(*resident_[victim]->retired));
    retire(victim);
  }
  return true;
}

Status ParamFetch::free_memory(std::uint64_t need) {
  reclaim();
  while (stats_.held + need > options_.max_live) {
    if (!spare_.empty()) {  // the smallest first: large buffers are the hardest to allocate again
      auto smallest = std::min_element(spare_.begin(), spare_.end(),
                                       [](const Buffer& a, const Buffer& b) { return a.elements < b.elements; });
      stats_.held -= smallest->elements;
      spare_.erase(smallest);
      continue;
    }
    if (retiring_.empty()) return internal_error("ZeRO stage 3: the gather window is full of buckets in use");
    STRATA_RETURN_IF_ERROR(retiring_.front().retired->synchronize());
    reclaim();
  }
  return Status::OK();
}

void ParamFetch::reclaim() {
  while (!retiring_.empty()) {
    auto done = retiring_.front().retired->query();
    if (done.ok() && !*done) return;
    // A failed event: its stream reports the failure; the buffer is not read again.
    spare_.push_back(std::move(retiring_.front()));
    retiring_.pop_front();
  }
}

void ParamFetch::retire(std::size_t b) {
  live_ -= count(b);
  if (ahead_[b]) ahead_elements_ -= count(b);
  kept_[b] = ahead_[b] = false;
  retiring_.push_back(std::move(*resident_[b]));
  resident_[b].reset();
}

}  // namespace strata::zero
