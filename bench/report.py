"""Output: the per-row progress line, the summary table, the environment stamp and the results
files (JSON and CSV through pandas; the PNG is :mod:`bench.chart`'s)."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from .rows import ROW_FIELDS, Row

if TYPE_CHECKING:
    from .context import Context

BENCH_DIR = Path(__file__).resolve().parent
# A source checkout (bench/ next to setup.py; an editable install maps fastops._bench here too)
# writes into bench/results; an installed copy has no repository to write into.
REPO_ROOT = BENCH_DIR.parent if (BENCH_DIR.parent / "setup.py").is_file() else None
RESULTS_DIR = BENCH_DIR / "results" if REPO_ROOT is not None else Path("fastops-bench-results")

# Without a terminal (CI logs) rich would wrap the summary at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def log(msg: str) -> None:
    """Progress output: one line (printed above a running progress bar)."""
    console.print(msg, markup=False, soft_wrap=True)


def format_progress(r: Row) -> str:
    """The one log line of a finished row."""
    head = f"  {r.op} {r.shape} {r.dtype} {r.device} {r.provider} {r.pass_}:"
    if r.median_ms is None:
        return f"{head} {r.note}"
    pct = f" ({r.pct_of_ceiling:.0f}% of ceiling)" if r.pct_of_ceiling is not None else ""
    sp = f"  x{r.speedup_vs_eager:.2f} vs eager" if r.speedup_vs_eager is not None else ""
    peak = "-" if r.peak_mem_mib is None else f"{r.peak_mem_mib:.1f}"
    return (
        f"{head} {r.median_ms:.4g} ms [p20 {r.p20_ms:.4g}, p80 {r.p80_ms:.4g}]  "
        f"{r.throughput:.4g} {r.metric}{pct}  peak {peak} MiB{sp}  check ok ({r.error:.2g})"
    )


def rows_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """The rows as a DataFrame with the results files' columns (``pass``, not ``pass_``)."""
    return pd.DataFrame([r.to_dict() for r in rows], columns=ROW_FIELDS)


# summary column -> (row field, format); None: the value as it is
SUMMARY_COLUMNS = {
    "op": ("op", None),
    "shape": ("shape", None),
    "dtype": ("dtype", None),
    "pass": ("pass", None),
    "provider": ("provider", None),
    "median ms": ("median_ms", "{:.4g}"),
    "p20 ms": ("p20_ms", "{:.4g}"),
    "p80 ms": ("p80_ms", "{:.4g}"),
    "rate": ("throughput", "{:.4g}"),
    "unit": ("metric", None),
    "% ceil": ("pct_of_ceiling", "{:.0f}"),
    "peak MiB": ("peak_mem_mib", "{:.1f}"),
    "vs eager": ("speedup_vs_eager", "{:.2f}x"),
    "check": ("correct", None),
}


def summary_table(rows: Sequence[Row], *, title: str = "") -> pd.DataFrame:
    """Print the summary of ``rows`` as a rich table (failed checks in red, speed-ups above 1 in
    green) and return it as a DataFrame of display strings."""
    df = rows_frame(rows)
    shown = pd.DataFrame(
        {
            name: df[field].map(lambda v, f=fmt: "-" if v is None or pd.isna(v) else (f.format(v) if f else str(v)))
            for name, (field, fmt) in SUMMARY_COLUMNS.items()
        }
    )
    shown["check"] = df["correct"].map({True: "ok", False: "FAIL"}).fillna("-")
    table = Table(title=title or None, show_lines=False, header_style="bold")
    for name, (_, fmt) in SUMMARY_COLUMNS.items():
        table.add_column(name, justify="right" if fmt else "left", no_wrap=True)
    for i, cells in enumerate(shown.itertuples(index=False)):
        ok, sp = df["correct"].iat[i], df["speedup_vs_eager"].iat[i]
        style = "red" if ok is False else ("green" if sp is not None and pd.notna(sp) and sp > 1.0 else None)
        table.add_row(*cells, style=style)
    console.print(table)
    return shown


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
    if REPO_ROOT is None:
        return None
    try:
        res = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _source_stamp() -> dict[str, object]:
    """The commit measured: the checkout's HEAD (and whether it is dirty), else the commit an
    installed package was built from (fastops/_build_info.py, written by setup.py)."""
    commit = _git("rev-parse", "HEAD")
    if commit is not None:
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return {"git_commit": commit, "git_dirty": None if dirty is None else bool(dirty), "source": "checkout"}
    try:
        from fastops import _build_info
    except ImportError:
        return {"git_commit": None, "git_dirty": None, "source": "installed, no build info"}
    return {
        "git_commit": getattr(_build_info, "GIT_COMMIT", None),
        "git_dirty": getattr(_build_info, "GIT_DIRTY", None),
        "source": "installed package",
    }


def environment(ctx: Context, command: str = "") -> dict[str, object]:
    """The stamp every results file carries."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
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
        **_source_stamp(),
        "quick": ctx.quick,
        "command": command or " ".join(sys.argv),
        "ceilings": ctx.ceilings.as_dict(),
        "peak_memory": "bytes allocated through torch's allocator during one call beyond those live "
        "at its start (CUDA: max_memory_allocated; CPU: torch.profiler memory events)",
        "error": "max|got-ref|/max|ref| vs float64 reference; allowed = 2*eager error + dtype floor "
        "(fastops.testing's rule, normalised)",
        "skipped": [s.__dict__ for s in ctx.skipped],
    }


def chart_title(env: dict[str, object]) -> str:
    """The PNG's title: the device, and the thread count on CPU."""
    if env.get("device_type") == "cpu":
        n = env.get("threads")
        return f"{env['device']} ({n} thread{'s' * (n != 1)})"
    return str(env["device"])


def write_results(
    rows: Sequence[Row], ctx: Context, out_dir: str | Path = RESULTS_DIR, command: str = ""
) -> list[Path]:
    """Write ``<device>-<date>[-quick].json``, ``.csv`` and ``.png`` into ``out_dir``; return the paths.

    The JSON holds the environment and the rows; the CSV the rows under ``# key: value`` lines of
    the environment (``pandas.read_csv(path, comment="#")`` reads it back)."""
    from .chart import write_chart

    env = environment(ctx, command)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{slug(str(env['device']))}-{env['date']}{'-quick' if ctx.quick else ''}"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".csv")]
    with open(paths[0], "w") as f:
        json.dump({"environment": env, "rows": [r.to_dict() for r in rows]}, f, indent=1, default=str)
        f.write("\n")
    with open(paths[1], "w", newline="") as f:
        for k, v in env.items():
            if k != "skipped":
                f.write(f"# {k}: {json.dumps(v, default=str)}\n")
        rows_frame(rows).to_csv(f, index=False)
    png = write_chart(rows_frame(rows), stem.with_suffix(".png"), title=chart_title(env))
    if png is not None:
        paths.append(png)
    return paths
