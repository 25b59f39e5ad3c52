"""Conv2d: every backend against the float64 reference over a parameter sweep (strides, dilations,
'same' / 'valid' / asymmetric padding, groups, odd sizes, kernel sizes, batch 1 and more, unbatched,
channels_last), gradcheck, opcheck, torch.compile, module parity for every padding_mode, a swapped
ResNet basic block, bad inputs, and wrong implementations the checker must reject."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastops
import fastops.functional as FF
from fastops import reference
from fastops.ops import conv2d as conv2d_ops
from fastops.ops import namespace
from fastops.testing import (
    HAS_CUDA,
    LOW_PRECISION,
    assert_close_to_reference,
    assert_same_nonfinite,
    device_backend_params,
    is_fastops_node,
    kernel_dtypes,
    low_precision_native_cpu,
    make_tensor,
    noncontiguous,
    relu_decisions,
    to_unit_scale,
)

ALL = device_backend_params()
KERNEL_BACKENDS = device_backend_params(("native", "triton"), ("native", "triton"))


# (input shape, weight shape, stride, padding, dilation, groups, bias, channels_last)
SWEEP = [
    ((2, 3, 9, 7), (4, 3, 3, 3), 1, 1, 1, 1, True, False),
    ((1, 4, 11, 10), (6, 4, 3, 3), 2, 1, 1, 1, True, False),
    ((3, 4, 13, 9), (6, 2, 3, 2), (3, 2), (2, 0), (2, 1), 2, False, False),
    ((2, 6, 8, 9), (6, 1, 3, 3), 1, "same", 1, 6, True, False),  # depthwise
    ((2, 6, 8, 9), (12, 1, 5, 3), 1, 2, 1, 6, False, True),  # depthwise, channel multiplier 2
    ((2, 5, 7, 7), (3, 5, 1, 1), 1, 0, 1, 1, True, False),  # pointwise: no gather
    ((2, 5, 7, 7), (3, 5, 1, 1), 2, 0, 1, 1, False, True),
    ((1, 3, 15, 13), (4, 3, 7, 7), 2, 3, 1, 1, True, False),  # stem-like 7x7 / 2
    ((2, 4, 10, 11), (4, 4, 4, 4), 1, "same", 1, 1, True, False),  # even kernel: asymmetric 'same'
    ((2, 4, 9, 10), (4, 2, 2, 3), 1, "same", (2, 1), 2, False, True),  # odd total on rows only
    ((2, 3, 8, 8), (2, 3, 3, 3), 3, "valid", 2, 1, True, False),
    ((3, 7, 9), (4, 3, 3, 3), 1, (0, 2), 1, 1, True, False),  # unbatched
    ((2, 4, 6, 5), (8, 4, 6, 5), 1, 0, 1, 1, True, False),  # kernel as large as the input: P = Q = 1
    ((2, 8, 12, 12), (8, 4, 3, 3), 1, 1, 1, 2, True, True),
]
# The Triton interpreter runs every program in Python: the same forms at the smallest sizes.
SWEEP_TRITON = [
    ((2, 3, 6, 5), (4, 3, 3, 3), 1, 1, 1, 1, True, False),
    ((1, 4, 7, 6), (4, 2, 3, 2), (2, 3), (1, 0), (2, 1), 2, False, True),
    ((2, 3, 5, 6), (3, 1, 3, 3), 1, "same", 1, 3, True, False),
    ((1, 2, 7, 7), (3, 2, 4, 4), 1, "same", 1, 1, True, False),
    ((3, 5, 5), (2, 3, 1, 1), 2, 0, 1, 1, True, False),
    ((1, 2, 9, 8), (2, 2, 5, 5), 3, 2, 1, 1, False, False),
]


def _case_id(case):
    xs, ws, st, pad, dil, groups, bias, cl = case
    return f"x{'x'.join(map(str, xs))}-w{'x'.join(map(str, ws))}-s{st}-p{pad}-d{dil}-g{groups}" + ("-cl" if cl else "")


def _make(case, dtype, device):
    xs, ws, st, pad, dil, groups, with_bias, cl = case
    x = make_tensor(xs, dtype, device)
    fan_in = ws[1] * ws[2] * ws[3]
    w = make_tensor(ws, dtype, device, scale=fan_in**-0.5)  # unit-scale outputs
    b = make_tensor((ws[0],), dtype, device) if with_bias else None
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    kw = dict(stride=st, padding=pad, dilation=dil, groups=groups)
    return x, w, b, kw


def _run(fn, x, w, b, kw, grad_seed):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w)]
    # clone() keeps x's memory format (preserve_format)
    bl = None if b is None else b.detach().clone().requires_grad_()
    out = fn(leaves[0], leaves[1], bl, **kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    inputs = leaves + ([bl] if bl is not None else [])
    grads = torch.autograd.grad(out, inputs, g.to(out.dtype).to(out.device))
    return out.detach(), grads


def _relu_reference(x64, w64, b64, kw, seed, out):
    """The float64 reference of a ReLU conv and its gradients (as _run), with two float32 premises:
    at outputs whose pre-activation lies within rounding of the kink the ReLU decision is the
    kernel's (fastops.testing.relu_decisions: float64's own failed a correct kernel on about 1 seed in
    250 at 64 x 72 x 29 x 30, one flipped output sending or withholding a 3 x 3 x C window of
    grad_input), and the output is brought to the pre-activation's scale (the rounding is the sum's;
    the ReLU output's RMS is ~0.7 of it, which inflated the error 1.4x past the atol on 2 seeds in
    4000). Returns (ref, grads, scale)."""
    leaves = [t.detach().clone().requires_grad_() for t in (x64, w64)]
    bl = None if b64 is None else b64.detach().clone().requires_grad_()
    pre = reference.conv2d(leaves[0], leaves[1], bl, **{k: v for k, v in kw.items() if k != "activation"})
    p = pre.detach()
    ref = torch.where(relu_decisions(p, out), pre, 0.0)
    finite = p[torch.isfinite(p)]
    scale = finite.pow(2).mean().sqrt().item() if finite.numel() else 1.0
    kept = ref.detach()[torch.isfinite(ref.detach())]
    # at most 2x the ReLU output's own RMS: a mostly clipped output must not loosen the bound further
    scale = max(min(scale, 2 * (kept.pow(2).mean().sqrt().item() if kept.numel() else 0.0)), 1e-30)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    inputs = leaves + ([bl] if bl is not None else [])
    return ref.detach(), torch.autograd.grad(ref, inputs, g), scale


def _check_against_reference(backend, x, w, b, kw, what=""):
    seed = int(torch.randint(0, 2**31, ()).item())
    out, grads = _run(lambda *a, **k: FF.conv2d(*a, backend=backend, **k), x, w, b, kw, seed)
    b64 = None if b is None else b.double()
    min_rms = 1e-30
    if kw.get("activation") == "relu" and x.dtype == torch.float32:
        ref, ref_grads, min_rms = _relu_reference(x.double(), w.double(), b64, kw, seed, out)
    else:
        ref, ref_grads = _run(reference.conv2d, x.double(), w.double(), b64, kw, seed)
    same_out, same_grads = None, [None] * len(grads)
    if x.dtype in LOW_PRECISION:
        same_out, same_grads = _run(F.conv2d, x, w, b, kw, seed)
    # Shape, dtype and memory format as torch's own conv2d.
    expected_layout = F.conv2d(x, w, b, **{k: v for k, v in kw.items() if k != "activation"})
    assert out.shape == expected_layout.shape and out.dtype == x.dtype
    assert out.stride() == expected_layout.stride(), f"memory format {out.stride()} != {expected_layout.stride()}"
    # Gradients that sum over N P Q terms grow like sqrt(N P Q): each is brought to unit scale.
    got, exp, same = to_unit_scale(out, ref, same_out, min_rms=min_rms)
    assert_close_to_reference(got, exp, torch_same_dtype=same, what=f"output {what}")
    for name, gr, gref, gsame in zip(("grad_input", "grad_weight", "grad_bias"), grads, ref_grads, same_grads):
        got, exp, same = to_unit_scale(gr, gref, gsame)
        assert_close_to_reference(got, exp, torch_same_dtype=same, what=f"{name} {what}")


@pytest.mark.parametrize("device,backend", device_backend_params(("native", "torch"), ("native", "torch")))
@pytest.mark.parametrize("case", SWEEP, ids=_case_id)
def test_matches_reference_sweep(device, backend, case):
    for dtype in kernel_dtypes(device, backend):
        x, w, b, kw = _make(case, dtype, device)
        _check_against_reference(backend, x, w, b, kw, f"{dtype}")


@pytest.mark.triton
@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no GPU")])]
)
@pytest.mark.parametrize("case", SWEEP_TRITON, ids=_case_id)
def test_triton_matches_reference_sweep(device, case):
    for dtype in kernel_dtypes(device, "triton") if device == "cuda" else [torch.float32]:
        x, w, b, kw = _make(case, dtype, device)
        _check_against_reference("triton", x, w, b, kw, f"{dtype}")


# bfloat16 on CPU runs stride-1 convs with at least 8 channels per group without a gather (the
# "direct" passes in csrc/cpu/conv2d.cpp): odd widths, padding beyond the kernel's reach (dgrad's
# cropped dy), dilation, odd channel counts (zero pad channels), groups, 1x1, 'same' with an even
# kernel, and one pass direct while the other is not (Kg < 8).
SWEEP_CPU_DIRECT = [
    ((2, 16, 9, 7), (12, 16, 3, 3), 1, 1, 1, 1, True, False),
    ((2, 9, 6, 5), (9, 9, 3, 3), 1, (3, 2), 1, 1, True, False),
    ((2, 8, 9, 10), (11, 8, 3, 3), 1, 2, 2, 1, False, True),
    ((2, 18, 8, 9), (10, 9, 3, 2), 1, (2, 0), (2, 1), 2, True, False),
    ((1, 16, 7, 8), (16, 16, 1, 1), 1, 0, 1, 1, True, False),
    ((2, 8, 10, 11), (8, 8, 4, 4), 1, "same", 1, 1, True, False),
    ((3, 24, 5, 13), (6, 24, 3, 3), 1, 1, 1, 1, True, False),
    # padding on the columns only: x's grid for wgrad has no bottom row (it wrote the last row's right
    # border past its plane, into the next one, until session 2026-12-06)
    ((2, 16, 3, 20), (8, 16, 3, 3), 1, (0, 1), 1, 1, True, False),
]


@pytest.mark.parametrize("case", SWEEP_CPU_DIRECT, ids=_case_id)
def test_cpu_bfloat16_direct_passes(case):
    x, w, b, kw = _make(case, torch.bfloat16, "cpu")
    _check_against_reference("native", x, w, b, kw, "bfloat16")


@pytest.mark.slow
def test_cpu_bfloat16_direct_passes_large_images():
    # Repacked images above 16 MiB are the call's own buffers, not the per-thread scratch kept between
    # calls (csrc/cpu/conv2d.cpp, Scratch): x on its padded grid is 2 x 64 x 262 x 260 x 2 bytes here.
    x, w, b, kw = _make(((2, 64, 260, 258), (8, 64, 3, 3), 1, 1, 1, 1, True, False), torch.bfloat16, "cpu")
    _check_against_reference("native", x, w, b, kw, "large images")


def test_cpu_bfloat16_direct_passes_nonfinite():
    # The direct passes multiply zeros (dy's extension beyond its edges, the discarded grid columns)
    # by weights (dgrad) or inputs (wgrad): exact only for finite values, so a non-finite weight or
    # input sends that pass to the tiled kernel. An inf in x's first / last column is what the
    # discarded columns read; an inf in an edge tap of w is what dy's extension meets: the output and
    # every gradient must be inf / NaN exactly where the float64 reference's are.
    case = SWEEP_CPU_DIRECT[0]  # x (2, 16, 9, 7), w (12, 16, 3, 3), padding 1
    seed = int(torch.randint(0, 2**31, ()).item())
    for where, index in (("x", (0, 3, 4, 0)), ("x", (1, 5, 8, 6)), ("w", (0, 0, 1, 0)), ("w", (3, 2, 0, 2))):
        x, w, b, kw = _make(case, torch.bfloat16, "cpu")
        (x if where == "x" else w)[index] = float("inf")
        out, grads = _run(lambda *a, **k: FF.conv2d(*a, backend="native", **k), x, w, b, kw, seed)
        ref, ref_grads = _run(reference.conv2d, x.double(), w.double(), b.double(), kw, seed)
        for name, got, exp in zip(
            ("output", "grad_input", "grad_weight", "grad_bias"), (out, *grads), (ref, *ref_grads)
        ):
            assert_same_nonfinite(got, exp, f"{name} with inf in {where}{list(index)}")


@pytest.mark.parametrize("device,backend", ALL)
def test_output_strides_are_torchs(device, backend):
    """y carries exactly F.conv2d's strides, grad_x and grad_weight its layout: its memory format (asked of torch:
    channels_last follows a channels_last operand, except where torch's backend keeps contiguous, as
    cuDNN does for float64 on an H100) and that format's own strides for size-1 dims. A (2, 4, 1, 1)
    output computed in one layout also counts as contiguous in the other, and was returned with the
    strides it was computed in, e.g. (4, 1, 1, 1) where torch gives (4, 1, 4, 4)."""
    cases = [  # x shape, w shape, padding, groups, which operand is channels_last
        ((2, 8, 3, 3), (4, 8, 3, 3), 0, 1, "w"),  # 1x1 output
        ((2, 8, 3, 3), (4, 8, 3, 3), 0, 1, "x"),
        ((2, 8, 3, 3), (4, 8, 3, 3), 0, 1, ""),
        ((2, 8, 5, 4), (8, 1, 3, 3), 1, 8, "x"),  # depthwise: CUDA's own kernel is contiguous
        ((1, 6, 1, 7), (6, 3, 1, 3), 0, 2, "w"),  # H = P = 1
    ]
    for dtype in kernel_dtypes(device, backend):
        for xs, ws, pad, groups, cl in cases:
            x = make_tensor(xs, dtype, device)
            w = make_tensor(ws, dtype, device)
            if "x" in cl:
                x = x.contiguous(memory_format=torch.channels_last)
            if "w" in cl:
                w = w.contiguous(memory_format=torch.channels_last)
            xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
            xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
            ref = F.conv2d(xr, wr, None, 1, pad, 1, groups)
            out = FF.conv2d(xf, wf, None, 1, pad, 1, groups, backend=backend)
            what = f"{dtype} x{xs} w{ws} cl={cl!r}"
            assert out.stride() == ref.stride(), f"{what}: y strides {out.stride()} != torch's {ref.stride()}"
            g = make_tensor(ref.shape, dtype, device).contiguous(memory_format=torch.channels_last)
            gx, gw = torch.autograd.grad(ref, (xr, wr), g)
            fx, fw = torch.autograd.grad(out, (xf, wf), g)
            # the gradients' layout (torch gives grad_weight the weight's own strides in size-1 dims);
            # the torch backend's gradients are autograd's through its composition of slices
            for name, a, b in (("grad_x", fx, gx), ("grad_weight", fw, gw)) if backend != "torch" else ():
                layout = [(t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)) for t in (a, b)]
                assert layout[0] == layout[1], f"{what}: {name} strides {a.stride()}, torch's {b.stride()}"
            # What torch allows on its output, ours allows too: an in-place op on y (an nn.ReLU(inplace=
            # True) after the conv). Restriding y into torch's strides made it a view made inside the
            # op's autograd.Function (Triton), which autograd refuses to modify in place.
            # The same gradients as the out-of-place ReLU (the kernels are deterministic).
            xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
            xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
            ref = FF.conv2d(xr, wr, None, 1, pad, 1, groups, backend=backend).relu()
            out = FF.conv2d(xf, wf, None, 1, pad, 1, groups, backend=backend).relu_()
            for a, e in zip(torch.autograd.grad(out, (xf, wf), g), torch.autograd.grad(ref, (xr, wr), g)):
                assert torch.equal(a, e), f"{what}: gradients after relu_ differ from relu's"


@pytest.mark.parametrize("device,backend", device_backend_params(("native",), ("native", "triton")))
def test_tiled_rows_and_large_channels(device, backend):
    # More output rows than one column tile holds (CRS x rows x Q > 128k elements): several tiles
    # per sample with a partial last one, and a C R S reduction longer than any GPU K-tile.
    case = ((2, 16, 41, 70), (24, 16, 3, 3), 1, 1, 1, 1, True, False)
    for dtype in [torch.float32, *low_precision_native_cpu(device, backend)]:
        x, w, b, kw = _make(case, dtype, device)
        _check_against_reference(backend, x, w, b, kw, f"{dtype}")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_tiles_spanning_samples_and_thread_chunks(threads):
    # The CPU kernel splits samples into one chunk per thread and cuts each chunk's output rows into
    # tiles that may span samples (small images) or split them (large ones): every split must agree.
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for case in [
            ((5, 6, 5, 7), (8, 3, 3, 3), 1, 1, 1, 2, True, False),  # whole chunk in one tile
            ((3, 40, 25, 30), (8, 40, 3, 3), (2, 1), (1, 2), (1, 2), 1, True, False),  # P=13: split, straddling tiles
            ((5, 16, 23, 11), (12, 16, 3, 3), 1, 1, 1, 1, True, False),  # bfloat16: direct passes' items per thread
        ]:
            for dtype in (torch.float64, torch.bfloat16):  # bfloat16: the brgemm kernels' own tiling
                x, w, b, kw = _make(case, dtype, "cpu")
                _check_against_reference("native", x, w, b, kw, f"threads={threads} {dtype}")
        # The direct passes (bfloat16, float32 with >= 8 channels per group) on small grids and
        # batches split unevenly over the threads: groups, dilation, dgrad's cropped dy grid, odd
        # channel counts (bfloat16's pad channel), a 5x5 kernel.
        for case in [
            ((7, 16, 6, 5), (12, 16, 3, 3), 1, 1, 1, 1, True, False),
            ((9, 18, 5, 7), (10, 9, 3, 2), 1, (2, 0), (2, 1), 2, True, False),
            ((11, 9, 4, 4), (9, 9, 3, 3), 1, (3, 2), 1, 1, True, False),
            ((6, 8, 12, 9), (11, 8, 5, 5), 1, 2, 1, 1, False, True),
        ]:
            for dtype in (torch.bfloat16, torch.float32):
                x, w, b, kw = _make(case, dtype, "cpu")
                _check_against_reference("native", x, w, b, kw, f"threads={threads} {dtype} direct")
    finally:
        torch.set_num_threads(saved)


# float32 on CPU, stride 1, at most 16 channels per tap's reduction (fwd: C / groups, dgrad: K /
# groups) and at least 16 x 16 output pixels: the direct passes' register-blocked kernels
# (csrc/cpu/conv2d.cpp, register_block; wgrad's too with both at most 16 and at most 25 taps). Output
# channel counts off the 8-wide block (its 2- and 1-channel remainders), odd widths (the last partial
# vectors of a tile), dilation, asymmetric and 'same' padding, groups, channels_last, 7x7 (wgrad on
# the per-tap kernel), K = 24 (dgrad and wgrad on the per-tap kernel), and batches that the wgrad's
# sample groups split unevenly.
SWEEP_CPU_REGISTER = [
    ((2, 16, 16, 16), (16, 16, 3, 3), 1, 1, 1, 1, True, False),
    ((3, 8, 17, 19), (11, 8, 5, 5), 1, 2, 1, 1, True, True),
    ((2, 12, 20, 18), (13, 12, 3, 3), 1, (2, 0), (2, 1), 1, False, False),
    ((2, 32, 16, 17), (10, 16, 3, 3), 1, 1, 1, 2, True, True),
    ((1, 16, 22, 19), (16, 16, 7, 7), 1, 3, 1, 1, True, False),
    ((5, 9, 16, 16), (15, 9, 3, 3), 1, 1, 1, 1, True, False),
    ((2, 16, 24, 11), (16, 16, 4, 3), 1, "same", 1, 1, False, True),
    ((2, 16, 16, 16), (24, 16, 3, 3), 1, 1, 1, 1, True, False),
]


@pytest.mark.parametrize("case", SWEEP_CPU_REGISTER, ids=_case_id)
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_float32_register_kernels(case, activation, threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, w, b, kw = _make(case, torch.float32, "cpu")
        _check_against_reference("native", x, w, b, {**kw, "activation": activation}, f"float32 {activation}")
    finally:
        torch.set_num_threads(saved)


# float32 on CPU runs 3x3 stride-1 convs (groups 1, padding <= 2, >= 16 channels in and out, at least
# K C / 512 output tiles) as Winograd F(2x2, 3x3) (csrc/cpu/conv2d_winograd.cpp), the weight gradient
# from 64 channels each side and 28 x 28 outputs: every padding it takes (dgrad pads dy by 2 - p), odd
# output sizes (a partial last tile row / column), outputs of one row or column, images narrower than
# a vector of tiles (the gather transform) and wider, blocks spanning samples, the fused ReLU,
# channels_last, fwd / dgrad on Winograd while wgrad is not (the first eight), and the three passes
# on Winograd (the last two: 28 x 28 and 29 x 30 outputs, a partial last tile).
SWEEP_CPU_WINOGRAD = [
    ((2, 32, 9, 7), (40, 32, 3, 3), 1, 0, 1, 1, True, False),
    ((3, 32, 8, 8), (32, 32, 3, 3), 1, 1, 1, 1, True, False),
    ((2, 48, 5, 6), (33, 48, 3, 3), 1, 2, 1, 1, False, False),
    ((2, 32, 11, 13), (32, 32, 3, 3), 1, (2, 0), 1, 1, True, True),
    ((1, 40, 1, 4), (32, 40, 3, 3), 1, (1, 2), 1, 1, True, False),
    ((2, 32, 35, 37), (36, 32, 3, 3), 1, "same", 1, 1, True, False),
    ((5, 16, 6, 12), (24, 16, 3, 3), 1, 1, 1, 1, True, False),
    ((1, 16, 3, 40), (16, 16, 3, 3), 1, (0, 1), 1, 1, False, True),
    ((2, 64, 28, 28), (64, 64, 3, 3), 1, 1, 1, 1, True, False),
    ((1, 72, 29, 32), (64, 72, 3, 3), 1, (1, 0), 1, 1, False, True),
]


@pytest.mark.parametrize("case", SWEEP_CPU_WINOGRAD, ids=_case_id)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_cpu_float32_winograd(case, activation):
    x, w, b, kw = _make(case, torch.float32, "cpu")
    _check_against_reference("native", x, w, b, {**kw, "activation": activation}, f"float32 {activation}")


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_winograd_blocks_and_thread_chunks(threads):
    # Blocks of whole tile rows, at least one per thread, split across threads; the weight gradient
    # sums one partial per thread chunk. Batch 7 of 15x15 (8 tile rows each) and of 40x40 (one block
    # per few rows, wide images), with 1-3 threads: every split must agree.
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for case in [
            ((7, 32, 15, 15), (32, 32, 3, 3), 1, 1, 1, 1, True, False),
            ((3, 64, 40, 40), (64, 64, 3, 3), 1, 1, 1, 1, True, False),  # wgrad on Winograd too
        ]:
            x, w, b, kw = _make(case, torch.float32, "cpu")
            _check_against_reference("native", x, w, b, kw, f"threads={threads}")
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("which", [1, 8], ids=["wgrad-direct", "wgrad-winograd"])
def test_cpu_winograd_nonfinite_and_huge_operands(which):
    # Winograd mixes each 4x4 input patch (and 2x2 dy tile) before multiplying, so one inf would turn
    # a whole tile's outputs into NaN where the direct sum has inf: non-finite x, w or dy send the pass
    # to the direct kernels. So do operands large enough that a transformed intermediate could
    # overflow where the direct sum does not (x ~ 1e18, w ~ 1e17 here: the outputs ~1e35 are finite).
    # Output and gradients must be inf / NaN exactly where the float64 reference's are, and the huge
    # case within the float32 tolerance after scaling.
    # Case 1: x (3, 32, 8, 8), w (32, 32, 3, 3), padding 1 (fwd and dgrad on Winograd); case 8:
    # x (2, 64, 28, 28), w (64, 64, 3, 3) (wgrad too).
    case = SWEEP_CPU_WINOGRAD[which]
    seed = int(torch.randint(0, 2**31, ()).item())
    for where, index, value in (
        ("x", (0, 3, 4, 0), float("inf")),
        ("x", (1, 31, 7, 7), float("nan")),
        ("w", (0, 0, 1, 0), float("-inf")),
        ("w", (31, 5, 2, 2), float("nan")),
        ("dy", (1, 7, 0, 5), float("inf")),
    ):
        x, w, b, kw = _make(case, torch.float32, "cpu")
        if where != "dy":
            (x if where == "x" else w)[index] = value
        fastops_conv = lambda *a, **k: FF.conv2d(*a, backend="native", **k)  # noqa: E731
        if where == "dy":  # planted in the gradient seed by a hook on the output

            def planted(fn, index=index, value=value):
                def run(*a, **k):
                    out = fn(*a, **k)
                    out.register_hook(
                        lambda g: g.index_put((*map(torch.tensor, index),), torch.tensor(value, dtype=g.dtype))
                    )
                    return out

                return run

            out, grads = _run(planted(fastops_conv), x, w, b, kw, seed)
            ref, ref_grads = _run(planted(reference.conv2d), x.double(), w.double(), b.double(), kw, seed)
        else:
            out, grads = _run(fastops_conv, x, w, b, kw, seed)
            ref, ref_grads = _run(reference.conv2d, x.double(), w.double(), b.double(), kw, seed)
        for name, got, exp in zip(
            ("output", "grad_input", "grad_weight", "grad_bias"), (out, *grads), (ref, *ref_grads)
        ):
            assert_same_nonfinite(got, exp, f"{name} with {value} in {where}{list(index)}")
    x, w, b, kw = _make(case, torch.float32, "cpu")
    _check_against_reference("native", x * 1e18, w * 1e17, b * 1e35, kw, "huge operands")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible")
@pytest.mark.parametrize(
    "case",
    [
        # channel counts % 8 == 0: the 16-byte gathers; the small tile grids take split-K on every pass
        ((4, 64, 28, 28), (64, 64, 3, 3), 1, 1, 1, 1, True, True),
        ((2, 128, 14, 14), (256, 128, 1, 1), 2, 0, 1, 1, False, True),
        ((2, 64, 15, 13), (96, 32, 3, 3), (2, 1), (1, 2), (1, 2), 2, True, False),
        # channel counts that break the vectors: the per-element gathers of the same kernel
        ((3, 3, 33, 31), (40, 3, 7, 7), 2, 3, 1, 1, True, True),
        ((2, 60, 17, 17), (36, 20, 3, 3), 1, 1, 1, 3, False, False),
        ((2, 32, 20, 20), (32, 1, 3, 3), 1, 1, 1, 32, True, True),  # depthwise
    ],
    ids=_case_id,
)
def test_cuda_tensor_core_path(case):
    # float16 / bfloat16 on CUDA run the WMMA implicit GEMM (csrc/cuda/conv2d.cu) in NHWC: larger
    # shapes than the sweep so that every pass spans several tiles and splits its reduction.
    for dtype in LOW_PRECISION:
        x, w, b, kw = _make(case, dtype, "cuda")
        _check_against_reference("native", x, w, b, kw, f"{dtype}")
        # The fused ReLU acts on the same float accumulator before the one rounding, and rounding
        # commutes with max(., 0): bit-identical to ReLU after the unfused kernel (deterministic).
        fused = FF.conv2d(x, w, b, activation="relu", backend="native", **kw)
        assert torch.equal(fused, FF.conv2d(x, w, b, backend="native", **kw).relu())


@pytest.mark.parametrize("device,backend", ALL)
def test_fused_relu_and_noncontiguous(device, backend):
    small = backend == "triton"
    case = ((2, 4, 6, 7) if small else (2, 6, 12, 11), (5, 4 if small else 6, 3, 3), 1, 1, 1, 1, True, False)
    for dtype in [torch.float64]:
        x, w, b, kw = _make(case, dtype, device)
        x, w = noncontiguous(x), noncontiguous(w)
        _check_against_reference(backend, x, w, b, dict(kw, activation="relu"), "relu")
        out = FF.conv2d(x, w, b, activation="relu", backend=backend, **kw)
        assert bool((out >= 0).all()) and bool((out == 0).any())


@pytest.mark.parametrize("device,backend", ALL)
def test_gradcheck_float64(device, backend):
    cases = [
        ((2, 4, 5, 6), (4, 2, 3, 2), (2, 1), (1, 0), (1, 2), 2, True, False),
        ((3, 4, 5), (2, 3, 2, 2), 1, "same", 1, 1, True, False),
        ((1, 2, 4, 5), (2, 2, 1, 1), 1, 0, 1, 1, False, True),
    ]
    for case in cases:
        x, w, b, kw = _make(case, torch.float64, device)
        inputs = (x.requires_grad_(), w.requires_grad_()) + ((b.requires_grad_(),) if b is not None else ())
        for act in (None, "relu"):

            def fn(*args, kw=kw, act=act):
                return FF.conv2d(*args, activation=act, backend=backend, **kw)

            assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("device,backend", KERNEL_BACKENDS)
def test_ops_follow_torch_memory_format(device, backend):
    # Every backend's ops return y, grad_x and grad_weight channels_last exactly when x or weight is
    # (torch's conv rule; the CUDA tensor-core path computes in that layout), else contiguous.
    ns = namespace(backend, "conv2d")
    cl = torch.channels_last
    for x_cl, w_cl in [(False, False), (True, False), (False, True), (True, True)]:
        x = make_tensor((2, 4, 5, 6), torch.float32, device)
        w = make_tensor((6, 4, 3, 3), torch.float32, device)
        x = x.contiguous(memory_format=cl) if x_cl else x
        w = w.contiguous(memory_format=cl) if w_cl else w
        fmt = cl if (x_cl or w_cl) else torch.contiguous_format
        y = ns.conv2d_fwd(x, w, None, [1, 1], [1, 1], [1, 1], 1, False)
        assert y.is_contiguous(memory_format=fmt), (x_cl, w_cl, y.stride())
        assert y.stride() == F.conv2d(x, w, None, padding=1).stride()
        gx, gw, _ = ns.conv2d_bwd(torch.randn_like(y), x, w, [1, 1], [1, 1], [1, 1], 1, [True, True, False])
        assert gx.is_contiguous(memory_format=fmt) and gw.is_contiguous(memory_format=fmt), (x_cl, w_cl)


@pytest.mark.parametrize("device,backend", KERNEL_BACKENDS)
def test_autograd_node_checks_saved_versions(device, backend):
    """The op's autograd node (native: csrc/conv2d_autograd.cpp's C++ Function) saves x, w and, with
    the fused ReLU, its own output: an in-place change to any of them after the forward makes backward
    raise instead of returning gradients of values that are gone; unchanged, the gradients are torch's."""
    x = make_tensor((2, 3, 5, 5), torch.float64, device, requires_grad=True)
    w = make_tensor((4, 3, 3, 3), torch.float64, device, requires_grad=True)
    b = make_tensor((4,), torch.float64, device, requires_grad=True)
    y = FF.conv2d(x, w, b, padding=1, activation="relu", backend=backend)
    assert is_fastops_node(y.grad_fn), y.grad_fn.name()
    if backend == "native":
        assert "Conv2dFunction" in y.grad_fn.name(), y.grad_fn.name()
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), gy)
    want = torch.autograd.grad(F.relu(F.conv2d(x, w, b, padding=1)), (x, w, b), gy)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)
    for changed in ("input", "weight", "output"):
        h, v = x * 1, w * 1
        y = FF.conv2d(h, v, b, padding=1, activation="relu", backend=backend)
        with torch.no_grad():
            {"input": h, "weight": v, "output": y}[changed].add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.backward(gy)


