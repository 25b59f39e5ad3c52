"""The contract of the registered linear+ReLU ops, shared by every backend's Python side: output
shapes (the fake kernels) and the argument checks, a mirror of csrc/fastops.h's
check_linear_relu_args so that the native and Triton ops reject bad input with the same messages."""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastops.ops._devices import check_same_device


class Geometry(NamedTuple):
    """x seen as A (M, K), weight B (N, K), out C (M, N)."""

    M: int
    K: int
    N: int
    out_shape: list[int]  # x's shape with its last dim K replaced by N


def _shape(s: torch.Size | list[int]) -> str:
    return "(" + ", ".join(str(v) for v in s) + (",)" if len(s) == 1 else ")")


def check_args(op: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Geometry:
    """csrc/fastops.h check_linear_relu_args: ValueError for shapes/devices, TypeError for dtypes."""
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating tensor, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have shape (*, K), got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must have shape (N, K), got {_shape(weight.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: weight must have x's dtype {x.dtype}, got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"{op}: weight is on {weight.device} but x is on {x.device}")
    K, N = x.shape[-1], weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(
            f"{op}: weight must have shape (N, {K}) for x of shape {_shape(x.shape)} "
            f"(K = x.shape[-1] = {K}), got {_shape(weight.shape)}"
        )
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != N:
            raise ValueError(f"{op}: bias must have shape ({N},) (one per output feature), got {_shape(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: bias must have x's dtype {x.dtype}, got {bias.dtype}")
        if bias.device != x.device:
            raise ValueError(f"{op}: bias is on {bias.device} but x is on {x.device}")
    M = 1
    for n in x.shape[:-1]:
        M *= n
    return Geometry(M, K, N, [*x.shape[:-1], N])


def check_bwd_args(op: str, g: Geometry, x: torch.Tensor, grad_out: torch.Tensor, out: torch.Tensor) -> None:
    """csrc/fastops.h check_linear_relu_bwd_args: grad_out and out of shape (*, N), x's dtype and device."""
    for name, t in (("grad_out", grad_out), ("out", out)):
        if list(t.shape) != g.out_shape:
            raise ValueError(f"{op}: {name} must have shape {_shape(g.out_shape)}, got {_shape(t.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")


def fwd_fake(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """out (*, N), contiguous, x's dtype."""
    check_same_device("linear_relu_fwd", x=x, weight=weight, bias=bias)
    g = check_args("linear_relu_fwd", x, weight, bias)
    return x.new_empty(g.out_shape)


def bwd_fake(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x (*, K), grad_weight (N, K), grad_bias (N,)), contiguous, x's dtype."""
    check_same_device("linear_relu_bwd", grad_out=grad_out, x=x, weight=weight, out=out)
    g = check_args("linear_relu_bwd", x, weight, None)
    check_bwd_args("linear_relu_bwd", g, x, grad_out, out)
    return x.new_empty(x.shape), x.new_empty((g.N, g.K)), x.new_empty((g.N,))
