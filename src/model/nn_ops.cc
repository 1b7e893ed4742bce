// The backend-independent half of the nn op seam: argument checks shared by every backend and
// the choice of backend by device.
#include "model/nn_ops.h"

#include <cmath>
#include <string>

namespace strata::nn {

namespace {

std::string n_str(std::int64_t v) { return std::to_string(v); }

bool overlaps(const void* a, std::size_t an, const void* b, std::size_t bn) {
  auto pa = reinterpret_cast<std::uintptr_t>(a);
  auto pb = reinterpret_cast<std::uintptr_t>(b);
  return an != 0 && bn != 0 && pa < pb + bn && pb < pa + an;
}

// Collects the checks of one op call; the first failure wins and names the op and argument.
class Check {
 public:
  Check(const Device& device, std::string_view op) : device_(device), op_(op) {}

  // A positive dimension.
  Check& dim(std::string_view what, std::int64_t v) {
    if (ok() && v <= 0) fail(std::string(what) + " is " + n_str(v) + "; it must be positive");
    return *this;
  }
  Check& cond(bool c, const std::string& message) {
    if (ok() && !c) fail(message);
    return *this;
  }
  // A view of exactly `count` elements on this device.
  Check& view(std::string_view what, const DeviceView& v, std::int64_t count) {
    if (!ok()) return *this;
    if (v.device() != &device_) {
      fail(std::string(what) + " is not memory of this op's device");
    } else if (static_cast<std::int64_t>(v.count()) != count) {
      fail(std::string(what) + " has " + std::to_string(v.count()) + " elements; expected " + n_str(count));
    }
    return *this;
  }
  Check& dtype(std::string_view what, const DeviceView& v, DType t) {
    if (ok() && v.dtype() != t) {
      fail(std::string(what) + " is " + std::string(dtype_name(v.dtype())) + "; expected " +
           std::string(dtype_name(t)));
    }
    return *this;
  }
  // A gradient: fp32 or the activation type.
  Check& grad_dtype(std::string_view what, const DeviceView& v, DType act) {
    if (ok() && v.dtype() != DType::kF32 && v.dtype() != act) {
      fail(std::string(what) + " is " + std::string(dtype_name(v.dtype())) + "; gradients are fp32 or " +
           std::string(dtype_name(act)) + " (the activation type)");
    }
    return *this;
  }
  // Token ids: 4 bytes each.
  Check& ids(std::string_view what, const DeviceRange& r, std::int64_t count) {
    if (!ok()) return *this;
    if (r.device() != &device_) {
      fail(std::string(what) + " is not memory of this op's device");
    } else if (static_cast<std::int64_t>(r.bytes()) != count * 4) {
      fail(std::string(what) + " has " + std::to_string(r.bytes()) + " bytes; expected " + n_str(count) +
           " int32 ids (" + n_str(count * 4) + " bytes)");
    } else if (reinterpret_cast<std::uintptr_t>(r.address()) % 4 != 0) {
      fail(std::string(what) + " is not 4-byte aligned");
    }
    return *this;
  }
  // Two arguments must not overlap, except when `same_ok` and they are the very same view.
  Check& apart(std::string_view a_name, const void* a, std::size_t an, std::string_view b_name, const void* b,
               std::size_t bn, bool same_ok = false) {
    if (!ok()) return *this;
    if (same_ok && a == b && an == bn) return *this;
    if (overlaps(a, an, b, bn)) {
      fail(std::string(a_name) + " overlaps " + std::string(b_name) +
           (same_ok ? " without being the same view" : "") + "; give it its own memory");
    }
    return *this;
  }
  Check& apart(std::string_view a_name, const DeviceView& a, std::string_view b_name, const DeviceView& b,
               bool same_ok = false) {
    return apart(a_name, a.address(), a.bytes(), b_name, b.address(), b.bytes(), same_ok);
  }
  Check& apart(std::string_view a_name, const DeviceView& a, std::string_view b_name, const DeviceRange& b) {
    return apart(a_name, a.address(), a.bytes(), b_name, b.address(), b.bytes(), false);
  }
  Check& stream(const Stream& s) {
    if (ok() && &s.device() != &device_) fail("the stream belongs to another device");
    return *this;
  }

  bool ok() const { return status_.ok(); }
  Status status() const { return status_; }

 private:
  void fail(const std::string& message) { status_ = invalid_argument("nn " + std::string(op_) + ": " + message); }

