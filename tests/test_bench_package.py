"""The benchmark suite's machinery and the package around it: the tolerance rule it shares with
fastops.testing, the op registry, results files, the PNG layout, the refusal to measure without
the native backend, and the build's torch check. Nothing here times anything."""

import ast
import json
import math
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import checks, registry
from bench.__main__ import EXIT_BACKEND_MISSING, main
from bench.chart import _panels, short_shape, write_chart
from bench.context import Context
from bench.report import rows_frame, write_results
from bench.rows import EAGER, ROW_FIELDS, Row, fill_speedups
from bench.timing import Timing
from fastops import _build_check
from fastops.testing import LOW_PRECISION_FLOOR_ULPS, TOLERANCES

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_tolerance_floors_are_fastops_testing_rule():
    for dtype in (torch.float32, torch.float64):
        assert checks.error_floor(dtype) == TOLERANCES[dtype][0]
    for dtype in (torch.float16, torch.bfloat16):
        assert checks.error_floor(dtype) == LOW_PRECISION_FLOOR_ULPS * torch.finfo(dtype).eps
    eps = torch.finfo(torch.bfloat16).eps
    assert checks.allowed_error(torch.bfloat16, 3e-3) == pytest.approx(6e-3 + eps)
    assert checks.allowed_error(torch.bfloat16, math.inf) == pytest.approx(eps)  # no baseline: floor only
    assert not any(hasattr(m, "TOL_FLOOR") for m in (checks, sys.modules["bench.common"]))


def test_error_meter_rejects_a_wrong_result():
    ref = torch.randn(64, 33, dtype=torch.float64)
    assert checks.normalised_error(ref.float(), ref) < checks.allowed_error(torch.float32, 0.0)
    wrong = ref.float().clone()
    wrong[5, 7] += 1e-3 * ref.abs().max().item()
    assert checks.normalised_error(wrong, ref) > checks.allowed_error(torch.float32, 0.0)
    wrong[0, 0] = float("nan")
    assert checks.normalised_error(wrong, ref) == math.inf


def test_quantiles_match_numpy_linear():
    t = Timing.from_samples([5.0, 1.0, 3.0, 2.0, 4.0], "test")
    assert (t.median_ms, t.p20_ms, t.p80_ms, t.samples) == (3.0, 1.8, 4.2, 5)


def test_bench_modules_import_relatively():
    """A bench module runs as bench.* in a checkout and as fastops._bench.* when installed, so it
    must not import the top-level name `bench`."""
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] != "bench", f"{path.name}: from {node.module} import ..."
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "bench" for a in node.names), f"{path.name}: import bench"


def test_registry_is_the_bench_modules():
    files = sorted(p.stem for p in BENCH.glob("bench_*.py"))
    mods = registry.discover()
    assert sorted(m.__name__.rsplit(".", 1)[-1] for m in mods) == files
    assert registry.registered_ops() == [registry.module_name(m) for m in mods]
    assert {"adam", "conv2d", "cross_entropy", "linear_relu", "train_step"} <= set(registry.registered_ops())
    levels = [getattr(m, "LEVEL", "op") for m in mods]
    assert levels == sorted(levels, key=lambda lv: lv == "model")  # model level last


def _rows() -> list[Row]:
    rows = []
    for op, passes in (("cross_entropy", ("fwd", "bwd", "fwd+bwd")), ("adam", ("step",))):
        for shape in ("512x32000", "resnet50 (161 tensors, 25.6M)"):
            for p in passes:
                for provider, ms in ((EAGER, 2.0), ("torch_compile", 1.0), ("fastops_native", 0.5)):
                    rows.append(Row(op, shape, "float32", "cpu", provider, p, median_ms=ms, p20_ms=ms, p80_ms=ms))
                    rows[-1].correct, rows[-1].error = True, 1e-7
    rows.append(Row("cross_entropy", "512x32000", "float32", "cpu", "broken", "fwd", correct=False, note="FAILED"))
    fill_speedups(rows)
    return rows


def test_results_files_round_trip(tmp_path):
    rows = _rows()
    ctx = Context(device="cpu", quick=True, rows=rows)
    paths = write_results(rows, ctx, tmp_path, command="python -m bench --quick")
    assert [p.suffix for p in paths][:2] == [".json", ".csv"]
    data = json.loads(paths[0].read_text())
    assert data["environment"]["command"] == "python -m bench --quick"
    assert data["rows"] == [r.to_dict() for r in rows]
    csv = pd.read_csv(paths[1], comment="#")
    assert list(csv.columns) == ROW_FIELDS and len(csv) == len(rows)
    assert csv["speedup_vs_eager"].dropna().tolist() == rows_frame(rows)["speedup_vs_eager"].dropna().tolist()


def test_chart_one_panel_per_op_and_pass(tmp_path):
    pytest.importorskip("matplotlib")
    frame = rows_frame(_rows())
    timed = frame[frame["speedup_vs_eager"].notna() & (frame["provider"] != EAGER)]
    assert _panels(timed) == [
        [("cross_entropy", "fwd"), ("cross_entropy", "bwd"), ("cross_entropy", "fwd+bwd")],
        [("adam", "step")],
    ]
    assert short_shape("resnet50 (161 tensors, 25.6M)") == "resnet50"
    out = write_chart(frame, tmp_path / "c.png", title="test")
    assert out is not None and out.stat().st_size > 10_000


