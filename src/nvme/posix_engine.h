// src/nvme/posix_engine.h — the pread/pwrite backend, for file systems without O_DIRECT or
// without kernel AIO. `threads` x `queue_depth` pool threads each carry one block_size
// piece at a time, so as many pieces are in flight as with the asynchronous backends.
// Short transfers continue from where they stopped; EAGAIN and EINTR are retried.
//
// Thread-safety: as IoEngine.
#pragma once

#include <memory>

#include "nvme/io_engine.h"

namespace strata::nvme {

// REQUIRES: validate_nvme_config(config) is OK.
Result<std::unique_ptr<IoEngine>> make_posix_engine(const NvmeConfig& config);

}  // namespace strata::nvme
