"""Fused linear + cross-entropy (the LM loss head): fake kernels, argument checks, compositions, autograd.

The ops (csrc/registration.cpp, /work/lce_spec.md): ``linear_cross_entropy_fwd`` sweeps the rows in
chunks, forming each chunk's logits ``z = softcap(x W^T + b)`` and its cross-entropy (+ z-loss), so no
(N, V) tensor exists; with ``compute_grad`` and a reduction it also returns the gradients of the
reduced loss from the same sweep. ``linear_cross_entropy_bwd`` recomputes the chunk logits and returns
the gradients of ``sum(grad_loss * loss)``. :func:`register` is the one place that knows both passes,
for each backend's namespace (the Triton module calls it for ``torch.ops.fastops_triton``).

The first backward through a forward that precomputed its gradients scales the op's grad_x /
grad_weight / grad_bias outputs in place by grad_loss and returns them (the functional never hands
them out; a raw-op caller who keeps them sees them scaled). Later backwards (retain_graph) and
double backward go through ``linear_cross_entropy_bwd``.

Shared with the Triton backend: :func:`fwd_fake`, :func:`bwd_fake`, :func:`check_op_args` (the op
argument contract, the same messages as csrc/fastops.h's check_linear_cross_entropy_args),
:func:`chunk_rows_for` and the compositions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from typing import Any, NamedTuple

import torch
from torch._subclasses.fake_tensor import is_fake

from fastops import _backend, reference
from fastops.ops import _autograd, namespace
from fastops.ops._contract import check_ignore_index, check_same_device, dtype_str, num_str, shape_str

OP = "linear_cross_entropy"
FWD = "linear_cross_entropy_fwd"  # the registered op the API calls: its checks' messages start with this name
REDUCTIONS = ("none", "mean", "sum")

_backend.register_op(
    OP,
    native_schema="linear_cross_entropy_fwd",
    native={"cpu": _backend.ALL_FLOAT_DTYPES, "cuda": _backend.ALL_FLOAT_DTYPES},
    triton={"cuda": _backend.ALL_FLOAT_DTYPES, "cpu": _backend.ALL_FLOAT_DTYPES},
)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class Geometry(NamedTuple):
    """x (N, H), weight (V, H)."""

    N: int
    H: int
    V: int


def chunk_rows_for(N: int, H: int, V: int, chunk_rows: int = 0) -> int:
    """Rows per chunk (csrc/fastops.h linear_cross_entropy_chunk_rows): ``chunk_rows`` when > 0, else
    about max(N H, V H) / 2 logits per chunk (bigger chunks amortise the GEMMs' packing of the
    weight: see csrc/fastops.h), at most the (N, V) logits / 8, at least min(N, 64) rows,
    a multiple of 8 where possible."""
    if N == 0:
        return 1
    if chunk_rows > 0:
        return min(chunk_rows, N)
    rows = max(N * H, V * H) // 2 // max(V, 1)
    rows = min(rows, (N + 7) // 8)
    rows = max(rows, min(N, 64))
    if rows >= 8:
        rows -= rows % 8
    return max(1, min(rows, N))


def check_op_args(
    op: str,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float,
    z_loss: float,
    reduction: int,
    chunk_rows: int,
) -> Geometry:
    """The registered ops' argument contract: ValueError for shapes / values / devices, TypeError for
    dtypes, each naming the argument (csrc/fastops.h check_linear_cross_entropy_args)."""
    check_ignore_index(op, ignore_index)
    if x.dim() != 2:
        raise ValueError(f"{op}: x must have shape (N, H), got {shape_str(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating tensor, got {dtype_str(x.dtype)}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"{op}: weight must have shape (V, {x.shape[1]}) for x of shape {shape_str(x.shape)}, "
            f"got {shape_str(weight.shape)}"
        )
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: weight must have x's dtype {dtype_str(x.dtype)}, got {dtype_str(weight.dtype)}")
    if weight.device != x.device:
        raise ValueError(f"{op}: weight is on {weight.device} but x is on {x.device}")
    N, H, V = x.shape[0], x.shape[1], weight.shape[0]
    if V < 1:
        raise ValueError(f"{op}: weight must have at least one class (row), got shape {shape_str(weight.shape)}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != V:
            raise ValueError(f"{op}: bias must have shape ({V},), got {shape_str(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: bias must have x's dtype {dtype_str(x.dtype)}, got {dtype_str(bias.dtype)}")
        if bias.device != x.device:
            raise ValueError(f"{op}: bias is on {bias.device} but x is on {x.device}")
    if target.dim() != 1 or target.shape[0] != N:
        raise ValueError(
            f"{op}: target must have shape ({N},) for x of shape {shape_str(x.shape)}, got {shape_str(target.shape)}"
        )
    if target.dtype != torch.int64:
        raise TypeError(f"{op}: target must be int64 class indices, got {dtype_str(target.dtype)}")
    if target.device != x.device:
        raise ValueError(f"{op}: target is on {target.device} but x is on {x.device}")
    if class_weight is not None:
        if class_weight.dim() != 1 or class_weight.shape[0] != V:
            raise ValueError(f"{op}: class_weight must have shape ({V},), got {shape_str(class_weight.shape)}")
        if not class_weight.is_floating_point():
            raise TypeError(f"{op}: class_weight must be floating, got {dtype_str(class_weight.dtype)}")
        if class_weight.device != x.device:
            raise ValueError(f"{op}: class_weight is on {class_weight.device} but x is on {x.device}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be between 0.0 and 1.0, got {num_str(label_smoothing)}")
    if not (softcap >= 0.0 and math.isfinite(softcap)):
        raise ValueError(f"{op}: softcap must be >= 0 and finite, got {num_str(softcap)}")
    if not (z_loss >= 0.0 and math.isfinite(z_loss)):
        raise ValueError(f"{op}: z_loss must be >= 0 and finite, got {num_str(z_loss)}")
    if reduction not in (0, 1, 2):
        raise ValueError(f"{op}: reduction must be 0 (none), 1 (mean) or 2 (sum), got {reduction}")
    if chunk_rows < 0:
        raise ValueError(f"{op}: chunk_rows must be >= 0, got {chunk_rows}")
    return Geometry(N, H, V)


def check_target_range(op: str, target: torch.Tensor, V: int, ignore_index: int) -> None:
    """IndexError for a class index outside [0, V) that is not ``ignore_index`` (reads the data; skipped
    while tracing)."""
    if torch.compiler.is_compiling() or is_fake(target) or target.numel() == 0:
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= V))
    if bool(bad.any()):
        r = int(bad.reshape(-1).nonzero()[0])
        v = int(target.reshape(-1)[r])
        raise IndexError(
            f"{op}: target[{r}] = {v} is out of bounds for {V} classes "
            f"(expected 0 <= target < {V}, or target == ignore_index {ignore_index})"
        )


# ---- fake kernels -------------------------------------------------------------------------------


def _grad_shapes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, want: bool) -> tuple[Any, ...]:
    g = Geometry(x.shape[0], x.shape[1], weight.shape[0])
    bias_dtype = bias.dtype if bias is not None else x.dtype
    if not want:
        return (x.new_empty((0,)), weight.new_empty((0,)), x.new_empty((0,), dtype=bias_dtype))
    return (
        x.new_empty((g.N, g.H)),
        weight.new_empty((g.V, g.H)),
        x.new_empty((g.V,) if bias is not None else (0,), dtype=bias_dtype),
    )


def fwd_fake(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float,
    z_loss: float,
    reduction: int,
    chunk_rows: int,
    compute_grad: bool,
) -> tuple[torch.Tensor, ...]:
    """(loss (N,) or (), stats (2, N), grad_x (N, H), grad_weight (V, H), grad_bias (V,) or all three (0,))."""
    op = "linear_cross_entropy_fwd"
    check_same_device(op, x=x, weight=weight, bias=bias, target=target, class_weight=class_weight)
    g = check_op_args(
        op, x, weight, bias, target, class_weight, ignore_index, label_smoothing, softcap, z_loss, reduction, chunk_rows
    )
    acc = acc_dtype(x.dtype)
    loss = x.new_empty((g.N,) if reduction == 0 else (), dtype=acc)
    stats = x.new_empty((2, g.N), dtype=acc)
    return (loss, stats, *_grad_shapes(x, weight, bias, compute_grad and reduction != 0))


def bwd_fake(
    grad_loss: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    stats: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    softcap: float,
    z_loss: float,
    reduction: int,
    chunk_rows: int,
) -> tuple[torch.Tensor, ...]:
    """(grad_x (N, H), grad_weight (V, H), grad_bias (V,) or (0,) without bias)."""
    op = "linear_cross_entropy_bwd"
    check_same_device(
        op, grad_loss=grad_loss, x=x, weight=weight, bias=bias, target=target, class_weight=class_weight, stats=stats
    )
    check_op_args(
        op, x, weight, bias, target, class_weight, ignore_index, label_smoothing, softcap, z_loss, reduction, chunk_rows
    )
    return _grad_shapes(x, weight, bias, True)


if _backend.NATIVE_LOADED:
    try:
        torch.library.register_fake("fastops::linear_cross_entropy_fwd")(fwd_fake)
        torch.library.register_fake("fastops::linear_cross_entropy_bwd")(bwd_fake)
        _HAS_NATIVE_SCHEMA = True
    except RuntimeError:  # an extension built before this op existed
        _HAS_NATIVE_SCHEMA = False
else:
    _HAS_NATIVE_SCHEMA = False


ops = partial(namespace, stem=OP)  # ops(backend): the torch.ops namespace of backend's linear_cross_entropy ops


# ---- compositions (torch ops; torch.func and double backward differentiate these) -----------------


def _logits(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(l, z): l = x W^T + b and z = softcap(l), (N, V), in the accumulation dtype."""
    acc = acc_dtype(x.dtype)
    logits = x.to(acc) @ weight.to(acc).t()
    if bias is not None:
        logits = logits + bias.to(acc)
    z = softcap * torch.tanh(logits / softcap) if softcap > 0 else logits
    return logits, z