@pytest.mark.parametrize("device,backend", KERNEL_BACKENDS)
def test_gradient_of_one_input_only(device, backend):
    """Each input's gradient alone (the backward op's output_mask), with and without bias: the node
    asks only for what the graph needs and hands back None for the rest."""
    x = make_tensor((2, 4, 5, 5), torch.float64, device)
    w = make_tensor((6, 2, 3, 3), torch.float64, device)
    b = make_tensor((6,), torch.float64, device)
    for bias in (None, b):
        for wanted in range(2 if bias is None else 3):
            leaves = [t.clone().requires_grad_(i == wanted) for i, t in enumerate((x, w, bias)) if t is not None]
            args = leaves + [None] * (3 - len(leaves))
            y = FF.conv2d(*args, stride=(1, 2), padding=1, groups=2, backend=backend)
            ref = F.conv2d(*args, stride=(1, 2), padding=1, groups=2)
            gy = torch.randn_like(y)
            (got,) = torch.autograd.grad(y, [leaves[wanted]], gy)
            (want,) = torch.autograd.grad(ref, [leaves[wanted]], gy)
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device,backend", ALL)
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()

    def step(x, w, b):
        y = FF.conv2d(x * 2.0, w, b, stride=1, padding="same", backend=backend)
        return FF.conv2d(y, w, None, stride=(2, 1), padding=1, activation="relu", backend=backend).sum() * 3.0

    x = make_tensor((2, 3, 6, 7), torch.float32, device)
    w = make_tensor((3, 3, 2, 3), torch.float32, device, scale=0.3)
    b = make_tensor((3,), torch.float32, device)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if backend == "triton" else "inductor")
    args_e = [t.clone().requires_grad_() for t in (x, w, b)]
    args_c = [t.clone().requires_grad_() for t in (x, w, b)]
    eager, got = step(*args_e), compiled(*args_c)
    torch.testing.assert_close(got, eager)
    for ge, gc in zip(torch.autograd.grad(eager, args_e), torch.autograd.grad(got, args_c)):
        torch.testing.assert_close(gc, ge)


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_module_parity(device, backend, padding_mode):
    kwargs = dict(stride=(1, 2), padding=(2, 1), dilation=1, groups=2, padding_mode=padding_mode, device=device)
    torch.manual_seed(1234)
    theirs = torch.nn.Conv2d(4, 6, (3, 2), **kwargs)
    torch.manual_seed(1234)
    ours = fastops.nn.Conv2d(4, 6, (3, 2), **kwargs, backend=backend)
    assert isinstance(ours, torch.nn.Conv2d)
    # Same initialisation (same RNG draws) and the same state_dict.
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0)
    fresh = fastops.nn.Conv2d(4, 6, (3, 2), **kwargs, backend=backend)
    fresh.load_state_dict(theirs.state_dict())
    x = make_tensor((2, 4, 7, 6), torch.float32, device, requires_grad=True)
    a, b = fresh(x), theirs(x)
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.square().sum(), [x, fresh.weight, fresh.bias])
    gb = torch.autograd.grad(b.square().sum(), [x, theirs.weight, theirs.bias])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)
    assert "backend=" in repr(ours)


