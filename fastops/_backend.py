"""Backend resolution and ``fastops.backends()``.

Three backends implement every op (design.md):

* ``native``: the compiled extension ``fastops._C`` (C++ kernels for CPU tensors, CUDA kernels for
  CUDA tensors; the dispatcher picks by device),
* ``triton``: Triton kernels (CUDA; CPU only under ``TRITON_INTERPRET=1``, for tests),
* ``torch``: the plain PyTorch composition in :mod:`fastops.reference`.

``backend="auto"`` picks ``native`` when the extension has a kernel for the device and dtype, else
``triton`` on CUDA, else ``torch`` with a one-time warning. ``FASTOPS_BACKEND`` overrides ``auto``
and then behaves like an explicit choice: an unusable backend is an error, not a silent fallback.

Everything resolution needs is computed once into plain dicts, so that ``torch.compile`` traces
through :func:`resolve` without a graph break.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from fastops import _build_check
from fastops.triton import interpreting

BACKENDS = ("native", "triton", "torch")
DEVICES = ("cpu", "cuda")

_f16, _bf16, _f32, _f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64


def _load_native() -> str | None:
    """Load fastops._C (a plain shared library: loading it runs the TORCH_LIBRARY registrations).

    Returns None on success, else why it could not be loaded.
    """
    spec = importlib.util.find_spec("fastops._C")
    if spec is None or spec.origin is None:
        return "the extension fastops._C is not built; run `pip install --no-build-isolation -e .`"
    mismatch = _build_check.torch_mismatch()
    if mismatch is not None:
        return mismatch
    try:
        torch.ops.load_library(spec.origin)
    except OSError as exc:
        return f"fastops._C failed to load ({exc}); rebuild it against this torch"
    return None


NATIVE_ERROR = _load_native()
NATIVE_LOADED = NATIVE_ERROR is None

# op -> backend -> device -> dtypes the kernels take. Ops add themselves with register_op.
_SUPPORT: dict[str, dict[str, dict[str, frozenset[torch.dtype]]]] = {}
# (op, backend, device, dtype) -> reason it is unusable ("" when usable); filled lazily.
_WHY_NOT: dict[tuple[str, str, str, torch.dtype], str] = {}
_WARNED: set[tuple[str, str, torch.dtype]] = set()


def register_op(
    op: str,
    native_schema: str,
    native: dict[str, tuple[torch.dtype, ...]],
    triton: dict[str, tuple[torch.dtype, ...]],
) -> None:
    """Declare which devices and dtypes each backend of ``op`` takes.

    ``native_schema`` is one registered op (e.g. ``"cross_entropy_fwd"``) whose CPU / CUDA kernel
    registration tells whether the extension was built for that device.
    """
    table = {"native": {}, "triton": {}, "torch": {d: frozenset() for d in DEVICES}}
    for dev, dts in native.items():
        key = {"cpu": "CPU", "cuda": "CUDA"}[dev]
        try:
            built = NATIVE_LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(f"fastops::{native_schema}", key)
        except RuntimeError:  # an extension built before this op existed: the schema is unknown
            built = False
        if built:
            table["native"][dev] = frozenset(dts)
    for dev, dts in triton.items():
        table["triton"][dev] = frozenset(dts)
    _SUPPORT[op] = table


def _triton_reason(device: str) -> str:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device == "cuda":
        return "" if torch.cuda.is_available() else "no CUDA device is visible"
    if interpreting():
        return ""
    return "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (the interpreter, for tests)"


def why_not(op: str, backend: str, device: str, dtype: torch.dtype) -> str:
    """Why ``backend`` cannot run ``op`` on ``device`` in ``dtype``; ``""`` when it can.
    ValueError for a backend name that is not one of BACKENDS."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    return _why_not(op, backend, device, dtype)


