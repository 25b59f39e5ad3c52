# Fused linear + ReLU, Triton kernels, registered as fastops_triton::linear_relu_{fwd,bwd}.
#
# Math (as csrc/cpu/linear_relu.cpp). x seen as A (M, K), weight B (N, K), bias b (N,):
#   forward:  C = relu(A B^T + b)                                     2*M*N*K FLOPs
#   backward: D = G (.) not[C <= 0];  dA = D B,  dB = D^T A,  db = sum_m D   4*M*N*K FLOPs
# The forward saves A, B and C only; C's sign is the mask.
#
# One kernel, three uses. linear_relu_gemm_kernel computes P = Y Z for Y (I, R) and Z (R, J),
# both addressed through strides (no transposed copies):
#   forward  I=M, J=N, R=K:  Y = A, Z[k, n] = B[n, k]; epilogue + b[n], ReLU, before the store.
#   grad_x   I=M, J=K, R=N:  Y = G masked on load by not(C <= 0), Z = B.
#   grad_w   I=N, J=K, R=M:  Y[n, m] = G[m, n] masked by not(C[m, n] <= 0), Z = A; the programs of the
#                            first J tile also sum their masked Y tiles over R into db (each n row
#                            of db belongs to exactly one program: no atomics).
# The mask is applied to the G tile in registers as it is loaded, so no masked copy of G is ever
# written; grad_x and grad_w each read G and C once per J tile they cover.
#
# Grid. One program per (BLOCK_I x BLOCK_J) tile of P, launched 1-D and mapped to tiles in groups of
# GROUP_I tile rows (the tutorial's grouped ordering): consecutive programs share Y tiles and a
# group's Z tiles, so L2 serves most re-reads. The J tile count is at least 1 so db is written when
# J = K = 0. The program id is cast to int64 before any arithmetic, so the offsets along I and J
# and the reduction index are int64 (I * stride may exceed 2^31).
#
# Tiling. Per iteration a program loads a BLOCK_I x BLOCK_R tile of Y (and of C for the mask) and a
# BLOCK_R x BLOCK_J tile of Z into registers / shared memory (Triton's pipelining, num_stages),
# multiplies them with tl.dot into a BLOCK_I x BLOCK_J accumulator that stays in registers for the
# whole R loop; the epilogue runs on that accumulator and stores once. Tiles are autotuned from a
# short list keyed on (I, J, R); under TRITON_INTERPRET=1 one 16^3 config (the interpreter runs
# numpy per program, so every config costs real time and proves nothing about speed).
#
# Traffic (s = bytes per element), ignoring tile re-reads that hit L2:
#   forward:  read M*K*s + N*K*s (+N*s), write M*N*s once, already activated.
#             torch: addmm writes C (after copying b into it), relu reads C and writes again:
#             +2*M*N*s and an extra M x N tensor.
#   backward: grad_x reads G, C (2*M*N*s) and B, writes M*K*s; grad_w reads G, C, A, writes
#             N*K*s + N*s. torch: threshold_backward reads G, C and writes D (3*M*N*s), then the
#             two mm read D twice and db reads it again: the same products plus 2*M*N*s and an
#             M x N tensor. The benchmark's TFLOP/s counts 2*M*N*K (fwd) and 6*M*N*K (fwd+bwd).
#
# Numerics. Accumulation in float32 for fp16/bf16/fp32 inputs and float64 for fp64; fp32 dots use
# input_precision="ieee" (no TF32: results match float32 BLAS, not 10-bit mantissas). Bias and ReLU
# are applied to the accumulator, then one rounding to the output dtype. ReLU is
# where(acc <= 0, 0, acc), not maximum (which maps NaN to 0 on a GPU): NaN stays NaN, as torch.relu.
# The backward keeps G where not(C <= 0), threshold_backward's rule: exact zeros are masked, NaN
# outputs pass their gradient on (torch's dx for x = [[nan, 1]], w = [[1, 1]] is [[1, 1]]); masked G
# elements become exact zeros even when G holds NaN or inf there.
#
# Preconditions (fastops.ops.linear_relu.check_op_args + _check_triton_input): x (*, K), weight (N, K), bias (N,), one
# dtype, fp16/bf16/fp32/fp64 on a CUDA device, fp32/fp64 on CPU under TRITON_INTERPRET=1 (the
# support table in fastops.ops.linear_relu; the raw ops refuse the rest). Any strides: x is
# flattened with reshape (a copy only when its layout needs one), the others are read by stride.
#
# References. The Triton tutorial 03-matrix-multiplication (grouped ordering, activation on the
# fp32 accumulator); cuBLASLt's RELU_AUX_BIAS / DRELU_BGRAD epilogues (the same split of the fused
# backward); csrc/cpu/linear_relu.cpp.
"""Triton fused linear+ReLU: ``fastops_triton::linear_relu_fwd`` and ``linear_relu_bwd``.

Same schemas and semantics as the native ``fastops::linear_relu_*`` ops (csrc/registration.cpp).
Importing this module registers the ops (see ``_register.py`` for which torch.library kind and why).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastops.ops import linear_relu as contract
from fastops.ops.linear_relu import bwd_fake, check_op_args, check_op_bwd_args, fwd_fake
from fastops.triton import interpreting
from fastops.triton._register import check_kernel_input, new_output, triton_library_op

# ---- kernel -----------------------------------------------------------------------------------
# Kernel parameters stay unannotated: Triton types them at launch (pointer, i32/i64, fp32) and reads
# annotations other than tl.constexpr as type/specialization hints. I, J, R are the GEMM letters of
# the header.
# ruff: noqa: ANN001, E741


def _configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"BLOCK_I": 16, "BLOCK_J": 16, "BLOCK_R": 16, "GROUP_I": 4}, num_warps=1)]
    shapes = [(128, 128, 32, 4, 4), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4), (128, 256, 64, 3, 8)]
    # FASTOPS_TRITON_AUTOTUNE=0 (read at import; scripts/gpu_suite.sh's quick run): one config, no
    # sweep. 64x64x32 at 4 stages keeps float64 tiles within shared memory (128 KiB).
    if os.environ.get("FASTOPS_TRITON_AUTOTUNE", "1") == "0":
        shapes = [(64, 64, 32, 4, 4)]
    return [
        triton.Config({"BLOCK_I": bi, "BLOCK_J": bj, "BLOCK_R": br, "GROUP_I": 8}, num_stages=st, num_warps=w)
        for bi, bj, br, st, w in shapes
    ]


@triton.autotune(configs=_configs(), key=["I", "J", "R", "HAS_MASK", "WRITE_DB"])
@triton.jit
def linear_relu_gemm_kernel(
    y_ptr, z_ptr, p_ptr, c_ptr, bias_ptr, db_ptr,
    I, J, R,
    s_yi, s_yr, s_ci, s_cr, s_zr, s_zj, s_pi, s_pj, s_bias,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, WRITE_DB: tl.constexpr,
    ACC_FP64: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr, GROUP_I: tl.constexpr,
) -> None:  # fmt: skip
    acc_t = tl.float64 if ACC_FP64 else tl.float32
    pid = tl.program_id(0).to(tl.int64)
    tiles_i = tl.cdiv(I, BLOCK_I)
    tiles_j = tl.maximum(tl.cdiv(J, BLOCK_J), 1)
    per_group = GROUP_I * tiles_j
    first_i = (pid // per_group) * GROUP_I
    rows = tl.minimum(tiles_i - first_i, GROUP_I)
    pid_i = first_i + (pid % per_group) % rows
    pid_j = (pid % per_group) // rows

    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    in_i = offs_i < I
    in_j = offs_j < J
    acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=acc_t)
    db = tl.zeros((BLOCK_I,), dtype=acc_t)
    for r0 in range(0, R, BLOCK_R):
        offs_r = tl.arange(0, BLOCK_R).to(tl.int64) + r0
        in_r = offs_r < R
        ymask = in_i[:, None] & in_r[None, :]
        y = tl.load(y_ptr + offs_i[:, None] * s_yi + offs_r[None, :] * s_yr, mask=ymask, other=0.0)
        if HAS_MASK:
            c = tl.load(c_ptr + offs_i[:, None] * s_ci + offs_r[None, :] * s_cr, mask=ymask, other=0.0)
            y = tl.where(c <= 0, tl.zeros_like(y), y)  # threshold_backward: NaN outputs pass G
            if WRITE_DB:
                db += tl.sum(y.to(acc_t), axis=1)
        z = tl.load(
            z_ptr + offs_r[:, None] * s_zr + offs_j[None, :] * s_zj, mask=in_r[:, None] & in_j[None, :], other=0.0
        )
        acc = tl.dot(y, z, acc, input_precision=DOT_PRECISION, out_dtype=acc_t)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_j * s_bias, mask=in_j, other=0.0).to(acc_t)[None, :]
    if RELU:
        acc = tl.where(acc <= 0, 0.0, acc)
    p = acc.to(p_ptr.dtype.element_ty)
    tl.store(p_ptr + offs_i[:, None] * s_pi + offs_j[None, :] * s_pj, p, mask=in_i[:, None] & in_j[None, :])
    if WRITE_DB:
        tl.store(db_ptr + offs_i, db.to(db_ptr.dtype.element_ty), mask=in_i & (pid_j == 0))


# ---- checks and launchers ---------------------------------------------------------------------


def _check_triton_input(op: str, x: torch.Tensor) -> None:
    """What only the Triton kernels need: a device they run on and a dtype they take there (the
    support table's row: fp16/bf16 on CUDA only)."""
    check_kernel_input(op, "linear_relu", x, "x")


def _gemm(
    y: torch.Tensor,
    y_strides: tuple[int, int],
    z: torch.Tensor,
    z_strides: tuple[int, int],
    p: torch.Tensor,
    I: int,
    J: int,
    R: int,
    *,
    mask: torch.Tensor | None = None,
    mask_strides: tuple[int, int] = (0, 0),
    bias: torch.Tensor | None = None,
    relu: bool = False,
    db: torch.Tensor | None = None,
) -> None:
    """p (I, J) contiguous = [mask not(C <= 0) on] y (I, R) @ z (R, J) [+ bias, relu]; db = row sums of masked y."""
    if I == 0 or (J == 0 and db is None):
        return
    fp64 = p.dtype == torch.float64
    precision = "ieee" if p.dtype in (torch.float32, torch.float64) else "tf32"

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(I, meta["BLOCK_I"]) * max(triton.cdiv(J, meta["BLOCK_J"]), 1),)

    wrap_triton(linear_relu_gemm_kernel)[grid](
        y, z, p, mask, bias, db,
        I, J, R,
        y_strides[0], y_strides[1], mask_strides[0], mask_strides[1], z_strides[0], z_strides[1], J, 1,
        bias.stride(0) if bias is not None else 0,
        HAS_MASK=mask is not None, HAS_BIAS=bias is not None, RELU=relu, WRITE_DB=db is not None,
        ACC_FP64=fp64, DOT_PRECISION=precision,
    )  # fmt: skip