  const Device& device_;
  std::string_view op_;
  Status status_;
};

}  // namespace

Status NnOps::embedding_forward(DeviceView out, DeviceRange tokens, DeviceView wte, DeviceView wpe, std::int64_t N,
                                std::int64_t T, std::int64_t C, Stream& stream) {
  Check c(device(), "embedding forward");
  c.cond(!wpe.empty(), "wpe is empty");
  if (!c.ok()) return c.status();
  return embedding_shard_forward(out, tokens, wte, 0, wpe, N, T, C, stream);
}

Status NnOps::embedding_shard_forward(DeviceView out, DeviceRange tokens, DeviceView wte, std::int64_t vocab_first,
                                      DeviceView wpe, std::int64_t N, std::int64_t T, std::int64_t C, Stream& stream) {
  Check c(device(), "embedding forward");
  c.stream(stream).dim("N", N).dim("T", T).dim("C", C).cond(vocab_first >= 0, "vocab_first is negative");
  c.cond(N % T == 0, "N = " + n_str(N) + " is not a multiple of T = " + n_str(T));
  c.cond(wte.count() % static_cast<std::size_t>(C) == 0 && wte.count() > 0, "wte is not (V, C) with C = " + n_str(C));
  c.view("out", out, N * C).ids("tokens", tokens, N).view("wte", wte, static_cast<std::int64_t>(wte.count()));
  c.dtype("wte", wte, out.dtype()).apart("out", out, "wte", wte).apart("out", out, "tokens", tokens);
  if (!wpe.empty()) {
    c.cond(wpe.count() % static_cast<std::size_t>(C) == 0 && static_cast<std::int64_t>(wpe.count()) >= T * C,
           "wpe must be (P, C) with P >= T = " + n_str(T));
    c.view("wpe", wpe, static_cast<std::int64_t>(wpe.count())).dtype("wpe", wpe, out.dtype()).apart("out", out, "wpe", wpe);
  }
  if (!c.ok()) return c.status();
  return embedding_forward_impl(out, tokens, wte, vocab_first, wpe, N, T, C, stream);
}

Status NnOps::embedding_backward(DeviceView dwte, DeviceView dwpe, DeviceView dout, DeviceRange tokens,
                                 std::int64_t N, std::int64_t T, std::int64_t C, Stream& stream) {
  return embedding_shard_backward(dwte, 0, dwpe, dout, tokens, N, T, C, stream);
}

Status NnOps::embedding_shard_backward(DeviceView dwte, std::int64_t vocab_first, DeviceView dwpe, DeviceView dout,
                                       DeviceRange tokens, std::int64_t N, std::int64_t T, std::int64_t C,
                                       Stream& stream) {
  Check c(device(), "embedding backward");
  c.stream(stream).dim("N", N).dim("T", T).dim("C", C).cond(vocab_first >= 0, "vocab_first is negative");
  c.cond(N % T == 0, "N = " + n_str(N) + " is not a multiple of T = " + n_str(T));
  c.cond(dwte.count() % static_cast<std::size_t>(C) == 0 && dwte.count() > 0, "dwte is not (V, C) with C = " + n_str(C));
  c.cond(dwpe.count() % static_cast<std::size_t>(C) == 0 && static_cast<std::int64_t>(dwpe.count()) >= T * C,
         "dwpe must be (P, C) with P >= T = " + n_str(T));
  c.view("dout", dout, N * C).ids("tokens", tokens, N).view("dwte", dwte, static_cast<std::int64_t>(dwte.count()));
  c.view("dwpe", dwpe, static_cast<std::int64_t>(dwpe.count()));
  c.grad_dtype("dwte", dwte, dout.dtype()).grad_dtype("dwpe", dwpe, dout.dtype());
  c.cond(dwte.dtype() == dwpe.dtype(), "dwte and dwpe must have the same dtype");
  c.apart("dwte", dwte, "dwpe", dwpe).apart("dwte", dwte, "dout", dout).apart("dwpe", dwpe, "dout", dout);
  c.apart("dwte", dwte, "tokens", tokens).apart("dwpe", dwpe, "tokens", tokens);
  if (!c.ok()) return c.status();
  return embedding_backward_impl(dwte, vocab_first, dwpe, dout, tokens, N, T, C, stream);
}

Status NnOps::layernorm_forward(DeviceView out, DeviceView mean, DeviceView rstd, DeviceView inp, DeviceView weight,
                                DeviceView bias, std::int64_t N, std::int64_t C, Stream& stream) {
  Check c(device(), "layernorm forward");
  c.stream(stream).dim("N", N).dim("C", C);
  c.view("out", out, N * C).view("mean", mean, N).view("rstd", rstd, N).view("inp", inp, N * C);
  c.view("weight", weight, C).view("bias", bias, C);
  c.dtype("inp", inp, out.dtype()).dtype("weight", weight, out.dtype()).dtype("bias", bias, out.dtype());
  c.dtype("mean", mean, DType::kF32).dtype("rstd", rstd, DType::kF32);
  c.apart("out", out, "inp", inp).apart("out", out, "weight", weight).apart("out", out, "bias", bias);
  c.apart("mean", mean, "rstd", rstd).apart("mean", mean, "out", out).apart("rstd", rstd, "out", out);
  c.apart("mean", mean, "inp", inp).apart("rstd", rstd, "inp", inp);
  if (!c.ok()) return c.status();
  return layernorm_forward_impl(out, mean, rstd, inp, weight, bias, N, C, stream);
}

Status NnOps::layernorm_backward(DeviceView dinp, DeviceView dweight, DeviceView dbias, DeviceView dout,
                                 DeviceView inp, DeviceView weight, DeviceView mean, DeviceView rstd, std::int64_t N,
                                 std::int64_t C, Stream& stream) {
  Check c(device(), "layernorm backward");
  c.stream(stream).dim("N", N).dim("C", C);
  c.view("dinp", dinp, N * C).view("dweight", dweight, C).view("dbias", dbias, C).view("dout", dout, N * C);
  c.view("inp", inp, N * C).view("weight", weight, C).view("mean", mean, N).view("rstd", rstd, N);
  const DType t = dout.dtype();
  c.dtype("dinp", dinp, t).dtype("inp", inp, t).dtype("weight", weight, t);
  c.grad_dtype("dweight", dweight, t).grad_dtype("dbias", dbias, t);
  c.cond(dweight.dtype() == dbias.dtype(), "dweight and dbias must have the same dtype");
  c.dtype("mean", mean, DType::kF32).dtype("rstd", rstd, DType::kF32);
  c.apart("dinp", dinp, "dout", dout).apart("dinp", dinp, "inp", inp).apart("dinp", dinp, "dweight", dweight);
  c.apart("dinp", dinp, "dbias", dbias).apart("dweight", dweight, "dbias", dbias);
  c.apart("dweight", dweight, "dout", dout).apart("dbias", dbias, "dout", dout);
  c.apart("dweight", dweight, "inp", inp).apart("dbias", dbias, "inp", inp);
  c.apart("dweight", dweight, "weight", weight).apart("dbias", dbias, "weight", weight);
  if (!c.ok()) return c.status();
  return layernorm_backward_impl(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C, stream);
}

Status NnOps::bias_broadcast(DeviceView out, DeviceView bias, std::int64_t N, std::int64_t OC, Stream& stream) {
  Check c(device(), "bias broadcast");
  c.stream(stream).dim("N", N).dim("OC", OC).view("out", out, N * OC).view("bias", bias, OC);
  c.dtype("bias", bias, out.dtype()).apart("out", out, "bias", bias);
  if (!c.ok()) return c.status();
  return bias_broadcast_impl(out, bias, N, OC, false, stream);
}

Status NnOps::bias_add(DeviceView out, DeviceView bias, std::int64_t N, std::int64_t OC, Stream& stream) {
  Check c(device(), "bias add");
  c.stream(stream).dim("N", N).dim("OC", OC).view("out", out, N * OC).view("bias", bias, OC);
  c.dtype("bias", bias, out.dtype()).apart("out", out, "bias", bias);
  if (!c.ok()) return c.status();
  return bias_broadcast_impl(out, bias, N, OC, true, stream);
}

Status NnOps::bias_backward(DeviceView dbias, DeviceView dout, std::int64_t N, std::int64_t OC, Stream& stream) {
  Check c(device(), "bias backward");
  c.stream(stream).dim("N", N).dim("OC", OC).view("dbias", dbias, OC).view("dout", dout, N * OC);
  c.grad_dtype("dbias", dbias, dout.dtype()).apart("dbias", dbias, "dout", dout);
  if (!c.ok()) return c.status();
  return bias_backward_impl(dbias, dout, N, OC, stream);
}

Status NnOps::gelu_forward(DeviceView out, DeviceView inp, Stream& stream) {
  Check c(device(), "gelu forward");
  const auto n = static_cast<std::int64_t>(inp.count());
  c.stream(stream).dim("count", n).view("out", out, n).view("inp", inp, n).dtype("out", out, inp.dtype());
  c.apart("out", out, "inp", inp, true);
  if (!c.ok()) return c.status();
  return gelu_forward_impl(out, inp, stream);
}

Status NnOps::gelu_backward(DeviceView dinp, DeviceView inp, DeviceView dout, Stream& stream) {
  Check c(device(), "gelu backward");
  const auto n = static_cast<std::int64_t>(inp.count());
  c.stream(stream).dim("count", n).view("dinp", dinp, n).view("inp", inp, n).view("dout", dout, n);
  c.dtype("dinp", dinp, inp.dtype()).dtype("dout", dout, inp.dtype());
  c.apart("dinp", dinp, "dout", dout, true).apart("dinp", dinp, "inp", inp);
  if (!c.ok()) return c.status();
  return gelu_backward_impl(dinp, inp, dout, stream);
}

Status NnOps::add(DeviceView out, DeviceView a, DeviceView b, Stream& stream) {
  Check c(device(), "add");
  const auto n = static_cast<std::int64_t>(a.count());
  c.stream(stream).dim("count", n).view("out", out, n).view("a", a, n).view("b", b, n);
  c.dtype("out", out, a.dtype()).dtype("b", b, a.dtype());
  c.apart("out", out, "a", a, true).apart("out", out, "b", b, true);
  if (!c.ok()) return c.status();
  return add_impl(out, a, b, stream);
}

Status NnOps::softmax_causal_forward(DeviceView att, DeviceView preatt, std::int64_t BH, std::int64_t T,
                                     Stream& stream) {
  Check c(device(), "causal softmax forward");
  c.stream(stream).dim("BH", BH).dim("T", T).view("att", att, BH * T * T).view("preatt", preatt, BH * T * T);
  c.dtype("att", att, preatt.dtype()).apart("att", att, "preatt", preatt, true);
  if (!c.ok()) return c.status();
  return softmax_causal_forward_impl(att, preatt, BH, T, stream);
}

Status NnOps::softmax_causal_backward(DeviceView dpreatt, DeviceView att, DeviceView datt, std::int64_t BH,
                                      std::int64_t T, Stream& stream) {
  Check c(device(), "causal softmax backward");
  c.stream(stream).dim("BH", BH).dim("T", T).view("dpreatt", dpreatt, BH * T * T).view("att", att, BH * T * T);
  c.view("datt", datt, BH * T * T).dtype("dpreatt", dpreatt, att.dtype()).dtype("datt", datt, att.dtype());
  c.apart("dpreatt", dpreatt, "datt", datt, true).apart("dpreatt", dpreatt, "att", att);
  if (!c.ok()) return c.status();
  return softmax_causal_backward_impl(dpreatt, att, datt, BH, T, stream);
}

Status NnOps::crossentropy_forward(DeviceView losses, DeviceView logits, DeviceRange targets, std::int64_t N,
                                   std::int64_t V, Stream& stream) {
  Check c(device(), "cross-entropy forward");
  c.stream(stream).dim("N", N).dim("V", V).view("losses", losses, N).view("logits", logits, N * V);
  c.ids("targets", targets, N).dtype("losses", losses, DType::kF32);
  c.apart("losses", losses, "logits", logits).apart("losses", losses, "targets", targets);
  if (!c.ok()) return c.status();
  return crossentropy_forward_impl(losses, logits, targets, N, V, stream);
}

Status NnOps::crossentropy_backward(DeviceView dlogits, DeviceView logits, DeviceRange targets, float dloss,
                                    std::int64_t N, std::int64_t V, Stream& stream) {
  Check c(device(), "cross-entropy backward");
  c.stream(stream).dim("N", N).dim("V", V).view("dlogits", dlogits, N * V).view("logits", logits, N * V);
  c.ids("targets", targets, N).dtype("dlogits", dlogits, logits.dtype());
  c.apart("dlogits", dlogits, "logits", logits, true).apart("dlogits", dlogits, "targets", targets);
  c.cond(std::isfinite(dloss), "dloss is not finite");
  if (!c.ok()) return c.status();
  return crossentropy_backward_impl(dlogits, logits, targets, dloss, N, V, stream);
}

namespace {

// The shape checks the vocab-parallel cross-entropy ops share.
void check_shard(Check& c, std::int64_t N, std::int64_t Vr, std::int64_t vocab_first, std::int64_t valid) {
  c.dim("N", N).dim("Vr", Vr).cond(vocab_first >= 0, "vocab_first is negative");
  c.cond(valid >= 0 && valid <= Vr, "valid = " + n_str(valid) + " is not in [0, Vr = " + n_str(Vr) + "]");
}

}  // namespace

Status NnOps::crossentropy_shard_stats(DeviceView maxv, DeviceView target, DeviceView logits, DeviceRange targets,
                                       std::int64_t N, std::int64_t Vr, std::int64_t vocab_first, std::int64_t valid,
                                       Stream& stream) {
  Check c(device(), "cross-entropy shard stats");
  check_shard(c.stream(stream), N, Vr, vocab_first, valid);
  c.view("maxv", maxv, N).view("target", target, N).view("logits", logits, N * Vr).ids("targets", targets, N);
  c.dtype("maxv", maxv, DType::kF32).dtype("target", target, DType::kF32).apart("maxv", maxv, "target", target);
  c.apart("maxv", maxv, "logits", logits).apart("target", target, "logits", logits);
  if (!c.ok()) return c.status();
  return crossentropy_shard_stats_impl(maxv, target, logits, targets, N, Vr, vocab_first, valid, stream);
}

Status NnOps::crossentropy_shard_sumexp(DeviceView sumexp, DeviceView logits, DeviceView maxv, std::int64_t N,
                                        std::int64_t Vr, std::int64_t valid, Stream& stream) {
  Check c(device(), "cross-entropy shard sum of exponentials");
  check_shard(c.stream(stream), N, Vr, 0, valid);
  c.view("sumexp", sumexp, N).view("logits", logits, N * Vr).view("maxv", maxv, N);
  c.dtype("sumexp", sumexp, DType::kF32).dtype("maxv", maxv, DType::kF32);
  c.apart("sumexp", sumexp, "logits", logits).apart("sumexp", sumexp, "maxv", maxv);
  if (!c.ok()) return c.status();
  return crossentropy_shard_sumexp_impl(sumexp, logits, maxv, N, Vr, valid, stream);
}

Status NnOps::crossentropy_shard_loss(DeviceView losses, DeviceView maxv, DeviceView target, DeviceView sumexp,
                                      std::int64_t N, Stream& stream) {
  Check c(device(), "cross-entropy shard loss");
  c.stream(stream).dim("N", N).view("losses", losses, N).view("maxv", maxv, N).view("target", target, N);
  c.view("sumexp", sumexp, N).dtype("losses", losses, DType::kF32).dtype("maxv", maxv, DType::kF32);
  c.dtype("target", target, DType::kF32).dtype("sumexp", sumexp, DType::kF32);
  if (!c.ok()) return c.status();
  return crossentropy_shard_loss_impl(losses, maxv, target, sumexp, N, stream);
}

Status NnOps::crossentropy_shard_backward(DeviceView dlogits, DeviceView logits, DeviceRange targets,
                                          DeviceView maxv, DeviceView sumexp, float dloss, std::int64_t N,
                                          std::int64_t Vr, std::int64_t vocab_first, std::int64_t valid,
                                          Stream& stream) {
  Check c(device(), "cross-entropy shard backward");
  check_shard(c.stream(stream), N, Vr, vocab_first, valid);
  c.view("dlogits", dlogits, N * Vr).view("logits", logits, N * Vr).ids("targets", targets, N);
  c.view("maxv", maxv, N).view("sumexp", sumexp, N).dtype("dlogits", dlogits, logits.dtype());
  c.dtype("maxv", maxv, DType::kF32).dtype("sumexp", sumexp, DType::kF32);
  c.apart("dlogits", dlogits, "logits", logits, true).apart("dlogits", dlogits, "targets", targets);
  c.cond(std::isfinite(dloss), "dloss is not finite");
  if (!c.ok()) return c.status();
  return crossentropy_shard_backward_impl(dlogits, logits, targets, maxv, sumexp, dloss, N, Vr, vocab_first, valid,
                                          stream);
}

Status NnOps::accumulate_sum(DeviceView out, DeviceView x, float scale, Stream& stream) {
  Check c(device(), "accumulate sum");
  const auto n = static_cast<std::int64_t>(x.count());
  c.stream(stream).dim("count", n).view("out", out, 1).view("x", x, n);
  c.dtype("out", out, DType::kF32).dtype("x", x, DType::kF32).apart("out", out, "x", x);
  c.cond(std::isfinite(scale), "scale is not finite");
  if (!c.ok()) return c.status();
  return accumulate_sum_impl(out, x, scale, stream);
}

Result<std::unique_ptr<NnOps>> make_nn_ops(Device& device) {
  const std::string& backend = device.info().backend;
  if (backend == "host") return make_host_nn_ops(device);
  if (backend == "cuda") return make_cuda_nn_ops(device);
  return unavailable("nn ops: no kernels for device backend '" + backend + "' (known: host, cuda)");
}

#if !defined(STRATA_HAVE_CUDA)
Result<std::unique_ptr<NnOps>> make_cuda_nn_ops(Device&) {
  return unavailable("nn ops: strata was built without the CUDA toolkit, so the CUDA nn kernels are absent");
}
#endif

}  // namespace strata::nn