def _denominator(
    target: torch.Tensor, class_weight: torch.Tensor | None, ignore_index: int, acc: torch.dtype
) -> torch.Tensor:
    """What "mean" divides by: the summed class weight of the non-ignored targets (their count)."""
    valid = target != ignore_index
    if class_weight is None:
        return valid.sum(dtype=acc)
    return (class_weight.to(acc)[torch.where(valid, target, 0)] * valid).sum()


def _scale(
    target: torch.Tensor, class_weight: torch.Tensor | None, ignore_index: int, reduction: int, acc: torch.dtype
) -> torch.Tensor | None:
    """The mean's factor on each row (NaN when the denominator is 0), None for the other reductions."""
    if reduction != 1:
        return None
    denom = _denominator(target, class_weight, ignore_index, acc)
    return torch.where(denom == 0, float("nan"), 1 / denom)


def _row_grad(
    z: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    g: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    softcap: float,
    z_loss: float,
) -> torch.Tensor:
    """G = g_r dloss_r/dl (N, V) from the capped logits z, written from the formulas (driver header):
    differentiable in z and g (the ground truth of the second derivative)."""
    n, v = z.shape
    e = label_smoothing
    valid = target != ignore_index
    y = torch.where(valid, target, 0)
    w = None if class_weight is None else class_weight.to(z.dtype)
    wy = torch.ones(n, dtype=z.dtype, device=z.device) if w is None else w[y]
    wsum = float(v) if w is None else w.sum()
    lse = torch.logsumexp(z, -1)
    p = torch.exp(z - lse.unsqueeze(-1))
    coef = (1 - e) * wy + 2 * z_loss * lse
    if e > 0:
        coef = coef + e * wsum / v
    grad = coef.unsqueeze(-1) * p - ((1 - e) * wy).unsqueeze(-1) * torch.nn.functional.one_hot(y, v).to(z.dtype)
    if e > 0:
        grad = grad - e / v * (w if w is not None else 1.0)
    grad = torch.where(valid.unsqueeze(-1), grad * g.unsqueeze(-1), 0.0)
    if softcap > 0:
        grad = grad * (1 - (z / softcap) ** 2)
    return grad


