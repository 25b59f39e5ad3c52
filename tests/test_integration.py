"""fastops ops as torch ops in a training script (issue 11): autograd registered with the ops (raw
calls, double backward, gradient penalties), torch.func, autocast, export in train mode.

Every op x backend that supports float64 is checked with ``gradgradcheck``; the CUDA cases are
marked gpu. Distributed training (DDP, FSDP2) is in tests/test_distributed.py.
"""

from __future__ import annotations

import copy
import io
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastops
import fastops.functional as FF
from fastops import _backend, reference
from fastops.ops import namespace
from fastops.testing import assert_close_to_reference, device_backend_params

KERNELS = device_backend_params(("native", "triton"), ("native", "triton"))
ALL = device_backend_params()


def _f64(*shape: int, device: str, requires_grad: bool = True) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=requires_grad)


# The three differentiable ops as functions of (backend, *float64 inputs), where backend TORCH is
# PyTorch's own functions (F.linear, F.conv2d, F.cross_entropy), the ground truth here; the inputs are
# made once per call of _cases, so a backend's result and torch's are taken at the same point.
TORCH = "F"
CASE_NAMES = ["linear_relu", "conv2d", "conv2d_relu_grouped", "cross_entropy_index", "cross_entropy_probs"]


def _cases(device: str) -> list[tuple[str, object, tuple[torch.Tensor, ...]]]:
    t = torch.randint(0, 5, (4,), device=device)
    w_cls = torch.rand(5, dtype=torch.float64, device=device) + 0.5
    probs = torch.softmax(torch.randn(4, 5, dtype=torch.float64, device=device), 1)
    return [
        (
            "linear_relu",
            lambda backend, x, w, b: (
                torch.relu(F.linear(x, w, b)) if backend == TORCH else FF.linear_relu(x, w, b, backend=backend)
            ),
            (_f64(3, 4, device=device), _f64(5, 4, device=device), _f64(5, device=device)),
        ),
        (
            "conv2d",
            lambda backend, x, w, b: (F.conv2d if backend == TORCH else partial(FF.conv2d, backend=backend))(
                x, w, b, stride=2, padding=1
            ),
            (_f64(1, 2, 5, 5, device=device), _f64(3, 2, 3, 3, device=device), _f64(3, device=device)),
        ),
        (
            "conv2d_relu_grouped",
            lambda backend, x, w: (
                torch.relu(F.conv2d(x, w, groups=2, padding=1))
                if backend == TORCH
                else FF.conv2d(x, w, groups=2, padding=1, activation="relu", backend=backend)
            ),
            (_f64(1, 4, 4, 4, device=device), _f64(4, 2, 3, 3, device=device)),
        ),
        (
            "cross_entropy_index",
            lambda backend, x: (F.cross_entropy if backend == TORCH else partial(FF.cross_entropy, backend=backend))(
                x, t, weight=w_cls, label_smoothing=0.1
            ),
            (_f64(4, 5, device=device),),
        ),
        (
            "cross_entropy_probs",
            lambda backend, x: (F.cross_entropy if backend == TORCH else partial(FF.cross_entropy, backend=backend))(
                x, probs, reduction="sum"
            ),
            (_f64(4, 5, device=device),),
        ),
    ]


def _bind(fn, backend: str):  # noqa: ANN202
    return lambda *a: fn(backend, *a)


# ---- autograd registered with the ops -----------------------------------------------------------


