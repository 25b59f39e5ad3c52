"""Softmax cross-entropy: the registered ops' contract (output shapes, i.e. the fake kernels, and the
argument checks every Python-side backend runs, with csrc/fastops.h's messages), the API call's
normalisation, and the ops' autograd.

:func:`register` is the one place that knows both passes, for each backend's namespace:
``cross_entropy_fwd`` returns the per-row loss and the row max and log-sum-exp relative to it as
``stats`` (nothing N x C saved); its backward calls ``cross_entropy_bwd`` with the per-row upstream
gradient (the reduction, a torch sum / division in the accumulation dtype, is differentiated by
autograd). Both ops are differentiable (see :mod:`fastops.ops._autograd`).
``CrossEntropyFunction`` serves the opt-in in-place backward only.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import is_fake

from fastops import _backend, reference
from fastops.ops import _autograd, namespace
from fastops.ops._contract import check_ignore_index, check_same_device, dtype_str, once_per_signature, shape_str

OP = "cross_entropy"
REDUCTIONS = ("none", "mean", "sum")

_backend.register_op(
    OP,
    native_schema="cross_entropy_fwd",
    native={"cpu": _backend.ALL_FLOAT_DTYPES, "cuda": _backend.ALL_FLOAT_DTYPES},
    triton={"cuda": _backend.ALL_FLOAT_DTYPES, "cpu": _backend.ALL_FLOAT_DTYPES},
)

# ---- backend="auto" on CPU: calls too small to pay for the op's dispatch go to torch ----------------
#
# A fastops call costs about 150 us more than F.cross_entropy in Python dispatch (the registered op's
# autograd kernel and autograd.Function, the "mean" reduction as torch ops, the backward op), which
# the two-numbers-per-row kernel earns back only on large enough logits. Measured fwd+bwd, fastops
# native vs F.cross_entropy, Intel Xeon (AVX-512) 2 threads, session 2026-12-06, by N*C:
#   float32  640 0.40x, 12.8K 0.27x, 102K 0.65x, 256K 1.01x, 1M 1.21x, 2M 2.14x
#   bfloat16 640 0.27x, 102K 0.56x, 256K 0.83x, 1M 0.94x (4096x32000: 4.70x in the bench)
#   float64  640 0.42x, 102K 0.71x, 256K 1.15x;  float16 102K 0.63x, 256K 0.86x, 1M 1.08x
CPU_AUTO_TORCH_BELOW = 1 << 19  # logits elements


def cpu_auto_uses_torch(logits: torch.Tensor) -> str:
    """Why ``backend="auto"`` runs torch's ``F.cross_entropy`` for this CPU call (``""``: the native
    kernel): logits of fewer than CPU_AUTO_TORCH_BELOW elements, where the call's fixed cost
    outweighs the kernel's single pass."""
    n = logits.numel()
    if not isinstance(n, int):
        return ""  # symbolic sizes (export, dynamic compile): the op, no guard on a dynamic dim
    if n < CPU_AUTO_TORCH_BELOW:
        return f"logits of fewer than 2^{CPU_AUTO_TORCH_BELOW.bit_length() - 1} elements"
    return ""


def row_shape(logits: torch.Tensor) -> list[int]:
    """logits (C,) -> (); (N, C) -> (N,); (N, C, d1, ..., dk) -> (N, d1, ..., dk)."""
    shape = list(logits.shape)
    del shape[0 if logits.dim() == 1 else 1]
    return shape


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64 logits, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def stats_shape(rows: list[int]) -> list[int]:
    """Shape of the forward's saved row statistics for logits of row shape ``rows``: (2, *rows);
    [0] = row max m, [1] = log sum exp(x - m).

    Two numbers rather than lse = m + log sum: x - lse loses ulp(m) / 2 when lse is rounded to the
    accumulation dtype, while x - m is exact for every x near the max (csrc/fastops.h).
    """
    return [2, *rows]


def fwd_fake(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, stats): loss of logits' row shape, stats (2, *row_shape), both in the accumulation dtype."""
    check_same_device("cross_entropy_fwd", logits=logits, target=target, weight=weight)
    dt = acc_dtype(logits.dtype)
    return logits.new_empty(row_shape(logits), dtype=dt), logits.new_empty(stats_shape(row_shape(logits)), dtype=dt)


def bwd_fake(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
) -> torch.Tensor:
    """d loss / d logits: logits' shape and dtype (contiguous)."""
    check_same_device(
        "cross_entropy_bwd", grad_loss=grad_loss, logits=logits, target=target, weight=weight, stats=stats
    )
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def bwd_inplace_fake(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
) -> None:
    """The in-place backward returns nothing; logits is overwritten with the gradient."""
    check_same_device(
        "cross_entropy_bwd_", grad_loss=grad_loss, logits=logits, target=target, weight=weight, stats=stats
    )
    return None


# ---- the registered ops' argument contract (csrc/fastops.h check_cross_entropy_args) -----------


