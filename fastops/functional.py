"""Typed public functions, mirroring ``torch.nn.functional``.

Every function takes the torch arguments of the op it replaces, plus a keyword-only ``backend``
(``"auto"``, ``"native"``, ``"triton"`` or ``"torch"``; see :func:`fastops.backends`).
"""

from __future__ import annotations

import torch
from torch.nn import _reduction

from fastops import _backend, reference
from fastops.ops import conv2d as _conv
from fastops.ops import cross_entropy as _ce


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


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    activation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """2-D convolution (cross-correlation), a drop-in for ``torch.nn.functional.conv2d``.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``; float32 / float64 (native CPU and Triton
            interpreter), also float16 / bfloat16 on CUDA. Contiguous or channels_last.
        weight: ``(K, C / groups, R, S)``, input's dtype and device.
        bias: ``(K,)`` or None.
        stride, dilation: int or ``(sh, sw)`` / ``(dh, dw)``, >= 1.
        padding: int, ``(ph, pw)``, ``"valid"`` (no padding) or ``"same"`` (stride 1 only; the output
            has the input's H, W; an odd total padding puts the extra row / column at the bottom /
            right, as torch does).
        groups: channels split into this many independent convolutions (``groups == C`` is depthwise).
        activation: None, or ``"relu"`` to return ``relu(conv2d(...) + bias)`` with the ReLU fused
            into the kernel epilogue (an extension; torch has no such argument).
        backend: which implementation runs.

    Returns:
        ``(N, K, P, Q)`` (``(K, P, Q)`` for unbatched input) in input's dtype, with
        ``P = (H + 2 ph - dh (R - 1) - 1) // sh + 1`` and likewise ``Q``. channels_last when input or
        weight is channels_last (torch's rule), else contiguous. Gradients flow to input, weight, bias.
    """
    x, st, pad, dil, unbatched = _conv.normalize_args(
        input, weight, bias, stride, padding, dilation, groups, activation
    )
    name = _backend.resolve(_conv.OP, backend, x.device.type, x.dtype)
    if name == "torch":
        out = reference.conv2d(x, weight, bias, st, pad, dil, groups, activation)
        if _conv.is_channels_last(x) or _conv.is_channels_last(weight):
            out = out.contiguous(memory_format=torch.channels_last)
    else:
        channels_last = not unbatched and (_conv.is_channels_last(x) or _conv.is_channels_last(weight))
        out = _conv.Conv2dFunction.apply(
            x, weight, bias, st, pad, dil, groups, activation == "relu", name, channels_last
        )
    return out.squeeze(0) if unbatched else out
