"""Output shapes of the conv2d ops, shared by the fake kernels of every backend."""

from __future__ import annotations

import torch


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one spatial dim: ``(size + 2 padding - dilation (kernel - 1) - 1) // stride + 1``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def fwd_fake(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    relu: bool,
) -> torch.Tensor:
    """y (N, K, P, Q) in x's dtype, contiguous."""
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    p = out_size(h, r, stride[0], padding[0], dilation[0])
    q = out_size(w, s, stride[1], padding[1], dilation[1])
    return x.new_empty((n, k, p, q))


def bwd_fake(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x of x's shape, grad_weight of weight's shape, grad_bias (K,)), contiguous; a masked-off
    output is an empty ``(0,)`` tensor."""
    empty = x.new_empty((0,))
    return (
        x.new_empty(x.shape) if output_mask[0] else empty,
        x.new_empty(weight.shape) if output_mask[1] else x.new_empty((0,)),
        x.new_empty((weight.shape[0],)) if output_mask[2] else x.new_empty((0,)),
    )
