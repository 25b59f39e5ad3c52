"""Fused linear+ReLU: every backend against the float64 reference on odd, degenerate and
multi-dim shapes, non-contiguous and transposed operands, gradcheck, opcheck, torch.compile,
module parity and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fastops
import fastops.functional as FF
from fastops import reference
from fastops.ops import namespace
from fastops.testing import (
    LOW_PRECISION,
    assert_close_to_reference,
    device_backend_params,
    kernel_dtypes,
    low_precision_native_cpu,
    make_tensor,
    noncontiguous,
    relu_decisions,
)

ALL = device_backend_params()
KERNELS = device_backend_params(("native", "triton"), ("native", "triton"))


def _out_and_grads(fn, x, weight, bias, g):
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    inputs = [x, weight]
    if bias is not None:
        bias = bias.detach().requires_grad_()
        inputs.append(bias)
    out = fn(x, weight, bias)
    grads = torch.autograd.grad(out, inputs, g.to(out.dtype).to(out.device))
    return out.detach(), grads


def _check(backend, x, weight, bias, what=""):
    """Output and the three gradients against the float64 reference (same upstream gradient)."""
    n = weight.shape[0]
    m = math.prod(x.shape[:-1])
    # grad_weight and grad_bias sum over the M rows: scale the upstream gradient so they are of
    # unit size, the scale the tolerance rule's absolute floor is set for.
    g = torch.randn((*x.shape[:-1], n), dtype=torch.float64) / max(m, 1) ** 0.5
    out, grads = _out_and_grads(lambda *a: FF.linear_relu(*a, backend=backend), x, weight, bias, g)
    b64 = None if bias is None else bias.double()
    ref_fn = reference.linear_relu
    if x.dtype == torch.float32:  # near the kink, the kernel's ReLU decision stands (relu_decisions)
        with torch.no_grad():
            keep = relu_decisions(F.linear(x.double(), weight.double(), b64), out)

        def ref_fn(a, w, b):  # noqa: ANN001, ANN202
            return torch.where(keep, F.linear(a, w, b), 0.0)

    ref, rgrads = _out_and_grads(ref_fn, x.double(), weight.double(), b64, g)
    same_out, same_grads = None, [None] * len(grads)
    if x.dtype in LOW_PRECISION:
        same_out, same_grads = _out_and_grads(lambda a, w, b: F.relu(F.linear(a, w, b)), x, weight, bias, g)
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert_close_to_reference(out, ref, torch_same_dtype=same_out, what=f"out {what}")
    for name, got, exp, same in zip(("grad_x", "grad_weight", "grad_bias"), grads, rgrads, same_grads):
        assert got.dtype == x.dtype
        assert_close_to_reference(got, exp, torch_same_dtype=same, what=f"{name} {what}")


def _scale(k: int) -> float:
    # Unit-scale outputs whatever K is, so the tolerance rule's absolute floor means the same thing.
    return 1.0 / max(k, 1) ** 0.5


# (x shape, N): odd sizes that are multiples of no tile, K = 1, N = 1, K = 0 (out = relu(bias)),
# 1-D, 3-D and 4-D inputs.
SHAPES = [
    ((37, 45), 29),
    ((70, 1), 33),
    ((19, 24), 1),
    ((3, 0), 4),
    ((45,), 17),
    ((3, 5, 23), 9),
    ((2, 3, 4, 17), 6),
]


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize("xshape,n", SHAPES, ids=lambda s: "x".join(map(str, s)) if isinstance(s, tuple) else str(s))
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_matches_reference(device, backend, xshape, n, with_bias):
    k = xshape[-1]
    for dtype in kernel_dtypes(device, backend):
        x = make_tensor(xshape, dtype, device)
        weight = make_tensor((n, k), dtype, device, scale=_scale(k))
        bias = make_tensor((n,), dtype, device, scale=0.5) if with_bias else None
        _check(backend, x, weight, bias, f"{dtype} {xshape} N={n}")


@pytest.mark.parametrize("device,backend", ALL)
def test_tiles_and_vector_tails(device, backend):
    """Sizes that cross the kernels' tile edges: several M/N/K tiles with ragged ends, and N past
    the CPU kernel's 256-column tile with a SIMD tail."""
    m, k, n = (67, 70, 41) if backend == "triton" else (130, 67, 261)
    for dtype in [torch.float32, *low_precision_native_cpu(device, backend)]:
        x = make_tensor((m, k), dtype, device)
        w = make_tensor((n, k), dtype, device, scale=_scale(k))
        _check(backend, x, w, make_tensor((n,), dtype, device), f"{dtype}")


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize("xshape", [(0, 8), (2, 0, 8)], ids=["0x8", "2x0x8"])
def test_zero_size_batch(device, backend, xshape):
    x = make_tensor(xshape, torch.float32, device, requires_grad=True)
    weight = make_tensor((5, 8), torch.float32, device, requires_grad=True)
    bias = make_tensor((5,), torch.float32, device, requires_grad=True)
    out = FF.linear_relu(x, weight, bias, backend=backend)
    assert out.shape == (*xshape[:-1], 5)
    gx, gw, gb = torch.autograd.grad(out.sum(), (x, weight, bias))
    assert gx.shape == x.shape
    torch.testing.assert_close(gw, torch.zeros_like(gw), atol=0, rtol=0)
    torch.testing.assert_close(gb, torch.zeros_like(gb), atol=0, rtol=0)