def _grads(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dl: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = dl.dtype
    gx = (dl @ weight.to(acc)).to(x.dtype)
    gw = (dl.t() @ x.to(acc)).to(weight.dtype)
    gb = dl.sum(0).to(bias.dtype) if bias is not None else x.new_empty((0,))
    return gx, gw, gb


def _row_losses(
    z: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
) -> torch.Tensor:
    loss = reference.cross_entropy(z, target, class_weight, ignore_index, "none", label_smoothing)
    if z_loss > 0:
        lse = torch.logsumexp(z, -1)
        loss = loss + torch.where(target != ignore_index, z_loss * lse * lse, 0.0)
    return loss


def fwd_composition(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float,
    z_loss: float,
    reduction: int,
    chunk_rows: int,
    compute_grad: bool,
) -> tuple[torch.Tensor, ...]:
    """linear_cross_entropy_fwd as torch ops (materialises the (N, V) logits), the five outputs."""
    acc = acc_dtype(x.dtype)
    _, z = _logits(x, weight, bias, softcap)
    rows = _row_losses(z, target, class_weight, ignore_index, label_smoothing, z_loss)
    scale = _scale(target, class_weight, ignore_index, reduction, acc)
    if reduction == 0:
        loss = rows
    elif reduction == 2:
        loss = rows.sum()
    else:
        denom = _denominator(target, class_weight, ignore_index, acc)
        loss = torch.where(denom == 0, float("nan"), rows.sum() / denom)
    zd = z.detach()
    m = zd.amax(-1) if zd.shape[0] else zd.new_empty((0,))
    ls = torch.logsumexp(zd - m.unsqueeze(-1), -1)
    stats = torch.stack([m, ls])
    if compute_grad and reduction != 0:
        g = (scale if scale is not None else torch.ones((), dtype=acc, device=x.device)).expand(x.shape[0])
        with torch.no_grad():
            dl = _row_grad(zd, target, class_weight, g, ignore_index, label_smoothing, softcap, z_loss)
            grads = _grads(x.detach(), weight.detach(), None if bias is None else bias.detach(), dl)
    else:
        grads = _grad_shapes(x, weight, bias, False)
    return (loss, stats, *grads)


def bwd_composition(
    grad_loss: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    stats: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    softcap: float,
    z_loss: float,
    reduction: int,
    chunk_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """linear_cross_entropy_bwd as torch ops, differentiable in grad_loss, x, weight and bias."""
    acc = acc_dtype(x.dtype)
    _, z = _logits(x, weight, bias, softcap)
    g = grad_loss.to(acc)
    scale = _scale(target, class_weight, ignore_index, reduction, acc)
    if scale is not None:
        g = g * scale
    g = g.expand(x.shape[0])
    dz = _row_grad(z, target, class_weight, g, ignore_index, label_smoothing, softcap, z_loss)
    return _grads(x, weight, bias, dz)


# ---- autograd / autocast ------------------------------------------------------------------------


def register(namespace) -> None:  # noqa: ANN001 - a torch.ops namespace
    """Autograd (double backward included), vmap and autocast of ``namespace``'s linear_cross_entropy ops."""

    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        x, weight, bias, target, class_weight, *config = inputs
        _, stats, gx, gw, gb = output
        ctx.mark_non_differentiable(stats, gx, gw, gb)
        # No zero tensors for the outputs without gradients: materialising them would allocate (and
        # fill) a second V x H grad_weight-sized buffer in every backward.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, bias, target, class_weight, stats)
        ctx.config = tuple(config[:-1])  # ignore_index .. chunk_rows
        ctx.has_bias = bias is not None
        # The gradients the forward computed, used once by the first backward. Held as attributes, not
        # saved tensors: that backward scales them in place (no second V x H buffer at the peak), which
        # would trip the saved-tensor version check of a later backward (retain_graph), which
        # recomputes through the _bwd op instead. Non-differentiable outputs have no grad_fn: no cycle.
        ctx.precomputed = [gx, gw, gb] if bool(config[-1]) and config[-3] != 0 else None

    def backward(ctx, grad_loss: torch.Tensor, *_: Any):  # noqa: ANN001, ANN202
        x, weight, bias, target, class_weight, stats = ctx.saved_tensors
        need = ctx.needs_input_grad
        if grad_loss is None:
            return (None,) * 12
        pre, ctx.precomputed = ctx.precomputed, None
        if pre is not None and not torch.is_grad_enabled():
            # A plain tensor is scaled in place: the forward's buffers become the returned gradients.
            # While tracing (torch.compile / opcheck: fake or functional tensors) out of place.
            traced = torch.compiler.is_compiling() or any(type(t) is not torch.Tensor for t in pre)
            gx, gw, gb = (t * grad_loss.to(t.dtype) if traced else t.mul_(grad_loss.to(t.dtype)) for t in pre)
        else:
            gx, gw, gb = namespace.linear_cross_entropy_bwd(
                grad_loss.to(stats.dtype), x, weight, bias, target, class_weight, stats, *ctx.config
            )
        return (
            gx if need[0] else None,
            gw if need[1] else None,
            gb if ctx.has_bias and need[2] else None,
            *([None] * 9),
        )

    _autograd.register_differentiable(
        namespace.linear_cross_entropy_fwd, setup_context=setup_context, backward=backward, composition=fwd_composition
    )
    bwd_setup, bwd_backward = _autograd.recomputed_backward(bwd_composition)
    _autograd.register_differentiable(
        namespace.linear_cross_entropy_bwd, setup_context=bwd_setup, backward=bwd_backward, composition=bwd_composition
    )
    _register_autocast(namespace.linear_cross_entropy_fwd)


def _register_autocast(op: torch._ops.OpOverloadPacket) -> None:
    """Autocast: x, weight and bias in the autocast dtype (the GEMMs, as aten::linear); class_weight
    untouched; the softmax runs in float32 and the loss is float32 (the accumulation dtype)."""
    overload = op.default
    for device, key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):

        def kernel(x, weight, bias, *rest, _device: str = device, _key: str = key):  # noqa: ANN001, ANN202
            dtype = torch.get_autocast_dtype(_device)
            x, weight, bias = (_autograd.cast_for_autocast(t, _device, dtype) for t in (x, weight, bias))
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, _key))):
                return overload(x, weight, bias, *rest)

        _autograd._impl(overload, kernel, key)


