"""Fused linear+ReLU: the registered ops' contract (the fake kernels and the argument checks every
Python-side backend runs, with csrc/fastops.h's messages), the API call's checks, the ops' autograd.

:func:`register` is the one place that knows both passes, for each backend's namespace: the
forward op (bias and ReLU applied before the output is stored) saves x, the weight and the
activated output (its sign is the ReLU mask; the pre-activation is never kept); its backward calls
``linear_relu_bwd``, which masks grad_out once and forms dX, dW and db from it. Both ops are
differentiable (see :mod:`fastops.ops._autograd`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import NamedTuple

import torch

from fastops import _backend, reference
from fastops.ops import _autograd, namespace
from fastops.ops._contract import check_same_device, dtype_str, once_per_signature, shape_str

OP = "linear_relu"

_backend.register_op(
    OP,
    native_schema="linear_relu_fwd",
    native={"cpu": _backend.ALL_FLOAT_DTYPES, "cuda": _backend.ALL_FLOAT_DTYPES},
    triton={"cuda": _backend.ALL_FLOAT_DTYPES, "cpu": _backend.FLOAT32_FLOAT64},
)

# ---- backend="auto" on CPU: calls too small to pay for the op's dispatch go to torch ----------------
#
# A fastops call costs about 100-150 us more than torch's F.linear + F.relu in Python dispatch (the
# registered op's autograd kernel, its autograd.Function, the backward op), which the fused epilogue
# earns back only on a large enough GEMM. Measured fwd+bwd, fastops native vs F.relu(F.linear(...)),
# Intel Xeon (AVX-512, AMX) 2 threads, session 2026-12-06, by M*K*N:
#   float32  2.1M 0.54x, 4.2M 0.46x, 16.8M 0.73x, 67M 1.00x, 134M 1.02x
#   bfloat16 2.1M 0.81x, 16.8M 0.54x, 67M 0.90x, 134M 1.31x
#   float64  2.1M 0.70x, 16.8M 0.91x, 67M 1.00x;  float16 2.1M 0.69x, 16.8M 0.88x, 67M 0.76x
CPU_AUTO_TORCH_BELOW = 1 << 27  # M*K*N
#
# The epilogue saves passes over the M x N output, so what it earns grows with M*N, not with K: a
# float32 / float64 batch of 64 through a 3072 -> 1024 layer is 2^27.6 multiply-adds but a 64 x 1024
# output, and lost. Measured fwd+bwd (grads cleared each step, 3 interleaved runs), 2-core AMD EPYC
# (AVX2), float32, session 2026-12-07, M x K x N (x needs grad?): ratio, by M*N:
#   2^16: 64x3072x1024 (no) 0.96-0.97x, 64x1024x1024 (yes) 0.93-0.95x
#   2^18: 256x1024x1024 (yes) 0.96-0.97x, 256x3072x1024 (no) 0.99x;  2^19: 512x1024x1024 0.98-0.99x
#   2^20: 1024x1024x1024 0.97-1.00x, 1024x3072x1024 0.99-1.01x
#   2^21: 2048x1024x1024 0.98-1.01x (yes), 1.00-1.01x (no);  2^23.6: 4096x768x3072 (yes) 0.99-1.09x
# So float32 / float64 calls with an output of fewer than 2^21 elements run torch too. float16 /
# bfloat16 keep the first rule only: not measured by output size (bfloat16 at 134M multiply-adds was
# 1.31x on the Intel machine above).
CPU_AUTO_TORCH_OUTPUT_BELOW = 1 << 21  # M*N, float32 / float64


def cpu_auto_uses_torch(x: torch.Tensor, weight: torch.Tensor) -> str:
    """Why ``backend="auto"`` runs torch's ``F.relu(F.linear(...))`` for this CPU call (``""``: it runs
    the native kernel): a GEMM of fewer than CPU_AUTO_TORCH_BELOW multiply-adds, or, in float32 /
    float64, an output of fewer than CPU_AUTO_TORCH_OUTPUT_BELOW elements, where the call's fixed cost
    outweighs the fused epilogue. ``x`` is ``(*, K)``, ``weight`` ``(N, K)``."""
    if x.dim() < 1 or weight.dim() != 2:
        return ""  # the contract's error comes from the op
    macs = x.numel() * weight.shape[0]
    if not isinstance(macs, int):
        return ""  # symbolic sizes (export, dynamic compile): the op, no guard on a dynamic dim
    if macs < CPU_AUTO_TORCH_BELOW:
        return f"GEMMs of fewer than 2^{CPU_AUTO_TORCH_BELOW.bit_length() - 1} multiply-adds"
    k = x.shape[-1]
    outputs = macs // k if k else 0
    if x.dtype in (torch.float32, torch.float64) and outputs < CPU_AUTO_TORCH_OUTPUT_BELOW:
        return f"float32 / float64 outputs of fewer than 2^{CPU_AUTO_TORCH_OUTPUT_BELOW.bit_length() - 1} elements"
    return ""


# ---- the registered ops' argument contract (csrc/fastops.h check_linear_relu_args) -------------


class Geometry(NamedTuple):
    """x seen as A (M, K), weight B (N, K), out C (M, N)."""

    M: int
    K: int
    N: int
    out_shape: list[int]  # x's shape with its last dim K replaced by N


def check_op_args(op: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Geometry:
    """csrc/fastops.h check_linear_relu_args: ValueError for shapes/devices, TypeError for dtypes."""
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating tensor, got {dtype_str(x.dtype)}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have shape (*, K), got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must have shape (N, K), got {shape_str(weight.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: weight must have x's dtype {dtype_str(x.dtype)}, got {dtype_str(weight.dtype)}")
    if weight.device != x.device:
        raise ValueError(f"{op}: weight is on {weight.device} but x is on {x.device}")
    K, N = x.shape[-1], weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(
            f"{op}: weight must have shape (N, {K}) for x of shape {shape_str(x.shape)} "
            f"(K = x.shape[-1] = {K}), got {shape_str(weight.shape)}"
        )
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != N:
            raise ValueError(f"{op}: bias must have shape ({N},) (one per output feature), got {shape_str(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: bias must have x's dtype {dtype_str(x.dtype)}, got {dtype_str(bias.dtype)}")
        if bias.device != x.device:
            raise ValueError(f"{op}: bias is on {bias.device} but x is on {x.device}")
    M = 1
    for n in x.shape[:-1]:
        M *= n
    return Geometry(M, K, N, [*x.shape[:-1], N])


def check_op_bwd_args(op: str, g: Geometry, x: torch.Tensor, grad_out: torch.Tensor, out: torch.Tensor) -> None:
    """csrc/fastops.h check_linear_relu_bwd_args: grad_out and out of shape (*, N), x's dtype and device."""
    for name, t in (("grad_out", grad_out), ("out", out)):
        if list(t.shape) != g.out_shape:
            raise ValueError(f"{op}: {name} must have shape {shape_str(g.out_shape)}, got {shape_str(t.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have x's dtype {dtype_str(x.dtype)}, got {dtype_str(t.dtype)}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")