class _BasicBlock(torch.nn.Module):
    """torchvision's ResNet BasicBlock with a downsampling shortcut (stride 2, 1x1 projection)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


def _swap_convs(model, backend):
    for name, child in list(model.named_children()):
        if type(child) is torch.nn.Conv2d:
            new = fastops.nn.Conv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                child.stride,
                child.padding,
                child.dilation,
                child.groups,
                child.bias is not None,
                child.padding_mode,
                device=child.weight.device,
                dtype=child.weight.dtype,
                backend=backend,
            )
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            _swap_convs(child, backend)
    return model


@pytest.mark.parametrize("device,backend", ALL)
def test_resnet_block_with_swapped_convs(device, backend):
    import copy

    small = backend == "triton"
    block = _BasicBlock(4 if small else 8, 6 if small else 16, 2).to(device).double()
    ours = _swap_convs(copy.deepcopy(block), backend)
    assert sum(isinstance(m, fastops.nn.Conv2d) for m in ours.modules()) == 3
    x = make_tensor((2, 4 if small else 8, 7 if small else 15, 6 if small else 13), torch.float64, device)
    for model in (block, ours):
        model.train()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = block(xa), ours(xb)
    torch.testing.assert_close(yb, ya)
    g = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [xa, *block.parameters()], g)
    gb = torch.autograd.grad(yb, [xb, *ours.parameters()], g)
    for u, v in zip(gb, ga):
        torch.testing.assert_close(u, v)


def test_fastops_swap_replaces_every_conv():
    block = _BasicBlock(4, 6, 2).double()
    x = make_tensor((2, 4, 9, 8), torch.float64)
    expected = block(x)
    report = fastops.swap(block, backend="native")
    assert sum(type(m) is fastops.nn.Conv2d for m in block.modules()) == 3, str(report)
    torch.testing.assert_close(block(x), expected)


BAD_INPUTS = [
    (
        "channel mismatch",
        lambda d: ((2, 4, 5, 5), (3, 3, 3, 3), {}),
        ValueError,
        "weight must have shape (3, 4, R, S) for 4 input channels",
    ),
    (
        "groups not dividing C",
        lambda d: ((2, 5, 5, 5), (4, 2, 3, 3), {"groups": 2}),
        ValueError,
        "must divide the input",
    ),
    (
        "groups not dividing K",
        lambda d: ((2, 4, 5, 5), (3, 2, 3, 3), {"groups": 2}),
        ValueError,
        "must divide the output",
    ),
    ("output size <= 0", lambda d: ((1, 2, 3, 3), (2, 2, 5, 5), {}), ValueError, "output size would be <= 0"),
    ("input dims", lambda d: ((2, 3, 4, 5, 6), (2, 3, 3, 3), {}), ValueError, "input must have shape"),
    ("weight dims", lambda d: ((2, 3, 4, 5), (2, 3, 3), {}), ValueError, "weight must have shape"),
    ("bias shape", lambda d: ((2, 3, 4, 5), (2, 3, 3, 3), {"bias": (3,)}), ValueError, "bias must have shape (2,)"),
    ("stride 0", lambda d: ((2, 3, 4, 5), (2, 3, 3, 3), {"stride": 0}), ValueError, "stride must be >= 1"),
    ("negative padding", lambda d: ((2, 3, 4, 5), (2, 3, 3, 3), {"padding": -1}), ValueError, "padding must be >= 0"),
    (
        "same with stride",
        lambda d: ((2, 3, 4, 5), (2, 3, 3, 3), {"padding": "same", "stride": 2}),
        ValueError,
        "strided",
    ),
    ("bad padding string", lambda d: ((2, 3, 4, 5), (2, 3, 3, 3), {"padding": "full"}), ValueError, "padding must be"),
    ("activation", lambda d: ((2, 3, 4, 5), (2, 3, 3, 3), {"activation": "gelu"}), ValueError, "activation"),
]


@pytest.mark.parametrize("device,backend", ALL)
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_clear_error(device, backend, case):
    _, make, exc, message = case
    xs, ws, kw = make(device)
    kw = dict(kw)
    bias = make_tensor(kw.pop("bias"), device=device) if "bias" in kw else None
    x, w = make_tensor(xs, device=device), make_tensor(ws, device=device)
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        FF.conv2d(x, w, bias, backend=backend, **kw)


@pytest.mark.parametrize("device,backend", ALL)
def test_bad_dtype_and_device(device, backend):
    x, w = make_tensor((2, 3, 5, 5), device=device), make_tensor((2, 3, 3, 3), device=device)
    with pytest.raises(TypeError, match="weight must have input's dtype"):
        FF.conv2d(x, w.double(), backend=backend)
    with pytest.raises(TypeError, match="bias must have input's dtype"):
        FF.conv2d(x, w, torch.zeros(2, dtype=torch.float64, device=device), backend=backend)
    with pytest.raises(TypeError, match="input must be a floating tensor"):
        FF.conv2d(x.long(), w.long(), backend=backend)
    with pytest.raises(ValueError, match="weight is on meta"):
        FF.conv2d(x, w.to("meta"), backend=backend)


@pytest.mark.parametrize("device,backend", KERNEL_BACKENDS)
def test_raw_ops_reject_bad_input(device, backend):
    ns = namespace(backend, "conv2d")
    x, w = make_tensor((2, 4, 5, 5), device=device), make_tensor((3, 2, 3, 3), device=device)
    with pytest.raises((ValueError, RuntimeError), match="must divide the output channels"):
        ns.conv2d_fwd(x, w, None, [1, 1], [0, 0], [1, 1], 2, False)
    w = make_tensor((4, 3, 3, 3), device=device)
    with pytest.raises((ValueError, RuntimeError), match="weight must have shape"):
        ns.conv2d_fwd(x, w, None, [1, 1], [0, 0], [1, 1], 1, False)
    w = make_tensor((4, 4, 3, 3), device=device)
    with pytest.raises((ValueError, RuntimeError), match="output size would be <= 0"):
        ns.conv2d_fwd(x, w, None, [1, 1], [0, 0], [3, 3], 1, False)
    with pytest.raises((ValueError, RuntimeError), match="bias must have shape"):
        ns.conv2d_fwd(x, w, torch.zeros(3, device=device), [1, 1], [0, 0], [1, 1], 1, False)
    with pytest.raises((ValueError, RuntimeError), match="grad_out must have shape"):
        ns.conv2d_bwd(torch.zeros(2, 4, 2, 2, device=device), x, w, [1, 1], [0, 0], [1, 1], 1, [True, True, False])


def test_bfloat16_on_cpu_runs_native_with_correct_result():
    # What torch.autocast("cpu", torch.bfloat16) hands a conv: auto picks the native CPU kernel (no
    # fallback warning) and the result obeys the low-precision rule.
    x, w, b, kw = _make(((2, 3, 6, 5), (4, 3, 3, 3), 1, 1, 1, 1, True, False), torch.bfloat16, "cpu")
    assert fastops._backend.resolve("conv2d", "auto", "cpu", torch.bfloat16) == "native"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _check_against_reference("auto", x, w, b, kw)


@pytest.mark.parametrize("case", [SWEEP[0], SWEEP[2], SWEEP[5], SWEEP[13]], ids=_case_id)
def test_bfloat16_cpu_widening_path(case):
    # Where oneDNN's bfloat16 micro-kernel is not available (or oneDNN is disabled), bfloat16 runs
    # the float32 kernels on widened copies, as float16 always does: the same rule holds.
    x, w, b, kw = _make(case, torch.bfloat16, "cpu")
    with torch.backends.mkldnn.flags(enabled=False):
        _check_against_reference("native", x, w, b, kw, "widened")


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_cpu_fused_relu_low_precision(dtype):
    # The fused ReLU acts on the float32 accumulator before the one rounding, and rounding commutes
    # with max(., 0): bit-identical to ReLU after the unfused kernel (deterministic).
    for case in (SWEEP[0], SWEEP[5], SWEEP[13]):
        x, w, b, kw = _make(case, dtype, "cpu")
        fused = FF.conv2d(x, w, b, activation="relu", backend="native", **kw)
        assert torch.equal(fused, FF.conv2d(x, w, b, backend="native", **kw).relu())
        ref = reference.conv2d(x.double(), w.double(), b.double(), activation="relu", **kw)
        same = F.relu(F.conv2d(x, w, b, **kw))
        got, exp, same = to_unit_scale(fused, ref, same)
        assert_close_to_reference(got, exp, torch_same_dtype=same, what=f"relu {dtype}")


def test_backend_resolution():
    """Through the API (resolution itself: tests/test_contract.py::test_backend_resolution)."""
    unsupported = torch.float8_e4m3fn  # a floating dtype no kernel takes
    with pytest.raises(RuntimeError, match="take bfloat16, float16, float32, float64, not float8_e4m3fn"):
        FF.conv2d(make_tensor((1, 2, 3, 3), unsupported), make_tensor((1, 2, 1, 1), unsupported), backend="native")


# ---- the checker must reject wrong implementations ---------------------------------------------


def _wrong_true_convolution(x, w, b=None, **kw):
    return reference.conv2d(x, w.flip(2, 3), b, **kw)  # flipped kernel: convolution, not correlation


def _wrong_same_extra_on_top(x, w, b=None, **kw):
    x = F.pad(x, [1, 0, 1, 0])  # the odd 'same' padding on the wrong side
    return reference.conv2d(x, w, b, **dict(kw, padding=1))  # 4x4 kernel: 2 rows above, 1 below


def _wrong_one_unwritten(x, w, b=None, **kw):
    out = reference.conv2d(x, w, b, **kw).clone()
    out[-1, -1, -1, -1] = float("nan")  # what a kernel that skips the last tile leaves in a poisoned output
    return out


def _wrong_groups_ignored(x, w, b=None, **kw):
    kw = dict(kw)
    groups = kw.pop("groups")
    ws = w.repeat(1, groups, 1, 1) / groups  # every group sees every channel
    return reference.conv2d(x, ws, b, groups=1, **kw)


@pytest.mark.parametrize(
    "wrong", [_wrong_true_convolution, _wrong_same_extra_on_top, _wrong_one_unwritten, _wrong_groups_ignored]
)
def test_checker_rejects_wrong_implementations(wrong):
    x = make_tensor((2, 4, 9, 8), torch.float32)
    w = make_tensor((4, 2, 4, 4), torch.float32, scale=0.2)
    kw = dict(stride=1, padding="same", dilation=1, groups=2)
    with pytest.raises(AssertionError):
        got = wrong(x, w, None, **kw)
        expected = reference.conv2d(x.double(), w.double(), None, **kw)
        assert_close_to_reference(*to_unit_scale(got, expected)[:2], what="wrong implementation")


def test_reference_matches_torch():
    # The reference is written from the formula; torch's conv2d is an independent check of it.
    for case in SWEEP:
        x, w, b, kw = _make(case, torch.float64, "cpu")
        torch.testing.assert_close(reference.conv2d(x, w, b, **kw), F.conv2d(x, w, b, **kw))


# ---- backend="auto" on CPU: measured-slower shape classes run torch's own conv2d --------------------

# (dtype, weight shape (K, C/g, R, S), stride, auto runs torch's conv2d)
AUTO_CLASSES = [
    (torch.float32, (8, 1, 3, 3), (1, 1), False),  # depthwise
    (torch.float32, (8, 1, 7, 7), (2, 2), False),
    (torch.float32, (8, 3, 3, 3), (1, 1), False),  # RGB first layer
    (torch.float32, (8, 3, 4, 4), (4, 4), False),  # patchify stem
    (torch.float32, (8, 3, 3, 3), (2, 2), True),
    (torch.float32, (8, 16, 3, 3), (1, 1), True),
    (torch.float32, (8, 8, 1, 1), (1, 1), False),  # 1x1: native below C/g x K = 2^20 at stride 1
    (torch.float32, (8, 8, 1, 1), (2, 2), False),
    (torch.float32, (8, 8, 3, 1), (1, 1), True),
    (torch.float32, (8, 16, 2, 2), (2, 2), True),  # patch convs: native on AVX2-only CPUs (AVX2_NATIVE)
    (torch.float32, (8, 8, 3, 3), (3, 3), True),
    (torch.bfloat16, (8, 16, 3, 3), (1, 1), True),
    (torch.bfloat16, (8, 8, 3, 3), (1, 1), False),
    (torch.bfloat16, (8, 16, 3, 3), (2, 2), False),
    (torch.bfloat16, (8, 64, 1, 1), (1, 1), False),
    (torch.float16, (8, 64, 3, 3), (1, 1), False),
    (torch.float64, (8, 16, 1, 1), (1, 1), True),
    (torch.float64, (8, 16, 3, 3), (1, 1), False),
]


def test_auto_one_by_one_rule(monkeypatch):
    """float32 1x1 convs run native under auto except at stride 1 with C/groups x K >= 2^20 (measured
    0.87-0.92x at 512 x 2048 on 7 x 7); the rule alone (a conv of that size against the float64
    reference would sum 1024+ products, past what the float32 tolerance is set for)."""
    from fastops.ops.conv2d import ONE_BY_ONE_MAX_CHANNEL_PRODUCT, cpu_auto_uses_torch

    monkeypatch.setattr(conv2d_ops, "_CPU_AVX2_ONLY", False)
    assert ONE_BY_ONE_MAX_CHANNEL_PRODUCT == 2**20
    assert cpu_auto_uses_torch(torch.float32, (2048, 512, 1, 1), (1, 1))
    assert cpu_auto_uses_torch(torch.float32, (1024, 1024, 1, 1), [1, 1])
    assert not cpu_auto_uses_torch(torch.float32, (1024, 1023, 1, 1), (1, 1))
    assert not cpu_auto_uses_torch(torch.float32, (2048, 1024, 1, 1), (2, 2))
    assert not cpu_auto_uses_torch(torch.float32, (2048, 1024, 1, 1), (1, 2))
    assert cpu_auto_uses_torch(torch.float64, (64, 64, 1, 1), (1, 1))  # float64's own rule
    monkeypatch.setattr(conv2d_ops, "_CPU_AVX2_ONLY", True)  # the float32 rule holds there too (0.75-0.80x)
    assert cpu_auto_uses_torch(torch.float32, (2048, 512, 1, 1), (1, 1))
    assert not cpu_auto_uses_torch(torch.float64, (64, 64, 1, 1), (1, 1))  # measured 1.02-1.26x there


def _runs_torch(y: torch.Tensor) -> bool:
    """Whether ``y`` came from torch's conv2d (autograd node ConvolutionBackward0, possibly under a
    ReLU) rather than a fastops op (fastops.testing.is_fastops_node)."""
    node = y.grad_fn
    while type(node).__name__ in ("ReluBackward0", "SqueezeBackward1", "CloneBackward0"):
        node = node.next_functions[0][0]
    name = type(node).__name__
    assert name == "ConvolutionBackward0" or is_fastops_node(node), node.name()
    return name == "ConvolutionBackward0"


# The AUTO_CLASSES rows auto runs native on AVX2-only CPUs only: float32 patch convs (stride = kernel),
# bfloat16 dense convs and float64 1x1 convs.
AVX2_NATIVE = {
    (torch.float32, (8, 16, 2, 2), (2, 2)),
    (torch.float32, (8, 8, 3, 3), (3, 3)),
    (torch.bfloat16, (8, 16, 3, 3), (1, 1)),  # and every bfloat16 conv
    (torch.float64, (8, 16, 1, 1), (1, 1)),
}


@pytest.mark.parametrize("avx2_only", [False, True], ids=["avx512-or-other", "avx2-only"])
@pytest.mark.parametrize("dtype,ws,stride,torch_runs", AUTO_CLASSES, ids=lambda v: str(v).replace("torch.", ""))
def test_auto_routes_measured_slower_cpu_classes_to_torch(dtype, ws, stride, torch_runs, avx2_only, monkeypatch):
    """Each class's route on CPUs with AVX-512 (or without x86 SIMD) and on AVX2-only CPUs (both
    answers of the capability probe are taken here), with the values and gradients of either route."""
    from fastops.ops import _contract
    from fastops.ops.conv2d import cpu_auto_uses_torch

    monkeypatch.setattr(conv2d_ops, "_CPU_AVX2_ONLY", avx2_only)
    _contract._ROUTES.clear()  # routes remembered under the other answer
    if avx2_only and (dtype, ws, stride) in AVX2_NATIVE:
        torch_runs = False
    assert bool(cpu_auto_uses_torch(dtype, ws, stride)) == torch_runs
    groups = 4 if ws[1] == 1 else 1  # the depthwise rows: 4 groups of one channel, K = 8
    c = ws[1] * groups
    x = make_tensor((2, c, 9, 9), dtype).contiguous(memory_format=torch.channels_last)
    w = make_tensor(ws, dtype, scale=(ws[1] * ws[2] * ws[3]) ** -0.5)
    b = make_tensor((ws[0],), dtype)
    for activation in (None, "relu"):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        y = FF.conv2d(*leaves, stride, 1, 1, groups, activation=activation)
        assert _runs_torch(y) == torch_runs
        native = [t.clone().requires_grad_() for t in (x, w, b)]
        y_native = FF.conv2d(*native, stride, 1, 1, groups, activation=activation, backend="native")
        assert not _runs_torch(y_native)
        # the same result, layout and gradients as the kernel (torch's rule: channels_last in, out)
        assert y.shape == y_native.shape and y.dtype == dtype and y.stride() == y_native.stride()
        ref = reference.conv2d(*(t.double() for t in (x, w, b)), stride, 1, 1, groups, activation)
        same = F.conv2d(x, w, b, stride, 1, 1, groups)
        same = F.relu(same) if activation else same
        got, exp, same = to_unit_scale(y, ref, same)
        assert_close_to_reference(got, exp, torch_same_dtype=same, what=f"auto {activation}")
        g = make_tensor(y.shape, dtype)
        for a, e in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(y_native, native, g)):
            assert a.shape == e.shape and a.dtype == e.dtype
    # unbatched input takes the same route
    assert _runs_torch(FF.conv2d(x[0].requires_grad_(), w, b, stride, 1, 1, groups)) == torch_runs
    # an explicit choice is never rerouted
    monkeypatch.setenv("FASTOPS_BACKEND", "native")
    assert not _runs_torch(FF.conv2d(x.requires_grad_(), w, b, stride, 1, 1, groups))


def test_auto_route_keeps_the_one_contract():
    """A routed call still raises the op's own error text for bad input (not F.conv2d's)."""
    x, w = make_tensor((2, 16, 6, 6)), make_tensor((8, 16, 3, 3))
    for backend in ("auto", "native"):
        with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
            FF.conv2d(x, w, make_tensor((7,)), padding=1, backend=backend)


def test_auto_route_remembered_per_signature_follows_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto's CPU route is remembered per call signature (fastops.ops._contract.route_key); a
    remembered call must still give each call torch's layout, unbatched shape and gradients, and a
    change of FASTOPS_BACKEND or of autocast must decide afresh."""
    from fastops.ops import _contract

    def torch_of(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, **kw: object) -> torch.Tensor:
        return F.conv2d(x.detach(), w.detach(), b.detach(), **kw)

    _contract._ROUTES.clear()
    # A torch-routed class (dense 3x3, C16) and a native one (depthwise), each called three times in
    # three layouts with one signature, then unbatched.
    for groups, native in ((1, False), (16, True)):
        w = make_tensor((16, 16 // groups, 3, 3), requires_grad=True)
        b = make_tensor((16,), requires_grad=True)
        for layout in (torch.contiguous_format, torch.channels_last, torch.contiguous_format):
            x = make_tensor((2, 16, 6, 6)).to(memory_format=layout).requires_grad_()
            y = FF.conv2d(x, w, b, 1, 1, 1, groups)
            assert _runs_torch(y) != native, (groups, layout)
            ref = torch_of(x, w, b, padding=1, groups=groups)
            assert y.stride() == ref.stride(), (groups, layout, y.stride(), ref.stride())
            torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
            gx, gw = torch.autograd.grad(y.square().sum(), (x, w))
            xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
            loss = F.conv2d(xr, wr, b.detach(), padding=1, groups=groups).square().sum()
            rx, rw = torch.autograd.grad(loss, (xr, wr))
            torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-4)
        x3 = make_tensor((16, 6, 6))
        for _ in range(2):
            y3 = FF.conv2d(x3, w, b, 1, 1, 1, groups)
            assert y3.shape == (16, 6, 6)
            torch.testing.assert_close(y3, torch_of(x3, w, b, padding=1, groups=groups), rtol=1e-5, atol=1e-5)
    assert len(_contract._ROUTES) == 4  # two signatures per class: batched and unbatched

    x, w, b = make_tensor((2, 16, 6, 6)), make_tensor((16, 1, 3, 3), requires_grad=True), make_tensor((16,))
    assert not _runs_torch(FF.conv2d(x, w, b, 1, 1, 1, 16))  # remembered: native
    monkeypatch.setenv("FASTOPS_BACKEND", "torch")
    y = FF.conv2d(x, w, b, 1, 1, 1, 16)
    assert not is_fastops_node(y.grad_fn)  # the override is read on every call
    monkeypatch.delenv("FASTOPS_BACKEND")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert FF.conv2d(x, w, b, 1, 1, 1, 16).dtype == torch.bfloat16
    assert FF.conv2d(x, w, b, 1, 1, 1, 16).dtype == torch.float32


def test_explicit_native_route_remembered_per_signature() -> None:
    """backend="native" on CPU remembers its resolved op and normalized arguments per call signature
    (skipping the argument handling on later calls); each remembered call still runs the kernel,
    follows its own layout, gives the unbatched shape, raises the contract's error for a bad bias
    of another signature, and differs from auto's route for the same signature (dense 3x3 C16: auto
    runs torch there)."""
    from fastops.ops import _contract

    _contract._ROUTES.clear()
    w = make_tensor((16, 16, 3, 3), scale=1 / 12, requires_grad=True)
    b = make_tensor((16,), requires_grad=True)
    for layout in (torch.contiguous_format, torch.channels_last, torch.contiguous_format):
        x = make_tensor((2, 16, 6, 6)).to(memory_format=layout).requires_grad_()
        for stride in ((1, 1), (2, 1)):
            y = FF.conv2d(x, w, b, stride, 1, backend="native")
            assert not _runs_torch(y), (layout, stride)
            ref = F.conv2d(x.detach(), w.detach(), b.detach(), stride, 1)
            assert y.stride() == ref.stride(), (layout, stride, y.stride(), ref.stride())
            torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
            gx, gw, gb = torch.autograd.grad(y.square().sum(), (x, w, b))
            xr, wr, br = (t.detach().requires_grad_() for t in (x, w, b))
            rx, rw, rb = torch.autograd.grad(F.conv2d(xr, wr, br, stride, 1).square().sum(), (xr, wr, br))
            for got, want in ((gx, rx), (gw, rw), (gb, rb)):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert len(_contract._ROUTES) == 2  # one per stride
    x3 = make_tensor((16, 6, 6))
    for _ in range(2):
        y3 = FF.conv2d(x3, w.detach(), b.detach(), 1, 1, backend="native")
        assert y3.shape == (16, 6, 6) and y3.grad_fn is None
        torch.testing.assert_close(y3, F.conv2d(x3, w.detach(), b.detach(), padding=1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="bias"):
        FF.conv2d(make_tensor((2, 16, 6, 6)), w, make_tensor((15,)), 1, 1, backend="native")
    x = make_tensor((2, 16, 6, 6), requires_grad=True)
    assert len(_contract._ROUTES) == 3  # and the unbatched signature
    assert _runs_torch(FF.conv2d(x, w, b, (1, 1), 1))  # auto keeps its own route for the signature
    assert not _runs_torch(FF.conv2d(x, w, b, (1, 1), 1, backend="native"))
    assert len(_contract._ROUTES) == 4


def test_auto_first_layer_runs_native_with_or_without_input_grad():
    """A float32 first layer (groups 1, C <= 4, stride 1) runs the kernel under auto whether or not
    its input needs a gradient (measured faster than torch's conv2d both ways since the C++ Autograd
    kernel); its values and gradients match the reference either way."""
    from fastops.ops.conv2d import cpu_auto_uses_torch

    for c in (1, 3, 4):
        x, w, b = make_tensor((2, c, 9, 9)), make_tensor((8, c, 3, 3), scale=(9 * c) ** -0.5), make_tensor((8,))
        assert not cpu_auto_uses_torch(torch.float32, w.shape, [1, 1])
        ref = reference.conv2d(x.double(), w.double(), b.double(), [1, 1], [1, 1], [1, 1], 1, None)
        for input_grad in (False, True):
            xg = x.clone().requires_grad_(input_grad)
            w_, b_ = w.clone().requires_grad_(), b.clone().requires_grad_()
            y = FF.conv2d(xg, w_, b_, padding=1)
            assert not _runs_torch(y), (c, input_grad)
            got, exp, same = to_unit_scale(y, ref, F.conv2d(x, w, b, padding=1))
            assert_close_to_reference(got, exp, torch_same_dtype=same, what=f"first layer C{c} input grad {input_grad}")
            y.sum().backward()
            wd = w.double().requires_grad_()
            reference.conv2d(x.double(), wd, b.double(), [1, 1], [1, 1], [1, 1], 1, None).sum().backward()
            assert (xg.grad is not None) == input_grad
            torch.testing.assert_close(w_.grad.double(), wd.grad, rtol=1e-4, atol=1e-4)


# (x shape, weight shape, stride, padding, dilation, groups, dtype): calls whose output sees only
# padding along W or H, on which torch 2.14's oneDNN CPU conv segfaults (the first three), and one
# (dilation 1) on which it does not.
ONLY_PADDING = [
    ((2, 16, 13, 2), (34, 8, 5, 1), 3, 1, (1, 3), 2, torch.float32),
    ((1, 2, 6, 1), (34, 1, 2, 2), (5, 4), (0, 3), (4, 2), 2, torch.float32),
    ((2, 8, 2, 3), (2, 4, 2, 2), 1, 1, 3, 2, torch.bfloat16),
    ((2, 16, 5, 1), (8, 16, 3, 1), (1, 3), (1, 2), 1, 1, torch.float32),
]


@pytest.mark.parametrize("case", ONLY_PADDING)
def test_outputs_that_see_only_padding(case):
    """torch 2.14's oneDNN CPU conv segfaults when every output position along W (or H) reads only
    padding (channels_last, with bias; the output is the bias, x and w get zero gradients). fastops
    never hands it such a call (fastops.ops.conv2d.sees_only_padding): auto runs the native kernel,
    and the routes that run torch's conv (the Autograd kernel's under torch.func, the double
    backward) pad explicitly. Values, gradients and double backward against the float64 reference,
    on every CPU backend."""
    from fastops.ops.conv2d import sees_only_padding

    x_shape, w_shape, stride, padding, dilation, groups, dtype = case
    cl = torch.channels_last
    x = make_tensor(x_shape, dtype).contiguous(memory_format=cl)
    w = make_tensor(w_shape, dtype).contiguous(memory_format=cl)
    b = make_tensor((w_shape[0],), dtype)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    pair = [(v, v) if isinstance(v, int) else v for v in (stride, padding, dilation)]
    assert sees_only_padding(x, w, *pair)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-4)
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    ref = reference.conv2d(xd, wd, bd, **kw)
    ref_grads = torch.autograd.grad(ref.square().sum(), (xd, wd, bd), create_graph=True)
    ref_gx2 = torch.autograd.grad(sum(g.square().sum() for g in ref_grads), xd)[0]  # double backward
    for backend in ("auto", "native", "torch"):
        for _ in range(2):  # the second call takes auto's remembered route
            args = [t.clone().requires_grad_() for t in (x, w, b)]
            y = FF.conv2d(*args, **kw, backend=backend)
            if backend != "torch":  # backend="torch" is the slice-sum composition (fastops.reference)
                assert not _runs_torch(y), backend
            assert y.is_contiguous(memory_format=cl), (backend, y.stride())
            torch.testing.assert_close(y.double(), ref, **tol)
            grads = torch.autograd.grad(y.square().sum(), args, create_graph=True)
            for got, exp in zip(grads, ref_grads):
                torch.testing.assert_close(got.double(), exp, **tol)
            gx2 = torch.autograd.grad(sum(g.square().sum() for g in grads), args[0])[0]
            torch.testing.assert_close(gx2.double(), ref_gx2, **tol)

    def loss(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return FF.conv2d(x, w, b, **kw, backend="native").square().sum()

    gx, gw = torch.func.grad(loss, argnums=(0, 1))(x, w)
    torch.testing.assert_close(gx.double(), ref_grads[0], **tol)
    torch.testing.assert_close(gw.double(), ref_grads[1], **tol)


def test_swap_report_names_what_each_cpu_conv_runs():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 3, padding=1)
    )
    lines = str(fastops.swap(model)).splitlines()
    assert "(CPU float32: native)" in lines[1], lines
    assert "(CPU float32: native)" in lines[2], lines
    assert "torch's conv2d, native measured slower on float32 dense convs" in lines[3], lines
    explicit = str(fastops.swap(nn.Sequential(nn.Conv2d(16, 32, 3)), backend="native"))
    assert "CPU" not in explicit, explicit  # an explicit backend runs what it names


