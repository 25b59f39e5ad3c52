"""Fused linear+ReLU: fake kernels of the native ops, argument checks, the autograd.Function.

``LinearReLUFunction`` is the one place that knows both passes: forward calls
``<backend>.linear_relu_fwd`` (bias and ReLU applied before the output is stored) and saves x, the
weight and the activated output (its sign is the ReLU mask; the pre-activation is never kept);
backward calls ``<backend>.linear_relu_bwd``, which masks grad_out once and forms dX, dW and db
from it.
"""

from __future__ import annotations

import torch

from fastops import _backend
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


def _ops(backend: str):  # noqa: ANN202 - a torch.ops namespace
    if backend == "native":
        return torch.ops.fastops
    import fastops.triton.linear_relu  # noqa: F401  (registers torch.ops.fastops_triton.*)

    return torch.ops.fastops_triton


class LinearReLUFunction(torch.autograd.Function):
    """out = relu(x @ weight.T + bias); gradients for x, weight and bias.

    forward(x (*, K), weight (N, K), bias (N,) | None, backend ("native" | "triton")) -> out (*, N)
    in x's dtype.
    """

    @staticmethod
    def forward(  # noqa: ANN205
        ctx,  # noqa: ANN001
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        backend: str,
    ):
        out = _ops(backend).linear_relu_fwd(x, weight, bias)
        ctx.save_for_backward(x, weight, out)
        ctx.backend = backend
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        x, weight, out = ctx.saved_tensors
        gx, gw, gb = _ops(ctx.backend).linear_relu_bwd(grad, x, weight, out)
        need = ctx.needs_input_grad
        return (
            gx if need[0] else None,
            gw if need[1] else None,
            gb if ctx.has_bias and need[2] else None,
            None,
        )