@pytest.mark.parametrize("device,backend", ALL)
def test_noncontiguous_x_and_transposed_weight(device, backend):
    for dtype in [torch.float32, *low_precision_native_cpu(device, backend)]:
        x = noncontiguous(make_tensor((2, 13, 21), dtype, device))
        weight = make_tensor((21, 11), dtype, device, scale=_scale(21)).t()  # (11, 21), stride (1, 11)
        assert not x.is_contiguous() and not weight.is_contiguous()
        bias = noncontiguous(make_tensor((11,), dtype, device))
        _check(backend, x, weight, bias, f"strided {dtype}")
        # An expanded upstream gradient (from a sum) has zero strides.
        out = FF.linear_relu(x.requires_grad_(), weight, bias, backend=backend)
        (gx,) = torch.autograd.grad(out.sum(), x)
        x64 = x.detach().double().requires_grad_()
        (rgx,) = torch.autograd.grad(reference.linear_relu(x64, weight.double(), bias.double()).sum(), x64)
        same = None
        if dtype in LOW_PRECISION:
            xs = x.detach().requires_grad_()
            (same,) = torch.autograd.grad(F.relu(F.linear(xs, weight, bias)).sum(), xs)
        assert_close_to_reference(gx, rgx, torch_same_dtype=same, what=f"grad_x from an expanded grad_out {dtype}")


@pytest.mark.parametrize("device,backend", ALL)
def test_relu_edge_values(device, backend):
    """NaN stays NaN in the output (torch.relu), and a NaN / exact-zero output passes no gradient."""
    for dtype in [torch.float64, *low_precision_native_cpu(device, backend)]:
        x = make_tensor((6, 4), dtype, device)
        x[2, 1] = float("nan")
        weight = make_tensor((5, 4), dtype, device)
        out = FF.linear_relu(x, weight, None, backend=backend)
        assert torch.isnan(out[2]).all() and not torch.isnan(out[[0, 1, 3, 4, 5]]).any()
        # K = 1 with x = 0 and no bias: every pre-activation is exactly 0 -> out 0, no gradient.
        z = torch.zeros(3, 1, dtype=dtype, device=device, requires_grad=True)
        w = make_tensor((4, 1), dtype, device, requires_grad=True)
        out = FF.linear_relu(z, w, None, backend=backend)
        gz, gw = torch.autograd.grad(out, (z, w), torch.ones_like(out))
        assert (out == 0).all() and (gz == 0).all() and (gw == 0).all()


