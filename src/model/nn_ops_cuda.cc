// The CUDA backend of the nn ops: launches kernels/nn_kernels.cu on the CUDA stream behind the
// device stream. Built with the CUDA toolkit; compiled, not run, by the test suite (no GPU on
// the CI machines) — the host backend's tests pin down the shared math.
#include <cuda_runtime_api.h>

#include "device/backends.h"
#include "kernels/nn_kernels.h"
#include "model/nn_ops.h"

namespace strata::nn {
namespace {

namespace k = kern::cuda::nn;

Status cuda_ok(cudaError_t e, const char* op) {
  if (e == cudaSuccess) return Status::OK();
  return internal_error(std::string("nn ") + op + ": CUDA launch failed: " + cudaGetErrorName(e) + " (" +
                        cudaGetErrorString(e) + ")");
}

const std::int32_t* ids(const DeviceRange& r) { return static_cast<const std::int32_t*>(r.address()); }
float* f32(const DeviceView& v) { return static_cast<float*>(v.address()); }

class CudaNnOps final : public NnOps {
 public:
  explicit CudaNnOps(Device& device) : NnOps(device) {}
  std::string_view backend() const override { return "cuda"; }

 protected:
  static Result<cudaStream_t> cuda_stream(Stream& s) {
    void* h = device::cuda_stream_handle(s);
    if (h == nullptr) return invalid_argument("nn ops: the stream is not a CUDA stream");
    return static_cast<cudaStream_t>(h);
  }

