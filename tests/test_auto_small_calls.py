"""backend="auto" on CPU sends cross_entropy and linear_relu calls too small to pay for the op's
dispatch to torch's own ops (the size rules in fastops/ops/cross_entropy.py and linear_relu.py):
the route taken on each side of the limit, the same results and gradients as the kernel, the one
argument contract on the routed path, explicit backends never rerouted, and the swap report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastops
import fastops.functional as FF
from fastops import reference
from fastops.ops import cross_entropy as _ce
from fastops.ops import linear_relu as _lr
from fastops.testing import assert_close_to_reference, is_fastops_node, make_tensor, to_unit_scale

pytestmark = pytest.mark.skipif(
    not fastops.backends()["native"]["cpu"][0], reason="the native CPU kernels are not built"
)


def _runs_kernel(y: torch.Tensor) -> bool:
    """Whether ``y``'s autograd graph holds a fastops op (its autograd.Function's node)."""
    seen, todo = set(), [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if is_fastops_node(node):
            return True
        todo += [n for n, _ in node.next_functions]
    return False


def _ce_case(rows: int, classes: int, dtype: torch.dtype = torch.float32):
    logits = make_tensor((rows, classes), dtype)
    target = torch.randint(0, classes, (rows,))
    target[::7] = -100
    return logits, target


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_small_cross_entropy_runs_torch_with_the_kernels_results(dtype, reduction):
    """Routed: exactly torch's F.cross_entropy, values and gradients; the kernel on the same call
    (backend="native") meets the float64 reference by the rule that torch's result sets."""
    logits, target = _ce_case(64, 10, dtype)
    weight = make_tensor((10,), dtype).abs() + 0.1
    assert _ce.cpu_auto_uses_torch(logits)
    for w, smoothing in ((None, 0.0), (weight, 0.1)):
        auto_in, torch_in, native_in = (logits.clone().requires_grad_() for _ in range(3))
        kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
        y = FF.cross_entropy(auto_in, target, **kw)
        y_torch = F.cross_entropy(torch_in, target, **kw)
        y_native = FF.cross_entropy(native_in, target, **kw, backend="native")
        assert not _runs_kernel(y) and _runs_kernel(y_native)
        assert torch.equal(y, y_torch) and y.dtype == y_native.dtype == dtype and y.shape == y_native.shape
        ref_in = logits.double().requires_grad_()
        ref = reference.cross_entropy(ref_in, target, None if w is None else w.double(), -100, reduction, smoothing)
        got, exp, same = to_unit_scale(y_native, ref, y)
        assert_close_to_reference(got, exp, torch_same_dtype=same, what=f"native {reduction}")
        g = make_tensor(y.shape, dtype)
        (ga,) = torch.autograd.grad(y, auto_in, g)
        (gt,) = torch.autograd.grad(y_torch, torch_in, g)
        (gn,) = torch.autograd.grad(y_native, native_in, g)
        (gr,) = torch.autograd.grad(ref, ref_in, g.double())
        assert torch.equal(ga, gt)
        got, exp, same = to_unit_scale(gn, gr, ga)
        assert_close_to_reference(got, exp, torch_same_dtype=same, what=f"native {reduction} grad")


def test_cross_entropy_at_the_limit_runs_the_kernel():
    classes = 1024
    rows = _ce.CPU_AUTO_TORCH_BELOW // classes
    logits, target = _ce_case(rows, classes)
    assert not _ce.cpu_auto_uses_torch(logits)
    assert _runs_kernel(FF.cross_entropy(logits.requires_grad_(), target))
    assert _ce.cpu_auto_uses_torch(logits[:-1])
    assert not _runs_kernel(FF.cross_entropy(logits[:-1], target[:-1]))


def test_small_cross_entropy_explicit_choices_are_never_rerouted(monkeypatch):
    logits, target = _ce_case(8, 5)
    assert _runs_kernel(FF.cross_entropy(logits.clone().requires_grad_(), target, backend="native"))
    x = logits.clone().requires_grad_()
    y = FF.cross_entropy(x * 1, target, inplace_backward=True)  # the opt-in in-place backward is the kernel's
    assert type(y.grad_fn).__name__ == "CrossEntropyFunctionBackward"  # the kernel's own Function
    monkeypatch.setenv("FASTOPS_BACKEND", "native")
    assert _runs_kernel(FF.cross_entropy(logits.clone().requires_grad_(), target))


