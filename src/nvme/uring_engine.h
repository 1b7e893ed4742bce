// src/nvme/uring_engine.h — the io_uring backend (liburing). One ring and one I/O thread per
// `threads`; each thread keeps up to `queue_depth` block_size pieces in flight, refilling
// as completions arrive, with optional registered (fixed) buffers and SQPOLL. The loop
// follows liburing's examples/io_uring-cp.c: one request record per submission, batch then
// submit once, reap everything ready, resubmit short transfers from where they stopped,
// retry EAGAIN, and drain before the rings are torn down.
//
// Thread-safety: as IoEngine.
#pragma once

#include <memory>

#include "nvme/io_engine.h"

namespace strata::nvme {

// REQUIRES: validate_nvme_config(config) is OK. Fails with kUnavailable when the kernel
// refuses io_uring (the message names the alternative engines).
Result<std::unique_ptr<IoEngine>> make_uring_engine(const NvmeConfig& config);

}  // namespace strata::nvme
