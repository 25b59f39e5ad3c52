"""The :class:`Context` a benchmark module's ``run(ctx)`` receives: where to run, what was asked
for, and the measuring helpers that turn a provider into checked, timed rows."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .ceilings import Ceilings
from .checks import allowed_error
from .report import format_progress, log
from .rows import EAGER, PASSES, Row, Skip, Work, dtype_name
from .timing import Timing, peak_memory_mib, synchronize, time_cpu_interleaved, time_fn, time_split


@dataclass
class Context:
    """What ``run(ctx)`` gets: where to run, what was asked for, and the measuring helpers.

    ``on_row`` is called with every finished row (the runner's progress bar); rows are also kept in
    ``rows`` in the order they were measured.
    """

    device: str
    quick: bool = False
    dtypes: list[torch.dtype] | None = None  # from --dtype; None = each module's defaults
    threads: int = field(default_factory=torch.get_num_threads)
    rows: list[Row] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    ceilings: Ceilings = None  # type: ignore[assignment]
    load_at_start: float | None = None  # 1-min load average: other work on the machine skews CPU timings
    on_row: Callable[[Row], None] | None = None
    _eager_error: dict[tuple, float] = field(default_factory=dict)
    _compiled_ops: set[str] = field(default_factory=set)

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
        """Record (and log, once per op/provider/reason) a provider or case that is not run here."""
        dt = dtype_name(dtype) if dtype is not None else ""
        skip = Skip(op, provider, reason, shape, dt)
        if skip in self.skipped:
            return
        self.skipped.append(skip)
        if sum((s.op, s.provider, s.reason) == (op, provider, reason) for s in self.skipped) == 1:
            where = " ".join(s for s in (shape, dt) if s)
            log(f"  skip {op} {provider}{' ' + where if where else ''}: {reason}")

    def compiled(
        self, op: str, fn: Callable[..., object], dtype: torch.dtype | None = None
    ) -> Callable[..., object] | None:
        """``torch.compile(fn, dynamic=False)`` after a ``torch._dynamo.reset()`` (a fresh compile per
        case: no silent eager fallback past the recompile limit), or None, recorded with :meth:`skip`,
        for every case of ``op`` after its first in --quick: Inductor's C++ compile is most of a quick
        run's time, and one case per op already walks the provider's code."""
        if self.quick and op in self._compiled_ops:
            self.skip(op, "torch_compile", "--quick compiles the first case of each op only", dtype=dtype)
            return None
        self._compiled_ops.add(op)
        torch._dynamo.reset()
        return torch.compile(fn, dynamic=False)

    # -- measuring -------------------------------------------------------------------------------

    def fastops_backends(self, op: str, dtype: torch.dtype, probe: Callable[[str], str] | None = None) -> list[str]:
        """The fastops backends (``"native"``, ``"triton"``) to time for ``op`` in ``dtype`` here; each
        other one is recorded with :meth:`skip` and fastops' reason, or ``probe(backend)``'s (a
        non-empty string: why a tiny call failed). The Triton interpreter on CPU is never timed."""
        import fastops

        table = fastops.backends()
        runnable = []
        for backend in ("native", "triton"):
            usable, reason = table.get(backend, {}).get(self.device, (False, "not listed by fastops.backends()"))
            if backend == "triton" and self.device == "cpu":
                usable, reason = False, "the Triton interpreter on CPU is a test path, not a performance path"
            if usable and probe is not None:
                reason = probe(backend)
                usable = not reason
            if usable:
                runnable.append(backend)
            else:
                self.skip(op, f"fastops_{backend}", reason, dtype=dtype)
        return runnable

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
        if self.on_row is not None:
            self.on_row(row)
        return row

    def _judge(self, row: Row, dtype: torch.dtype, error: float) -> None:
        """Record ``error`` on ``row`` and its verdict against the allowed error (from torch eager's
        error at the same op, shape, dtype and pass); a failing row's note says it is not timed."""
        key = row.key
        if row.provider == EAGER:
            self._eager_error[key] = error
        row.error, row.allowed_error = error, allowed_error(dtype, self._eager_error.get(key))
        row.correct = error <= row.allowed_error
        if not row.correct:
            row.note = f"FAILED check (error {error:.3g} > allowed {row.allowed_error:.3g}); not timed"

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
        reference (e.g. via :func:`bench.checks.normalised_error`); it is called exactly once,
        before timing.
        """
        row = self._checked_row(op, shape, dtype, provider, pass_, check)
        if not row.correct:
            return self._emit(row)
        return self._emit(self._time_into(row, fn, work, dtype))

    def bench_fns_together(
        self,
        *,
        op: str,
        shape: str,
        dtype: torch.dtype,
        providers: dict[str, tuple[Callable[[], object], Callable[[], float]]],
        work: Work,
        pass_: str = "fwd",
    ) -> list[Row]:
        """:meth:`bench_fn` for several providers of one shape (``provider -> (fn, check)``, eager
        first), checked one by one, then timed together: on CPU in alternating blocks
        (:func:`bench.timing.time_cpu_interleaved`), so that a drifting machine slows each alike."""
        rows = {name: self._checked_row(op, shape, dtype, name, pass_, check) for name, (_, check) in providers.items()}
        ok = {name: providers[name][0] for name, row in rows.items() if row.correct}
        timings = (
            time_cpu_interleaved(ok, min_run_time=0.05 if self.quick else 1.0, threads=self.threads)
            if self.device == "cpu" and len(ok) > 1
            else {}
        )
        return [
            self._emit(self._time_into(row, ok[name], work, dtype, timing=timings.get(name)) if row.correct else row)
            for name, row in rows.items()
        ]

    def _checked_row(
        self, op: str, shape: str, dtype: torch.dtype, provider: str, pass_: str, check: Callable[[], float]
    ) -> Row:
        """A row with ``check()``'s verdict (``row.correct``; a failure's note says why, untimed)."""
        row = Row(op, shape, dtype_name(dtype), self.device, provider, pass_)
        try:
            error = check()
        except Exception as exc:  # the row records it; the suite goes on
            _free_after_error(self.device)
            row.correct, row.note = False, f"check raised {type(exc).__name__}: {_short(exc)}"
            return row
        self._judge(row, dtype, error)
        return row

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
        an untimed fresh forward per call (:func:`bench.timing.time_split`: compiled backwards
        donate their buffers and in-place backwards consume their inputs, so a graph cannot be
        replayed); ``fwd+bwd`` = both. Gradients are taken with ``autograd.grad``, not
        ``.backward()``, so they are what the op hands to its producer: no ``.grad`` accumulation,
        and no clone by AccumulateGrad of a gradient that aliases a leaf input (an in-place
        backward's does).
        """
        rows, runs = self._prepare_autograd(op, shape, dtype, provider, forward, inputs, check, passes)
        if runs is None:
            return rows
        return [self._time_autograd_row(row, runs, work, dtype) for row in rows]

    def bench_autograd_together(
        self,
        *,
        op: str,
        shape: str,
        dtype: torch.dtype,
        providers: dict[str, Callable[..., torch.Tensor]],
        inputs: Sequence[torch.Tensor],
        check: Callable[[torch.Tensor, list[torch.Tensor | None]], tuple[float, float]],
        work: Work,
        passes: Sequence[str] = PASSES,
    ) -> list[Row]:
        """:meth:`bench_autograd` for several providers of one shape (``provider -> forward``, eager
        first): each checked and its ``fwd`` / ``bwd`` timed in turn, then the ``fwd+bwd`` passes of
        all that passed timed together, on CPU in alternating blocks
        (:func:`bench.timing.time_cpu_interleaved`): the row compared across providers, on a machine
        whose speed drifts between back-to-back timings. Every provider's inputs are live at once."""
        out: list[Row] = []
        together: dict[str, tuple[Row, dict[str, Callable[..., object]]]] = {}
        for name, forward in providers.items():
            rows, runs = self._prepare_autograd(op, shape, dtype, name, forward, inputs, check, passes)
            if runs is None:
                out += rows
                continue
            for row in rows:
                if row.pass_ == "fwd+bwd" and row.correct and self.device == "cpu":
                    together[name] = (row, runs)
                else:
                    out.append(self._time_autograd_row(row, runs, work, dtype))
        if together:
            fns = {name: runs["fwd+bwd"] for name, (_, runs) in together.items()}
            try:
                timings = time_cpu_interleaved(fns, min_run_time=0.05 if self.quick else 1.0, threads=self.threads)
            except Exception as exc:
                _free_after_error(self.device)
                for row, _ in together.values():
                    row.note = f"timing raised {type(exc).__name__}: {_short(exc)}"
                    out.append(self._emit(row))
                return out
            for name, (row, runs) in together.items():
                out.append(self._emit(self._time_into(row, runs["fwd+bwd"], work, dtype, timing=timings[name])))
        return out

    def _prepare_autograd(
        self,
        op: str,
        shape: str,
        dtype: torch.dtype,
        provider: str,
        forward: Callable[..., torch.Tensor],
        inputs: Sequence[torch.Tensor],
        check: Callable[[torch.Tensor, list[torch.Tensor | None]], tuple[float, float]],
        passes: Sequence[str],
    ) -> tuple[list[Row], dict[str, Callable[..., object]] | None]:
        """One provider's rows with their check verdicts, and its timed callables (``fwd``,
        ``fwd+bwd``; ``bwd`` takes a fresh forward's output); no callables when the check raised
        (the rows are then emitted, untimed)."""
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
            return [self._emit(r) for r in rows], None
        errors["fwd+bwd"] = max(errors["fwd"], errors["bwd"])
        for row in rows:
            self._judge(row, dtype, errors[row.pass_])
        runs: dict[str, Callable[..., object]] = {
            "fwd": lambda: forward(*xs),
            "fwd+bwd": lambda: backward(forward(*xs)),
            "bwd": backward,
            "setup": lambda: forward(*xs),
        }
        return rows, runs

    def _time_autograd_row(
        self, row: Row, runs: dict[str, Callable[..., object]], work: Work, dtype: torch.dtype
    ) -> Row:
        """Time one pass of a prepared provider (an untimed fresh forward per ``bwd`` call) and emit
        its row; a failed check's row is emitted untimed."""
        if not row.correct:
            return self._emit(row)
        try:
            if row.pass_ == "bwd":
                return self._emit(self._time_into(row, runs["bwd"], work, dtype, setup=runs["setup"]))
            return self._emit(self._time_into(row, runs[row.pass_], work, dtype))
        except Exception as exc:
            _free_after_error(self.device)
            row.note = f"timing raised {type(exc).__name__}: {_short(exc)}"
            return self._emit(row)

    def _time_into(
        self,
        row: Row,
        fn: Callable[..., object],
        work: Work,
        dtype: torch.dtype,
        setup: Callable[[], object] | None = None,
        timing: Timing | None = None,
    ) -> Row:
        """Time ``fn()`` (or ``fn(setup())`` with the setup untimed), or take ``timing`` when it was
        timed already, then its peak memory."""
        if timing is not None:
            t = timing
        elif setup is None:
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