def _launch_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    op = "linear_relu_fwd"
    g = check_op_args(op, x, weight, bias)
    _check_triton_input(op, x)
    a = x.reshape(g.M, g.K)
    out = new_output((g.M, g.N), x.dtype, x.device)
    # Z[k, n] = weight[n, k]: the transposed read is a stride swap.
    _gemm(a, (a.stride(0), a.stride(1)), weight, (weight.stride(1), weight.stride(0)), out, g.M, g.N, g.K,
          bias=bias, relu=True)  # fmt: skip
    return out.view(g.out_shape)


def _launch_bwd(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, output_mask: Sequence[bool]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "linear_relu_bwd"
    g = check_op_args(op, x, weight, None)
    check_op_bwd_args(op, g, x, grad_out, out)
    _check_triton_input(op, x)
    a, go, c = x.reshape(g.M, g.K), grad_out.reshape(g.M, g.N), out.reshape(g.M, g.N)
    # A masked-off output is (0,) (a tensor of its own: a custom op's outputs may not alias) and its
    # product is not launched; grad_w's GEMM also carries db, so it runs (into a scratch grad_w) when
    # only db is wanted.
    dx, dw, db = (
        new_output(shape, x.dtype, x.device) if want else x.new_empty((0,))
        for shape, want in zip(((g.M, g.K), (g.N, g.K), (g.N,)), output_mask)
    )
    if output_mask[0]:
        # grad_x (M, K) = (G . mask) (M, N) @ weight (N, K)
        _gemm(go, (go.stride(0), go.stride(1)), weight, (weight.stride(0), weight.stride(1)), dx, g.M, g.K, g.N,
              mask=c, mask_strides=(c.stride(0), c.stride(1)))  # fmt: skip
        dx = dx.view(x.shape)
    if output_mask[1] or output_mask[2]:
        # grad_w (N, K) = (G . mask)^T (N, M) @ A (M, K); db from the same masked tiles
        dw_buf = dw if output_mask[1] else torch.empty((g.N, g.K), dtype=x.dtype, device=x.device)
        _gemm(go, (go.stride(1), go.stride(0)), a, (a.stride(0), a.stride(1)), dw_buf, g.N, g.K, g.M,
              mask=c, mask_strides=(c.stride(1), c.stride(0)), db=db if output_mask[2] else None)  # fmt: skip
    return dx, dw, db


# ---- registered ops (schemas identical to csrc/registration.cpp) -------------------------------


@triton_library_op(
    "fastops_triton::linear_relu_fwd",
    mutates_args=(),
    schema="(Tensor x, Tensor weight, Tensor? bias) -> Tensor",
    fake=fwd_fake,
)
def linear_relu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """relu(x @ weight.T + bias): (*, N), x's dtype, contiguous."""
    return _launch_fwd(x, weight, bias)


@triton_library_op(
    "fastops_triton::linear_relu_bwd",
    mutates_args=(),
    schema="(Tensor grad_out, Tensor x, Tensor weight, Tensor out, bool[3] output_mask=[True, True, True]) -> "
    "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias)",
    fake=bwd_fake,
)
def linear_relu_bwd(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    out: torch.Tensor,
    output_mask: Sequence[bool] = (True, True, True),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x (*, K), grad_weight (N, K), grad_bias (N,)), x's dtype, contiguous; one masked off by
    ``output_mask`` is an empty (0,) tensor."""
    return _launch_bwd(grad_out, x, weight, out, output_mask)


# Autograd (double backward included), vmap and autocast of the ops above: the same registration as
# the native ops', from the one place that knows both passes.
contract.register(torch.ops.fastops_triton)
