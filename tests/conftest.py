"""Test session set-up: Triton runs on CPU tensors through its interpreter when no GPU is visible,
and native kernels poison their outputs so an unwritten element shows as NaN.

Both variables must be set before triton / the extension are first used, hence here.
"""

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("FASTOPS_POISON", "1")

HAS_CUDA = torch.cuda.is_available()


def device_backend_params(cpu_backends=("native", "triton", "torch"), cuda_backends=("native", "triton", "torch")):
    """pytest params (device, backend): CPU ones always, CUDA ones marked gpu and skipped without a GPU."""
    params = []
    for device, backends in (("cpu", cpu_backends), ("cuda", cuda_backends)):
        for backend in backends:
            marks = []
            if device == "cuda":
                marks += [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible")]
            if backend == "triton":
                marks.append(pytest.mark.triton)
            params.append(pytest.param(device, backend, marks=marks, id=f"{device}-{backend}"))
    return params


# Fresh random inputs every run (design.md); the seed is printed so a failure can be replayed with
# FASTOPS_TEST_SEED=<seed>.
SEED = int(os.environ.get("FASTOPS_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


def pytest_report_header(config):
    return f"fastops: FASTOPS_TEST_SEED={SEED} TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"


@pytest.fixture(autouse=True)
def _seed(request):
    # Per-test seed derived from the run's seed, so tests don't depend on their order.
    torch.manual_seed(SEED ^ zlib.crc32(request.node.nodeid.encode()))
