"""The contract of the registered cross-entropy ops, shared by every backend's Python side:
output shapes (the fake kernels) and the argument checks, a mirror of csrc/fastops.h's
check_cross_entropy_args so that the native and Triton ops reject bad input with the same
messages."""

from __future__ import annotations

import operator
from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import is_fake

from fastops.ops._devices import check_same_device

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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


# ---- argument checks --------------------------------------------------------------------------


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


def _shape(s: torch.Size | list[int]) -> str:
    return "(" + ", ".join(str(v) for v in s) + (",)" if len(s) == 1 else ")")


def check_ignore_index(op: str, ignore_index: int) -> None:
    """TypeError unless ignore_index is an integer, ValueError unless it fits in int64 (the ops' ``int``).

    Checked in Python because the dispatcher's own error for an out-of-range int ("Expected a value
    of type 'int' ... but instead found type 'int'") does not say what is wrong, and the torch
    composition would compare the targets against it silently.
    """
    try:
        value = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"{op}: ignore_index must be an int, got {type(ignore_index).__name__}") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{op}: ignore_index must fit in int64 (-2**63 <= ignore_index < 2**63), got {value}")


def check_args(
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
        raise ValueError(f"{op}: logits must have shape (C,), (N, C) or (N, C, d1, ...), got {_shape(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{op}: logits must be a floating tensor, got {logits.dtype}")
    cdim = 0 if logits.dim() == 1 else 1
    C = logits.shape[cdim]
    if C < 1:
        raise ValueError(f"{op}: logits must have at least one class, got shape {_shape(logits.shape)}")
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
                f"{op}: class-probability target must have logits' shape {_shape(logits.shape)}, "
                f"got {_shape(target.shape)}"
            )
        if target.dtype != logits.dtype:
            raise TypeError(
                f"{op}: class-probability target must have logits' dtype {logits.dtype}, got {target.dtype}"
            )
    else:
        if target.dtype != torch.int64:
            raise TypeError(
                f"{op}: class-index target must be int64 (or float class probabilities), got {target.dtype}"
            )
        if list(target.shape) != row_shape:
            raise ValueError(
                f"{op}: class-index target must have shape {_shape(row_shape)} for logits of shape "
                f"{_shape(logits.shape)}, got {_shape(target.shape)}"
            )
    if weight is not None:
        if weight.dim() != 1 or weight.shape[0] != C:
            raise ValueError(f"{op}: weight must have shape ({C},) (one per class), got {_shape(weight.shape)}")
        if weight.dtype != logits.dtype:
            raise TypeError(f"{op}: weight must have logits' dtype {logits.dtype}, got {weight.dtype}")
        if weight.device != logits.device:
            raise ValueError(f"{op}: weight is on {weight.device} but logits are on {logits.device}")
    return Geometry(B, C, D, probs, row_shape)


def check_bwd_args(op: str, g: Geometry, logits: torch.Tensor, grad_loss: torch.Tensor, stats: torch.Tensor) -> None:
    """csrc/fastops.h check_cross_entropy_bwd_args: grad_loss (row shape), stats (2, *row shape), acc dtype."""
    acc = acc_dtype(logits.dtype)
    for name, t, shape in (("grad_loss", grad_loss, g.row_shape), ("stats", stats, stats_shape(g.row_shape))):
        if list(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {_shape(shape)}, got {_shape(t.shape)}")
        if t.dtype != acc:
            raise TypeError(f"{op}: {name} must be {acc} for {logits.dtype} logits, got {t.dtype}")
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
