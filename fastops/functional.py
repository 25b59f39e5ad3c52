"""Typed public functions, mirroring ``torch.nn.functional``.

Every function takes the torch arguments of the op it replaces, plus a keyword-only ``backend``
(``"auto"``, ``"native"``, ``"triton"`` or ``"torch"``; see :func:`fastops.backends`).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.nn import _reduction

from fastops import _backend, reference
from fastops.ops import _autograd, _contract
from fastops.ops import conv2d as _conv
from fastops.ops import cross_entropy as _ce
from fastops.ops import linear_cross_entropy as _lce
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
            or float64 on every backend (float16/bfloat16 accumulate in float32).
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
    key = None
    if not inplace_backward and isinstance(input, torch.Tensor) and input.device.type == "cpu":
        # a signature auto sent to torch's cross-entropy before (fastops/ops/_contract.py)
        args = (input, target, weight, ignore_index, reduction, label_smoothing)
        key = _contract.route_key(_ce.OP, args, backend, "cpu")
        if _contract.remembered_route(key) is not None:
            return _ce_torch(input, target, weight, ignore_index, reduction, label_smoothing)
    given = (input, target, weight)
    if isinstance(input, torch.Tensor):  # torch's policy: cross-entropy runs in float32 under autocast
        input, target, weight = _autocast(input.device.type, True, input, target, weight)
    input, target, weight = _ce.normalize_args(input, target, weight, reduction, ignore_index)
    name = _kernel_backend(_ce.OP, backend, input.device.type, input.dtype)
    needs_extra_grads = torch.is_grad_enabled() and (
        target.requires_grad or (weight is not None and weight.requires_grad)
    )
    if (
        name == "native"
        and input.device.type == "cpu"
        and not inplace_backward
        and _is_auto(backend)
        and _ce.cpu_auto_uses_torch(input)
    ):
        # Too small for the kernel to pay for its dispatch (see fastops/ops/cross_entropy.py): torch's
        # own cross-entropy, after the contract so that bad input gets the same error. Torch refuses
        # an out-of-range class index itself; only then are the targets read for the contract's text.
        _ce.check_call(input, target, weight, label_smoothing)
        loss = _ce_torch(input, target, weight, ignore_index, reduction, label_smoothing)
        if all(a is b for a, b in zip((input, target, weight), given)):  # nothing cast or promoted
            _contract.remember_route(key, "torch")
        return loss
    if name is None or needs_extra_grads:  # no registered op will check them
        _ce.check_call(input, target, weight, label_smoothing)
    if name is None:
        name = _backend.resolve(_ce.OP, backend, input.device.type, input.dtype)
    if name == "torch" or needs_extra_grads:
        _ce.check_target_range(target, input.shape[0 if input.dim() == 1 else 1], ignore_index)
        return reference.cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing)
    if inplace_backward:
        return _ce.CrossEntropyFunction.apply(
            input, target, weight, ignore_index, reduction, label_smoothing, name, inplace_backward
        )
    loss, _ = _ce.ops(name).cross_entropy_fwd(input, target, weight, ignore_index, label_smoothing)
    if reduction == "none":
        return loss.to(input.dtype)
    total = loss.sum()
    if reduction == "mean":
        total = _ce.mean(total, _ce.mean_denominator(target, weight, ignore_index, loss.dtype))
    return total.to(input.dtype)


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
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``; float16, bfloat16, float32 or float64
            (native CPU and CUDA, Triton on CUDA; the Triton interpreter takes float32 / float64).
            Contiguous or channels_last.
        weight: ``(K, C / groups, R, S)``, input's dtype and device.
        bias: ``(K,)`` or None.
        stride, dilation: int or ``(sh, sw)`` / ``(dh, dw)``, >= 1.
        padding: int, ``(ph, pw)``, ``"valid"`` (no padding) or ``"same"`` (stride 1 only; the output
            has the input's H, W; an odd total padding puts the extra row / column at the bottom /
            right, as torch does).
        groups: channels split into this many independent convolutions (``groups == C`` is depthwise).
        activation: None, or ``"relu"`` to return ``relu(conv2d(...) + bias)`` with the ReLU fused
            into the kernel epilogue (an extension; torch has no such argument).
        backend: which implementation runs. ``"auto"`` on CPU runs torch's own ``F.conv2d`` for the
            shape classes the native kernel was measured slower on (dense float32 convs larger
            than 1x1 with more than 4 input channels per group, among others, with exceptions by
            output size and, on AVX2-only CPUs, by class:
            :func:`fastops.ops.conv2d.cpu_auto_uses_torch`), except calls whose output sees only
            padding along H or W, on which torch 2.14's CPU conv segfaults
            (:func:`fastops.ops.conv2d.sees_only_padding`); ``"native"`` always runs the kernel.

    Returns:
        ``(N, K, P, Q)`` (``(K, P, Q)`` for unbatched input) in input's dtype, with
        ``P = (H + 2 ph - dh (R - 1) - 1) // sh + 1`` and likewise ``Q``, in the memory format F.conv2d
        gives (channels_last when input or weight is, except where torch's backend keeps it
        contiguous: float64 and depthwise on CUDA). Gradients flow to input, weight, bias.
    """
    key = None
    if type(padding) is not str and isinstance(input, torch.Tensor) and input.device.type == "cpu":
        # The route for this call signature, when a call like it has run (fastops/ops/_contract.py):
        # auto's choice, or the native op with its normalized arguments. It skips ~20-40 us of
        # argument handling per call (measured on a 2-core AMD EPYC), 3-8% of a small layer's forward.
        args = (input, weight, bias, stride, padding, dilation, groups, activation)
        key = _contract.route_key(_conv.OP, args, backend, "cpu", ("auto", "native"))
        route = _contract.remembered_route(key)
        if route is not None:
            unbatched = input.dim() == 3
            x = input.unsqueeze(0) if unbatched else input
            return _conv2d_route(route, x, weight, bias, groups, activation, unbatched)  # type: ignore[arg-type]
    if isinstance(input, torch.Tensor):  # torch's policy: conv2d runs in the autocast dtype
        input, weight, bias = _autocast(input.device.type, False, input, weight, bias)
    x, st, pad, dil, unbatched = _conv.normalize_args(
        input, weight, bias, stride, padding, dilation, groups, activation
    )
    name = _kernel_backend(_conv.OP, backend, x.device.type, x.dtype)
    if name == "native" and x.device.type == "cpu" and _is_auto(backend):
        # A shape class the native CPU kernel was measured slower on runs torch's own conv2d (see
        # fastops/ops/conv2d.py); the contract is checked first so bad input gets the same error.
        # torch's CPU conv segfaults when an output dim sees only padding (_conv.sees_only_padding).
        if (
            _conv.cpu_auto_uses_torch(x.dtype, weight.shape, st)
            and not _native_wins_at_size(x, weight, st, pad, dil, groups)
            and not _conv.sees_only_padding(x, weight, st, pad, dil)
        ):
            _conv.check_call(x, weight, bias, st, pad, dil, groups)
            route: tuple[object, list[int], list[int], list[int]] = (None, st, pad, dil)
        else:
            route = (_conv.ops("native").conv2d_fwd, st, pad, dil)
        out = _conv2d_route(route, x, weight, bias, groups, activation, unbatched)
        _contract.remember_route(key, route)  # after the call: one that raised is not remembered
        return out
    if name is None:  # no registered op will check them
        _conv.check_call(x, weight, bias, st, pad, dil, groups)
        name = _backend.resolve(_conv.OP, backend, x.device.type, x.dtype)
    if name == "torch":
        out = reference.conv2d(x, weight, bias, st, pad, dil, groups, activation)
        out = _conv.in_memory_format(out, _conv.memory_format(x, weight, st, pad, dil, groups))
    else:
        channels_last = not unbatched and (_conv.is_channels_last(x) or _conv.is_channels_last(weight))
        op = _conv.ops(name).conv2d_fwd
        out = op(x, weight, bias, st, pad, dil, groups, activation == "relu")
        if not channels_last:  # the op follows x / weight's layout; an unbatched call returns contiguous
            out = out.contiguous()
        if name == "native" and backend == "native" and x.device.type == "cpu":
            _contract.remember_route(key, (op, st, pad, dil))  # after the call: one that raised is not kept
    return out.squeeze(0) if unbatched else out


