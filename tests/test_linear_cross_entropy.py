"""Fused linear + cross-entropy: every backend against the float64 reference (loss and the gradients
of input, weight and bias) over reductions, ignored rows, class weights, label smoothing, softcap,
z-loss, leading dims and ragged chunks; gradcheck / gradgradcheck, opcheck, torch.compile, torch.func,
bad inputs, and a check that the native op never allocates the (N, V) logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastops
import fastops.functional as FF
from fastops import reference
from fastops.ops import namespace
from fastops.testing import assert_close_to_reference, device_backend_params, make_tensor, noncontiguous

ALL = device_backend_params()
KERNELS = device_backend_params(("native", "triton"), ("native", "triton"))
REDUCTIONS = ("none", "mean", "sum")


@pytest.fixture(autouse=True)
def _triton_interpreter_mean_only(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("backend") != "triton":
        return
    if callspec.params.get("device") == "cpu" and callspec.params.get("reduction", "mean") != "mean":
        # The interpreter takes ~30 s per case here; one reduction per case keeps the suite short (the
        # Triton backend's own tests sweep the reductions).
        pytest.skip("Triton interpreter: reduction='mean' only in this file")


def _inputs(n, h, v, dtype=torch.float64, *, bias=True, lead=None, ignore_frac=0.2, scale=1.0, device="cpu"):
    lead = lead or (n,)
    x = make_tensor((*lead, h), dtype, device, scale=scale)
    weight = make_tensor((v, h), dtype, device, scale=h**-0.5)
    b = make_tensor((v,), dtype, device) if bias else None
    target = torch.randint(0, v, lead)
    target = torch.where(torch.rand(lead) < ignore_frac, torch.full_like(target, -100), target)
    return x, weight, b, target.to(device)


def _loss_and_grads(fn, x, weight, bias, target, g=None):
    leaves = [x.detach().requires_grad_(), weight.detach().requires_grad_()]
    if bias is not None:
        leaves.append(bias.detach().requires_grad_())
    loss = fn(leaves[0], leaves[1], target, leaves[2] if bias is not None else None)
    if g is None:
        g = torch.randn(loss.shape, dtype=torch.float64, device=loss.device)
    grads = torch.autograd.grad(loss, leaves, g.to(loss.dtype))
    return loss.detach(), grads, g


def _check(backend, x, weight, bias, target, **kw):
    """Loss and gradients against the float64 reference with the same upstream gradient."""

    def ours(a, w, t, b):
        return FF.linear_cross_entropy(a, w, t, b, backend=backend, **kw)

    def ref(a, w, t, b):
        return reference.linear_cross_entropy(
            a,
            w,
            t,
            b,
            kw.get("ignore_index", -100),
            kw.get("reduction", "mean"),
            kw.get("label_smoothing", 0.0),
            kw.get("weight_classes"),
            kw.get("softcap"),
            kw.get("z_loss", 0.0),
        )

    loss, grads, g = _loss_and_grads(ours, x, weight, bias, target)
    b64 = None if bias is None else bias.double()
    rloss, rgrads, _ = _loss_and_grads(ref, x.double(), weight.double(), b64, target, g)
    same = [None] * 4
    if x.dtype == torch.float32 and backend == "torch":
        same_loss, same_grads, _ = _loss_and_grads(ref, x, weight, bias, target, g)
        same = [same_loss, *same_grads]
    assert loss.dtype == x.dtype
    comp = backend == "torch"
    assert_close_to_reference(loss, rloss, what="loss", torch_same_dtype=same[0], is_torch_composition=comp)
    for name, got, want, s in zip(("grad_input", "grad_weight", "grad_bias"), grads, rgrads, same[1:]):
        assert got.dtype == x.dtype
        assert_close_to_reference(got, want, what=name, torch_same_dtype=s, is_torch_composition=comp)


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(device, backend, reduction, dtype):
    # Odd sizes and 4 chunks of 10 rows with a ragged last one (37 = 3 * 10 + 7).
    x, w, b, t = _inputs(37, 19, 131, dtype, device=device)
    _check(backend, x, w, b, t, reduction=reduction, chunk_rows=10)


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize(
    "options",
    [
        {"label_smoothing": 0.1},
        {"label_smoothing": 1.0},
        {"softcap": 3.0},
        {"z_loss": 1e-2},
        {"weight_classes": "random"},
        {"weight_classes": "random", "label_smoothing": 0.2, "softcap": 2.0, "z_loss": 1e-3},
        {"ignore_index": 5},
    ],
    ids=["smooth", "smooth1", "softcap", "zloss", "weights", "all", "ignore5"],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_options(device, backend, options, reduction):
    x, w, b, t = _inputs(29, 11, 67, torch.float64, scale=3.0, device=device)
    kw = dict(options)
    if kw.get("weight_classes") == "random":
        kw["weight_classes"] = torch.rand(67, dtype=torch.float64, device=device) + 0.1
    if "ignore_index" in kw:
        t = torch.where(t == -100, 7, t)
        t[::3] = kw["ignore_index"]
    _check(backend, x, w, b, t, reduction=reduction, chunk_rows=8, **kw)


@pytest.mark.parametrize("device,backend", ALL)
def test_no_bias_leading_dims_default_chunks(device, backend):
    x, w, _, t = _inputs(0, 13, 45, torch.float32, bias=False, lead=(3, 5, 7), device=device)
    _check(backend, x, w, None, t, reduction="mean")
    _check(backend, x, w, None, t, reduction="none")


@pytest.mark.parametrize("device,backend", ALL)
def test_noncontiguous_operands(device, backend):
    """x strided, the weight a transposed view, target strided: the same result as contiguous ones."""
    x, w, b, t = _inputs(0, 9, 33, torch.float64, lead=(4, 6), device=device)
    xs = noncontiguous(x)
    wt = w.t().contiguous().t()  # (V, H) with strides (1, V)
    ts = noncontiguous(t)
    assert not xs.is_contiguous() and not wt.is_contiguous() and not ts.is_contiguous()
    _check(backend, xs, wt, b, ts, reduction="sum", chunk_rows=5, label_smoothing=0.1)


@pytest.mark.parametrize("device,backend", ALL)
def test_fp32_against_torch_composition(device, backend):
    """float32 against F.cross_entropy(F.linear(...)) in float32, by the 2x-torch rule."""
    x, w, b, t = _inputs(53, 32, 301, torch.float32, scale=2.0, device=device)
    wc = torch.rand(301, device=device) + 0.5

    def torch_fn(a, ww, tt, bb):
        return F.cross_entropy(F.linear(a, ww, bb), tt, weight=wc.to(a.dtype), label_smoothing=0.05)

    def ours(a, ww, tt, bb):
        return FF.linear_cross_entropy(
            a, ww, tt, bb, weight_classes=wc, label_smoothing=0.05, chunk_rows=16, backend=backend
        )

    loss, grads, g = _loss_and_grads(ours, x, w, b, t)
    tl, tg, _ = _loss_and_grads(torch_fn, x, w, b, t, g)
    rl, rg, _ = _loss_and_grads(torch_fn, x.double(), w.double(), b.double(), t, g)
    # torch's float64 run of its own composition is the reference here (independent of fastops.reference)
    assert_close_to_reference(loss, rl, torch_same_dtype=tl, what="loss", is_torch_composition=True)
    for name, a, e, s in zip(("grad_input", "grad_weight", "grad_bias"), grads, rg, tg):
        assert_close_to_reference(a, e, torch_same_dtype=s, what=name, is_torch_composition=True)


@pytest.mark.parametrize("device,backend", ALL)
def test_all_ignored_mean_is_nan(device, backend):
    x, w, b, _ = _inputs(9, 5, 13, torch.float64, device=device)
    t = torch.full((9,), -100, device=device)
    x.requires_grad_()
    loss = FF.linear_cross_entropy(x, w, t, b, backend=backend)
    expected = F.cross_entropy(F.linear(x.detach(), w, b), t)
    assert torch.isnan(loss) and torch.isnan(expected)
    (gx,) = torch.autograd.grad(loss, x)
    assert torch.equal(gx, torch.zeros_like(gx))
    assert FF.linear_cross_entropy(x, w, t, b, reduction="sum", backend=backend).item() == 0.0


def test_low_precision_native_cpu():
    device, backend = "cpu", "native"
    for dtype in (torch.bfloat16, torch.float16):
        x, w, b, t = _inputs(21, 16, 77, dtype, device=device)
        loss, grads, g = _loss_and_grads(
            lambda a, ww, tt, bb: FF.linear_cross_entropy(a, ww, tt, bb, chunk_rows=8, backend=backend), x, w, b, t
        )
        tl, tg, _ = _loss_and_grads(lambda a, ww, tt, bb: F.cross_entropy(F.linear(a, ww, bb), tt), x, w, b, t, g)
        rl, rg, _ = _loss_and_grads(
            lambda a, ww, tt, bb: reference.linear_cross_entropy(a, ww, tt, bb),
            x.double(),
            w.double(),
            b.double(),
            t,
            g,
        )
        assert loss.dtype == dtype
        assert_close_to_reference(loss, rl, torch_same_dtype=tl, what=f"{dtype} loss")
        for name, a, e, s in zip(("grad_input", "grad_weight", "grad_bias"), grads, rg, tg):
            assert_close_to_reference(a, e, torch_same_dtype=s, what=f"{dtype} {name}")


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(device, backend, reduction):
    x, w, b, t = _inputs(7, 4, 9, torch.float64, device=device)
    wc = torch.rand(9, dtype=torch.float64, device=device) + 0.1

    def fn(a, ww, bb):
        return FF.linear_cross_entropy(
            a,
            ww,
            t,
            bb,
            reduction=reduction,
            weight_classes=wc,
            label_smoothing=0.1,
            softcap=2.0,
            z_loss=0.01,
            chunk_rows=3,
            backend=backend,
        )

    inputs = tuple(v.requires_grad_() for v in (x, w, b))
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("device,backend", KERNELS)
def test_raw_bwd_op_double_backward_nonzero(device, backend):
    """The _bwd op's own derivative is a real second derivative (never zero / None)."""
    ns = namespace(backend, "linear_cross_entropy")
    x, w, b, t = _inputs(6, 4, 10, torch.float64, device=device)
    x.requires_grad_()
    loss, stats, *_ = ns.linear_cross_entropy_fwd(x.detach(), w, b, t, None, -100, 0.0, 0.0, 0.0, 0, 0, False)
    g = torch.rand(6, dtype=torch.float64, device=device)
    gx, _, _ = ns.linear_cross_entropy_bwd(g, x, w, b, t, None, stats, -100, 0.0, 0.0, 0.0, 0, 0)
    (hx,) = torch.autograd.grad(gx.sum(), x)
    assert hx.abs().sum() > 0


