# Conv2d, Triton implicit-GEMM kernels, registered as fastops_triton::conv2d_{fwd,bwd}.
#
# Math (x (N, C, H, W), w (K, Cg, R, S), y (N, K, P, Q), Cg = C / G, Kg = K / G, group g; hi = p sh -
# ph + r dh, wi = q sw - pw + s dw, x = 0 outside the image):
#   forward  y[n, k, p, q] = act(b[k] + sum_{c, r, s} w[k, c, r, s] x[n, g Cg + c, hi, wi])
#   dgrad    dx[n, c', h, w] = sum_{k, r, s : p = (h + ph - r dh) / sh, q = (w + pw - s dw) / sw
#                                    integral and in range} w[k, c, r, s] dy[n, k, p, q]
#   wgrad    dw[k, c, r, s] = sum_{n, p, q} dy[n, k, p, q] x[n, g Cg + c, hi, wi];  db[k] = sum dy[:, k]
# Each pass is one GEMM per group, its operand gathered on the fly from the NCHW tensors (never
# an im2col tensor in memory):
#   forward  M = N P Q,  N = Kg,          K = Cg R S   A = gather(x),  B = w^T
#   dgrad    M = N H W,  N = Cg,          K = Kg R S   A = gather(dy) (zero where the stride skips)
#   wgrad    M = Kg,     N = Cg R S,      K = N P Q    A = dy,         B = gather(x)
# FLOPs: 2 N K P Q Cg R S per pass (dgrad does (sh sw)x more multiply-adds, most by zeros, when
# strided: the simple gather keeps it correct for every stride and dilation).
#
# Grid: (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), G); each program owns one BLOCK_M x BLOCK_N output tile
# of one group and loops over the whole K dimension in BLOCK_K steps, so every output element is
# written by exactly one program (no atomics, deterministic). wgrad's first column of programs
# also sums dy for db. Tiles live in registers; tl.dot feeds the tensor cores for fp16/bf16.
# Index math is int64 from the program ids on (N C H W and N K P Q may exceed 2^31: pid_m * BLOCK_M
# in int32 would wrap), and products of two int32 arguments (P Q, H W, R S) are never formed before
# an int64 operand meets them (m // Q // P, not m // (P Q)).
#
# Traffic: forward reads x R S times through L2 in the worst case (every (r, s) re-gathers it;
# L1/L2 catch most of it), w once per M-tile, writes y once; the unfused torch baseline (cuDNN)
# is the same op, so the benchmark's TFLOP/s uses the FLOP count above. dgrad first reads w once
# more (torch.isfinite(w).all(), on the device) to choose its path (Numerics).
#
# Numerics: accumulation in float32 (float64 for float64 input); fp32 tl.dot uses IEEE precision
# (no TF32), and each K-tile's float32 dot joins the running sum with Kahan compensation
# (_kahan_add): on a GPU `acc += tl.dot(...)` becomes one dot accumulating into acc, a running sum
# over the whole reduction whose error grows like sqrt(GEMM_K) ulp (a weight gradient's N P Q = 5740
# missed the float32 tolerance on an H100). So fp32 results match the float64 reference to ~1e-6
# relative. fp16 / bf16 keep the plain accumulation (their bound is 2x torch's own error). bias
# and ReLU are applied to the fp32 accumulator before the single rounding to the output dtype. ReLU is
# where(acc <= 0, 0, acc), not tl.maximum (which maps NaN to 0 on a GPU): NaN stays NaN, as torch.relu.
# inf/NaN, as torch: the forward and wgrad multiply the gather's zero padding like torch's im2col
# does (an inf weight at a padded tap gives NaN in y, an inf dy meeting padding NaN in dw: torch on
# the CPU gives the same; cuDNN skips padded taps, so on CUDA its dw is +-inf there, seen on an
# H100). dgrad's masked taps are not padding but taps that meet no output pixel; torch
# (col2im) adds nothing for them, while in a dot their zero A element times an inf/NaN weight is
# NaN. So a weight with any inf/NaN (a device-side flag, no host sync) takes an exact path: one
# reduction index at a time, an outer product whose masked (pixel, tap) pairs add exact zeros
# (slow, but only a diverged model has such weights).
#
# Preconditions (checked on the host by fastops.ops.conv2d.check_op_args, csrc/fastops.h's rules and
# text): contiguous NCHW operands (made so here; the outputs go back in the layout F.conv2d gives,
# the ops' memory_format), the native ops' argument rules (a non-empty weight among them), and
# the support table's dtypes: fp16/bf16/fp32/fp64 on CUDA, fp32/fp64 on CPU under TRITON_INTERPRET=1.
#
# References: NVIDIA CUTLASS "Implicit GEMM Convolution" (docs/implicit_gemm_convolution.md);
# Triton tutorial 03-matrix-multiplication (tiling, activation on the fp32 accumulator).
"""Triton conv2d kernels (implicit GEMM), registered as ``fastops_triton::conv2d_fwd`` / ``conv2d_bwd``
with the native ops' schemas. Importing this module registers the ops."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastops.ops import conv2d as contract
from fastops.ops.conv2d import (
    bwd_fake,
    check_op_args,
    check_op_bias,
    check_op_grad_out,
    fwd_fake,
    in_memory_format,
    memory_format,
)
from fastops.triton import interpreting
from fastops.triton._register import check_kernel_input, new_output, triton_library_op

# ruff: noqa: ANN001  (kernel arguments are pointers and ints whose types Triton infers at launch)


def _configs() -> list[triton.Config]:
    # The interpreter runs each program in numpy: one config, large tiles, few programs.
    if interpreting():
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 32}, num_warps=4)]
    configs = [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=2, num_stages=4),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=2, num_stages=2),
    ]
    # FASTOPS_TRITON_AUTOTUNE=0 (read at import; scripts/gpu_suite.sh's quick run): one config, no
    # sweep. 64x64x32 at 4 stages keeps float64 tiles within shared memory (128 KiB).
    if os.environ.get("FASTOPS_TRITON_AUTOTUNE", "1") == "0":
        return [configs[2]]
    return configs


@triton.jit
def _kahan_add(acc, comp, part):  # noqa: ANN001, ANN202
    """(acc, comp) after adding part with Kahan compensation (the sum is acc - comp). A non-finite
    acc drops the compensation ((inf - acc) - part would be NaN): inf / NaN propagate as in a plain sum."""
    y = part - comp
    t = acc + y
    comp = tl.where(tl.abs(t) < float("inf"), (t - acc) - y, 0.0)
    return t, comp


@triton.autotune(configs=_configs(), key=["GEMM_M", "GEMM_N", "GEMM_K"])
@triton.jit
def conv2d_fwd_implicit_gemm_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, C, H, W, K, P, Q, R, S,
    sh, sw, ph, pw, dh, dw, Cg, Kg,
    GEMM_M, GEMM_N, GEMM_K,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, ACC_F64: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
) -> None:  # fmt: skip
    # Program ids are int64 before any arithmetic: pid_m * BLOCK_M wraps in int32 past 2^31 pixels.
    pid_m, pid_n, g = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    acc_t = tl.float64 if ACC_F64 else tl.float32
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows: (n, p, q)
    kn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # columns: output channel within the group
    m_ok, k_ok = m < GEMM_M, kn < GEMM_N
    q = m % Q
    p = (m // Q) % P
    n = m // Q // P  # = m // (P Q) without forming P Q in int32
    x_base = (n * C + g * Cg) * H * W  # (BLOCK_M,) int64
    w_rows = (g * Kg + kn) * GEMM_K  # (BLOCK_N,) int64
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_t)
    comp = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_t)
    for k0 in range(0, GEMM_K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)  # reduction index: (c, r, s)
        kk_ok = kk < GEMM_K
        s = kk % S
        r = (kk // S) % R
        c = kk // S // R
        hi = p[:, None] * sh - ph + r[None, :] * dh
        wi = q[:, None] * sw - pw + s[None, :] * dw
        a_ok = m_ok[:, None] & kk_ok[None, :] & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        a_off = x_base[:, None] + (c[None, :].to(tl.int64) * H + hi) * W + wi
        a = tl.load(x_ptr + a_off, mask=a_ok, other=0.0)
        b = tl.load(w_ptr + w_rows[None, :] + kk[:, None], mask=kk_ok[:, None] & k_ok[None, :], other=0.0)
        if IEEE:  # float32: each K-tile's dot joins the sum compensated (Numerics)
            acc, comp = _kahan_add(acc, comp, tl.dot(a, b, input_precision="ieee", out_dtype=acc_t))
        else:
            acc += tl.dot(a, b, out_dtype=acc_t)
    if IEEE:
        acc = acc - comp
    if HAS_BIAS:
        acc += tl.load(b_ptr + g * Kg + kn, mask=k_ok, other=0.0).to(acc_t)[None, :]
    if RELU:
        # Not tl.maximum(acc, 0): on a GPU that maps NaN to 0, torch.relu keeps it.
        acc = tl.where(acc <= 0, 0.0, acc)
    y_off = ((n * K)[:, None] + (g * Kg + kn)[None, :]) * P * Q + (p * Q + q)[:, None]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


@triton.jit
def _dgrad_operands(
    dy_ptr, w_ptr, kk, m_ok, h, wq, dy_base, k_group, cn, c_ok,
    P, Q, R, S, sh, sw, ph, pw, dh, dw, Cg, GEMM_K,
):  # fmt: skip
    """The dgrad A tile gather(dy) (rows m, reduction indices kk = (k, r, s)), its mask (row m and
    tap (r, s) meet an output pixel), and the B tile w[k_group + k, cn, r, s] (k_group = g Kg, int64)."""
    kk_ok = kk < GEMM_K
    s = kk % S
    r = (kk // S) % R
    k = kk // S // R
    ph_num = h[:, None] + ph - r[None, :] * dh  # = p sh when this (r, h) pair contributes
    pw_num = wq[:, None] + pw - s[None, :] * dw
    # Floor-mod is safe on negatives here only after the >= 0 test, so test that first.
    a_ok = m_ok[:, None] & kk_ok[None, :] & (ph_num >= 0) & (pw_num >= 0)
    a_ok = a_ok & (ph_num % sh == 0) & (pw_num % sw == 0)
    pp = ph_num // sh
    qq = pw_num // sw
    a_ok = a_ok & (pp < P) & (qq < Q)
    a_off = dy_base[:, None] + (k[None, :].to(tl.int64) * P + pp) * Q + qq
    a = tl.load(dy_ptr + a_off, mask=a_ok, other=0.0)
    b_off = ((k_group + k[:, None]) * Cg + cn[None, :]) * R * S + r[:, None] * S + s[:, None]
    b = tl.load(w_ptr + b_off, mask=kk_ok[:, None] & c_ok[None, :], other=0.0)
    return a, a_ok, b


@triton.autotune(configs=_configs(), key=["GEMM_M", "GEMM_N", "GEMM_K"])
@triton.jit
def conv2d_dgrad_implicit_gemm_kernel(
    dy_ptr, w_ptr, w_finite_ptr, dx_ptr,
    N, C, H, W, K, P, Q, R, S,
    sh, sw, ph, pw, dh, dw, Cg, Kg,
    GEMM_M, GEMM_N, GEMM_K,
    ACC_F64: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
) -> None:  # fmt: skip
    pid_m, pid_n, g = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    acc_t = tl.float64 if ACC_F64 else tl.float32
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows: input pixel (n, h, w)
    cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # columns: input channel within the group
    m_ok, c_ok = m < GEMM_M, cn < GEMM_N
    wq = m % W
    h = (m // W) % H
    n = m // W // H
    dy_base = (n * K + g * Kg) * P * Q
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_t)
    comp = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_t)
    if tl.load(w_finite_ptr) != 0:
        for k0 in range(0, GEMM_K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)  # reduction index: (k, r, s)
            a, a_ok, b = _dgrad_operands(
                dy_ptr, w_ptr, kk, m_ok, h, wq, dy_base, g * Kg, cn, c_ok,
                P, Q, R, S, sh, sw, ph, pw, dh, dw, Cg, GEMM_K,
            )  # fmt: skip
            if IEEE:  # float32: each K-tile's dot joins the sum compensated (Numerics)
                acc, comp = _kahan_add(acc, comp, tl.dot(a, b, input_precision="ieee", out_dtype=acc_t))
            else:
                acc += tl.dot(a, b, out_dtype=acc_t)
    else:
        # The weight holds inf or NaN. In the dot, a tap that misses every output pixel (padding,
        # stride) is a zero A element times that weight: 0 * inf = NaN in a dx torch leaves finite.
        # So, one reduction index at a time, an outer product whose masked pairs add exact zeros.
        for k0 in range(0, GEMM_K):
            kk = k0 + tl.arange(0, 1)
            a, a_ok, b = _dgrad_operands(
                dy_ptr, w_ptr, kk, m_ok, h, wq, dy_base, g * Kg, cn, c_ok,
                P, Q, R, S, sh, sw, ph, pw, dh, dw, Cg, GEMM_K,
            )  # fmt: skip
            acc += tl.where(a_ok, a.to(acc_t) * b.to(acc_t), 0.0)  # (BLOCK_M, 1) x (1, BLOCK_N)
    if IEEE:
        acc = acc - comp
    dx_off = ((n * C)[:, None] + (g * Cg + cn)[None, :]) * H * W + (h * W + wq)[:, None]
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & c_ok[None, :])


@triton.autotune(configs=_configs(), key=["GEMM_M", "GEMM_N", "GEMM_K"])
@triton.jit
def conv2d_wgrad_implicit_gemm_kernel(
    dy_ptr, x_ptr, dw_ptr, db_ptr,
    N, C, H, W, K, P, Q, R, S,
    sh, sw, ph, pw, dh, dw, Cg, Kg,
    GEMM_M, GEMM_N, GEMM_K,
    BIAS_GRAD: tl.constexpr, ACC_F64: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
) -> None:  # fmt: skip
    pid_m, pid_n, g = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    acc_t = tl.float64 if ACC_F64 else tl.float32
    km = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows: output channel within the group
    j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # columns: (c, r, s)
    k_ok, j_ok = km < GEMM_M, j < GEMM_N
    s = j % S
    r = (j // S) % R
    c = j // S // R
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_t)
    comp = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_t)
    dbias = tl.zeros((BLOCK_M,), dtype=acc_t)
    for t0 in range(0, GEMM_K, BLOCK_K):
        t = (t0 + tl.arange(0, BLOCK_K)).to(tl.int64)  # reduction index: (n, p, q)
        t_ok = t < GEMM_K
        q = t % Q
        p = (t // Q) % P
        n = t // Q // P
        a_off = ((n * K)[None, :] + (g * Kg + km)[:, None]) * P * Q + (p * Q + q)[None, :]
        a = tl.load(dy_ptr + a_off, mask=k_ok[:, None] & t_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        hi = p[:, None] * sh - ph + r[None, :] * dh
        wi = q[:, None] * sw - pw + s[None, :] * dw
        b_ok = t_ok[:, None] & j_ok[None, :] & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
        b_off = ((n * C)[:, None] + (g * Cg + c)[None, :]) * H * W + hi * W + wi
        b = tl.load(x_ptr + b_off, mask=b_ok, other=0.0)  # (BLOCK_K, BLOCK_N)
        if IEEE:  # float32: each K-tile's dot joins the sum compensated (Numerics)
            acc, comp = _kahan_add(acc, comp, tl.dot(a, b, input_precision="ieee", out_dtype=acc_t))
        else:
            acc += tl.dot(a, b, out_dtype=acc_t)
        if BIAS_GRAD:
            dbias += tl.sum(a.to(acc_t), axis=1)
    if IEEE:
        acc = acc - comp
    dw_off = (g * Kg + km)[:, None] * GEMM_N + j[None, :]
    tl.store(dw_ptr + dw_off, acc.to(dw_ptr.dtype.element_ty), mask=k_ok[:, None] & j_ok[None, :])
    if BIAS_GRAD:
        if pid_n == 0:
            tl.store(db_ptr + g * Kg + km, dbias.to(db_ptr.dtype.element_ty), mask=k_ok)


# ---- host side --------------------------------------------------------------------------------


def _geometry_args(x: torch.Tensor, weight: torch.Tensor, pq: tuple[int, int], st, pad, dil, groups) -> list:  # noqa: ANN001
    n, c, h, w = x.shape
    k, cg, r, s = weight.shape
    return [n, c, h, w, k, pq[0], pq[1], r, s, st[0], st[1], pad[0], pad[1], dil[0], dil[1], cg, k // groups]


def _grid(m: int, n: int, groups: int):  # noqa: ANN202
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), groups)


@triton_library_op(
    "fastops_triton::conv2d_fwd",
    mutates_args=(),
    schema="(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
    "bool relu) -> Tensor",
    fake=fwd_fake,
)
def conv2d_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    relu: bool,
) -> torch.Tensor:
    """y (N, K, P, Q) = act(conv2d(x, weight) + bias), x's dtype, in memory_format(x, weight, ...)."""
    op = "conv2d_fwd"
    p_out, q_out = check_op_args(op, x, weight, stride, padding, dilation, groups)
    k = weight.shape[0]
    check_op_bias(op, x, k, bias)
    check_kernel_input(op, "conv2d", x, "input")
    out_format = memory_format(x, weight, stride, padding, dilation, groups)
    x, weight = x.contiguous(), weight.contiguous()
    y = new_output((x.shape[0], k, p_out, q_out), x.dtype, x.device)
    cg, r, s = weight.shape[1:]
    gm, gn, gk = x.shape[0] * p_out * q_out, k // groups, cg * r * s
    if y.numel() == 0 or gk == 0:
        if y.numel():
            y.zero_()
            if bias is not None:
                y += bias.view(1, -1, 1, 1)
            if relu:
                y.clamp_min_(0)
        return in_memory_format(y, out_format)
    b = bias.contiguous() if bias is not None else None
    wrap_triton(conv2d_fwd_implicit_gemm_kernel)[_grid(gm, gn, groups)](
        x, weight, b, y, *_geometry_args(x, weight, (p_out, q_out), stride, padding, dilation, groups),
        gm, gn, gk, HAS_BIAS=bias is not None, RELU=relu, ACC_F64=x.dtype == torch.float64,
        IEEE=x.dtype == torch.float32,
    )  # fmt: skip
    # The kernels work in NCHW; a channels_last call gets torch's layout back.
    return in_memory_format(y, out_format)


