"""The Triton fused linear + cross-entropy ops (issue 13): ``fastops_triton::linear_cross_entropy_{fwd,bwd}``.

Ground truth: ``fastops.reference.linear_cross_entropy`` in float64 (itself checked against F.linear,
the soft cap, F.cross_entropy and the z-loss). Shapes stay tiny (the CPU interpreter
runs each program as numpy ops, Python-slow per op): N=37, H=19, V=131 with 8-row chunks, so the last chunk is ragged.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import fastops
import fastops.triton
from fastops.testing import assert_close_to_reference, make_tensor, noncontiguous, triton_device_params

pytestmark = pytest.mark.triton

if not fastops.triton.AVAILABLE:
    pytest.skip(f"the Triton backend is unavailable: {fastops.triton.REASON}", allow_module_level=True)

import fastops.triton.linear_cross_entropy as TLCE  # noqa: E402  (registers the ops)

OPS = torch.ops.fastops_triton
REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}
N, H, V, CHUNK = 37, 19, 131, 8
IGNORE = -100


DEVICES = triton_device_params()

# name -> (ignore rows, class weights, label smoothing, softcap, z_loss, bias)
CONFIGS = {
    "plain": (False, False, 0.0, 0.0, 0.0, True),
    "ignore_index": (True, False, 0.0, 0.0, 0.0, True),
    "class_weights": (True, True, 0.0, 0.0, 0.0, True),
    "smoothing": (False, False, 0.1, 0.0, 0.0, True),
    "weighted_smoothing": (True, True, 0.2, 0.0, 0.0, True),
    "softcap": (False, False, 0.0, 2.5, 0.0, True),
    "z_loss": (True, False, 0.0, 0.0, 1e-2, True),
    "no_bias": (False, False, 0.0, 0.0, 0.0, False),
    "everything": (True, True, 0.1, 3.0, 1e-3, True),
}


def reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    weight_classes: torch.Tensor | None,
    softcap: float | None,
    z_loss: float,
) -> torch.Tensor:
    """The ground truth: fastops.reference.linear_cross_entropy (differentiable; run it in float64)."""
    return fastops.reference.linear_cross_entropy(
        x, weight, target, bias, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
        weight_classes=weight_classes, softcap=softcap, z_loss=z_loss,
    )  # fmt: skip


def torch_composition(
    x: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    weight_classes: torch.Tensor | None,
    softcap: float | None,
    z_loss: float,
) -> torch.Tensor:
    """Issue 13's semantics spelled with torch's own ops: F.linear, the cap, F.cross_entropy, the z-loss."""
    logits = F.linear(x, weight, bias)
    z = softcap * torch.tanh(logits / softcap) if softcap else logits
    kw = {"weight": weight_classes, "ignore_index": ignore_index, "label_smoothing": label_smoothing}
    valid = target != ignore_index
    per_row = F.cross_entropy(z, target, reduction="none", **kw) + z_loss * torch.logsumexp(z, 1) ** 2 * valid
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    w_y = weight_classes[torch.where(valid, target, 0)] if weight_classes is not None else torch.ones_like(per_row)
    loss = per_row.sum() / (w_y * valid).sum()
    if z_loss == 0:  # this "mean" is torch's
        torch.testing.assert_close(loss, F.cross_entropy(z, target, reduction="mean", **kw), rtol=1e-12, atol=1e-12)
    return loss


def _case(
    config: str, dtype: torch.dtype, device: str, n: int = N, h: int = H, v: int = V
) -> tuple[tuple[torch.Tensor, ...], dict[str, object]]:
    """((x, weight, bias | None, target, class_weight | None), op keyword values) for ``config``."""
    ignore, weighted, smoothing, softcap, z_loss, with_bias = CONFIGS[config]
    x = make_tensor((n, h), dtype, device)
    weight = make_tensor((v, h), dtype, device, scale=0.5)  # logits of a few units: a spread softmax
    bias = make_tensor((v,), dtype, device) if with_bias else None
    target = torch.randint(0, v, (n,), device=device)
    if ignore:
        target[torch.randperm(n, device=device)[: max(1, n // 4)]] = IGNORE
    class_weight = (torch.rand(v, dtype=torch.float64) + 0.5).to(device=device, dtype=dtype) if weighted else None
    opts = {"label_smoothing": smoothing, "softcap": softcap, "z_loss": z_loss}
    return (x, weight, bias, target, class_weight), opts


def _reference_loss_and_grads(
    tensors: tuple[torch.Tensor, ...], opts: dict[str, object], reduction: int, grad_loss: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """The float64 reference loss and its vector-Jacobian product with grad_loss for x, weight, bias."""
    x, weight, bias, target, class_weight = tensors
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    loss = reference(
        leaves[0], leaves[1], target, leaves[2], ignore_index=IGNORE, reduction=REDUCTIONS[reduction],
        label_smoothing=opts["label_smoothing"], weight_classes=None if class_weight is None else class_weight.double(),
        softcap=opts["softcap"] or None, z_loss=opts["z_loss"],
    )  # fmt: skip
    wanted = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(loss, wanted, grad_loss.double()))
    return loss.detach(), tuple(next(grads) if t is not None else None for t in leaves)


def _fwd(tensors: tuple[torch.Tensor, ...], opts: dict[str, object], reduction: int, chunk_rows: int, grad: bool):
    x, weight, bias, target, class_weight = tensors
    return OPS.linear_cross_entropy_fwd(
        x, weight, bias, target, class_weight, IGNORE, opts["label_smoothing"], opts["softcap"], opts["z_loss"],
        reduction, chunk_rows, grad,
    )  # fmt: skip


def _bwd(grad_loss: torch.Tensor, tensors: tuple[torch.Tensor, ...], stats: torch.Tensor, opts, reduction, chunk_rows):
    x, weight, bias, target, class_weight = tensors
    return OPS.linear_cross_entropy_bwd(
        grad_loss, x, weight, bias, target, class_weight, stats, IGNORE, opts["label_smoothing"], opts["softcap"],
        opts["z_loss"], reduction, chunk_rows,
    )  # fmt: skip


def _check_grads(got: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor | None, ...], what: str) -> None:
    for name, g, e in zip(("grad_x", "grad_weight", "grad_bias"), got, expected):
        if e is None:
            assert g.shape == (0,), f"{what} {name}: expected an empty tensor without bias, got {tuple(g.shape)}"
        else:
            assert_close_to_reference(g, e, what=f"{what} {name}")


def _check_stats(stats: torch.Tensor, tensors: tuple[torch.Tensor, ...], softcap: float) -> None:
    x, weight, bias, _, _ = tensors
    logits = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    z = softcap * torch.tanh(logits / softcap) if softcap else logits
    m = z.amax(1)
    assert_close_to_reference(stats[0], m, what="stats[0] (row max)")
    assert_close_to_reference(stats[1], torch.logsumexp(z - m[:, None], 1), what="stats[1] (log sum exp(z - m))")


@pytest.mark.parametrize("reduction", [0, 1, 2], ids=list(REDUCTIONS.values()))
def test_ground_truth_is_torch_composition(reduction: int) -> None:
    """The reference the kernels are held to agrees with F.linear + F.cross_entropy + z-loss (no kernels run)."""
    for config in CONFIGS:
        (x, weight, bias, target, cw), opts = _case(config, torch.float64, "cpu")
        kw = {
            "ignore_index": IGNORE, "reduction": REDUCTIONS[reduction], "label_smoothing": opts["label_smoothing"],
            "weight_classes": cw, "softcap": opts["softcap"] or None, "z_loss": opts["z_loss"],
        }  # fmt: skip
        torch.testing.assert_close(
            reference(x, weight, target, bias, **kw), torch_composition(x, weight, target, bias, **kw),
            rtol=1e-12, atol=1e-12,
        )  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reduction", [0, 1, 2], ids=list(REDUCTIONS.values()))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference(device: str, dtype: torch.dtype, reduction: int, config: str) -> None:
    """Loss, stats, the forward's own gradients (mean / sum) and the backward op's, ragged last chunk."""
    tensors, opts = _case(config, dtype, device)
    acc = stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    loss, stats, *grads = _fwd(tensors, opts, reduction, CHUNK, True)
    assert loss.dtype == acc and stats.dtype == stats_dtype and stats.shape == (2, N)
    _check_stats(stats, tensors, opts["softcap"])
    if reduction == 0:
        assert loss.shape == (N,)
        assert [g.shape for g in grads] == [(0,)] * 3  # no precomputed gradients for "none"
        grad_loss = make_tensor((N,), acc, device)
        ref_loss, ref_grads = _reference_loss_and_grads(tensors, opts, reduction, grad_loss)
        assert_close_to_reference(loss, ref_loss, what="loss")
        if CONFIGS[config][0]:
            assert bool((loss[tensors[3] == IGNORE] == 0).all()), "ignored rows must have an exact 0 loss"
    else:
        assert loss.shape == ()
        ref_loss, ref_grads = _reference_loss_and_grads(tensors, opts, reduction, torch.ones((), dtype=acc))
        assert_close_to_reference(loss, ref_loss, what="loss")
        _check_grads(grads, ref_grads, "forward")
        grad_loss = torch.full((), 1.7, dtype=acc, device=device)
        ref_grads = tuple(None if g is None else 1.7 * g for g in ref_grads)
    got = _bwd(grad_loss, tensors, stats, opts, reduction, CHUNK)
    _check_grads(got, ref_grads, "backward op")
    if CONFIGS[config][0]:
        x_rows = got[0][tensors[3] == IGNORE]
        assert bool((x_rows == 0).all()), "ignored rows must have an exact 0 gradient"


@pytest.mark.parametrize("device", DEVICES)
def test_rows_and_class_tiles(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Class tiles of 32 (V = 131: five, the last ragged) with, under the interpreter, 4 chunk rows a
    program (8-row chunks: two programs; the last chunk's 5 rows: the second program has 1 live
    row): test_matches_reference's checks on the tiling the default sizes never pick at V = 131."""
    monkeypatch.setattr(TLCE, "MAX_BLOCK_V", 32)
    monkeypatch.setattr(TLCE, "INTERPRETER_TILE", 128)
    assert TLCE._block_v(V, CHUNK, torch.float32)[:2] == ((4, 32) if device == "cpu" else (1, 32))
    for config, reduction in (("everything", 0), ("everything", 1), ("no_bias", 2), ("softcap", 1)):
        test_matches_reference(device, torch.float32, reduction, config)


