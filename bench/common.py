"""Shared benchmark machinery: timing, ceilings, peak memory, correctness checks, rows, results.

Every op benchmark follows design.md's "Benchmark standard": one correctness check per provider
before timing, the median with p20/p80, the op's GB/s or TFLOP/s as a % of a ceiling measured in
the same run, peak memory, and the speed-up over torch eager.

Writing a per-op module (the interface ``python -m bench`` discovers)
----------------------------------------------------------------------
Put ``bench/bench_<stem>.py`` next to this file with::

    OP = "linear_relu"              # the name --op selects (and the `op` column of its rows)
    LEVEL = "op"                    # optional: "op" (default) or "model"; model-level modules
                                    # (e.g. bench/bench_model.py) run after every op module
    def run(ctx: Context) -> list[Row]:
        ...

``run`` loops over its shapes and dtypes (``ctx.device``, ``ctx.quick``, ``ctx.wants(dtype)``,
``ctx.fits(nbytes)``) and over its providers, and returns the rows it measured. Ops with an
autograd forward use :meth:`Context.bench_autograd`, which clones the inputs, runs the check once
(a forward and a backward), then times the passes ``fwd``, ``bwd`` and ``fwd+bwd`` and builds one
row each. Anything else (an optimizer step) uses :meth:`Context.bench_fn` for one pass. Measure
the ``torch_eager`` provider (:data:`EAGER`) first for each case: its check error is the baseline
of the low-precision tolerance and its median the denominator of the speed-up. A provider that
cannot run here is reported with :meth:`Context.skip` (logged and recorded, no row).

Timing
------
CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` with ``num_threads=torch.get_num_threads()``
(the count is in every row's metadata); median, p20 and p80 of the Measurement's per-block times.
Caches are not flushed between CPU runs: a working set that fits in the last-level cache shows
more than the DRAM copy bandwidth.
CUDA: ``triton.testing.do_bench`` (CUDA events, L2 cleared before each run,
``quantiles=[0.5, 0.2, 0.8]``); a call faster than :data:`CUDAGRAPH_BELOW_MS` is re-timed with
``triton.testing.do_bench_cudagraph`` so launch overhead does not dominate (if it captures).

Ceilings (measured once per process, in the same run, recorded in the results file)
-----------------------------------------------------------------------------------
Bandwidth: ``dst.copy_(src)`` of a large buffer (256 MiB on CPU, 1 GiB on CUDA), counting read +
write bytes. FLOP/s: a large square matmul (fp32 on CPU; bf16 and fp32 on CUDA, TF32 off), 2*N^3
flops. Other dtypes are measured on first use.

Peak memory
-----------
CUDA: ``max_memory_allocated() - memory_allocated()`` around one call, after
``reset_peak_memory_stats()``. CPU: one call under ``torch.profiler`` with ``profile_memory=True``;
the allocation and free events of the c10 CPU allocator are summed in time order and the running
maximum is taken. Both mean the same thing: the most bytes the call had allocated at once through
torch's allocator beyond what was live when it started (outputs included until the call drops
them). Not counted: memory a kernel gets from ``malloc``/``new`` directly (a C++ kernel's
``std::vector`` scratch), and on CPU allocations on threads the profiler does not see. If the
profiler records no memory events the value is None, never a guess.

Correctness
-----------
Errors are max|got - ref| / max|ref| against the float64 reference (normalised, so a mean-reduced
gradient of size 1/N is judged on its own scale). A provider passes when its error is at most
``2 * eager_error + floor(dtype)`` (design.md: fp16/bf16 may be 2x as far from the reference as
PyTorch's own same-dtype result, plus a small floor; for fp32/fp64 the floor dominates). A failed
or raising provider is not timed; its rows say why.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

PASSES = ("fwd", "bwd", "fwd+bwd")
EAGER = "torch_eager"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Normalised-error floors (see "Correctness" above).
TOL_FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
CUDAGRAPH_BELOW_MS = 0.05


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "float32"."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    """Parse a dtype name: "float32", "fp32", "bf16", "torch.bfloat16", ..."""
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp64": "float64"}
    name = aliases.get(name.removeprefix("torch."), name.removeprefix("torch."))
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unknown floating dtype {name!r}")
    return dtype


def log(msg: str) -> None:
    """Progress output: one flushed line."""
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timing:
    """A timed callable: median, p20, p80 in milliseconds, how many samples, and which timer."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    samples: int
    timer: str


