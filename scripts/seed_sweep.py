"""Run the float32 model-level checks over many input seeds in one process; print pass/fail counts.

The checks are exactly the ones CI runs, imported from where they live:

- ``resnet18``, ``vgg11``: the float32 part of ``tests/test_swap.py::test_model_matches_after_swap``
  (weights from seed 0, eval mode, a fresh ``(2, 3, 32, 32)`` input per seed);
- ``bench_resnet18``, ``bench_digits``: the check before timing of ``python -m bench --quick
  --op train_step`` (``bench.bench_model.model_check``), with weights, input and labels drawn from
  the seed instead of 0.

Each is :func:`fastops.testing.compare_models` (the measurement behind
:func:`fastops.testing.assert_model_close`). Per case it prints the passes, the worst
error/allowed ratio and its seed, the worst relative errors of the model and of stock torch, the
largest ``error - 2 x torch error`` (the floor that rule would need: compare with
``MODEL_REL_FLOOR``), and how many seeds flipped a ReLU / max-pool decision against float64 with
the largest distance from the tie (compare with ``DECISION_MARGIN``).

Usage::

    .venv/bin/python scripts/seed_sweep.py                 # 200 seeds, every case
    .venv/bin/python scripts/seed_sweep.py --seeds 20 --cases vgg11 bench_digits -v
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from fastops.testing import DECISION_MARGIN, MODEL_REL_FLOOR, ModelComparison, compare_models  # noqa: E402

CASES = ("resnet18", "vgg11", "bench_resnet18", "bench_digits")


@dataclass
class Tally:
    """What one case did over the seeds."""

    runs: int = 0
    passes: int = 0
    failed_seeds: list[int] = field(default_factory=list)
    worst_ratio: float = 0.0
    worst_seed: int = -1
    worst_tensor: str = ""
    max_error: float = 0.0
    max_torch_error: float = 0.0
    floor_needed: float = -math.inf
    flip_seeds: int = 0
    torch_flip_seeds: int = 0
    max_margin: float = 0.0
    max_torch_margin: float = 0.0
    seconds: float = 0.0

    def add(self, seed: int, r: ModelComparison, seconds: float) -> None:
        """Fold one seed's comparison in."""
        self.runs += 1
        self.seconds += seconds
        if r.failures():
            self.failed_seeds.append(seed)
        else:
            self.passes += 1
        if r.worst_ratio > self.worst_ratio:
            self.worst_ratio, self.worst_seed, self.worst_tensor = r.worst_ratio, seed, r.worst
        self.max_error = max(self.max_error, r.error)
        self.max_torch_error = max(self.max_torch_error, r.torch_error)
        self.floor_needed = max(self.floor_needed, *(e - 2 * r.torch_errors[k] for k, e in r.errors.items()))
        self.flip_seeds += r.flips > 0
        self.torch_flip_seeds += r.torch_flips > 0
        self.max_margin = max(self.max_margin, r.worst_margin)
        self.max_torch_margin = max(self.max_torch_margin, r.torch_worst_margin)


def _case(name: str) -> Callable[[int], ModelComparison]:
    """seed -> the comparison of case ``name``."""
    if name in ("resnet18", "vgg11"):
        from test_swap import SWAP_CASES, stock_and_swapped

        stock, swapped = stock_and_swapped(SWAP_CASES[name][0])

        def test_case(seed: int) -> ModelComparison:
            x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
            return compare_models(swapped, stock, x)

        return test_case

    from bench.bench_model import build_case, cases, model_check

    wanted = name.removeprefix("bench_")
    found = [(make, shape) for n, make, shape in cases(quick=True, device="cpu") if n.startswith(wanted)]
    if not found:
        raise SystemExit(f"bench case {name} is not available here (torchvision missing?)")
    make, shape = found[0]

    def bench_case(seed: int) -> ModelComparison:
        return model_check(*build_case(make, shape, "cpu", seed))

    return bench_case


def main(argv: list[str] | None = None) -> int:
    """Sweep, print one summary line per case; exit status 1 if any seed failed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=200, help="how many seeds (default 200)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("-v", "--verbose", action="store_true", help="one line per seed and case")
    args = p.parse_args(argv)

    print(
        f"seeds {args.start}..{args.start + args.seeds - 1}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; floor {MODEL_REL_FLOOR[torch.float32]:.0e}, "
        f"decision margin {DECISION_MARGIN:.0e}",
        flush=True,
    )
    runners = {name: _case(name) for name in args.cases}
    tallies = {name: Tally() for name in args.cases}
    start = time.perf_counter()
    for i, seed in enumerate(range(args.start, args.start + args.seeds)):
        for name, run in runners.items():
            t0 = time.perf_counter()
            r = run(seed)
            tallies[name].add(seed, r, time.perf_counter() - t0)
            if args.verbose or r.failures():
                print(
                    f"  {name} seed {seed}: ratio {r.worst_ratio:.3f} ({r.worst}) error {r.error:.2e} "
                    f"torch {r.torch_error:.2e} flips {r.flips}/{r.torch_flips} margin {r.worst_margin:.1e}"
                    + "".join(f"\n    FAIL {f}" for f in r.failures()),
                    flush=True,
                )
        if (i + 1) % 10 == 0:
            print(f"[{i + 1}/{args.seeds} seeds, {time.perf_counter() - start:.0f} s]", flush=True)

    print(
        f"\n{'case':<15} {'pass':>9} {'worst ratio':>11} {'(seed, tensor)':<36} {'max err':>8} {'torch':>8}"
        f" {'floor needed':>12} {'flip seeds':>10} {'max margin':>10} {'s/seed':>6}"
    )
    total_runs = total_pass = 0
    for name, t in tallies.items():
        total_runs, total_pass = total_runs + t.runs, total_pass + t.passes
        print(
            f"{name:<15} {t.passes:>4}/{t.runs:<4} {t.worst_ratio:>11.3f} {f'({t.worst_seed}, {t.worst_tensor})':<36}"
            f" {t.max_error:>8.1e} {t.max_torch_error:>8.1e} {t.floor_needed:>12.1e}"
            f" {f'{t.flip_seeds}/{t.torch_flip_seeds}':>10} {max(t.max_margin, t.max_torch_margin):>10.1e}"
            f" {t.seconds / max(t.runs, 1):>6.2f}"
        )
        if t.failed_seeds:
            print(f"  failed seeds: {t.failed_seeds}")
    worst = max(tallies.values(), key=lambda t: t.worst_ratio)
    print(
        f"\nTOTAL {total_pass}/{total_runs} passed ({total_runs - total_pass} failed); worst ratio "
        f"{worst.worst_ratio:.3f}; {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return 0 if total_pass == total_runs else 1


if __name__ == "__main__":
    sys.exit(main())
