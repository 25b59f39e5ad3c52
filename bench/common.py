"""The benchmark interface and shared machinery, re-exported from one place.

Every op benchmark follows design.md's "Benchmark standard": one correctness check per provider
before timing, the median with p20/p80, the op's GB/s or TFLOP/s as a % of a ceiling measured in
the same run, peak memory, and the speed-up over torch eager. The machinery lives in one file per
job: :mod:`bench.timing` (timers, split timing, peak memory), :mod:`bench.ceilings`,
:mod:`bench.checks` (normalised error; the tolerance rule of :mod:`fastops.testing`),
:mod:`bench.rows` (Row, Work, Skip), :mod:`bench.context` (Context), :mod:`bench.report` (log,
summary table, results files) and :mod:`bench.chart` (the PNG).

Writing a per-op module (the interface ``python -m bench`` and ``python -m fastops.bench`` discover)
------------------------------------------------------------------------------------------------------
Put ``bench/bench_<stem>.py`` next to this file with::

    from .common import EAGER, Context, ErrorMeter, Row, Work   # relative: the same file runs as
                                                                # bench.* (a checkout) and as
                                                                # fastops._bench.* (installed)
    OP = "linear_relu"              # the name --op selects (and the `op` column of its rows)
    LEVEL = "op"                    # optional: "op" (default) or "model"; model-level modules
                                    # (e.g. bench/bench_model.py) run after every op module
    def run(ctx: Context) -> list[Row]:
        ...

``run`` loops over its shapes and dtypes (``ctx.device``, ``ctx.quick``, ``ctx.wants(dtype)``,
``ctx.fits(nbytes)``) and over its providers, and returns the rows it measured. Ops with an
autograd forward use :meth:`Context.bench_autograd`, which clones the inputs, runs the check once
(a forward and a backward), then times the passes ``fwd``, ``bwd`` and ``fwd+bwd`` and builds one
row each (:meth:`Context.bench_autograd_together` times a shape's providers together, on CPU in
alternating blocks). Anything else (an optimizer step) uses :meth:`Context.bench_fn` for one pass,
or :meth:`Context.bench_fns_together` for a shape's providers together. Measure
the ``torch_eager`` provider (:data:`EAGER`) first for each case: its check error is the baseline
of the low-precision tolerance and its median the denominator of the speed-up. A provider that
cannot run here is reported with :meth:`Context.skip` (logged and recorded, no row).
"""

from __future__ import annotations

import time

from .ceilings import Ceilings
from .checks import ErrorMeter, allowed_error, error_floor, normalised_error
from .context import Context
from .report import RESULTS_DIR, device_name, environment, log, summary_table, write_results
from .rows import EAGER, PASSES, ROW_FIELDS, Row, Skip, Work, dtype_name, fill_speedups, parse_dtype
from .timing import Timing, peak_memory_mib, synchronize, time_cpu, time_cuda, time_fn, time_split

__all__ = [
    "EAGER",
    "PASSES",
    "RESULTS_DIR",
    "ROW_FIELDS",
    "Ceilings",
    "Context",
    "ErrorMeter",
    "Row",
    "Skip",
    "Timing",
    "Work",
    "allowed_error",
    "device_name",
    "dtype_name",
    "environment",
    "error_floor",
    "fill_speedups",
    "log",
    "normalised_error",
    "now",
    "parse_dtype",
    "peak_memory_mib",
    "summary_table",
    "synchronize",
    "time_cpu",
    "time_cuda",
    "time_fn",
    "time_split",
    "write_results",
]


def now() -> float:
    """Wall clock for the runner's elapsed-time line."""
    return time.perf_counter()