@pytest.mark.parametrize("device,backend", KERNELS)
def test_saves_only_input_weight_and_activated_output(device, backend):
    """Backward keeps x, weight and the ReLU output (its sign is the mask), never the pre-activation."""
    x = make_tensor((9, 6), torch.float32, device, requires_grad=True)
    weight = make_tensor((5, 6), torch.float32, device, requires_grad=True)
    bias = make_tensor((5,), torch.float32, device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = FF.linear_relu(x, weight, bias, backend=backend)
    assert len(saved) == 3
    assert saved[0] is x and saved[1] is weight
    torch.testing.assert_close(saved[2], out, atol=0, rtol=0)
    assert bool((saved[2] >= 0).all())  # activated, not the pre-activation


@pytest.mark.parametrize("device,backend", KERNELS)
def test_bwd_output_mask(device, backend):
    """linear_relu_bwd's output_mask: each wanted gradient equals the unmasked call's bit for bit, each
    masked-off one is an empty (0,) tensor (as conv2d_bwd), every one of the 8 masks, float32 and
    float64 (and the low-precision CPU dtypes, whose products run differently)."""
    ns = namespace(backend, "linear_relu")
    for dtype in (torch.float32, torch.float64, *low_precision_native_cpu(device, backend)):
        x = make_tensor((3, 11, 10), dtype, device)
        weight = make_tensor((13, 10), dtype, device, scale=0.3)
        out = ns.linear_relu_fwd(x, weight, make_tensor((13,), dtype, device))
        g = make_tensor(out.shape, dtype, device)
        full = ns.linear_relu_bwd(g, x, weight, out)
        assert [t.shape for t in full] == [x.shape, weight.shape, (13,)]
        for bits in range(8):
            mask = [bool(bits & 1), bool(bits & 2), bool(bits & 4)]
            got = ns.linear_relu_bwd(g, x, weight, out, mask)
            for want, a, e in zip(mask, got, full):
                if want:
                    torch.testing.assert_close(a, e, atol=0, rtol=0, msg=f"{dtype} mask {mask}")
                else:
                    assert a.shape == (0,) and a.dtype == dtype, (dtype, mask, a.shape)


@pytest.mark.parametrize("device,backend", KERNELS)
def test_backward_asks_only_for_the_wanted_gradients(device, backend, monkeypatch):
    """A first layer's x (no grad) and a frozen weight: autograd passes output_mask to linear_relu_bwd,
    so the products nobody wants are not run (as torch's linear backward), and the wanted gradients
    match the reference."""
    ns = namespace(backend, "linear_relu")
    masks = []
    # The autograd formula looks the op up on the namespace at call time: record what it passes.
    bwd = ns.linear_relu_bwd
    monkeypatch.setattr(ns, "linear_relu_bwd", lambda *a: masks.append(list(a[4])) or bwd(*a), raising=False)
    x = make_tensor((6, 9), torch.float64, device)
    weight = make_tensor((5, 9), torch.float64, device)
    bias = make_tensor((5,), torch.float64, device)
    for needs in ((False, True, True), (True, False, False), (False, True, False), (True, True, True)):
        leaves = [t.detach().requires_grad_(n) for t, n in zip((x, weight, bias), needs)]
        refs = [t.detach().requires_grad_(n) for t, n in zip((x, weight, bias), needs)]
        wanted = [t for t in leaves if t.requires_grad]
        g = torch.randn(6, 5, dtype=torch.float64, device=device)
        got = torch.autograd.grad(FF.linear_relu(*leaves, backend=backend), wanted, g)
        exp = torch.autograd.grad(reference.linear_relu(*refs), [t for t in refs if t.requires_grad], g)
        for a, e in zip(got, exp):
            assert_close_to_reference(a, e, what=f"needs {needs}")
        assert masks[-1] == list(needs), (masks, needs)


@pytest.mark.parametrize("device,backend", KERNELS)
def test_double_backward_with_a_masked_bwd(device, backend):
    """gradgradcheck through a backward that ran with output_mask [False, True, True] (x is data):
    the masked bwd op's own derivative (double backward) is right for the gradients it returned."""
    x = make_tensor((3, 4), torch.float64, device)
    weight = make_tensor((5, 4), torch.float64, device, requires_grad=True)
    bias = make_tensor((5,), torch.float64, device, requires_grad=True)
    fn = lambda w, b: FF.linear_relu(x, w, b, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (weight, bias))
    assert torch.autograd.gradgradcheck(fn, (weight, bias))


@pytest.mark.parametrize("device,backend", ALL)
def test_gradcheck_float64(device, backend):
    x = make_tensor((5, 7), torch.float64, device, requires_grad=True)
    weight = make_tensor((4, 7), torch.float64, device, requires_grad=True)
    bias = make_tensor((4,), torch.float64, device, requires_grad=True)
    # Keep pre-activations away from 0, where ReLU's kink breaks the finite differences.
    with torch.no_grad():
        y = x @ weight.t() + bias
        bias += torch.where(y.abs().min(0).values < 0.05, 0.3, 0.0)
    assert torch.autograd.gradcheck(lambda a, w, b: FF.linear_relu(a, w, b, backend=backend), (x, weight, bias))
    x3 = make_tensor((2, 3, 7), torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: FF.linear_relu(a, w, None, backend=backend), (x3, weight))


@pytest.mark.parametrize("device,backend", ALL)
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()

    def step(x, weight, bias):
        return FF.linear_relu(x * 2.0, weight, bias, backend=backend) * 3.0

    x = make_tensor((2, 9, 12), torch.float32, device)
    weight = make_tensor((7, 12), torch.float32, device, scale=0.3)
    bias = make_tensor((7,), torch.float32, device)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if backend == "triton" else "inductor")
    leaves_e = [t.clone().requires_grad_() for t in (x, weight, bias)]
    leaves_c = [t.clone().requires_grad_() for t in (x, weight, bias)]
    eager, got = step(*leaves_e), compiled(*leaves_c)
    torch.testing.assert_close(got, eager)
    g = torch.randn_like(eager)
    for ge, gc in zip(torch.autograd.grad(eager, leaves_e, g), torch.autograd.grad(got, leaves_c, g)):
        torch.testing.assert_close(gc, ge)


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_module_parity(device, backend, with_bias):
    torch.manual_seed(1234)
    theirs = torch.nn.Sequential(torch.nn.Linear(13, 6, bias=with_bias, device=device), torch.nn.ReLU())
    torch.manual_seed(1234)
    ours = fastops.nn.LinearReLU(13, 6, bias=with_bias, device=device, backend=backend)
    assert isinstance(ours, torch.nn.Linear)
    # Same initialisation as nn.Linear from the same RNG state, and the same state_dict keys.
    torch.testing.assert_close(ours.weight, theirs[0].weight, atol=0, rtol=0)
    assert ours.state_dict().keys() == theirs[0].state_dict().keys()
    fresh = fastops.nn.LinearReLU(13, 6, bias=with_bias, device=device, backend=backend)
    fresh.load_state_dict(theirs[0].state_dict())
    x = make_tensor((4, 3, 13), torch.float32, device, requires_grad=True)
    a, b = fresh(x), theirs(x)
    torch.testing.assert_close(a, b)
    g = torch.randn_like(a)
    pa = [x, *fresh.parameters()]
    pb = [x, *theirs.parameters()]
    for ga, gb in zip(torch.autograd.grad(a, pa, g), torch.autograd.grad(b, pb, g)):
        torch.testing.assert_close(ga, gb)
    shared = fastops.nn.LinearReLU.from_linear(theirs[0], backend=backend)
    assert shared.weight is theirs[0].weight
    torch.testing.assert_close(shared(x), b)


