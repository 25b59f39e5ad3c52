"""fastops' PEP 517 build backend: setuptools.build_meta, plus the installing interpreter's torch.

fastops._C must be compiled against the torch it will be imported with. pip's build isolation runs
the build in a fresh environment holding only [build-system].requires; listing torch there would
download a (multi-GB) torch that need not match the installed one. Instead, when the build cannot
import torch, this backend asks the interpreter that runs pip (``sys.executable``, started with
``-I`` so pip's isolating PYTHONPATH is ignored) where its torch lives and appends that directory
to the build's ``sys.path``, after the isolated environment's own packages (setuptools, wheel,
ninja still come from there). Nothing is downloaded. When that interpreter has no torch either,
setup.py stops with the command to run. setup.py pins the wheel's torch requirement to the version
it compiled against, so the two stay together.
"""

from __future__ import annotations

import subprocess
import sys

from setuptools.build_meta import *  # noqa: F403 - every hook of setuptools' backend
from setuptools.build_meta import __all__  # noqa: F401

_WHERE_IS_TORCH = "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))"


def _installing_torch_dir() -> str | None:
    """The site-packages holding the installing interpreter's torch, or None (none there, or the
    build already sees a torch)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        return None
    try:
        res = subprocess.run([sys.executable, "-I", "-c", _WHERE_IS_TORCH], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    path = res.stdout.strip().splitlines()[-1] if res.returncode == 0 and res.stdout.strip() else ""
    return path or None


_TORCH_DIR = _installing_torch_dir()
if _TORCH_DIR is not None and _TORCH_DIR not in sys.path:
    sys.path.append(_TORCH_DIR)
