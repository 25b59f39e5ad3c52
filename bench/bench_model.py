"""Model level: one training step of a stock model vs the same model after ``fastops.swap``.

Models: torchvision's ``resnet18`` (random weights; 20 convs swapped), ``mobilenet_v3_small``
(depthwise 3x3 / 5x5, squeeze-excite 1x1s; 96x96 on CPU) and ``convnext_tiny`` (depthwise 7x7,
LayerNorm, GELU) when torchvision is importable (the last two not in ``--quick``), the digits
CNN of :mod:`fastops.demo` (2 convs, a Linear+ReLU head, cross-entropy) and, not in ``--quick``, an
image MLP (3072 -> 1024 -> 1024 -> 10, two Linear+ReLU pairs, batch 64). A step is zero_grad,
forward, cross-entropy, backward and an AdamW step: torch's fused AdamW for the stock model (the
best stock choice), ``fastops.optim.AdamW`` after the swap. Under ``backend="auto"`` the swapped
CPU convs run the native kernel or torch's conv2d per shape class (the swap report says which).

Work: the step's FLOPs as counted by ``torch.utils.flop_counter.FlopCounterMode`` on the stock
model (forward + backward; the optimizer's elementwise work is not counted), so TFLOP/s is
comparable between the two providers. The two steps are timed together, in alternating blocks on
CPU (:meth:`bench.context.Context.bench_fns_together`): the ratio is what matters, and a shared
machine drifts between two back-to-back timings.

The check before timing (:func:`model_check`) is the model-level rule of
:func:`fastops.testing.assert_model_close`: eval-mode copies of both models run forward and the
cross-entropy backward; every tensor (logits, each parameter gradient) gets its relative Frobenius
error against float64 taking that model's own ReLU / max-pool decisions. The row's error is the
worst of them: stock torch's for ``torch_eager``; for ``fastops_swap`` the check raises unless each
tensor is within 2x torch's + the floor, which implies the row's usual verdict. Eval mode because
train-mode BatchNorm at the quick shape (batch 2, layer4 at 1x1) normalises over two values, which
amplifies rounding so far (stock torch's own gradients up to 1.5e-1 off float64) that no rule can
tell a defect; the swapped modules compute the same in both modes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fastops
from fastops import demo
from fastops.testing import ModelComparison, compare_models

from .common import EAGER, Context, Row, Work

OP = "train_step"
LEVEL = "model"
SWAPPED = "fastops_swap"


def cases(quick: bool, device: str) -> list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]]:
    """(name, model maker, input shape) per model; resnet18 only when torchvision imports."""
    out: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = []
    try:
        import torchvision

        side = 32 if quick else 64
        batch = 2 if quick else (32 if device == "cuda" else 8)
        out.append(("resnet18", lambda: torchvision.models.resnet18(num_classes=10), (batch, 3, side, side)))
        if not quick:  # depthwise-heavy models: the depthwise kernel and auto's per-class routing
            mobile = 96 if device == "cpu" else 224
            out.append(
                (
                    "mobilenet_v3_small",
                    lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
                    (batch, 3, mobile, mobile),
                )
            )
            convnext = torchvision.models.convnext_tiny
            out.append(("convnext_tiny", lambda: convnext(num_classes=10), (batch, 3, side, side)))
    except ImportError:
        pass  # run() reports the skip
    out.append(("digits_cnn", lambda: demo.make_model(0), (64, 1, 8, 8)))
    if not quick:  # linear + ReLU at model level: the first layer's x is data (its product is skipped)
        out.append(("mlp", _mlp, (64, 3, 32, 32)))
    return out


def _mlp() -> nn.Module:
    """An image MLP: 3072 -> 1024 -> 1024 -> 10, two Linear + ReLU pairs (swapped to LinearReLU)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 32 * 32, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )


