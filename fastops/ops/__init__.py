"""Per-op glue (fake kernels, argument contract, autograd) and the one registry of ops.

``OPS`` is the only list of ops in the package: backend resolution, the Triton loader, the shared
test generators (:mod:`fastops.testing`), ``fastops.swap`` and scripts/sanitize.sh read it. A new
op adds one entry here (its stem, and the torch modules ``fastops.swap`` replaces with it).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

# stem -> the torch.nn modules fastops.swap replaces with the op's fastops.nn module. A name is a
# torch.nn class whose fastops.nn drop-in has the same name ("Conv2d"), or "A+B": an A directly
# followed by a B inside an nn.Sequential, replaced by fastops.nn.AB (the B's slot by nn.Identity).
OPS: dict[str, tuple[str, ...]] = {
    "adam": (),
    "conv2d": ("Conv2d", "Conv2d+ReLU"),
    "cross_entropy": ("CrossEntropyLoss",),
    "linear_cross_entropy": (),
    "linear_relu": ("Linear+ReLU",),
}
STEMS: tuple[str, ...] = tuple(OPS)


def load(stem: str) -> ModuleType:
    """Import ``fastops.ops.<stem>`` (its import registers the op's fake kernels, autograd and backends row)."""
    if stem not in OPS:
        raise ValueError(f"fastops has no op {stem!r}; it has {', '.join(STEMS)}")
    return importlib.import_module(f"fastops.ops.{stem}")


_LOADED: set[tuple[str, str]] = set()  # (backend, stem) whose ops are registered


def namespace(backend: str, stem: str | None = None):  # noqa: ANN201 - a torch.ops namespace
    """The ``torch.ops`` namespace holding ``backend``'s registered ops: ``torch.ops.fastops`` (native)
    or ``torch.ops.fastops_triton`` (importing ``fastops.triton.<stem>`` registers them), with
    ``stem``'s ops loaded, or every op's when ``stem`` is None.

    Traceable by torch.compile once the ops are loaded (the first, eager call loads them): the
    imports run only for a (backend, stem) not seen yet.
    """
    if backend not in ("native", "triton"):
        raise ValueError(f"only the native and triton backends have registered ops, got {backend!r}")
    for s in STEMS if stem is None else (stem,):
        if (backend, s) not in _LOADED:
            load(s)
            if backend == "triton":
                import fastops.triton

                fastops.triton.load(s)
            _LOADED.add((backend, s))
    return torch.ops.fastops if backend == "native" else torch.ops.fastops_triton
