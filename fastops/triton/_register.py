"""How the Triton launchers become torch.library ops: ``triton_library_op``, one decorator for every op.

Decision. On a GPU the op is a ``torch.library.triton_op``; under the CPU interpreter
(``TRITON_INTERPRET=1``) it is a ``torch.library.custom_op``. Both get the same explicit fake kernel
(the one the native ops use, so every backend agrees on output shapes), the same schema string as
csrc/registration.cpp, and the same launcher, whose kernels are always launched as
``wrap_triton(kernel)[grid](...)``.

Why not one kind everywhere:

- ``triton_op`` is what the issue asks for, and on a GPU it is the better op: under torch.compile its
  implementation is traced (``wrap_triton`` launches become ``triton_kernel_wrapper_*`` nodes), so
  Inductor sees the kernels, can reorder and fuse around them, and needs no graph break.
- Under the interpreter it cannot work. ``triton_op`` registers the launcher itself as the fake kernel
  and, under ``FunctionalTensorMode`` (AOTAutograd, i.e. torch.compile and opcheck's aot_dispatch
  tests), runs the launcher on fake tensors so as to trace it. On a GPU that is fine because
  ``wrap_triton`` turns each launch into a traceable higher-order op; with ``TRITON_INTERPRET=1`` the
  kernel is an ``InterpretedFunction`` that ``wrap_triton`` hands back unwrapped (torch cannot trace
  it), and the interpreter then reads the fake tensors' data.
- Measured (torch 2.14.1, triton 3.8, TRITON_INTERPRET=1, CPU tensors, a one-kernel op):
  ``triton_op`` alone: eager OK; ``opcheck`` fails ``test_faketensor`` ("Attempted to set the storage
  of a tensor on device "meta" to a storage on different device "cpu""); ``torch.compile(fullgraph=True)``
  fails ("Cannot access data pointer of Tensor (e.g. FakeTensor, FunctionalTensor)").
  ``triton_op`` + explicit ``.register_fake(fake)``: eager OK, ``test_faketensor`` now passes, but
  ``opcheck`` fails ``test_aot_dispatch_dynamic`` and ``torch.compile(fullgraph=True)`` fails in the
  Inductor backend, both with "Attempted to access the data pointer on an invalid python storage":
  the explicit fake replaces only the fake kernel, not the functional decomposition.
  ``custom_op`` + explicit fake: eager, every ``opcheck`` test and ``torch.compile(fullgraph=True)``
  pass (the op is opaque to the compiler and runs eagerly on real tensors).

So the kind follows where the kernels run (``kind=None``: ``custom_op`` when interpreting, else
``triton_op``); one module serves both, and tests may force either kind with ``kind=`` (an op forced
to ``custom_op`` on a GPU is correct but slow: each launch then goes through the traceable wrapper).
Launchers must therefore be traceable on a GPU: torch ops and ``wrap_triton`` launches only, no
data-dependent Python on fake tensors (checks that need data are skipped when ``is_fake``).

Two things every op gets here, so that no launcher can forget them:

- A device guard. A Triton launch goes to the *current* CUDA device, not to the device of its
  pointer arguments: an op called with tensors on ``cuda:1`` while ``cuda:0`` is current would
  launch on ``cuda:0`` with pointers into another GPU's memory. ``triton_library_op`` runs every
  launcher inside :func:`device_guard` of its first tensor argument (the first element of a
  tensor-list argument, for ``adam_step_``): ``torch.cuda.device(t.device)`` on CUDA, nothing on CPU.
- :func:`check_kernel_input`: the devices and dtypes the kernels take, read from the op's row of the
  support table in ``fastops._backend`` (``register_op``), so the raw ops refuse exactly what
  ``backend="triton"`` refuses (e.g. fp16/bf16 CPU tensors for conv2d and linear_relu, which the
  interpreter would turn into garbage) instead of returning nonsense.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
from torch.library import CustomOpDef

from fastops.triton import interpreting

OpKind = Literal["triton_op", "custom_op"]


def default_kind() -> OpKind:
    """``custom_op`` under TRITON_INTERPRET=1 (CPU interpreter), ``triton_op`` on a GPU."""
    return "custom_op" if interpreting() else "triton_op"


def triton_library_op(
    name: str,
    *,
    mutates_args: Iterable[str],
    schema: str,
    fake: Callable[..., object],
    kind: OpKind | None = None,
) -> Callable[[Callable[..., object]], CustomOpDef]:
    """Register a Triton launcher as the op ``name`` ("namespace::op_name").

    schema: the argument/return part of the schema, e.g. "(Tensor x) -> Tensor", identical to the
    native op's. fake: the fake (meta) kernel, registered explicitly for both kinds. kind: see the
    module docstring; None picks ``default_kind()``.
    """
    kind = kind or default_kind()
    if kind not in ("triton_op", "custom_op"):
        raise ValueError(f"kind must be 'triton_op' or 'custom_op', got {kind!r}")
    make = torch.library.triton_op if kind == "triton_op" else torch.library.custom_op

    def register(fn: Callable[..., object]) -> CustomOpDef:
        @functools.wraps(fn)
        def guarded(*args: object, **kwargs: object) -> object:
            # device_guard is looked up here, at call time, so a test can replace it with a spy.
            with device_guard(first_tensor(*args, *kwargs.values())):
                return fn(*args, **kwargs)

        if kind == "triton_op":
            with _schema_honoured(guarded, schema):
                op = make(name, guarded, mutates_args=tuple(mutates_args), schema=schema)
        else:
            op = make(name, guarded, mutates_args=tuple(mutates_args), schema=schema)
        _check_schema(op, name, schema)
        op.register_fake(fake)
        return op

    return register


# Held while torch's schema inference is substituted: the Triton modules are imported on first use,
# so two threads can register ops at once, and interleaved substitutions could leave one in place.
_SCHEMA_LOCK = threading.Lock()


@contextlib.contextmanager
def _schema_honoured(fn: Callable[..., object], schema: str) -> Iterator[None]:
    """Make ``torch.library.triton_op(name, fn, schema=schema)`` register ``schema`` on every torch we support.

    torch 2.11 to 2.13 accept ``triton_op(..., schema=...)`` and drop it: they always infer the schema
    from the launcher's annotations. That breaks two ways. The inference evaluates string annotations
    (``from __future__ import annotations``) in the globals of the function it is given, here
    ``guarded`` in this module, so ``Sequence[bool]`` from a launcher's module is a NameError at import
    (torch 2.13's CI run failed so; the GPU image's torch 2.11 has the same code). And where it succeeds
    it infers ``SymInt[]`` for ``int[2]`` and ``bool[]`` for ``bool[3]``, not the native op's schema.
    torch 2.14 uses the schema it is given, and never calls the inference then, so this substitution
    is inert there. Only ``fn``'s inference is answered with ``schema``; any other function (another
    thread's op) gets torch's own. ``_check_schema`` verifies the outcome either way.
    """
    from torch._library import triton as torch_triton

    with _SCHEMA_LOCK:
        inferred = getattr(torch_triton, "infer_schema", None)
        if inferred is None:  # a torch that no longer imports it there: nothing to substitute
            yield
            return

        def given(f: Callable[..., object], *args: object, **kwargs: object) -> str:
            return schema if f is fn else inferred(f, *args, **kwargs)

        torch_triton.infer_schema = given
        try:
            yield
        finally:
            torch_triton.infer_schema = inferred


def _check_schema(op: CustomOpDef, name: str, schema: str) -> None:
    """Raise unless the registered ``op`` has exactly ``schema`` (compared parsed, so spacing is free)."""
    want = str(torch._C.parse_schema(name + schema))
    got = str(op._opoverload._schema)
    if got != want:
        raise RuntimeError(f"{name}: torch registered the schema {got!r}, not the contract's {want!r}")


def first_tensor(*args: object) -> torch.Tensor | None:
    """The first tensor among ``args``, looking one level into lists and tuples; None when there is none."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
        if isinstance(a, (list, tuple)):
            for t in a:
                if isinstance(t, torch.Tensor):
                    return t
    return None


