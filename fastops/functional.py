"""Typed public functions, mirroring ``torch.nn.functional``.

Every function takes the torch arguments of the op it replaces, plus a keyword-only ``backend``
(``"auto"``, ``"native"``, ``"triton"`` or ``"torch"``; see :func:`fastops.backends`).
"""

from __future__ import annotations

import torch
from torch.nn import _reduction

from fastops import _backend, reference
from fastops.ops import cross_entropy as _ce
from fastops.ops import linear_relu as _lr


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    backend: str = "auto",
    inplace_backward: bool = False,
) -> torch.Tensor:
    """Softmax cross-entropy, a drop-in for ``torch.nn.functional.cross_entropy``.

    Args:
        input: logits ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``; float16, bfloat16, float32
            or float64 (the native CPU kernel takes float32/float64; ``auto`` falls back to the
            torch composition for the others on CPU).
        target: class indices, int64 (or uint8), of ``input``'s shape without dim 1 (``()`` for
            unbatched input); or class probabilities, floating, of ``input``'s shape.
        weight: ``(C,)`` class weights in ``input``'s dtype, or None.
        size_average, reduce: deprecated torch arguments, mapped to ``reduction`` as torch does.
        ignore_index: rows whose index target equals it contribute no loss and no gradient.
        reduction: ``"none"`` -> loss of the target-index shape; ``"mean"`` / ``"sum"`` -> scalar.
            ``"mean"`` divides by the summed weight of the non-ignored targets (index targets) or
            by the number of rows (probabilities).
        label_smoothing: in [0, 1].
        backend: which implementation runs.
        inplace_backward: write the gradient over ``input``'s buffer (saves an N x C allocation).
            Only for logits that no other autograd node saved: it would corrupt their backward
            (autograd raises if it notices the version change).

    Returns:
        The loss in ``input``'s dtype. Gradients flow to ``input``; a ``target`` or ``weight`` that
        requires grad is differentiated through the torch composition instead of the kernels.
    """
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    input, target, weight = _ce.check_args(input, target, weight, reduction, label_smoothing)
    name = _backend.resolve(_ce.OP, backend, input.device.type, input.dtype)
    needs_extra_grads = torch.is_grad_enabled() and (
        target.requires_grad or (weight is not None and weight.requires_grad)
    )
    if name == "torch" or needs_extra_grads:
        _ce.check_target_range(target, input.shape[0 if input.dim() == 1 else 1], ignore_index)
        return reference.cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing)
    return _ce.CrossEntropyFunction.apply(
        input, target, weight, ignore_index, reduction, label_smoothing, name, inplace_backward
    )


def linear_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Fused ``relu(torch.nn.functional.linear(x, weight, bias))``.

    Args:
        x: ``(*, K)`` input (any number of leading dims, possibly zero-size), float32 or float64
            (float16 / bfloat16 on the GPU backends; ``auto`` falls back to the torch composition
            for them on CPU). Any strides.
        weight: ``(N, K)`` in ``x``'s dtype and device; any strides (a transposed view is fine).
        bias: ``(N,)`` or None.
        backend: which implementation runs.

    Returns:
        ``(*, N)`` in ``x``'s dtype: ``max(x @ weight.T + bias, 0)``. Gradients flow to ``x``,
        ``weight`` and ``bias``; backward needs only ``x``, ``weight`` and this output.
    """
    _lr.check_args(x, weight, bias)
    name = _backend.resolve(_lr.OP, backend, x.device.type, x.dtype)
    if name == "torch":
        return reference.linear_relu(x, weight, bias)
    return _lr.LinearReLUFunction.apply(x, weight, bias, name)