@pytest.mark.parametrize("device", DEVICES)
def test_chunking_does_not_change_results(device: str) -> None:
    """One chunk, the automatic size (0), 8 rows and 1 row: the same values up to summation order."""
    tensors, opts = _case("everything", torch.float64, device)
    results = [_fwd(tensors, opts, 1, rows, True) for rows in (0, N, CHUNK, 1)]
    for rows, res in zip((N, CHUNK, 1), results[1:]):
        for name, a, b in zip(("loss", "stats", "grad_x", "grad_weight", "grad_bias"), res, results[0]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=lambda m, n=name, r=rows: f"{n} {r}: {m}")


def test_chunk_rows_rule() -> None:
    """The sweep's chunk size (the glue's chunk_rows_for, csrc's rule): about max(N H, V H) / 2 logits per
    chunk, at most N V / 8, at least min(N, 64) rows, a multiple of 8 where possible; an explicit
    chunk_rows wins (clamped to N)."""
    assert TLCE.chunk_rows_for(4096, 4096, 128256, 0) == 512  # an LM head: N/8 rows (the memory target)
    assert TLCE.chunk_rows_for(65536, 4096, 32000, 0) == 4192  # N H / 2 / V = 4194.3, down to a multiple of 8
    assert TLCE.chunk_rows_for(37, 19, 131, 0) == 32  # min(N, 64) rows, rounded down to a multiple of 8
    assert TLCE.chunk_rows_for(5, 19, 131, 0) == 5
    assert TLCE.chunk_rows_for(37, 19, 131, 100) == 37 and TLCE.chunk_rows_for(37, 19, 131, 8) == 8
    assert TLCE.chunk_rows_for(0, 19, 131, 0) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_mean_with_no_weight_is_nan(device: str) -> None:
    """Every row ignored: "mean" is 0/0 = NaN (torch's), "sum" 0; gradients exact zeros (ignored rows)."""
    tensors, opts = _case("plain", torch.float64, device)
    x, weight, bias, target, cw = tensors
    target = torch.full_like(target, IGNORE)
    tensors = (x, weight, bias, target, cw)
    loss, _, gx, gw, gb = _fwd(tensors, opts, 1, CHUNK, True)
    assert loss.isnan()
    assert bool((gx == 0).all() and (gw == 0).all() and (gb == 0).all())
    loss, _, gx, gw, gb = _fwd(tensors, opts, 2, CHUNK, True)
    assert loss.item() == 0.0 and bool((gx == 0).all() and (gw == 0).all() and (gb == 0).all())


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device: str) -> None:
    tensors, opts = _case("plain", torch.float32, device, n=0)
    loss, stats, gx, gw, gb = _fwd(tensors, opts, 1, 0, True)
    assert loss.isnan() and stats.shape == (2, 0) and gx.shape == (0, H)
    assert bool((gw == 0).all() and (gb == 0).all())
    loss, *_ = _fwd(tensors, opts, 0, 0, False)
    assert loss.shape == (0,)


