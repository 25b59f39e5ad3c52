"""The bad-input matrix (issue 10) as one table: every op x backend, through the public API and
through the raw registered ops, against wrong dtypes, shapes and devices (``meta`` beside CPU),
out-of-range targets and ``ignore_index``, empty tensors, non-contiguous / expanded (stride 0) /
overlapping layouts, NaN / +-Inf values and overflow-sized arguments.

Every case has one expectation:

- ``raise``: a TypeError / ValueError / IndexError / RuntimeError whose message names the
  offending argument;
- ``torch``: torch's outcome exactly: its result (by :func:`fastops.testing.assert_close_to_reference`,
  NaN positions included) or, where torch raises, a clear error as above;
- ``either``: a clear error naming the argument, or torch's result (a backend may refuse what it
  does not take, saying why).

Anything else fails: another exception type, a message that does not name the argument (or shows
a number wrapped by int64 overflow), a result where torch raises, a result that differs from
torch's. All cases run in-process (none needs a subprocess: a crash would be a defect to fix).

The table is data. A ``Surface`` is one entry point of one op: how to make good arguments, how
fastops calls them on a backend, and torch's equivalent. ``MUTATIONS`` apply to every tensor
argument of every surface; ``ROWS`` are the op-specific cases. A new op adds surfaces and rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
import torch.optim.adam as torch_adam

import fastops
import fastops.functional as FF
from fastops.ops import namespace
from fastops.testing import assert_close_to_reference, make_tensor, noncontiguous, to_unit_scale

Args = dict[str, Any]  # an op's arguments in call order; keys starting with "_" are not passed
ERRORS = (TypeError, ValueError, IndexError, RuntimeError)
TORCH_ERRORS = (*ERRORS, ArithmeticError)  # what torch's equivalents raise (anything else is a bug here)
WRAPPED = r"-\d{12,}"  # a huge negative number in a message: an int64 product or sum that wrapped
HUGE = 2**62


# ---- surfaces: one entry point of one op --------------------------------------------------------


@dataclass(frozen=True)
class Surface:
    """One way to call an op, and torch's equivalent.

    make(gen, **opts) -> good arguments (derived ones included); run(backend, args) -> the result
    (for an in-place op, the tensors it writes); ref(args) -> torch's result for the same arguments.
    derive(args, gen) recomputes the arguments in ``derives`` (statistics, a saved output, a
    gradient of the output's shape) after another argument was changed; ``derived``: the arguments
    torch's equivalent does not read. aliases: the names messages may use for an argument.
    """

    name: str
    backends: tuple[str, ...]
    make: Callable[..., Args]
    run: Callable[[str, Args], Any]
    ref: Callable[[Args], Any]
    derived: tuple[str, ...] = ()
    derives: tuple[str, ...] = ()  # the arguments derive() writes
    written: tuple[str, ...] = ()
    derive: Callable[[Args, torch.Generator], None] | None = None
    aliases: tuple[tuple[str, str], ...] = ()

    def names(self, arg: str) -> str:
        """Regex matching the argument as messages name it."""
        return dict(self.aliases).get(arg, rf"\b{re.escape(arg)}\b")


def _passed(a: Args) -> list[Any]:
    return [v for k, v in a.items() if not k.startswith("_")]


def _leaf(t: Any) -> Any:
    """A floating tensor argument made to require grad (every tensor here is a leaf)."""
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        t.requires_grad_(True)
    return t


def _grads(out: torch.Tensor, inputs: list[Any]) -> list[torch.Tensor | None]:
    """d(sum(out * u)) / d inputs for a fixed non-uniform u; None for inputs that do not require grad."""
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if not out.requires_grad or not wanted:
        return [None] * len(inputs)
    u = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    got = iter(torch.autograd.grad(out, wanted, u, allow_unused=True))
    return [next(got) if isinstance(t, torch.Tensor) and t.requires_grad else None for t in inputs]


def _try_derive(derive: Callable[[Args, torch.Generator], None], a: Args, g: torch.Generator) -> None:
    """derive(a, g) where the arguments allow it (not, e.g., beside a meta tensor); else keep a's values."""
    try:
        derive(a, g)
    except Exception:  # noqa: BLE001 - an argument the derivation cannot use is the case under test
        pass


# cross_entropy ------------------------------------------------------------------------------------


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ce_data(
    g: torch.Generator,
    shape: tuple[int, ...] = (4, 5),
    dtype: torch.dtype = torch.float32,
    probs: bool = False,
    weight: bool = True,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int, float]:
    cdim = 0 if len(shape) == 1 else 1
    rows = [n for i, n in enumerate(shape) if i != cdim]
    logits = make_tensor(shape, dtype, generator=g, scale=2.0)
    if probs:
        target = torch.softmax(make_tensor(shape, torch.float64, generator=g), cdim).to(dtype)
    else:
        # Classes 0 and C - 1 are never targets (C >= 3): the nan_inf mutation puts NaN / -inf weights
        # there, which torch reads only through the smoothing term, so the outcome does not hang on the seed.
        C = shape[cdim]
        target = (
            torch.randint(1, C - 1, rows, generator=g) if C >= 3 else torch.randint(0, max(C, 1), rows, generator=g)
        )
    w = (torch.rand(shape[cdim], generator=g, dtype=torch.float64) + 0.5).to(dtype) if weight else None
    return logits, target, w, ignore_index, label_smoothing


def _ce_api_make(g: torch.Generator, reduction: str = "mean", **opts: Any) -> Args:
    logits, target, w, ii, ls = _ce_data(g, **opts)
    return {
        "input": logits,
        "target": target,
        "weight": w,
        "ignore_index": ii,
        "reduction": reduction,
        "label_smoothing": ls,
    }


def _ce_api(f: Callable[..., torch.Tensor]) -> Callable[[Args], Any]:
    def call(a: Args) -> Any:
        x = _leaf(a["input"])
        loss = f(
            x,
            a["target"],
            a["weight"],
            ignore_index=a["ignore_index"],
            reduction=a["reduction"],
            label_smoothing=a["label_smoothing"],
        )
        return loss, *_grads(loss, [x])

    return call


def _ce_fwd_make(g: torch.Generator, **opts: Any) -> Args:
    logits, target, w, ii, ls = _ce_data(g, **opts)
    return {"logits": logits, "target": target, "weight": w, "ignore_index": ii, "label_smoothing": ls}


def _ce_loss_rows(a: Args, x: torch.Tensor) -> torch.Tensor:
    w = a["weight"]
    return F.cross_entropy(
        x,
        a["target"],
        None if w is None else w.to(x.dtype),
        ignore_index=a["ignore_index"],
        reduction="none",
        label_smoothing=a["label_smoothing"],
    )


def _ce_fwd_ref(a: Args) -> torch.Tensor:
    """The op's per-row loss in the accumulation dtype (its stats are checked through the backward)."""
    return _ce_loss_rows(a, a["logits"].detach().to(_acc(a["logits"].dtype)))


def _ce_bwd_make(g: torch.Generator, **opts: Any) -> Args:
    logits, target, w, ii, ls = _ce_data(g, **opts)
    cdim = 0 if logits.dim() == 1 else 1
    rows = [n for i, n in enumerate(logits.shape) if i != cdim]
    acc = _acc(logits.dtype)
    a = {
        "grad_loss": make_tensor(rows, acc, generator=g),
        "logits": logits,
        "target": target,
        "weight": w,
        "stats": torch.zeros([2, *rows], dtype=acc),
        "ignore_index": ii,
        "label_smoothing": ls,
    }
    _try_derive(_ce_derive, a, g)
    return a


def _ce_derive(a: Args, g: torch.Generator) -> None:
    """stats = (row max m, log sum exp(x - m)) in the accumulation dtype, as the forward saves them."""
    x = a["logits"].detach()
    x = x.to(_acc(x.dtype))
    cdim = 0 if x.dim() == 1 else 1
    m = x.amax(cdim)
    a["stats"] = torch.stack([m, (x - m.unsqueeze(cdim)).exp().sum(cdim).log()])


def _ce_bwd_ref(a: Args) -> torch.Tensor:
    x = a["logits"].detach().requires_grad_(True)
    loss = _ce_loss_rows(a, x)
    (gx,) = torch.autograd.grad(loss, x, a["grad_loss"].to(loss.dtype))
    return gx


def _ce_bwd_inplace_ref(a: Args) -> torch.Tensor:
    gx = _ce_bwd_ref(a)
    with torch.no_grad():
        a["logits"].copy_(gx)
    return a["logits"]


def _ce_bwd_inplace_run(backend: str, a: Args) -> torch.Tensor:
    namespace(backend, "cross_entropy").cross_entropy_bwd_(*_passed(a))
    return a["logits"]


# linear_relu ------------------------------------------------------------------------------------


def _lr_make(
    g: torch.Generator,
    x_shape: tuple[int, ...] = (3, 4),
    n: int = 5,
    dtype: torch.dtype = torch.float32,
    bias: bool = True,
) -> Args:
    return {
        "x": make_tensor(x_shape, dtype, generator=g),
        "weight": make_tensor((n, x_shape[-1] if x_shape else 4), dtype, generator=g),
        "bias": make_tensor((n,), dtype, generator=g) if bias else None,
    }


def _lr_api_run(backend: str, a: Args) -> Any:
    ts = [_leaf(a[k]) for k in ("x", "weight", "bias")]
    out = FF.linear_relu(*ts, backend=backend)
    return out, *_grads(out, ts)


def _lr_api_ref(a: Args) -> Any:
    ts = [_leaf(a[k]) for k in ("x", "weight", "bias")]
    out = torch.relu(F.linear(*ts))
    return out, *_grads(out, ts)


def _lr_bwd_make(g: torch.Generator, **opts: Any) -> Args:
    fwd = _lr_make(g, **opts)
    out_shape = [*fwd["x"].shape[:-1], fwd["weight"].shape[0]]
    a = {
        "grad_out": make_tensor(out_shape, fwd["x"].dtype, generator=g),
        "x": fwd["x"],
        "weight": fwd["weight"],
        "out": torch.zeros(out_shape, dtype=fwd["x"].dtype),
        "_bias": fwd["bias"],
    }
    _try_derive(_lr_derive, a, g)
    return a


def _lr_derive(a: Args, g: torch.Generator) -> None:
    """out = relu(x W^T + b): the activated output the forward saved (its sign is the mask)."""
    a["out"] = torch.relu(F.linear(a["x"].detach(), a["weight"].detach(), a["_bias"]))


def _lr_bwd_ref(a: Args) -> Any:
    """torch's relu backward (threshold_backward on the saved result: no gradient where out <= 0, so a
    NaN out passes it) followed by linear's."""
    x, w, n = a["x"].detach(), a["weight"].detach(), a["weight"].shape[0]
    masked = torch.ops.aten.threshold_backward(a["grad_out"], a["out"], 0)
    rows = math.prod(masked.shape[:-1])
    return masked @ w, masked.reshape(rows, n).T @ x.reshape(rows, x.shape[-1]), masked.reshape(rows, n).sum(0)


# conv2d -----------------------------------------------------------------------------------------


def _conv_data(
    g: torch.Generator,
    x_shape: tuple[int, ...] = (2, 4, 5, 5),
    w_shape: tuple[int, ...] = (6, 4, 3, 3),
    dtype: torch.dtype = torch.float32,
    bias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x = make_tensor(x_shape, dtype, generator=g)
    w = make_tensor(w_shape, dtype, generator=g)
    return x, w, make_tensor((w_shape[0],), dtype, generator=g) if bias else None


def _conv_api_make(
    g: torch.Generator, stride: int = 1, padding: int = 1, dilation: int = 1, groups: int = 1, **opts: Any
) -> Args:
    x, w, b = _conv_data(g, **opts)
    return {
        "input": x,
        "weight": w,
        "bias": b,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
    }


def _conv_api_run(backend: str, a: Args) -> Any:
    ts = [_leaf(a[k]) for k in ("input", "weight", "bias")]
    out = FF.conv2d(*ts, a["stride"], a["padding"], a["dilation"], a["groups"], backend=backend)
    return out, *_grads(out, ts)


def _conv_api_ref(a: Args) -> Any:
    ts = [_leaf(a[k]) for k in ("input", "weight", "bias")]
    out = F.conv2d(*ts, a["stride"], a["padding"], a["dilation"], a["groups"])
    return out, *_grads(out, ts)


def _conv_fwd_make(
    g: torch.Generator, stride: int = 1, padding: int = 1, dilation: int = 1, groups: int = 1, **opts: Any
) -> Args:
    x, w, b = _conv_data(g, **opts)
    return {
        "x": x,
        "weight": w,
        "bias": b,
        "stride": [stride] * 2,
        "padding": [padding] * 2,
        "dilation": [dilation] * 2,
        "groups": groups,
        "relu": False,
    }


def _conv_fwd_ref(a: Args) -> torch.Tensor:
    y = F.conv2d(a["x"], a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"], a["groups"])
    return torch.relu(y) if a["relu"] else y


def _conv_out_shape(a: Args) -> list[int]:
    x, w = a["x"], a["weight"]
    pq = [
        (x.shape[2 + i] + 2 * a["padding"][i] - a["dilation"][i] * (w.shape[2 + i] - 1) - 1) // a["stride"][i] + 1
        for i in range(2)
    ]
    return [x.shape[0], w.shape[0], *pq]


def _conv_bwd_make(g: torch.Generator, **opts: Any) -> Args:
    fwd = _conv_fwd_make(g, **opts)
    a = {"grad_out": make_tensor((2, 6, 5, 5), fwd["x"].dtype, generator=g)}
    a.update({k: fwd[k] for k in ("x", "weight", "stride", "padding", "dilation", "groups")})
    a["output_mask"] = [True, True, True]
    _try_derive(_conv_derive, a, g)
    return a


def _conv_derive(a: Args, g: torch.Generator) -> None:
    """grad_out of the output's shape, where that shape is small enough to allocate."""
    shape = _conv_out_shape(a)
    if min(shape) >= 0 and torch.Size(shape).numel() <= 10**6:
        a["grad_out"] = make_tensor(shape, a["x"].dtype, generator=g)


def _conv_bwd_ref(a: Args) -> Any:
    w = a["weight"]
    return torch.ops.aten.convolution_backward(
        a["grad_out"],
        a["x"].detach(),
        w.detach(),
        [w.shape[0]],
        a["stride"],
        a["padding"],
        a["dilation"],
        False,
        [0, 0],
        a["groups"],
        a["output_mask"],
    )


# linear_cross_entropy -----------------------------------------------------------------------------

LCE_REDUCTIONS = ("none", "mean", "sum")


def _lce_data(
    g: torch.Generator,
    n: tuple[int, ...] = (4,),
    h: int = 5,
    v: int = 7,
    dtype: torch.dtype = torch.float32,
    bias: bool = True,
    class_weight: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(x (*n, h), weight (v, h), bias (v,), target (*n), class weights (v,)). Classes 0 and v - 1 are
    never targets (as in _ce_data: a nan_inf mutation of the class weights lands there)."""
    x = make_tensor((*n, h), dtype, generator=g)
    w = make_tensor((v, h), dtype, generator=g, scale=h**-0.5)
    b = make_tensor((v,), dtype, generator=g) if bias else None
    target = torch.randint(1, v - 1, n, generator=g)
    cw = (torch.rand(v, generator=g, dtype=torch.float64) + 0.5).to(dtype) if class_weight else None
    return x, w, b, target, cw


def _lce_torch(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    target: torch.Tensor,
    cw: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    z_loss: float,
    reduction: str,
) -> torch.Tensor:
    """torch's equivalent: F.cross_entropy of softcap(F.linear(x, w, b)) plus z_loss * lse^2 on the
    non-ignored rows; "mean" divides by the summed class weight of the non-ignored targets."""
    z = F.linear(x, w, b)
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    v = w.shape[0]
    z2, t2 = z.reshape(-1, v), target.reshape(-1)
    weight = None if cw is None else cw.to(z.dtype)
    rows = F.cross_entropy(z2, t2, weight, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing)
    if z_loss:
        rows = rows + torch.where(t2 != ignore_index, z_loss * torch.logsumexp(z2, -1) ** 2, 0.0)
    if reduction == "none":
        return rows.reshape(target.shape)
    if reduction == "sum":
        return rows.sum()
    if reduction != "mean":
        raise ValueError(f"reduction {reduction!r}")
    valid = t2 != ignore_index
    denom = valid.sum(dtype=rows.dtype) if weight is None else (weight[torch.where(valid, t2, 0)] * valid).sum()
    return torch.where(denom == 0, torch.nan, rows.sum() / denom)


def _lce_api_make(
    g: torch.Generator,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
    chunk_rows: int | None = None,
    **opts: Any,
) -> Args:
    x, w, b, t, cw = _lce_data(g, **opts)
    return {
        "input": x,
        "weight": w,
        "target": t,
        "bias": b,
        "ignore_index": ignore_index,
        "reduction": reduction,
        "label_smoothing": label_smoothing,
        "weight_classes": cw,
        "softcap": softcap,
        "z_loss": z_loss,
        "chunk_rows": chunk_rows,
    }


def _lce_api(f: Callable[..., torch.Tensor]) -> Callable[[Args], Any]:
    def call(a: Args) -> Any:
        ts = [_leaf(a[k]) for k in ("input", "weight", "bias")]
        loss = f(*ts, a)
        return loss, *_grads(loss, ts)

    return call


def _lce_api_run(backend: str, a: Args) -> Any:
    keys = ("ignore_index", "reduction", "label_smoothing", "weight_classes", "softcap", "z_loss", "chunk_rows")
    return _lce_api(
        lambda x, w, b, a: FF.linear_cross_entropy(x, w, a["target"], b, **{k: a[k] for k in keys}, backend=backend)
    )(a)


_lce_api_ref = _lce_api(
    lambda x, w, b, a: _lce_torch(
        x,
        w,
        b,
        a["target"],
        a["weight_classes"],
        a["ignore_index"],
        a["label_smoothing"],
        a["softcap"],
        a["z_loss"],
        a["reduction"],
    )
)


def _lce_fwd_make(
    g: torch.Generator,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    softcap: float = 0.0,
    z_loss: float = 0.0,
    reduction: int = 1,
    chunk_rows: int = 0,
    compute_grad: bool = True,
    **opts: Any,
) -> Args:
    x, w, b, t, cw = _lce_data(g, **opts)
    return {
        "x": x,
        "weight": w,
        "bias": b,
        "target": t,
        "class_weight": cw,
        "ignore_index": ignore_index,
        "label_smoothing": label_smoothing,
        "softcap": softcap,
        "z_loss": z_loss,
        "reduction": reduction,
        "chunk_rows": chunk_rows,
        "compute_grad": compute_grad,
    }


def _lce_raw_ref(a: Args, grad_loss: torch.Tensor | None, grads: bool = True) -> tuple[torch.Tensor, ...]:
    """The raw ops' results in torch: (loss in the accumulation dtype, d/dx, d/dweight, d/dbias) of
    ``sum(grad_loss * loss)`` (of the loss itself when grad_loss is None); the loss alone without ``grads``."""
    if a["reduction"] not in (0, 1, 2):
        raise ValueError(f"reduction {a['reduction']!r}")
    acc = _acc(a["x"].dtype)
    ts = [None if t is None else t.detach().to(acc).requires_grad_(True) for t in (a["x"], a["weight"], a["bias"])]
    loss = _lce_torch(
        *ts,
        a["target"],
        a["class_weight"],
        a["ignore_index"],
        a["label_smoothing"],
        a["softcap"],
        a["z_loss"],
        LCE_REDUCTIONS[a["reduction"]],
    )
    if not grads:
        return (loss.detach(),)
    got = iter(torch.autograd.grad(loss, [t for t in ts if t is not None], grad_loss))
    gx, gw, gb = (None if t is None else next(got).to(o.dtype) for t, o in zip(ts, (a["x"], a["weight"], a["bias"])))
    return loss.detach(), gx, gw, gb


def _lce_fwd_run(backend: str, a: Args) -> Any:
    loss, _, *grads = namespace(backend, "linear_cross_entropy").linear_cross_entropy_fwd(*_passed(a))
    return (loss, *grads) if a["compute_grad"] and a["reduction"] != 0 else loss


def _lce_fwd_ref(a: Args) -> Any:
    with_grads = a["compute_grad"] and a["reduction"] != 0
    out = _lce_raw_ref(a, None, with_grads)
    return out if with_grads else out[0]


def _lce_bwd_make(g: torch.Generator, **opts: Any) -> Args:
    fwd = _lce_fwd_make(g, **opts)
    rows = fwd["x"].shape[0]
    acc = _acc(fwd["x"].dtype)
    a = {
        "grad_loss": make_tensor((rows,) if fwd["reduction"] == 0 else (), acc, generator=g),
        **{k: fwd[k] for k in ("x", "weight", "bias", "target", "class_weight")},
        "stats": torch.zeros((2, rows), dtype=acc),
        **{k: fwd[k] for k in ("ignore_index", "label_smoothing", "softcap", "z_loss", "reduction", "chunk_rows")},
    }
    _try_derive(_lce_derive, a, g)
    return a


def _lce_derive(a: Args, g: torch.Generator) -> None:
    """stats = (row max m, log sum exp(z - m)) of the capped logits z, as the forward saves them."""
    acc = _acc(a["x"].dtype)
    b = a["bias"]
    z = F.linear(a["x"].detach().to(acc), a["weight"].detach().to(acc), None if b is None else b.detach().to(acc))
    if a["softcap"] > 0:
        z = a["softcap"] * torch.tanh(z / a["softcap"])
    m = z.amax(-1)
    a["stats"] = torch.stack([m, (z - m.unsqueeze(-1)).exp().sum(-1).log()])


def _lce_bwd_ref(a: Args) -> Any:
    return _lce_raw_ref(a, a["grad_loss"])[1:]


# adam ---------------------------------------------------------------------------------------------

ADAM_LISTS = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps")


def _adam_make(
    g: torch.Generator,
    shapes: tuple[tuple[int, ...], ...] = ((3, 4), (5,)),
    dtype: torch.dtype = torch.float32,
    amsgrad: bool = False,
    lr: float = 1e-2,
    lr_tensor: float | None = None,
    weight_decay: float = 1e-2,
    decoupled_weight_decay: bool = False,
    grad_scale: float | None = None,
    found_inf: float | None = None,
) -> Args:
    def each(scale: float, positive: bool = False) -> list[torch.Tensor]:
        ts = [make_tensor(s, dtype, generator=g, scale=scale) for s in shapes]
        return [t.abs() for t in ts] if positive else ts

    v = each(0.01, positive=True)
    return {
        "params": each(1.0),
        "grads": each(1.0),
        "exp_avgs": each(0.1),
        "exp_avg_sqs": v,
        "max_exp_avg_sqs": [t * 1.5 for t in v] if amsgrad else [],
        "state_steps": [torch.tensor(3.0) for _ in shapes],
        "lr": lr,
        "lr_tensor": None if lr_tensor is None else torch.tensor(lr_tensor),
        "beta1": 0.9,
        "beta2": 0.999,
        "weight_decay": weight_decay,
        "eps": 1e-8,
        "amsgrad": amsgrad,
        "maximize": False,
        "decoupled_weight_decay": decoupled_weight_decay,
        "grad_scale": None if grad_scale is None else torch.tensor(grad_scale),
        "found_inf": None if found_inf is None else torch.tensor(found_inf),
    }


def _adam_run(backend: str, a: Args) -> Any:
    namespace(backend, "adam").adam_step_(*_passed(a))
    return tuple(a[k] for k in ADAM_LISTS if k != "grads")


@torch.no_grad()
def _adam_ref(a: Args) -> Any:
    """torch.optim's functional Adam/AdamW (under no_grad, as torch.optim steps): single-tensor, or fused
    when a GradScaler's tensors are given."""
    scaler = a["grad_scale"] is not None or a["found_inf"] is not None
    torch_adam.adam(
        *(a[k] for k in ADAM_LISTS),
        foreach=False,
        fused=True if scaler else None,
        grad_scale=a["grad_scale"],
        found_inf=a["found_inf"],
        decoupled_weight_decay=a["decoupled_weight_decay"],
        amsgrad=a["amsgrad"],
        beta1=a["beta1"],
        beta2=a["beta2"],
        lr=a["lr"] if a["lr_tensor"] is None else a["lr_tensor"],
        weight_decay=a["weight_decay"],
        eps=a["eps"],
        maximize=a["maximize"],
    )
    return tuple(a[k] for k in ADAM_LISTS if k != "grads")


def _optim_make(
    g: torch.Generator,
    shapes: tuple[tuple[int, ...], ...] = ((3, 4), (5,)),
    dtype: torch.dtype = torch.float32,
    lr: float | torch.Tensor = 1e-2,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
) -> Args:
    ps = [make_tensor(s, dtype, generator=g) for s in shapes]
    return {
        "params": ps,
        "_grads": [make_tensor(s, dtype, generator=g) for s in shapes],
        "lr": lr,
        "weight_decay": weight_decay,
        "amsgrad": amsgrad,
    }


def _optim(cls: type[torch.optim.Optimizer], **fixed: Any) -> Callable[[Args], Any]:
    """One step of an optimizer class over the arguments; returns (params, exp_avgs, exp_avg_sqs)."""

    def call(a: Args) -> Any:
        ps = a["params"]
        for p, gr in zip(ps, a["_grads"]):
            p.grad = gr.to(p.device) if p.device != gr.device else gr
        opt = cls(ps, lr=a["lr"], weight_decay=a["weight_decay"], amsgrad=a["amsgrad"], **fixed)
        opt.step()
        return ps, [opt.state[p]["exp_avg"] for p in ps], [opt.state[p]["exp_avg_sq"] for p in ps]

    return call


def _optim_surface(name: str, ours: type[torch.optim.Optimizer], theirs: type[torch.optim.Optimizer]) -> Surface:
    return Surface(
        name,
        ("native", "triton", "torch"),
        _optim_make,
        lambda backend, a: _optim(ours, backend=backend)(a),
        _optim(theirs, foreach=False),
        written=("params",),
        aliases=(("params", r"param"),),
    )


BOTH = ("native", "triton")
ALL = ("native", "triton", "torch")
LOGITS = (("input", r"\b(input|logits)\b"), ("logits", r"\b(input|logits)\b"))
CONV_X = (("x", r"\b(x|input)\b"), ("input", r"\b(x|input)\b"))
# The functional's messages name the op's arguments: x for input (flattened to (N, H)), class_weight
# for weight_classes (the op's contract speaks for every backend; tests/test_linear_cross_entropy.py).
LCE_NAMES = tuple(
    (k, rf"\b({a}|{b})\b") for a, b in (("input", "x"), ("weight_classes", "class_weight")) for k in (a, b)
)

SURFACES = {
    s.name: s
    for s in [
        Surface(
            "cross_entropy",
            ALL,
            _ce_api_make,
            lambda b, a: _ce_api(lambda *p, **k: FF.cross_entropy(*p, **k, backend=b))(a),
            _ce_api(F.cross_entropy),
            aliases=LOGITS,
        ),
        Surface(
            "cross_entropy_fwd",
            BOTH,
            _ce_fwd_make,
            lambda b, a: namespace(b, "cross_entropy").cross_entropy_fwd(*_passed(a))[0],
            _ce_fwd_ref,
            aliases=LOGITS,
        ),
        Surface(
            "cross_entropy_bwd",
            BOTH,
            _ce_bwd_make,
            lambda b, a: namespace(b, "cross_entropy").cross_entropy_bwd(*_passed(a)),
            _ce_bwd_ref,
            derived=("stats",),
            derives=("stats",),
            derive=_ce_derive,
            aliases=LOGITS,
        ),
        Surface(
            "cross_entropy_bwd_",
            BOTH,
            _ce_bwd_make,
            _ce_bwd_inplace_run,
            _ce_bwd_inplace_ref,
            derived=("stats",),
            derives=("stats",),
            written=("logits",),
            derive=_ce_derive,
            aliases=LOGITS,
        ),
        Surface("linear_relu", ALL, _lr_make, _lr_api_run, _lr_api_ref),
        Surface(
            "linear_relu_fwd",
            BOTH,
            _lr_make,
            lambda b, a: namespace(b, "linear_relu").linear_relu_fwd(*_passed(a)),
            lambda a: torch.relu(F.linear(*_passed(a))),
        ),
        Surface(
            "linear_relu_bwd",
            BOTH,
            _lr_bwd_make,
            lambda b, a: namespace(b, "linear_relu").linear_relu_bwd(*_passed(a)),
            _lr_bwd_ref,
            derived=("out",),
            derives=("out",),
            derive=_lr_derive,
        ),
        Surface("conv2d", ALL, _conv_api_make, _conv_api_run, _conv_api_ref, aliases=CONV_X),
        Surface(
            "conv2d_fwd",
            BOTH,
            _conv_fwd_make,
            lambda b, a: namespace(b, "conv2d").conv2d_fwd(*_passed(a)),
            _conv_fwd_ref,
            aliases=CONV_X,
        ),
        Surface(
            "conv2d_bwd",
            BOTH,
            _conv_bwd_make,
            lambda b, a: namespace(b, "conv2d").conv2d_bwd(*_passed(a)),
            _conv_bwd_ref,
            derives=("grad_out",),
            derive=_conv_derive,
            aliases=CONV_X,
        ),
        Surface("linear_cross_entropy", ALL, _lce_api_make, _lce_api_run, _lce_api_ref, aliases=LCE_NAMES),
        Surface(
            "linear_cross_entropy_fwd",
            BOTH,
            _lce_fwd_make,
            _lce_fwd_run,
            _lce_fwd_ref,
            aliases=LCE_NAMES,
        ),
        Surface(
            "linear_cross_entropy_bwd",
            BOTH,
            _lce_bwd_make,
            lambda b, a: namespace(b, "linear_cross_entropy").linear_cross_entropy_bwd(*_passed(a)),
            _lce_bwd_ref,
            derived=("stats",),
            derives=("stats",),
            derive=_lce_derive,
            aliases=LCE_NAMES,
        ),
        Surface(
            "adam_step_",
            BOTH,
            _adam_make,
            _adam_run,
            _adam_ref,
            derived=("state_steps",),
            written=("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps"),
        ),
        _optim_surface("Adam", fastops.optim.Adam, torch.optim.Adam),
        _optim_surface("AdamW", fastops.optim.AdamW, torch.optim.AdamW),
    ]
}


# ---- generic mutations of one tensor argument ---------------------------------------------------


def _other_dtype(t: torch.Tensor) -> torch.Tensor:
    return t.to({torch.float32: torch.float64, torch.float64: torch.float32, torch.int64: torch.int32}[t.dtype])


def _longer(t: torch.Tensor) -> torch.Tensor:
    """One more element along the last dim (a 0-d tensor becomes (2,))."""
    return t.reshape(1).repeat(2) if t.dim() == 0 else torch.cat([t, t[..., :1]], -1)


def _expanded(t: torch.Tensor) -> torch.Tensor:
    """Stride 0 along dim 0: every row is the first one."""
    return t[:1].expand(t.shape)


def _overlapping(t: torch.Tensor) -> torch.Tensor:
    """Strides of 1 in every dim: neighbouring rows share all but one element."""
    need = sum(n - 1 for n in t.shape) + 1
    return torch.as_strided(t.detach().reshape(-1)[:need].clone(), t.shape, [1] * t.dim())


def _nan_inf(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().clone()
    flat = t.view(-1)
    flat[0], flat[1], flat[-1] = float("nan"), float("inf"), float("-inf")
    return t


def _wants_grad(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


@dataclass(frozen=True)
class Mutation:
    """A change to one tensor argument: applies(t) says where it makes sense; expect for args read /
    written; raw_only: only for the registered ops (the API makes its own leaves)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    applies: Callable[[torch.Tensor], bool]
    read: str
    written: str
    derived: str | None = None  # expectation for a derived argument (None: not applied to one)
    raw_only: bool = False


def _floating(t: torch.Tensor) -> bool:
    return t.is_floating_point()


def _batched(t: torch.Tensor) -> bool:
    return t.dim() >= 1 and t.shape[0] > 1


MUTATIONS = [
    Mutation("meta", lambda t: t.to("meta"), lambda t: True, "raise", "raise", "raise"),
    Mutation(
        "dtype",
        _other_dtype,
        lambda t: t.dtype in (torch.float32, torch.float64, torch.int64),
        "either",
        "either",
        "raise",
    ),
    Mutation("shape", _longer, lambda t: True, "either", "either", "raise"),
    Mutation("noncontiguous", noncontiguous, lambda t: t.numel() > 1, "torch", "either", "torch"),
    # expanded / overlapping change the values (rows repeat): not for a derived argument, whose values
    # must agree with the others. Written with stride 0, torch raises; written with other overlaps, torch
    # returns its element-order-dependent result: a kernel must match it or refuse the layout.
    Mutation("expanded", _expanded, _batched, "torch", "torch"),
    Mutation("overlapping", _overlapping, lambda t: t.dim() >= 2 and min(t.shape) > 1, "torch", "either"),
    Mutation("nan_inf", _nan_inf, lambda t: _floating(t) and t.numel() >= 3, "torch", "torch"),
    Mutation("requires_grad", _wants_grad, _floating, "either", "either", "either", raw_only=True),
]


# ---- cases ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row of the matrix: a surface on a backend, how its good arguments are changed, the expectation."""

    surface: Surface
    backend: str
    name: str
    expect: str  # "raise" | "torch" | "either"
    names: str  # regex: the argument an error must name
    opts: tuple[tuple[str, Any], ...] = ()
    edit: Callable[[Args], None] | None = None
    redrive: bool = True  # recompute derived arguments after the edit
    forbid: str = r"$^"  # regex an error message must not match

    @property
    def id(self) -> str:
        return f"{self.surface.name}-{self.backend}-{self.name}"


def _setter(arg: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Args], None]:
    def edit(a: Args) -> None:
        if isinstance(a[arg], list):
            a[arg][0] = fn(a[arg][0])
        else:
            a[arg] = fn(a[arg])

    return edit


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def _mutation_cases() -> list[Case]:
    cases = []
    for s in SURFACES.values():
        probe = s.make(torch.Generator().manual_seed(0))
        api = "torch" in s.backends
        for arg, value in probe.items():
            t = _first(value)
            if arg.startswith("_") or not isinstance(t, torch.Tensor) or (api and s.name in ("Adam", "AdamW")):
                continue
            for m in MUTATIONS:
                if (m.raw_only and api) or not m.applies(t):
                    continue
                expect = m.derived if arg in s.derived else m.written if arg in s.written else m.read
                if expect is None:
                    continue
                if m.name == "meta":
                    names = rf"(?=.*{s.names(arg)})(?=.*\bmeta\b)"
                elif m.name in ("dtype", "shape"):  # a mismatch: the message may name either side of it
                    names = "|".join(s.names(k) for k in probe if not k.startswith("_"))
                else:
                    names = s.names(arg)
                for b in s.backends:
                    cases.append(
                        Case(
                            s,
                            b,
                            f"{arg}-{m.name}",
                            expect,
                            names,
                            edit=_setter(arg, m.fn),
                            redrive=arg not in s.derives,
                        )
                    )
    return cases


# Op-specific rows ---------------------------------------------------------------------------------


class Row(NamedTuple):
    """Cases for several surfaces: make options, an edit of the arguments, the expectation."""

    surfaces: tuple[str, ...]
    name: str
    expect: str
    names: str  # regex: the argument an error must name ("$^": no error is acceptable)
    edit: Callable[[Args], None] | None
    opts: dict[str, Any]
    forbid: str


def row(
    surfaces: tuple[str, ...],
    name: str,
    expect: str,
    names: str = r"$^",
    edit: Callable[[Args], None] | None = None,
    forbid: str = r"$^",
    **opts: Any,
) -> Row:
    """A Row; ``opts`` go to the surfaces' make."""
    return Row(surfaces, name, expect, names, edit, opts, forbid)


def _set(key: str, value: Any) -> Callable[[Args], None]:
    return lambda a: a.__setitem__(key, value)


def _put(keys: str, fn: Callable[[Any], Any], index: int | None = None) -> Callable[[Args], None]:
    """a[key] = fn(a[key]) for the first of ``keys`` ("a|b") the surface has; element ``index`` of a list."""

    def edit(a: Args) -> None:
        key = next(k for k in keys.split("|") if k in a)
        if index is None:
            a[key] = fn(a[key])
        else:
            a[key][index] = fn(a[key][index])

    return edit


def _each(*edits: Callable[[Args], None]) -> Callable[[Args], None]:
    def edit(a: Args) -> None:
        for e in edits:
            e(a)

    return edit


def _target_at(i: int, v: int) -> Callable[[Args], None]:
    return lambda a: a["target"].view(-1).__setitem__(i, v)


def _ignore_all(a: Args) -> None:
    a["target"].fill_(2)
    a["ignore_index"] = 2


def _geom(key: str, value: int) -> Callable[[Args], None]:
    """Set a conv2d geometry argument in the surface's form: an int (API) or a pair (raw ops)."""
    return lambda a: a.__setitem__(key, value if isinstance(a[key], int) else [value, value])


def _huge_stride(t: torch.Tensor) -> torch.Tensor:
    """Dim 0 of size 1 with stride 2**62: legal (never stepped over), fatal to int32 or unchecked index maths."""
    return t.as_strided(t.shape, [HUGE, *t.stride()[1:]])


def _transposed(t: torch.Tensor) -> torch.Tensor:
    """The same values with dims 0 and 1 of the memory order swapped."""
    return t.transpose(0, 1).contiguous().transpose(0, 1)


CE = ("cross_entropy", "cross_entropy_fwd", "cross_entropy_bwd", "cross_entropy_bwd_")
LR = ("linear_relu", "linear_relu_fwd", "linear_relu_bwd")
CONV = ("conv2d", "conv2d_fwd", "conv2d_bwd")
LCE = ("linear_cross_entropy", "linear_cross_entropy_fwd", "linear_cross_entropy_bwd")
ADAM = ("adam_step_",)
OPTIM = ("Adam", "AdamW")
LOGITS_KEY, CONV_X_KEY = "input|logits", "input|x"
LOGITS = r"\b(input|logits)\b"
LOW = r"bfloat16|float16|half|dtype"
LCE_CW, LCE_CW_KEY = r"\b(weight_classes|class_weight)\b", "weight_classes|class_weight"
LEARNING_RATE = r"learning rate|\blr\b|lr_tensor"
BF16, F16 = torch.bfloat16, torch.float16


def _adam_lists(fn: Callable[[torch.Tensor], torch.Tensor], index: int) -> Callable[[Args], None]:
    return _each(*(_put(k, fn, index) for k in ADAM_LISTS[:4]))


ROWS = [
    row(tuple(SURFACES), "valid", "torch"),  # the harness itself must pass every surface on good arguments
    # ---- cross_entropy
    row(CE, "target=C", "torch", "target", _target_at(1, 5)),
    row(CE, "target=-1", "torch", "target", _target_at(2, -1)),
    row(CE, "target=2**62", "torch", "target", _target_at(0, HUGE)),
    row(CE, "target=-2**63", "torch", "target", _target_at(3, -(2**63))),
    # The raw ops can only give the dispatcher's "Expected a value of type 'int' for argument
    # 'ignore_index'"; the API checks the range itself and says so.
    *(
        row(surfaces, f"ignore_index={text}", "raise", names, _set("ignore_index", value))
        for value, text in ((2**64, "2**64"), (2**63, "2**63"), (-(2**63) - 1, "-2**63-1"))
        for surfaces, names in ((CE[:1], r"ignore_index.*int64"), (CE[1:], r"ignore_index"))
    ),
    row(CE, "ignore_index=2**62", "torch", edit=_set("ignore_index", HUGE)),
    row(CE, "ignore_index=-2**63", "torch", edit=_set("ignore_index", -(2**63))),
    row(CE, "all-ignored", "torch", edit=_ignore_all, label_smoothing=0.1),
    row(CE, "empty-batch", "torch", shape=(0, 5)),
    row(CE, "empty-spatial", "torch", shape=(2, 5, 0)),
    row(CE, "no-classes", "either", r"logits|input|class", shape=(4, 0)),
    row(CE, "unbatched", "torch", shape=(5,)),
    row(CE, "unbatched-target=C", "torch", "target", _set("target", torch.tensor(5)), shape=(5,)),
    *(
        row(
            surfaces,
            "spatial-class-dim-last",
            expect,
            LOGITS,
            _put(LOGITS_KEY, lambda t: _transposed(t.mT).mT),
            shape=(2, 5, 3),
        )
        for surfaces, expect in ((CE[:3], "torch"), (CE[3:], "either"))
    ),
    row(
        CE,
        "masked-row",
        "torch",
        edit=_put(LOGITS_KEY, lambda t: t.index_fill(0, torch.tensor([1]), -torch.inf)),
        label_smoothing=0.1,
    ),
    row(CE, "huge-logits", "torch", edit=_put(LOGITS_KEY, lambda t: t * 1e37)),
    *(
        row(surfaces, "huge-stride", expect, LOGITS, _put(LOGITS_KEY, _huge_stride), shape=(1, 5))
        for surfaces, expect in ((CE[:3], "torch"), (CE[3:], "either"))
    ),
    row(CE, "probs-nan", "torch", edit=_target_at(0, torch.nan), probs=True),
    row(CE, "probs-float64", "either", "target", _put("target", lambda t: t.double()), probs=True),
    row(CE, "label_smoothing=nan", "either", "label_smoothing", _set("label_smoothing", float("nan"))),
    row(CE, "label_smoothing=1.5", "either", "label_smoothing", _set("label_smoothing", 1.5)),
    row(CE, "label_smoothing=-0.1", "either", "label_smoothing", _set("label_smoothing", -0.1)),
    row(CE, "bfloat16", "either", LOW, dtype=BF16, label_smoothing=0.1),
    row(CE, "float16", "either", LOW, dtype=F16),
    row(CE, "int-logits", "either", r"logits|input", _put(LOGITS_KEY, lambda t: t.long())),
    row(("cross_entropy",), "none-nan-inf", "torch", edit=_put("input", _nan_inf), reduction="none"),
    row(("cross_entropy",), "sum-empty", "torch", reduction="sum", shape=(0, 5)),
    # ---- linear_relu
    row(LR, "M=0", "torch", x_shape=(0, 4)),
    row(LR, "K=0", "either", r"\bx\b|weight|K", x_shape=(3, 0)),
    row(LR, "N=0", "either", r"weight|N", n=0),
    row(LR, "x-3d-transposed", "torch", edit=_put("x", _transposed), x_shape=(3, 2, 4)),
    row(LR, "x-1d", "torch", r"\bx\b", x_shape=(4,)),
    row(LR, "huge-stride", "torch", edit=_put("x", _huge_stride), x_shape=(1, 4)),
    row(LR, "weight-transposed-view", "torch", edit=_put("weight", lambda t: t.T.contiguous().T)),
    row(
        LR,
        "int64",
        "either",
        r"\bx\b|floating",
        _each(*(_put(k, lambda t: t.long()) for k in ("x", "weight", "bias|_bias", "grad_out|x", "out|x"))),
    ),
    row(LR, "bfloat16", "either", LOW, dtype=BF16),
    # ---- conv2d
    row(CONV, "padding=2**62", "raise", "padding", _geom("padding", HUGE), WRAPPED),
    row(CONV, "padding=2**61", "raise", "padding", _geom("padding", 2**61), WRAPPED),
    row(CONV, "padding=2**63", "raise", "padding", _geom("padding", 2**63), WRAPPED),
    row(CONV, "padding=-1", "raise", "padding", _geom("padding", -1)),
    row(CONV, "dilation=2**62", "raise", "dilat", _geom("dilation", HUGE), WRAPPED),
    row(CONV, "dilation=2**61", "raise", "dilat", _geom("dilation", 2**61), WRAPPED),
    row(CONV, "dilation=0", "raise", "dilation", _geom("dilation", 0)),
    row(CONV, "stride=2**62", "torch", "stride", _geom("stride", HUGE), WRAPPED),
    row(CONV, "stride=2**63", "raise", "stride", _geom("stride", 2**63), WRAPPED),
    row(CONV, "stride=0", "raise", "stride", _geom("stride", 0)),
    row(CONV, "groups=0", "raise", "groups", _set("groups", 0)),
    row(CONV, "groups=3", "raise", "groups", _set("groups", 3)),
    row(CONV, "channel-mismatch", "raise", "weight", w_shape=(6, 3, 3, 3)),
    row(CONV, "kernel-height-0", "either", r"weight|kernel", w_shape=(6, 4, 0, 3)),
    row(CONV, "kernel-larger-than-input", "raise", r"output size|kernel", w_shape=(6, 4, 9, 9)),
    row(CONV, "N=0", "torch", x_shape=(0, 4, 5, 5)),
    # No C=0 row: torch's own answer is wrong there (F.conv2d of a (2, 0, 5, 5) input with a (6, 0, 3, 3)
    # weight and a bias returns shape (2, 0, 5, 5) and a zero bias gradient); fastops returns the bias.
    row(CONV, "K=0", "either", r"weight", w_shape=(0, 4, 3, 3)),
    row(
        CONV, "channels_last", "torch", edit=_put(CONV_X_KEY, lambda t: t.contiguous(memory_format=torch.channels_last))
    ),
    row(CONV, "huge-stride", "torch", edit=_put(CONV_X_KEY, _huge_stride), x_shape=(1, 4, 5, 5)),
    row(CONV[:1], "unbatched", "torch", edit=_put(CONV_X_KEY, lambda t: t[0])),
    row(CONV[1:], "unbatched", "raise", r"input|\bx\b", _put(CONV_X_KEY, lambda t: t[0])),
    row(CONV, "bfloat16", "either", LOW, dtype=BF16),
    # ---- linear_cross_entropy (the functional, then the raw ops: their scalar arguments in the op's form)
    row(LCE, "target=V", "torch", "target", _target_at(1, 7)),
    row(LCE, "target=-1", "torch", "target", _target_at(2, -1)),
    row(LCE, "target=2**62", "torch", "target", _target_at(0, HUGE)),
    row(LCE, "target=-2**63", "torch", "target", _target_at(3, -(2**63))),
    *(
        row(surfaces, f"ignore_index={text}", "raise", names, _set("ignore_index", value))
        for value, text in ((2**64, "2**64"), (2**63, "2**63"), (-(2**63) - 1, "-2**63-1"))
        for surfaces, names in ((LCE[:1], r"ignore_index.*int64"), (LCE[1:], r"ignore_index"))
    ),
    row(LCE, "ignore_index=2**62", "torch", edit=_set("ignore_index", HUGE)),
    row(LCE, "ignored-row", "torch", edit=_set("ignore_index", 3), n=(6,), v=5),
    row(LCE, "probability-target", "raise", "target", _put("target", lambda t: t.double())),
    row(LCE, "int-target", "either", "target", _put("target", lambda t: t.int())),
    row(LCE, "weight-H-mismatch", "raise", r"\bweight\b", _put("weight", lambda t: t[:, :-1])),
    row(LCE, "target-short", "raise", "target", _put("target", lambda t: t[:-1])),
    row(LCE, "bias-short", "raise", r"\bbias\b", _put("bias", lambda t: t[:-1])),
    row(LCE, "class-weight-short", "raise", LCE_CW, _put(LCE_CW_KEY, lambda t: t[:-1])),
    row(LCE, "class-weight-2d", "raise", LCE_CW, _put(LCE_CW_KEY, lambda t: t.unsqueeze(0))),
    row(LCE, "class-weight-int", "raise", LCE_CW, _put(LCE_CW_KEY, lambda t: t.long())),
    row(LCE, "class-weight-float64", "either", LCE_CW, _put(LCE_CW_KEY, lambda t: t.double())),
    row(LCE, "weight-float64", "raise", r"\bweight\b", _put("weight", lambda t: t.double())),
    row(LCE, "bias-float64", "raise", r"\bbias\b", _put("bias", lambda t: t.double())),
    row(
        LCE,
        "int-input",
        "either",
        r"\b(input|x)\b|floating",
        _each(*(_put(k, lambda t: t.long()) for k in ("input|x", "weight", "bias"))),
    ),
    row(LCE, "x-1d", "raise", r"\b(input|x)\b|weight", _put("input|x", lambda t: t[0])),
    row(LCE, "no-bias", "torch", bias=False),
    row(LCE, "no-class-weight", "torch", class_weight=False),
    row(LCE, "empty-batch", "torch", n=(0,)),
    row(LCE[:1], "batched-3d", "torch", n=(2, 3)),
    row(
        LCE[:1],
        "meta-input-and-target",
        "raise",
        r"(?=.*meta)",
        _each(*(_put(k, lambda t: t.to("meta")) for k in ("input", "target"))),
    ),
    row(LCE, "label_smoothing", "torch", label_smoothing=0.1),
    *(
        row(LCE, f"label_smoothing={v}", "raise", "label_smoothing", _set("label_smoothing", v))
        for v in (1.5, -0.1, float("nan"))
    ),
    row(LCE, "z_loss", "torch", z_loss=1e-2),
    *(row(LCE, f"z_loss={v}", "raise", "z_loss", _set("z_loss", v)) for v in (-1.0, float("nan"), float("inf"))),
    row(LCE, "softcap", "torch", softcap=2.0),
    *(row(LCE, f"softcap={v}", "raise", "softcap", _set("softcap", v)) for v in (-1.0, float("nan"), float("inf"))),
    row(LCE[:1], "softcap=0", "raise", "softcap", _set("softcap", 0.0)),  # the functional: None, or > 0
    row(LCE[:1], "reduction=none", "torch", reduction="none"),
    row(LCE[1:], "reduction=none", "torch", reduction=0),
    row(LCE[:1], "reduction=sum", "torch", reduction="sum"),
    row(LCE[1:], "reduction=sum", "torch", reduction=2),
    row(LCE[:1], "reduction=avg", "raise", "reduction", _set("reduction", "avg")),
    *(row(LCE[1:], f"reduction={v}", "raise", "reduction", _set("reduction", v)) for v in (3, -1)),
    row(LCE, "chunk_rows=3", "torch", chunk_rows=3),
    *(row(LCE[:1], f"chunk_rows={v}", "raise", "chunk_rows", _set("chunk_rows", v)) for v in (0, -1, 2.5)),
    row(LCE[1:], "chunk_rows=-1", "raise", "chunk_rows", _set("chunk_rows", -1)),
    row(LCE[1:2], "no-grad-in-forward", "torch", compute_grad=False),
    # ---- adam_step_ (the raw op)
    row(ADAM, "empty-lists", "either", r"params", shapes=()),
    row(ADAM, "zero-d-and-empty-params", "torch", shapes=((), (0,), (2, 0))),
    row(ADAM, "lengths-differ", "raise", r"length|grads", lambda a: a["grads"].pop()),
    row(ADAM, "amsgrad-without-max", "raise", "max_exp_avg_sqs", _set("max_exp_avg_sqs", []), amsgrad=True),
    row(ADAM, "amsgrad", "torch", amsgrad=True),
    row(ADAM, "adamw", "torch", decoupled_weight_decay=True),
    row(ADAM, "lr=-0.1", "raise", LEARNING_RATE, lr=-0.1),
    row(ADAM, "lr=nan", "either", LEARNING_RATE, lr=float("nan")),
    row(ADAM, "lr_tensor=-0.1", "raise", LEARNING_RATE, lr_tensor=-0.1),
    row(ADAM, "lr_tensor-2-elements", "raise", "lr_tensor", _put("lr_tensor", lambda t: t.repeat(2)), lr_tensor=0.1),
    row(ADAM, "lr_tensor-meta", "raise", "lr_tensor", _put("lr_tensor", lambda t: t.to("meta")), lr_tensor=0.1),
    row(ADAM, "grad_scale-meta", "raise", "grad_scale", _put("grad_scale", lambda t: t.to("meta")), grad_scale=2.0),
    row(ADAM, "found_inf-meta", "raise", "found_inf", _put("found_inf", lambda t: t.to("meta")), found_inf=0.0),
    row(
        ADAM, "grad_scale-2-elements", "raise", "grad_scale", _put("grad_scale", lambda t: t.repeat(2)), grad_scale=2.0
    ),
    row(ADAM, "grad_scale", "torch", grad_scale=4.0, found_inf=0.0),
    row(ADAM, "found_inf=1", "torch", grad_scale=4.0, found_inf=1.0),
    row(ADAM, "beta1=1", "raise", "beta", _set("beta1", 1.0)),
    row(ADAM, "eps=-1", "raise", "eps", _set("eps", -1.0)),
    row(ADAM, "weight_decay=-1", "raise", "weight_decay", _set("weight_decay", -1.0)),
    row(ADAM, "step-int64", "raise", "state_steps", _put("state_steps", lambda t: t.long(), 0)),
    row(ADAM, "mixed-dtypes", "raise", "params", _adam_lists(lambda t: t.double(), 1)),
    row(ADAM, "int-params", "either", r"params|floating", _adam_lists(lambda t: t.long(), 0)),
    row(ADAM, "bfloat16", "torch", LOW, dtype=BF16),
    row(ADAM, "float16", "torch", LOW, dtype=F16),
    # ---- the Adam / AdamW drop-ins
    row(OPTIM, "meta-param-beside-cpu", "either", r"param|meta", _put("params", lambda t: t.to("meta"), 0)),
    row(OPTIM, "noncontiguous-param", "torch", edit=_put("params", noncontiguous, 0)),
    row(OPTIM, "expanded-param", "torch", "param", _put("params", _expanded, 0)),
    row(OPTIM, "overlapping-param", "either", "param", _put("params", _overlapping, 0)),
    row(OPTIM, "nan-inf-grad", "torch", edit=_put("_grads", _nan_inf, 0)),
    row(OPTIM, "nan-inf-param", "torch", edit=_put("params", _nan_inf, 0)),
    row(OPTIM, "zero-d-and-empty-params", "torch", shapes=((), (0,))),
    row(OPTIM, "amsgrad", "torch", amsgrad=True),
    row(OPTIM, "bfloat16", "torch", LOW, dtype=BF16),
    row(OPTIM, "lr-tensor", "torch", lr=torch.tensor(0.01)),
    row(OPTIM, "lr-tensor=-0.1", "raise", LEARNING_RATE, lr=torch.tensor(-0.1)),
    row(OPTIM, "lr=nan", "torch", LEARNING_RATE, lr=float("nan")),
    row(OPTIM, "weight_decay=-1", "torch", "weight_decay", weight_decay=-1.0),
    row(
        OPTIM,
        "complex-param",
        "either",
        "complex",
        _each(*(_put(k, lambda t: torch.complex(t, t), 0) for k in ("params", "_grads"))),
    ),
]


def _row_cases() -> list[Case]:
    return [
        Case(SURFACES[name], b, r.name, r.expect, r.names, tuple(r.opts.items()), r.edit, forbid=r.forbid)
        for r in ROWS
        for name in r.surfaces
        for b in SURFACES[name].backends
    ]


CASES = _mutation_cases() + _row_cases()


# ---- the test -------------------------------------------------------------------------------------


def _build(case: Case, seed: int) -> Args:
    """The case's arguments: identical tensors (values and layouts) on every call with one seed."""
    g = torch.Generator().manual_seed(seed)
    args = case.surface.make(g, **dict(case.opts))
    if case.edit is not None:
        case.edit(args)
        if case.redrive and case.surface.derive is not None:
            _try_derive(case.surface.derive, args, g)
    return args


def _to64(value: Any) -> Any:
    """Floating tensors (in lists too) as float64 copies, for the float64 reference."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            t = value.detach().to(torch.complex128 if value.is_complex() else torch.float64)
            return t.requires_grad_(value.requires_grad) if not value.is_complex() else t
        return value
    if isinstance(value, list):
        return [_to64(v) for v in value]
    return value


def _compare(got: Any, want: Any, want64: Any, is_torch: bool, what: str) -> None:
    if isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want), f"{what}: {got!r} vs torch's {want!r}"
        for i, (g, w, w64) in enumerate(zip(got, want, want64)):
            _compare(g, w, w64, is_torch, f"{what}[{i}]")
        return
    if want is None:
        assert got is None or (isinstance(got, torch.Tensor) and got.numel() == 0), f"{what}: {got!r}, torch: None"
        return
    assert isinstance(got, torch.Tensor), f"{what}: got {got!r}, torch returns a tensor"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, torch's {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, torch's {want.dtype}"
    assert got.device == want.device, f"{what}: device {got.device}, torch's {want.device}"
    if got.device.type == "meta":
        return
    if got.is_complex():
        got, want, want64 = (torch.view_as_real(t.detach()) for t in (got, want, want64))
    if got.is_floating_point():  # float32 / float64 (to_unit_scale leaves low precision alone)
        # The data is unit-scale, but a conv output or weight gradient sums dozens of unit terms:
        # large results are brought to the tolerance rule's unit scale (zero results stay as they are).
        got, want64, want = to_unit_scale(got.detach(), want64.detach(), want.detach(), min_rms=1.0)
    assert_close_to_reference(got, want64, torch_same_dtype=want.detach(), what=what, is_torch_composition=is_torch)


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    return [_detach(v) for v in value] if isinstance(value, list) else value


def _detached(a: Args) -> Args:
    """The arguments without autograd history (views of the same memory): a raw op's torch equivalent
    is about values, not about which inputs torch's autograd would differentiate."""
    return {k: _detach(v) for k, v in a.items()}


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.triton] if c.backend == "triton" else []) for c in CASES]
)
def test_bad_input(case: Case) -> None:
    seed = int(torch.randint(0, 2**31 - 1, ()))
    raw = "torch" not in case.surface.backends
    prepare = _detached if raw else lambda a: a
    try:
        want, torch_error = case.surface.ref(prepare(_build(case, seed))), None
    except TORCH_ERRORS as e:  # whatever torch rejects, fastops must reject with a clear error
        want, torch_error = None, e
    args = _build(case, seed)
    try:
        got = case.surface.run(case.backend, args)
    except ERRORS as e:
        message = f"{type(e).__name__}: {e}"
        assert case.expect != "torch" or torch_error is not None, f"torch returns a result, fastops raised {message}"
        assert re.search(case.names, str(e), re.S | re.I), f"the error does not name {case.names!r}: {message}"
        assert not re.search(case.forbid, str(e)), f"the error shows an overflowed number: {message}"
        return
    assert case.expect != "raise", f"expected an error naming {case.names!r}, got a result"
    assert torch_error is None, f"torch raises {type(torch_error).__name__}: {torch_error}; fastops returned a result"
    try:
        want64 = case.surface.ref(prepare({k: _to64(v) for k, v in _build(case, seed).items()}))
    except TORCH_ERRORS:  # torch has no float64 kernel for it: compare to its own result
        want64 = want
    _compare(got, want, want64, case.backend == "torch", case.id)


# ---- one contract: the same error text from every backend -----------------------------------------

# A backend's refusal of what its kernels do not take (a device, a dtype) is not a contract error:
# it names the backend, and another backend may run the same call.
CAPABILITY = re.compile(r"^fastops: backend=|: the Triton kernels (run on|on CPU|on cuda)")


def _groups() -> dict[str, list[Case]]:
    """The cases of one surface and one change, across backends."""
    groups: dict[str, list[Case]] = {}
    for c in CASES:
        groups.setdefault(f"{c.surface.name}-{c.name}", []).append(c)
    return {k: v for k, v in groups.items() if len(v) > 1}


def _error_text(case: Case, seed: int) -> str | None:
    """``"TypeName: message"`` of the error the case raises on its backend (namespaces folded: the
    dispatcher's own argument errors name ``fastops::`` or ``fastops_triton::``); None without one."""
    try:
        case.surface.run(case.backend, _build(case, seed))
    except ERRORS as e:
        return f"{type(e).__name__}: {e}".replace("fastops_triton::", "fastops::")
    return None


# Divergences found by this test in code outside the contract modules, each to be fixed where it lives
# (strict: a fixed one fails here until its entry is removed).
@pytest.mark.triton
@pytest.mark.parametrize(
    "key",
    list(_groups()),
)
def test_same_error_from_every_backend(key: str) -> None:
    """Item 1 of issue 12: each op has one argument contract (the C++ checks and their one Python
    mirror in fastops/ops/<stem>.py), so every backend that rejects a bad input says the same thing."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    texts = {c.backend: _error_text(c, seed) for c in _groups()[key]}
    contract = {b: t for b, t in texts.items() if t is not None and not CAPABILITY.search(t.split(": ", 1)[1])}
    assert len(set(contract.values())) <= 1, "\n".join(f"{b}: {t}" for b, t in contract.items())


# ---- a contract check that passed is remembered per call signature (fastops.ops._contract) -----------


def test_checked_once_remembers_passing_signatures_only():
    """``checked_once`` skips a check only for a signature that passed before: each tensor's shape,
    dtype and device (an nn.Parameter counts as a tensor), the other arguments' types and values (a
    list of ints as its values). A failing call is checked again every time, a different shape /
    dtype / device / value is a new signature, and other tensor subclasses (fake tensors under export
    or opcheck) are always checked."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastops.ops._contract import checked_once

    calls: list[tuple] = []

    def check(x, w, stride, scale):  # noqa: ANN001, ANN202
        calls.append((x.shape, stride, scale))
        if x.shape[-1] != w.shape[-1] or scale < 0:
            raise ValueError("bad call")
        return ("geometry", x.shape[0])

    x, w = torch.ones(2, 3), torch.ones(4, 3)
    assert checked_once(check, x, w, [1, 1], 0.5) == ("geometry", 2)
    assert checked_once(check, torch.zeros(2, 3), w, [1, 1], 0.5) == ("geometry", 2)  # values unread
    assert checked_once(check, x, torch.nn.Parameter(w), [1, 1], 0.5) == ("geometry", 2)  # a module's weight
    assert len(calls) == 1
    for args in (
        (torch.ones(5, 3), w, [1, 1], 0.5),  # shape
        (x.double(), w, [1, 1], 0.5),  # dtype
        (x.to("meta"), w, [1, 1], 0.5),  # device
        (x, w, [2, 1], 0.5),  # list value
        (x, w, [1, 1], 1),  # int 1 is not float 1.0
    ):
        before = len(calls)
        checked_once(check, *args)
        checked_once(check, *args)
        assert len(calls) == before + 1, args
    for _ in range(2):  # failing calls are never remembered
        with pytest.raises(ValueError, match="bad call"):
            checked_once(check, torch.ones(2, 4), w, [1, 1], 0.5)
        with pytest.raises(ValueError, match="bad call"):
            checked_once(check, x, w, [1, 1], -1.0)
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        before = len(calls)
        checked_once(check, fx, w, [1, 1], 0.5)
        checked_once(check, fx, w, [1, 1], 0.5)
        assert len(calls) == before + 2
    # through the API: a bad conv2d after a good one of the same shapes still gets the contract's error
    good = torch.ones(1, 4, 5, 5)
    FF.conv2d(good, torch.ones(8, 4, 3, 3))
    with pytest.raises(ValueError, match="groups=3 must divide the input channels C=4"):
        FF.conv2d(good, torch.ones(8, 4, 3, 3), groups=3)
    with pytest.raises(TypeError, match="weight must have input's dtype"):
        FF.conv2d(good, torch.ones(8, 4, 3, 3, dtype=torch.float64))