@pytest.mark.parametrize("device,backend", ALL)
def test_retain_graph_second_backward_same_gradients(device, backend):
    """The first backward scales the forward's precomputed gradients in place; a second one through
    the same graph (retain_graph) must recompute, not scale them again."""
    x, w, b, t = _inputs(13, 6, 29, torch.float64, device=device)
    leaves = [v.requires_grad_() for v in (x, w, b)]
    loss = FF.linear_cross_entropy(x, w, t, b, softcap=4.0, chunk_rows=5, backend=backend) * 3.0
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    for a, c in zip(first, second):
        torch.testing.assert_close(a, c)
    want = torch.autograd.grad(reference.linear_cross_entropy(x, w, t, b, softcap=4.0) * 3.0, leaves)
    for a, e in zip(first, want):
        torch.testing.assert_close(a, e)


def test_checker_rejects_a_missing_softcap_chain_rule():
    """The comparison these tests use fails an implementation that forgets dz/dlogit = 1 - (z / c)^2."""
    x, w, b, t = _inputs(11, 5, 23, torch.float64, scale=3.0)

    def wrong(a, ww, tt, bb):
        logits = F.linear(a, ww, bb)
        z = logits + (4.0 * torch.tanh(logits / 4.0) - logits).detach()  # right values, uncapped gradient
        return F.cross_entropy(z, tt)

    def ref(a, ww, tt, bb):
        return reference.linear_cross_entropy(a, ww, tt, bb, softcap=4.0)

    loss, grads, g = _loss_and_grads(wrong, x, w, b, t)
    rloss, rgrads, _ = _loss_and_grads(ref, x, w, b, t, g)
    assert_close_to_reference(loss, rloss, what="loss")  # the values agree
    with pytest.raises(AssertionError, match="grad_input"):
        assert_close_to_reference(grads[0], rgrads[0], what="grad_input")