@pytest.mark.parametrize("device,backend", KERNELS)
def test_raw_ops_are_differentiable(device, backend):
    """torch.ops.<ns>.<op>_fwd called directly records a graph (no "autograd kernel was not
    registered" warning) and backpropagates torch's gradients."""
    ns = namespace(backend)
    x, w, b = _f64(3, 4, device=device), _f64(5, 4, device=device), _f64(5, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ns.linear_relu_fwd(x, w, b)
        got = torch.autograd.grad(out.sum(), [x, w, b])
    want = torch.autograd.grad(torch.relu(F.linear(x, w, b)).sum(), [x, w, b])
    for a, e in zip(got, want):
        assert_close_to_reference(a, e)
    logits, t = _f64(4, 6, device=device), torch.randint(0, 6, (4,), device=device)
    loss, stats = ns.cross_entropy_fwd(logits, t, None, -100, 0.0)
    assert loss.requires_grad and not stats.requires_grad
    (g,) = torch.autograd.grad(loss.sum(), logits)
    (e,) = torch.autograd.grad(F.cross_entropy(logits, t, reduction="sum"), logits)
    assert_close_to_reference(g, e)


@pytest.mark.parametrize("device,backend", KERNELS)
@pytest.mark.parametrize("case", range(5), ids=CASE_NAMES)
def test_gradgradcheck(device, backend, case):
    name, fn, inputs = _cases(device)[case]
    assert torch.autograd.gradcheck(_bind(fn, backend), inputs)
    assert torch.autograd.gradgradcheck(_bind(fn, backend), inputs)


@pytest.mark.parametrize("device,backend", KERNELS)
def test_second_derivative_is_never_zero(device, backend):
    """The exact symptom of the issue: grad-of-grad through cross-entropy left logits.grad None and
    through conv2d gave zero; here each matches torch's second derivative, with an upstream
    gradient that depends on the output (the first backward's grad_out is itself differentiated)."""
    for name, fn, inputs in _cases(device):
        clones = [t.detach().clone().requires_grad_() for t in inputs]
        got = torch.autograd.grad(fn(backend, *inputs).square().sum(), inputs, create_graph=True)
        got2 = torch.autograd.grad(sum(g.square().sum() for g in got), inputs)
        want = torch.autograd.grad(fn(TORCH, *clones).square().sum(), clones, create_graph=True)
        want2 = torch.autograd.grad(sum(g.square().sum() for g in want), clones)
        for a, e in zip(got2, want2):
            assert e.abs().max() > 0, name
            assert_close_to_reference(a, e, what=f"{name} second derivative")


@pytest.mark.parametrize("device,backend", KERNELS)
def test_third_derivative_raises_instead_of_a_wrong_value(device, backend):
    x, w = _f64(3, 4, device=device), _f64(5, 4, device=device)
    (g,) = torch.autograd.grad(FF.linear_relu(x, w, backend=backend).square().sum(), x, create_graph=True)
    torch.autograd.grad(g.square().sum(), x, retain_graph=True)  # the second derivative itself is fine
    with pytest.raises(NotImplementedError, match="third order"):  # a graph of it, for a third, is not
        torch.autograd.grad(g.square().sum(), x, create_graph=True)


def _critic() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 1),
    ).double()


def test_wgan_gp_gradient_penalty_on_a_swapped_conv_net():
    """WGAN-GP: penalty = (||d critic / d x|| - 1)^2, backpropagated into the critic's weights."""
    torch.manual_seed(0)
    stock = _critic()
    swapped = copy.deepcopy(stock)
    report = fastops.swap(swapped)
    assert len(report.replaced) == 3, str(report)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    grads = []
    for model in (stock, swapped):
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(model(xi).sum(), xi, create_graph=True)
        penalty = ((gx.flatten(1).norm(dim=1) - 1) ** 2).mean()
        # the last bias does not change d critic / d x: no gradient, for torch as for fastops
        grads.append(torch.autograd.grad(penalty, list(model.parameters()), allow_unused=True))
    for (name, _), a, e in zip(stock.named_parameters(), grads[1], grads[0]):
        if e is None:
            assert a is None and name == "7.bias", name
            continue
        if name.endswith("weight"):  # a bias moves the penalty only through the ReLU masks: 0 a.e.
            assert e.abs().max() > 0, name
        assert_close_to_reference(a, e, what=f"penalty grad {name}")


# ---- torch.func -------------------------------------------------------------------------------------


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize("case", range(5), ids=CASE_NAMES)
def test_torch_func_grad_vmap_jacrev(device, backend, case):
    name, fn, inputs = _cases(device)[case]
    fn, ref_fn = _bind(fn, backend), _bind(fn, TORCH)
    inputs = tuple(t.detach() for t in inputs)
    scalar = fn(*inputs).dim() == 0

    def total(f):  # noqa: ANN202
        return lambda *a: f(*a).sum()

    argnums = tuple(range(len(inputs)))
    got = torch.func.grad(total(fn), argnums=argnums)(*inputs)
    want = torch.func.grad(total(ref_fn), argnums=argnums)(*inputs)
    for a, e in zip(got, want):
        assert e.abs().max() > 0
        assert_close_to_reference(a, e, what=f"{name} func.grad")
    got_j = torch.func.jacrev(fn)(*inputs)
    want_j = torch.func.jacrev(ref_fn)(*inputs)
    assert_close_to_reference(got_j, want_j, what=f"{name} jacrev")
    # vmap over a batch of first inputs (the rest shared), values and per-sample gradients
    batch = torch.stack([inputs[0], inputs[0] * 0.5 + 0.1, -inputs[0]])
    got_v = torch.func.vmap(lambda a: fn(a, *inputs[1:]))(batch)
    want_v = torch.stack([ref_fn(a, *inputs[1:]) for a in batch])
    assert_close_to_reference(got_v, want_v, what=f"{name} vmap")
    if scalar:
        got_vg = torch.func.vmap(torch.func.grad(lambda a: fn(a, *inputs[1:])))(batch)
        want_vg = torch.stack([torch.func.grad(lambda a: ref_fn(a, *inputs[1:]))(a) for a in batch])
        assert_close_to_reference(got_vg, want_vg, what=f"{name} vmap(grad)")


