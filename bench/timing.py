"""Timing and peak memory: the measuring core every benchmark row goes through.

CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` with ``num_threads=torch.get_num_threads()``
(the count is in every row's metadata); median, p20 and p80 of the Measurement's per-block times.
Rows meant to be compared on a drifting machine (the training steps) are timed together instead,
in alternating blocks (:func:`time_cpu_interleaved`).
Caches are not flushed between CPU runs: a working set that fits in the last-level cache shows
more than the DRAM copy bandwidth.

CUDA: ``triton.testing.do_bench`` (CUDA events, L2 cleared before each run,
``quantiles=[0.5, 0.2, 0.8]``); a call faster than :data:`CUDAGRAPH_BELOW_MS` is re-timed with
``triton.testing.do_bench_cudagraph`` so launch overhead does not dominate (if it captures).

Split timing (:func:`time_split`): a pass that consumes its input (a backward frees the graph its
forward built; an in-place backward overwrites the logits; a compiled backward donates its buffers)
cannot be replayed by ``Timer`` or ``do_bench``, so each call gets an untimed fresh setup.

Peak memory (:func:`peak_memory_mib`): CUDA: ``max_memory_allocated() - memory_allocated()``
around one call, after ``reset_peak_memory_stats()``. CPU: one call under ``torch.profiler`` with
``profile_memory=True``; the c10 CPU allocator's allocation and free events are summed in time
order and the running maximum is taken. Both mean: the most bytes the call had allocated at once
through torch's allocator beyond what was live when it started (outputs included until the call
drops them). Not counted: memory a kernel gets from ``malloc``/``new`` directly (a C++ kernel's
``std::vector`` scratch), and on CPU allocations on threads the profiler does not see. If the
profiler records no memory events the value is None, never a guess.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

CUDAGRAPH_BELOW_MS = 0.05
QUANTILES = (0.5, 0.2, 0.8)  # median, p20, p80: the order do_bench returns them in


@dataclass
class Timing:
    """A timed callable: median, p20, p80 in milliseconds, how many samples, and which timer."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    samples: int
    timer: str

    @classmethod
    def from_samples(cls, times_ms: Sequence[float], timer: str) -> Timing:
        """Median, p20 and p80 (numpy's linear interpolation) of per-call or per-block times."""
        med, p20, p80 = (float(q) for q in np.quantile(np.asarray(times_ms, dtype=np.float64), QUANTILES))
        return cls(med, p20, p80, samples=len(times_ms), timer=timer)


def synchronize(device: str) -> None:
    """Wait for ``device`` to finish (no-op on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_cpu(fn: Callable[[], object], *, min_run_time: float = 1.0, threads: int | None = None) -> Timing:
    """Time ``fn`` on CPU with ``torch.utils.benchmark.Timer.blocked_autorange``.

    Each sample is the mean of one block of calls (the block size is picked by the Timer so a block
    lasts long enough to time); median/p20/p80 are taken over the blocks.
    """
    from torch.utils.benchmark import Timer

    threads = threads or torch.get_num_threads()
    m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_run_time)
    return Timing.from_samples(
        [t * 1e3 for t in m.times],
        f"torch.utils.benchmark blocked_autorange ({threads} threads, {m.number_per_run}/block)",
    )


def time_cpu_interleaved(
    fns: dict[str, Callable[[], object]], *, min_run_time: float = 1.0, threads: int | None = None
) -> dict[str, Timing]:
    """Time several callables on CPU in alternating blocks (a round runs one block of each, the order
    reversed every other round), for rows compared with each other: on a shared machine whose speed
    drifts (a VM with noisy neighbours, measured 52 -> 77 ms for one unchanged training step within
    a session) back-to-back autoranges give each provider a different machine, alternation the same.

    Each sample is the mean of one block (about 20 ms of calls, sized per callable from a calibration
    call after one warm-up call); at least 5 rounds, until ``min_run_time`` per callable has passed.
    """
    threads = threads or torch.get_num_threads()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        number: dict[str, int] = {}
        for name, fn in fns.items():
            fn()  # warm-up: first-call allocations, lazy init
            t0 = time.perf_counter()
            fn()
            number[name] = max(1, round(0.02 / max(time.perf_counter() - t0, 1e-7)))
        samples: dict[str, list[float]] = {name: [] for name in fns}
        order, spent, rounds = list(fns), dict.fromkeys(fns, 0.0), 0
        while rounds < 5 or min(spent.values()) < min_run_time:
            for name in order if rounds % 2 == 0 else order[::-1]:
                fn, n = fns[name], number[name]
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                elapsed = time.perf_counter() - t0
                spent[name] += elapsed
                samples[name].append(elapsed / n * 1e3)
            rounds += 1
    finally:
        torch.set_num_threads(saved)
    return {
        name: Timing.from_samples(
            samples[name],
            f"interleaved blocks ({threads} threads, {number[name]}/block, {rounds} rounds with {len(fns) - 1} other)",
        )
        for name in fns
    }


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

    q = list(QUANTILES)
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

    CPU: ``time.perf_counter`` around each call; CUDA: CUDA events around each call, the L2 cache
    cleared after the setup. At least 5 (quick) or 10 samples, until the timed calls add up to
    0.05 s (quick) / 1 s (CPU) / 0.1 s (CUDA), or 20x that in wall time has passed.
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
    return Timing.from_samples(times, f"per call, setup (forward) untimed ({how})")


def peak_memory_mib(fn: Callable[..., object], device: str, setup: Callable[[], object] | None = None) -> float | None:
    """Peak bytes (MiB) allocated through torch's allocator during one call of ``fn``, beyond the
    bytes live when it started (see the module docstring for what is and is not counted).

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
    # Running sum of +alloc / -free in time order; its maximum is the peak.
    sizes = np.array([e.nbytes() for e in sorted(events, key=lambda e: e.start_ns())], dtype=np.int64)
    return max(0, int(np.cumsum(sizes).max())) / 2**20
