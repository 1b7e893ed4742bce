// The tier manager's transfers (src/offload/tier_manager.h): loads, write-backs, the dispatcher thread, chunks, staging and completion.
#include <algorithm>
#include <cstring>
#include <functional>
#include <future>
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
// The dispatcher

void TierManager::post(std::function<void()> action) {
  actions_.push_back(std::move(action));
  dispatch_cv_.notify_one();
}

void TierManager::dispatcher_loop() {
  std::unique_lock lk(mu_);
  for (;;) {
    dispatch_cv_.wait(lk, [&] { return stopping_ || !actions_.empty(); });
    if (actions_.empty()) return;
    std::function<void()> action = std::move(actions_.front());
    actions_.pop_front();
    lk.unlock();
    action();
    action = nullptr;  // frees what it captured (memory handed over for freeing) outside the lock
    lk.lock();
  }
}

Result<DeviceBuffer> TierManager::allocate_device(std::uint64_t bytes) {
  auto task = std::make_shared<std::packaged_task<Result<DeviceBuffer>()>>([this, bytes] { return device_.allocate(bytes); });
  auto done = task->get_future();
  {
    std::lock_guard lk(mu_);
    post([task] { (*task)(); });
  }
  return done.get();
}

Result<PinnedBuffer> TierManager::allocate_host(std::uint64_t bytes) {
  auto task = std::make_shared<std::packaged_task<Result<PinnedBuffer>()>>([this, bytes] { return device_.allocate_pinned(bytes); });
  auto done = task->get_future();
  {
    std::lock_guard lk(mu_);
    post([task] { (*task)(); });
  }
  return done.get();
}

void TierManager::post_free(Tier t, std::uint64_t charge_bytes, DeviceBuffer device_mem, PinnedBuffer host_mem) {
  uncharge(t, charge_bytes);
  if (!device_mem && !host_mem) return;
  auto holder = std::make_shared<std::pair<DeviceBuffer, PinnedBuffer>>(std::move(device_mem), std::move(host_mem));
  post([holder] {
    holder->first.reset();
    holder->second.reset();
  });
}

// ---------------------------------------------------------------------------------------------
// Starting transfers (mu_ held)

bool TierManager::start_load(Block& b, Tier t, bool prefetch, bool content) {
  Copy& c = b.copy(t);
  auto x = std::make_unique<Xfer>();
  x->b = &b;
  x->dst = t;
  x->prefetch = prefetch;
  x->version = b.version;
  x->alloc_dst = !c.home() && !c.device_mem && !c.host_mem;
  if (!content) {
    x->route = Route::kAlloc;
  } else {
    choose_load_source(*x);
  }
  if (x->route == Route::kNvmeToDevice || x->route == Route::kNvmeToHost) x->chunks = b.slots.size();
  totals_->set_state(b, t, CopyState::kLoading);
  totals_->set_prefetched_unused(b, t, prefetch && c.pins() == 0);
  if (prefetch) c.last_use = ++tick_;
  if (prefetch) {
    ++stats_.prefetches;
    stats_.prefetch_bytes += b.bytes;
  }
  if (x->reads_copy) {
    // A copy being written back for eviction may be the only current one: reading it cancels
    // the eviction (the room it promised is looked for again when this load completes).
    totals_->add_reader(b, x->src);
    totals_->set_evicting(b, x->src, false);
  }
  ++b.transfers;
  launch(std::move(x));
  return true;
}

void TierManager::choose_load_source(Xfer& x) const {
  const Block& b = *x.b;
  if (x.dst == Tier::kDevice) {
    if (is_current(b, Tier::kHost)) {
      x.route = Route::kHostToDevice;
      x.src = Tier::kHost;
      x.reads_copy = true;
    } else if (b.home == Tier::kNvme && home_version(b) == b.version) {
      x.route = b.version == 0 ? Route::kZero : Route::kNvmeToDevice;
    } else {
      x.error = internal_error("no current copy of block '" + b.name + "' to load into device memory");
    }
  } else {
    if (is_current(b, Tier::kDevice)) {
      x.route = Route::kDeviceToHost;
      x.src = Tier::kDevice;
      x.reads_copy = true;
    } else if (b.home == Tier::kNvme && home_version(b) == b.version) {
      x.route = b.version == 0 ? Route::kZero : Route::kNvmeToHost;
    } else {
      x.error = internal_error("no current copy of block '" + b.name + "' to load into host memory");
    }
  }
}

