# Fused linear + softmax cross-entropy (the LM loss head), Triton, registered as
# fastops_triton::linear_cross_entropy_{fwd,bwd}.
#
# Math. x (N, H), weight (V, H), bias b (V,), class index targets y, class weights w (1 when absent,
# W = sum_c w_c), label smoothing e, softcap c (0: none), z-loss factor zl. Per row r:
#   l = x_r weight^T + b                      (V logits, one GEMM)
#   z = c tanh(l / c)  (z = l without a cap)
#   m = max z, ls = log sum exp(z - m), lse = m + ls, p = exp((z - m) - ls)
#   loss_r = (1-e) w_y ((m - z_y) + ls) + e/V (W ls - sum_c w_c (z_c - m)) + zl lse^2   (0 if ignored)
#   dloss_r/dz_c = p_c ((1-e) w_y + e W / V + 2 zl lse) - (1-e) w_y [c == y] - e/V w_c
#   dloss_r/dl_c = dloss_r/dz_c (1 - (z_c / c)^2)                          (the cap's chain rule)
# "sum" is sum_r loss_r, "mean" divides it by torch's CE denominator D = sum of w_y over the
# non-ignored rows (their count without class weights; NaN when D = 0, torch's 0/0). With G the
# per-row upstream gradient (1 or 1/D for the forward's own gradients, grad_loss in the backward op):
#   dL = G (.) dloss/dl  (N, V);  grad_x = dL weight,  grad_weight = dL^T x,  grad_bias = sum_r dL.
#
# Decomposition (Liger-Kernel's chunked design). A Python driver sweeps the rows in chunks of R rows
# (chunk_rows, else the glue's chunk_rows_for, csrc's rule): per chunk, cuBLAS computes the (R, V)
# logits (addmm), one Triton kernel turns each row of them into its loss and statistics and, when
# gradients are wanted, overwrites the row in place with dL, then cuBLAS computes grad_x's rows
# (dL weight, straight into grad_x) and adds dL^T x_chunk into a grad_weight accumulator. So the
# forward with compute_grad runs the three GEMMs eager autograd runs, in one sweep, and only one
# (R, V) block ever exists, never the (N, V) logits. The backward op (reduction "none", or a
# forward without compute_grad) repeats the sweep from the saved statistics: one GEMM more.
#
# Grid. The per-chunk kernel runs ROWS chunk rows a program: grid = (cdiv(R, ROWS),). ROWS is 1 on a
# GPU for any V above 2048 (every LM head); a small V fills a tile with rows (_block_v), and under the
# CPU interpreter, whose cost is per program, up to 16384 elements of rows share one. Global row =
# row0 + the chunk row (int64 before any arithmetic; offsets into the chunk are chunk row * V, int64).
#
# Tiling. A program sweeps its rows in (ROWS, BLOCK_V) tiles (BLOCK_V a power of two, <= 4096, 2048
# for float64), in registers; every per-row quantity is a (ROWS,) vector. Forward: one loop with the
# online max / sum (Milakov & Gimelshein) and, with smoothing, the running sum of w_c (z_c - m)
# re-based when the max moves; the target logit is one extra load. Gradient: a second loop over the
# row (it hits L2: a row is V * s bytes) that reads l_c, recomputes z_c and p_c and writes dL_c over
# l_c. The backward op runs only that loop, from the saved (m, ls).
#
# Traffic (s = bytes per element, one chunk of R rows): the kernel reads the R x V logits twice
# (the second read from L2 for rows up to a few MB) and writes dL once: 3 R V s, against eager
# torch's linear + cross_entropy + backward, which writes the logits, log_softmax, its gradient and
# the logits' gradient (each N x V, about 8 N V s in all, N x V x (s + 4) bytes alive at once).
# Peak extra memory here: one R x V chunk in x's dtype and grad_weight's (V, H) accumulator in the
# accumulation dtype; for fp16/bf16 the chunk's dL^T x product is a second (V, H) float32 temporary
# (cuBLAS with out_dtype; on CPU the interpreter path widens the chunk and x_chunk first).
#
# Numerics. The kernel works in the accumulation dtype: float32 for fp16/bf16/fp32, float64 for
# fp64 (read off stats_ptr's element type), with the sum of exponentials carried in float64 (a
# float32 sum holding exp(0) = 1 drops every later term below ulp(1)/2; see cross_entropy.py).
# Shift invariance: stats keep (m, ls), never lse rounded (see cross_entropy.py), and the loss is
# a sum of non-negative terms. The cap is computed in float64 as c (1 - a), a = 1 - tanh(l/c) =
# 2 / (exp(2 l / c) + 1) (the interpreter has no libdevice tanh), so z carries no cancellation error
# near l = 0, saturates to +-c without overflow (exp -> inf gives a = 0), and 1 - tanh^2 = a (2 - a)
# is exact where z ~ c. Triton passes Python floats as float32: e, c and zl travel as float32 pairs
# (hi + lo) that float64 kernels add back. The logits are rounded to x's dtype by the GEMM (as
# torch's F.linear), dL is rounded once to x's dtype before the two gradient GEMMs (as torch's
# backward rounds the logits' gradient); grad_weight and grad_bias are summed across chunks in the
# accumulation dtype and rounded once at the end. Ignored rows give an exact 0 loss and gradient.
# A row whose max is not finite (a NaN or inf logit) gets a NaN loss and gradient.
#
# Preconditions (the glue's check_op_args, the launchers): x (N, H), weight (V, H), bias (V,) one floating dtype
# on one CUDA device (CPU under TRITON_INTERPRET=1), V >= 1; target (N,) int64; class_weight (V,)
# floating. Inputs are made contiguous (a copy when they are not). Class indices outside [0, V)
# other than ignore_index raise IndexError before any kernel runs (a reduction and a device sync).
# Under tracing (fake tensors, torch.compile of the triton_op on GPU) that check cannot run; the
# kernel then reads nothing at such an index and writes a NaN loss / gradient row instead.
#
# References. Liger-Kernel's ops/fused_linear_cross_entropy.py (the chunked sweep with gradients in
# the forward; read, not copied); M. Milakov, N. Gimelshein, "Online normalizer calculation for
# softmax" (2018), arXiv:1805.02867; Gemma 2 (logit soft-capping); PaLM (the z-loss);
# fastops/triton/cross_entropy.py (the row kernel this one extends).
"""Triton fused linear + cross-entropy: ``fastops_triton::linear_cross_entropy_fwd`` and ``_bwd``.

Same schemas and semantics as the native ``fastops::linear_cross_entropy_*`` ops (csrc/registration.cpp,
the interface in issue 13). Importing this module registers the ops (see ``_register.py`` for which
torch.library kind and why).
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastops.ops import linear_cross_entropy as _stem_ops
from fastops.ops._contract import dtype_str, shape_str
from fastops.ops.linear_cross_entropy import (
    acc_dtype,
    bwd_fake,
    check_op_args,
    check_target_range,
    chunk_rows_for,
    fwd_fake,
)
from fastops.triton import interpreting
from fastops.triton._register import check_kernel_input, new_output, triton_library_op

__all__ = ["linear_cross_entropy_bwd", "linear_cross_entropy_fwd"]

OP_FWD, OP_BWD = "linear_cross_entropy_fwd", "linear_cross_entropy_bwd"
MAX_BLOCK_V = 4096
INTERPRETER_TILE = 16384  # elements a program under the CPU interpreter (rows of a small-V chunk)


# ---- kernel -----------------------------------------------------------------------------------
# Kernel parameters stay unannotated: Triton types them at launch (pointer, i32/i64, fp32) and reads
# annotations other than tl.constexpr as type/specialization hints.
# ruff: noqa: ANN001


@triton.jit
def _cap(logit, cap):
    """(z, dz/dlogit) for z = cap * tanh(logit / cap), in float64; cap is float64."""
    a = 2.0 / (tl.exp(2.0 * (logit.to(tl.float64) / cap)) + 1.0)  # 1 - tanh(l / cap), exact near saturation
    return cap * (1.0 - a), a * (2.0 - a)


@triton.jit
def linear_cross_entropy_chunk_kernel(
    z_ptr,  # (R, V) chunk logits (before the cap) in x's dtype, contiguous; overwritten with dL (GRAD)
    tgt_ptr,  # (N,) int64 class indices
    w_ptr,  # (V,) class weights (HAS_WEIGHT; else None)
    wsum_ptr,  # W = sum_c w_c, 0-dim, accumulation dtype (HAS_WEIGHT and SMOOTHING; else None)
    g_ptr,  # upstream gradient of row r at g_ptr + r * g_stride, accumulation dtype (GRAD)
    loss_ptr,  # (N,) per-row loss, accumulation dtype (FWD)
    stats_ptr,  # (2, N) accumulation dtype: [0] row max m of z, [1] ls; written (FWD) or read
    row0,  # global index of the chunk's first row
    R,  # rows in the chunk
    N,
    V,
    g_stride,  # 0 (one scalar for every row) or 1
    ignore_index,
    eps_hi,  # label smoothing e = eps_hi + eps_lo (float32 pairs; see Numerics)
    eps_lo,
    cap_hi,  # softcap c
    cap_lo,
    zl_hi,  # z-loss factor zl
    zl_lo,
    FWD: tl.constexpr,  # compute loss and stats (else read stats)
    GRAD: tl.constexpr,  # overwrite the row with dL
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ZLOSS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    acc = stats_ptr.dtype.element_ty
    i = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # this program's chunk rows
    i_ok = i < R
    r = row0 + i
    zrow = z_ptr + i * V  # (ROWS,) row starts
    cls = tl.arange(0, BLOCK_V)
    y = tl.load(tgt_ptr + r, mask=i_ok, other=ignore_index)
    keep = y != ignore_index
    inb = (y >= 0) & (y < V)  # the launcher raised already; this only keeps a traced call in bounds
    Vf = tl.zeros([ROWS], acc) + V
    if SOFTCAP:
        cap = (tl.zeros([], tl.float64) + cap_hi) + cap_lo
    if SMOOTHING:
        eps = (tl.zeros([ROWS], acc) + eps_hi) + eps_lo
        W = tl.load(wsum_ptr).to(acc) if HAS_WEIGHT else Vf

    if FWD:
        m = tl.full([ROWS], float("-inf"), acc)  # running max
        s = tl.zeros([ROWS], tl.float64)  # running sum of exp(z - shift), float64 (see Numerics)
        shift = tl.zeros([ROWS], acc)  # m, or 0 while m is -inf (exp(-inf - -inf) would be NaN)
        sxr = tl.zeros([ROWS], acc)  # sum w_c (z_c - shift)
        ws = tl.zeros([ROWS], acc)  # sum w_c over the tiles seen
        for v0 in range(0, V, BLOCK_V):
            c = v0 + cls
            live = c < V
            tile = i_ok[:, None] & live[None, :]
            z = tl.load(zrow[:, None] + c[None, :], mask=tile, other=0.0)
            if SOFTCAP:
                z, _ = _cap(z, cap)
            z = tl.where(tile, z.to(acc), float("-inf"))  # a capped masked lane would be -cap, not -inf
            m_new = tl.maximum(m, tl.max(z, axis=1))
            new_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp((m - new_shift).to(tl.float64)) + tl.sum(
                tl.exp(z - new_shift[:, None]).to(tl.float64), axis=1
            )
            m = m_new
            d = shift - new_shift  # <= 0: re-bases the relative sum when the max moves
            shift = new_shift
            if SMOOTHING:
                zr = tl.where(tile, z - shift[:, None], 0.0)  # z is -inf off the row; 0 * -inf would be NaN
                if HAS_WEIGHT:
                    w = tl.load(w_ptr + c, mask=live, other=0.0).to(acc)[None, :]
                    sxr += d * ws + tl.sum(w * zr, axis=1)
                    ws += tl.sum(w, axis=1)
                else:
                    sxr += d * ws + tl.sum(zr, axis=1)
                    ws += tl.sum(live.to(acc), axis=0)
        ls = tl.log(s).to(acc)
        finite = (m > float("-inf")) & (m < float("inf"))
        z_y = tl.load(zrow + y, mask=i_ok & keep & inb, other=0.0)
        if SOFTCAP:
            z_y, _ = _cap(z_y, cap)
        loss = (m - z_y.to(acc)) + ls
        if HAS_WEIGHT:
            loss = tl.load(w_ptr + y, mask=i_ok & keep & inb, other=0.0).to(acc) * loss
        if SMOOTHING:
            loss = (1.0 - eps) * loss + eps / Vf * (W * ls - sxr)
        if ZLOSS:
            lse = m + ls
            loss += ((tl.zeros([ROWS], acc) + zl_hi) + zl_lo) * lse * lse
        loss = tl.where(keep, tl.where(inb & finite, loss, float("nan")), 0.0)
        tl.store(loss_ptr + r, loss, mask=i_ok)
        tl.store(stats_ptr + r, m, mask=i_ok)
        tl.store(stats_ptr + N + r, ls, mask=i_ok)
    else:
        m = tl.load(stats_ptr + r, mask=i_ok, other=0.0).to(acc)
        ls = tl.load(stats_ptr + N + r, mask=i_ok, other=0.0).to(acc)
        finite = (m > float("-inf")) & (m < float("inf")) & (ls > float("-inf")) & (ls < float("inf"))

    if GRAD:
        g = tl.load(g_ptr + r * g_stride, mask=i_ok, other=0.0).to(acc)
        w_y = tl.load(w_ptr + y, mask=i_ok & keep & inb, other=0.0).to(acc) if HAS_WEIGHT else 1.0
        g1 = g * w_y  # the [c == y] term
        coef = g1  # multiplies p_c
        if SMOOTHING:
            g1 = (1.0 - eps) * g1
            g0 = g * eps / Vf  # per-class smoothing term, times w_c
            coef = g1 + g0 * W
        if ZLOSS:
            coef += 2.0 * g * ((tl.zeros([ROWS], acc) + zl_hi) + zl_lo) * (m + ls)
        coef = tl.where(inb & finite, coef, float("nan"))
        for v0 in range(0, V, BLOCK_V):
            c = v0 + cls
            live = c < V
            tile = i_ok[:, None] & live[None, :]
            z = tl.load(zrow[:, None] + c[None, :], mask=tile, other=0.0)
            if SOFTCAP:
                z, dz = _cap(z, cap)
            grad = coef[:, None] * tl.exp((z.to(acc) - m[:, None]) - ls[:, None]) - tl.where(
                c[None, :] == y[:, None], g1[:, None], 0.0
            )  # z - m exact near the max
            if SMOOTHING:
                if HAS_WEIGHT:
                    grad -= tl.load(w_ptr + c, mask=live, other=0.0).to(acc)[None, :] * g0[:, None]
                else:
                    grad -= g0[:, None]
            if SOFTCAP:
                grad = grad * dz.to(acc)
            grad = tl.where(keep[:, None], grad, 0.0)  # exact zeros for ignored rows
            tl.store(zrow[:, None] + c[None, :], grad.to(z_ptr.dtype.element_ty), mask=tile)


# ---- checks -----------------------------------------------------------------------------------
# The argument contract, the fake kernels and the chunk rule are the glue's (fastops.ops.linear_cross_entropy,
# a mirror of csrc/fastops.h), so every backend rejects bad input with the same messages.


# ---- launchers --------------------------------------------------------------------------------


def _f32_pair(v: float) -> tuple[float, float]:
    """v = hi + lo with hi, lo float32-representable: Triton passes Python floats as float32."""
    hi = struct.unpack("f", struct.pack("f", v))[0]
    return hi, float(v - hi)


def _block_v(V: int, R: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(ROWS, BLOCK_V, num_warps) for a chunk of R rows: BLOCK_V a power of two, the whole row when it
    fits in MAX_BLOCK_V (half in float64); as many rows a program as fill that many elements (on a GPU
    an LM head's V >= 4096 keeps one row a program), INTERPRETER_TILE under the interpreter (whose
    cost is per program); ~8 elements a thread."""
    cap = MAX_BLOCK_V // 2 if dtype == torch.float64 else MAX_BLOCK_V
    block = min(triton.next_power_of_2(V), cap)
    rows = min(triton.next_power_of_2(max(R, 1)), max(1, (INTERPRETER_TILE if interpreting() else cap) // block))
    return rows, block, max(1, min(16, rows * block // 256))


def _add_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a @ b with out in the accumulation dtype, a and b possibly narrower."""
    if a.dtype == out.dtype:
        out.addmm_(a, b)
    elif out.device.type == "cuda":  # cuBLAS: fp16/bf16 products, float32 accumulate, float32 result
        out.add_(torch.mm(a, b, out_dtype=out.dtype))
    else:  # the interpreter's CPU tensors: widening fp16/bf16 to float32 is exact
        out.addmm_(a.to(out.dtype), b.to(out.dtype))


def _sweep(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float,
    z_loss: float,
    chunk_rows: int,
    *,
    stats: torch.Tensor,
    loss_rows: torch.Tensor | None,
    g: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The chunk sweep. loss_rows given: the forward (writes loss_rows (N,) and stats); else stats are
    read. g given (0-dim or (N,), accumulation dtype): also the gradients of sum_r g_r loss_r,
    returned as (grad_x, grad_weight, grad_bias)."""
    N, H = x.shape
    V = weight.shape[0]
    acc = stats.dtype
    x, weight, target = x.contiguous(), weight.contiguous(), target.contiguous()  # the kernel reads target[r]
    want = g is not None
    if want:
        grad_x = new_output((N, H), x.dtype, x.device)
        gw = torch.zeros((V, H), dtype=acc, device=x.device)
        gb = torch.zeros((V,), dtype=acc, device=x.device) if bias is not None else None
    has_w = class_weight is not None
    smoothing = label_smoothing > 0
    w = class_weight.to(acc).contiguous() if has_w else None
    wsum = w.sum() if has_w and smoothing else None  # 0-dim on the device: no sync
    rows = chunk_rows_for(N, H, V, chunk_rows)
    rows_a_program, block, warps = _block_v(V, rows, x.dtype)
    wt = weight.t()
    kernel = wrap_triton(linear_cross_entropy_chunk_kernel)
    for i0 in range(0, N, rows):
        i1 = min(N, i0 + rows)
        xc = x[i0:i1]
        logits = torch.addmm(bias, xc, wt) if bias is not None else torch.mm(xc, wt)
        kernel[(triton.cdiv(i1 - i0, rows_a_program),)](
            logits, target, w, wsum, g, loss_rows, stats, i0, i1 - i0, N, V, 0 if not want or g.dim() == 0 else 1,
            ignore_index, *_f32_pair(label_smoothing), *_f32_pair(softcap), *_f32_pair(z_loss),
            FWD=loss_rows is not None, GRAD=want, HAS_WEIGHT=has_w, SMOOTHING=smoothing, SOFTCAP=softcap > 0,
            ZLOSS=z_loss > 0, ROWS=rows_a_program, BLOCK_V=block, num_warps=warps,
        )  # fmt: skip
        if want:  # logits now holds dL
            torch.mm(logits, weight, out=grad_x[i0:i1])
            _add_mm(gw, logits.t(), xc)
            if gb is not None:
                gb += logits.sum(0, dtype=acc)
    if not want:
        return None
    grad_bias = gb.to(bias.dtype) if gb is not None else x.new_empty((0,))
    return grad_x, gw.to(weight.dtype), grad_bias


def _mean_denominator(
    target: torch.Tensor, class_weight: torch.Tensor | None, ignore_index: int, acc: torch.dtype
) -> torch.Tensor:
    """torch's CE "mean" denominator: summed class weight of the non-ignored targets (their count)."""
    valid = target != ignore_index
    if class_weight is None:
        return valid.sum(dtype=acc)
    return (class_weight.to(acc)[torch.where(valid, target, 0)] * valid).sum()


def _over(value: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """value / denom, NaN when denom is 0 (torch's 0/0 for a mean over no weight)."""
    return torch.where(denom == 0, float("nan"), value / denom)


def _prepare(
    op: str,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float,
    z_loss: float,
    reduction: int,
    chunk_rows: int,
) -> tuple[int, int, int]:
    """Every check a launcher runs before its first kernel; returns (N, H, V)."""
    g = check_op_args(
        op, x, weight, bias, target, class_weight, ignore_index, label_smoothing, softcap, z_loss, reduction, chunk_rows
    )
    # a device the kernels run on and a dtype they take there: the support table's row (register_op
    # in the glue), so the raw ops refuse exactly what backend="triton" refuses
    check_kernel_input(op, "linear_cross_entropy", x, "x")
    check_target_range(op, target, g.V, ignore_index)
    return g.N, g.H, g.V


# ---- registered ops (schemas identical to csrc/registration.cpp) -------------------------------


@triton_library_op(
    "fastops_triton::linear_cross_entropy_fwd",
    mutates_args=(),
    schema="(Tensor x, Tensor weight, Tensor? bias, Tensor target, Tensor? class_weight, int ignore_index, "
    "float label_smoothing, float softcap, float z_loss, int reduction, int chunk_rows, bool compute_grad) "
    "-> (Tensor loss, Tensor stats, Tensor grad_x, Tensor grad_weight, Tensor grad_bias)",
    fake=fwd_fake,
)
def linear_cross_entropy_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float,
    z_loss: float,
    reduction: int,
    chunk_rows: int,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, stats, grad_x, grad_weight, grad_bias); shapes as :func:`fwd_fake`. With compute_grad and a
    reduction, the grads are those of the reduced loss (mean's 1/denominator folded in)."""
    args = (weight, bias, target, class_weight, ignore_index, label_smoothing, softcap, z_loss, reduction, chunk_rows)
    N, _, V = _prepare(OP_FWD, x, *args)
    acc = acc_dtype(x.dtype)
    loss_rows = new_output((N,), acc, x.device)
    stats = new_output((2, N), acc, x.device)
    denom = _mean_denominator(target, class_weight, ignore_index, acc) if reduction == 1 else None
    g = None
    if compute_grad and reduction != 0:
        one = torch.ones((), dtype=acc, device=x.device)
        g = _over(one, denom) if reduction == 1 else one
    grads = _sweep(
        x, weight, bias, target, class_weight, ignore_index, label_smoothing, softcap, z_loss, chunk_rows,
        stats=stats, loss_rows=loss_rows, g=g,
    )  # fmt: skip
    if reduction == 0:
        loss = loss_rows
    else:
        total = loss_rows.sum()
        loss = _over(total, denom) if reduction == 1 else total
    if grads is None:
        bias_dtype = x.dtype if bias is None else bias.dtype
        grads = tuple(x.new_empty((0,), dtype=dt) for dt in (x.dtype, weight.dtype, bias_dtype))
    return (loss, stats, *grads)


@triton_library_op(
    "fastops_triton::linear_cross_entropy_bwd",
    mutates_args=(),
    schema="(Tensor grad_loss, Tensor x, Tensor weight, Tensor? bias, Tensor target, Tensor? class_weight, "
    "Tensor stats, int ignore_index, float label_smoothing, float softcap, float z_loss, int reduction, "
    "int chunk_rows) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)",
    fake=bwd_fake,
)
def linear_cross_entropy_bwd(
    grad_loss: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    stats: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    softcap: float,
    z_loss: float,
    reduction: int,
    chunk_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d/dx, d/dweight, d/dbias of sum(grad_loss * loss): grad_loss (N,) for reduction 0 else (),
    stats (2, N) from the forward; both in the accumulation dtype. Shapes as :func:`bwd_fake`."""
    args = (weight, bias, target, class_weight, ignore_index, label_smoothing, softcap, z_loss, reduction, chunk_rows)
    N, _, V = _prepare(OP_BWD, x, *args)
    acc = acc_dtype(x.dtype)
    # csrc/linear_cross_entropy_driver.h's order and messages: both shapes, then dtypes and devices
    for name, t, shape in (("grad_loss", grad_loss, [N] if reduction == 0 else []), ("stats", stats, [2, N])):
        if list(t.shape) != shape:
            raise ValueError(f"{OP_BWD}: {name} must have shape {shape_str(shape)}, got {shape_str(t.shape)}")
    for name, t in (("grad_loss", grad_loss), ("stats", stats)):
        if t.dtype != acc:
            raise TypeError(
                f"{OP_BWD}: {name} must be {dtype_str(acc)} for {dtype_str(x.dtype)} x, got {dtype_str(t.dtype)}"
            )
        if t.device != x.device:
            raise ValueError(f"{OP_BWD}: {name} is on {t.device} but x is on {x.device}")
    g = grad_loss.contiguous()
    if reduction == 1:
        g = _over(g, _mean_denominator(target, class_weight, ignore_index, acc))
    grads = _sweep(
        x, weight, bias, target, class_weight, ignore_index, label_smoothing, softcap, z_loss, chunk_rows,
        stats=stats.contiguous(), loss_rows=None, g=g,
    )  # fmt: skip
    assert grads is not None
    return grads


# Autograd (double backward included), vmap and autocast of the ops above: the same registration as
# the native ops', from the one place that knows both passes.
_stem_ops.register(torch.ops.fastops_triton)
