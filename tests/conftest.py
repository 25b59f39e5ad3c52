"""Test session set-up: Triton runs on CPU tensors through its interpreter when no GPU is visible,
and native kernels poison their outputs so an unwritten element shows as NaN.

Both variables must be set before triton / the extension are first used, hence here.
"""

import os
import zlib

import pytest
import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("FASTOPS_POISON", "1")

# The session's seed and fuzz budgets; HAS_CUDA and device_backend_params are re-exported for test
# files that still import them from here (tests import helpers from fastops.testing).
from fastops.testing import FUZZ_EXAMPLES, FUZZ_PROFILES, HAS_CUDA, SEED, device_backend_params  # noqa: E402, F401

# pytest-xdist workers are started from this process's environment after this file is imported:
# pinning the seed here gives every worker the run's one seed (the header's), so a failure on any
# worker replays with FASTOPS_TEST_SEED=<seed>.
os.environ["FASTOPS_TEST_SEED"] = str(SEED)

if HAS_CUDA:
    # Tests compare CUDA results with torch's own: fp32 matmul/conv must be IEEE fp32, not TF32
    # (whose ~3e-4 relative error is above the fp32 tolerances).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _seed_line() -> str:
    return f"fastops: FASTOPS_TEST_SEED={SEED} TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"


def pytest_report_header(config):
    return _seed_line()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # The header is not printed under -q (CI's mode): the seed goes at the end too, so a failure can
    # always be replayed with FASTOPS_TEST_SEED=<seed>.
    terminalreporter.write_line(_seed_line())


@pytest.fixture(autouse=True)
def _seed(request):
    # Per-test seed derived from the run's seed, so tests don't depend on their order.
    torch.manual_seed(SEED ^ zlib.crc32(request.node.nodeid.encode()))


for _name, _budget in FUZZ_PROFILES.items():
    settings.register_profile(
        _name,
        max_examples=_budget["native"],
        deadline=None,  # 2 shared cores: timing is not a property
        database=None,  # nothing written into the tree; a failure prints its case (print_blob too)
        print_blob=True,
        # Tests draw a value seed and reseed themselves per example, so the per-test _seed fixture
        # is not shared state; large drawn cases are intended.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def pytest_addoption(parser):
    """``--slow``: the thousands-of-examples hypothesis profile for tests/test_fuzz.py."""
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="fastops: property fuzz with thousands of examples per op (hypothesis profile fastops-slow)",
    )


def pytest_configure(config):
    """Load the fuzz profile (``--hypothesis-profile``, when given, wins) and its per-backend budgets."""
    name = "fastops-slow" if config.getoption("--slow") else "fastops-ci"
    FUZZ_EXAMPLES.update(FUZZ_PROFILES[name])
    if not config.getoption("hypothesis_profile", default=None):
        settings.load_profile(name)
