"""The Triton backend: Triton kernels registered as torch.library ops in the ``fastops_triton`` namespace.

Importing this package is cheap and never fails: it neither imports triton nor registers anything.
It only answers whether the backend can run here:

- ``AVAILABLE``: triton is installed and there is somewhere to run its kernels: a CUDA device, or
  the CPU under ``TRITON_INTERPRET=1`` (the interpreter; set it before triton is first imported).
- ``REASON``: why not, in one line, when ``AVAILABLE`` is False ("" otherwise).

The kernels and their registrations load on first use of the backend, one module per op::

    import fastops.triton
    fastops.triton.load("cross_entropy")   # imports fastops.triton.cross_entropy, registers
    torch.ops.fastops_triton.cross_entropy_fwd(...)  # fastops_triton::cross_entropy_{fwd,bwd,bwd_}
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

__all__ = ["AVAILABLE", "REASON", "interpreting", "load"]


def interpreting() -> bool:
    """True when triton runs kernels in its CPU interpreter: TRITON_INTERPRET set to 1, true, on, yes
    or y in any case, triton's own rule (its knobs.env_bool). The one test of the variable in fastops:
    ``fastops._backend`` and the Triton registrations ask this function."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes", "y")


def _why_unavailable() -> str:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if interpreting():
        return ""
    if not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the Triton kernels on CPU tensors, for tests)"
    return ""


REASON: str = _why_unavailable()
AVAILABLE: bool = REASON == ""


def load(stem: str) -> ModuleType:
    """Import ``fastops.triton.<stem>`` (its import registers the ``fastops_triton::<stem>_*`` ops)."""
    from fastops.ops import OPS  # the registry (importing fastops.triton alone stays cheap)

    if stem not in OPS:
        raise ValueError(f"fastops.triton has no op {stem!r}; it has {', '.join(OPS)}")
    if not AVAILABLE:
        raise RuntimeError(f"the fastops Triton backend is unavailable: {REASON}")
    return importlib.import_module(f"{__name__}.{stem}")