class Geometry(NamedTuple):
    """logits viewed as (B, C, D); row r = b * D + d holds C logits at stride D."""

    B: int
    C: int
    D: int
    probs: bool  # target holds class probabilities (logits' shape, logits' dtype)
    row_shape: list[int]  # logits' shape without the class dim

    @property
    def rows(self) -> int:
        return self.B * self.D


def check_op_args(
    op: str,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    label_smoothing: float,
    ignore_index: int | None = None,
) -> Geometry:
    """csrc/fastops.h check_cross_entropy_args: ValueError for shapes/values/devices, TypeError for dtypes.

    ``ignore_index``, when given, is range-checked too (:func:`check_ignore_index`).
    """
    if ignore_index is not None:
        check_ignore_index(op, ignore_index)
    if logits.dim() < 1:
        raise ValueError(f"{op}: logits must have shape (C,), (N, C) or (N, C, d1, ...), got {shape_str(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{op}: logits must be a floating tensor, got {dtype_str(logits.dtype)}")
    cdim = 0 if logits.dim() == 1 else 1
    C = logits.shape[cdim]
    if C < 1:
        raise ValueError(f"{op}: logits must have at least one class, got shape {shape_str(logits.shape)}")
    B = 1 if logits.dim() == 1 else logits.shape[0]
    row_shape = [n for i, n in enumerate(logits.shape) if i != cdim]
    D = 1
    for n in logits.shape[2:]:
        D *= n
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    if target.device != logits.device:
        raise ValueError(f"{op}: target is on {target.device} but logits are on {logits.device}")
    probs = target.is_floating_point()
    if probs:
        if target.shape != logits.shape:
            raise ValueError(
                f"{op}: class-probability target must have logits' shape {shape_str(logits.shape)}, "
                f"got {shape_str(target.shape)}"
            )
        if target.dtype != logits.dtype:
            raise TypeError(
                f"{op}: class-probability target must have logits' dtype {dtype_str(logits.dtype)}, "
                f"got {dtype_str(target.dtype)}"
            )
    else:
        if target.dtype != torch.int64:
            raise TypeError(
                f"{op}: class-index target must be int64 (or float class probabilities), got {dtype_str(target.dtype)}"
            )
        if list(target.shape) != row_shape:
            raise ValueError(
                f"{op}: class-index target must have shape {shape_str(row_shape)} for logits of shape "
                f"{shape_str(logits.shape)}, got {shape_str(target.shape)}"
            )
    if weight is not None:
        if weight.dim() != 1 or weight.shape[0] != C:
            raise ValueError(f"{op}: weight must have shape ({C},) (one per class), got {shape_str(weight.shape)}")
        if weight.dtype != logits.dtype:
            raise TypeError(
                f"{op}: weight must have logits' dtype {dtype_str(logits.dtype)}, got {dtype_str(weight.dtype)}"
            )
        if weight.device != logits.device:
            raise ValueError(f"{op}: weight is on {weight.device} but logits are on {logits.device}")
    return Geometry(B, C, D, probs, row_shape)


def check_op_bwd_args(op: str, g: Geometry, logits: torch.Tensor, grad_loss: torch.Tensor, stats: torch.Tensor) -> None:
    """csrc/fastops.h check_cross_entropy_bwd_args: grad_loss (row shape), stats (2, *row shape), acc dtype."""
    acc = acc_dtype(logits.dtype)
    for name, t, shape in (("grad_loss", grad_loss, g.row_shape), ("stats", stats, stats_shape(g.row_shape))):
        if list(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape_str(shape)}, got {shape_str(t.shape)}")
        if t.dtype != acc:
            raise TypeError(
                f"{op}: {name} must be {dtype_str(acc)} for {dtype_str(logits.dtype)} logits, got {dtype_str(t.dtype)}"
            )
        if t.device != logits.device:
            raise ValueError(f"{op}: {name} is on {t.device} but logits are on {logits.device}")


def check_class_indices(op: str, target: torch.Tensor, C: int, ignore_index: int) -> None:
    """IndexError for a class index outside [0, C) that is not ignore_index. On GPU: a reduction and a sync.

    ValueError first when ignore_index itself does not fit in int64 (:func:`check_ignore_index`).
    """
    check_ignore_index(op, ignore_index)
    if torch.compiler.is_compiling() or is_fake(target):
        # Traced (torch.compile / export): no data to look at. The kernels write NaN for such rows,
        # the torch composition's gather raises.
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= C))
    if bool(bad.any()):
        r = int(bad.reshape(-1).nonzero()[0])
        v = int(target.reshape(-1)[r])
        raise IndexError(
            f"{op}: target[{r}] = {v} is out of bounds for {C} classes "
            f"(expected 0 <= target < {C}, or target == ignore_index {ignore_index})"
        )


