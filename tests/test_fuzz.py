"""Property fuzz: every op on random argument forms against the float64 reference, values and gradients.

Hypothesis draws an argument form (shapes with odd and zero sizes, dtype, layout, every keyword the
op takes) plus a seed for the tensor values; the op runs on ``native`` and, on tiny shapes (the
Triton interpreter runs every program in Python), on ``triton``, and its output and gradients are
held to :func:`fastops.testing.assert_close_to_reference` against :mod:`fastops.reference` run in
float64 (float64 results to the tight 1e-10 bound).

Budgets come from the hypothesis profile tests/conftest.py loads: a few dozen examples per test by
default (CI), thousands with ``pytest --slow``. The search is seeded from the run's
``FASTOPS_TEST_SEED`` (printed in the header), so ``FASTOPS_TEST_SEED=<seed> pytest tests/test_fuzz.py``
replays a run. A failure prints the drawn ``case`` dict; ``_check_<op>(backend, **case)`` reproduces it
without hypothesis.

Where an op has a kink (ReLU), inputs whose float64 pre-activation lies within rounding distance of
it are rejected (``assume``): there a float32 kernel may legitimately take the other branch, which is
a property of the input, not of the kernel.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, currently_in_test_context, given, seed, settings
from hypothesis import strategies as st

import fastops.functional as FF
from fastops import reference
from fastops.ops import adam as adam_ops
from fastops.testing import (
    FUZZ_EXAMPLES,
    SEED,
    assert_close_to_reference,
    make_tensor,
    noncontiguous,
    without_l2_cancellation,
)

DTYPES = st.sampled_from([torch.float32, torch.float64])
VALUE_SEEDS = st.integers(0, 2**31 - 1)
# |pre-activation| below which a float32 (float64) kernel may round to the other side of the ReLU kink.
KINK_MARGIN = {torch.float32: 1e-5, torch.float64: 1e-12}


def fuzz(backend: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The example budget of ``backend`` under the loaded profile, and a search seed derived from
    FASTOPS_TEST_SEED and the test's name (one run is replayable; tests do not share a stream)."""

    def wrap(test: Callable[..., None]) -> Callable[..., None]:
        test = settings(max_examples=FUZZ_EXAMPLES[backend])(test)
        return seed(SEED ^ zlib.crc32(test.__name__.encode()))(test)

    return wrap


def _grad_out(
    shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0
) -> torch.Tensor:
    """An upstream gradient, in float64 but holding values of ``dtype``: the op under test and the
    float64 reference then differentiate against the same numbers."""
    return (torch.randn(tuple(shape), dtype=torch.float64, generator=gen) * scale).to(dtype).double()