void TierManager::start_write_back(Block& b, Tier from, bool evicting) {
  Copy& s = b.copy(from);
  auto x = std::make_unique<Xfer>();
  x->b = &b;
  x->src = from;
  x->reads_copy = true;
  x->write_back = true;
  x->evicting = evicting;
  x->version = s.version;
  if (b.home == Tier::kHost) {
    x->route = Route::kDeviceToHost;  // into the home copy
    x->dst = Tier::kHost;
    totals_->set_state(b, Tier::kHost, CopyState::kLoading);
  } else {
    x->route = from == Tier::kHost ? Route::kHostToNvme : Route::kDeviceToNvme;
    x->dst = Tier::kNvme;
    x->chunks = b.slots.size();
    b.nvme_busy = true;
  }
  totals_->add_reader(b, from);
  if (evicting) totals_->set_evicting(b, from, true);
  ++b.transfers;
  ++write_backs_in_flight_;
  launch(std::move(x));
}

void TierManager::launch(std::unique_ptr<Xfer> x) {
  Xfer* raw = x.get();
  xfers_.push_back(std::move(x));
  post([this, raw] { run_xfer(raw); });
}

// ---------------------------------------------------------------------------------------------
// Running transfers (dispatcher thread, without mu_ unless a function takes it)

void TierManager::run_xfer(Xfer* x) {
  if (!x->error.ok()) {  // decided impossible when it was created
    std::lock_guard lk(mu_);
    complete(*x);
    return;
  }
  if (x->alloc_dst && !allocate_destination(x)) return;
  if (!capture_memory(x)) return;
  run_route(x);
}

bool TierManager::allocate_destination(Xfer* x) {
  Block& b = *x->b;
  DeviceBuffer dmem;
  PinnedBuffer hmem;
  Status st;
  if (x->dst == Tier::kDevice) {
    auto r = device_.allocate(b.charge);
    if (r.ok()) dmem = std::move(r).value(); else st = r.status();
  } else {
    auto r = device_.allocate_pinned(b.charge);
    if (r.ok()) hmem = std::move(r).value(); else st = r.status();
  }
  std::lock_guard lk(mu_);
  if (!st.ok()) {
    // The budget allowed it but the allocator did not (fragmentation, or the OS): free a
    // clean unpinned copy of the tier and try again after that free; else give up.
    Block* victim = allocation_victim(b, x->dst);
    if (victim != nullptr) {
      ++stats_.tiers[tu(x->dst)].evictions;
      free_copy(*victim, x->dst);
      post([this, x] { run_xfer(x); });
      return false;
    }
    x->error = st.with_context("allocating " + std::string(tier_name(x->dst)) + " memory for block '" + b.name + "'");
    complete(*x);
    return false;
  }
  Copy& c = b.copy(x->dst);
  c.device_mem = std::move(dmem);
  c.host_mem = std::move(hmem);
  x->alloc_dst = false;
  ready_cv_.notify_all();  // placed: ready_on() can go on
  return true;
}

bool TierManager::capture_memory(Xfer* x) {
  Block& b = *x->b;
  std::lock_guard lk(mu_);
  auto capture = [&](Tier t, std::span<std::byte>& host, DeviceRange& dev) {
    if (t == Tier::kNvme) return;
    Copy& c = b.copy(t);
    if (t == Tier::kHost) {
      host = c.host_mem.bytes().first(b.bytes);
    } else {
      auto r = c.device_mem.range(0, b.bytes);
      if (r.ok()) dev = *r;
    }
  };
  if (x->reads_copy) capture(x->src, x->src_host, x->src_dev);
  capture(x->dst, x->dst_host, x->dst_dev);
  if (x->route == Route::kZero && x->dst == Tier::kDevice) x->zero_view = b.copy(Tier::kDevice).device_mem.view(DType::kF32);
  if (x->route == Route::kAlloc) {
    x->started = x->finished = 1;
    complete(*x);
    return false;
  }
  return true;
}

