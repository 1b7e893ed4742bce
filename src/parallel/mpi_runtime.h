// src/parallel/mpi_runtime.h — MPI itself, once per process, for MpiComm (and NcclComm's
// bootstrap): initialised with MPI_THREAD_MULTIPLE on first use, the error-code conversion, the
// MPI operations strata defines for bf16 and fp16 (add in fp32, round once per pair), and the
// watchdog that aborts the job when an operation in flight overstays its timeout, so a peer
// that stopped cannot hang the others.
//
// Thread-safety: get() and every member are safe from any thread (MPI_THREAD_MULTIPLE).
#pragma once

#include <mpi.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "parallel/comm_internal.h"

namespace strata::comm {

// The one place where an MPI error code becomes a Status.
Status mpi_status(int code, std::string_view what);

class MpiRuntime {
 public:
  // The process's runtime, initialising MPI the first time; the failure to initialise it.
  static Result<MpiRuntime*> get();

  int world_rank() const { return world_rank_; }
  MPI_Datatype datatype(CommType t) const;
  MPI_Op op(CommType t, ReduceOp op) const;

  // Watches an operation in flight; the returned id ends the watch. `describe` names it, and
  // runs only when the operation overstays.
  std::uint64_t watch(std::function<std::string()> describe, double timeout_s);
  void unwatch(std::uint64_t id);

  // A watch for a thread that runs one operation at a time (a communicator's collectives): made
  // once, then armed and disarmed around each operation without a lock or an allocation.
  // `describe` names the operation in flight; it runs only when one overstays, on the
  // watchdog's thread, so it must guard what it reads.
  class Slot {
   public:
    void arm(double timeout_s);
    void disarm() { deadline_ns_.store(0, std::memory_order_release); }

   private:
    friend class MpiRuntime;
    explicit Slot(std::function<std::string()> describe) : describe_(std::move(describe)) {}
    std::function<std::string()> describe_;
    std::atomic<std::int64_t> deadline_ns_{0};  // steady-clock nanoseconds; 0: idle
  };
  // REQUIRES: remove_slot() before the owner goes away.
  Slot* add_slot(std::function<std::string()> describe);
  void remove_slot(Slot* slot);

  [[noreturn]] void abort_job(const std::string& why);

 private:
  MpiRuntime();
  ~MpiRuntime();
  void watchdog();

  struct Watch {
    std::function<std::string()> describe;
    Clock::time_point deadline;
  };

  Status status_;
  bool owns_init_ = false;
  int world_rank_ = 0;
  MPI_Op bf16_ops_[3]{}, f16_ops_[3]{};
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::uint64_t, Watch> watched_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::uint64_t next_watch_ = 0;
  bool stop_ = false;
  std::thread watchdog_;
};

}  // namespace strata::comm