@pytest.mark.parametrize("device,backend", ALL)
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()

    def step(x, w, b, t):
        return FF.linear_cross_entropy(x * 2.0, w, t, b, softcap=5.0, backend=backend) * 3.0

    x, w, b, t = _inputs(0, 12, 23, torch.float32, lead=(2, 9), device=device)
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if backend == "triton" else "inductor")
    leaves_e = [v.clone().requires_grad_() for v in (x, w, b)]
    leaves_c = [v.clone().requires_grad_() for v in (x, w, b)]
    eager, got = step(*leaves_e, t), compiled(*leaves_c, t)
    assert sum(counters["graph_break"].values()) == 0
    torch.testing.assert_close(got, eager)
    for ge, gc in zip(torch.autograd.grad(eager, leaves_e), torch.autograd.grad(got, leaves_c)):
        torch.testing.assert_close(gc, ge)


@pytest.mark.parametrize("device,backend", ALL)
def test_torch_func_grad(device, backend):
    x, w, b, t = _inputs(8, 5, 17, torch.float64, device=device)

    def fn(a, ww):
        return FF.linear_cross_entropy(a, ww, t, b, z_loss=0.1, label_smoothing=0.1, backend=backend)

    gx, gw = torch.func.grad(fn, argnums=(0, 1))(x, w)
    ex, ew = torch.autograd.grad(
        reference.linear_cross_entropy(x.requires_grad_(), w.requires_grad_(), t, b, label_smoothing=0.1, z_loss=0.1),
        (x, w),
    )
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gw, ew)