def fwd_fake(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """out (*, N), contiguous, x's dtype."""
    check_same_device("linear_relu_fwd", x=x, weight=weight, bias=bias)
    g = check_op_args("linear_relu_fwd", x, weight, bias)
    return x.new_empty(g.out_shape)


def bwd_fake(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    out: torch.Tensor,
    output_mask: Sequence[bool] = (True, True, True),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x (*, K), grad_weight (N, K), grad_bias (N,)), contiguous, x's dtype; each one masked off
    by ``output_mask`` is an empty (0,) tensor."""
    check_same_device("linear_relu_bwd", grad_out=grad_out, x=x, weight=weight, out=out)
    g = check_op_args("linear_relu_bwd", x, weight, None)
    check_op_bwd_args("linear_relu_bwd", g, x, grad_out, out)
    gx, gw, gb = (x.new_empty(s if want else (0,)) for s, want in zip((x.shape, (g.N, g.K), (g.N,)), output_mask))
    return gx, gw, gb


if _backend.NATIVE_LOADED:
    torch.library.register_fake("fastops::linear_relu_fwd")(fwd_fake)
    torch.library.register_fake("fastops::linear_relu_bwd")(bwd_fake)


# ---- the public API's call (fastops.functional.linear_relu) ------------------------------------


FWD = "linear_relu_fwd"  # the registered op the API calls: its checks' messages start with this name


def check_types(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """TypeError naming the argument that is not a tensor: the API-level part of a linear_relu call,
    run on every backend (the argument contract itself is the op's, :func:`check_call`)."""
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"linear_relu: {name} must be a tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"linear_relu: bias must be a tensor or None, got {type(bias).__name__}")


@once_per_signature
def check_call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Geometry:
    """The contract of a ``linear_relu_fwd`` call, for the API calls no registered op checks (the
    torch composition): the text the op would raise. A tensor on ``meta`` beside others makes the
    dispatcher run the op's fake kernel (:func:`fwd_fake`), whose device check speaks first; any
    other bad input meets the C++ check (:func:`check_op_args`). Once per call signature
    (:func:`fastops.ops._contract.checked_once`)."""
    if any(t is not None and t.device.type == "meta" for t in (x, weight, bias)):
        check_same_device(FWD, x=x, weight=weight, bias=bias)
    return check_op_args(FWD, x, weight, bias)


ops = partial(namespace, stem=OP)  # ops(backend): the torch.ops namespace of backend's linear_relu ops


def _bwd_composition(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    out: torch.Tensor,
    output_mask: Sequence[bool] = (True, True, True),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """linear_relu_bwd as torch ops: D = grad_out masked where out <= 0 (threshold_backward; NaN
    passes), grad_x = D W, grad_weight = D^T A, grad_bias = column sums of D, each only where
    ``output_mask`` asks (else an empty (0,) tensor). Differentiable in grad_out, x and weight (the
    mask has no derivative)."""
    n, k = weight.shape
    d = torch.ops.aten.threshold_backward(grad_out, out, 0).reshape(-1, n)
    gx = (d @ weight).reshape(x.shape) if output_mask[0] else x.new_empty((0,))
    gw = d.t() @ x.reshape(-1, k) if output_mask[1] else x.new_empty((0,))
    return gx, gw, d.sum(0) if output_mask[2] else x.new_empty((0,))


def register(namespace) -> None:  # noqa: ANN001 - a torch.ops namespace
    """Autograd (double backward included), vmap and autocast of ``namespace``'s linear_relu ops."""

    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight, output)  # the output's sign is the mask: no pre-activation kept
        ctx.has_bias = bias is not None

    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN202
        x, weight, out = ctx.saved_tensors
        # Only the wanted products run: a first layer's x and a frozen weight need none (as torch's).
        need = ctx.needs_input_grad
        mask = [need[0], need[1], ctx.has_bias and need[2]]
        gx, gw, gb = namespace.linear_relu_bwd(grad, x, weight, out, mask)
        return gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None

    _autograd.register_differentiable(
        namespace.linear_relu_fwd, setup_context=setup_context, backward=backward, composition=reference.linear_relu
    )
    bwd_setup, bwd_backward = _autograd.recomputed_backward(_bwd_composition)
    _autograd.register_differentiable(
        namespace.linear_relu_bwd, setup_context=bwd_setup, backward=bwd_backward, composition=_bwd_composition
    )
    _autograd.register_autocast(namespace.linear_relu_fwd, to_float32=False)


# ---- the calls the generated tests make (tests/test_contract.py) -------------------------------


def opcheck_examples(ns, device: str, backend: str) -> Iterator[tuple[object, tuple, dict]]:  # noqa: ANN001
    """``(op, args, kwargs)``: small valid calls of ``ns``'s linear_relu ops for ``torch.library.opcheck``:
    2-D, 3-D and zero-row x, with and without bias, float32."""
    from fastops.testing import make_tensor

    for xshape, with_bias in (((9, 6), True), ((2, 3, 6), False), ((0, 6), True)):
        x = make_tensor(xshape, torch.float32, device)
        weight = make_tensor((5, 6), torch.float32, device)
        bias = make_tensor((5,), torch.float32, device) if with_bias else None
        yield ns.linear_relu_fwd, (x, weight, bias), {}
        out = ns.linear_relu_fwd(x, weight, bias)
        yield ns.linear_relu_bwd, (torch.randn_like(out), x, weight, out), {}
        yield ns.linear_relu_bwd, (torch.randn_like(out), x, weight, out, [False, True, with_bias]), {}


if _backend.NATIVE_LOADED:
    register(torch.ops.fastops)
