"""``python -m bench.readme_table RESULTS.json``: the README's benchmark table from one results file.

Prints the markdown the README keeps under ``<!-- BENCH-TABLE -->``: one line naming the machine,
versions, commit and ceilings of that run, then one row per (op, shape, dtype) with the median ms of
forward+backward (or one optimizer / training step) per provider and the speed-up vs torch eager;
rows in another dtype than float32 say so after the shape. Every number comes from the one file,
i.e. one run on one machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .registry import registered_ops

# README column -> the providers that fill it (the first one present wins).
COLUMNS = {
    "torch eager": ("torch_eager",),
    "torch.compile": ("torch_compile",),
    "torch fused": ("torch_fused",),
    "fastops native": ("fastops_native",),
    "native, in-place bwd": ("fastops_native_inplace",),
    "fastops.swap": ("fastops_swap",),
}
PASSES = ("fwd+bwd", "step")


def _ms(v: float) -> str:
    return f"{v:.3g} ms"


def table(path: Path) -> str:
    """The markdown block (header line, table, foreach note) for the results file at ``path``."""
    data = json.loads(path.read_text())
    env = data["environment"]
    ops = registered_ops()  # each benchmark module's main op (not e.g. bench_conv2d's conv2d_bias_relu)
    rows = [r for r in data["rows"] if r["pass"] in PASSES and r["op"] in ops and r.get("correct", True)]
    ceil = env.get("ceilings", {})
    mm = ceil.get("matmul_TFLOPs", {}).get("float32")
    head = f"Latest {env['device_type'].upper()} run: {env['device']}, {env.get('threads')} threads"
    lines = [
        f"{head}, torch {env['torch']}, "
        f"commit `{env['git_commit'][:7]}`, {env['date']} (copy ceiling {ceil.get('copy_bandwidth_GBps', 0):.1f} GB/s"
        + (f", fp32 matmul {mm:.2f} TFLOP/s" if mm else "")
        + f", both measured in the same run; load average {env.get('load_average_1min_at_start', 0):.2f} at start). "
        "Forward+backward (or one optimizer step / training step), float32 unless the shape names another "
        "dtype, median ms, speed-up vs torch eager. "
        "Full rows (fwd, bwd, GB/s, TFLOP/s, % of ceiling, peak memory): "
        f"`bench/results/{path.stem}.{{json,csv,png}}`.",
        "",
        "| op | shape | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    keys = list(dict.fromkeys((r["op"], r["shape"], r.get("dtype", "float32")) for r in rows))
    foreach = []
    for op, shape, dtype in keys:
        by_provider = {
            r["provider"]: r for r in rows if (r["op"], r["shape"], r.get("dtype", "float32")) == (op, shape, dtype)
        }
        cells = []
        for providers in COLUMNS.values():
            r = next((by_provider[p] for p in providers if p in by_provider), None)
            if r is None:
                cells.append("")
            elif r["provider"] == "torch_eager":
                cells.append(_ms(r["median_ms"]))
            else:
                cells.append(f"{_ms(r['median_ms'])} ({r['speedup_vs_eager']:.2f}x)")
        label = shape if dtype == "float32" else f"{shape} {dtype}"
        lines.append(f"| {op} | {label} | " + " | ".join(cells) + " |")
        if "torch_foreach" in by_provider:
            foreach.append(f"{_ms(by_provider['torch_foreach']['median_ms'])} ({shape.split(' ')[0]})")
    if foreach:
        lines += ["", "`torch.optim.Adam(foreach=True)` in the same run: " + ", ".join(foreach) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table for the results file named on the command line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.split("\n")[0], file=sys.stderr)
        return 2
    print(table(Path(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