def _run(
    fn: Callable[..., torch.Tensor],
    inputs: list[torch.Tensor | None],
    grad_out: torch.Tensor,
    n_diff: int,
    **kw: Any,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``fn(*inputs, **kw)`` and the gradients of the first ``n_diff`` inputs (those not None).

    The leaves are detached views, so every layout (strided, channels_last, transposed) reaches
    ``fn`` as drawn; callers build the float64 reference inputs before running the op under test.
    """
    leaves = [None if t is None else t.detach().requires_grad_(i < n_diff) for i, t in enumerate(inputs)]
    out = fn(*leaves, **kw)
    wrt = [t for t in leaves[:n_diff] if t is not None]
    grads = torch.autograd.grad(out, wrt, grad_out.to(out.dtype)) if wrt and out.requires_grad else []
    return out.detach(), list(grads)


def _reject_near_kink(pre: torch.Tensor, dtype: torch.dtype) -> None:
    """Reject (hypothesis) or refuse (a direct call) inputs with a pre-activation within rounding of 0."""
    near = bool(((pre.abs() < KINK_MARGIN[dtype]) & (pre != 0)).any())
    if currently_in_test_context():
        assume(not near)
    elif near:
        raise ValueError("a pre-activation lies within rounding distance of the ReLU kink: not a valid case")


def _double(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None or not t.is_floating_point() else t.double()


# ---- cross_entropy -------------------------------------------------------------------------------


@st.composite
def ce_cases(draw: st.DrawFn, tiny: bool) -> dict[str, Any]:
    """logits (C,), (N, C) or (N, C, d1, ..., dk); index (int64 / uint8) or probability targets; the
    rest of F.cross_entropy's arguments."""
    form = draw(st.sampled_from(["1d", "2d", "nd"]))
    c = draw(st.integers(1, 9 if tiny else 300))
    if form == "1d":
        shape: tuple[int, ...] = (c,)
    elif form == "2d":
        shape = (draw(st.integers(0, 5 if tiny else 64)), c)
    else:
        spatial = draw(st.lists(st.integers(0 if not tiny else 1, 3 if tiny else 5), min_size=1, max_size=3))
        shape = (draw(st.integers(0, 2 if tiny else 4)), c, *spatial)
    probs = draw(st.booleans())
    return dict(
        shape=shape,
        dtype=draw(DTYPES),
        probs=probs,
        prob_form=draw(st.sampled_from(["softmax", "any_mass", "with_zeros"])) if probs else "softmax",
        uint8_target=not probs and c <= 255 and draw(st.booleans()),
        ignore_index=draw(st.sampled_from([-100, 0, c - 1, 1000])),
        ignore_frac=draw(st.sampled_from([0.0, 0.3, 1.0])),
        weight=draw(st.sampled_from([None, "positive", "with_zeros"])),
        reduction=draw(st.sampled_from(["none", "mean", "sum"])),
        # 0, 1, or a value float32 tells apart from both: the kernels carry the smoothing in the
        # logits' precision, so 2.2e-308 is 0 to a float32 kernel (torch's float32 path rounds it to 0
        # too) and 1 - 1e-16 is 1 (a known difference from torch, which forms 1 - e in double: with a
        # -inf target logit it gives inf where the kernels give 0 * inf = NaN)
        label_smoothing=draw(
            st.one_of(
                st.sampled_from([0.0, 1.0]),
                st.floats(torch.finfo(torch.float32).tiny, 1.0 - torch.finfo(torch.float32).eps),
            )
        ),
        scale=draw(st.sampled_from([0.1, 3.0, 30.0])),
        offset=draw(st.sampled_from([0.0, 100.0, -1000.0])),
        masked_frac=draw(st.sampled_from([0.0, 0.0, 0.2])),
        layout=draw(st.sampled_from(["contiguous", "noncontiguous"])),
        seed=draw(VALUE_SEEDS),
    )


def _check_cross_entropy(
    backend: str,
    *,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    probs: bool,
    prob_form: str,
    uint8_target: bool,
    ignore_index: int,
    ignore_frac: float,
    weight: str | None,
    reduction: str,
    label_smoothing: float,
    scale: float,
    offset: float,
    masked_frac: float,
    layout: str,
    seed: int,
) -> None:
    """Loss and d loss / d logits of FF.cross_entropy against the float64 reference."""
    gen = torch.Generator().manual_seed(seed)
    cdim = 0 if len(shape) == 1 else 1
    c = shape[cdim]
    x = make_tensor(shape, dtype, scale=scale, generator=gen) + offset
    if masked_frac:
        x[torch.rand(shape, generator=gen) < masked_frac] = float("-inf")  # masked classes, maybe a whole row
    if probs:
        raw = torch.randn(shape, dtype=torch.float64, generator=gen)
        if prob_form == "softmax":
            tgt = torch.softmax(2 * raw, dim=cdim)
        elif prob_form == "any_mass":  # unnormalised non-negative mass: torch takes it as it is
            tgt = raw.abs()
        else:  # distributions with exact zeros (one-hot-like, mixup): 0 mass on some classes
            tgt = torch.softmax(2 * raw, dim=cdim) * (torch.rand(shape, generator=gen) < 0.5)
        target = tgt.to(dtype)
    else:
        rows = shape[:cdim] + shape[cdim + 1 :]
        target = torch.randint(0, c, rows, generator=gen)
        # uint8 cannot hold -100 or 1000: those rows then stay ordinary classes.
        if not uint8_target or 0 <= ignore_index <= 255:
            target[torch.rand(rows, generator=gen) < ignore_frac] = ignore_index
        if uint8_target:
            target = target.to(torch.uint8)
    w = None
    if weight is not None:
        w = (torch.randn(c, dtype=torch.float64, generator=gen).abs() + 0.1).to(dtype)
        if weight == "with_zeros":
            w[torch.rand(c, generator=gen) < 0.3] = 0
    if layout == "noncontiguous":
        x, target = noncontiguous(x), noncontiguous(target)
        w = None if w is None else noncontiguous(w)
    kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    g = _grad_out(shape[:cdim] + shape[cdim + 1 :] if reduction == "none" else (), dtype, gen)
    ref_inputs = [x.double(), target.double() if probs else target.clone(), _double(w)]
    out, (gx,) = _run(
        lambda a, t, ww, **k: FF.cross_entropy(a, t, ww, backend=backend, **k), [x, target, w], g, 1, **kw
    )
    ref, (gref,) = _run(reference.cross_entropy, ref_inputs, g, 1, **kw)
    assert out.dtype == dtype and gx.dtype == dtype
    assert_close_to_reference(out, ref, what="loss")
    assert_close_to_reference(gx, gref, what="grad_input")


@pytest.mark.parametrize("backend", ["native"])
@fuzz("native")
@given(case=ce_cases(tiny=False))
def test_cross_entropy_native(backend: str, case: dict[str, Any]) -> None:
    _check_cross_entropy(backend, **case)


@pytest.mark.triton
@pytest.mark.parametrize("backend", ["triton"])
@fuzz("triton")
@given(case=ce_cases(tiny=True))
def test_cross_entropy_triton(backend: str, case: dict[str, Any]) -> None:
    _check_cross_entropy(backend, **case)


# ---- linear_relu ---------------------------------------------------------------------------------


@st.composite
def linear_relu_cases(draw: st.DrawFn, tiny: bool) -> dict[str, Any]:
    """x (*, K) with zero to three leading dims (zero sizes included), weight (N, K), bias or not."""
    lead = draw(st.lists(st.integers(0, 3 if tiny else 9), min_size=0, max_size=3))
    k = draw(st.integers(0, 6 if tiny else 80))
    return dict(
        x_shape=(*lead, k),
        n=draw(st.integers(1, 5 if tiny else 80)),
        bias=draw(st.booleans()),
        dtype=draw(DTYPES),
        x_layout=draw(st.sampled_from(["contiguous", "noncontiguous"])),
        weight_layout=draw(st.sampled_from(["contiguous", "transposed"])),
        seed=draw(VALUE_SEEDS),
    )


def _check_linear_relu(
    backend: str,
    *,
    x_shape: tuple[int, ...],
    n: int,
    bias: bool,
    dtype: torch.dtype,
    x_layout: str,
    weight_layout: str,
    seed: int,
) -> None:
    """Output and d/dx, d/dweight, d/dbias of FF.linear_relu against the float64 reference."""
    gen = torch.Generator().manual_seed(seed)
    k = x_shape[-1]
    x = make_tensor(x_shape, dtype, generator=gen)
    w = make_tensor((n, k), dtype, scale=1 / max(k, 1) ** 0.5, generator=gen)  # unit-scale outputs
    b = make_tensor((n,), dtype, scale=0.5, generator=gen) if bias else None
    if x_layout == "noncontiguous":
        x = noncontiguous(x)
    if weight_layout == "transposed":
        w = w.t().contiguous().t()
    with torch.no_grad():
        pre = torch.nn.functional.linear(x.double(), w.double(), _double(b))
    _reject_near_kink(pre, dtype)
    m = math.prod(x_shape[:-1])
    # grad_weight / grad_bias sum over the M rows: an upstream gradient of 1/sqrt(M) keeps them unit-scale.
    g = _grad_out((*x_shape[:-1], n), dtype, gen, 1 / max(m, 1) ** 0.5)
    ref_inputs = [x.double(), w.double(), _double(b)]
    out, grads = _run(lambda *a: FF.linear_relu(*a, backend=backend), [x, w, b], g, 3)
    ref, rgrads = _run(reference.linear_relu, ref_inputs, g, 3)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close_to_reference(out, ref, what="output")
    assert len(grads) == len(rgrads) == (3 if bias else 2)
    for name, got, exp in zip(("grad_x", "grad_weight", "grad_bias"), grads, rgrads):
        assert got.dtype == dtype
        assert_close_to_reference(got, exp, what=name)


@pytest.mark.parametrize("backend", ["native"])
@fuzz("native")
@given(case=linear_relu_cases(tiny=False))
def test_linear_relu_native(backend: str, case: dict[str, Any]) -> None:
    _check_linear_relu(backend, **case)


@pytest.mark.triton
@pytest.mark.parametrize("backend", ["triton"])
@fuzz("triton")
@given(case=linear_relu_cases(tiny=True))
def test_linear_relu_triton(backend: str, case: dict[str, Any]) -> None:
    _check_linear_relu(backend, **case)


# ---- conv2d --------------------------------------------------------------------------------------


@st.composite
def conv2d_cases(draw: st.DrawFn, tiny: bool) -> dict[str, Any]:
    """Every F.conv2d argument form: int / pair / 'same' / 'valid' padding, strides, dilations,
    groups (depthwise included), unbatched, channels_last input and / or weight, fused ReLU."""
    groups = draw(st.integers(1, 2 if tiny else 3))
    # The CPU kernel changes route with the channel counts: direct row kernels up to 4 per group, the
    # gather-free passes from 8, Winograd (3x3 stride 1, groups 1) from 16 in and out; the native
    # draws reach all of them. (Winograd's weight gradient, from 64 channels and 28 x 28 outputs, is
    # beyond these sizes: tests/test_conv2d.py's Winograd sweep runs it.)
    # A third of the native draws are in Winograd's class, which random geometry would almost never hit.
    winograd = not tiny and draw(st.integers(0, 2)) == 0
    channels = st.integers(1, 2) if tiny else st.sampled_from([1, 2, 3, 4, 8, 16, 17, 32, 33])
    cg, kg = draw(channels), draw(channels)
    r, s = draw(st.integers(1, 3 if tiny else 5)), draw(st.integers(1, 3 if tiny else 5))
    dilation = (draw(st.integers(1, 2 if tiny else 3)), draw(st.integers(1, 2 if tiny else 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if winograd:
        groups, r, s, dilation, stride = 1, 3, 3, (1, 1), (1, 1)
        cg, kg = draw(st.sampled_from([16, 17, 32, 33])), draw(st.sampled_from([16, 17, 32, 33]))
    pad_form = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    if pad_form == "int":
        p = draw(st.integers(0, 2 if winograd else 3))
        padding: int | tuple[int, int] | str = p
        pads = (p, p)
    elif pad_form == "pair":
        pads = (draw(st.integers(0, 2 if winograd else 3)), draw(st.integers(0, 2 if winograd else 3)))
        padding = pads
    else:
        padding, pads = pad_form, (0, 0)
    if pad_form == "same":
        stride = (1, 1)  # torch: 'same' only with stride 1
        hmin = wmin = 1
    else:
        hmin = max(1, dilation[0] * (r - 1) + 1 - 2 * pads[0])
        wmin = max(1, dilation[1] * (s - 1) + 1 - 2 * pads[1])
    extra = 4 if tiny else 10
    batch = draw(st.sampled_from([None, 1, 2] if tiny else [None, 1, 2, 3]))
    cl_x = batch is not None and draw(st.booleans())
    return dict(
        x_shape=(*(() if batch is None else (batch,)), groups * cg, hmin + draw(st.integers(0, extra)),
                 wmin + draw(st.integers(0, extra))),
        w_shape=(groups * kg, cg, r, s),
        stride=stride if draw(st.booleans()) or stride[0] != stride[1] else stride[0],
        padding=padding,
        dilation=dilation if draw(st.booleans()) or dilation[0] != dilation[1] else dilation[0],
        groups=groups,
        bias=draw(st.booleans()),
        activation=draw(st.sampled_from([None, "relu"])),
        dtype=draw(DTYPES),
        x_layout="channels_last" if cl_x else draw(st.sampled_from(["contiguous", "noncontiguous"])),
        w_layout=draw(st.sampled_from(["contiguous", "channels_last"])) if batch is not None else "contiguous",
        seed=draw(VALUE_SEEDS),
    )  # fmt: skip


def _natural_scales(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    g: torch.Tensor,
    pre: torch.Tensor,
    activation: str | None,
    kw: dict[str, Any],
) -> list[torch.Tensor]:
    """The unit (tolerance rule's premise) of the output and of each gradient: sqrt(mean(sum of the
    squared terms each element adds up)).

    Every element of conv2d's output and gradients is a sum of products (x w + b for the output,
    g for grad_bias, x g for grad_weight, w g for grad_input); sum of squared terms is the same
    reference run on squared operands (it is bilinear in x, w and linear in b) with the squared
    (ReLU-masked) upstream gradient. Its mean is the expected square of the result for random signs,
    the unit tests/test_conv2d.py takes as the result's own RMS, without that estimate collapsing
    when a small tensor's few sums happen to cancel (a 1-element grad_bias summing 4 values).
    """
    mask = (pre > 0).double() if activation == "relu" else 1.0
    sq = [x.double() ** 2, w.double() ** 2, None if b is None else b.double() ** 2]
    out_sq, grads_sq = _run(reference.conv2d, sq, (g * mask) ** 2, 3, **kw)
    return [t.mean().sqrt().clamp_min(1e-30) for t in (out_sq, *grads_sq)]


def _sees_only_padding(size: int, k: int, s: int, p: int, d: int) -> bool:
    """Whether every output position along one dim reads only padding: tap j of output o reads
    o s - p + j d (brute force; fastops.ops.conv2d.sees_only_padding is the closed form)."""
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    return not any(0 <= o * s - p + j * d < size for o in range(out) for j in range(k))


def _torch_layout(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, shape: torch.Size, kw: dict[str, Any]
) -> torch.Tensor:
    """A tensor with the shape and strides F.conv2d gives for these operands. torch 2.14's oneDNN CPU
    conv segfaults when an output dim sees only padding (fastops/ops/conv2d.py: sees_only_padding):
    there torch's own choice of backend and memory format is asked without running the conv."""
    pair = [(v, v) if isinstance(v, int) else tuple(v) for v in (kw["stride"], kw["padding"], kw["dilation"])]
    if isinstance(kw["padding"], str) or not any(
        _sees_only_padding(n, k, s, p, d) for n, k, s, p, d in zip(x.shape[-2:], w.shape[2:], *pair)
    ):
        with warnings.catch_warnings():  # 'same' with an even effective kernel: torch notes its padded copy
            warnings.simplefilter("ignore", UserWarning)
            return F.conv2d(x, w, b, **kw)
    if x.dim() == 3:
        return torch.empty(shape, dtype=x.dtype)
    st, pad, dil = (list(v) for v in pair)
    backend = torch._C._select_conv_backend(x, w, b, st, pad, dil, False, [0, 0], kw["groups"])
    fmt = torch._C._conv_determine_backend_memory_format(x, w, backend)
    return torch.empty(shape, dtype=x.dtype).contiguous(memory_format=fmt)


def _check_conv2d(
    backend: str,
    *,
    x_shape: tuple[int, ...],
    w_shape: tuple[int, int, int, int],
    stride: int | tuple[int, int],
    padding: int | tuple[int, int] | str,
    dilation: int | tuple[int, int],
    groups: int,
    bias: bool,
    activation: str | None,
    dtype: torch.dtype,
    x_layout: str,
    w_layout: str,
    seed: int,
) -> None:
    """Output (values, shape, memory format) and the three gradients of FF.conv2d against the
    float64 reference."""
    gen = torch.Generator().manual_seed(seed)
    x = make_tensor(x_shape, dtype, generator=gen)
    fan_in = w_shape[1] * w_shape[2] * w_shape[3]
    w = make_tensor(w_shape, dtype, scale=fan_in**-0.5, generator=gen)
    b = make_tensor((w_shape[0],), dtype, generator=gen) if bias else None
    if x_layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif x_layout == "noncontiguous":
        x = noncontiguous(x)
    if w_layout == "channels_last":
        w = w.contiguous(memory_format=torch.channels_last)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    with torch.no_grad():
        pre = reference.conv2d(x.double(), w.double(), _double(b), **kw)
        layout = _torch_layout(x, w, b, pre.shape, kw)  # torch's shape and memory format for these operands
    if activation == "relu":
        _reject_near_kink(pre, dtype)
    g = _grad_out(pre.shape, dtype, gen)
    ref_inputs = [x.double(), w.double(), _double(b)]
    out, grads = _run(lambda *a, **k: FF.conv2d(*a, backend=backend, **k), [x, w, b], g, 3, activation=activation, **kw)
    ref, rgrads = _run(reference.conv2d, ref_inputs, g, 3, activation=activation, **kw)
    assert out.dtype == dtype and out.shape == layout.shape
    # The memory format as torch's: the same strides on every dim of size > 1 (a size-1 dim's stride
    # never addresses memory, and torch itself is not consistent about it).
    sized = [(st, ts) for st, ts, n in zip(out.stride(), layout.stride(), out.shape) if n > 1]
    assert all(a == b for a, b in sized), f"memory format: strides {out.stride()} != torch's {layout.stride()}"
    units = _natural_scales(x, w, b, g, pre, activation, kw)
    assert_close_to_reference(out / units[0].to(dtype), ref / units[0], what="output")
    assert len(grads) == len(rgrads) == (3 if bias else 2)
    for name, got, exp, unit in zip(("grad_input", "grad_weight", "grad_bias"), grads, rgrads, units[1:]):
        assert got.dtype == dtype and got.shape == exp.shape
        assert_close_to_reference(got / unit.to(dtype), exp / unit, what=name)


@pytest.mark.parametrize("backend", ["native"])
@fuzz("native")
@given(case=conv2d_cases(tiny=False))
def test_conv2d_native(backend: str, case: dict[str, Any]) -> None:
    _check_conv2d(backend, **case)


@pytest.mark.triton
@pytest.mark.parametrize("backend", ["triton"])
@fuzz("triton")
@given(case=conv2d_cases(tiny=True))
def test_conv2d_triton(backend: str, case: dict[str, Any]) -> None:
    _check_conv2d(backend, **case)


# ---- Adam / AdamW step ---------------------------------------------------------------------------


@st.composite
def adam_cases(draw: st.DrawFn, tiny: bool) -> dict[str, Any]:
    """Parameter lists of mixed shapes (scalars, empty, odd sizes), layouts and dtypes (one call
    groups them per dtype), every hyperparameter and flag, a tensor lr, GradScaler's grad_scale and
    found_inf, one to three consecutive steps from a fresh or a warm state."""
    size = st.integers(0, 5 if tiny else 40)
    shape = st.one_of(st.just(()), st.tuples(size), st.tuples(size, size), st.tuples(size, size, st.integers(1, 3)))
    param = st.tuples(shape, DTYPES, st.sampled_from(["contiguous", "transposed", "noncontiguous"]))
    return dict(
        params=draw(st.lists(param, min_size=1, max_size=3 if tiny else 6)),
        lr=draw(st.sampled_from([1e-3, 1e-2, 0.1])),
        lr_as_tensor=draw(st.booleans()),
        beta1=draw(st.sampled_from([0.0, 0.5, 0.9, 0.99])),
        beta2=draw(st.sampled_from([0.5, 0.9, 0.999, 0.9999])),
        eps=draw(st.sampled_from([1e-8, 1e-6, 1e-3])),
        weight_decay=draw(st.sampled_from([0.0, 0.0, 0.01, 0.1])),
        amsgrad=draw(st.booleans()),
        maximize=draw(st.booleans()),
        decoupled_weight_decay=draw(st.booleans()),
        grad_scale=draw(st.sampled_from([None, None, 1024.0, 3.7])),
        found_inf_at_step=draw(st.sampled_from([None, None, None, 0, 1])),
        steps=draw(st.integers(1, 3)),
        warm_start=draw(st.booleans()),
        seed=draw(VALUE_SEEDS),
    )


def _layout(t: torch.Tensor, form: str) -> torch.Tensor:
    if form == "transposed" and t.dim() >= 2:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if form == "noncontiguous":
        return noncontiguous(t)
    return t


def _check_adam(
    backend: str,
    *,
    params: list[tuple[tuple[int, ...], torch.dtype, str]],
    lr: float,
    lr_as_tensor: bool,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: float | None,
    found_inf_at_step: int | None,
    steps: int,
    warm_start: bool,
    seed: int,
) -> None:
    """``steps`` Adam/AdamW steps of fastops.ops.adam.adam_step_ against the float64 reference:
    parameters, both moments, the amsgrad maximum and the step counts after every step."""
    gen = torch.Generator().manual_seed(seed)
    base: list[list[torch.Tensor]] = [[], [], [], []]  # params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs
    step_counts: list[torch.Tensor] = []
    for shape, dtype, _ in params:
        p = torch.randn(shape, dtype=torch.float64, generator=gen)
        if warm_start:
            # A state an earlier run could have left: |m| / sqrt(v) of order one, v <= max_v.
            v = torch.randn(shape, dtype=torch.float64, generator=gen) ** 2 + 0.01
            m = torch.randn(shape, dtype=torch.float64, generator=gen) * v.sqrt()
            vmax = v + torch.rand(shape, dtype=torch.float64, generator=gen)
            count = float(torch.randint(1, 1000, (), generator=gen))
        else:
            m, v, vmax, count = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape), 0.0
        for lst, t in zip(base, (p, m, v, vmax)):
            lst.append(t.to(dtype))  # rounded once: both sides start from the same values
        step_counts.append(torch.tensor(count, dtype=torch.float32))
    ours = [[_layout(t.clone(), form) for t, (_, _, form) in zip(lst, params)] for lst in base]
    ref = [[t.double() for t in lst] for lst in base]
    ours_steps, ref_steps = [s.clone() for s in step_counts], [s.clone() for s in step_counts]
    hyper = dict(
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        eps=eps,
        amsgrad=amsgrad,
        maximize=maximize,
        decoupled_weight_decay=decoupled_weight_decay,
    )
    first_taken_step = 1 if found_inf_at_step == 0 else 0  # a found_inf step leaves the state fresh
    for step in range(steps):
        grads = [torch.randn(shape, dtype=torch.float64, generator=gen) for shape, _, _ in params]
        if step == first_taken_step and not warm_start and weight_decay and not decoupled_weight_decay:
            # A fresh state's first step is ill-conditioned where the L2 term cancels the gradient.
            def draw(n: int) -> torch.Tensor:
                return torch.randn(n, dtype=torch.float64, generator=gen)

            grads = [without_l2_cancellation(g, p, weight_decay, draw) for g, p in zip(grads, base[0])]
        grads = [_layout((g * (grad_scale or 1.0)).to(dt), form) for g, (_, dt, form) in zip(grads, params)]
        scale = None if grad_scale is None else torch.tensor(grad_scale, dtype=torch.float32)
        found_inf = None
        if found_inf_at_step is not None:
            found_inf = torch.tensor(1.0 if step == found_inf_at_step else 0.0, dtype=torch.float32)
        lr_tensor = torch.tensor(lr) if lr_as_tensor else None  # float32, as torch.optim users pass it
        ref_grads, grads_before = [g.double() for g in grads], [g.clone() for g in grads]
        adam_ops.adam_step_(
            ours[0],
            grads,
            ours[1],
            ours[2],
            ours[3] if amsgrad else [],
            ours_steps,
            lr=lr if lr_tensor is None else lr_tensor,
            grad_scale=scale,
            found_inf=found_inf,
            backend=backend,
            **hyper,
        )
        reference.adam_step_(
            ref[0],
            ref_grads,
            ref[1],
            ref[2],
            ref[3] if amsgrad else [],
            ref_steps,
            lr=lr,
            lr_tensor=lr_tensor,
            grad_scale=scale,
            found_inf=found_inf,
            **hyper,
        )
        names = ["param", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
        for i, (shape, dtype, _) in enumerate(params):
            assert torch.equal(grads[i], grads_before[i]), f"step {step}: grads[{i}] was written (schema: read-only)"
            assert float(ours_steps[i]) == float(ref_steps[i]), f"step {step}: state_steps[{i}]"
            for name, got, exp in zip(names, (lst[i] for lst in ours), (lst[i] for lst in ref)):
                assert got.dtype == dtype and got.shape == shape
                assert_close_to_reference(got, exp, what=f"step {step}: {name}[{i}]")


@pytest.mark.parametrize("backend", ["native"])
@fuzz("native")
@given(case=adam_cases(tiny=False))
def test_adam_native(backend: str, case: dict[str, Any]) -> None:
    _check_adam(backend, **case)


@pytest.mark.triton
@pytest.mark.parametrize("backend", ["triton"])
@fuzz("triton")
@given(case=adam_cases(tiny=True))
def test_adam_triton(backend: str, case: dict[str, Any]) -> None:
    _check_adam(backend, **case)


# ---- the properties must reject wrong implementations ----------------------------------------------


def _wrong_gradient(fn: Callable[..., torch.Tensor], scale: float = 1.001) -> Callable[..., torch.Tensor]:
    """``fn`` with the right values and a gradient w.r.t. its first argument scaled by ``scale``."""

    def wrong(x: torch.Tensor, *args: Any, backend: str = "auto", **kw: Any) -> torch.Tensor:
        return fn(x.detach() + (x - x.detach()) * scale, *args, **kw)

    return wrong


def _wrong_value(fn: Callable[..., torch.Tensor], scale: float = 1 + 1e-4) -> Callable[..., torch.Tensor]:
    def wrong(*args: Any, backend: str = "auto", **kw: Any) -> torch.Tensor:
        return fn(*args, **kw) * scale

    return wrong


CE_CASE = dict(
    shape=(7, 11, 3),
    dtype=torch.float64,
    probs=False,
    prob_form="softmax",
    uint8_target=False,
    ignore_index=-100,
    ignore_frac=0.3,
    weight="positive",
    reduction="mean",
    label_smoothing=0.1,
    scale=3.0,
    offset=0.0,
    masked_frac=0.0,
    layout="contiguous",
    seed=1,
)
LINEAR_CASE = dict(
    x_shape=(3, 5, 17), n=9, bias=True, dtype=torch.float32, x_layout="contiguous", weight_layout="contiguous", seed=1
)
CONV_CASE = dict(
    x_shape=(2, 4, 9, 8),
    w_shape=(6, 2, 3, 3),
    stride=(2, 1),
    padding=1,
    dilation=1,
    groups=2,
    bias=True,
    activation=None,
    dtype=torch.float64,
    x_layout="contiguous",
    w_layout="contiguous",
    seed=1,
)
ADAM_CASE = dict(
    params=[((7, 5), torch.float32, "contiguous"), ((), torch.float64, "contiguous")],
    lr=1e-2,
    lr_as_tensor=False,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    weight_decay=0.1,
    amsgrad=True,
    maximize=False,
    decoupled_weight_decay=False,
    grad_scale=None,
    found_inf_at_step=None,
    steps=2,
    warm_start=True,
    seed=1,
)


_ADAM_STEP = adam_ops.adam_step_


def _adam_with_wrong_beta2(*args: Any, backend: str = "auto", **kw: Any) -> None:
    """The native Adam step with beta2 off by one part in 10^4."""
    _ADAM_STEP(*args, backend="native", **dict(kw, beta2=kw["beta2"] * (1 - 1e-4)))


@pytest.mark.parametrize(
    "target,attr,wrong,check,case",
    [
        (FF, "cross_entropy", _wrong_value(reference.cross_entropy), _check_cross_entropy, CE_CASE),
        (FF, "cross_entropy", _wrong_gradient(reference.cross_entropy), _check_cross_entropy, CE_CASE),
        (FF, "linear_relu", _wrong_value(reference.linear_relu), _check_linear_relu, LINEAR_CASE),
        (FF, "linear_relu", _wrong_gradient(reference.linear_relu), _check_linear_relu, LINEAR_CASE),
        (FF, "conv2d", _wrong_value(reference.conv2d), _check_conv2d, CONV_CASE),
        (FF, "conv2d", _wrong_gradient(reference.conv2d), _check_conv2d, CONV_CASE),
        (adam_ops, "adam_step_", _adam_with_wrong_beta2, _check_adam, ADAM_CASE),
    ],
    ids=["ce-value", "ce-grad", "linear-value", "linear-grad", "conv-value", "conv-grad", "adam-beta2"],
)
def test_properties_reject_wrong_implementations(monkeypatch, target, attr, wrong, check, case):
    check("native", **case)  # the case passes with the real op...
    monkeypatch.setattr(target, attr, wrong)
    with pytest.raises(AssertionError):
        check("native", **case)  # ...and fails with a subtly wrong one