void TierManager::run_route(Xfer* x) {
  Block& b = *x->b;
  Status st;
  switch (x->route) {
    case Route::kAlloc:
      return;
    case Route::kZero:
      ++x->started;
      if (x->dst == Tier::kHost) {
        std::memset(x->dst_host.data(), 0, x->dst_host.size());
        chunk_done(x, Status::OK(), -1);
        return;
      }
      st = device_.fill(x->zero_view, 0.0f, *h2d_);
      if (st.ok()) note_enqueued(x, *h2d_);
      if (st.ok()) st = h2d_->launch_host_func([this, x] { chunk_done(x, Status::OK(), -1); });
      break;
    case Route::kHostToDevice:
      ++x->started;
      st = device_.copy_to_device(x->dst_dev, x->src_host, *h2d_);
      if (st.ok()) note_enqueued(x, *h2d_);
      if (st.ok()) st = h2d_->launch_host_func([this, x] { chunk_done(x, Status::OK(), -1); });
      break;
    case Route::kDeviceToHost:
      ++x->started;
      st = device_.copy_to_host(x->dst_host, x->src_dev, *d2h_);
      if (st.ok()) note_enqueued(x, *d2h_);
      if (st.ok()) st = d2h_->launch_host_func([this, x] { chunk_done(x, Status::OK(), -1); });
      break;
    case Route::kNvmeToHost:
    case Route::kHostToNvme:
    case Route::kNvmeToDevice:
    case Route::kDeviceToNvme:
      run_chunks(x, /*resumed=*/false);
      return;
  }
  if (!st.ok()) {
    // Nothing was enqueued, or the completion callback could not be; wait for the stream so
    // that no copy still uses the memory, then fail the transfer.
    Stream& s = x->route == Route::kDeviceToHost ? *d2h_ : *h2d_;
    s.synchronize().ignore();
    chunk_done(x, st.with_context("block '" + b.name + "'"), -1);
  }
}

// ---------------------------------------------------------------------------------------------
// Chunks and staging (dispatcher thread, without mu_ unless a function takes it)

void TierManager::run_chunks(Xfer* x, bool resumed) {
  if (x->route == Route::kNvmeToHost || x->route == Route::kHostToNvme) {
    run_direct_chunks(x);
    return;
  }
  // Staged: one staging buffer per chunk in flight.
  std::vector<std::pair<std::size_t, int>> go;
  {
    std::lock_guard lk(mu_);
    if (resumed) --x->pending_runs;
    x->waiting_for_staging = false;
    if (!x->error.ok()) {  // a chunk failed while it waited: finish with what is in flight
      maybe_complete(*x);
      return;
    }
    while (x->started < x->chunks) {
      const int buf = staging_.take();
      if (buf < 0) {
        x->waiting_for_staging = true;
        staging_waiters_.push_back(x);
        ++stats_.staging_waits;
        break;
      }
      go.emplace_back(x->started++, buf);
    }
  }
  for (auto [k, buf] : go) run_staged_chunk(x, k, buf);
}

void TierManager::run_direct_chunks(Xfer* x) {
  const std::uint64_t cs = options_.staging_buffer_size;
  const std::uint64_t total = x->b->bytes;
  auto chunk_len = [&](std::size_t k) { return std::min<std::uint64_t>(cs, total - k * cs); };
  // The pinned copy is the I/O buffer: every chunk at once, no staging.
  std::size_t n;
  {
    std::lock_guard lk(mu_);
    n = x->chunks;
    x->started = n;
  }
  for (std::size_t k = 0; k < n; ++k) {
    const std::uint64_t off = k * cs;
    const nvme::SwapSlot slot = x->b->slots[k];
    auto then = [this, x](Status st) {
      chunk_done(x, st, -1);
      return st;
    };
    Result<std::shared_ptr<nvme::IoCompletion>> r =
        x->route == Route::kNvmeToHost ? swap_->read(slot, x->dst_host.subspan(off, chunk_len(k)), then)
                                       : swap_->write(slot, x->src_host.subspan(off, chunk_len(k)), then);
    if (!r.ok()) chunk_done(x, r.status(), -1);
  }
}