# (weight shape, stride, padding, dilation, groups, input H = W, runs native): the float32 Winograd class
# runs native under auto only with 32-256 channels in and out and at least 28 x 28 output pixels; the
# register-blocked class (3x3, 8-16 channels in and out) from 16 x 16 output pixels.
SIZE_RULED_AUTO = [
    ((16, 16, 3, 3), 1, 1, 1, 1, 16, True),
    ((16, 16, 3, 3), 1, 1, 1, 1, 15, False),  # 15 x 15 out
    ((8, 12, 3, 3), 1, 2, 1, 1, 18, True),  # 20 x 20 out
    ((16, 16, 3, 3), 1, 2, 2, 1, 20, False),  # dilation 2
    ((16, 16, 3, 3), 2, 1, 1, 1, 40, False),  # stride 2
    ((16, 16, 5, 5), 1, 2, 1, 1, 28, False),
    ((32, 16, 3, 3), 1, 1, 1, 2, 20, False),  # groups 2
    ((24, 16, 3, 3), 1, 1, 1, 1, 28, False),  # K > 16, < 32
    ((32, 32, 3, 3), 1, 1, 1, 1, 28, True),
    ((48, 40, 3, 3), 1, 2, 1, 1, 26, True),  # 28 x 28 out
    ((48, 40, 3, 3), 1, 0, 1, 1, 29, False),  # 27 x 27 out
    ((32, 32, 3, 3), 1, 1, 1, 1, 14, False),
    ((16, 32, 3, 3), 1, 1, 1, 1, 28, False),  # K < 32
    ((32, 16, 3, 3), 1, 1, 1, 1, 28, False),  # C < 32
    ((32, 32, 3, 3), 2, 1, 1, 1, 56, False),  # stride 2
    ((32, 32, 3, 3), 1, 2, 2, 1, 28, False),  # dilation 2
    ((32, 32, 3, 3), 1, 3, 1, 1, 28, False),  # padding 3
    ((64, 16, 3, 3), 1, 1, 1, 2, 28, False),  # groups 2
    ((32, 32, 5, 5), 1, 2, 1, 1, 28, False),
]