def _conv2d_route(
    route: tuple[object, list[int], list[int], list[int]],
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    activation: str | None,
    unbatched: bool,
) -> torch.Tensor:
    """A CPU conv2d call on the route ``backend="auto"`` chose for its signature: ``(op, stride,
    padding, dilation)``, ``op`` the native ``conv2d_fwd`` or None for torch's own conv2d (the
    contract already checked). ``x`` is ``(N, C, H, W)`` (``(1, C, H, W)`` for an unbatched call,
    whose output is returned as ``(K, P, Q)``)."""
    op, st, pad, dil = route
    if op is None:
        out = F.conv2d(x, weight, bias, st, pad, dil, groups)
        out = F.relu(out) if activation == "relu" else out
    else:
        channels_last = not unbatched and (_conv.is_channels_last(x) or _conv.is_channels_last(weight))
        out = op(x, weight, bias, st, pad, dil, groups, activation == "relu")  # type: ignore[operator]
        if not channels_last:  # the op follows x / weight's layout; an unbatched call returns contiguous
            out = out.contiguous()
    return out.squeeze(0) if unbatched else out


def _ce_torch(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> torch.Tensor:
    """torch's own cross-entropy for a call whose contract passed. Torch refuses an out-of-range
    class index itself; only then are the targets read, for the contract's text."""
    try:
        return F.cross_entropy(
            input, target, weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
        )
    except (IndexError, RuntimeError):
        _ce.check_target_range(target, input.shape[0 if input.dim() == 1 else 1], ignore_index)
        raise


def linear_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Fused ``relu(torch.nn.functional.linear(x, weight, bias))``.

    Args:
        x: ``(*, K)`` input (any number of leading dims, possibly zero-size), float16, bfloat16,
            float32 or float64 (native CPU and CUDA, Triton on CUDA; the Triton interpreter takes
            float32 / float64). Any strides.
        weight: ``(N, K)`` in ``x``'s dtype and device; any strides (a transposed view is fine).
        bias: ``(N,)`` or None.
        backend: which implementation runs.

    Returns:
        ``(*, N)`` in ``x``'s dtype: ``max(x @ weight.T + bias, 0)``. Gradients flow to ``x``,
        ``weight`` and ``bias``; backward needs only ``x``, ``weight`` and this output.
    """
    key = None
    if isinstance(x, torch.Tensor) and x.device.type == "cpu":
        # a signature auto sent to torch's linear + relu before (fastops/ops/_contract.py)
        key = _contract.route_key(_lr.OP, (x, weight, bias), backend, "cpu")
        if _contract.remembered_route(key) is not None:
            return F.relu(F.linear(x, weight, bias))
    if isinstance(x, torch.Tensor):  # torch's policy: linear runs in the autocast dtype
        x, weight, bias = _autocast(x.device.type, False, x, weight, bias)
    _lr.check_types(x, weight, bias)
    name = _kernel_backend(_lr.OP, backend, x.device.type, x.dtype)
    if name == "native" and x.device.type == "cpu" and _is_auto(backend) and _lr.cpu_auto_uses_torch(x, weight):
        # Too small for the fused kernel to pay for its dispatch (see fastops/ops/linear_relu.py):
        # torch's own linear + relu, after the contract so that bad input gets the same error.
        _lr.check_call(x, weight, bias)
        out = F.relu(F.linear(x, weight, bias))
        _contract.remember_route(key, "torch")
        return out
    if name is None:  # no registered op will check them
        _lr.check_call(x, weight, bias)
        name = _backend.resolve(_lr.OP, backend, x.device.type, x.dtype)
    if name == "torch":
        return reference.linear_relu(x, weight, bias)
    return _lr.ops(name).linear_relu_fwd(x, weight, bias)


def linear_cross_entropy(
    input: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight_classes: torch.Tensor | None = None,
    softcap: float | None = None,
    z_loss: float = 0.0,
    chunk_rows: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Fused ``F.cross_entropy(softcap(F.linear(input, weight, bias)), target) + z_loss * lse^2``, the
    loss head of a language model, computed chunk by chunk over rows: no ``(N, V)`` logits tensor.

    Args:
        input: ``(*, H)`` hidden states, floating (float32 / float64; float16 / bfloat16 too).
        weight: ``(V, H)`` (the lm_head weight), input's dtype and device.
        target: ``(*)`` int64 (or uint8) class indices, input's leading shape. Probability targets
            are refused (ValueError): they would be an ``(N, V)`` tensor.
        bias: ``(V,)`` or None.
        ignore_index: rows whose target equals it contribute no loss and no gradient.
        reduction: ``"none"`` -> ``(*)``; ``"mean"`` / ``"sum"`` -> a scalar. ``"mean"`` divides by the
            summed class weight of the non-ignored targets (NaN when that is 0, as torch).
        label_smoothing: in [0, 1].
        weight_classes: ``(V,)`` class weights (``F.cross_entropy``'s ``weight``) or None.
        softcap: None, or > 0: ``z = softcap * tanh(logits / softcap)`` before the softmax (Gemma-2).
        z_loss: >= 0; adds ``z_loss * logsumexp(z)^2`` to every non-ignored row's loss.
        chunk_rows: rows per chunk; None chooses from the shapes.
        backend: which implementation runs (see :func:`fastops.backends`).

    Returns:
        The loss in input's dtype (float32 under autocast, where the GEMMs run in the autocast dtype
        and the softmax in float32). Gradients flow to input, weight and bias; a ``weight_classes``
        that requires grad is differentiated through the torch composition.
    """
    out_dtype = None
    if isinstance(input, torch.Tensor):  # torch's policy: linear in the autocast dtype, the loss in float32
        dev = input.device.type
        if _autograd.autocast_dtype(dev, False) is not None:
            input, weight, bias = _autocast(dev, False, input, weight, bias)
            out_dtype = torch.float32
    x, t, args = _lce.prepare(
        input,
        weight,
        target,
        bias,
        ignore_index,
        reduction,
        label_smoothing,
        weight_classes,
        softcap,
        z_loss,
        chunk_rows,
    )
    out_dtype = out_dtype or input.dtype
    name = _kernel_backend(_lce.OP, backend, x.device.type, x.dtype)
    needs_extra_grads = torch.is_grad_enabled() and weight_classes is not None and weight_classes.requires_grad
    if name is None or needs_extra_grads:  # no registered op will check them
        _lce.check_call(x, weight, bias, t, weight_classes, *args)
    if name is None:
        name = _backend.resolve(_lce.OP, backend, x.device.type, x.dtype)
    if name == "torch" or needs_extra_grads:
        _lce.check_target_range(_lce.FWD, t, weight.shape[0], ignore_index)  # the kernels' text
        acc = _lce.acc_dtype(x.dtype)
        loss = reference.linear_cross_entropy(
            input.to(acc),
            weight.to(acc),
            target,
            None if bias is None else bias.to(acc),
            ignore_index,
            reduction,
            label_smoothing,
            weight_classes,
            softcap,
            z_loss,
        )
        return loss.to(out_dtype)
    compute_grad = (
        torch.is_grad_enabled()
        and reduction != "none"
        and any(a is not None and a.requires_grad for a in (x, weight, bias))
    )
    loss = _lce.ops(name).linear_cross_entropy_fwd(x, weight, bias, t, weight_classes, *args, compute_grad)[0]
    if reduction == "none":
        loss = loss.reshape(target.shape)
    return loss.to(out_dtype)


def _is_auto(backend: str) -> bool:
    """Whether ``backend`` leaves the choice to fastops (``"auto"`` with no ``FASTOPS_BACKEND``)."""
    return backend == "auto" and os.environ.get("FASTOPS_BACKEND", "auto") == "auto"


def _native_wins_at_size(
    x: torch.Tensor, weight: torch.Tensor, st: list[int], pad: list[int], dil: list[int], groups: int
) -> bool:
    """Whether a normalised CPU conv2d call (x 4-D) has an output size at which its class runs native
    under ``backend="auto"``: at least the pixels of :func:`fastops.ops.conv2d.cpu_auto_native_min_pixels`
    (the Winograd and the register-blocked classes), or within the small-output range of
    :func:`fastops.ops.conv2d.cpu_auto_small_output_rule` (AVX2-only CPUs). Symbolic sizes (export,
    dynamic compile) take the native op: reading them would put a guard on a dynamic dim."""
    if x.dim() != 4:
        return False
    least = _conv.cpu_auto_native_min_pixels(x.dtype, weight.shape, st, pad, dil, groups)
    small = _conv.cpu_auto_small_output_rule(x.dtype, weight.shape, st, pad, dil, groups)
    if not least and small is None:
        return False
    if not all(isinstance(v, int) for v in (*x.shape, *weight.shape)):
        return True
    p, q = (_conv.out_size(int(x.shape[2 + i]), int(weight.shape[2 + i]), st[i], pad[i], dil[i]) for i in range(2))
    if least and p * q >= least:
        return True
    if small is None:
        return False
    most_pixels, least_rows, most_rows = small
    return p * q <= most_pixels and least_rows <= int(x.shape[0]) * p * q <= most_rows


def _kernel_backend(op: str, backend: str, device: str, dtype: torch.dtype) -> str | None:
    """The backend with registered ops (``"native"`` / ``"triton"``) that :func:`fastops._backend.resolve`
    would pick for the call, found quietly; None when it would pick the torch composition (with its
    fallback warning) or refuse the call (an error).

    Each op has one argument contract, checked once per call: by the C++ kernels (native), by the
    Triton op's own Python check (triton), or, only when neither runs, by the API before the torch
    composition (``check_call`` of ``fastops/ops/<stem>.py``: the same text). Resolving quietly first
    keeps that order for bad input: an integer tensor gets the contract's TypeError, not a fallback
    warning or a "backend cannot run" RuntimeError before it.
    """
    if backend == "auto":
        backend = os.environ.get("FASTOPS_BACKEND", "auto")
    if backend == "auto":
        if not _backend.why_not(op, "native", device, dtype):
            return "native"
        if device == "cuda" and not _backend.why_not(op, "triton", device, dtype):
            return "triton"
        return None
    if backend in ("native", "triton") and not _backend.why_not(op, backend, device, dtype):
        return backend
    return None


def _autocast(device: str, to_float32: bool, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The floating tensors cast as autocast would for the op replaced, when autocast is on for
    ``device`` (the registered ops' Autocast kernels do the same; casting here first lets the argument
    checks see the dtypes the op will run in, e.g. an fp32 weight beside a bf16 activation)."""
    dtype = _autograd.autocast_dtype(device, to_float32)
    if dtype is None:
        return tensors
    return tuple(_autograd.cast_for_autocast(t, device, dtype) for t in tensors)