BAD_INPUTS = [
    (
        "K mismatch",
        lambda d: (make_tensor((4, 5), device=d), make_tensor((3, 6), device=d), None),
        ValueError,
        "weight must have shape (N, 5)",
    ),
    (
        "bias of the wrong length",
        lambda d: (make_tensor((4, 5), device=d), make_tensor((3, 5), device=d), make_tensor((4,), device=d)),
        ValueError,
        "bias must have shape (3,)",
    ),
    (
        "weight dtype",
        lambda d: (make_tensor((4, 5), device=d), make_tensor((3, 5), torch.float64, d), None),
        TypeError,
        "weight must have x's dtype",
    ),
    (
        "bias dtype",
        lambda d: (make_tensor((4, 5), device=d), make_tensor((3, 5), device=d), make_tensor((3,), torch.float64, d)),
        TypeError,
        "bias must have x's dtype",
    ),
    (
        "integer x",
        lambda d: (torch.ones(4, 5, dtype=torch.long, device=d), torch.ones(3, 5, dtype=torch.long, device=d), None),
        TypeError,
        "x must be a floating tensor",
    ),
    (
        "weight not 2-D",
        lambda d: (make_tensor((4, 5), device=d), make_tensor((5,), device=d), None),
        ValueError,
        "weight must have shape (N, K)",
    ),
    (
        "0-d x",
        lambda d: (make_tensor((), device=d), make_tensor((3, 1), device=d), None),
        ValueError,
        "x must have shape (*, K)",
    ),
    (
        "device mismatch",
        lambda d: (make_tensor((4, 5), device=d), make_tensor((3, 5), device="meta"), None),
        ValueError,
        "weight is on meta",
    ),
]


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_clear_error(device, backend, case):
    _, make, exc, message = case
    x, weight, bias = make(device)
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        FF.linear_relu(x, weight, bias, backend=backend)