@pytest.mark.parametrize("direct_passes", [True, False], ids=["direct-passes", "no-direct-passes"])
@pytest.mark.parametrize("ws,stride,padding,dilation,groups,hw,native", SIZE_RULED_AUTO, ids=str)
def test_auto_runs_native_on_large_float32_3x3(
    ws, stride, padding, dilation, groups, hw, native, direct_passes, monkeypatch
):
    """The size rules, on every CPU: the register-blocked class runs native only where the kernel's
    direct passes run (AVX2 / AVX-512 with oneDNN; both answers of that probe are taken here), the
    Winograd class everywhere."""
    from fastops.ops import _contract

    monkeypatch.setattr(conv2d_ops, "_CPU_X86_SIMD", direct_passes)
    monkeypatch.setattr(conv2d_ops, "_CPU_AVX2_ONLY", False)  # the AVX2-only small-output rule: below
    _contract._ROUTES.clear()  # the other probe answer's routes
    if not direct_passes and min(ws[:2]) < 32:
        native = False  # the register-blocked rows
    x = make_tensor((1, ws[1] * groups, hw, hw), torch.float32).requires_grad_()
    w = make_tensor(ws, torch.float32, scale=(ws[1] * 9) ** -0.5).requires_grad_()
    y = FF.conv2d(x, w, None, stride, padding, dilation, groups)
    _contract._ROUTES.clear()
    assert _runs_torch(y) != native
    ref = reference.conv2d(x.double(), w.double(), None, stride, padding, dilation, groups)
    got, exp, same = to_unit_scale(y, ref, F.conv2d(x, w, None, stride, padding, dilation, groups))
    # torch's own float32 conv may miss the kernels' tight bound on these 28 x 28 sums of 288-800
    # products (it does on some seeds), so a call auto hands to torch is held to 2x torch's error.
    assert_close_to_reference(got, exp, torch_same_dtype=same, what="auto", is_torch_composition=not native)