if _backend.NATIVE_LOADED:
    torch.library.register_fake("fastops::cross_entropy_fwd")(fwd_fake)
    torch.library.register_fake("fastops::cross_entropy_bwd")(bwd_fake)
    torch.library.register_fake("fastops::cross_entropy_bwd_")(bwd_inplace_fake)


# ---- the public API's call (fastops.functional.cross_entropy) ----------------------------------


FWD = "cross_entropy_fwd"  # the registered op the API calls: its checks' messages start with this name


def normalize_args(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    reduction: str,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The API-level part of a cross-entropy call, run on every backend: what the registered ops
    cannot check (non-tensor arguments, ``reduction``, an ``ignore_index`` beyond int64, which the
    dispatcher would refuse without saying why) and the dtype normalisation torch does.

    Returns ``(input, target, weight)``: uint8 class indices become int64; a probability target of
    another floating dtype is promoted with the logits (and the weight) to their common dtype, as
    F.cross_entropy computes in it. The argument contract itself is the op's (:func:`check_call`).
    """
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"cross_entropy: input and target must be tensors, got {type(input)} and {type(target)}")
    if weight is not None and not isinstance(weight, torch.Tensor):
        raise TypeError(f"cross_entropy: weight must be a tensor or None, got {type(weight).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_ignore_index(OP, ignore_index)
    if target.dtype == torch.uint8:
        target = target.long()
    elif target.is_floating_point() and input.is_floating_point() and target.dtype != input.dtype:
        common = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(common), target.to(common)
        if weight is not None and weight.is_floating_point():
            weight = weight.to(common)
    return input, target, weight


@once_per_signature
def check_call(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, label_smoothing: float
) -> Geometry:
    """The contract of a ``cross_entropy_fwd`` call, for the API calls no registered op checks (the
    torch composition): the text the op would raise. A tensor on ``meta`` beside others makes the
    dispatcher run the op's fake kernel (:func:`fwd_fake`), whose device check speaks first; any
    other bad input meets the C++ check (:func:`check_op_args`). Once per call signature
    (:func:`fastops.ops._contract.checked_once`)."""
    if any(t is not None and t.device.type == "meta" for t in (logits, target, weight)):
        check_same_device(FWD, logits=logits, target=target, weight=weight)
    return check_op_args(FWD, logits, target, weight, label_smoothing)


def check_target_range(target: torch.Tensor, n_classes: int, ignore_index: int) -> None:
    """IndexError for a class index outside [0, C) that is not ``ignore_index`` (reads the data)."""
    if not target.is_floating_point():
        check_class_indices(OP, target, n_classes, ignore_index)


ops = partial(namespace, stem=OP)  # ops(backend): the torch.ops namespace of backend's cross-entropy ops


def _fwd_composition(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cross_entropy_fwd as torch ops: the per-row loss (reference, reduction "none") and the row
    statistics (max m, log sum exp(x - m)), both in the accumulation dtype."""
    acc = acc_dtype(logits.dtype)
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


# ---- the calls the generated tests make (tests/test_contract.py) -------------------------------


def opcheck_examples(ns, device: str, backend: str) -> Iterator[tuple[object, tuple, dict]]:  # noqa: ANN001
    """``(op, args, kwargs)``: small valid calls of ``ns``'s cross-entropy ops for ``torch.library.opcheck``:
    index and probability targets, with and without weights and smoothing, (C,), (N, C) and
    (N, C, d) logits, in float64 (and float16 / bfloat16 on the native CPU kernels: loss and stats
    in float32, the gradient in the logits' dtype)."""
    from fastops.testing import make_tensor

    low = [torch.float16, torch.bfloat16] if (device, backend) == ("cpu", "native") else []
    for dtype in [torch.float64, *low]:
        for shape, probs, with_weight, smoothing in [
            ((5, 9), False, True, 0.1),
            ((9,), False, False, 0.0),
            ((3, 9, 4), True, True, 0.2),
            ((4, 9), True, False, 0.0),
        ]:
            cdim = 0 if len(shape) == 1 else 1
            x = make_tensor(shape, dtype, device, scale=3.0)
            if probs:
                target = torch.softmax(make_tensor(shape, torch.float64, device, scale=2.0), dim=cdim).to(dtype)
            else:
                target = torch.randint(0, shape[cdim], row_shape(x), device=device)
                target[torch.rand(row_shape(x), device=device) < 0.2] = -100  # some ignored rows
            weight = make_tensor((shape[cdim],), dtype, device).abs() + 0.1 if with_weight else None
            args = (x, target, weight, -100, smoothing)
            yield ns.cross_entropy_fwd, args, {}
            loss, stats = ns.cross_entropy_fwd(*args)
            grad = torch.randn_like(loss)
            yield ns.cross_entropy_bwd, (grad, x, target, weight, stats, -100, smoothing), {}
            yield ns.cross_entropy_bwd_, (grad, x.clone(), target, weight, stats, -100, smoothing), {}


if _backend.NATIVE_LOADED:
    register(torch.ops.fastops)