void TierManager::run_staged_chunk(Xfer* x, std::size_t k, int buf) {
  const std::uint64_t cs = options_.staging_buffer_size;
  const std::uint64_t off = k * cs;
  const std::uint64_t len = std::min<std::uint64_t>(cs, x->b->bytes - off);
  std::span<std::byte> stage = staging_.bytes(buf).first(len);
  if (x->route == Route::kNvmeToDevice) {
    stage_in_chunk(x, k, off, stage, buf);
  } else {
    stage_out_chunk(x, k, off, stage, buf);
  }
}

void TierManager::stage_in_chunk(Xfer* x, std::size_t k, std::uint64_t off, std::span<std::byte> stage, int buf) {
  // kNvmeToDevice: the slot -> the staging buffer, then the buffer -> device.
  const nvme::SwapSlot slot = x->b->slots[k];
  const std::uint64_t len = stage.size();
  auto r = swap_->read(slot, stage, [this, x, off, len, stage, buf](Status st) {
    if (!st.ok()) {
      chunk_done(x, st, buf);
      return st;
    }
    std::lock_guard lk(mu_);
    post([this, x, off, len, stage, buf] {
      Status s;
      auto dst = x->dst_dev.subrange(off, len);
      if (!dst.ok()) {
        s = dst.status();
      } else {
        s = device_.copy_to_device(*dst, stage, *h2d_);
        if (s.ok()) note_enqueued(x, *h2d_);
        if (s.ok()) s = h2d_->launch_host_func([this, x, buf] { chunk_done(x, Status::OK(), buf); });
        if (!s.ok()) h2d_->synchronize().ignore();
      }
      if (!s.ok()) chunk_done(x, s.with_context("block '" + x->b->name + "'"), buf);
    });
    return st;
  });
  if (!r.ok()) chunk_done(x, r.status(), buf);
}

void TierManager::stage_out_chunk(Xfer* x, std::size_t k, std::uint64_t off, std::span<std::byte> stage, int buf) {
  // kDeviceToNvme: device -> staging buffer, then the buffer -> its slot.
  const nvme::SwapSlot slot = x->b->slots[k];
  Status s;
  auto src = x->src_dev.subrange(off, stage.size());
  if (!src.ok()) {
    s = src.status();
  } else {
    s = device_.copy_to_host(stage, *src, *d2h_);
    if (s.ok()) {
      s = d2h_->launch_host_func([this, x, slot, stage, buf] {
        std::lock_guard lk(mu_);
        post([this, x, slot, stage, buf] {
          auto r = swap_->write(slot, stage, [this, x, buf](Status st) {
            chunk_done(x, st, buf);
            return st;
          });
          if (!r.ok()) chunk_done(x, r.status(), buf);
        });
      });
    }
    if (!s.ok()) d2h_->synchronize().ignore();
  }
  if (!s.ok()) chunk_done(x, s.with_context("block '" + x->b->name + "'"), buf);
}

void TierManager::note_enqueued(Xfer* x, Stream& stream) {
  std::lock_guard lk(mu_);
  x->copy_stream = &stream;
  ++x->copies_enqueued;
  ready_cv_.notify_all();  // ready_on() may be waiting for it
}

void TierManager::chunk_done(Xfer* x, const Status& status, int buffer) {
  std::lock_guard lk(mu_);
  finish_chunk(*x, status, buffer);
}

// ---------------------------------------------------------------------------------------------
// Completion (mu_ held)

void TierManager::finish_chunk(Xfer& x, const Status& status, int buffer) {
  if (buffer >= 0) {
    staging_.give_back(buffer);
    ++stats_.staged_chunks;
    if (!staging_waiters_.empty()) {
      Xfer* w = staging_waiters_.front();
      staging_waiters_.pop_front();
      w->waiting_for_staging = false;
      ++w->pending_runs;
      post([this, w] { run_chunks(w, /*resumed=*/true); });
    }
  }
  if (!status.ok() && x.error.ok()) x.error = status;
  ++x.finished;
  maybe_complete(x);
}