@pytest.mark.parametrize("device,backend", ALL)
def test_module(device, backend):
    x, w, b, t = _inputs(0, 8, 21, torch.float64, lead=(2, 5), device=device)
    wc = torch.rand(21, dtype=torch.float64, device=device) + 0.5
    mod = fastops.nn.LinearCrossEntropyLoss(weight_classes=wc, label_smoothing=0.1, z_loss=1e-3, backend=backend)
    assert "weight_classes" in mod.state_dict()
    got = mod(x, w, t, b)
    want = reference.linear_cross_entropy(x, w, t, b, weight_classes=wc, label_smoothing=0.1, z_loss=1e-3)
    torch.testing.assert_close(got, want)


def test_autocast_cpu_native():
    x, w, b, t = _inputs(16, 8, 40, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = FF.linear_cross_entropy(x, w, t, b, backend="native")
        eager = F.cross_entropy(F.linear(x, w, b), t)
    assert got.dtype == torch.float32 == eager.dtype
    ref = reference.linear_cross_entropy(x.bfloat16().double(), w.bfloat16().double(), t, b.bfloat16().double())
    torch.testing.assert_close(got.double(), ref, rtol=2e-2, atol=2e-2)


def test_autocast_raw_op_casts_gemm_operands_not_class_weight():
    """The registered op under autocast: x / weight / bias in bfloat16 (the GEMMs), class_weight kept,
    loss and stats float32, grads in the autocast dtype."""
    x, w, b, t = _inputs(12, 8, 30, torch.float32)
    cw = torch.rand(30) + 0.5
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats, gx, gw, gb = torch.ops.fastops.linear_cross_entropy_fwd(
            x, w, b, t, cw, -100, 0.0, 0.0, 0.0, 1, 0, True
        )
    assert loss.dtype == stats.dtype == torch.float32
    assert gx.dtype == gw.dtype == gb.dtype == torch.bfloat16
    want = reference.linear_cross_entropy(
        x.bfloat16().double(), w.bfloat16().double(), t, b.bfloat16().double(), weight_classes=cw.double()
    )
    torch.testing.assert_close(loss.double(), want, rtol=2e-2, atol=2e-2)


def test_vmap_native():
    x, w, b, t = _inputs(0, 6, 19, torch.float64, lead=(3, 7))
    got = torch.vmap(lambda a, tt: FF.linear_cross_entropy(a, w, tt, b, backend="native"))(x, t)
    want = torch.stack([reference.linear_cross_entropy(x[i], w, t[i], b) for i in range(3)])
    torch.testing.assert_close(got, want)


# ---- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_bad_inputs(backend):
    x, w, b, t = _inputs(6, 4, 9, torch.float32)
    call = lambda **kw: FF.linear_cross_entropy(  # noqa: E731
        kw.pop("x", x), kw.pop("w", w), kw.pop("t", t), kw.pop("b", b), backend=backend, **kw
    )
    with pytest.raises(ValueError, match="weight must have shape \\(V, 4\\)"):
        call(w=torch.randn(9, 5))
    with pytest.raises(ValueError, match="target must have input's leading shape"):
        call(t=t[:5])
    with pytest.raises(ValueError, match="bias must have shape \\(9,\\)"):
        call(b=torch.randn(8))
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        call(w=w.double())
    with pytest.raises(ValueError, match="probability targets"):
        call(t=torch.rand(6))
    with pytest.raises(TypeError, match="target must be int64"):
        call(t=t.int())
    with pytest.raises(IndexError, match="target\\[2\\] = 9 is out of bounds for 9 classes"):
        call(t=torch.tensor([0, 1, 9, 2, 3, 4]))
    with pytest.raises(IndexError, match="out of bounds"):
        call(t=torch.tensor([0, 1, -3, 2, 3, 4]))
    with pytest.raises(ValueError, match="weight is on meta but x is on cpu"):
        call(w=w.to("meta"))
    with pytest.raises(ValueError, match="class_weight must have shape \\(9,\\)"):
        call(weight_classes=torch.rand(3))
    with pytest.raises(ValueError, match="label_smoothing"):
        call(label_smoothing=1.5)
    with pytest.raises(ValueError, match="softcap must be > 0"):
        call(softcap=-1.0)
    with pytest.raises(ValueError, match="z_loss must be >= 0"):
        call(z_loss=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        call(reduction="avg")


def test_raw_op_bad_inputs_native():
    """The C++ checks, reached without the Python front end (same messages)."""
    x, w, b, t = _inputs(6, 4, 9, torch.float32)
    op = torch.ops.fastops.linear_cross_entropy_fwd.default
    base = [x, w, b, t, None, -100, 0.0, 0.0, 0.0, 1, 0, True]
    with torch.no_grad():
        for i, value, exc, msg in (
            (1, torch.randn(9, 5), ValueError, "weight must have shape"),
            (3, t[:4], ValueError, "target must have shape \\(6,\\)"),
            (3, torch.tensor([0, 1, 2, 3, 4, 100]), IndexError, "target\\[5\\] = 100"),
            (9, 3, ValueError, "reduction must be"),
            (7, -2.0, ValueError, "softcap must be"),
        ):
            args = list(base)
            args[i] = value
            with pytest.raises(exc, match=msg):
                op(*args)


# ---- memory: no (N, V) tensor -------------------------------------------------------------------------


def _peak_cpu_bytes(fn) -> int:
    """Peak of the bytes allocated while ``fn()`` runs, from torch.profiler's memory tracking: each
    op's own allocations count from its start, its own frees from its end (an op's frees of a
    child's buffers are reported on the op itself), so the running total never undercounts a peak."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    for e in prof.events():
        m = e.self_cpu_memory_usage
        if m:
            events.append((e.time_range.start if m > 0 else e.time_range.end, m))
    total = high = 0
    for _, m in sorted(events):
        total += m
        high = max(high, total)
    return high


def test_native_never_allocates_the_logits():
    """Peak allocation of forward + backward stays far below one (N, V) float32 tensor, while torch's
    composition needs several of them. The same measurement of the op run as one chunk (the whole
    logits) must exceed it: the check can fail."""
    n, h, v = 512, 32, 4096  # logits: 8 MiB in float32
    x, w, b, t = _inputs(n, h, v, torch.float32)
    logits_bytes = n * v * 4
    grads = (n * h + v * h + v) * 4  # what every implementation returns

    def run(fn):
        leaves = [x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()]
        return _peak_cpu_bytes(lambda: fn(*leaves).backward())

    ours = run(lambda a, ww, bb: FF.linear_cross_entropy(a, ww, t, bb, backend="native", chunk_rows=32))
    one_chunk = run(lambda a, ww, bb: FF.linear_cross_entropy(a, ww, t, bb, backend="native", chunk_rows=n))
    eager = run(lambda a, ww, bb: F.cross_entropy(F.linear(a, ww, bb), t))
    assert eager - grads >= 2 * logits_bytes, (eager, logits_bytes)
    assert one_chunk - grads >= logits_bytes, (one_chunk, logits_bytes)
    assert ours - grads < logits_bytes / 4, (ours, grads, logits_bytes)
