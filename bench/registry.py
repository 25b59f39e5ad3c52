"""The one registry of what is benchmarked: the ``bench_*.py`` modules of this package.

Everything that iterates over ops (the runner, the README table, the checks of the package) asks
here instead of keeping its own list of names: adding ``bench/bench_<stem>.py`` adds the op.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from .report import log

PACKAGE = __package__ or "bench"  # "bench" in a checkout, "fastops._bench" when installed


def discover() -> list[ModuleType]:
    """The benchmark modules of this package, op-level first, then model-level, each by name."""
    here = Path(__file__).resolve().parent
    mods = []
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name):
        if not info.name.startswith("bench_"):
            continue
        mod = importlib.import_module(f"{PACKAGE}.{info.name}")
        if not hasattr(mod, "run"):
            log(f"warning: {info.name}.py has no run(ctx); skipped")
            continue
        mods.append(mod)
    return sorted(mods, key=lambda m: getattr(m, "LEVEL", "op") == "model")


def module_name(mod: ModuleType) -> str:
    """The name --op selects: the module's OP, else its file stem without "bench_"."""
    return getattr(mod, "OP", mod.__name__.rsplit(".", 1)[-1].removeprefix("bench_"))


def registered_ops() -> list[str]:
    """The benchmarked ops, in run order: what tables and checks iterate over instead of a list
    of names kept by hand."""
    return [module_name(m) for m in discover()]
