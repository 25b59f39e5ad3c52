// The one TORCH_LIBRARY(fastops, m): every schema of the library, in one screen.
//
// Conventions (design.md): forward and backward are separate ops (<stem>_fwd, <stem>_bwd); an op
// that writes into an argument ends in `_` and declares it with Tensor(a!). Each
// csrc/cpu/<stem>.cpp and csrc/cuda/<stem>.cu registers only its own CPU / CUDA kernels; the fake
// (meta) kernels live in fastops/ops/<stem>.py.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DispatchKeySet.h>
#include <torch/library.h>

#include "fastops.h"

#include <vector>

TORCH_LIBRARY(fastops, m) {
  // ---- softmax cross-entropy ------------------------------------------------------------------
  // logits (C,), (N, C) or (N, C, d1..dk); target int64 class indices of logits' shape without
  // the class dim, or float class probabilities of logits' shape. `loss` has the target-index
  // shape, `stats` (2, *that shape), both in the accumulation dtype (float32 for fp16/bf16/fp32,
  // float64 for fp64): `loss` is the unreduced (weighted, smoothed) loss per row; stats[0] is the
  // row max m and stats[1] = log sum exp(x - m), kept apart so the backward's x - m is exact.
  m.def(
      "cross_entropy_fwd(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing) -> (Tensor loss, Tensor stats)");
  // grad_loss: per-row upstream gradient, shape of `loss` (the reduction's 1/denominator already
  // folded in). Returns d loss / d logits, logits' shape and dtype.
  m.def(
      "cross_entropy_bwd(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight, Tensor stats, "
      "int ignore_index, float label_smoothing) -> Tensor");
  // Same, written over `logits` (contiguous) to save the N x C gradient allocation.
  m.def(
      "cross_entropy_bwd_(Tensor grad_loss, Tensor(a!) logits, Tensor target, Tensor? weight, "
      "Tensor stats, int ignore_index, float label_smoothing) -> ()");

  // ---- conv2d ---------------------------------------------------------------------------------
  // x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or None -> y (N, K, P, Q) in x's dtype,
  // contiguous (NCHW); P = (H + 2 pad_h - dil_h (R - 1) - 1) / stride_h + 1, likewise Q.
  // relu: apply max(y, 0) after the bias, in the kernel epilogue. Padding is symmetric here:
  // 'same' with an odd total and padding_mode != 'zeros' are handled in Python before the op.
  m.def(
      "conv2d_fwd(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
      "int groups, bool relu) -> Tensor");
  // grad_out (N, K, P, Q) (the ReLU mask already applied). output_mask selects (grad_x, grad_weight,
  // grad_bias); a masked-off output is an empty (0,) tensor, so the return types stay plain Tensors.
  m.def(
      "conv2d_bwd(Tensor grad_out, Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
      "int groups, bool[3] output_mask) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");

  // ---- fused linear + ReLU -----------------------------------------------------------------------
  // x (*, K), weight (N, K), bias (N,) or None, one floating dtype and device. out = relu(x W^T + b),
  // shape (*, N), x's dtype. Backward needs only x, weight and out (out > 0 is the ReLU mask).
  m.def("linear_relu_fwd(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // grad_out and out (*, N). Returns grad_x (*, K), grad_weight (N, K) and grad_bias (N,), all in x's
  // dtype; an output masked off by output_mask is an empty (0,) tensor and its matrix product is not
  // run (a first layer's x, a frozen weight: torch's linear backward skips them too).
  m.def(
      "linear_relu_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor out, "
      "bool[3] output_mask=[True, True, True]) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  // ---- fused linear + cross-entropy (the LM loss head) ------------------------------------------
  // x (N, H), weight (V, H), bias (V,) or None, target (N,) int64, class_weight (V,) or None; logits
  // z = softcap(x W^T + b) are formed chunk by chunk (no (N, V) tensor). reduction: 0 none, 1 mean,
  // 2 sum. softcap 0.0: no cap. chunk_rows 0: chosen from the shapes. loss (N,) or () and stats
  // (2, N) (row max, log sum exp(z - max)) in the accumulation dtype. compute_grad with a reduction:
  // grad_x / grad_weight / grad_bias of the reduced loss from the same sweep, else empty (0,).
  m.def(
      "linear_cross_entropy_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor target, Tensor? class_weight, "
      "int ignore_index, float label_smoothing, float softcap, float z_loss, int reduction, int chunk_rows, "
      "bool compute_grad) -> (Tensor loss, Tensor stats, Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  // grad_loss has loss's shape; returns d/dx, d/dweight, d/dbias ((0,) without bias) of sum(grad_loss * loss),
  // recomputing the chunk logits.
  m.def(
      "linear_cross_entropy_bwd(Tensor grad_loss, Tensor x, Tensor weight, Tensor? bias, Tensor target, "
      "Tensor? class_weight, Tensor stats, int ignore_index, float label_smoothing, float softcap, float z_loss, "
      "int reduction, int chunk_rows) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  // ---- Adam / AdamW step ----------------------------------------------------------------------
  // One in-place step over lists of equally long lists (one entry per parameter, all on one device
  // and of one dtype; state in the parameter's dtype). max_exp_avg_sqs is empty unless amsgrad.
  // state_steps: one float32 tensor of one element per parameter, on the parameters' device: the
  // step count before this step; the op adds 1 (not when found_inf is nonzero). lr_tensor, when
  // given, replaces lr (one element, read on the device: no host sync). grad_scale: the grads are
  // divided by it; found_inf (one element): when nonzero nothing is written at all. Both as in
  // torch's GradScaler contract for fused optimizers. decoupled_weight_decay: AdamW, else Adam's L2.
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, float lr, Tensor? lr_tensor, float beta1, "
      "float beta2, float weight_decay, float eps, bool amsgrad, bool maximize, bool decoupled_weight_decay, "
      "Tensor? grad_scale, Tensor? found_inf) -> ()");
}

namespace {

// ADInplaceOrView kernel of every op that writes into an argument: run the op, then bump the
// version counter of each tensor the schema marks Tensor(a!) / Tensor(a!)[]. This is what ATen's
// generated ADInplaceOrView kernels do for aten's in-place ops, and what lets autograd notice that a
// tensor it saved for backward was overwritten ("one of the variables needed for gradient
// computation has been modified by an inplace operation"); the dispatcher's default for a custom op
// at this key is a fallthrough, which would let a backward silently read the new values. One boxed
// kernel reads the mutations from the schema, so the schema above stays the only place they are
// declared. Tensors made under inference_mode have no counter and never reach this key.
void bump_written_versions(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t first = stack->size() - args.size();
  std::vector<at::Tensor> written;
  bool any_tensor = false;
  const char* first_list = nullptr;  // named in the error when every list is empty
  for (size_t i = 0; i < args.size(); ++i) {
    const c10::IValue& v = (*stack)[first + i];
    const c10::AliasInfo* alias = args[i].alias_info();
    const bool write = alias != nullptr && alias->isWrite();
    if (v.isTensor()) {
      any_tensor = true;
      if (write) written.push_back(v.toTensor());
    } else if (v.isTensorList()) {
      if (first_list == nullptr) first_list = args[i].name().c_str();
      for (const at::Tensor& t : v.toTensorVector()) {
        any_tensor = true;
        if (write) written.push_back(t);
      }
    }
  }
  // A call whose only tensor arguments are empty lists carries no backend key: say so by name
  // instead of the dispatcher's "There were no tensor arguments to this function".
  FASTOPS_CHECK_VALUE(any_tensor, op.schema().name(), ": ", first_list ? first_list : "every tensor argument",
                      " is empty and no other tensor is given: nothing to run on (pass at least one tensor)");
  const c10::DispatchKeySet below = ks & c10::after_ADInplaceOrView_keyset;
  op.redispatchBoxed(below, stack);
  for (const at::Tensor& t : written) {
    if (t.defined() && !t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, ADInplaceOrView, m) {
  m.impl("cross_entropy_bwd_", torch::CppFunction::makeFromBoxedFunction<&bump_written_versions>());
  m.impl("adam_step_", torch::CppFunction::makeFromBoxedFunction<&bump_written_versions>());
}
