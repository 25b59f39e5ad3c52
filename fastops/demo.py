"""Training demo on a real data set: scikit-learn's handwritten digits (1,797 8x8 images, shipped
inside the package, no download).

A small CNN (two convs, a Linear+ReLU head, cross-entropy) is trained twice from the same seed,
on the same batches: once with stock torch modules and ``torch.optim.Adam``, once after
``fastops.swap`` with ``fastops.optim.Adam`` (when this build has it). Both must learn the task
(>= 95% test accuracy), their loss curves must agree closely, and the demo prints the step time of
each: a progress bar over the epochs of each run, then a summary table.

    python -m fastops.demo [--epochs 12] [--device cpu|cuda] [--backend auto]      # or: fastops-demo

Needs scikit-learn (the data) and rich (the progress bar and table): ``pip install 'fastops[demo]'``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import fastops


def load_digits_split(
    device: str = "cpu", seed: int = 0, test_fraction: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train (n, 1, 8, 8) float32 in [0, 1], y_train (n,) int64, x_test, y_test), split by seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return x[train].to(device), y[train].to(device), x[test].to(device), y[test].to(device)


def make_model(seed: int = 0, device: str = "cpu") -> nn.Module:
    """A small CNN for (n, 1, 8, 8) digits -> (n, 10) logits, built from stock torch modules."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ).to(device)


@dataclass
class History:
    """One training run: per-step losses, final test accuracy, median step time."""

    losses: list[float] = field(default_factory=list)
    test_accuracy: float = 0.0
    step_ms: float = 0.0
    report: str = ""


def train(
    swapped: bool,
    *,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "cpu",
    backend: str = "auto",
    on_epoch: Callable[[int, float], None] | None = None,
) -> History:
    """Train the CNN on digits; ``swapped`` runs it through fastops modules and optimizer.

    ``on_epoch(epoch, last_loss)`` is called after each epoch (the CLI's progress bar)."""
    x_train, y_train, x_test, y_test = load_digits_split(device, seed)
    model = make_model(seed, device)
    criterion: nn.Module = nn.CrossEntropyLoss()
    hist = History()
    if swapped:
        holder = nn.ModuleDict({"model": model, "loss": criterion})
        hist.report = str(fastops.swap(holder, backend=backend))
        criterion = holder["loss"]
        optim_cls = getattr(getattr(fastops, "optim", None), "Adam", torch.optim.Adam)
        optimizer = optim_cls(model.parameters(), lr=lr)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=False)
    order = torch.Generator().manual_seed(seed + 1)
    times = []
    for epoch in range(epochs):
        perm = torch.randperm(len(y_train), generator=order).to(device)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            hist.losses.append(loss.item())
        if on_epoch is not None:
            on_epoch(epoch, hist.losses[-1])
    model.eval()
    with torch.no_grad():
        hist.test_accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    times.sort()
    hist.step_ms = 1e3 * times[len(times) // 2]
    return hist


def compare(
    epochs: int = 12,
    device: str = "cpu",
    backend: str = "auto",
    seed: int = 0,
    on_epoch: Callable[[str, int, float], None] | None = None,
) -> tuple[History, History]:
    """Train stock and swapped from the same seed; returns (stock, swapped).

    ``on_epoch(run, epoch, last_loss)`` with run "stock" or "swapped", after each epoch."""
    hists = []
    for run, swapped in (("stock", False), ("swapped", True)):
        cb = None if on_epoch is None else (lambda e, loss, r=run: on_epoch(r, e, loss))
        hists.append(train(swapped, epochs=epochs, device=device, backend=backend, seed=seed, on_epoch=cb))
    return hists[0], hists[1]


def main(argv: list[str] | None = None) -> int:
    """CLI: train both variants with a progress bar, then print the swap report and a summary table
    (accuracy, step time, loss-curve agreement). Exit status 1 if either run misses 95% accuracy."""
    parser = argparse.ArgumentParser(prog="python -m fastops.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)
    try:
        import sklearn  # noqa: F401
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table
    except ModuleNotFoundError as exc:
        print(f"the demo needs {exc.name!r}: pip install 'fastops[demo]'", file=sys.stderr)
        return 2

    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"))
    with Progress(*columns, TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=console) as bar:
        tasks = {r: bar.add_task(f"{r:8s}", total=args.epochs, loss="-") for r in ("stock", "swapped")}

        def on_epoch(run: str, epoch: int, loss: float) -> None:
            bar.update(tasks[run], completed=epoch + 1, loss=f"{loss:.4f}")

        stock, fast = compare(args.epochs, args.device, args.backend, on_epoch=on_epoch)
    console.print(fast.report, markup=False)
    gap = max(abs(a - b) for a, b in zip(stock.losses, fast.losses))
    table = Table(
        title=f"digits CNN, {args.device}, {len(stock.losses)} steps, {torch.get_num_threads()} threads",
        caption=f"largest per-step loss difference between the runs: {gap:.2e}",
    )
    table.add_column("run")
    for name in ("test accuracy", "median step ms", "final loss"):
        table.add_column(name, justify="right")
    for name, h in (("stock torch", stock), ("fastops.swap", fast)):
        table.add_row(name, f"{h.test_accuracy:.3f}", f"{h.step_ms:.2f}", f"{h.losses[-1]:.4f}")
    console.print(table)
    return 0 if min(stock.test_accuracy, fast.test_accuracy) >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