def test_chart_splits_an_op_with_many_cases_by_dtype():
    """An op with more cases than fit under one panel (conv2d's shapes in two dtypes) gets one panel
    per dtype, so its tick labels never overlap; an op with few cases keeps one."""
    from bench.chart import MAX_CASES

    rows = []
    for dtype in ("float32", "bfloat16"):
        for i in range(MAX_CASES // 2 + 1):
            for provider, ms in ((EAGER, 2.0), ("fastops_native", 1.0)):
                rows.append(Row("conv2d", f"N8 C{i + 1} H8", dtype, "cpu", provider, "fwd", median_ms=ms))
                rows[-1].correct = True
    rows += [r for r in _rows() if r.op == "adam"]
    fill_speedups(rows)
    frame = rows_frame(rows)
    timed = frame[frame["speedup_vs_eager"].notna() & (frame["provider"] != EAGER)]
    assert _panels(timed) == [[("conv2d fp32", "fwd"), ("conv2d bf16", "fwd"), ("adam", "step")]]


def test_runner_refuses_without_the_native_backend(tmp_path, monkeypatch):
    import fastops

    table = fastops.backends()
    table["native"] = {d: (False, "the extension fastops._C is not built") for d in ("cpu", "cuda")}
    monkeypatch.setattr(fastops, "backends", lambda: table)
    assert main(["--quick", "--device", "cpu", "--op", "adam", "--out", str(tmp_path)]) == EXIT_BACKEND_MISSING
    assert not any(tmp_path.iterdir())


def test_fastops_bench_entry_finds_the_suite():
    from fastops import bench as entry

    assert entry._suite().main is main or entry._suite().__name__.endswith("__main__")


def test_build_check_names_both_torch_versions(monkeypatch):
    info = types.ModuleType("fastops._build_info")
    info.TORCH_VERSION, info.CUDA_KERNELS, info.TORCH_CUDA_VERSION = "1.13.0+cu117", False, "11.7"
    monkeypatch.setitem(sys.modules, "fastops._build_info", info)
    why = _build_check.torch_mismatch()
    assert why is not None and "1.13.0+cu117" in why and torch.__version__ in why
    with pytest.raises(ImportError, match="compiled against torch 1.13.0"):
        _build_check.check_torch()
    info.TORCH_VERSION = torch.__version__.split("+")[0] + "+other"
    assert _build_check.torch_mismatch() is None  # same release, another local label
    info.CUDA_KERNELS = True
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "has no CUDA" in _build_check.torch_mismatch()


def test_interleaved_timing_alternates_blocks_and_keeps_failed_checks_untimed():
    """bench_fns_together: each provider checked, the passing ones timed in alternating blocks (one
    block of each per round, the order reversed every other round), a failing check leaves its row
    untimed; the slower callable measures slower (a sleep lasts at least its length)."""
    import time

    from bench.rows import Work

    calls: list[str] = []

    def slow() -> None:
        calls.append("slow")
        time.sleep(0.004)

    def fast() -> None:
        calls.append("fast")

    ctx = Context(device="cpu", quick=True)
    rows = ctx.bench_fns_together(
        op="toy",
        shape="s",
        dtype=torch.float32,
        providers={EAGER: (slow, lambda: 0.0), "fastops_x": (fast, lambda: 0.0), "broken": (fast, lambda: 1.0)},
        work=Work(bytes={"fwd": 1.0}),
    )
    by = {r.provider: r for r in rows}
    assert not by["broken"].correct and by["broken"].median_ms is None and "FAILED check" in by["broken"].note
    assert by[EAGER].median_ms >= 4.0 and by[EAGER].samples >= 5 and "interleaved" in by[EAGER].timer
    assert by["fastops_x"].median_ms < by[EAGER].median_ms and by["fastops_x"].speedup_vs_eager > 1
    runs = [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name]  # runs of one callable
    # Warm-up and calibration give the runs slow, fast; then at least 5 rounds, each one block of each
    # (a round in reversed order merges with the previous round's last block): back-to-back timing
    # would give two more runs, alternation at least five; peak memory's own calls come last.
    assert len(runs) >= 2 + 5 and all(a != b for a, b in zip(runs, runs[1:])), runs


def test_quick_compiles_the_first_case_of_each_op_only():
    """--quick: torch.compile for one case per op, the others recorded as skipped; a full run compiles
    every case (each after a dynamo reset). Nothing is called, so nothing compiles here."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    quick = Context(device="cpu", quick=True)
    assert quick.compiled("a", fn) is not None and quick.compiled("b", fn) is not None
    assert quick.compiled("a", fn, torch.float32) is None
    assert [(s.op, s.provider) for s in quick.skipped] == [("a", "torch_compile")]
    full = Context(device="cpu", quick=False)
    assert all(full.compiled("a", fn) is not None for _ in range(3)) and not full.skipped


def test_cpu_matmul_ceiling_size_stops_at_the_first_slow_size():
    """The CPU matmul ceiling's N doubles from 256 to its largest, stopping at the first N whose one
    torch.mm takes the slow time (a bf16 2048^3 matmul takes a minute on CPUs without bf16 matmul)."""
    from bench.ceilings import _cpu_matmul_size

    assert _cpu_matmul_size(torch.float32, largest=1024, slow_s=math.inf) == 1024
    assert _cpu_matmul_size(torch.float32, largest=1024, slow_s=0.0) == 256
