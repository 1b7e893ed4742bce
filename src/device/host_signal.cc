// HostSignal: a set-once completion with waiters and callbacks (strata/device.h).
#include <condition_variable>
#include <mutex>
#include <vector>

#include "strata/device.h"

namespace strata {

struct HostSignal::State {
  mutable std::mutex mu;
  mutable std::condition_variable cv;
  bool set = false;
  Status status;
  std::vector<std::function<void()>> callbacks;
};

HostSignal::HostSignal(std::unique_ptr<State> state) : state_(std::move(state)) {}
HostSignal::~HostSignal() = default;

std::shared_ptr<HostSignal> HostSignal::make() {
  return std::shared_ptr<HostSignal>(new HostSignal(std::make_unique<State>()));
}

void HostSignal::set(Status status) {
  std::vector<std::function<void()>> callbacks;
  {
    std::lock_guard lk(state_->mu);
    if (state_->set) return;
    state_->set = true;
    state_->status = std::move(status);
    callbacks.swap(state_->callbacks);
  }
  state_->cv.notify_all();
  for (auto& fn : callbacks) fn();
}

bool HostSignal::is_set() const {
  std::lock_guard lk(state_->mu);
  return state_->set;
}

Status HostSignal::wait() const {
  std::unique_lock lk(state_->mu);
  state_->cv.wait(lk, [&] { return state_->set; });
  return state_->status;
}

Status HostSignal::status() const {
  std::lock_guard lk(state_->mu);
  return state_->status;
}

bool HostSignal::notify_when_set(std::function<void()> fn) {
  std::lock_guard lk(state_->mu);
  if (state_->set) return false;
  state_->callbacks.push_back(std::move(fn));
  return true;
}

}  // namespace strata