def device_guard(t: torch.Tensor | None) -> contextlib.AbstractContextManager[object]:
    """``torch.cuda.device(t.device)`` when ``t`` is a CUDA tensor (Triton launches on the current
    device), else a no-op context (CPU tensors under the interpreter, or no tensor at all)."""
    if t is not None and t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


_DTYPE_ORDER = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    """The dtypes' names, narrow to wide, for a message: e.g. 'float32 or float64'."""
    chosen = set(dtypes)
    names = [str(d).replace("torch.", "") for d in _DTYPE_ORDER if d in chosen]
    names += sorted(str(d).replace("torch.", "") for d in chosen if d not in _DTYPE_ORDER)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_kernel_input(op: str, stem: str, t: torch.Tensor, arg: str) -> None:
    """Raise unless the Triton ``stem`` kernels run on ``t``'s device in ``t``'s dtype.

    The table is ``fastops._backend``'s (``register_op(stem, triton={device: dtypes})``): CUDA
    tensors, and CPU tensors only under TRITON_INTERPRET=1 and in the dtypes listed for "cpu".
    ValueError for the device, TypeError for the dtype, naming ``op`` and the argument ``arg``.
    """
    from fastops import _backend  # fastops is imported before any fastops.triton.<stem> module

    if stem not in _backend._SUPPORT:
        importlib.import_module(f"fastops.ops.{stem}")  # its import fills the table row
    table = _backend._SUPPORT[stem]["triton"]
    dev = t.device.type
    if dev not in table or (dev == "cpu" and not interpreting()):
        raise ValueError(
            f"{op}: the Triton kernels run on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), "
            f"got {arg} on {t.device}"
        )
    if t.dtype not in table[dev]:
        where = "on CPU (the interpreter)" if dev == "cpu" else f"on {dev}"
        raise TypeError(f"{op}: the Triton kernels {where} take {_dtype_names(table[dev])} {arg}, got {t.dtype}")


def new_output(
    shape: list[int] | tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """torch.empty, or NaN-filled under FASTOPS_POISON=1 (as the native new_output in csrc/fastops.h)
    so an element a kernel forgot to write shows in the tests."""
    if os.environ.get("FASTOPS_POISON") == "1":
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
    return torch.empty(tuple(shape), dtype=dtype, device=device)
