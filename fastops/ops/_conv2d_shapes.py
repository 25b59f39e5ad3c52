"""Output shapes of the conv2d ops, shared by the fake kernels of every backend, and the checks
on the integer arguments that must hold before any size is computed from them."""

from __future__ import annotations

import math

import torch

from fastops.ops._devices import check_same_device

INT64_MAX = 2**63 - 1


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one spatial dim: ``(size + 2 padding - dilation (kernel - 1) - 1) // stride + 1``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def check_geometry_range(
    op: str,
    x_shape: list[int] | torch.Size,
    w_shape: list[int] | torch.Size,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> None:
    """ValueError naming the argument when stride / dilation < 1, padding < 0, or a padded input
    (``H + 2 padding``), a dilated kernel (``dilation (R - 1) + 1``) or the output's element count
    does not fit in int64, the C++ kernels' index type.

    Python ints never overflow, so the sums are formed exactly here, before any int64 code sees them
    (in C++ ``2 * padding`` with padding = 2**62 wraps to a negative number). Plain ints only: a
    symbolic size under torch.compile is left to the runtime call.
    """
    for name, pair, low in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(pair) != 2:
            raise ValueError(f"{op}: {name} must have 2 elements, got {list(pair)}")
        for v in pair:
            if isinstance(v, int) and not low <= v <= INT64_MAX:
                raise ValueError(f"{op}: {name} must be between {low} and 2**63 - 1, got {list(pair)}")
    if len(x_shape) != 4 or len(w_shape) != 4:
        return  # the shape checks say so
    for i in range(2):
        h, r = x_shape[2 + i], w_shape[2 + i]
        if not all(isinstance(v, int) for v in (h, r, padding[i], dilation[i])):
            continue
        if h + 2 * padding[i] > INT64_MAX:
            raise ValueError(
                f"{op}: padding {list(padding)} is too large: the padded input size {h} + 2 * {padding[i]} "
                f"does not fit in int64"
            )
        if dilation[i] * (r - 1) + 1 > INT64_MAX:
            raise ValueError(
                f"{op}: dilation {list(dilation)} is too large: the dilated kernel size {dilation[i]} * "
                f"({r} - 1) + 1 does not fit in int64"
            )
    sizes = [x_shape[0], w_shape[0]] + [
        out_size(x_shape[2 + i], w_shape[2 + i], stride[i], padding[i], dilation[i]) for i in range(2)
    ]
    if all(isinstance(v, int) for v in sizes) and min(sizes) > 0 and math.prod(sizes) > INT64_MAX:
        raise ValueError(
            f"{op}: padding {list(padding)} is too large: the output would have shape ({', '.join(map(str, sizes))}), "
            f"more than 2**63 - 1 elements"
        )


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
    check_same_device("conv2d_fwd", x=x, weight=weight, bias=bias)
    check_geometry_range("conv2d_fwd", x.shape, weight.shape, stride, padding, dilation)
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
    check_same_device("conv2d_bwd", grad_out=grad_out, x=x, weight=weight)
    check_geometry_range("conv2d_bwd", x.shape, weight.shape, stride, padding, dilation)
    fmt = memory_format(x, weight)
    empty = x.new_empty((0,))
    return (
        x.new_empty(x.shape).contiguous(memory_format=fmt) if output_mask[0] else empty,
        x.new_empty(weight.shape).contiguous(memory_format=fmt) if output_mask[1] else x.new_empty((0,)),
        x.new_empty((weight.shape[0],)) if output_mask[2] else x.new_empty((0,)),
    )
