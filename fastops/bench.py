"""``python -m fastops.bench`` / ``fastops-bench``: the benchmark suite of an installed fastops.

The suite's files are the repository's ``bench/`` folder, installed as ``fastops._bench`` (setup.py
maps it there, so no top-level ``bench`` package lands in site-packages). From a source checkout
without an install (``PYTHONPATH=.``) the same files are the ``bench`` package. Flags and exit
status: ``python -m fastops.bench --help``.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def _suite() -> ModuleType:
    """The runner module: fastops._bench.__main__ when installed, else bench.__main__."""
    try:
        return importlib.import_module("fastops._bench.__main__")
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastops._bench", "fastops._bench.__main__"):
            raise  # a dependency of the suite is missing: say which
    try:
        return importlib.import_module("bench.__main__")
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", "bench.__main__"):
            raise
        raise SystemExit(
            "the fastops benchmark suite is not installed with this fastops (no fastops._bench) and no "
            "bench/ folder of a checkout is importable; reinstall fastops from its source tree"
        ) from exc


def main(argv: list[str] | None = None) -> int:
    """Run the suite; the exit status of ``python -m bench`` (0 ok, 1 failed check, 2 usage,
    3 a required backend missing)."""
    try:
        suite = _suite()
    except ModuleNotFoundError as exc:
        print(f"fastops bench needs {exc.name!r}: pip install 'fastops[bench]'", file=sys.stderr)
        return 2
    return suite.main(argv, prog="python -m fastops.bench")


if __name__ == "__main__":
    sys.exit(main())