# (weight shape, stride, padding, dilation, N, input H = W, runs native on an AVX2-only CPU): float32
# 3x3 groups-1 convs with padding 1 run native there on small outputs: stride 2 with C, K >= 32 on
# 32-800 output rows (N x P x Q), stride 1 with C, K >= 256 on at most 2 x 2 pixels and 32-512 rows.
SMALL_OUTPUT_AUTO = [
    ((64, 32, 3, 3), 2, 1, 1, 2, 16, True),  # 8 x 8 out, 128 rows
    ((64, 32, 3, 3), 2, 1, 1, 2, 8, True),  # 4 x 4 out, 32 rows
    ((64, 32, 3, 3), 2, 1, 1, 1, 8, False),  # 16 rows
    ((64, 32, 3, 3), 2, 1, 1, 1, 56, True),  # 28 x 28 out, 784 rows
    ((64, 32, 3, 3), 2, 1, 1, 1, 58, False),  # 29 x 29 out, 841 rows
    ((32, 16, 3, 3), 2, 1, 1, 2, 16, False),  # C < 32
    ((16, 32, 3, 3), 2, 1, 1, 2, 16, False),  # K < 32
    ((64, 32, 3, 3), 2, 0, 1, 2, 17, False),  # padding 0
    ((64, 32, 3, 3), 2, 1, 2, 2, 18, False),  # dilation 2
    ((64, 32, 3, 3), 1, 1, 1, 2, 4, False),  # stride 1 with C < 256
    ((256, 256, 3, 3), 1, 1, 1, 8, 2, True),  # 2 x 2 out, 32 rows
    ((256, 256, 3, 3), 1, 1, 1, 32, 1, True),  # 1 x 1 out, 32 rows
    ((256, 256, 3, 3), 1, 1, 1, 4, 2, False),  # 16 rows
    ((256, 256, 3, 3), 1, 1, 1, 128, 2, True),  # 512 rows
    ((256, 256, 3, 3), 1, 1, 1, 129, 2, False),  # 516 rows
    ((256, 256, 3, 3), 1, 1, 1, 4, 3, False),  # 3 x 3 out
    ((256, 128, 3, 3), 1, 1, 1, 8, 2, False),  # C < 256
    ((256, 256, 3, 3), (1, 2), 1, 1, 32, 2, False),  # stride (1, 2): 2 x 1 out, 64 rows
    ((128, 256, 3, 3), 1, 1, 1, 8, 2, False),  # K < 256
]