def build_case(
    make: Callable[[], nn.Module], shape: tuple[int, ...], device: str, seed: int = 0
) -> tuple[nn.Module, nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """(stock model, swapped deep copy, swapped cross-entropy loss, input x, int64 labels y), drawn
    from ``seed`` (the weights too, unless ``make`` seeds itself); the models are in train mode, as
    ``make`` returns them."""
    torch.manual_seed(seed)
    stock = make().to(device)
    swapped = copy.deepcopy(stock)
    holder = nn.ModuleDict({"model": swapped, "loss": nn.CrossEntropyLoss()})
    fastops.swap(holder)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device)
    y = torch.randint(0, 10, (shape[0],), generator=g).to(device)
    return stock, swapped, holder["loss"], x, y


def model_check(
    stock: nn.Module, swapped: nn.Module, loss: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> ModelComparison:
    """The model-level comparison (no verdict) of eval-mode copies of ``swapped`` (with its
    ``loss``) and ``stock`` (with ``F.cross_entropy``) on ``(x, y)``; the models are not touched."""
    return compare_models(
        copy.deepcopy(swapped).eval(),
        copy.deepcopy(stock).eval(),
        x,
        loss=lambda out: loss(out, y),
        stock_loss=lambda out: F.cross_entropy(out, y),
    )


class _Check:
    """One case's check: :func:`model_check` on copies frozen at construction (the FLOP count and
    the eager timing then train ``stock``), computed by the first provider's check and judged per
    provider."""

    def __init__(
        self, name: str, stock: nn.Module, swapped: nn.Module, loss: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> None:
        self.name, self.loss, self.x, self.y = name, loss, x, y
        self.stock, self.swapped = copy.deepcopy(stock), copy.deepcopy(swapped)
        self.result: ModelComparison | None = None

    def _compare(self) -> ModelComparison:
        if self.result is None:  # a raise is retried by the next provider's check
            self.result = model_check(self.stock, self.swapped, self.loss, self.x, self.y)
        return self.result

    def eager(self) -> float:
        """Stock torch's worst per-tensor relative error: the baseline of the swapped row."""
        return self._compare().torch_error

    def swapped_model(self) -> float:
        """The swapped model's worst per-tensor relative error; AssertionError if it breaks the rule."""
        return self._compare().assert_ok(f"{self.name} after fastops.swap").error


def _stock_adamw(params, lr: float) -> torch.optim.Optimizer:  # noqa: ANN001
    """The best stock optimizer: torch's fused AdamW (CPU and CUDA kernels since torch 2.4)."""
    return torch.optim.AdamW(params, lr=lr, fused=True)


def _step_fn(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, x, y):  # noqa: ANN202
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()

    return step


def run(ctx: Context) -> list[Row]:
    """Time a training step of each model, stock and swapped."""
    rows: list[Row] = []
    try:
        import torchvision  # noqa: F401
    except ImportError as exc:
        ctx.skip(OP, "*", f"torchvision not importable ({exc})", "resnet18")
    for name, make, shape in cases(ctx.quick, ctx.device):
        stock, swapped, loss, x, y = build_case(make, shape, ctx.device)
        check = _Check(name, stock, swapped, loss, x, y)
        with FlopCounterMode(display=False) as counter:
            nn.CrossEntropyLoss()(stock(x), y).backward()
        stock.zero_grad(set_to_none=True)
        work = Work(flops={"fwd+bwd": float(counter.get_total_flops())})
        providers = {
            EAGER: (_step_fn(stock, nn.CrossEntropyLoss(), _stock_adamw(stock.parameters(), 1e-4), x, y), check.eager),
            SWAPPED: (
                _step_fn(swapped, loss, fastops.optim.AdamW(swapped.parameters(), lr=1e-4), x, y),
                check.swapped_model,
            ),
        }
        rows += ctx.bench_fns_together(
            op=OP, shape=f"{name} {tuple(shape)}", dtype=torch.float32, providers=providers, work=work, pass_="fwd+bwd"
        )
    return rows
