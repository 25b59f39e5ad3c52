"""``python -m bench`` (a checkout) / ``python -m fastops.bench`` and ``fastops-bench`` (installed):
run the op benchmarks on the device that is here, print, write results.

    python -m bench                         # every bench/bench_*.py, CUDA if available else CPU
    python -m bench --op cross_entropy      # only some ops (repeatable; "train_step" is model-level)
    python -m bench --quick                 # tiny shapes, few repetitions (a smoke run, < 1 min on CPU)
    python -m bench --device cpu --dtype float32 --threads 1 --out /tmp/results

Modules are discovered by file name (``bench_*.py`` in this package: :mod:`bench.registry`, the
one list of what is benchmarked) and must define ``OP`` and ``run(ctx) -> list[Row]``;
``LEVEL = "model"`` modules (e.g. bench_model.py) run after the op modules. Results go to
``<out>/<device>-<date>[-quick].{json,csv,png}`` (default: bench/results in a checkout,
./fastops-bench-results for an installed package).

The run refuses (exit status 3, nothing written) when a fastops backend it is asked to measure
(``--require``, default: native) cannot run on the device, rather than write torch-only results.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import traceback

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from . import common
from .registry import discover, module_name
from .report import console

EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_BACKEND_MISSING, EXIT_STOPPED = 1, 2, 3, 124


class Stopped(BaseException):
    """SIGTERM (``timeout``, a CI runner) during the run: a BaseException, so no module's own
    ``except Exception`` swallows it, and the rows measured so far are still written."""


def _stop(signum: int, _frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def parse_args(argv: list[str] | None = None, prog: str = "python -m bench") -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--op", action="append", help="op to run (repeatable); default: all discovered")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    p.add_argument("--dtype", action="append", help="dtype(s) to run (repeatable), e.g. float32, bf16")
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repetitions")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")
    p.add_argument("--out", default=str(common.RESULTS_DIR), help=f"results folder (default {common.RESULTS_DIR})")
    p.add_argument(
        "--require",
        action="append",
        choices=["native", "triton", "none"],
        help="fastops backend that must run on the device, else exit 3 before measuring (repeatable; "
        "default: native; 'none' measures whatever runs)",
    )
    p.add_argument("--list", action="store_true", help="list the discovered benchmark modules and exit")
    return p.parse_args(argv)


def missing_backends(device: str, required: list[str]) -> list[str]:
    """One line per required fastops backend that cannot run on ``device``, with fastops' reason."""
    import fastops

    table = fastops.backends()
    out = []
    for backend in required:
        usable, reason = table.get(backend, {}).get(device, (False, "not listed by fastops.backends()"))
        if not usable:
            out.append(f"fastops {backend} on {device}: {reason}")
    return out


def main(argv: list[str] | None = None, prog: str = "python -m bench") -> int:
    """Run, print the summary, write the results. Exit status: 0 ok, 1 a check failed or a module
    raised, 2 bad arguments, 3 a required backend is missing, 124 SIGTERM stopped the run (the rows
    measured until then are written all the same)."""
    args = parse_args(argv, prog)
    mods = discover()
    names = [module_name(m) for m in mods]
    if args.list:
        for m, n in zip(mods, names):
            common.log(f"{n:22s} {getattr(m, 'LEVEL', 'op'):6s} {m.__file__}")
        return 0
    if args.op:
        unknown = sorted(set(args.op) - set(names))
        if unknown:
            common.log(f"unknown --op {', '.join(unknown)}; discovered: {', '.join(names)}")
            return EXIT_USAGE
        mods = [m for m, n in zip(mods, names) if n in args.op]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        common.log("--device cuda: no CUDA device is visible")
        return EXIT_USAGE
    required = [b for b in (args.require or ["native"]) if b != "none"]
    missing = missing_backends(device, required)
    if missing:
        common.log(
            "refusing to benchmark: a backend asked for cannot run here, and the results would "
            "measure torch alone:\n  " + "\n  ".join(missing) + "\n(--require none measures whatever runs)"
        )
        return EXIT_BACKEND_MISSING
    dtypes = [common.parse_dtype(d) for d in args.dtype] if args.dtype else None
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = common.Context(device=device, quick=args.quick, dtypes=dtypes)

    start = common.now()
    threads = f"{ctx.threads} thread{'s' * (ctx.threads != 1)}"
    common.log(
        f"fastops bench on {common.device_name(device)} ({device}, {threads}, torch {torch.__version__}"
        f"{', quick' if args.quick else ''}); modules: {', '.join(module_name(m) for m in mods)}"
    )
    if device == "cpu" and ctx.load_at_start is not None and ctx.load_at_start > 0.5:
        common.log(
            f"warning: load average {ctx.load_at_start:.2f} at start: other processes share these "
            "cores, so CPU timings will be noisy (recorded in the results)"
        )
    ctx.ceilings.measure_defaults()
    c = ctx.ceilings.as_dict()
    tf = ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in c["matmul_TFLOPs"].items())
    common.log(f"ceilings: copy {c['copy_bandwidth_GBps']:.1f} GB/s; matmul {tf}")

    failed_modules = []
    stopped = None
    # scripts/gpu_suite.sh's timeout: keep what was measured (signals are the main thread's alone)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if in_main else None
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("modules, {task.fields[rows]} rows"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("", total=len(mods), rows=0)

        def on_row(row: common.Row) -> None:
            what = f"{row.op} {row.shape} {row.dtype} {row.provider} {row.pass_}"
            progress.update(task, description=what, rows=len(ctx.rows))

        ctx.on_row = on_row
        for mod in mods:
            name = module_name(mod)
            progress.update(task, description=f"[{name}]")
            common.log(f"[{name}]")
            try:
                mod.run(ctx)
            except Stopped as e:
                stopped = str(e)
                common.log(f"[{name}] stopped by {stopped}: the rows so far are written")
                break
            except Exception:
                failed_modules.append(name)
                common.log(f"[{name}] raised; its rows so far are kept:\n{traceback.format_exc()}")
            progress.advance(task)
    if in_main:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # writing the results; timeout's SIGKILL still ends it
    rows = ctx.rows
    common.fill_speedups(rows)
    common.summary_table(rows, title=f"fastops bench, {common.device_name(device)} ({device}, {threads})")
    command = " ".join([prog, *(sys.argv[1:] if argv is None else argv)])
    if stopped:  # the record says the run is partial
        command += f"  # stopped by {stopped}: partial"
    paths = common.write_results(rows, ctx, args.out, command=command)
    common.log(f"\nwrote {', '.join(str(p) for p in paths)} in {common.now() - start:.0f} s")
    if in_main:
        signal.signal(signal.SIGTERM, previous)
    if stopped:
        return EXIT_STOPPED
    bad = [r for r in rows if r.correct is False]
    if bad or failed_modules:
        common.log(f"{len(bad)} row(s) failed their check; modules that raised: {failed_modules or 'none'}")
        return EXIT_CHECK_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