def test_small_cross_entropy_keeps_the_one_contract():
    """The routed call raises the op's own error text (not F.cross_entropy's)."""
    logits, target = _ce_case(8, 5)
    bad = target.clone()
    bad[1] = 5
    for backend in ("auto", "native"):
        with pytest.raises(IndexError, match=r"target\[1\] = 5 is out of bounds for 5 classes"):
            FF.cross_entropy(logits, bad, backend=backend)
        with pytest.raises(ValueError, match=r"weight"):
            FF.cross_entropy(logits, target, make_tensor((4,)), backend=backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_small_linear_relu_runs_torch_with_the_kernels_results(dtype):
    """Routed: exactly torch's relu(linear(...)), values and gradients; the kernel on the same call
    meets the float64 reference by the rule that torch's result sets."""
    x, w, b = make_tensor((3, 5, 24), dtype), make_tensor((16, 24), dtype, scale=24**-0.5), make_tensor((16,), dtype)
    assert _lr.cpu_auto_uses_torch(x, w)
    auto_in, torch_in, native_in, ref_in = (
        [t.clone().to(d).requires_grad_() for t in (x, w, b)] for d in (dtype, dtype, dtype, torch.float64)
    )
    y = FF.linear_relu(*auto_in)
    y_torch = F.relu(F.linear(*torch_in))
    y_native = FF.linear_relu(*native_in, backend="native")
    ref = reference.linear_relu(*ref_in)
    assert not _runs_kernel(y) and _runs_kernel(y_native)
    assert torch.equal(y, y_torch) and y.dtype == dtype and y.shape == y_native.shape == (3, 5, 16)
    got, exp, same = to_unit_scale(y_native, ref, y)
    assert_close_to_reference(got, exp, torch_same_dtype=same, what="native linear_relu")
    g = make_tensor(y.shape, dtype)
    grads = [
        torch.autograd.grad(o, i, g.to(o.dtype))
        for o, i in ((y, auto_in), (y_torch, torch_in), (y_native, native_in), (ref, ref_in))
    ]
    for name, a, t, n, r in zip(("x", "weight", "bias"), *grads):
        assert torch.equal(a, t), name
        got, exp, same = to_unit_scale(n, r, a)
        assert_close_to_reference(got, exp, torch_same_dtype=same, what=f"native linear_relu grad {name}")


def test_linear_relu_at_the_limit_runs_the_kernel(monkeypatch):
    # The multiply-add rule (every dtype; bfloat16 has no other): 512^3 = 2^27 runs the kernel.
    x, w = make_tensor((512, 512), torch.bfloat16), make_tensor((512, 512), torch.bfloat16, scale=512**-0.5)
    assert x.numel() * w.shape[0] == _lr.CPU_AUTO_TORCH_BELOW
    assert not _lr.cpu_auto_uses_torch(x, w)
    assert _runs_kernel(FF.linear_relu(x.requires_grad_(), w))
    assert "multiply-adds" in _lr.cpu_auto_uses_torch(x[:-1], w)
    assert not _runs_kernel(FF.linear_relu(x[:-1], w))
    # The output rule (float32 / float64): 2^28 multiply-adds into 2048 x 1024 = 2^21 outputs runs the
    # kernel; one row less runs torch, though it is still far above the multiply-add rule's limit.
    for dtype in (torch.float32, torch.float64):
        x, w = make_tensor((2048, 128), dtype), make_tensor((1024, 128), dtype, scale=128**-0.5)
        assert x.shape[0] * w.shape[0] == _lr.CPU_AUTO_TORCH_OUTPUT_BELOW
        assert not _lr.cpu_auto_uses_torch(x, w)
        assert _runs_kernel(FF.linear_relu(x.requires_grad_(), w))
        assert x[:-1].numel() * w.shape[0] > _lr.CPU_AUTO_TORCH_BELOW
        assert "outputs of fewer than 2^21" in _lr.cpu_auto_uses_torch(x[:-1], w)
        assert not _runs_kernel(FF.linear_relu(x[:-1], w))
        assert not _lr.cpu_auto_uses_torch(x[:-1].to(torch.bfloat16), w.to(torch.bfloat16))
    small = make_tensor((4, 8), requires_grad=True)
    assert _runs_kernel(FF.linear_relu(small, make_tensor((3, 8)), backend="native"))
    monkeypatch.setenv("FASTOPS_BACKEND", "native")
    assert _runs_kernel(FF.linear_relu(small, make_tensor((3, 8))))


def test_small_linear_relu_keeps_the_one_contract():
    x, w = make_tensor((4, 8)), make_tensor((3, 8))
    for backend in ("auto", "native"):
        with pytest.raises(ValueError, match=r"bias"):
            FF.linear_relu(x, w, make_tensor((2,)), backend=backend)
        with pytest.raises(ValueError, match=r"weight"):
            FF.linear_relu(x, make_tensor((3, 7)), backend=backend)


def test_swap_report_names_the_size_rules():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.CrossEntropyLoss())
    text = str(fastops.swap(model))
    assert "torch's linear + relu for calls under 2^27 multiply-adds" in text, text
    assert "torch's cross_entropy for logits under 2^19 elements" in text, text
    explicit = str(fastops.swap(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), backend="native"))
    assert "CPU" not in explicit, explicit


