"""Output shapes of the conv2d ops, shared by the fake kernels of every backend."""

from __future__ import annotations

import torch


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one spatial dim: ``(size + 2 padding - dilation (kernel - 1) - 1) // stride + 1``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def is_channels_last(t: torch.Tensor) -> bool:
    """torch's suggest_memory_format: channels_last strides that are not also plain contiguous."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def memory_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The layout of every conv2d op's y, grad_x and grad_weight (torch's rule, on every backend):
    channels_last when x or weight is channels_last, else contiguous."""
    return torch.channels_last if is_channels_last(x) or is_channels_last(weight) else torch.contiguous_format


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
    """y (N, K, P, Q) in x's dtype, in :func:`memory_format`."""
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    p = out_size(h, r, stride[0], padding[0], dilation[0])
    q = out_size(w, s, stride[1], padding[1], dilation[1])
    return x.new_empty((n, k, p, q)).contiguous(memory_format=memory_format(x, weight))


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
    """(grad_x of x's shape, grad_weight of weight's shape, both in :func:`memory_format`, grad_bias
    (K,)); a masked-off output is an empty ``(0,)`` tensor."""
    fmt = memory_format(x, weight)
    empty = x.new_empty((0,))
    return (
        x.new_empty(x.shape).contiguous(memory_format=fmt) if output_mask[0] else empty,
        x.new_empty(weight.shape).contiguous(memory_format=fmt) if output_mask[1] else x.new_empty((0,)),
        x.new_empty((weight.shape[0],)) if output_mask[2] else x.new_empty((0,)),
    )
