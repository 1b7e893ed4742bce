// src/device/backends.h — the factories of the Device backends, for the registry in device.cc.
//
// Each backend lives in its own file (host_device.cc, cuda_device.cc) and exposes only its
// factory here; callers reach backends by name through strata::create_device().
//
// Thread-safety: the factories may be called from any thread.
#pragma once

#include <memory>

#include "kernels/adam_math.h"
#include "strata/device.h"

namespace strata::device {

// The host-emulated accelerator; always built.
Result<std::unique_ptr<Device>> make_host_device(const DeviceOptions& options);

// The CUDA backend. In a build without the CUDA toolkit it answers an unavailable Status that
// says so; with no GPU present it answers "no CUDA device".
Result<std::unique_ptr<Device>> make_cuda_device(const DeviceOptions& options);

// The cudaStream_t behind a stream of the CUDA device, for kernels launched outside the device
// layer (the nn ops of src/model); nullptr for a stream of any other backend. Defined only in
// builds with the CUDA toolkit.
void* cuda_stream_handle(Stream& stream);

// The shared Adam math's hyper-parameters for the optimizer seam's AdamHyper.
adam::Hyper adam_hyper(const AdamHyper& h);

}  // namespace strata::device