def _why_not(op: str, backend: str, device: str, dtype: torch.dtype) -> str:
    """:func:`why_not` for a valid backend name, remembered per argument tuple."""
    key = (op, backend, device, dtype)
    if key in _WHY_NOT:
        return _WHY_NOT[key]
    table = _SUPPORT[op][backend]
    reason = ""
    if backend == "torch":
        reason = ""
    elif backend == "native" and not NATIVE_LOADED:
        reason = NATIVE_ERROR or ""
    elif device not in table:
        if backend == "native":
            reason = f"fastops._C was built without {device.upper()} kernels"
        else:
            reason = f"the Triton {op} kernels do not run on {device}"
    elif dtype not in table[device]:
        names = ", ".join(sorted(str(d).replace("torch.", "") for d in table[device]))
        reason = f"the {backend} {op} kernels on {device} take {names}, not {str(dtype).replace('torch.', '')}"
    if not reason and backend == "triton":
        reason = _triton_reason(device)
    _WHY_NOT[key] = reason
    return reason


# Under torch.compile the answer is taken at trace time as a constant (torch.compiler.
# assume_constant_result's mark, set without importing dynamo): traced, the memo lookup above put a
# guard on _WHY_NOT not holding the key, which the trace's own call then broke, so every compiled
# function recompiled once on its second call. The answer depends on the build, the installed
# packages, TRITON_INTERPRET and CUDA's visibility, all fixed for the process by the memo anyway.
# The name check stays outside: an exception raised in a constant call reaches the caller as
# dynamo's InternalTorchDynamoError, not the ValueError eager raises.
_why_not._dynamo_marked_constant = True  # type: ignore[attr-defined]


def resolve(op: str, backend: str, device: str, dtype: torch.dtype) -> str:
    """The backend that runs ``op`` for a tensor on ``device`` of ``dtype``.

    ``backend`` is ``"auto"``, ``"native"``, ``"triton"`` or ``"torch"``. An explicit backend that
    cannot run raises ``RuntimeError`` saying why.
    """
    if backend == "auto":
        backend = os.environ.get("FASTOPS_BACKEND", "auto")
    if backend == "auto":
        if not why_not(op, "native", device, dtype):
            return "native"
        if device == "cuda" and not why_not(op, "triton", device, dtype):
            return "triton"
        if (op, device, dtype) not in _WARNED:
            _WARNED.add((op, device, dtype))
            warnings.warn(
                f"fastops: no compiled {op} kernel for {device} {dtype} "
                f"({why_not(op, 'native', device, dtype)}); using the torch composition",
                RuntimeWarning,
                stacklevel=3,
            )
        return "torch"
    reason = why_not(op, backend, device, dtype)
    if reason:
        raise RuntimeError(f"fastops: backend={backend!r} cannot run {op} on {device} {dtype}: {reason}")
    return backend


def backends() -> dict[str, dict[str, tuple[bool, str]]]:
    """Which backends are usable on which device, and why not.

    Returns ``{backend: {device: (usable, reason)}}`` for ``native``, ``triton``, ``torch`` on
    ``cpu`` and ``cuda``. A backend counts as usable on a device when at least one op runs there in
    some dtype; the reason lists the ops and dtypes (or why none).
    """
    out: dict[str, dict[str, tuple[bool, str]]] = {}
    for backend in BACKENDS:
        out[backend] = {}
        for device in DEVICES:
            if device == "cuda" and not torch.cuda.is_available() and backend != "native":
                out[backend][device] = (False, "no CUDA device is visible")
                continue
            usable, notes = [], []
            for op in sorted(_SUPPORT):
                dts = sorted(_SUPPORT[op][backend].get(device, ()), key=str) if backend != "torch" else []
                reason = why_not(op, backend, device, dts[0]) if dts else why_not(op, backend, device, _f32)
                if backend == "torch":
                    usable.append(f"{op}: any dtype")
                elif reason:
                    notes.append(f"{op}: {reason}")
                else:
                    usable.append(f"{op}: " + ", ".join(str(d).replace("torch.", "") for d in dts))
            if backend == "native" and device == "cuda" and usable and not torch.cuda.is_available():
                out[backend][device] = (False, "built with CUDA kernels, but no CUDA device is visible")
                continue
            out[backend][device] = (bool(usable), "; ".join(usable or notes) or "no ops registered")
    return out


# Dtype sets shared by the op tables.
FLOAT32_FLOAT64 = (_f32, _f64)
ALL_FLOAT_DTYPES = (_f16, _bf16, _f32, _f64)
