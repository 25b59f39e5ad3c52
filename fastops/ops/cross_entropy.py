"""Softmax cross-entropy: fake kernels of the native ops, argument checks, the ops' autograd.

:func:`register` is the one place that knows both passes, for each backend's namespace:
``cross_entropy_fwd`` returns the per-row loss and the row max and log-sum-exp relative to it as
``stats`` (nothing N x C saved); its backward calls ``cross_entropy_bwd`` with the per-row upstream
gradient (the reduction, a torch sum / division in the accumulation dtype, is differentiated by
autograd). Both ops are differentiable (see :mod:`fastops.ops._autograd`).
``CrossEntropyFunction`` serves the opt-in in-place backward only.
"""

from __future__ import annotations

import torch

from fastops import _backend, reference
from fastops.ops import _autograd
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
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate a cross-entropy call and normalise dtypes the way torch does.

    Returns ``(input, target, weight)``: uint8 class indices become int64; a probability target of
    another floating dtype is promoted with the logits (and the weight) to their common dtype, as
    F.cross_entropy computes in it. ``ignore_index`` must fit in int64. Raises ValueError /
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
        if weight is not None and weight.is_floating_point():
            weight = weight.to(common)
    shapes.check_args(OP, input, target, weight, label_smoothing, ignore_index)
    return input, target, weight


def check_target_range(target: torch.Tensor, n_classes: int, ignore_index: int) -> None:
    """IndexError for a class index outside [0, C) that is not ``ignore_index`` (reads the data)."""
    if not target.is_floating_point():
        shapes.check_class_indices(OP, target, n_classes, ignore_index)


def ops(backend: str):  # noqa: ANN201 - a torch.ops namespace
    """The namespace holding ``backend``'s cross-entropy ops (importing the Triton module registers them)."""
    if backend == "native":
        return torch.ops.fastops
    import fastops.triton.cross_entropy  # noqa: F401  (registers torch.ops.fastops_triton.*)

    return torch.ops.fastops_triton


def _fwd_composition(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cross_entropy_fwd as torch ops: the per-row loss (reference, reduction "none") and the row
    statistics (max m, log sum exp(x - m)), both in the accumulation dtype."""
    acc = shapes.acc_dtype(logits.dtype)
    loss = reference.cross_entropy(logits.to(acc), target, weight, ignore_index, "none", label_smoothing)
    x = logits.detach().to(acc)
    cdim = 0 if logits.dim() == 1 else 1
    m = x.amax(cdim, keepdim=True)
    ls = torch.logsumexp(x - m, cdim)
    return loss, torch.stack([m.squeeze(cdim), ls])


def _bwd_composition(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
) -> torch.Tensor:
    """cross_entropy_bwd as torch ops: the vector-Jacobian product of the reference's per-row loss,
    with the graph kept (differentiable again in grad_loss and logits)."""
    x = logits if logits.requires_grad else logits.detach().requires_grad_()
    with torch.enable_grad():
        loss = reference.cross_entropy(x, target, weight, ignore_index, "none", label_smoothing)
        (g,) = torch.autograd.grad(loss, x, grad_loss.to(loss.dtype), create_graph=True)
    return g.to(logits.dtype)


def register(namespace) -> None:  # noqa: ANN001 - a torch.ops namespace
    """Autograd (double backward included), vmap and autocast of ``namespace``'s cross-entropy ops."""

    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        logits, target, weight, ignore_index, label_smoothing = inputs
        _, stats = output
        ctx.mark_non_differentiable(stats)
        ctx.save_for_backward(logits, target, weight, stats)
        ctx.config = (ignore_index, label_smoothing)

    def backward(ctx, grad_loss: torch.Tensor, grad_stats: torch.Tensor | None):  # noqa: ANN001, ANN202
        logits, target, weight, stats = ctx.saved_tensors
        ignore_index, label_smoothing = ctx.config
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        g = namespace.cross_entropy_bwd(
            grad_loss.to(stats.dtype), logits, target, weight, stats, ignore_index, label_smoothing
        )
        return g, None, None, None, None

    _autograd.register_differentiable(
        namespace.cross_entropy_fwd, setup_context=setup_context, backward=backward, composition=_fwd_composition
    )
    bwd_setup, bwd_backward = _autograd.recomputed_backward(_bwd_composition)
    _autograd.register_differentiable(
        namespace.cross_entropy_bwd, setup_context=bwd_setup, backward=bwd_backward, composition=_bwd_composition
    )
    _autograd.register_in_place(namespace.cross_entropy_bwd_)
    _autograd.register_autocast(namespace.cross_entropy_fwd, to_float32=True)


def mean_denominator(
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


def mean(value: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """``value / denom``, NaN when ``denom`` is 0, as torch: its "mean" is the weighted NLL sum over the
    summed target weight, 0 / 0 = NaN when the non-ignored targets' weights sum to 0, whatever the
    smoothing term adds (dividing the smoothed total alone would give inf). In backward it makes every
    non-ignored row's gradient NaN, torch's result; ignored rows keep their exact zeros."""
    return torch.where(denom == 0, float("nan"), value / denom)


class CrossEntropyFunction(torch.autograd.Function):
    """loss = cross_entropy(logits, target) with the in-place backward (``inplace_backward=True``);
    grad flows to logits only. Every other call goes through the ops' own autograd (:func:`register`):
    only this opt-in path needs a backward that knows it may overwrite the logits.

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
        loss, stats = ops(backend).cross_entropy_fwd(logits, target, weight, ignore_index, label_smoothing)
        denom = mean_denominator(target, weight, ignore_index, loss.dtype) if reduction == "mean" else None
        ctx.save_for_backward(logits, target, weight, stats, denom)
        ctx.config = (ignore_index, reduction, label_smoothing, backend, inplace_backward)
        if reduction == "none":
            return loss.to(logits.dtype)
        total = loss.sum()
        return (mean(total, denom) if reduction == "mean" else total).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        logits, target, weight, stats, denom = ctx.saved_tensors
        ignore_index, reduction, label_smoothing, backend, inplace_backward = ctx.config
        g = grad.to(stats.dtype)
        if reduction == "mean":
            g = mean(g, denom)
        g = g.expand(stats.shape[1:])
        namespace = ops(backend)
        if inplace_backward and logits.is_contiguous() and not torch.is_grad_enabled():
            namespace.cross_entropy_bwd_(g, logits, target, weight, stats, ignore_index, label_smoothing)
            grad_logits = logits
        else:  # a double backward (create_graph) takes the differentiable out-of-place op
            grad_logits = namespace.cross_entropy_bwd(g, logits, target, weight, stats, ignore_index, label_smoothing)
        return grad_logits, None, None, None, None, None, None, None


if _backend.NATIVE_LOADED:
    register(torch.ops.fastops)
