#include "parallel/mpi_runtime.h"

#include <cstdlib>

#include "kernels/elementwise_math.h"
#include "strata/log.h"

namespace strata::comm {

Status mpi_status(int code, std::string_view what) {
  if (code == MPI_SUCCESS) return Status::OK();
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return unavailable("MPI " + std::string(what) + " failed: " + std::string(text, static_cast<std::size_t>(len)));
}

namespace {

template <typename T, typename Combine>
void half_op(void* in, void* inout, int* len, Combine combine) {
  auto* a = static_cast<const T*>(in);
  auto* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = kern::from_f32<T>(combine(kern::to_f32(a[i]), kern::to_f32(b[i])));
}

template <typename T>
void half_sum(void* in, void* inout, int* len, MPI_Datatype*) { half_op<T>(in, inout, len, [](float a, float b) { return b + a; }); }
template <typename T>
void half_max(void* in, void* inout, int* len, MPI_Datatype*) { half_op<T>(in, inout, len, [](float a, float b) { return a > b ? a : b; }); }
template <typename T>
void half_min(void* in, void* inout, int* len, MPI_Datatype*) { half_op<T>(in, inout, len, [](float a, float b) { return a < b ? a : b; }); }

}  // namespace

Result<MpiRuntime*> MpiRuntime::get() {
  static MpiRuntime runtime;
  if (!runtime.status_.ok()) return runtime.status_;
  return &runtime;
}

MPI_Datatype MpiRuntime::datatype(CommType t) const {
  switch (t) {
    case CommType::kF32: return MPI_FLOAT;
    case CommType::kBF16: case CommType::kF16: return MPI_UINT16_T;
    case CommType::kI32: return MPI_INT32_T;
    case CommType::kI64: return MPI_INT64_T;
  }
  return MPI_BYTE;
}

MPI_Op MpiRuntime::op(CommType t, ReduceOp op) const {
  const int k = static_cast<int>(op);
  if (t == CommType::kBF16) return bf16_ops_[k];
  if (t == CommType::kF16) return f16_ops_[k];
  return op == ReduceOp::kSum ? MPI_SUM : op == ReduceOp::kMax ? MPI_MAX : MPI_MIN;
}

std::uint64_t MpiRuntime::watch(std::function<std::string()> describe, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  std::lock_guard lk(mu_);
  const std::uint64_t id = ++next_watch_;
  watched_.emplace(id, Watch{std::move(describe), deadline});
  return id;
}

void MpiRuntime::unwatch(std::uint64_t id) {
  std::lock_guard lk(mu_);
  watched_.erase(id);
}

void MpiRuntime::abort_job(const std::string& why) {
  STRATA_LOG(kError) << why << "; aborting the MPI job";
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

MpiRuntime::MpiRuntime() {
  int inited = 0;
  MPI_Initialized(&inited);
  int provided = 0;
  if (!inited) {
    status_ = mpi_status(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "init");
    if (!status_.ok()) return;
    owns_init_ = true;
  } else {
    MPI_Query_thread(&provided);
  }
  if (provided < MPI_THREAD_MULTIPLE) {
    status_ = unavailable("this MPI library does not provide MPI_THREAD_MULTIPLE (it gave level " +
                          std::to_string(provided) + "); strata's MPI communicator needs it");
    return;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  set_log_process_rank(world_rank_);
  MPI_User_function* bf16[] = {half_sum<kern::Bf16>, half_max<kern::Bf16>, half_min<kern::Bf16>};
  MPI_User_function* f16[] = {half_sum<kern::F16>, half_max<kern::F16>, half_min<kern::F16>};
  for (int k = 0; k < 3; ++k) {
    MPI_Op_create(bf16[k], 1, &bf16_ops_[k]);
    MPI_Op_create(f16[k], 1, &f16_ops_[k]);
  }
  watchdog_ = std::thread([this] { watchdog(); });
}

MpiRuntime::~MpiRuntime() {
  if (watchdog_.joinable()) {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    watchdog_.join();
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_init_ && !finalized) MPI_Finalize();
}

void MpiRuntime::Slot::arm(double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  deadline_ns_.store(std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count(),
                     std::memory_order_release);
}

MpiRuntime::Slot* MpiRuntime::add_slot(std::function<std::string()> describe) {
  std::lock_guard lk(mu_);
  slots_.push_back(std::unique_ptr<Slot>(new Slot(std::move(describe))));
  return slots_.back().get();
}

void MpiRuntime::remove_slot(Slot* slot) {
  std::lock_guard lk(mu_);
  std::erase_if(slots_, [&](const std::unique_ptr<Slot>& s) { return s.get() == slot; });
}

void MpiRuntime::watchdog() {
  const auto overdue = " did not complete within the communicator's timeout";
  std::unique_lock lk(mu_);
  while (!stop_) {
    cv_.wait_for(lk, std::chrono::milliseconds(200));
    const auto now = Clock::now();
    for (const auto& [id, w] : watched_) {
      if (now > w.deadline) abort_job(w.describe() + overdue);
    }
    const std::int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
    for (const auto& slot : slots_) {
      const std::int64_t deadline = slot->deadline_ns_.load(std::memory_order_acquire);
      if (deadline != 0 && now_ns > deadline) abort_job(slot->describe_() + overdue);
    }
  }
}

}  // namespace strata::comm
