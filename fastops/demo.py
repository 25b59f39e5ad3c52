"""Training demo on a real data set: scikit-learn's handwritten digits (1,797 8x8 images, shipped
inside the package, no download).

A small CNN (two convs, a Linear+ReLU head, cross-entropy) is trained twice from the same seed,
on the same batches: once with stock torch modules and ``torch.optim.Adam``, once after
``fastops.swap`` with ``fastops.optim.Adam`` (when this build has it). Both must learn the task
(>= 95% test accuracy), their loss curves must agree closely, and the demo prints the step time of
each.

    python -m fastops.demo [--epochs 12] [--device cpu|cuda] [--backend auto]
"""

from __future__ import annotations

import argparse
import time
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
) -> History:
    """Train the CNN on digits; ``swapped`` runs it through fastops modules and optimizer."""
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
    for _ in range(epochs):
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
    model.eval()
    with torch.no_grad():
        hist.test_accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    times.sort()
    hist.step_ms = 1e3 * times[len(times) // 2]
    return hist


def compare(epochs: int = 12, device: str = "cpu", backend: str = "auto", seed: int = 0) -> tuple[History, History]:
    """Train stock and swapped from the same seed; returns (stock, swapped)."""
    stock = train(False, epochs=epochs, device=device, backend=backend, seed=seed)
    fast = train(True, epochs=epochs, device=device, backend=backend, seed=seed)
    return stock, fast


def main() -> None:
    """CLI: train both variants and print accuracy, loss-curve agreement and step times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    stock, fast = compare(args.epochs, args.device, args.backend)
    print(fast.report)
    gap = max(abs(a - b) for a, b in zip(stock.losses, fast.losses))
    print(f"device {args.device}, {len(stock.losses)} steps, threads {torch.get_num_threads()}")
    print(f"stock  torch : test accuracy {stock.test_accuracy:.3f}, median step {stock.step_ms:.2f} ms")
    print(f"fastops swap : test accuracy {fast.test_accuracy:.3f}, median step {fast.step_ms:.2f} ms")
    print(f"largest per-step loss difference: {gap:.2e}; final losses {stock.losses[-1]:.4f} / {fast.losses[-1]:.4f}")


if __name__ == "__main__":
    main()