@pytest.mark.parametrize("device,backend", KERNELS)
def test_raw_ops_reject_bad_input(device, backend):
    ns = namespace(backend, "linear_relu")
    x, w = make_tensor((4, 5), device=device), make_tensor((3, 5), device=device)
    with pytest.raises((ValueError, RuntimeError), match=r"weight must have shape \(N, 5\)"):
        ns.linear_relu_fwd(x, make_tensor((3, 4), device=device), None)
    with pytest.raises((ValueError, RuntimeError), match=r"bias must have shape \(3,\)"):
        ns.linear_relu_fwd(x, w, make_tensor((2,), device=device))
    with pytest.raises((TypeError, RuntimeError), match="x must be a floating tensor"):
        ns.linear_relu_fwd(x.long(), w.long(), None)
    out = ns.linear_relu_fwd(x, w, None)
    with pytest.raises((ValueError, RuntimeError), match=r"grad_out must have shape \(4, 3\)"):
        ns.linear_relu_bwd(torch.ones(4, 2, device=device), x, w, out)
    with pytest.raises((TypeError, RuntimeError), match="out must have x's dtype"):
        ns.linear_relu_bwd(out, x, w, out.double())


def test_backend_resolution():
    """Through the API (resolution itself: tests/test_contract.py::test_backend_resolution)."""
    unsupported = torch.float8_e4m3fn  # a floating dtype no kernel takes
    x, w = make_tensor((3, 4), unsupported), make_tensor((2, 4), unsupported)
    with pytest.raises(RuntimeError, match="take bfloat16, float16, float32, float64, not float8_e4m3fn"):
        FF.linear_relu(x, w, backend="native")


# ---- the checker must reject wrong implementations ---------------------------------------------


def _wrong_no_bias(x, w, b):
    return reference.linear_relu(x, w, None)


def _wrong_leaky(x, w, b):
    y = torch.nn.functional.linear(x, w, b)
    return torch.where(y > 0, y, 1e-3 * y)


def _wrong_bias_after_relu(x, w, b):
    return reference.linear_relu(x, w, None) + b


def _wrong_last_row_unwritten(x, w, b):
    out = reference.linear_relu(x, w, b).clone()
    out[-1, -1] = float("nan")  # what a kernel that skips the ragged last tile leaves in a poisoned output
    return out


def _wrong_float32_accumulation_in_float64(x, w, b):
    return reference.linear_relu(x.float(), w.float(), b.float()).double()


@pytest.mark.parametrize(
    "wrong",
    [
        _wrong_no_bias,
        _wrong_leaky,
        _wrong_bias_after_relu,
        _wrong_last_row_unwritten,
        _wrong_float32_accumulation_in_float64,
    ],
)
def test_checker_rejects_wrong_implementations(wrong):
    x, w, b = (
        make_tensor((33, 40), torch.float64),
        make_tensor((21, 40), torch.float64, scale=0.2),
        make_tensor((21,), torch.float64),
    )
    with pytest.raises(AssertionError):
        assert_close_to_reference(wrong(x, w, b), reference.linear_relu(x, w, b), what="wrong implementation")


def test_checker_rejects_wrong_gradient():
    """A backward that forgets the mask (or masks on the pre-ReLU sign of the wrong tensor) fails."""
    x, w, b = make_tensor((17, 9), torch.float64), make_tensor((6, 9), torch.float64), make_tensor((6,), torch.float64)
    g = torch.randn(17, 6, dtype=torch.float64)
    _, (gx, _, _) = _out_and_grads(reference.linear_relu, x, w, b, g)
    unmasked = g @ w
    with pytest.raises(AssertionError):
        assert_close_to_reference(unmasked, gx, what="unmasked grad_x")