  Status embedding_forward_impl(DeviceView out, DeviceRange tokens, DeviceView wte, std::int64_t vocab_first,
                                DeviceView wpe, std::int64_t N, std::int64_t T, std::int64_t C, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    const auto rows = static_cast<std::int64_t>(wte.count()) / C;
    return cuda_ok(k::embedding_forward(out.address(), ids(tokens), wte.address(), vocab_first, rows,
                                        wpe.empty() ? nullptr : wpe.address(), out.dtype(), N, T, C, s),
                   "embedding forward");
  }
  Status embedding_backward_impl(DeviceView dwte, std::int64_t vocab_first, DeviceView dwpe, DeviceView dout,
                                 DeviceRange tokens, std::int64_t N, std::int64_t T, std::int64_t C,
                                 Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    const auto rows = static_cast<std::int64_t>(dwte.count()) / C;
    return cuda_ok(k::embedding_backward(dwte.address(), vocab_first, rows, dwpe.address(), dwte.dtype(), dout.address(),
                                         dout.dtype(), ids(tokens), N, T, C, s),
                   "embedding backward");
  }
  Status layernorm_forward_impl(DeviceView out, DeviceView mean, DeviceView rstd, DeviceView inp, DeviceView weight,
                                DeviceView bias, std::int64_t N, std::int64_t C, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::layernorm_forward(out.address(), f32(mean), f32(rstd), inp.address(), weight.address(),
                                        bias.address(), out.dtype(), N, C, s),
                   "layernorm forward");
  }
  Status layernorm_backward_impl(DeviceView dinp, DeviceView dweight, DeviceView dbias, DeviceView dout, DeviceView inp,
                                 DeviceView weight, DeviceView mean, DeviceView rstd, std::int64_t N, std::int64_t C,
                                 Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::layernorm_backward(dinp.address(), dweight.address(), dbias.address(), dweight.dtype(),
                                         dout.address(), inp.address(), weight.address(), f32(mean), f32(rstd),
                                         dout.dtype(), N, C, s),
                   "layernorm backward");
  }
  Status bias_broadcast_impl(DeviceView out, DeviceView bias, std::int64_t N, std::int64_t OC, bool accumulate,
                             Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::bias_broadcast(out.address(), bias.address(), out.dtype(), N, OC, accumulate, s),
                   accumulate ? "bias add" : "bias broadcast");
  }
  Status bias_backward_impl(DeviceView dbias, DeviceView dout, std::int64_t N, std::int64_t OC, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::bias_backward(dbias.address(), dbias.dtype(), dout.address(), dout.dtype(), N, OC, s),
                   "bias backward");
  }
  Status gelu_forward_impl(DeviceView out, DeviceView inp, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::gelu_forward(out.address(), inp.address(), inp.dtype(), static_cast<std::int64_t>(inp.count()), s),
                   "gelu forward");
  }
  Status gelu_backward_impl(DeviceView dinp, DeviceView inp, DeviceView dout, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::gelu_backward(dinp.address(), inp.address(), dout.address(), inp.dtype(),
                                    static_cast<std::int64_t>(inp.count()), s),
                   "gelu backward");
  }
  Status add_impl(DeviceView out, DeviceView a, DeviceView b, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::add(out.address(), a.address(), b.address(), a.dtype(), static_cast<std::int64_t>(a.count()), s),
                   "add");
  }
  Status softmax_causal_forward_impl(DeviceView att, DeviceView preatt, std::int64_t BH, std::int64_t T,
                                     Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::softmax_causal_forward(att.address(), preatt.address(), att.dtype(), BH, T, s),
                   "causal softmax forward");
  }
  Status softmax_causal_backward_impl(DeviceView dpreatt, DeviceView att, DeviceView datt, std::int64_t BH,
                                      std::int64_t T, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::softmax_causal_backward(dpreatt.address(), att.address(), datt.address(), att.dtype(), BH, T, s),
                   "causal softmax backward");
  }
  Status crossentropy_forward_impl(DeviceView losses, DeviceView logits, DeviceRange targets, std::int64_t N,
                                   std::int64_t V, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::crossentropy_forward(f32(losses), logits.address(), ids(targets), logits.dtype(), N, V, s),
                   "cross-entropy forward");
  }
  Status crossentropy_backward_impl(DeviceView dlogits, DeviceView logits, DeviceRange targets, float dloss,
                                    std::int64_t N, std::int64_t V, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(
        k::crossentropy_backward(dlogits.address(), logits.address(), ids(targets), dloss, logits.dtype(), N, V, s),
        "cross-entropy backward");
  }
  Status crossentropy_shard_stats_impl(DeviceView maxv, DeviceView target, DeviceView logits, DeviceRange targets,
                                      std::int64_t N, std::int64_t Vr, std::int64_t vocab_first, std::int64_t valid,
                                      Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::crossentropy_shard_stats(f32(maxv), f32(target), logits.address(), ids(targets), logits.dtype(),
                                               N, Vr, vocab_first, valid, s),
                   "cross-entropy shard stats");
  }
  Status crossentropy_shard_sumexp_impl(DeviceView sumexp, DeviceView logits, DeviceView maxv, std::int64_t N,
                                        std::int64_t Vr, std::int64_t valid, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::crossentropy_shard_sumexp(f32(sumexp), logits.address(), f32(maxv), logits.dtype(), N, Vr, valid, s),
                   "cross-entropy shard sum of exponentials");
  }
  Status crossentropy_shard_loss_impl(DeviceView losses, DeviceView maxv, DeviceView target, DeviceView sumexp,
                                      std::int64_t N, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::crossentropy_shard_loss(f32(losses), f32(maxv), f32(target), f32(sumexp), N, s),
                   "cross-entropy shard loss");
  }
  Status crossentropy_shard_backward_impl(DeviceView dlogits, DeviceView logits, DeviceRange targets, DeviceView maxv,
                                          DeviceView sumexp, float dloss, std::int64_t N, std::int64_t Vr,
                                          std::int64_t vocab_first, std::int64_t valid, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::crossentropy_shard_backward(dlogits.address(), logits.address(), ids(targets), f32(maxv),
                                                  f32(sumexp), dloss, logits.dtype(), N, Vr, vocab_first, valid, s),
                   "cross-entropy shard backward");
  }
  Status accumulate_sum_impl(DeviceView out, DeviceView x, float scale, Stream& stream) override {
    STRATA_ASSIGN_OR_RETURN(cudaStream_t s, cuda_stream(stream));
    return cuda_ok(k::accumulate_sum(f32(out), static_cast<const float*>(x.address()), scale,
                                     static_cast<std::int64_t>(x.count()), s),
                   "accumulate sum");
  }
};

}  // namespace

Result<std::unique_ptr<NnOps>> make_cuda_nn_ops(Device& device) {
  if (device.info().backend != "cuda") {
    return invalid_argument("nn ops: the CUDA kernels need a CUDA device, not '" + device.info().backend + "'");
  }
  return std::unique_ptr<NnOps>(new CudaNnOps(device));
}

}  // namespace strata::nn