def _quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method), no numpy needed."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def time_cpu(fn: Callable[[], object], *, min_run_time: float = 1.0, threads: int | None = None) -> Timing:
    """Time ``fn`` on CPU with ``torch.utils.benchmark.Timer.blocked_autorange``.

    Each sample is the mean of one block of calls (the block size is picked by the Timer so a block
    lasts long enough to time); median/p20/p80 are taken over the blocks.
    """
    from torch.utils.benchmark import Timer

    threads = threads or torch.get_num_threads()
    m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_run_time)
    times_ms = [t * 1e3 for t in m.times]
    return Timing(
        median_ms=_quantile(times_ms, 0.5),
        p20_ms=_quantile(times_ms, 0.2),
        p80_ms=_quantile(times_ms, 0.8),
        samples=len(times_ms),
        timer=f"torch.utils.benchmark blocked_autorange ({threads} threads, {m.number_per_run}/block)",
    )


def time_cuda(
    fn: Callable[[], object],
    *,
    rep_ms: int = 100,
    grad_to_none: Sequence[torch.Tensor] | None = None,
    cudagraph: bool | None = None,
) -> Timing:
    """Time ``fn`` on CUDA with ``triton.testing.do_bench`` (events, L2 cleared per run).

    ``cudagraph``: True forces ``do_bench_cudagraph``; None (auto) uses it when the events median
    is below :data:`CUDAGRAPH_BELOW_MS` and the call can be captured; False never.
    """
    from triton.testing import do_bench, do_bench_cudagraph

    q = [0.5, 0.2, 0.8]
    if cudagraph is not True:
        med, p20, p80 = do_bench(fn, rep=rep_ms, grad_to_none=grad_to_none, quantiles=q)
        timing = Timing(med, p20, p80, samples=0, timer="triton do_bench (CUDA events, L2 cleared)")
        if cudagraph is False or med >= CUDAGRAPH_BELOW_MS:
            return timing
    try:
        med, p20, p80 = do_bench_cudagraph(fn, rep=rep_ms, grad_to_none=grad_to_none, quantiles=q)
    except Exception as exc:  # capture can fail (host syncs, allocator); keep the events timing
        if cudagraph is True:
            raise
        timing.timer += f"; CUDA graph capture failed: {type(exc).__name__}"
        return timing
    return Timing(med, p20, p80, samples=10, timer="triton do_bench_cudagraph (CUDA graph replay)")


def time_fn(fn: Callable[[], object], device: str, *, quick: bool = False) -> Timing:
    """Time ``fn`` on ``device`` ("cpu" or "cuda") with that device's timer."""
    if device == "cuda":
        return time_cuda(fn, rep_ms=20 if quick else 100)
    return time_cpu(fn, min_run_time=0.05 if quick else 1.0)


def time_split(
    setup: Callable[[], object], fn: Callable[[object], object], device: str, *, quick: bool = False
) -> Timing:
    """Time ``fn(setup())`` per call, with ``setup`` run untimed before each call.

    For a pass that consumes what it needs (a backward frees the graph its forward built, so it
    cannot be replayed by ``Timer`` or ``do_bench``). CPU: ``time.perf_counter`` around each call;
    CUDA: CUDA events around each call, the L2 cache cleared after the setup. At least 5 (quick) or
    10 samples, until the timed calls add up to 0.05 s (quick) / 1 s (CPU) / 0.1 s (CUDA).
    """
    budget_ms = 50.0 if quick else (100.0 if device == "cuda" else 1000.0)
    min_samples, max_samples = (5 if quick else 10), 2000
    flush = None
    if device == "cuda":
        from triton import runtime

        flush = runtime.driver.active.get_empty_cache_for_benchmark()
    fn(setup())  # warm-up
    synchronize(device)
    times: list[float] = []
    deadline = time.perf_counter() + 20 * budget_ms / 1e3
    while len(times) < max_samples and (len(times) < min_samples or sum(times) < budget_ms):
        state = setup()
        if flush is not None:
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(state)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(state)
            times.append((time.perf_counter() - t0) * 1e3)
        del state
        if len(times) >= min_samples and time.perf_counter() > deadline:
            break
    how = "CUDA events, L2 cleared" if device == "cuda" else f"perf_counter, {torch.get_num_threads()} threads"
    return Timing(
        median_ms=_quantile(times, 0.5),
        p20_ms=_quantile(times, 0.2),
        p80_ms=_quantile(times, 0.8),
        samples=len(times),
        timer=f"per call, setup (forward) untimed ({how})",
    )


