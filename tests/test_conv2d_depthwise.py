"""Conv2d, native CPU direct kernel for depthwise and few-channel groups (csrc/cpu/conv2d_depthwise.cpp):
forward (bias, fused ReLU), grad_input, grad_weight and grad_bias against the float64 reference over
kernel sizes 1-7, strides 1-3, padding beyond the kernel's reach, dilation, channel multipliers,
groups of 2 and 4 channels, odd sizes, channels_last and NCHW, bias None; gradcheck in float64;
non-finite weights and inputs; several thread counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastops
import fastops.functional as FF
from fastops import reference
from fastops.testing import assert_close_to_reference, assert_same_nonfinite, make_tensor

pytestmark = pytest.mark.skipif(not fastops.backends()["native"]["cpu"][0], reason="native CPU extension not built")

LOW_PRECISION = [torch.float16, torch.bfloat16]

# (input shape, weight shape, stride, padding, dilation, groups, bias, channels_last)
CASES = [
    ((2, 6, 8, 9), (6, 1, 3, 3), 1, 1, 1, 6, True, False),  # depthwise 3x3
    ((3, 5, 13, 11), (5, 1, 3, 3), 2, 1, 1, 5, False, True),  # stride 2, odd sizes
    ((2, 7, 14, 15), (7, 1, 5, 5), 1, 2, 1, 7, True, False),  # 5x5
    ((2, 4, 14, 13), (4, 1, 7, 7), 1, 3, 1, 4, True, True),  # 7x7 (ConvNeXt-like)
    ((1, 6, 19, 17), (6, 1, 7, 7), 3, 3, 1, 6, False, False),  # 7x7 stride 3
    ((2, 6, 12, 10), (6, 1, 3, 3), (2, 1), (3, 0), (2, 1), 6, True, False),  # padding past the reach
    ((2, 3, 9, 9), (6, 1, 3, 3), 1, "same", 2, 3, True, False),  # multiplier 2, dilation 2
    ((2, 3, 8, 7), (9, 1, 5, 3), 2, (2, 1), 1, 3, False, True),  # multiplier 3, rectangular kernel
    ((2, 4, 6, 5), (4, 1, 1, 1), 1, 0, 1, 4, True, False),  # 1x1 depthwise (a per-channel scale)
    ((2, 5, 5, 6), (5, 1, 5, 6), 1, 0, 1, 5, True, False),  # kernel as large as the input: P = Q = 1
    ((2, 8, 10, 11), (8, 2, 3, 3), 1, 1, 1, 4, True, False),  # 2 channels per group
    ((2, 8, 9, 12), (4, 4, 3, 3), 2, 1, 1, 2, False, True),  # 4 in, 2 out per group
    ((3, 8, 11, 9), (12, 2, 3, 3), (1, 2), (1, 2), (1, 2), 4, True, False),  # 2 in, 3 out per group
    ((1, 16, 33, 35), (16, 1, 3, 3), 1, 1, 1, 16, True, False),  # rows in blocks of 8 + 1, 3 vectors wide
    ((2, 3, 28, 41), (3, 1, 3, 3), 2, 1, 1, 3, True, False),  # stride 2, 2 vectors a step + masked; odd 1st column
    ((2, 3, 30, 36), (3, 1, 3, 3), 2, (1, 2), 1, 3, False, False),  # the same from an even grid column
]


def _case_id(case):
    xs, ws, st, pad, dil, groups, bias, cl = case
    return f"x{'x'.join(map(str, xs))}-w{'x'.join(map(str, ws))}-s{st}-p{pad}-d{dil}-g{groups}" + ("-cl" if cl else "")


def _make(case, dtype):
    xs, ws, st, pad, dil, groups, with_bias, cl = case
    x = make_tensor(xs, dtype)
    w = make_tensor(ws, dtype, scale=(ws[1] * ws[2] * ws[3]) ** -0.5)
    b = make_tensor((ws[0],), dtype) if with_bias else None
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w, b, dict(stride=st, padding=pad, dilation=dil, groups=groups)


def _unit(t, ref):
    """Both divided by the reference's RMS: gradients summing N P Q terms grow like sqrt(N P Q)."""
    rms = ref.double().pow(2).mean().sqrt().clamp_min(1e-30)
    return t / rms.to(t.dtype), ref / rms


def _run(fn, x, w, b, kw, seed):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w)]
    bl = None if b is None else b.detach().clone().requires_grad_()
    out = fn(leaves[0], leaves[1], bl, **kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves + ([bl] if bl is not None else []), g.to(out.dtype))
    return out.detach(), grads