@pytest.mark.parametrize("avx2_only", [True, False], ids=["avx2-only", "avx512-or-other"])
@pytest.mark.parametrize("ws,stride,padding,dilation,n,hw,native", SMALL_OUTPUT_AUTO, ids=str)
def test_auto_runs_native_on_small_float32_3x3_outputs_on_avx2(
    ws, stride, padding, dilation, n, hw, native, avx2_only, monkeypatch
):
    """The AVX2-only small-output rule (fastops.ops.conv2d.cpu_auto_small_output_rule) picks the route
    per call from the output's size; other CPUs keep torch's conv2d for these classes. Either route
    gives the reference's values and gradients."""
    from fastops.ops import _contract

    monkeypatch.setattr(conv2d_ops, "_CPU_AVX2_ONLY", avx2_only)
    monkeypatch.setattr(conv2d_ops, "_CPU_X86_SIMD", True)
    _contract._ROUTES.clear()
    native = native and avx2_only
    x = make_tensor((n, ws[1], hw, hw), torch.float32).requires_grad_()
    w = make_tensor(ws, torch.float32, scale=(ws[1] * 9) ** -0.5).requires_grad_()
    y = FF.conv2d(x, w, None, stride, padding, dilation)
    _contract._ROUTES.clear()
    assert _runs_torch(y) != native
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = reference.conv2d(xd, wd, None, stride, padding, dilation, 1)
    same = F.conv2d(x, w, None, stride, padding, dilation)
    got, exp, same_ = to_unit_scale(y, ref, same)
    assert_close_to_reference(got, exp, torch_same_dtype=same_, what="auto", is_torch_composition=not native)
    g = make_tensor(y.shape, torch.float32)
    grads = torch.autograd.grad(y, (x, w), g)
    want = torch.autograd.grad(ref, (xd, wd), g.double())
    torch_grads = torch.autograd.grad(same, (x, w), g)
    for name, a, e, t in zip(("dx", "dw"), grads, want, torch_grads):
        got, exp, same_ = to_unit_scale(a, e, t)
        assert_close_to_reference(got, exp, torch_same_dtype=same_, what=name, is_torch_composition=not native)