def synchronize(device: str) -> None:
    """Wait for ``device`` to finish (no-op on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------------
# Ceilings


class Ceilings:
    """The device's copy bandwidth and matmul FLOP/s, measured on first use and cached."""

    def __init__(self, device: str, quick: bool = False) -> None:
        self.device = device
        self.quick = quick
        self._bandwidth: float | None = None
        self._tflops: dict[torch.dtype, float] = {}
        self.notes: dict[str, str] = {}

    def _time(self, fn: Callable[[], object]) -> Timing:
        # A ceiling is the denominator of every % column: timed as long in --quick as in a full run.
        fn()
        if self.device == "cuda":
            return time_cuda(fn, rep_ms=200, cudagraph=False)
        return time_cpu(fn, min_run_time=0.5)

    def bandwidth_gbs(self) -> float:
        """GB/s of ``dst.copy_(src)``, read + write bytes counted."""
        if self._bandwidth is None:
            nbytes = (1 << 30) if self.device == "cuda" else (256 << 20)
            src = torch.randn(nbytes // 4, device=self.device)
            dst = torch.zeros_like(src)  # touched, so the timed copies take no page faults
            t = self._time(lambda: dst.copy_(src))
            self._bandwidth = 2 * nbytes / (t.median_ms * 1e-3) / 1e9
            self.notes["bandwidth"] = f"copy_ of {nbytes >> 20} MiB float32, read+write counted; {t.timer}"
            del src, dst
        return self._bandwidth

    def matmul_tflops(self, dtype: torch.dtype) -> float:
        """TFLOP/s of an n x n x n matmul in ``dtype`` (2 n^3 flops; TF32 off for float32)."""
        if dtype not in self._tflops:
            n = 8192 if self.device == "cuda" else 2048
            a = torch.randn(n, n, device=self.device, dtype=dtype)
            b = torch.randn(n, n, device=self.device, dtype=dtype)
            old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                t = self._time(lambda: torch.mm(a, b))
            finally:
                torch.backends.cuda.matmul.allow_tf32 = old
            self._tflops[dtype] = 2 * n**3 / (t.median_ms * 1e-3) / 1e12
            self.notes[f"matmul_{dtype_name(dtype)}"] = f"torch.mm {n}x{n}x{n}; {t.timer}"
        return self._tflops[dtype]

    def measure_defaults(self) -> None:
        """Measure what every run records: bandwidth, and fp32 (+ bf16 on CUDA) matmul."""
        self.bandwidth_gbs()
        for dt in (torch.bfloat16, torch.float32) if self.device == "cuda" else (torch.float32,):
            self.matmul_tflops(dt)

    def as_dict(self) -> dict[str, object]:
        """What the results file records."""
        return {
            "copy_bandwidth_GBps": self._bandwidth,
            "matmul_TFLOPs": {dtype_name(k): v for k, v in self._tflops.items()},
            "how": dict(self.notes),
        }


# --------------------------------------------------------------------------------------------------
# Peak memory


def peak_memory_mib(fn: Callable[..., object], device: str, setup: Callable[[], object] | None = None) -> float | None:
    """Peak bytes (MiB) allocated through torch's allocator during one call of ``fn``, beyond the
    bytes live when it started. See the module docstring for what is and is not counted.

    With ``setup``, measures ``fn(setup())`` and leaves the setup out of the count."""
    if setup is not None:
        state = setup()
        return peak_memory_mib(lambda: fn(state), device)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    if not events:
        return None
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


# --------------------------------------------------------------------------------------------------
# Correctness


class ErrorMeter:
    """Accumulates max|got - ref| and max|ref| (possibly over chunks); ``.error`` is their ratio."""

    def __init__(self) -> None:
        self.max_diff = 0.0
        self.max_ref = 0.0
        self.nonfinite = False

    def add(self, got: torch.Tensor, ref: torch.Tensor) -> ErrorMeter:
        """Fold one (chunk of) output into the meter; shapes must match."""
        if got.shape != ref.shape:
            raise ValueError(f"shape mismatch: got {tuple(got.shape)}, reference {tuple(ref.shape)}")
        got64, ref64 = got.detach().double(), ref.detach().double()
        if not bool(torch.isfinite(got64).all()) and bool(torch.isfinite(ref64).all()):
            self.nonfinite = True
        if got64.numel():
            self.max_diff = max(self.max_diff, float((got64 - ref64).abs().max()))
            self.max_ref = max(self.max_ref, float(ref64.abs().max()))
        return self

    @property
    def error(self) -> float:
        """Normalised max error; inf when got had a NaN/inf the reference did not."""
        if self.nonfinite or math.isnan(self.max_diff):
            return math.inf
        return self.max_diff / self.max_ref if self.max_ref > 0 else self.max_diff


def normalised_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max|got - ref| / max|ref| in float64 (inf if got has a NaN/inf where ref is finite)."""
    return ErrorMeter().add(got, ref).error


def allowed_error(dtype: torch.dtype, eager_error: float | None) -> float:
    """The tolerance: 2x torch eager's own error from the reference, plus the dtype's floor."""
    floor = TOL_FLOOR.get(dtype, 1e-5)
    return floor + (2 * eager_error if eager_error is not None and math.isfinite(eager_error) else 0.0)


# --------------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    """One measured (op, shape, dtype, device, provider, pass). Times in ms; None where not measured.

    ``throughput`` is in ``metric`` units ("GB/s" or "TFLOP/s"); ``pct_of_ceiling`` compares it to
    the copy bandwidth or the same-dtype matmul rate of this run. ``correct`` is the check's
    verdict; a row whose check failed or raised has no times and says why in ``note``.
    """

    op: str
    shape: str
    dtype: str
    device: str
    provider: str
    pass_: str
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    metric: str = ""
    throughput: float | None = None
    pct_of_ceiling: float | None = None
    peak_mem_mib: float | None = None
    speedup_vs_eager: float | None = None
    correct: bool | None = None
    error: float | None = None
    allowed_error: float | None = None
    samples: int | None = None
    timer: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        """Plain dict for JSON/CSV; the pass field is spelled "pass"."""
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return d

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """(op, shape, dtype, device, pass): rows with the same key are comparable."""
        return (self.op, self.shape, self.dtype, self.device, self.pass_)


ROW_FIELDS = [
    "op", "shape", "dtype", "device", "provider", "pass", "median_ms", "p20_ms", "p80_ms", "metric",
    "throughput", "pct_of_ceiling", "peak_mem_mib", "speedup_vs_eager", "correct", "error",
    "allowed_error", "samples", "timer", "note",
]  # fmt: skip


@dataclass
class Work:
    """What one call of each pass must do: ideal bytes moved (memory-bound ops) or flops (matrix
    ops), keyed by pass name. Exactly one of the two is given."""

    bytes: dict[str, float] | None = None
    flops: dict[str, float] | None = None


def fill_speedups(rows: list[Row]) -> None:
    """Set ``speedup_vs_eager`` = eager median / provider median for rows sharing a key."""
    eager = {r.key: r.median_ms for r in rows if r.provider == EAGER and r.median_ms}
    for r in rows:
        base = eager.get(r.key)
        r.speedup_vs_eager = base / r.median_ms if base and r.median_ms else None


# --------------------------------------------------------------------------------------------------
# The context a per-op module's run() receives


@dataclass
class Skip:
    """A provider or case that was not run here, and why."""

    op: str
    provider: str
    reason: str
    shape: str = ""
    dtype: str = ""


@dataclass
class Context:
    """What ``run(ctx)`` gets: where to run, what was asked for, and the measuring helpers."""

    device: str
    quick: bool = False
    dtypes: list[torch.dtype] | None = None  # from --dtype; None = each module's defaults
    threads: int = field(default_factory=torch.get_num_threads)
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    ceilings: Ceilings = None  # type: ignore[assignment]
    load_at_start: float | None = None  # 1-min load average: other work on the machine skews CPU timings
    _eager_error: dict[tuple, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ceilings is None:
            self.ceilings = Ceilings(self.device, self.quick)
        if self.load_at_start is None and hasattr(os, "getloadavg"):
            self.load_at_start = os.getloadavg()[0]

    # -- selection -------------------------------------------------------------------------------

    def wants(self, dtype: torch.dtype) -> bool:
        """Whether ``dtype`` was asked for (always true without --dtype)."""
        return self.dtypes is None or dtype in self.dtypes

    def select_dtypes(self, defaults: Sequence[torch.dtype]) -> list[torch.dtype]:
        """--dtype if given, else the module's defaults for this device."""
        return list(self.dtypes) if self.dtypes is not None else list(defaults)

    def fits(self, nbytes: float) -> bool:
        """Whether ``nbytes`` more can be allocated on the device (keeping 10% headroom)."""
        if self.device == "cuda":
            free, _ = torch.cuda.mem_get_info()
        else:
            free = _cpu_available_bytes()
        return nbytes < 0.9 * free

    def skip(self, op: str, provider: str, reason: str, shape: str = "", dtype: torch.dtype | None = None) -> None:
        """Record (and log) a provider or case that is not run here."""
        dt = dtype_name(dtype) if dtype is not None else ""
        skip = Skip(op, provider, reason, shape, dt)
        if skip in self.skipped:
            return
        self.skipped.append(skip)
        if sum((s.op, s.provider, s.reason) == (op, provider, reason) for s in self.skipped) == 1:
            where = " ".join(s for s in (shape, dt) if s)
            log(f"  skip {op} {provider}{' ' + where if where else ''}: {reason}")

    # -- measuring -------------------------------------------------------------------------------

    def _rate(self, work: Work, pass_: str, dtype: torch.dtype, ms: float) -> tuple[str, float, float | None]:
        """(metric, value, % of ceiling) for one timed pass."""
        if work.flops is not None:
            tflops = work.flops[pass_] / (ms * 1e-3) / 1e12
            ceiling = self.ceilings.matmul_tflops(dtype)
            return "TFLOP/s", tflops, 100 * tflops / ceiling if ceiling else None
        assert work.bytes is not None, "Work needs bytes or flops"
        gbs = work.bytes[pass_] / (ms * 1e-3) / 1e9
        ceiling = self.ceilings.bandwidth_gbs()
        return "GB/s", gbs, 100 * gbs / ceiling if ceiling else None

    def _emit(self, row: Row) -> Row:
        base = next((r.median_ms for r in self.rows if r.provider == EAGER and r.key == row.key and r.median_ms), None)
        if base and row.median_ms:
            row.speedup_vs_eager = base / row.median_ms
        self.rows.append(row)
        log(format_progress(row))
        return row

    def _verdict(self, key: tuple, provider: str, dtype: torch.dtype, error: float) -> tuple[bool, float]:
        if provider == EAGER:
            self._eager_error[key] = error
        allowed = allowed_error(dtype, self._eager_error.get(key))
        return error <= allowed, allowed

    def bench_fn(
        self,
        *,
        op: str,
        shape: str,
        dtype: torch.dtype,
        provider: str,
        fn: Callable[[], object],
        check: Callable[[], float],
        work: Work,
        pass_: str = "fwd",
    ) -> Row:
        """Check once, then time ``fn`` as one pass and return its row.

        ``check()`` runs the provider on fresh inputs and returns its normalised error against the
        reference (e.g. via :func:`normalised_error`); it is called exactly once, before timing.
        """
        row = Row(op, shape, dtype_name(dtype), self.device, provider, pass_)
        try:
            error = check()
        except Exception as exc:  # the row records it; the suite goes on
            _free_after_error(self.device)
            row.correct, row.note = False, f"check raised {type(exc).__name__}: {_short(exc)}"
            return self._emit(row)
        row.correct, row.allowed_error = self._verdict((op, shape, row.dtype, pass_), provider, dtype, error)
        row.error = error
        if not row.correct:
            row.note = f"FAILED check (error {error:.3g} > allowed {row.allowed_error:.3g}); not timed"
            return self._emit(row)
        return self._emit(self._time_into(row, fn, work, dtype))

    def bench_autograd(
        self,
        *,
        op: str,
        shape: str,
        dtype: torch.dtype,
        provider: str,
        forward: Callable[..., torch.Tensor],
        inputs: Sequence[torch.Tensor],
        check: Callable[[torch.Tensor, list[torch.Tensor | None]], tuple[float, float]],
        work: Work,
        passes: Sequence[str] = PASSES,
    ) -> list[Row]:
        """Check ``forward`` once, then time its passes; one row per pass.

        ``inputs`` are cloned for this provider (those with ``requires_grad`` are differentiated).
        ``forward(*inputs)`` returns a tensor; a non-scalar output is back-propagated with a fixed
        random gradient. The check runs forward + backward once on the fresh clones and calls
        ``check(output, grads)`` -> (forward error, backward error), normalised errors against the
        reference (``grads`` follows ``inputs``; None for inputs without grad). ``fwd`` is judged
        on the forward error, ``bwd`` on the backward error, ``fwd+bwd`` on both.

        Timed callables: ``fwd`` = forward with grad enabled (what training runs; it builds the
        graph and saves what backward needs); ``bwd`` = ``torch.autograd.grad(out, inputs)`` after
        an untimed fresh forward per call (:func:`time_split`: compiled backwards donate their
        buffers and in-place backwards consume their inputs, so a graph cannot be replayed);
        ``fwd+bwd`` = both. Gradients are taken with ``autograd.grad``, not ``.backward()``, so
        they are what the op hands to its producer: no ``.grad`` accumulation, and no clone by
        AccumulateGrad of a gradient that aliases a leaf input (an in-place backward's does).
        """
        xs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
        diff = [t for t in xs if t.requires_grad]
        rows = [Row(op, shape, dtype_name(dtype), self.device, provider, p) for p in passes]
        grad_out: list[torch.Tensor | None] = [None]

        def backward(out: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if out.dim() and grad_out[0] is None:
                g = torch.Generator(device=out.device).manual_seed(0)
                grad_out[0] = torch.randn(out.shape, generator=g, device=out.device, dtype=out.dtype)
            return torch.autograd.grad(out, diff, grad_out[0] if out.dim() else None)

        try:
            out = forward(*xs)
            it = iter(backward(out))
            grads = [next(it) if t.requires_grad else None for t in xs]
            synchronize(self.device)
            errors = dict(zip(("fwd", "bwd"), check(out.detach(), grads)))
            del out, grads, it
            fresh = [t.detach().clone() for t in inputs]
            for t, f in zip(xs, fresh):  # the check may have used the inputs in place (liger does)
                with torch.no_grad():
                    t.copy_(f)
            del fresh
        except Exception as exc:
            _free_after_error(self.device)
            for r in rows:
                r.correct, r.note = False, f"check raised {type(exc).__name__}: {_short(exc)}"
            return [self._emit(r) for r in rows]
        errors["fwd+bwd"] = max(errors["fwd"], errors["bwd"])

        def run_fwd() -> None:
            forward(*xs)

        def run_fwd_bwd() -> None:
            backward(forward(*xs))

        def run_bwd(out: torch.Tensor) -> None:
            backward(out)

        for row in rows:
            key = (op, shape, row.dtype, row.pass_)
            row.error = errors[row.pass_]
            row.correct, row.allowed_error = self._verdict(key, provider, dtype, row.error)
            if not row.correct:
                row.note = f"FAILED check (error {row.error:.3g} > allowed {row.allowed_error:.3g}); not timed"
                self._emit(row)
                continue
            try:
                if row.pass_ == "bwd":
                    self._emit(self._time_into(row, run_bwd, work, dtype, setup=lambda: forward(*xs)))
                else:
                    self._emit(self._time_into(row, run_fwd if row.pass_ == "fwd" else run_fwd_bwd, work, dtype))
            except Exception as exc:
                _free_after_error(self.device)
                row.note = f"timing raised {type(exc).__name__}: {_short(exc)}"
                self._emit(row)
        return rows

    def _time_into(
        self,
        row: Row,
        fn: Callable[..., object],
        work: Work,
        dtype: torch.dtype,
        setup: Callable[[], object] | None = None,
    ) -> Row:
        """Time ``fn()`` (or ``fn(setup())`` with the setup untimed), then its peak memory."""
        if setup is None:
            t = time_fn(fn, self.device, quick=self.quick)
        else:
            t = time_split(setup, fn, self.device, quick=self.quick)
        row.median_ms, row.p20_ms, row.p80_ms = t.median_ms, t.p20_ms, t.p80_ms
        row.samples, row.timer = t.samples, t.timer
        row.metric, row.throughput, row.pct_of_ceiling = self._rate(work, row.pass_, dtype, t.median_ms)
        row.peak_mem_mib = peak_memory_mib(fn, self.device, setup)
        return row


def _short(exc: BaseException, n: int = 160) -> str:
    s = " ".join(str(exc).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _free_after_error(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def _cpu_available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return math.inf


# --------------------------------------------------------------------------------------------------
# Output: progress line, summary table, results files


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_progress(r: Row) -> str:
    """One line per measured row."""
    head = f"  {r.op} {r.shape} {r.dtype} {r.device} {r.provider} {r.pass_}:"
    if r.median_ms is None:
        return f"{head} {r.note}"
    pct = f" ({r.pct_of_ceiling:.0f}% of ceiling)" if r.pct_of_ceiling is not None else ""
    sp = f"  x{r.speedup_vs_eager:.2f} vs eager" if r.speedup_vs_eager is not None else ""
    return (
        f"{head} {r.median_ms:.4g} ms [p20 {r.p20_ms:.4g}, p80 {r.p80_ms:.4g}]  "
        f"{r.throughput:.4g} {r.metric}{pct}  peak {_fmt(r.peak_mem_mib, '.1f')} MiB{sp}  "
        f"check ok ({r.error:.2g})"
    )


_TABLE_COLS = [
    ("op", "op", "<", None),
    ("shape", "shape", "<", None),
    ("dtype", "dtype", "<", None),
    ("provider", "provider", "<", None),
    ("pass", "pass_", "<", None),
    ("median ms", "median_ms", ">", ".4g"),
    ("p20 ms", "p20_ms", ">", ".4g"),
    ("p80 ms", "p80_ms", ">", ".4g"),
    ("rate", "throughput", ">", ".4g"),
    ("unit", "metric", "<", None),
    ("% ceil", "pct_of_ceiling", ">", ".0f"),
    ("peak MiB", "peak_mem_mib", ">", ".1f"),
    ("vs eager", "speedup_vs_eager", ">", ".2f"),
    ("check", "correct", "<", None),
]


def _cell(r: Row, attr: str, spec: str | None) -> str:
    v = getattr(r, attr)
    if attr == "correct":
        return "ok" if v else ("FAIL" if v is False else "-")
    if spec is None:
        return str(v) if v not in (None, "") else "-"
    return _fmt(v, spec)


def summary_table(rows: Sequence[Row], *, echo: bool = True) -> str:
    """Print the fixed-width summary of ``rows`` (if ``echo``) and return the same as markdown."""
    cells = [[h for h, *_ in _TABLE_COLS]] + [[_cell(r, a, s) for _, a, _, s in _TABLE_COLS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_TABLE_COLS))]
    if echo:
        for n, line in enumerate(cells):
            log("  ".join(format(c, f"{al}{w}") for c, w, (_, _, al, _) in zip(line, widths, _TABLE_COLS)))
            if n == 0:
                log("  ".join("-" * w for w in widths))
    md = ["| " + " | ".join(cells[0]) + " |"]
    md.append("|" + "|".join("---:" if al == ">" else "---" for _, _, al, _ in _TABLE_COLS) + "|")
    md += ["| " + " | ".join(c) + " |" for c in cells[1:]]
    return "\n".join(md)


def slug(text: str) -> str:
    """File-name slug: "Intel(R) Xeon(R) Platinum 8480+" -> "intel-xeon-platinum-8480"."""
    text = re.sub(r"\((r|tm|c)\)", "", text, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model string."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def environment(ctx: Context) -> dict[str, object]:
    """The stamp every results file carries."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "device": device_name(ctx.device),
        "device_type": ctx.device,
        "date": _dt.date.today().isoformat(),
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cuda_runtime_used": ctx.device == "cuda",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": ctx.threads,
        "load_average_1min_at_start": ctx.load_at_start,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if dirty is None else bool(dirty),
        "quick": ctx.quick,
        "command": " ".join(
            ["python", *(["-m", "bench"] if sys.argv[0].endswith("__main__.py") else sys.argv[:1])] + sys.argv[1:]
        ),
        "ceilings": ctx.ceilings.as_dict(),
        "peak_memory": "bytes allocated through torch's allocator during one call beyond those live "
        "at its start (CUDA: max_memory_allocated; CPU: torch.profiler memory events)",
        "error": "max|got-ref|/max|ref| vs float64 reference; allowed = 2*eager error + dtype floor",
        "skipped": [asdict(s) for s in ctx.skipped],
    }


def write_results(rows: Sequence[Row], ctx: Context, out_dir: str | Path = RESULTS_DIR) -> list[Path]:
    """Write ``<device>-<date>[-quick].json``, ``.csv`` and ``.png`` into ``out_dir``; return the paths."""
    env = environment(ctx)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{slug(str(env['device']))}-{env['date']}{'-quick' if ctx.quick else ''}"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".csv")]
    with open(paths[0], "w") as f:
        json.dump({"environment": env, "rows": [r.to_dict() for r in rows]}, f, indent=1, default=str)
        f.write("\n")
    with open(paths[1], "w", newline="") as f:
        f.write("".join(f"# {k}: {json.dumps(v, default=str)}\n" for k, v in env.items() if k != "skipped"))
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        w.writerows(r.to_dict() for r in rows)
    title = (
        f"{env['device']} ({ctx.threads} thread{'s' * (ctx.threads != 1)})"
        if ctx.device == "cpu"
        else str(env["device"])
    )
    png = write_chart(rows, stem.with_suffix(".png"), title=title)
    if png is not None:
        paths.append(png)
    return paths


def write_chart(rows: Sequence[Row], path: Path, title: str = "") -> Path | None:
    """Bar chart of speed-up vs torch eager, one panel per op, bars per provider. None if no
    matplotlib (said in the log) or nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: skipping the PNG chart (pip install matplotlib)")
        return None
    timed = [r for r in rows if r.speedup_vs_eager is not None and r.provider != EAGER]
    ops = list(dict.fromkeys(r.op for r in timed))
    if not ops:
        return None
    fig, axes = plt.subplots(len(ops), 1, figsize=(12, 3.6 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        sel = [r for r in timed if r.op == op]
        cases = list(dict.fromkeys((r.shape, r.dtype, r.pass_) for r in sel))
        providers = list(dict.fromkeys(r.provider for r in sel))
        width = 0.8 / len(providers)
        for i, p in enumerate(providers):
            vals = {(r.shape, r.dtype, r.pass_): r.speedup_vs_eager for r in sel if r.provider == p}
            xs = [j + (i - (len(providers) - 1) / 2) * width for j in range(len(cases))]
            bars = ax.bar(xs, [vals.get(c, float("nan")) for c in cases], width, label=p)
            ax.bar_label(bars, fmt="%.2g", fontsize=6)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log", base=2)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f"{s}\n{d} {p}" for s, d, p in cases], fontsize=7)
        ax.set_ylabel("speed-up vs torch eager (log2)")
        ax.set_title(f"{op} — {title}" if title else op)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def now() -> float:
    """Wall clock for the runner's elapsed-time line."""
    return time.perf_counter()
