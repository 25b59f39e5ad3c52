"""Fused linear+ReLU: fake kernels of the native ops, argument checks, and the ops' autograd.

:func:`register` is the one place that knows both passes, for each backend's namespace: the
forward op (bias and ReLU applied before the output is stored) saves x, the weight and the
activated output (its sign is the ReLU mask; the pre-activation is never kept); its backward calls
``linear_relu_bwd``, which masks grad_out once and forms dX, dW and db from it. Both ops are
differentiable (see :mod:`fastops.ops._autograd`).
"""

from __future__ import annotations

import torch

from fastops import _backend, reference
from fastops.ops import _autograd
from fastops.ops import _linear_relu_shapes as shapes

OP = "linear_relu"

_backend.register_op(
    OP,
    native_schema="linear_relu_fwd",
    native={"cpu": _backend.ALL_FLOAT_DTYPES, "cuda": _backend.ALL_FLOAT_DTYPES},
    triton={"cuda": _backend.ALL_FLOAT_DTYPES, "cpu": _backend.FLOAT32_FLOAT64},
)

if _backend.NATIVE_LOADED:
    torch.library.register_fake("fastops::linear_relu_fwd")(shapes.fwd_fake)
    torch.library.register_fake("fastops::linear_relu_bwd")(shapes.bwd_fake)


def check_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> shapes.Geometry:
    """Validate a linear_relu call: TypeError / ValueError naming the argument (shapes.check_args)."""
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"linear_relu: {name} must be a tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"linear_relu: bias must be a tensor or None, got {type(bias).__name__}")
    return shapes.check_args(OP, x, weight, bias)


def ops(backend: str):  # noqa: ANN201 - a torch.ops namespace
    """The namespace holding ``backend``'s linear_relu ops (importing the Triton module registers them)."""
    if backend == "native":
        return torch.ops.fastops
    import fastops.triton.linear_relu  # noqa: F401  (registers torch.ops.fastops_triton.*)

    return torch.ops.fastops_triton


def _bwd_composition(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """linear_relu_bwd as torch ops: D = grad_out masked where out <= 0 (threshold_backward; NaN
    passes), grad_x = D W, grad_weight = D^T A, grad_bias = column sums of D. Differentiable in
    grad_out, x and weight (the mask has no derivative)."""
    n, k = weight.shape
    d = torch.where(out <= 0, 0, grad_out).reshape(-1, n)
    a = x.reshape(-1, k)
    return (d @ weight).reshape(x.shape), d.t() @ a, d.sum(0)


def register(namespace) -> None:  # noqa: ANN001 - a torch.ops namespace
    """Autograd (double backward included), vmap and autocast of ``namespace``'s linear_relu ops."""

    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight, output)  # the output's sign is the mask: no pre-activation kept
        ctx.has_bias = bias is not None

    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN202
        x, weight, out = ctx.saved_tensors
        gx, gw, gb = namespace.linear_relu_bwd(grad, x, weight, out)
        need = ctx.needs_input_grad
        return gx if need[0] else None, gw if need[1] else None, gb if ctx.has_bias and need[2] else None

    _autograd.register_differentiable(
        namespace.linear_relu_fwd, setup_context=setup_context, backward=backward, composition=reference.linear_relu
    )
    bwd_setup, bwd_backward = _autograd.recomputed_backward(_bwd_composition)
    _autograd.register_differentiable(
        namespace.linear_relu_bwd, setup_context=bwd_setup, backward=bwd_backward, composition=_bwd_composition
    )
    _autograd.register_autocast(namespace.linear_relu_fwd, to_float32=False)


if _backend.NATIVE_LOADED:
    register(torch.ops.fastops)