class _Head(nn.Module):
    def forward(self, x: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return FF.cross_entropy(FF.linear_relu(x, w), t)


def _targets(ep: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


def test_symbolic_sizes_keep_the_op_and_put_no_guard_on_a_dynamic_dim():
    """The size rules read concrete sizes only: an export with a dynamic batch (up to 2^20 rows, far
    past both limits) keeps the fastops ops instead of guarding the batch below the limit; a static
    export of the same small call holds torch's ops, as eager runs them."""
    x, w, t = make_tensor((4, 8)), make_tensor((6, 8)), torch.randint(0, 6, (4,))
    batch = torch.export.Dim("batch", min=2, max=1 << 20)
    ep = torch.export.export(_Head(), (x, w, t), dynamic_shapes={"x": {0: batch}, "w": None, "t": {0: batch}})
    dynamic = _targets(ep)
    assert any("linear_relu_fwd" in s for s in dynamic) and any("cross_entropy_fwd" in s for s in dynamic), dynamic
    assert torch.equal(
        ep.module()(x, w, t), FF.cross_entropy(FF.linear_relu(x, w, backend="native"), t, backend="native")
    )
    static = _targets(torch.export.export(_Head(), (x, w, t)))
    assert not any("fastops" in s for s in static), static


def test_remembered_torch_routes_keep_the_contract_and_the_overrides(monkeypatch):
    """Small cross-entropy and linear+ReLU calls remember their torch route per call signature
    (fastops.ops._contract.route_key). After a remembered call: a bad target of the same signature
    still gets the op's text, FASTOPS_BACKEND=native still runs the kernel, a uint8 target (cast
    first) is not remembered and still matches torch."""
    from fastops.ops import _contract

    _contract._ROUTES.clear()
    logits, target = _ce_case(8, 5)
    for _ in range(2):
        torch.testing.assert_close(FF.cross_entropy(logits, target), F.cross_entropy(logits, target), rtol=0, atol=0)
    assert [k[0] for k in _contract._ROUTES] == [_ce.OP]
    bad = target.clone()
    bad[1] = 5
    with pytest.raises(IndexError, match=r"target\[1\] = 5 is out of bounds for 5 classes"):
        FF.cross_entropy(logits, bad)
    valid = target.clamp(min=0)
    ref = F.cross_entropy(logits, valid)
    torch.testing.assert_close(FF.cross_entropy(logits, valid.to(torch.uint8)), ref, rtol=0, atol=0)
    assert len(_contract._ROUTES) == 1  # the uint8 call was cast to int64 first: not remembered

    x, w, b = make_tensor((4, 8)), make_tensor((6, 8), requires_grad=True), make_tensor((6,))
    for _ in range(2):
        y = FF.linear_relu(x, w, b)
        assert type(y.grad_fn).__name__ == "ReluBackward0"
    assert len(_contract._ROUTES) == 2
    with pytest.raises(ValueError, match="bias"):  # another signature: decided and checked afresh
        FF.linear_relu(x, w, make_tensor((5,)))

    monkeypatch.setenv("FASTOPS_BACKEND", "native")
    assert _runs_kernel(FF.cross_entropy(logits.clone().requires_grad_(), target))
    assert is_fastops_node(FF.linear_relu(x, w, b).grad_fn)
