// src/nvme/aio_engine.h — the libaio backend (Linux native AIO). Same behaviour as the
// io_uring backend: one AIO context and I/O thread per `threads`, up to `queue_depth`
// block_size pieces in flight per thread, refilled as completions arrive, short transfers
// resubmitted, EAGAIN retried, drained before teardown. Completions and new work both wake
// the thread through one eventfd.
//
// Native AIO is only asynchronous on O_DIRECT files; with direct = false io_submit performs
// the transfer before it returns (capabilities().buffered_async is false, and creating the
// engine that way logs it once).
//
// Thread-safety: as IoEngine.
#pragma once

#include <memory>

#include "nvme/io_engine.h"

namespace strata::nvme {

// REQUIRES: validate_nvme_config(config) is OK.
Result<std::unique_ptr<IoEngine>> make_aio_engine(const NvmeConfig& config);

}  // namespace strata::nvme