class _StridedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(make_tensor((64, 32, 3, 3), scale=(32 * 9) ** -0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FF.conv2d(x, self.w, None, 2, 1)


def test_small_output_rule_puts_no_guard_on_a_dynamic_batch(monkeypatch):
    """The call-time size rules read concrete sizes only (symbolic ones take the native op): an export
    with a dynamic batch of a class they rule succeeds and serves batches inside and far outside the
    row range, while eager runs the same call native at 32 rows and torch's conv at 16. torch.export
    traces with oneDNN disabled; the rule decides as if it were enabled, as eager does (the graph
    used to hold torch's conv2d here)."""
    from fastops.ops import _contract

    monkeypatch.setattr(conv2d_ops, "_CPU_AVX2_ONLY", True)
    monkeypatch.setattr(conv2d_ops, "_CPU_X86_SIMD", True)
    _contract._ROUTES.clear()
    model, x, big = _StridedConv(), make_tensor((2, 32, 8, 8)), make_tensor((300, 32, 8, 8))
    assert not _runs_torch(model(x.clone().requires_grad_()))  # 4 x 4 out, 32 rows
    assert _runs_torch(model(make_tensor((1, 32, 8, 8), requires_grad=True)))  # 16 rows
    _contract._ROUTES.clear()
    batch = torch.export.Dim("batch", min=2, max=1 << 16)
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("fastops" in t and "conv2d_fwd" in t for t in targets), targets
    for inp in (x, big):  # 32 and 4800 rows
        torch.testing.assert_close(ep.module()(inp), F.conv2d(inp, model.w, None, 2, 1), rtol=1e-4, atol=1e-4)
    _contract._ROUTES.clear()


def test_swap_report_states_the_avx2_rules(monkeypatch):
    """On an AVX2-only CPU the report names the patch convs native and each small-output range."""
    monkeypatch.setattr(conv2d_ops, "_CPU_X86_SIMD", True)
    monkeypatch.setattr(conv2d_ops, "_CPU_AVX2_ONLY", True)

    def model() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(96, 192, 2, stride=2),
            nn.Conv2d(192, 256, 3, stride=2, padding=1),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.Conv2d(256, 512, 3, padding=1),
            nn.Conv2d(512, 512, 5, padding=2),
        )

    lines = str(fastops.swap(model())).splitlines()
    assert lines[1].endswith("(CPU float32: native)"), lines
    assert "(CPU float32: native for outputs of 32-800 rows (batch x pixels), else torch's conv2d" in lines[2], lines
    assert (
        "(CPU float32: native Winograd for outputs of at least 784 pixels, native for outputs of at most 4 "
        "pixels and 32-512 rows (batch x pixels), else torch's conv2d" in lines[3]
    ), lines
    assert "(CPU float32: native for outputs of at most 4 pixels and 32-512 rows" in lines[4], lines
    assert "torch's conv2d, native measured slower on float32 dense convs" in lines[5], lines
    monkeypatch.setattr(conv2d_ops, "_CPU_AVX2_ONLY", False)
    lines = str(fastops.swap(model())).splitlines()
    for line in lines[1:3] + lines[4:6]:
        assert "torch's conv2d, native measured slower on float32 dense convs" in line, lines
    assert "native Winograd for outputs of at least 784 pixels, else torch's conv2d" in lines[3], lines


def test_swap_report_states_the_size_rules(monkeypatch):
    monkeypatch.setattr(conv2d_ops, "_CPU_X86_SIMD", True)  # where the register-blocked passes run
    monkeypatch.setattr(conv2d_ops, "_CPU_AVX2_ONLY", False)
    model = nn.Sequential(
        nn.Conv2d(32, 64, 3, padding=1),
        nn.Conv2d(64, 64, 3, padding="same"),
        nn.Conv2d(16, 32, 3),
        nn.Conv2d(16, 16, 3, padding=1),
    )
    lines = str(fastops.swap(model)).splitlines()
    for line in lines[1:3]:
        assert "(CPU float32: native Winograd for outputs of at least 784 pixels, else torch's conv2d" in line, lines
    assert "torch's conv2d, native measured slower on float32 dense convs" in lines[3], lines
    assert "(CPU float32: native register-blocked for outputs of at least 256 pixels, else torch's" in lines[4], lines
    monkeypatch.setattr(conv2d_ops, "_CPU_X86_SIMD", False)  # where they do not: torch's conv2d
    lines = str(fastops.swap(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1)))).splitlines()
    assert "torch's conv2d, native measured slower on float32 dense convs" in lines[1], lines
