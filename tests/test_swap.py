"""fastops.swap on models nobody here wrote (torchvision) and on hand-built trees; the digits demo."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastops
from fastops.testing import assert_close_to_reference

torchvision = pytest.importorskip("torchvision", reason="torchvision matching this torch is not installed")


def _forward_backward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = model(x)
    grads = torch.autograd.grad(out.square().mean(), [p for p in model.parameters()])
    return out.detach(), {name: g for (name, _), g in zip(model.named_parameters(), grads)}


def _check_model_after_swap(make, x32: torch.Tensor, expected_swaps: int) -> None:
    """Swapped vs stock: float64 end to end within fp64 tolerance, and float32 within 2x torch's
    own float32 error against the float64 model (the low-precision rule applied to fp32)."""
    torch.manual_seed(0)
    stock = make().eval()
    ref64 = copy.deepcopy(stock).double()
    swapped64 = copy.deepcopy(ref64)
    report = fastops.swap(swapped64)
    assert len(report.replaced) == expected_swaps, str(report)
    out_ref, g_ref = _forward_backward(ref64, x32.double())
    out_sw, g_sw = _forward_backward(swapped64, x32.double())
    assert_close_to_reference(out_sw, out_ref, what="float64 output")
    for name in g_ref:
        assert_close_to_reference(g_sw[name], g_ref[name], what=f"float64 grad {name}")

    swapped32 = copy.deepcopy(stock)
    fastops.swap(swapped32)
    out_st, g_st = _forward_backward(stock, x32)
    out_32, g_32 = _forward_backward(swapped32, x32)
    # float32 is held to the 2x-torch rule: the network amplifies rounding far past a per-op tolerance.
    for got, theirs, ref, what in [(out_32, out_st, out_ref, "output")] + [
        (g_32[n], g_st[n], g_ref[n], f"grad {n}") for n in g_ref
    ]:
        err, torch_err = (got.double() - ref).abs().max().item(), (theirs.double() - ref).abs().max().item()
        floor = 8 * torch.finfo(torch.float32).eps * max(1.0, ref.abs().max().item())
        assert err <= 2 * torch_err + floor, f"float32 {what}: {err:.3e} vs torch {torch_err:.3e}"


def test_resnet18_matches_after_swap():
    x = torch.randn(2, 3, 32, 32)
    _check_model_after_swap(lambda: torchvision.models.resnet18(num_classes=10), x, expected_swaps=20)


def test_vgg11_linear_relu_head_matches_after_swap():
    def make():
        m = torchvision.models.vgg11(num_classes=10)
        m.avgpool = nn.AdaptiveAvgPool2d((1, 1))  # small inputs: 32x32 -> 1x1 after the 5 pools
        m.classifier[0] = nn.Linear(512, 64)
        m.classifier[3] = nn.Linear(64, 64)
        m.classifier[6] = nn.Linear(64, 10)
        return m

    # 8 convs + 2 Linear+ReLU pairs in the classifier (the last Linear has no ReLU).
    _check_model_after_swap(make, torch.randn(2, 3, 32, 32), expected_swaps=10)


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 8),
        nn.ReLU(inplace=True),
        nn.Linear(8, 8),
        nn.Sequential(nn.Linear(8, 3), nn.ReLU()),
    )


def test_swap_keeps_parameters_state_dict_hooks_and_mode():
    model = _toy().train()
    params_before = {name: p for name, p in model.named_parameters()}
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    model[0].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    report = fastops.swap(model)
    assert isinstance(model[0], fastops.nn.Conv2d)
    assert isinstance(model[3], fastops.nn.LinearReLU) and isinstance(model[4], nn.Identity)
    assert isinstance(model[6][0], fastops.nn.LinearReLU)
    assert type(model[5]) is nn.Linear  # not followed by a ReLU
    assert any(name == "5" and "not directly followed" in why for name, _, why in report.skipped), str(report)
    assert {name: p for name, p in model.named_parameters()} == params_before  # the same objects
    assert model.state_dict().keys() == state_before.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k])
    assert model.training and model[0].training
    x = torch.randn(2, 3, 5, 5)
    model(x).sum().backward()
    opt.step()  # the optimizer built before the swap still updates the model's parameters
    assert not torch.equal(model[0].weight, state_before["0.weight"])
    assert seen == [torch.Size([2, 4, 5, 5])]  # the hook on the swapped conv still runs
    # checkpoints load both ways
    fresh = _toy()
    fresh.load_state_dict(model.state_dict())
    model.load_state_dict(fresh.state_dict())


def test_swap_include_exclude_and_hooked_linear():
    model = _toy()
    report = fastops.swap(model, exclude=[nn.Conv2d, "6.*"])
    assert type(model[0]) is nn.Conv2d and type(model[6][0]) is nn.Linear
    assert isinstance(model[3], fastops.nn.LinearReLU)
    assert [name for name, _, _ in report.replaced] == ["3"]

    model = _toy()
    model[6][0].register_forward_hook(lambda *a: None)
    report = fastops.swap(model, include=["6.*"])
    assert type(model[6][0]) is nn.Linear and type(model[0]) is nn.Conv2d
    assert any("hook" in why for _, _, why in report.skipped), str(report)


def test_swap_leaves_subclasses_and_swaps_loss():
    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    holder = nn.ModuleDict({"conv": MyConv(3, 3, 1), "loss": nn.CrossEntropyLoss(label_smoothing=0.1)})
    report = fastops.swap(holder, backend="torch")
    assert type(holder["conv"]) is MyConv
    assert isinstance(holder["loss"], fastops.nn.CrossEntropyLoss) and holder["loss"].backend == "torch"
    assert holder["loss"].label_smoothing == 0.1
    assert "CrossEntropyLoss" in str(report)


def test_digits_demo_learns_and_matches_stock():
    pytest.importorskip("sklearn", reason="scikit-learn (for its bundled digits data) is not installed")
    from fastops import demo

    stock, fast = demo.compare(epochs=6)
    assert stock.test_accuracy >= 0.95 and fast.test_accuracy >= 0.95, (stock.test_accuracy, fast.test_accuracy)
    # Same seed, same batches: the curves agree to float32 rounding growing over the run.
    gaps = [abs(a - b) for a, b in zip(stock.losses, fast.losses)]
    assert len(stock.losses) == len(fast.losses) and max(gaps[:20]) < 1e-4 and max(gaps) < 2e-2, max(gaps)
    assert "replaced" in fast.report and fast.step_ms > 0
