"""Model level: one training step of a stock model vs the same model after ``fastops.swap``.

Models: torchvision's ``resnet18`` (random weights; 20 convs swapped) when torchvision is
importable, and the digits CNN of :mod:`fastops.demo` (2 convs, a Linear+ReLU head, cross-entropy).
A step is zero_grad, forward, cross-entropy, backward and an Adam step (``torch.optim.Adam`` for
the stock model, ``fastops.optim.Adam`` after the swap when this build has it).

Work: the step's FLOPs as counted by ``torch.utils.flop_counter.FlopCounterMode`` on the stock
model (forward + backward; the optimizer's elementwise work is not counted), so TFLOP/s is
comparable between the two providers. The check before timing: the logits of each model against
the float64 copy of the stock model, normalised error.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fastops
from bench.common import EAGER, Context, Row, Work, normalised_error
from fastops import demo

OP = "train_step"
LEVEL = "model"
SWAPPED = "fastops_swap"


def _cases(ctx: Context) -> list[tuple[str, object, tuple[int, ...]]]:
    cases: list[tuple[str, object, tuple[int, ...]]] = []
    try:
        import torchvision

        side = 32 if ctx.quick else 64
        batch = 2 if ctx.quick else (32 if ctx.device == "cuda" else 8)
        cases.append(("resnet18", lambda: torchvision.models.resnet18(num_classes=10), (batch, 3, side, side)))
    except ImportError as exc:
        ctx.skip(OP, "*", f"torchvision not importable ({exc})", "resnet18")
    cases.append(("digits_cnn", lambda: demo.make_model(0), (64, 1, 8, 8)))
    return cases


def _step_fn(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, x, y):  # noqa: ANN202
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()

    return step


def run(ctx: Context) -> list[Row]:
    """Time a training step of each model, stock and swapped."""
    rows: list[Row] = []
    for name, make, shape in _cases(ctx):
        torch.manual_seed(0)
        stock = make().to(ctx.device)
        ref64 = copy.deepcopy(stock).double()
        swapped = copy.deepcopy(stock)
        holder = nn.ModuleDict({"model": swapped, "loss": nn.CrossEntropyLoss()})
        fastops.swap(holder)
        x = torch.randn(shape, device=ctx.device)
        y = torch.randint(0, 10, (shape[0],), device=ctx.device)
        with torch.no_grad():
            ref = ref64(x.double())
        with FlopCounterMode(display=False) as counter:
            nn.CrossEntropyLoss()(stock(x), y).backward()
        stock.zero_grad(set_to_none=True)
        work = Work(flops={"fwd+bwd": float(counter.get_total_flops())})
        adam = getattr(getattr(fastops, "optim", None), "Adam", torch.optim.Adam)
        for provider, model, criterion, opt_cls in [
            (EAGER, stock, nn.CrossEntropyLoss(), torch.optim.Adam),
            (SWAPPED, swapped, holder["loss"], adam),
        ]:
            optimizer = opt_cls(model.parameters(), lr=1e-4)

            def check(model: nn.Module = model, x: torch.Tensor = x, ref: torch.Tensor = ref) -> float:
                with torch.no_grad():
                    return normalised_error(model(x), ref)

            rows.append(
                ctx.bench_fn(
                    op=OP,
                    shape=f"{name} {tuple(shape)}",
                    dtype=torch.float32,
                    provider=provider,
                    fn=_step_fn(model, criterion, optimizer, x, y),
                    check=check,
                    work=work,
                    pass_="fwd+bwd",
                )
            )
    return rows