def _triton_takes(device: str, dtype: torch.dtype) -> bool:
    """Whether the support table (the glue's register_op) lists dtype for the Triton kernels on device."""
    return dtype in fastops._backend._SUPPORT["linear_cross_entropy"]["triton"].get(device, ())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_low_precision(device: str, dtype: torch.dtype) -> None:
    """fp16 / bf16 inputs: the loss in float32, gradients in the input dtype within 2x torch's own error
    (grad_weight / grad_bias summed over chunks in float32, rounded once)."""
    tensors, opts = _case("everything", dtype, device)
    if not _triton_takes(device, dtype):  # the raw op refuses what backend="triton" refuses
        with pytest.raises(TypeError, match=f"take .* x, got {dtype}"):
            _fwd(tensors, opts, 1, CHUNK, True)
        return
    loss, stats, gx, gw, gb = _fwd(tensors, opts, 1, CHUNK, True)
    assert loss.dtype == torch.float32 and (gx.dtype, gw.dtype, gb.dtype) == (dtype,) * 3
    ref_loss, ref_grads = _reference_loss_and_grads(tensors, opts, 1, torch.ones((), dtype=torch.float64))
    x, weight, bias, target, cw = tensors
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    torch_loss = reference(
        *leaves[:2], target, leaves[2], ignore_index=IGNORE, reduction="mean", label_smoothing=0.1,
        weight_classes=cw, softcap=3.0, z_loss=1e-3,
    )  # fmt: skip
    torch_grads = torch.autograd.grad(torch_loss, leaves)
    # The loss is float32, computed from logits the GEMM rounded to the input dtype (as F.linear does):
    # the project's low-precision rule (2x torch's own error + one ulp of the input dtype), not float32's.
    torch_err = (torch_loss.double() - ref_loss).abs().item()
    floor = torch.finfo(dtype).eps * max(1.0, ref_loss.abs().item())
    assert (loss.double() - ref_loss).abs().item() <= 2 * torch_err + floor, (loss, ref_loss, torch_loss)
    for name, g, e, t in zip(("grad_x", "grad_weight", "grad_bias"), (gx, gw, gb), ref_grads, torch_grads):
        assert_close_to_reference(g, e, torch_same_dtype=t, what=name)