@triton_library_op(
    "fastops_triton::conv2d_bwd",
    mutates_args=(),
    schema="(Tensor grad_out, Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
    "int groups, bool[3] output_mask) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)",
    fake=bwd_fake,
)
def conv2d_bwd(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight in memory_format(x, weight, ...), grad_bias); a masked-off output is an empty (0,)
    tensor."""
    op = "conv2d_bwd"
    p_out, q_out = check_op_args(op, x, weight, stride, padding, dilation, groups)
    n, c, h, w = x.shape
    k, cg, r, s = weight.shape
    check_op_grad_out(op, x, [n, k, p_out, q_out], grad_out)
    check_kernel_input(op, "conv2d", x, "input")
    out_format = memory_format(x, weight, stride, padding, dilation, groups)
    x, weight, dy = x.contiguous(), weight.contiguous(), grad_out.contiguous()
    geo = _geometry_args(x, weight, (p_out, q_out), stride, padding, dilation, groups)
    flags = dict(ACC_F64=x.dtype == torch.float64, IEEE=x.dtype == torch.float32)
    dx = new_output(x.shape, x.dtype, x.device) if output_mask[0] else x.new_empty((0,))
    dw = new_output(weight.shape, x.dtype, x.device) if output_mask[1] else x.new_empty((0,))
    db = new_output((k,), x.dtype, x.device) if output_mask[2] else x.new_empty((0,))
    kg = k // groups
    empty_sum = n * p_out * q_out == 0 or cg == 0
    if output_mask[0] and dx.numel():
        if empty_sum or kg == 0:
            dx.zero_()
        else:
            gm, gn, gk = n * h * w, cg, kg * r * s
            # Read on the device (no sync): an inf/NaN weight takes the kernel's exact path.
            w_finite = torch.isfinite(weight).all().to(torch.int32)
            wrap_triton(conv2d_dgrad_implicit_gemm_kernel)[_grid(gm, gn, groups)](
                dy, weight, w_finite, dx, *geo, gm, gn, gk, **flags
            )
    if output_mask[1] or output_mask[2]:
        if empty_sum:
            if output_mask[1]:
                dw.zero_()
            if output_mask[2]:
                db.copy_(dy.sum((0, 2, 3)) if n * p_out * q_out else torch.zeros_like(db))
        else:
            gm, gn, gk = kg, cg * r * s, n * p_out * q_out
            # Without a requested weight gradient the kernel still runs (its db sum rides on the
            # same dy tiles) and writes into a scratch buffer.
            dw_buf = dw if output_mask[1] else torch.empty(weight.shape, dtype=x.dtype, device=x.device)
            wrap_triton(conv2d_wgrad_implicit_gemm_kernel)[_grid(gm, gn, groups)](
                dy, x, dw_buf, db if output_mask[2] else None, *geo, gm, gn, gk, BIAS_GRAD=bool(output_mask[2]), **flags
            )
    if output_mask[0]:
        dx = in_memory_format(dx, out_format)
    if output_mask[1]:
        dw = in_memory_format(dw, out_format)
    return dx, dw, db


# Autograd (double backward included), vmap and autocast of the ops above: the same registration as
# the native ops', from the one place that knows both passes.
contract.register(torch.ops.fastops_triton)
