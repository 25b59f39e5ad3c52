"""Does the torch importing fastops match the torch fastops._C was compiled against?

A C++ extension is tied to the torch release it was built with: loaded into another it fails on
undefined symbols, or worse, loads and misbehaves. setup.py records the build's torch in
fastops/_build_info.py (absent in a tree built before that existed: then nothing is checked), and
``fastops._backend._load_native`` asks :func:`torch_mismatch` before it loads the library, so the
native backend is reported unusable with the reason instead.
"""

from __future__ import annotations

import importlib

import torch


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def torch_mismatch() -> str | None:
    """Why this build of fastops._C cannot run with the imported torch, or None when it can (or
    when the build recorded nothing)."""
    try:
        info = importlib.import_module("fastops._build_info")
    except ImportError:
        return None
    built = getattr(info, "TORCH_VERSION", None)
    if built is None:
        return None
    rebuild = (
        "rebuild fastops against this torch (`pip install --no-build-isolation --force-reinstall --no-deps .` "
        f"in its source tree), or install torch=={_public(built)}"
    )
    if _public(built) != _public(torch.__version__):
        return (
            f"fastops._C was compiled against torch {built} but torch {torch.__version__} is imported; "
            f"a compiled extension only loads into the torch release it was built with: {rebuild}"
        )
    if getattr(info, "CUDA_KERNELS", False) and torch.version.cuda is None:
        return (
            f"fastops._C was compiled with CUDA kernels against torch {built} (CUDA "
            f"{getattr(info, 'TORCH_CUDA_VERSION', '?')}), but the imported torch {torch.__version__} has no "
            f"CUDA: {rebuild}"
        )
    return None


def check_torch() -> None:
    """Raise ImportError with the reason when :func:`torch_mismatch` finds one."""
    why = torch_mismatch()
    if why is not None:
        raise ImportError(why)