@pytest.mark.parametrize("device", DEVICES)
def test_noncontiguous_inputs(device: str) -> None:
    """Any strides: the same results as contiguous copies."""
    tensors, opts = _case("everything", torch.float64, device)
    strided = tuple(noncontiguous(t) if t is not None and t.is_floating_point() else t for t in tensors)
    strided = (*strided[:3], noncontiguous(tensors[3]), strided[4])
    assert not strided[0].is_contiguous() and not strided[3].is_contiguous()
    for reduction in (0, 1):
        expected = _fwd(tensors, opts, reduction, CHUNK, True)
        got = _fwd(strided, opts, reduction, CHUNK, True)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        grad_loss = torch.ones_like(expected[0])
        for a, b in zip(
            _bwd(grad_loss, strided, expected[1], opts, reduction, CHUNK),
            _bwd(grad_loss, tensors, expected[1], opts, reduction, CHUNK),
        ):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


class _RawOpLoss(torch.autograd.Function):
    """The raw ops' own forward / backward pair as an autograd.Function: gradcheck of the kernels
    without the glue's registered autograd."""

    @staticmethod
    def forward(ctx, x, weight, bias, target, class_weight, opts, reduction, chunk_rows):  # noqa: ANN001, ANN205
        loss, stats, *_ = OPS.linear_cross_entropy_fwd(
            x, weight, bias, target, class_weight, IGNORE, opts["label_smoothing"], opts["softcap"], opts["z_loss"],
            reduction, chunk_rows, False,
        )  # fmt: skip
        ctx.save_for_backward(x, weight, bias, target, class_weight, stats)
        ctx.config = (opts, reduction, chunk_rows)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001, ANN205
        x, weight, bias, target, class_weight, stats = ctx.saved_tensors
        opts, reduction, chunk_rows = ctx.config
        gx, gw, gb = _bwd(grad_loss, (x, weight, bias, target, class_weight), stats, opts, reduction, chunk_rows)
        return gx, gw, gb if bias is not None else None, None, None, None, None, None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", [0, 1, 2], ids=list(REDUCTIONS.values()))
