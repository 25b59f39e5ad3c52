// conv2d_fwd's Autograd kernel, in C++ (CPU and CUDA alike; the Triton ops keep the Python one of
// fastops/ops/_autograd.py).
//
// Why C++: a conv2d layer's fwd + bwd through the Python kernel spent about 90 us of Python per
// step (the dispatcher's trip into Python, autograd.Function.apply with setup_context, the Python
// backward and conv2d_bwd's own Python Autograd kernel), against torch's ~45 us for the whole
// convolution_backward bookkeeping: 10-25% of a small layer (N8 C32 16x16 3x3 runs in ~0.8 ms) and
// the difference between beating oneDNN and losing to it. Here the forward records one CppNode and
// the backward calls conv2d_bwd below autograd: no Python on either pass.
//
// The math is the Python kernel's (fastops/ops/conv2d.py: setup_context / backward):
//   y = conv(x, w) + b (then max(y, 0) when relu)
//   dL/dx, dL/dw, dL/db = conv2d_bwd(g), with g = dL/dy zeroed where y <= 0 under relu (NaN y passes
//   g on, as threshold_backward does).
// What stays in Python: the backward op's own derivative (conv2d_bwd's Autograd kernel, for double
// backward), vmap and autocast. A double backward works because, under create_graph, this backward
// calls conv2d_bwd through the full dispatcher (its Python Autograd kernel records the node), and
// without it calls the kernel directly.
//
// Under a torch.func transform a C++ autograd::Function cannot run (functorch refuses it): the
// kernel then returns torch's own differentiable convolution, in the op's layout, which functorch
// transforms itself (jacrev, jvp, vmap of grad), as the Python kernel returns the op's composition.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "fastops.h"

#include <array>
#include <optional>

namespace fastops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Conv2dFwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, bool);
using Conv2dBwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&, at::IntArrayRef,
                                                                    at::IntArrayRef, at::IntArrayRef, int64_t,
                                                                    std::array<bool, 3>);

const c10::TypedOperatorHandle<Conv2dFwdSig>& fwd_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastops::conv2d_fwd", "").typed<Conv2dFwdSig>();
  return op;
}

const c10::TypedOperatorHandle<Conv2dBwdSig>& bwd_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastops::conv2d_bwd", "").typed<Conv2dBwdSig>();
  return op;
}

struct Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, c10::DispatchKeySet ks, const at::Tensor& x, const at::Tensor& w,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups, bool relu) {
    at::Tensor y;
    {
      const at::AutoDispatchBelowADInplaceOrView below;
      y = fwd_op().redispatch(ks & c10::after_autograd_keyset, x, w, bias, stride, padding, dilation, groups, relu);
    }
    ctx->save_for_backward({x, w, relu ? y : at::Tensor()});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &y = saved[2];
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    at::Tensor g = grads[0];
    // threshold_backward is torch's own ReLU backward: one pass, where at::where(y <= 0, 0, g) made a
    // bool mask and took a scalar-promotion path (280 us against 20 us at 64 x 16 x 8 x 8, 2-core Xeon).
    if (ctx->saved_data["relu"].toBool()) g = at::threshold_backward(g, y, 0);
    // needs_input_grad counts the tensor inputs only: x, w, then the bias when there is one.
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    variable_list out(9);  // one per forward argument after ctx: ks, x, w, bias, stride ... relu
    if (!mask[0] && !mask[1] && !mask[2]) return out;
    const auto stride = ctx->saved_data["stride"].toIntVector(), padding = ctx->saved_data["padding"].toIntVector(),
               dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    std::tuple<at::Tensor, at::Tensor, at::Tensor> r;
    if (c10::GradMode::is_enabled()) {
      r = bwd_op().call(g, x, w, stride, padding, dilation, groups, mask);  // create_graph: differentiable
    } else {
      const at::AutoDispatchBelowADInplaceOrView below;
      r = bwd_op().call(g, x, w, stride, padding, dilation, groups, mask);
    }
    if (mask[0]) out[1] = std::get<0>(r);
    if (mask[1]) out[2] = std::get<1>(r);
    if (mask[2]) out[3] = std::get<2>(r);
    return out;
  }
};

// torch._C._are_functorch_transforms_active: a transform's dynamic layer keys are in the thread's
// included set while it runs (ATen/functorch's own header cannot be included: it needs nlohmann/json).
bool functorch_active() {
  const c10::DispatchKeySet included = c10::impl::tls_local_dispatch_key_set().included_;
  return included.has(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) ||
         included.has(c10::DispatchKey::FuncTorchDynamicLayerBackMode);
}

// Whether along H or W every output position's taps all land in the zero padding (the Python
// sees_only_padding in fastops/ops/conv2d.py, which says why it matters).
bool sees_only_padding(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation) {
  for (int i = 0; i < 2; ++i) {
    const int64_t size = x.size(2 + i), k = w.size(2 + i), s = stride[i], p = padding[i], d = dilation[i];
    const int64_t out = (size + 2 * p - d * (k - 1) - 1) / s + 1;
    bool reads = false;
    for (int64_t j = 0; j < k && !reads; ++j) {
      // tap j of output o reads o s - p + j d; the first o whose read is at or past index 0:
      const int64_t before = p - j * d;
      const int64_t o = before <= 0 ? 0 : (before + s - 1) / s;
      reads = o < out && o * s - p + j * d < size;
    }
    if (!reads) return true;
  }
  return false;
}

bool any_requires_grad(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  return x.requires_grad() || w.requires_grad() || (bias.has_value() && bias->defined() && bias->requires_grad());
}

at::Tensor conv2d_fwd_autograd(c10::DispatchKeySet ks, const at::Tensor& x, const at::Tensor& w,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool relu) {
  if (!c10::GradMode::is_enabled() || !any_requires_grad(x, w, bias)) {
    const at::AutoDispatchBelowADInplaceOrView below;
    return fwd_op().redispatch(ks & c10::after_autograd_keyset, x, w, bias, stride, padding, dilation, groups, relu);
  }
  if (functorch_active()) {
    // The op's checks first (the same error as outside the transform), then torch's convolution.
    const auto geometry = check_conv2d_args("conv2d_fwd", x, w, stride, padding, dilation, groups);
    check_conv2d_bias("conv2d_fwd", geometry, x, bias);
    const int64_t zero[2] = {0, 0};
    at::Tensor y;
    if (x.is_cpu() && sees_only_padding(x, w, stride, padding, dilation)) {
      // torch 2.14's oneDNN CPU conv segfaults here (fastops/ops/conv2d.py: sees_only_padding); the
      // same conv on the explicitly padded input runs.
      const at::Tensor xp = at::constant_pad_nd(x, {padding[1], padding[1], padding[0], padding[0]}, 0)
                                .contiguous(x.suggest_memory_format());
      y = at::convolution(xp, w, bias, stride, zero, dilation, false, zero, groups);
    } else {
      y = at::convolution(x, w, bias, stride, padding, dilation, false, zero, groups);
    }
    if (relu) y = at::relu(y);
    return in_memory_format(y, conv_memory_format(x, w, stride, padding, dilation, groups));
  }
  return Conv2dFunction::apply(ks, x, w, bias, stride, padding, dilation, groups, relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) { m.impl("conv2d_fwd", &conv2d_fwd_autograd); }

}  // namespace fastops