void TierManager::maybe_complete(Xfer& x) {
  if (x.pending_runs == 0 && x.finished == x.started && (x.started == x.chunks || !x.error.ok())) complete(x);
}

void TierManager::complete(Xfer& x) {
  Block& b = *x.b;
  --b.transfers;
  if (x.reads_copy) totals_->remove_reader(b, x.src);
  if (x.waiting_for_staging) {
    auto it = std::find(staging_waiters_.begin(), staging_waiters_.end(), &x);
    if (it != staging_waiters_.end()) staging_waiters_.erase(it);
  }
  const std::string what = describe(x);

  if (x.dst != Tier::kNvme) {
    complete_copy(x, what);
  } else {
    b.nvme_busy = false;
    b.nvme_version = x.error.ok() ? x.version : kInvalidVersion;  // a failed write leaves the slots unreadable
  }
  if (x.write_back) complete_write_back(x, what);

  update_waiters(b);
  destroy_if_dead(b);
  auto it = std::find_if(xfers_.begin(), xfers_.end(), [&](const auto& p) { return p.get() == &x; });
  std::unique_ptr<Xfer> done = std::move(*it);
  xfers_.erase(it);
  process_pending();
  ready_cv_.notify_all();
}

std::string TierManager::describe(const Xfer& x) const {
  const Block& b = *x.b;
  return x.write_back ? "write-back of block '" + b.name + "' from " + std::string(tier_name(x.src)) + " to " +
                            std::string(tier_name(b.home))
                      : "load of block '" + b.name + "' into " + std::string(tier_name(x.dst));
}

void TierManager::complete_copy(Xfer& x, const std::string& what) {
  Block& b = *x.b;
  const bool ok = x.error.ok();
  Copy& c = b.copy(x.dst);
  if (ok) {
    totals_->set_state(b, x.dst, CopyState::kValid);
    c.version = x.version;
    if (x.route == Route::kZero) {
      ++stats_.zero_fills;
    } else if (x.route != Route::kAlloc) {
      stats_.bytes_moved[tu(x.src)][tu(x.dst)] += b.bytes;
    }
    if (c.version != b.version) {
      // Cannot happen while write pins wait for transfers; kept so that no waiter can hang.
      if (!c.waiters.empty()) {
        start_load(b, x.dst, /*prefetch=*/false, true);
      } else if (c.pins() == 0 && !c.home()) {
        free_copy(b, x.dst);
      }
    }
  } else if (c.home()) {
    totals_->set_state(b, x.dst, CopyState::kValid);
    c.version = kInvalidVersion;  // partly overwritten; the newest bytes are still at the source
  } else {
    free_copy(b, x.dst);
  }
  if (!ok && !x.write_back) ++stats_.load_failures;
  if (!ok) fail_waiters(b, x.dst, x.error.with_context(what));
}

void TierManager::complete_write_back(Xfer& x, const std::string& what) {
  Block& b = *x.b;
  --write_backs_in_flight_;
  Copy& s = b.copy(x.src);
  TierUsage& u = stats_.tiers[tu(x.src)];
  if (x.error.ok()) {
    ++u.write_backs;
    u.write_back_bytes += b.bytes;
    if (x.dst == Tier::kNvme) stats_.bytes_moved[tu(x.src)][tu(Tier::kNvme)] += b.bytes;
    if (s.evicting() && s.pins() == 0 && s.readers() == 0) {
      ++u.evictions;
      free_copy(b, x.src);
    } else if (!s.home() && s.pins() == 0 && s.readers() == 0 && s.version != b.version) {
      free_copy(b, x.src);  // became stale meanwhile
    }
    totals_->set_evicting(b, x.src, false);
  } else {
    ++stats_.write_back_failures;
    totals_->set_evicting(b, x.src, false);  // the copy stays, dirty, where it was
    last_write_back_error_ = x.error.with_context(what + " (the block stays dirty in " + std::string(tier_name(x.src)) + ")");
    STRATA_LOG(kWarn) << "tier manager: " << last_write_back_error_;
    // Requests waiting for this room would only pick the same victim again: fail them.
    fail_queued(x.src, last_write_back_error_);
  }
}

}  // namespace strata::offload