def _check(x, w, b, kw, activation):
    seed = int(torch.randint(0, 2**31, ()).item())
    out, grads = _run(lambda *a, **k: FF.conv2d(*a, activation=activation, backend="native", **k), x, w, b, kw, seed)
    b64 = None if b is None else b.double()
    ref, ref_grads = _run(
        lambda *a, **k: reference.conv2d(*a, activation=activation, **k), x.double(), w.double(), b64, kw, seed
    )
    same_out, same_grads = None, [None] * len(grads)
    if x.dtype in LOW_PRECISION:

        def torch_fn(*a, **k):
            y = F.conv2d(*a, **k)
            return y.relu() if activation == "relu" else y

        same_out, same_grads = _run(torch_fn, x, w, b, kw, seed)
    layout = F.conv2d(x, w, b, **kw)
    assert out.shape == layout.shape and out.dtype == x.dtype
    assert out.stride() == layout.stride(), f"memory format {out.stride()} != {layout.stride()}"
    assert_close_to_reference(*_unit(out, ref), torch_same_dtype=same_out, what=f"output ({activation})")
    for name, got, exp, same in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads, same_grads):
        g, e = _unit(got, exp)
        assert_close_to_reference(
            g, e, torch_same_dtype=None if same is None else _unit(same, exp)[0], what=f"{name} ({activation})"
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, dtype):
    for activation in (None, "relu"):
        x, w, b, kw = _make(case, dtype)
        _check(x, w, b, kw, activation)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts(threads):
    # The forward splits (sample, group) items over threads, the backward splits groups (each thread
    # sums its groups' dw / db over all samples): uneven splits and more threads than groups.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for case in (((5, 3, 9, 10), (3, 1, 3, 3), 1, 1, 1, 3, True, False), CASES[12]):
            x, w, b, kw = _make(case, torch.float64)
            _check(x, w, b, kw, "relu")
    finally:
        torch.set_num_threads(before)


def test_gradcheck_float64():
    cases = [
        ((2, 3, 6, 7), (3, 1, 3, 3), 2, 1, 1, 3, True, False),
        ((1, 2, 7, 6), (4, 1, 3, 2), 1, (2, 1), (2, 1), 2, True, True),
        ((2, 4, 5, 6), (4, 2, 3, 3), 1, 1, 1, 2, False, False),
    ]
    for case in cases:
        x, w, b, kw = _make(case, torch.float64)
        inputs = (x.requires_grad_(), w.requires_grad_()) + ((b.requires_grad_(),) if b is not None else ())
        for act in (None, "relu"):

            def fn(*args, kw=kw, act=act):
                return FF.conv2d(*args, activation=act, backend="native", **kw)

            assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nonfinite_inputs(dtype, stride, padding):
    # The kernel's dgrad multiplies the zero border it puts around dy by w, so a non-finite weight's
    # dgrad must take the GEMM path; wgrad's tail vectors must not multiply a zero dy lane by an inf
    # x the output does not use (unpadded: x's last columns are only in the last taps' windows, yet
    # the first taps' vector lanes past Q reach them). inf / NaN exactly where the float64
    # reference has them. Multiplier 2; stride 1 runs the AVX-512 shifted-window kernels, 2 the
    # phase split.
    case = ((2, 4, 9, 19), (8, 1, 3, 3), stride, padding, 1, 4, True, False)
    seed = int(torch.randint(0, 2**31, ()).item())
    for where, index in (("x", (0, 1, 4, 0)), ("x", (1, 3, 8, 18)), ("w", (0, 0, 0, 0)), ("w", (5, 0, 2, 1))):
        x, w, b, kw = _make(case, dtype)
        (x if where == "x" else w)[index] = float("inf")
        out, grads = _run(lambda *a, **k: FF.conv2d(*a, backend="native", **k), x, w, b, kw, seed)
        ref, ref_grads = _run(reference.conv2d, x.double(), w.double(), b.double(), kw, seed)
        for name, got, exp in zip(
            ("output", "grad_input", "grad_weight", "grad_bias"), (out, *grads), (ref, *ref_grads)
        ):
            assert_same_nonfinite(got, exp, f"{name} with inf in {where}{list(index)}")


def test_masked_gradients():
    # Only some gradients asked for: each pass runs alone (and dgrad alone on a non-finite weight).
    x, w, b, kw = _make(((2, 6, 9, 8), (6, 1, 5, 5), 2, 2, 1, 6, True, False), torch.float64)
    ref = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y_ref = reference.conv2d(*ref, **kw)
    g = torch.randn_like(y_ref)
    full = torch.autograd.grad(y_ref, ref, g)
    for i in range(3):
        leaves = [t.detach().clone().requires_grad_(j == i) for j, t in enumerate((x, w, b))]
        y = FF.conv2d(*leaves, backend="native", **kw)
        (got,) = torch.autograd.grad(y, [leaves[i]], g)
        assert_close_to_reference(*_unit(got, full[i]), what=f"gradient {i} alone")