def opcheck_examples(ns, device: str, backend: str) -> Iterator[tuple[object, tuple, dict]]:  # noqa: ANN001
    """``(op, args, kwargs)``: small valid calls of ``ns``'s linear_cross_entropy ops for
    ``torch.library.opcheck``, float32: with and without bias and class weights, every reduction, with
    and without the forward's gradients, smoothing, softcap and z-loss on, ragged 4-row chunks and an
    empty batch."""
    from fastops.testing import make_tensor

    for n, with_bias, with_class_weight, reduction, grad in (
        (9, True, True, 1, True),
        (8, False, False, 0, False),
        (0, True, False, 2, True),
    ):
        x = make_tensor((n, 6), torch.float32, device)
        weight = make_tensor((11, 6), torch.float32, device, scale=6**-0.5)
        bias = make_tensor((11,), torch.float32, device) if with_bias else None
        target = torch.randint(0, 11, (n,), device=device)
        target[torch.rand(n, device=device) < 0.2] = -100  # some ignored rows
        class_weight = torch.rand(11, device=device) if with_class_weight else None
        config = (-100, 0.1, 2.0, 0.01, reduction, 4)  # ignore_index, smoothing, softcap, z_loss, reduction, rows
        args = (x, weight, bias, target, class_weight, *config)
        yield ns.linear_cross_entropy_fwd, (*args, grad), {}
        loss, stats, *_ = ns.linear_cross_entropy_fwd(*args, grad)
        grad_loss = torch.rand_like(loss)
        yield ns.linear_cross_entropy_bwd, (grad_loss, x, weight, bias, target, class_weight, stats, *config), {}