def test_gradcheck_float64(device: str, reduction: int) -> None:
    for config in ("everything", "no_bias"):
        (x, weight, bias, target, cw), opts = _case(config, torch.float64, device, n=6, h=4, v=7)
        leaves = [t.requires_grad_() for t in (x, weight, bias) if t is not None]

        def fn(*ts: torch.Tensor, target=target, cw=cw, opts=opts, with_bias=bias is not None) -> torch.Tensor:
            b = ts[2] if with_bias else None
            return _RawOpLoss.apply(ts[0], ts[1], b, target, cw, opts, reduction, 4)

        assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", [0, 1, 2], ids=list(REDUCTIONS.values()))
def test_gradcheck_registered_autograd(device: str, reduction: int) -> None:
    """The ops' registered autograd (the glue's register(fastops_triton)): first and second derivatives."""
    if device == "cpu" and reduction == 1:
        # Under the interpreter each case takes ~45 s; reduction="mean" through this same registered
        # autograd (reached by FF.linear_cross_entropy, softcap, z-loss, smoothing, class weights,
        # ignored rows, a ragged chunk) is test_linear_cross_entropy.py::test_gradcheck[mean-cpu-triton].
        pytest.skip("Triton interpreter: 'mean' is test_linear_cross_entropy.py::test_gradcheck's")
    (x, weight, bias, target, cw), opts = _case("everything", torch.float64, device, n=6, h=4, v=7)
    inputs = tuple(t.requires_grad_() for t in (x, weight, bias))

    def fn(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _fwd((a, w, b, target, cw), opts, reduction, 4, True)[0]

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def _op_samples(device: str) -> list[tuple[str, int, bool]]:
    return [("everything", 1, True), ("no_bias", 2, False), ("z_loss", 0, False), ("softcap", 2, True)]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device: str) -> None:
    for config, reduction, compute_grad in _op_samples(device):
        (x, weight, bias, target, cw), opts = _case(config, torch.float64, device, n=11, h=5, v=13)
        scalars = (IGNORE, opts["label_smoothing"], opts["softcap"], opts["z_loss"], reduction, 4)
        torch.library.opcheck(OPS.linear_cross_entropy_fwd, (x, weight, bias, target, cw, *scalars, compute_grad))
        # with inputs that require grad: opcheck's autograd and aot_dispatch checks run the registered backward
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
        torch.library.opcheck(OPS.linear_cross_entropy_fwd, (*leaves, target, cw, *scalars, compute_grad))
        loss, stats, *_ = OPS.linear_cross_entropy_fwd(x, weight, bias, target, cw, *scalars, False)
        grad = torch.randn_like(loss)
        torch.library.opcheck(OPS.linear_cross_entropy_bwd, (grad, x, weight, bias, target, cw, stats, *scalars))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device: str) -> None:
    """Both op calls inside one compiled graph, with torch ops around them, match eager."""
    torch._dynamo.reset()
    tensors, opts = _case("everything", torch.float32, device)
    x, weight, bias, target, cw = tensors

    def step(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss, stats, gx, gw, gb = OPS.linear_cross_entropy_fwd(
            x * 2.0, weight, bias, target, cw, IGNORE, 0.1, 3.0, 1e-3, 1, 8, True
        )
        rows, st, *_ = OPS.linear_cross_entropy_fwd(x, weight, bias, target, cw, IGNORE, 0.1, 3.0, 1e-3, 0, 8, False)
        bx, bw, bb = OPS.linear_cross_entropy_bwd(
            torch.ones_like(rows) * 0.5, x, weight, bias, target, cw, st, IGNORE, 0.1, 3.0, 1e-3, 0, 8
        )
        return loss * 3.0, gx, gw + bw, gb, rows, bx

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    for got, expected in zip(compiled(x, weight, bias), step(x, weight, bias)):
        torch.testing.assert_close(got, expected)


def _bad_calls(device: str) -> list[tuple[Callable[[], object], type[Exception], str]]:
    (x, weight, bias, target, cw), opts = _case("everything", torch.float32, device, n=4, h=3, v=5)

    def fwd(**kw: object) -> Callable[[], object]:
        args = {"x": x, "weight": weight, "bias": bias, "target": target, "class_weight": cw, "ignore_index": IGNORE,
                "label_smoothing": 0.1, "softcap": 0.0, "z_loss": 0.0, "reduction": 1, "chunk_rows": 0,
                "compute_grad": True}  # fmt: skip
        args.update(kw)
        return lambda: OPS.linear_cross_entropy_fwd(*args.values())

    bad_target = target.clone()
    bad_target[2] = 5
    return [
        (fwd(x=x[0]), ValueError, "linear_cross_entropy_fwd: x must have shape (N, H), got (3,)"),
        (fwd(weight=weight[:, :2]), ValueError, "weight must have shape (V, 3) for x of shape (4, 3), got (5, 2)"),
        (fwd(weight=weight.double()), TypeError, "weight must have x's dtype Float, got Double"),
        (fwd(bias=bias[:4]), ValueError, "bias must have shape (5,), got (4,)"),
        (fwd(target=target[:3]), ValueError, "target must have shape (4,) for x of shape (4, 3), got (3,)"),
        (fwd(target=target.int()), TypeError, "target must be int64 class indices, got Int"),
        (fwd(class_weight=cw[:2]), ValueError, "class_weight must have shape (5,), got (2,)"),
        (fwd(label_smoothing=1.5), ValueError, "label_smoothing must be between 0.0 and 1.0, got 1.5"),
        (fwd(softcap=-1.0), ValueError, "softcap must be >= 0 and finite, got -1"),
        (fwd(softcap=float("inf")), ValueError, "softcap must be >= 0 and finite, got inf"),
        (fwd(z_loss=-0.5), ValueError, "z_loss must be >= 0 and finite, got -0.5"),
        (fwd(reduction=3), ValueError, "reduction must be 0 (none), 1 (mean) or 2 (sum), got 3"),
        (fwd(chunk_rows=-1), ValueError, "chunk_rows must be >= 0, got -1"),
        (fwd(target=bad_target), IndexError, "target[2] = 5 is out of bounds for 5 classes"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_raise_clear_errors(device: str) -> None:
    for call, exc, message in _bad_calls(device):
        with pytest.raises(exc) as info:
            call()
        assert message in str(info.value), f"expected {message!r} in {str(info.value)!r}"
    (x, weight, bias, target, cw), opts = _case("plain", torch.float32, device, n=4, h=3, v=5)
    _, stats, *_ = OPS.linear_cross_entropy_fwd(x, weight, bias, target, cw, IGNORE, 0.0, 0.0, 0.0, 0, 0, False)
    scalars = (IGNORE, 0.0, 0.0, 0.0, 0, 0)
    with pytest.raises(ValueError, match=r"grad_loss must have shape \(4,\), got \(\)"):
        OPS.linear_cross_entropy_bwd(torch.ones((), device=device), x, weight, bias, target, cw, stats, *scalars)
    ones = torch.ones(4, device=device)
    with pytest.raises(TypeError, match="stats must be Float for Float x, got Double"):
        OPS.linear_cross_entropy_bwd(ones, x, weight, bias, target, cw, stats.double(), *scalars)
