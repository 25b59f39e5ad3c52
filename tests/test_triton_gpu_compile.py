"""Every Triton kernel compiles for an NVIDIA GPU (sm_90), checked on a machine without one.

The Triton interpreter runs the kernels on CPU tensors but never compiles them, so a kernel can pass
every interpreted test and still fail to compile on a GPU. ``scripts/triton_compile_check.py``
compiles each kernel ahead of time for sm_90 (to a cubin, no device needed) with the argument types
and constexpr combinations its launchers use; it must run without ``TRITON_INTERPRET`` (the
interpreter patches ``triton.language``), hence the subprocess. A fresh Triton cache directory makes
every kernel compile, not come from an earlier run's cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.triton

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "triton_compile_check.py"


def test_every_triton_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the GPU tests compile (and run) every kernel at launch")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    run = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n{run.stderr[-4000:]}"
    done = re.search(r"(\d+) of (\d+) compiled for sm_90", run.stdout)
    assert done and done[1] == done[2] and int(done[1]) >= 30 and "FAIL" not in run.stdout, run.stdout[-6000:]
