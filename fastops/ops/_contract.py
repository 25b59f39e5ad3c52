"""What every op's argument contract (the ``check_*`` functions of ``fastops/ops/<stem>.py``) shares:
the message formats of csrc/fastops.h, so a Python check and the C++ check of the same rule raise
the same text, and the one-device check every fake kernel runs first.

Formats. :func:`shape_str` is csrc/fastops.h's ``shape_str``: ``(2, 3)``, ``(3,)``, ``()``.
:func:`dtype_str` is how c10 prints a ``ScalarType`` (``Float``, ``Double``, ``Long``, ``Half``...):
a message that names a dtype reads the same from the C++ kernels and from the Triton and torch
backends. :func:`num_str` is C++ ``operator<<`` of a double (``1``, ``-0.1``, ``nan``).

Why the fake kernels need the device check. The ``Meta`` dispatch key outranks ``CPU`` (and ``CUDA``), so a raw
op called with one ``meta`` tensor beside CPU tensors runs the fake kernel, not the C++ kernel whose
checks would reject the mix: without this check the call returns uninitialised CPU memory shaped
like the result (or, for an in-place op, silently writes nothing). Under ``FakeTensorMode``
(torch.compile, export, ``opcheck``) every tensor reports the device of the real tensor it stands
for, so a well-formed traced call passes.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch

TensorArg = torch.Tensor | Sequence[torch.Tensor] | None

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_C10_NAMES = {
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.float32: "Float",
    torch.float64: "Double",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
    torch.uint8: "Byte",
    torch.int8: "Char",
    torch.int16: "Short",
    torch.int32: "Int",
    torch.int64: "Long",
    torch.bool: "Bool",
}


def shape_str(shape: Sequence[int]) -> str:
    """``(2, 3)``, ``(3,)``, ``()``: csrc/fastops.h shape_str."""
    return "(" + ", ".join(str(v) for v in shape) + (",)" if len(shape) == 1 else ")")


def dtype_str(dtype: torch.dtype) -> str:
    """The dtype as c10 prints its ScalarType (``Float`` for torch.float32), as the C++ checks do."""
    return _C10_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def num_str(value: float) -> str:
    """A double as C++ ``operator<<`` prints it (6 significant digits, no trailing ``.0``)."""
    return f"{value:g}"


def _named_tensors(name: str, value: object) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for a tensor, ``(name[i], tensor)`` for each of a list's, nothing for None / non-tensors."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, (list, tuple)):
        for i, t in enumerate(value):
            if isinstance(t, torch.Tensor):
                yield f"{name}[{i}]", t


def check_same_device(op: str, **tensors: TensorArg) -> None:
    """ValueError unless every tensor argument is on the first one's device.

    Keyword arguments in the schema's order, each a tensor, a list of tensors or None (skipped);
    the first tensor found is the reference. The message names both, e.g.
    ``"cross_entropy_fwd: target is on meta but logits is on cpu"``.
    """
    first: tuple[str, torch.Tensor] | None = None
    for name, value in tensors.items():
        for arg, t in _named_tensors(name, value):
            if first is None:
                first = (arg, t)
            elif t.device != first[1].device:
                raise ValueError(f"{op}: {arg} is on {t.device} but {first[0]} is on {first[1].device}")


def check_ignore_index(op: str, ignore_index: int) -> None:
    """TypeError unless ignore_index is an integer, ValueError unless it fits in int64 (the ``int`` of
    the cross-entropy ops' schemas).

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


# ---- contract checks run once per call signature ---------------------------------------------------
#
# The API calls that run torch's own ops (backend="auto" on small CPU calls, the measured-slower conv2d
# classes) check the contract in Python first, so bad input gets the op's text: 26 us of a conv2d call
# whose F.conv2d takes 97 us (N64 C1 8x8, 2-core Intel Xeon). The checks read shapes, dtypes, devices
# and the non-tensor arguments only, never data or strides, so a signature that passed once passes
# again: checked_once remembers it.

_T = TypeVar("_T")
_CHECKED: dict[tuple[object, ...], object] = {}
_CHECKED_MAX = 4096  # signatures kept; the table is emptied when full (a model has a few dozen)


def call_signature(args: tuple[object, ...]) -> tuple[object, ...] | None:
    """The arguments' signature, or None when one cannot be told apart by it: a tensor subclass other
    than nn.Parameter (fake and functional tensors included: checked every time), or an argument of
    another kind."""
    key: list[object] = []
    for a in args:
        kind = type(a)
        if kind is torch.Tensor or kind is torch.nn.Parameter:
            key.append((a.shape, a.dtype, a.device))  # type: ignore[union-attr]
        elif a is None:
            key.append(None)
        elif kind is list or kind is tuple:
            if not all(type(v) is int for v in a):  # type: ignore[union-attr]
                return None
            key.append(tuple(a))  # type: ignore[arg-type]
        elif kind is int or kind is float or kind is bool or kind is str:
            key.append((kind, a))  # 1, 1.0 and True hash alike but may check differently
        else:
            return None
    return tuple(key)


def checked_once(check: Callable[..., _T], *args: object) -> _T:
    """``check(*args)``, or the result it returned for a call with the same signature (each tensor's
    shape, dtype and device, the other arguments' types and values). ``check`` must read no more than
    that and either raise or return the same result every time; a call that raises is not remembered.
    Under torch.compile, and for tensor subclasses (fake tensors included), it always runs."""
    signature = None if torch.compiler.is_compiling() else call_signature(args)
    if signature is None:
        return check(*args)
    key = (check, signature)
    try:
        return _CHECKED[key]  # type: ignore[return-value]
    except KeyError:
        pass
    result = check(*args)
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[key] = result
    return result


def once_per_signature(check: Callable[..., _T]) -> Callable[..., _T]:
    """Decorator: ``check`` (positional arguments only) runs through :func:`checked_once`."""

    @functools.wraps(check)
    def remembered(*args: object) -> _T:
        return checked_once(check, *args)

    return remembered


# ---- routing decisions remembered per call signature -----------------------------------------------
#
# backend="auto"'s choice between a kernel and torch's own op for a CPU call is, like the contract, a
# function of the call's signature (shapes, dtypes, devices, the other arguments' values), the
# FASTOPS_BACKEND override and the autocast state. Deciding it in Python took most of the API's ~45 us
# over F.conv2d on a small conv (N64 C16 8x8, 2-core Intel Xeon); remembered, a call pays for its
# signature only. Entries are written only after a call that passed the contract checks.

_ROUTES: dict[tuple[object, ...], object] = {}


def route_key(
    op: str, args: tuple[object, ...], backend: str, device: str, backends: tuple[str, ...] = ("auto",)
) -> tuple[object, ...] | None:
    """The key under which the route for this call of ``op`` with ``backend`` (one of ``backends``:
    auto's choice, or an explicit backend's resolved op) is remembered, or None when it must be
    decided afresh: another backend, autocast on for ``device`` (it changes the dtypes), torch.compile
    tracing, or an argument :func:`call_signature` cannot tell apart."""
    if device not in ("cpu", "cuda") or backend not in backends or torch.compiler.is_compiling():
        return None
    if torch.is_autocast_enabled(device):
        return None
    signature = call_signature(args)
    if signature is None:
        return None
    return (op, backend, os.environ.get("FASTOPS_BACKEND", "auto"), signature)


def remembered_route(key: tuple[object, ...] | None) -> object:
    """The route remembered under ``key`` (:func:`route_key`), or None."""
    return None if key is None else _ROUTES.get(key)


def remember_route(key: tuple[object, ...] | None, route: object) -> None:
    """Remember ``route`` for calls with ``key`` (no-op for a None key)."""
    if key is None:
        return
    if len(_ROUTES) >= _CHECKED_MAX:
        _ROUTES.clear()
    _ROUTES[key] = route
