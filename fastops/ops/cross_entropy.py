"""Softmax cross-entropy: fake kernels of the native ops, argument checks, the autograd.Function.

``CrossEntropyFunction`` is the one place that knows both passes: forward calls
``<backend>.cross_entropy_fwd`` (per-row loss, and the row max and log-sum-exp relative to it as
``stats``; nothing N x C saved), reduces in the accumulation dtype, and backward calls
``<backend>.cross_entropy_bwd`` with the reduction's scale folded into the per-row gradient.
"""

from __future__ import annotations

import torch

from fastops import _backend
from fastops.ops import _cross_entropy_shapes as shapes

OP = "cross_entropy"
REDUCTIONS = ("none", "mean", "sum")

_backend.register_op(
    OP,
    native_schema="cross_entropy_fwd",
    native={"cpu": _backend.ALL_FLOAT_DTYPES, "cuda": _backend.ALL_FLOAT_DTYPES},
    triton={"cuda": _backend.ALL_FLOAT_DTYPES, "cpu": _backend.ALL_FLOAT_DTYPES},
)

if _backend.NATIVE_LOADED:
    torch.library.register_fake("fastops::cross_entropy_fwd")(shapes.fwd_fake)
    torch.library.register_fake("fastops::cross_entropy_bwd")(shapes.bwd_fake)
    torch.library.register_fake("fastops::cross_entropy_bwd_")(shapes.bwd_inplace_fake)


def check_args(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    reduction: str,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate a cross-entropy call and normalise dtypes the way torch does.

    Returns ``(input, target, weight)``: uint8 class indices become int64; a probability target of
    another floating dtype is promoted with the logits to their common dtype. Raises ValueError /
    TypeError naming the argument and the expected vs given shape, dtype or device (the registered
    ops' own checks, :func:`shapes.check_args`, shared by every backend).
    """
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"cross_entropy: input and target must be tensors, got {type(input)} and {type(target)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if target.dtype == torch.uint8:
        target = target.long()
    elif target.is_floating_point() and input.is_floating_point() and target.dtype != input.dtype:
        common = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(common), target.to(common)
    shapes.check_args(OP, input, target, weight, label_smoothing)
    return input, target, weight


def check_target_range(target: torch.Tensor, n_classes: int, ignore_index: int) -> None:
    """IndexError for a class index outside [0, C) that is not ``ignore_index`` (reads the data)."""
    if not target.is_floating_point():
        shapes.check_class_indices(OP, target, n_classes, ignore_index)


def _ops(backend: str):  # noqa: ANN202 - a torch.ops namespace
    if backend == "native":
        return torch.ops.fastops
    import fastops.triton.cross_entropy  # noqa: F401  (registers torch.ops.fastops_triton.*)

    return torch.ops.fastops_triton


def _mean_denominator(
    target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int, acc: torch.dtype
) -> torch.Tensor:
    """What "mean" divides by: the summed weight of the non-ignored index targets, or the row count."""
    if target.is_floating_point():
        rows = target.numel() // (target.shape[0] if target.dim() == 1 else target.shape[1])
        return torch.full((), rows, dtype=acc, device=target.device)
    valid = target != ignore_index
    if weight is None:
        return valid.sum(dtype=acc)
    y = torch.where(valid, target, 0)
    return (weight.to(acc)[y] * valid).sum()


def _mean(value: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """``value / denom``, NaN when ``denom`` is 0, as torch: its "mean" is the weighted NLL sum over the
    summed target weight, 0 / 0 = NaN when the non-ignored targets' weights sum to 0, whatever the
    smoothing term adds (dividing the smoothed total alone would give inf). In backward it makes every
    non-ignored row's gradient NaN, torch's result; ignored rows keep their exact zeros."""
    return torch.where(denom == 0, float("nan"), value / denom)


class CrossEntropyFunction(torch.autograd.Function):
    """loss = cross_entropy(logits, target); grad flows to logits only.

    forward(logits (C,) / (N, C) / (N, C, d...), target, weight (C,) | None, ignore_index,
    reduction, label_smoothing, backend ("native" | "triton"), inplace_backward) -> loss in
    logits' dtype, of the row shape for "none", else a scalar.
    """

    @staticmethod
    def forward(  # noqa: ANN205
        ctx,  # noqa: ANN001
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
        backend: str,
        inplace_backward: bool,
    ):
        ops = _ops(backend)
        loss, stats = ops.cross_entropy_fwd(logits, target, weight, ignore_index, label_smoothing)
        denom = _mean_denominator(target, weight, ignore_index, loss.dtype) if reduction == "mean" else None
        ctx.save_for_backward(logits, target, weight, stats, denom)
        ctx.config = (ignore_index, reduction, label_smoothing, backend, inplace_backward)
        if reduction == "none":
            return loss.to(logits.dtype)
        total = loss.sum()
        return (_mean(total, denom) if reduction == "mean" else total).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        logits, target, weight, stats, denom = ctx.saved_tensors
        ignore_index, reduction, label_smoothing, backend, inplace_backward = ctx.config
        g = grad.to(stats.dtype)
        if reduction == "mean":
            g = _mean(g, denom)
        g = g.expand(stats.shape[1:])
        ops = _ops(backend)
        if inplace_backward and logits.is_contiguous():
            ops.cross_entropy_bwd_(g, logits, target, weight, stats, ignore_index, label_smoothing)
            grad_logits = logits
        else:
            grad_logits = ops.cross_entropy_bwd(g, logits, target, weight, stats, ignore_index, label_smoothing)
        return grad_logits, None, None, None, None, None, None, None