if _HAS_NATIVE_SCHEMA:
    register(torch.ops.fastops)


# ---- the functional's front end -----------------------------------------------------------------


def prepare(
    input: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    weight_classes: torch.Tensor | None,
    softcap: float | None,
    z_loss: float,
    chunk_rows: int | None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[Any, ...]]:
    """The API-level part of a functional call, run on every backend: what the registered ops cannot
    check (non-tensor arguments, the string ``reduction``, probability targets, target against input's
    leading shape before the flattening, ``softcap`` / ``chunk_rows`` in the API's form, an
    ``ignore_index`` beyond int64), and the normalisation to the op's form. Returns (x (N, H),
    target (N,) int64, the op's scalar arguments (ignore_index, label_smoothing, softcap, z_loss,
    reduction code, chunk_rows)). The argument contract itself is the op's (:func:`check_call`)."""
    for name, t in (("input", input), ("weight", weight), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a tensor, got {type(t).__name__}")
    for name, t in (("bias", bias), ("weight_classes", weight_classes)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a tensor or None, got {type(t).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{OP}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_ignore_index(OP, ignore_index)
    if input.dim() < 1:
        raise ValueError(f"{OP}: input must have shape (*, H), got a 0-d tensor")
    if target.is_floating_point():
        raise ValueError(
            f"{OP}: target must hold class indices (int64); probability targets are not supported "
            f"(they would be an (N, V) tensor), got {dtype_str(target.dtype)}"
        )
    if target.dtype == torch.uint8:
        target = target.long()
    if list(target.shape) != list(input.shape[:-1]):
        raise ValueError(
            f"{OP}: target must have input's leading shape {shape_str(input.shape[:-1])}, got {shape_str(target.shape)}"
        )
    if softcap is not None and not softcap > 0:
        raise ValueError(f"{OP}: softcap must be > 0 when given, got {softcap!r}")
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"{OP}: chunk_rows must be a positive int or None, got {chunk_rows!r}")
    x = input.reshape(-1, input.shape[-1])
    t = target.reshape(-1)
    args = (
        ignore_index,
        float(label_smoothing),
        float(softcap or 0.0),
        float(z_loss),
        REDUCTIONS.index(reduction),
        chunk_rows or 0,
    )
    return x, t, args


def check_call(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float,
    z_loss: float,
    reduction: int,
    chunk_rows: int,
) -> Geometry:
    """The contract of a ``linear_cross_entropy_fwd`` call (the arguments :func:`prepare` returns), for
    the API calls no registered op checks (the torch composition): the text the op would raise. A
    tensor on ``meta`` beside others makes the dispatcher run the op's fake kernel (:func:`fwd_fake`),
    whose device check speaks first; any other bad input meets the C++ check (:func:`check_op_args`)."""
    tensors = {"x": x, "weight": weight, "bias": bias, "target": target, "class_weight": class_weight}
    if any(t is not None and t.device.type == "meta" for t in tensors.values()):
        check_same_device(FWD, **tensors)
    scalars = (ignore_index, label_smoothing, softcap, z_loss, reduction, chunk_rows)
    return check_op_args(FWD, x, weight, bias, target, class_weight, *scalars)
