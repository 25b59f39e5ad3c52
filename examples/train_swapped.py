"""Swap a torchvision model to fastops, train it a few steps next to the stock model, compare.

Run: ``python examples/train_swapped.py [--steps N] [--model resnet18|mobilenet_v3_small|vgg11]``.
Needs torchvision. CI runs it (tests/test_readme.py) with the default tiny settings.

What it shows: ``fastops.swap`` changes module classes in place (parameters, state_dict and the
optimizer stay), ``fastops.optim.AdamW`` takes torch's constructor, and the swapped model computes
the stock model's loss from the same weights and batch.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torchvision

import fastops


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: torch.nn.Module, steps: int) -> list[float]:
    """``steps`` AdamW steps on fixed random batches (seeded); returns the losses."""
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 3, 64, 64, generator=gen)  # (N, C, H, W)
        y = torch.randint(0, 10, (8,), generator=gen)  # (N,) class indices
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    """Parse the arguments, train stock and swapped copies, print the report and the losses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()

    torch.manual_seed(0)
    stock = getattr(torchvision.models, args.model)(num_classes=10)
    fast = copy.deepcopy(stock)
    report = fastops.swap(fast)
    print(report)

    runs = {}
    for name, model, opt_cls, loss_fn in (
        ("stock", stock, torch.optim.AdamW, torch.nn.CrossEntropyLoss()),
        ("fastops", fast, fastops.optim.AdamW, fastops.nn.CrossEntropyLoss()),
    ):
        opt = opt_cls(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        runs[name] = train(model, opt, loss_fn, args.steps)
        print(f"{name:8s} {args.steps} steps in {time.perf_counter() - start:.2f} s, losses {runs[name]}")

    # Same weights, same batch: the first loss agrees to float32 rounding. Later losses drift apart
    # slowly, as they would between any two correct float32 implementations: Adam's first updates are
    # about lr * sign(grad), so a gradient entry that rounds to the other side of zero moves its weight
    # by 2 lr. tests/test_swap.py checks outputs and every gradient at the model level.
    first_stock, first_fast = runs["stock"][0], runs["fastops"][0]
    assert abs(first_stock - first_fast) <= 1e-5 * abs(first_stock), (first_stock, first_fast)
    print(f"first loss agrees: {first_stock:.6f} vs {first_fast:.6f}")


if __name__ == "__main__":
    main()