@pytest.mark.parametrize("device,backend", KERNELS)
def test_vmap_runs_the_kernels_without_the_fallback_warning(device, backend):
    ns = namespace(backend)
    w = torch.randn(5, 4, device=device)
    xb = torch.randn(3, 2, 4, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = torch.func.vmap(lambda x: ns.linear_relu_fwd(x, w, None))(xb)
    torch.testing.assert_close(y, torch.relu(xb @ w.T))


# ---- autocast ---------------------------------------------------------------------------------------


def _mixed_model() -> nn.Module:
    """Stock layers feeding swapped ones and back: conv -> (swapped conv) -> linear -> (swapped
    linear+relu) -> linear."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 32),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )


def _swap_middle(model: nn.Module) -> nn.Module:
    fastops.swap(model, include=["1", "5"])
    assert isinstance(model[1], fastops.nn.Conv2d) and isinstance(model[5], fastops.nn.LinearReLU)
    return model


@pytest.mark.parametrize(
    "device,dtype",
    [
        pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
        pytest.param("cuda", torch.float16, id="cuda-fp16", marks=pytest.mark.gpu),
        pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=pytest.mark.gpu),
    ],
)
def test_autocast_mixed_model(device, dtype):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device visible")
    torch.manual_seed(0)
    stock = _mixed_model().to(device)
    swapped = _swap_middle(copy.deepcopy(stock))
    ref64 = copy.deepcopy(stock).double()
    x = torch.randn(4, 3, 6, 6, device=device)
    t = torch.randint(0, 5, (4,), device=device)
    loss_fn = fastops.nn.CrossEntropyLoss()
    outs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # auto may fall back to the torch composition
        for name, model, crit in (("stock", stock, nn.CrossEntropyLoss()), ("swapped", swapped, loss_fn)):
            with torch.autocast(device, dtype=dtype):
                acts = [x]
                for layer in model:
                    acts.append(layer(acts[-1]))
                loss = crit(acts[-1], t)
            grads = torch.autograd.grad(loss, list(model.parameters()))
            outs[name] = (acts, loss, grads)
    # every activation and the loss have the stock model's dtype under the same autocast
    for i, (a, b) in enumerate(zip(outs["stock"][0], outs["swapped"][0])):
        assert a.dtype == b.dtype, (i, a.dtype, b.dtype)
    assert outs["swapped"][1].dtype == outs["stock"][1].dtype == torch.float32
    loss64 = nn.CrossEntropyLoss()(ref64(x.double()), t)
    g64 = torch.autograd.grad(loss64, list(ref64.parameters()))
    # a float32 loss of low-precision logits: held to the low-precision rule (2x torch's own error + floor),
    # which assert_close_to_reference applies to float32 once the tight bound is missed when told the
    # result is not a kernel's own float32 arithmetic
    assert_close_to_reference(
        outs["swapped"][1], loss64, torch_same_dtype=outs["stock"][1], what="loss", is_torch_composition=True
    )
    for (name, _), a, e, s in zip(stock.named_parameters(), outs["swapped"][2], g64, outs["stock"][2]):
        # fp32 parameters' gradients from a low-precision graph: the low-precision rule, measured in
        # the graph's dtype
        assert_close_to_reference(a.to(dtype), e, torch_same_dtype=s.to(dtype), what=f"grad {name}")


def test_autocast_registered_with_the_ops():
    """Raw ops under autocast follow torch's policy: cross-entropy in float32 whatever the logits."""
    logits = torch.randn(4, 7, dtype=torch.bfloat16)
    t = torch.randint(0, 7, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = torch.ops.fastops.cross_entropy_fwd(logits, t, None, -100, 0.0)
    assert loss.dtype == torch.float32
    expect = F.cross_entropy(logits.float(), t, reduction="none")
    torch.testing.assert_close(loss, expect)
    for op in ("linear_relu", "conv2d"):
        if _backend.why_not(op, "native", "cpu", torch.bfloat16):
            continue  # the CPU kernel takes no bfloat16 in this build
        x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = (
                torch.ops.fastops.conv2d_fwd(x, w, None, [1, 1], [1, 1], [1, 1], 1, False)
                if op == "conv2d"
                else torch.ops.fastops.linear_relu_fwd(x.flatten(1), torch.randn(4, 75), None)
            )
        assert y.dtype == torch.bfloat16, op


def test_autocast_inside_torch_compile():
    torch.manual_seed(0)
    stock = _mixed_model()
    model = _swap_middle(copy.deepcopy(stock))
    x = torch.randn(2, 3, 6, 6)
    compiled = torch.compile(model, fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = compiled(x)
            want = stock(x)
    assert got.dtype == want.dtype == torch.bfloat16
    ref64 = copy.deepcopy(stock).double()(x.double())
    assert_close_to_reference(got, ref64, torch_same_dtype=want, what="compiled under autocast")


@pytest.mark.skipif(not _backend.NATIVE_LOADED, reason="the native extension is not built")
@pytest.mark.parametrize("dynamic", [None, True], ids=["dynamic-default", "dynamic-true"])
def test_compiles_no_more_often_than_stock(monkeypatch: pytest.MonkeyPatch, dynamic: bool | None) -> None:
    """A swapped model + fastops loss under torch.compile compiles exactly as often as the stock model +
    torch's loss over a run of batch sizes, from a fresh process's state (the first fastops calls are
    traced). The memo of why_not used to put a guard on itself that its own traced call broke: one
    extra compile per compiled function."""
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    stock = _SmallCNN()
    swapped = copy.deepcopy(stock)
    assert len(fastops.swap(swapped).replaced) == 3
    counts = {}
    for name, model, loss in (("stock", stock, F.cross_entropy), ("fastops", swapped, FF.cross_entropy)):
        torch._dynamo.reset()
        monkeypatch.setattr(_backend, "_WHY_NOT", {})
        counter = CompileCounter()
        step = torch.compile(lambda x, t, model=model, loss=loss: loss(model(x), t), backend=counter, dynamic=dynamic)
        for n in (3, 3, 5, 3, 20, 5, 20):
            step(torch.randn(n, 3, 8, 8), torch.randint(0, 4, (n,))).backward()
        counts[name] = counter.frame_count
    torch._dynamo.reset()
    assert counts["fastops"] == counts["stock"], counts


def test_bad_backend_name_raises_value_error_under_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong backend name (argument or FASTOPS_BACKEND) is the same ValueError compiled as eager:
    the name check runs outside the trace-time constant (an exception there reached the caller as
    dynamo's internal error)."""
    x, w, b = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5)
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="backend must be one of"):
        torch.compile(lambda x: FF.linear_relu(x, w, b, backend="fast"), backend="eager")(x)
    monkeypatch.setenv("FASTOPS_BACKEND", "fast")
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="backend must be one of"):
        torch.compile(lambda x: FF.cross_entropy(x, torch.tensor([0, 1, 2])), backend="eager")(torch.randn(3, 4))
    torch._dynamo.reset()


# ---- export ------------------------------------------------------------------------------------------


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 3 * 3, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_export_train_mode_backward_save_load_dynamic_batch():
    torch.manual_seed(0)
    stock = _SmallCNN().double().train()
    swapped = copy.deepcopy(stock)
    assert len(fastops.swap(swapped).replaced) == 3
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(swapped, (x,), dynamic_shapes={"x": {0: batch}})
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("fastops" in t and "conv2d_fwd" in t for t in targets), targets
    assert any("fastops" in t and "linear_relu_fwd" in t for t in targets), targets
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    for program in (ep, loaded):
        module = program.module()
        for n in (3, 5):  # the traced batch and another one
            xb = torch.randn(n, 3, 8, 8, dtype=torch.float64)
            out = module(xb)
            want = stock(xb)
            assert_close_to_reference(out, want, what="exported output")
            got = torch.autograd.grad(out.square().sum(), list(module.parameters()))
            exp = torch.autograd.grad(want.square().sum(), list(stock.parameters()))
            assert len(got) == len(exp)
            for a, e in zip(got, exp):
                assert_close_to_reference(a, e, what="exported gradient")


def test_reference_is_what_torch_func_differentiates():
    """Under torch.func the ops differentiate their torch composition: it must be the reference."""
    x = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64)
    got = torch.func.grad(lambda a: FF.linear_relu(a, w, backend="native").sum())(x)
    want = torch.func.grad(lambda a: reference.linear_relu(a, w).sum())(x)
    torch.testing.assert_close(got, want)
