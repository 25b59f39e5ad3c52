"""The results PNG: speed-up over torch eager, one panel per (op, pass), bars per provider.

Each panel's x axis is the op's cases (a short shape label, plus the dtype when it is not float32),
rotated so they fit; an op with more than MAX_CASES cases gets one panel per dtype, so the labels
never overlap; each case has one bar per provider, peers first and fastops beside them, in
the same colour in every panel. The y axis is linear and the bars start at the 1.0x line (torch
eager), so a bar above it is faster than eager and one below is slower; the value is printed on
each bar. Cases whose check failed have no bar (the table and the JSON say why).

    python -m bench.chart bench/results/amd-epyc-2026-11-23.json      # rewrites the .png beside it
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pandas as pd

from .rows import EAGER

NCOLS = 3
# About what fits under a 6.2-inch panel at font size 7 without the rotated labels overlapping.
MAX_CASES = 18
# Peers first, then fastops: every fastops bar stands right of the peers it is compared with.
PROVIDER_ORDER = ("torch_compile", "torch_foreach", "torch_fused", "liger")
DTYPE_SHORT = {"float32": "", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}


def short_shape(shape: str) -> str:
    """A tick label: the shape without its parenthesised detail ("resnet50 (161 tensors, 25.6M)"
    -> "resnet50")."""
    return re.sub(r"\s*\(.*\)\s*$", "", shape) or shape


def _provider_order(providers: list[str]) -> list[str]:
    def key(p: str) -> tuple[int, int, str]:
        if p in PROVIDER_ORDER:
            return (0, PROVIDER_ORDER.index(p), p)
        return (2 if p.startswith("fastops") else 1, 0, p)

    return sorted(providers, key=key)


def _label(timed: pd.DataFrame) -> pd.DataFrame:
    """``timed`` with a "case" column (the tick label) and a "group" column (the panel's name: the
    op, plus its dtype when the op has more than MAX_CASES cases)."""
    timed = timed.copy()
    timed["case"] = [
        " ".join(s for s in (short_shape(sh), DTYPE_SHORT.get(dt, dt)) if s)
        for sh, dt in zip(timed["shape"], timed["dtype"])
    ]
    many = timed.groupby("op", sort=False)["case"].transform("nunique") > MAX_CASES
    with_dtype = timed["op"] + " " + timed["dtype"].map(lambda d: DTYPE_SHORT.get(d) or "fp32")
    timed["group"] = with_dtype.where(many, timed["op"])
    return timed


def _panels(timed: pd.DataFrame) -> list[list[tuple[str, str]]]:
    """Figure rows of (panel group, pass) panels: one row per group with several passes, in their
    measured order; groups with a single pass (an optimizer step, a training step) share rows."""
    if "group" not in timed:
        timed = _label(timed)
    rows: list[list[tuple[str, str]]] = []
    single: list[tuple[str, str]] = []
    for group, sel in timed.groupby("group", sort=False):
        passes = list(dict.fromkeys(sel["pass"]))
        if len(passes) == 1:
            single.append((group, passes[0]))
        else:
            for i in range(0, len(passes), NCOLS):
                rows.append([(group, p) for p in passes[i : i + NCOLS]])
    rows += [single[i : i + NCOLS] for i in range(0, len(single), NCOLS)]
    return rows


def write_chart(rows: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Draw ``rows`` (the results files' columns) into ``path``. None, said in the log, without
    matplotlib or without any timed non-eager row."""
    from .report import log

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: skipping the PNG chart (pip install 'fastops[bench]')")
        return None
    timed = rows[rows["speedup_vs_eager"].notna() & (rows["provider"] != EAGER)].copy()
    if timed.empty:
        return None
    timed = _label(timed)
    providers = _provider_order(list(dict.fromkeys(timed["provider"])))
    colours = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(providers)}
    layout = _panels(timed)
    fig, axes = plt.subplots(len(layout), NCOLS, figsize=(6.2 * NCOLS, 4.4 * len(layout)), squeeze=False)
    for axrow, panels in zip(axes, layout):
        for ax in axrow[len(panels) :]:
            ax.set_visible(False)
        for ax, (group, pass_) in zip(axrow, panels):
            sel = timed[(timed["group"] == group) & (timed["pass"] == pass_)]
            table = sel.pivot_table(index="case", columns="provider", values="speedup_vs_eager", sort=False)
            here = [p for p in providers if p in table.columns]
            width = 0.8 / len(here)
            for i, p in enumerate(here):
                xs = [j + (i - (len(here) - 1) / 2) * width for j in range(len(table.index))]
                ratios = table[p].to_numpy()
                bars = ax.bar(xs, ratios - 1.0, width, bottom=1.0, color=colours[p], label=p)
                labels = ["" if math.isnan(r) else f"{r:.2f}" for r in ratios]
                ax.bar_label(bars, labels=labels, fontsize=6, padding=1, rotation=90)
            ax.axhline(1.0, color="black", linewidth=1.0)
            top = max(1.0, float(table.max().max()))
            ax.set_ylim(0, top * 1.25)
            ax.set_xticks(range(len(table.index)))
            ax.set_xticklabels(table.index, rotation=35, ha="right", fontsize=7)
            ax.set_ylabel("speed-up vs torch eager (x)", fontsize=8)
            ax.set_title(f"{group} · {pass_}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[p]) for p in providers]
    head = 0.9 / (4.4 * len(layout))  # ~0.9 inch for the title and the legend under it
    fig.suptitle(f"{title}: time of torch eager / time of provider (1.0 = eager)", y=1 - head / 5, fontsize=12)
    fig.legend(handles, providers, loc="upper center", bbox_to_anchor=(0.5, 1 - head / 2), ncol=len(providers))
    fig.tight_layout(rect=(0, 0, 1, 1 - head))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Redraw the PNG of one results JSON (beside it, or at --out)."""
    from .report import chart_title

    p = argparse.ArgumentParser(prog="python -m bench.chart", description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path, help="a results .json written by python -m bench")
    p.add_argument("--out", type=Path, help="the PNG to write (default: the JSON's path with .png)")
    args = p.parse_args(argv)
    data = json.loads(args.results.read_text())
    frame = pd.DataFrame(data["rows"])
    out = write_chart(frame, args.out or args.results.with_suffix(".png"), title=chart_title(data["environment"]))
    print(out if out is not None else "nothing to draw")
    return 0 if out is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
