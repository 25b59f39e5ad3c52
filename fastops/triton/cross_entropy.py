# Softmax cross-entropy, Triton kernels, registered as fastops_triton::cross_entropy_{fwd,bwd,bwd_}.
#
# Math (the same formulas as csrc/cpu/cross_entropy.cpp). Row r has logits x (C classes), row max
# m, ls = log sum_c exp(x_c - m) (the log-sum-exp is m + ls), class weights w (1 when absent),
# W = sum_c w_c, label smoothing e, sxr = sum_c w_c (x_c - m), swt = sum_c w_c t_c,
# swtxr = sum_c w_c t_c (x_c - m).
#   class index y:  loss = (1-e) w_y ((m - x_y) + ls) + e/C (W ls - sxr)            (0 if y == ignore)
#                   dloss/dx_c = g [ p_c ((1-e) w_y + e W / C) - (1-e) w_y [c == y] - e/C w_c ]
#   probabilities t: with t' = (1-e) t + e/C,
#                   loss = sum_c w_c t'_c ((m - x_c) + ls) = (1-e) (swt ls - swtxr) + e/C (W ls - sxr)
#                   dloss/dx_c = g [ p_c sum_k w_k t'_k - w_c t'_c ]
#   p_c = exp((x_c - m) - ls); g = the row's upstream gradient (the reduction's 1/denominator folded
#   in). The forward saves stats = (m, ls), two numbers per row, never log_softmax, and never
#   lse = m + ls rounded (see Numerics).
#
# Grid. logits are viewed as (B, C, D) (D = d1*..*dk, 1 for (N, C) and (C,)); row r = (b, d) holds
# C logits at stride D starting at b*C*D + d. A program owns ROWS consecutive rows (a power of two):
# grid = (cdiv(B*D, ROWS),). Short rows share a program, as many as fill one tile (_launch_config:
# C = 10 gives 256 rows a program, not 256 programs of 16 lanes with 6 masked off); a row longer than
# half a tile has a program to itself. All offsets are int64 (program_id is cast first): B*C*D may
# exceed 2^31.
#
# Tiling. A program sweeps its rows in (ROWS, BLOCK_C) tiles (BLOCK_C a power of two, <= 4096, so a
# 256k vocabulary is 64 tiles); a tile lives in registers, nothing in shared memory beyond
# tl.max/tl.sum's reduction scratch. Every per-row quantity below is a (ROWS,) vector.
#   forward:  one loop over the tiles: tile max -> running max m, running sum s rescaled once per tile
#             (one exp per element, not two), and in the same loop the sums the loss needs:
#             sxr (smoothing), swt and swtxr (probabilities), relative to the running max and
#             re-based by (m_old - m_new) * (their weight sum so far) when a tile raises it.
#   backward: one loop writing g (coef * p_c - target term) from the saved (m, ls); probability targets
#             first need sum w_c t_c, a loop over t (and w) before the write loop.
#   In-place backward: out == logits; each tile is read before it is written, by the same program.
# With D > 1 a row's loads are strided by D, but a tile's ROWS rows are neighbouring d: for each class
# they are ROWS neighbouring addresses (segmentation inputs, small C, read in full sectors).
#
# Traffic (s = bytes per logit, N rows of C classes, index targets): forward reads N*C*s and writes
# 12N (loss, m, ls in float32); backward reads N*C*s, writes N*C*s: 3*N*C*s for forward + backward.
# Probability targets add N*C*s to the forward and 2*N*C*s to the backward (t is read by both loops;
# the second read hits L2 for rows up to a few MB). Unfused PyTorch (log_softmax, nll_loss, and their
# backwards: write log_softmax, zero-fill + scatter the nll grad, read grad and log_softmax, write the
# gradient) moves about 6*N*C*s, and keeps the N x C log_softmax alive from forward to backward; with
# label smoothing it reads log_softmax once more. In full (the benchmark's GB/s counts only the N*C
# terms): fwd N*C*s (+ N*C*s probs) + 8N (int64 targets) + 12N; bwd 2*N*C*s (+ 2*N*C*s probs) + 8N + 12N.
#
# Numerics. Loads are converted to the accumulation type: float32 for fp16/bf16/fp32, float64 for
# fp64 (taken from the loss/stats pointer's element type). Max subtraction: every exp argument is <=
# 0, so nothing overflows; the running sum is rescaled by exp(m_old - m_new) <= 1. Sums are a tree
# within a tile (tl.sum) then sequential over C/BLOCK_C tiles. The sum of exp is carried in float64
# (the terms are exp'd in the accumulation type, then widened): a float32 sum that holds exp(0) = 1
# drops every later term below ulp(1) / 2, so a long row with its dominant logit first lost its
# whole tail (x = 2 randn(262144), x_0 = 30: loss 0, float64 1.83e-7); ls = log(s) is taken in
# float64 too. A row whose maximum is -inf so far is shifted by 0 instead of -inf (exp(-inf - -inf)
# would be NaN). A row whose max is not finite (all -inf, a +inf or NaN logit) gets a NaN loss and
# gradient, as torch's log_softmax path. Shift invariance: (m, ls) is saved rather than lse = m + ls
# because rounding lse costs ulp(m) / 2 in every exp argument (3.9e-3 for float32 logits near 1e5)
# while x - m is exact near the max; and the loss is a sum of terms >= 0, never lse - x_y or W lse -
# sum w x, whose rounding at ulp(m) swamps a small loss. Triton passes Python floats as float32, so
# label smoothing travels as a float32 pair (hi + lo) that float64 kernels add back to ~2^-48
# relative error. Ignored rows get an exact 0 loss and gradient.
#
# Preconditions (fastops.ops.cross_entropy.check_op_args, the launchers): logits fp16/bf16/fp32/fp64
# of shape (C,), (N, C) or
# (N, C, d1..dk), C >= 1, on a CUDA device (CPU under TRITON_INTERPRET=1); target int64 of the row
# shape or float probabilities of logits' shape and dtype; weight (C,) in logits' dtype; 0 <= e <= 1;
# grad_loss (row shape) and stats (2, *row shape) in the accumulation dtype; rows < 2^31 (grid limit). Inputs are
# made contiguous (a copy when they are not). Class indices outside [0, C) other than ignore_index
# raise IndexError in the launcher before any kernel runs (one reduction and a device-to-host sync
# on GPU). Under tracing (fake tensors, torch.compile of the triton_op on GPU) that check cannot run;
# the kernels then read nothing at such an index and write a NaN loss / gradient row instead.
#
# References. M. Milakov, N. Gimelshein, "Online normalizer calculation for softmax" (2018),
# arXiv:1805.02867; the Triton tutorial 02-fused-softmax; torch.nn.functional.cross_entropy for the
# semantics (weights, ignore_index, label smoothing, probability targets); Liger-Kernel's
# ops/cross_entropy.py (the same single-pass row idea, read, not copied); csrc/cpu/cross_entropy.cpp.
"""Triton softmax cross-entropy: ``fastops_triton::cross_entropy_fwd``, ``_bwd`` and ``_bwd_``.

Same schemas and semantics as the native ``fastops::cross_entropy_*`` ops (csrc/registration.cpp).
Importing this module registers the ops (see ``_register.py`` for which torch.library kind and why).
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastops.ops import cross_entropy as contract
from fastops.ops.cross_entropy import (
    acc_dtype,
    bwd_fake,
    bwd_inplace_fake,
    check_class_indices,
    check_op_args,
    check_op_bwd_args,
    fwd_fake,
    stats_shape,
)
from fastops.triton import interpreting
from fastops.triton._register import check_kernel_input, new_output, triton_library_op

__all__ = ["cross_entropy_fwd", "cross_entropy_bwd", "cross_entropy_bwd_"]

# Elements in one program's tile: at most MAX_BLOCK_C classes (half that in float64) and, for short
# rows, as many rows as fill MAX_BLOCK_C elements (16 warps x 8 elements per thread on a GPU). The CPU
# interpreter runs a program as numpy ops over the whole tile, its cost per program nearly independent
# of the tile's size, so there up to INTERPRETER_TILE elements of rows share a program: fewer programs.
MAX_BLOCK_C = 4096
INTERPRETER_TILE = 16384


# ---- kernels ----------------------------------------------------------------------------------
# Kernel parameters stay unannotated: Triton types them at launch (pointer, i32/i64, fp32) and reads
# annotations other than tl.constexpr as type/specialization hints.
# ruff: noqa: ANN001


@triton.jit
def cross_entropy_fwd_online_lse_kernel(
    x_ptr,  # logits (B, C, D), contiguous
    tgt_ptr,  # int64 class indices (B, D), or probabilities (B, C, D) in logits' dtype (PROBS)
    w_ptr,  # class weights (C,) (HAS_WEIGHT; else None)
    wsum_ptr,  # W = sum_c w_c, 0-dim, accumulation dtype (HAS_WEIGHT; else None)
    loss_ptr,  # (B, D), accumulation dtype
    stats_ptr,  # (2, B, D), accumulation dtype: [0] row max m, [1] ls = log sum exp(x - m)
    R,  # rows, B * D
    C,
    D,
    ignore_index,
    eps_hi,  # label smoothing e = eps_hi + eps_lo (two float32s; see Numerics)
    eps_lo,
    PROBS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,  # e > 0: the sum_c w_c x_c term is needed
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    acc = loss_ptr.dtype.element_ty
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # this program's rows
    r_ok = r < R
    b = r // D
    row = b * C * D + (r - b * D)  # offset of (b, 0, d); class c is at row + c * D
    cls = tl.arange(0, BLOCK_C)
    m = tl.full([ROWS], float("-inf"), acc)  # running max
    s = tl.zeros([ROWS], tl.float64)  # running sum of exp(x - m), float64 whatever acc is (see Numerics)
    shift = tl.zeros([ROWS], acc)  # m, or 0 while m is -inf: what the relative sums are taken against
    sxr = tl.zeros([ROWS], acc)  # sum w_c (x_c - shift)
    ws = tl.zeros([ROWS], acc)  # sum w_c over the tiles seen
    swt = tl.zeros([ROWS], acc)  # sum w_c t_c
    swtxr = tl.zeros([ROWS], acc)  # sum w_c t_c (x_c - shift)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cls
        live = c < C
        tile = r_ok[:, None] & live[None, :]
        off = row[:, None] + c.to(tl.int64)[None, :] * D
        x = tl.load(x_ptr + off, mask=tile, other=float("-inf")).to(acc)
        m_new = tl.maximum(m, tl.max(x, axis=1))
        new_shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: exp(-inf - 0) = 0, not NaN
        s = s * tl.exp((m - new_shift).to(tl.float64)) + tl.sum(tl.exp(x - new_shift[:, None]).to(tl.float64), axis=1)
        m = m_new
        d = shift - new_shift  # <= 0: re-bases the relative sums when the max moves
        shift = new_shift
        if HAS_WEIGHT and (SMOOTHING or PROBS):
            w = tl.load(w_ptr + c, mask=live, other=0.0).to(acc)[None, :]
        xr = tl.where(tile, x - shift[:, None], 0.0)  # x is -inf off the row; 0 * -inf would be NaN
        if SMOOTHING:
            sxr += d * ws + tl.sum(w * xr if HAS_WEIGHT else xr, axis=1)
            ws += tl.sum(w, axis=1) if HAS_WEIGHT else tl.sum(live.to(acc), axis=0)
        if PROBS:
            wt = tl.load(tgt_ptr + off, mask=tile, other=0.0).to(acc)
            if HAS_WEIGHT:
                wt = w * wt
            if SMOOTHING:  # t = 0 adds nothing: its -inf comes in through sxr (loss +inf, as torch), not 0 * -inf
                swtxr += d * swt + tl.sum(tl.where(wt == 0, 0.0, wt * xr), axis=1)
            else:
                swtxr += d * swt + tl.sum(wt * xr, axis=1)
            swt += tl.sum(wt, axis=1)
    ls = tl.log(s).to(acc)
    finite = (m > float("-inf")) & (m < float("inf"))  # all -inf, +inf or NaN: a NaN loss, as torch

    Cf = tl.zeros([ROWS], acc) + C
    if SMOOTHING:
        eps = (tl.zeros([ROWS], acc) + eps_hi) + eps_lo
        W = tl.load(wsum_ptr).to(acc) if HAS_WEIGHT else Cf
    if PROBS:
        loss = swt * ls - swtxr  # sum_c w_c t_c ((m - x_c) + ls): terms >= 0
        if SMOOTHING:  # e == 1 drops the first term (not 0 * inf = NaN for a probability on a -inf logit)
            loss = tl.where(eps < 1.0, (1.0 - eps) * loss, 0.0) + eps / Cf * (W * ls - sxr)
        loss = tl.where(finite, loss, float("nan"))
    else:
        y = tl.load(tgt_ptr + r, mask=r_ok, other=ignore_index)
        keep = y != ignore_index
        inb = (y >= 0) & (y < C)  # the launcher raised already; this only keeps a traced call in bounds
        x_y = tl.load(x_ptr + row + y * D, mask=r_ok & keep & inb, other=0.0).to(acc)
        loss = (m - x_y) + ls
        if HAS_WEIGHT:
            loss = tl.load(w_ptr + y, mask=r_ok & keep & inb, other=0.0).to(acc) * loss
        if SMOOTHING:
            loss = (1.0 - eps) * loss + eps / Cf * (W * ls - sxr)
        loss = tl.where(keep, tl.where(inb & finite, loss, float("nan")), 0.0)
    tl.store(loss_ptr + r, loss, mask=r_ok)
    tl.store(stats_ptr + r, m, mask=r_ok)
    tl.store(stats_ptr + R + r, ls, mask=r_ok)


@triton.jit
def cross_entropy_bwd_softmax_minus_target_kernel(
    g_ptr,  # grad_loss (B, D), accumulation dtype
    x_ptr,  # logits (B, C, D), contiguous
    tgt_ptr,  # int64 class indices (B, D), or probabilities (B, C, D) (PROBS)
    w_ptr,  # class weights (C,) (HAS_WEIGHT)
    wsum_ptr,  # W = sum_c w_c, 0-dim (HAS_WEIGHT)
    stats_ptr,  # (2, B, D), accumulation dtype, from the forward: m, ls
    out_ptr,  # gradient (B, C, D) in logits' dtype; may be x_ptr (in-place)
    R,  # rows, B * D
    C,
    D,
    ignore_index,
    eps_hi,
    eps_lo,
    PROBS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTHING: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    acc = stats_ptr.dtype.element_ty
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    r_ok = r < R
    b = r // D
    row = b * C * D + (r - b * D)
    cls = tl.arange(0, BLOCK_C)
    g = tl.load(g_ptr + r, mask=r_ok, other=0.0).to(acc)
    m = tl.load(stats_ptr + r, mask=r_ok, other=0.0).to(acc)
    ls = tl.load(stats_ptr + R + r, mask=r_ok, other=0.0).to(acc)
    # A row whose max or log-sum is not finite (NaN, all -inf, +inf): a NaN gradient row, as torch.
    finite = (m > float("-inf")) & (m < float("inf")) & (ls > float("-inf")) & (ls < float("inf"))
    Cf = tl.zeros([ROWS], acc) + C
    if SMOOTHING:
        eps = (tl.zeros([ROWS], acc) + eps_hi) + eps_lo
        W = tl.load(wsum_ptr).to(acc) if HAS_WEIGHT else Cf
        g0 = g * eps / Cf  # per-class smoothing term, times w_c

    if PROBS:
        swt = tl.zeros([ROWS], acc)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cls
            live = c < C
            tile = r_ok[:, None] & live[None, :]
            t = tl.load(tgt_ptr + row[:, None] + c.to(tl.int64)[None, :] * D, mask=tile, other=0.0).to(acc)
            if HAS_WEIGHT:
                t = tl.load(w_ptr + c, mask=live, other=0.0).to(acc)[None, :] * t
            swt += tl.sum(t, axis=1)
        coef = g * swt
        g1 = g
        if SMOOTHING:
            coef = g * ((1.0 - eps) * swt + eps / Cf * W)
            g1 = g * (1.0 - eps)
        coef = tl.where(finite, coef, float("nan"))
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cls
            live = c < C
            tile = r_ok[:, None] & live[None, :]
            off = row[:, None] + c.to(tl.int64)[None, :] * D
            x = tl.load(x_ptr + off, mask=tile, other=0.0).to(acc)
            tgt = g1[:, None] * tl.load(tgt_ptr + off, mask=tile, other=0.0).to(acc)
            if SMOOTHING:
                tgt += g0[:, None]
            if HAS_WEIGHT:
                tgt = tl.load(w_ptr + c, mask=live, other=0.0).to(acc)[None, :] * tgt
            grad = coef[:, None] * tl.exp((x - m[:, None]) - ls[:, None]) - tgt  # x - m exact near the max
            tl.store(out_ptr + off, grad.to(out_ptr.dtype.element_ty), mask=tile)
    else:
        y = tl.load(tgt_ptr + r, mask=r_ok, other=ignore_index)
        keep = y != ignore_index
        inb = (y >= 0) & (y < C)
        w_y = tl.load(w_ptr + y, mask=r_ok & keep & inb, other=0.0).to(acc) if HAS_WEIGHT else 1.0
        g1 = g * w_y  # the [c == y] term
        coef = g1  # multiplies p_c
        if SMOOTHING:
            g1 = (1.0 - eps) * g1
            coef = g1 + g0 * W
        # out-of-range index (traced call only): NaN row, no read; or non-finite stats
        coef = tl.where(inb & finite, coef, float("nan"))
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cls
            live = c < C
            tile = r_ok[:, None] & live[None, :]
            off = row[:, None] + c.to(tl.int64)[None, :] * D
            x = tl.load(x_ptr + off, mask=tile, other=0.0).to(acc)
            grad = coef[:, None] * tl.exp((x - m[:, None]) - ls[:, None]) - tl.where(
                c[None, :] == y[:, None], g1[:, None], 0.0
            )
            if SMOOTHING:
                if HAS_WEIGHT:
                    grad -= tl.load(w_ptr + c, mask=live, other=0.0).to(acc)[None, :] * g0[:, None]
                else:
                    grad -= g0[:, None]
            # exact zeros for ignored rows, even where x is inf/NaN; NaN when the row's max is not
            # finite, as torch's log_softmax backward
            grad = tl.where(keep[:, None], grad, tl.where(finite[:, None], 0.0, float("nan")))
            tl.store(out_ptr + off, grad.to(out_ptr.dtype.element_ty), mask=tile)


# ---- checks -----------------------------------------------------------------------------------


def _check_triton_input(op: str, logits: torch.Tensor) -> None:
    """What only the Triton kernels need: a device they run on and a dtype they take there (the
    support table's row in fastops.ops.cross_entropy)."""
    check_kernel_input(op, "cross_entropy", logits, "logits")


# ---- launchers --------------------------------------------------------------------------------


def _eps_pair(e: float) -> tuple[float, float]:
    """e = hi + lo with hi, lo float32-representable: Triton passes Python floats as float32."""
    hi = struct.unpack("f", struct.pack("f", e))[0]
    return hi, float(e - hi)


def _launch_config(
    C: int, rows: int, dtype: torch.dtype, block_c: int | None = None, rows_per_program: int | None = None
) -> tuple[int, int, int]:
    """(ROWS, BLOCK_C, num_warps): BLOCK_C is a power of two, the whole row when it fits in a tile;
    ROWS (a power of two) rows share a program while the tile holds them; ~8 elements per thread.
    ``block_c`` / ``rows_per_program`` override the choice (tests of the tiling)."""
    cap = MAX_BLOCK_C // (2 if dtype == torch.float64 else 1)
    tile = INTERPRETER_TILE if interpreting() else cap
    block = block_c or min(triton.next_power_of_2(C), cap)
    nrows = rows_per_program or min(triton.next_power_of_2(rows), max(1, tile // block))
    return nrows, block, max(1, min(16, nrows * block // 256))


def _launch_fwd(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    block_c: int | None = None,
    rows_per_program: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    op = "cross_entropy_fwd"
    g = check_op_args(op, logits, target, weight, label_smoothing)
    _check_triton_input(op, logits)
    acc = acc_dtype(logits.dtype)
    loss = new_output(g.row_shape, acc, logits.device)
    stats = new_output(stats_shape(g.row_shape), acc, logits.device)
    if g.rows == 0:
        return loss, stats
    if not g.probs:
        check_class_indices(contract.OP, target, g.C, ignore_index)  # the C++ kernels' text
    logits, target = logits.contiguous(), target.contiguous()
    has_w = weight is not None
    w = weight.contiguous() if has_w else None  # None: a constexpr pointer the kernel never reads
    wsum = weight.sum(dtype=acc) if has_w else None  # 0-dim on the device: no sync
    nrows, block, warps = _launch_config(g.C, g.rows, logits.dtype, block_c, rows_per_program)
    hi, lo = _eps_pair(label_smoothing)
    wrap_triton(cross_entropy_fwd_online_lse_kernel)[(triton.cdiv(g.rows, nrows),)](
        logits, target, w, wsum, loss, stats, g.rows, g.C, g.D, ignore_index, hi, lo,
        PROBS=g.probs, HAS_WEIGHT=has_w, SMOOTHING=label_smoothing > 0, ROWS=nrows, BLOCK_C=block,
        num_warps=warps,
    )  # fmt: skip
    return loss, stats


def _launch_bwd(
    op: str,
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    out: torch.Tensor | None = None,
    block_c: int | None = None,
    rows_per_program: int | None = None,
) -> torch.Tensor:
    """Writes the gradient into out (contiguous, logits' shape and dtype; may be logits itself; None:
    a new tensor, made after the checks) and returns it."""
    g = check_op_args(op, logits, target, weight, label_smoothing)
    _check_triton_input(op, logits)
    check_op_bwd_args(op, g, logits, grad_loss, stats)
    if out is None:
        out = new_output(logits.shape, logits.dtype, logits.device)
    if g.rows == 0:
        return out
    if not g.probs:
        check_class_indices(contract.OP, target, g.C, ignore_index)  # the C++ kernels' text
    logits, target = logits.contiguous(), target.contiguous()
    grad_loss, stats = grad_loss.contiguous(), stats.contiguous()
    has_w = weight is not None
    acc = acc_dtype(logits.dtype)
    w = weight.contiguous() if has_w else None
    wsum = weight.sum(dtype=acc) if has_w else None
    nrows, block, warps = _launch_config(g.C, g.rows, logits.dtype, block_c, rows_per_program)
    hi, lo = _eps_pair(label_smoothing)
    wrap_triton(cross_entropy_bwd_softmax_minus_target_kernel)[(triton.cdiv(g.rows, nrows),)](
        grad_loss, logits, target, w, wsum, stats, out, g.rows, g.C, g.D, ignore_index, hi, lo,
        PROBS=g.probs, HAS_WEIGHT=has_w, SMOOTHING=label_smoothing > 0, ROWS=nrows, BLOCK_C=block,
        num_warps=warps,
    )  # fmt: skip
    return out


# ---- registered ops (schemas identical to csrc/registration.cpp) -------------------------------


@triton_library_op(
    "fastops_triton::cross_entropy_fwd",
    mutates_args=(),
    schema="(Tensor logits, Tensor target, Tensor? weight, int ignore_index, float label_smoothing) "
    "-> (Tensor loss, Tensor stats)",
    fake=fwd_fake,
)
def cross_entropy_fwd(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, stats): loss (row shape), stats (2, *row shape) = (row max, log sum exp(x - max)), accumulation dtype."""
    return _launch_fwd(logits, target, weight, ignore_index, label_smoothing)


@triton_library_op(
    "fastops_triton::cross_entropy_bwd",
    mutates_args=(),
    schema="(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight, Tensor stats, int ignore_index, "
    "float label_smoothing) -> Tensor",
    fake=bwd_fake,
)
def cross_entropy_bwd(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
) -> torch.Tensor:
    """d loss / d logits for the per-row upstream gradient grad_loss: logits' shape and dtype, contiguous."""
    return _launch_bwd("cross_entropy_bwd", grad_loss, logits, target, weight, stats, ignore_index, label_smoothing)


@triton_library_op(
    "fastops_triton::cross_entropy_bwd_",
    mutates_args=("logits",),
    schema="(Tensor grad_loss, Tensor(a!) logits, Tensor target, Tensor? weight, Tensor stats, int ignore_index, "
    "float label_smoothing) -> ()",
    fake=bwd_inplace_fake,
)
def cross_entropy_bwd_(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
) -> None:
    """As cross_entropy_bwd, written over logits (which must be contiguous)."""
    if not logits.is_contiguous():
        raise ValueError("cross_entropy_bwd_: logits must be contiguous to be overwritten")
    _launch_bwd("cross_entropy_bwd_", grad_loss, logits, target, weight, stats, ignore_index, label_smoothing, logits)


# Autograd (double backward included), vmap and autocast of the ops above: the same registration as
# the native ops', from the one place that knows both passes.
contract.register(torch.ops.fastops_triton)
