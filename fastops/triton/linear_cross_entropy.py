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
# (chunk_rows, else chosen from the shapes, see _chunk_rows): per chunk, cuBLAS computes the (R, V)
# logits (addmm), one Triton kernel turns each row of them into its loss and statistics and, when
# gradients are wanted, overwrites the row in place with dL, then cuBLAS computes grad_x's rows
# (dL weight, straight into grad_x) and adds dL^T x_chunk into a grad_weight accumulator. So the
# forward with compute_grad runs the three GEMMs eager autograd runs, in one sweep, and only one
# (R, V) block ever exists, never the (N, V) logits. The backward op (reduction "none", or a
# forward without compute_grad) repeats the sweep from the saved statistics: one GEMM more.
#
# Grid. The per-chunk kernel runs one program per chunk row: grid = (R,). Global row = row0 + the
# program id (int64 before any arithmetic; offsets into the chunk are program id * V, int64).
#
# Tiling. A program sweeps its row in tiles of BLOCK_V classes (a power of two, <= 4096, 2048 for
# float64), in registers. Forward: one loop with the online max / sum (Milakov & Gimelshein) and,
# with smoothing, the running sum of w_c (z_c - m) re-based when the max moves; the target logit is
# one extra load. Gradient: a second loop over the row (it hits L2: a row is V * s bytes) that
# reads l_c, recomputes z_c and p_c and writes dL_c over l_c. The backward op runs only that loop,
# from the saved (m, ls).
#
# Traffic (s = bytes per element, one chunk of R rows): the kernel reads the R x V logits twice
# (the second read from L2 for rows up to a few MB) and writes dL once: 3 R V s, against eager
# torch's linear + cross_entropy + backward, which writes the logits, log_softmax, its gradient and
# the logits' gradient (each N x V, about 8 N V s in all, N x V x (s + 4) bytes alive at once).
# Peak extra memory here: one R x V chunk in x's dtype, grad_weight's (V, H) accumulator in the
# accumulation dtype and R x V accumulation-dtype temporaries of bias' column sum.
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
# Preconditions (check_args, the launchers): x (N, H), weight (V, H), bias (V,) one floating dtype
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

import math
import operator
import struct

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton

from fastops.ops._devices import check_same_device
from fastops.triton import interpreting
from fastops.triton._register import check_kernel_input, new_output, triton_library_op

try:  # the op's glue (autograd, vmap, autocast, the support table): issue 13's other half
    from fastops.ops import linear_cross_entropy as _stem_ops
except ImportError:  # not merged yet: the raw ops work, without autograd
    _stem_ops = None

__all__ = ["check_args", "linear_cross_entropy_bwd", "linear_cross_entropy_fwd"]

OP_FWD, OP_BWD = "linear_cross_entropy_fwd", "linear_cross_entropy_bwd"
MAX_BLOCK_V = 4096
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
    BLOCK_V: tl.constexpr,
):
    acc = stats_ptr.dtype.element_ty
    i = tl.program_id(0).to(tl.int64)
    r = row0 + i
    zrow = z_ptr + i * V
    cls = tl.arange(0, BLOCK_V)
    y = tl.load(tgt_ptr + r)
    keep = y != ignore_index
    inb = (y >= 0) & (y < V)  # the launcher raised already; this only keeps a traced call in bounds
    Vf = tl.zeros([], acc) + V
    if SOFTCAP:
        cap = (tl.zeros([], tl.float64) + cap_hi) + cap_lo
    if SMOOTHING:
        eps = (tl.zeros([], acc) + eps_hi) + eps_lo
        W = tl.load(wsum_ptr).to(acc) if HAS_WEIGHT else Vf

    if FWD:
        m = tl.full([], float("-inf"), acc)  # running max
        s = tl.zeros([], tl.float64)  # running sum of exp(z - shift), float64 (see Numerics)
        shift = tl.zeros([], acc)  # m, or 0 while m is -inf (exp(-inf - -inf) would be NaN)
        sxr = tl.zeros([], acc)  # sum w_c (z_c - shift)
        ws = tl.zeros([], acc)  # sum w_c over the tiles seen
        for v0 in range(0, V, BLOCK_V):
            c = v0 + cls
            live = c < V
            z = tl.load(zrow + c, mask=live, other=0.0)
            if SOFTCAP:
                z, _ = _cap(z, cap)
            z = tl.where(live, z.to(acc), float("-inf"))  # a capped masked lane would be -cap, not -inf
            m_new = tl.maximum(m, tl.max(z, axis=0))
            new_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            s = s * tl.exp((m - new_shift).to(tl.float64)) + tl.sum(tl.exp(z - new_shift).to(tl.float64), axis=0)
            m = m_new
            d = shift - new_shift  # <= 0: re-bases the relative sum when the max moves
            shift = new_shift
            if SMOOTHING:
                zr = tl.where(live, z - shift, 0.0)  # z is -inf off the row; 0 * -inf would be NaN
                if HAS_WEIGHT:
                    w = tl.load(w_ptr + c, mask=live, other=0.0).to(acc)
                    sxr += d * ws + tl.sum(w * zr, axis=0)
                    ws += tl.sum(w, axis=0)
                else:
                    sxr += d * ws + tl.sum(zr, axis=0)
                    ws += tl.sum(live.to(acc), axis=0)
        ls = tl.log(s).to(acc)
        finite = (m > float("-inf")) & (m < float("inf"))
        z_y = tl.load(zrow + y, mask=keep & inb, other=0.0)
        if SOFTCAP:
            z_y, _ = _cap(z_y, cap)
        loss = (m - z_y.to(acc)) + ls
        if HAS_WEIGHT:
            loss = tl.load(w_ptr + y, mask=keep & inb, other=0.0).to(acc) * loss
        if SMOOTHING:
            loss = (1.0 - eps) * loss + eps / Vf * (W * ls - sxr)
        if ZLOSS:
            lse = m + ls
            loss += ((tl.zeros([], acc) + zl_hi) + zl_lo) * lse * lse
        loss = tl.where(keep, tl.where(inb & finite, loss, float("nan")), 0.0)
        tl.store(loss_ptr + r, loss)
        tl.store(stats_ptr + r, m)
        tl.store(stats_ptr + N + r, ls)
    else:
        m = tl.load(stats_ptr + r).to(acc)
        ls = tl.load(stats_ptr + N + r).to(acc)
        finite = (m > float("-inf")) & (m < float("inf")) & (ls > float("-inf")) & (ls < float("inf"))

    if GRAD:
        g = tl.load(g_ptr + r * g_stride).to(acc)
        w_y = tl.load(w_ptr + y, mask=keep & inb, other=0.0).to(acc) if HAS_WEIGHT else 1.0
        g1 = g * w_y  # the [c == y] term
        coef = g1  # multiplies p_c
        if SMOOTHING:
            g1 = (1.0 - eps) * g1
            g0 = g * eps / Vf  # per-class smoothing term, times w_c
            coef = g1 + g0 * W
        if ZLOSS:
            coef += 2.0 * g * ((tl.zeros([], acc) + zl_hi) + zl_lo) * (m + ls)
        coef = tl.where(inb & finite, coef, float("nan"))
        for v0 in range(0, V, BLOCK_V):
            c = v0 + cls
            live = c < V
            z = tl.load(zrow + c, mask=live, other=0.0)
            if SOFTCAP:
                z, dz = _cap(z, cap)
            grad = coef * tl.exp((z.to(acc) - m) - ls) - tl.where(c == y, g1, 0.0)  # z - m exact near the max
            if SMOOTHING:
                if HAS_WEIGHT:
                    grad -= tl.load(w_ptr + c, mask=live, other=0.0).to(acc) * g0
                else:
                    grad -= g0
            if SOFTCAP:
                grad = grad * dz.to(acc)
            grad = tl.where(keep, grad, 0.0)  # exact zeros for ignored rows
            tl.store(zrow + c, grad.to(z_ptr.dtype.element_ty), mask=live)


# ---- checks and shapes (the argument contract of issue 13) ------------------------------------


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shape(s: torch.Size | list[int] | tuple[int, ...]) -> str:
    return "(" + ", ".join(str(v) for v in s) + (",)" if len(s) == 1 else ")")


def check_args(
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
    """The registered ops' argument contract (csrc/fastops.h check_linear_cross_entropy_args, message for
    message); returns (N, H, V).

    ValueError for shapes, values and devices, TypeError for dtypes, each naming ``op``, the argument
    and the expected vs given shape / dtype / device. Class index values are checked separately
    (:func:`check_class_indices`: it reads the data).
    """
    if x.dim() != 2:
        raise ValueError(f"{op}: x must have shape (N, H), got {_shape(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating tensor, got {x.dtype}")
    N, H = x.shape
    if weight.dim() != 2 or weight.shape[1] != H:
        raise ValueError(
            f"{op}: weight must have shape (V, {H}) for x of shape {_shape(x.shape)}, got {_shape(weight.shape)}"
        )
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: weight must have x's dtype {x.dtype}, got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"{op}: weight is on {weight.device} but x is on {x.device}")
    V = weight.shape[0]
    if V < 1:
        raise ValueError(f"{op}: weight must have at least one class (row), got shape {_shape(weight.shape)}")
    if bias is not None:
        if list(bias.shape) != [V]:
            raise ValueError(f"{op}: bias must have shape ({V},), got {_shape(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: bias must have x's dtype {x.dtype}, got {bias.dtype}")
        if bias.device != x.device:
            raise ValueError(f"{op}: bias is on {bias.device} but x is on {x.device}")
    if list(target.shape) != [N]:
        raise ValueError(
            f"{op}: target must have shape ({N},) for x of shape {_shape(x.shape)}, got {_shape(target.shape)}"
        )
    if target.dtype != torch.int64:
        raise TypeError(f"{op}: target must be int64 class indices, got {target.dtype}")
    if target.device != x.device:
        raise ValueError(f"{op}: target is on {target.device} but x is on {x.device}")
    if class_weight is not None:
        if list(class_weight.shape) != [V]:
            raise ValueError(f"{op}: class_weight must have shape ({V},), got {_shape(class_weight.shape)}")
        if not class_weight.is_floating_point():
            raise TypeError(f"{op}: class_weight must be floating, got {class_weight.dtype}")
        if class_weight.device != x.device:
            raise ValueError(f"{op}: class_weight is on {class_weight.device} but x is on {x.device}")
    try:
        ii = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"{op}: ignore_index must be an int, got {type(ignore_index).__name__}") from None
    if not INT64_MIN <= ii <= INT64_MAX:
        raise ValueError(f"{op}: ignore_index must fit in int64, got {ii}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    if not (softcap >= 0.0 and math.isfinite(softcap)):
        raise ValueError(f"{op}: softcap must be >= 0 and finite, got {softcap}")
    if not (z_loss >= 0.0 and math.isfinite(z_loss)):
        raise ValueError(f"{op}: z_loss must be >= 0 and finite, got {z_loss}")
    if reduction not in (0, 1, 2):
        raise ValueError(f"{op}: reduction must be 0 (none), 1 (mean) or 2 (sum), got {reduction}")
    if chunk_rows < 0:
        raise ValueError(f"{op}: chunk_rows must be >= 0, got {chunk_rows}")
    return N, H, V


def check_class_indices(op: str, target: torch.Tensor, V: int, ignore_index: int) -> None:
    """IndexError for a class index outside [0, V) that is not ignore_index (a reduction and a sync)."""
    if torch.compiler.is_compiling() or is_fake(target):
        return  # traced: no data; the kernel writes NaN for such rows
    bad = (target != ignore_index) & ((target < 0) | (target >= V))
    if bool(bad.any()):
        r = int(bad.nonzero()[0])
        raise IndexError(
            f"{op}: target[{r}] = {int(target[r])} is out of bounds for {V} classes "
            f"(expected 0 <= target < {V}, or target == ignore_index {ignore_index})"
        )


def _check_triton_input(op: str, x: torch.Tensor) -> None:
    """A device the kernels run on and a dtype they take there: the support table's row for the op
    (``register_op`` in the glue module) when it is there, so the raw ops refuse exactly what
    ``backend="triton"`` refuses; without the glue, CUDA tensors or CPU ones under the interpreter,
    in any of the four floating dtypes (the kernel has no tl.dot, the interpreter's weak spot)."""
    if _stem_ops is not None:
        check_kernel_input(op, "linear_cross_entropy", x, "x")
        return
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        raise ValueError(
            f"{op}: the Triton kernels run on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), "
            f"got x on {x.device}"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: the Triton kernels take float16, bfloat16, float32 or float64 x, got {x.dtype}")


def fwd_fake(
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
    """(loss, stats, grad_x, grad_weight, grad_bias): loss (N,) for reduction 0 else (), stats (2, N),
    both in the accumulation dtype; the grads (N, H), (V, H), (V,) (bias' dtype; (0,) without bias)
    when compute_grad and reduction != 0, else (0,) each."""
    check_same_device(OP_FWD, x=x, weight=weight, bias=bias, target=target, class_weight=class_weight)
    acc = acc_dtype(x.dtype)
    N = x.shape[0]
    loss = x.new_empty((N,) if reduction == 0 else (), dtype=acc)
    stats = x.new_empty((2, N), dtype=acc)
    bias_dtype = x.dtype if bias is None else bias.dtype
    if compute_grad and reduction != 0:
        gx = torch.empty_like(x, memory_format=torch.contiguous_format)
        gw = weight.new_empty(weight.shape)
        gb = x.new_empty((weight.shape[0],) if bias is not None else (0,), dtype=bias_dtype)
    else:
        gx, gw, gb = (x.new_empty((0,), dtype=dt) for dt in (x.dtype, weight.dtype, bias_dtype))
    return loss, stats, gx, gw, gb


def bwd_fake(
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
    """(grad_x (N, H) x's dtype, grad_weight (V, H) weight's dtype, grad_bias (V,) bias' dtype, (0,) without bias)."""
    check_same_device(
        OP_BWD,
        grad_loss=grad_loss,
        x=x,
        weight=weight,
        bias=bias,
        target=target,
        class_weight=class_weight,
        stats=stats,
    )
    gx = torch.empty_like(x, memory_format=torch.contiguous_format)
    gw = weight.new_empty(weight.shape)
    gb = x.new_empty((weight.shape[0],), dtype=bias.dtype) if bias is not None else x.new_empty((0,))
    return gx, gw, gb


# ---- launchers --------------------------------------------------------------------------------


def _f32_pair(v: float) -> tuple[float, float]:
    """v = hi + lo with hi, lo float32-representable: Triton passes Python floats as float32."""
    hi = struct.unpack("f", struct.pack("f", v))[0]
    return hi, float(v - hi)


def _chunk_rows(N: int, H: int, V: int, chunk_rows: int) -> int:
    """Rows per chunk: chunk_rows when > 0; else logits of about max(N H, V H) / 4 elements, at most the
    (N, V) logits / 8, at least min(N, 64) rows, a multiple of 8 where possible (issue 13)."""
    if N == 0:
        return 1
    if chunk_rows > 0:
        return min(chunk_rows, N)
    rows = max(N * H, V * H) // 4 // V
    rows = min(rows, (N + 7) // 8)
    rows = max(rows, min(N, 64))
    if rows >= 8:
        rows -= rows % 8
    return max(1, min(rows, N))


def _block_v(V: int, dtype: torch.dtype) -> tuple[int, int]:
    """BLOCK_V (power of two, the whole row when it fits) and num_warps (~8 elements a thread)."""
    cap = MAX_BLOCK_V // 2 if dtype == torch.float64 else MAX_BLOCK_V
    block = min(triton.next_power_of_2(V), cap)
    return block, max(1, min(16, block // 256))


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
    block, warps = _block_v(V, x.dtype)
    rows = _chunk_rows(N, H, V, chunk_rows)
    wt = weight.t()
    kernel = wrap_triton(linear_cross_entropy_chunk_kernel)
    for i0 in range(0, N, rows):
        i1 = min(N, i0 + rows)
        xc = x[i0:i1]
        logits = torch.addmm(bias, xc, wt) if bias is not None else torch.mm(xc, wt)
        kernel[(i1 - i0,)](
            logits, target, w, wsum, g, loss_rows, stats, i0, N, V, 0 if not want or g.dim() == 0 else 1,
            ignore_index, *_f32_pair(label_smoothing), *_f32_pair(softcap), *_f32_pair(z_loss),
            FWD=loss_rows is not None, GRAD=want, HAS_WEIGHT=has_w, SMOOTHING=smoothing, SOFTCAP=softcap > 0,
            ZLOSS=z_loss > 0, BLOCK_V=block, num_warps=warps,
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
    N, H, V = check_args(
        op, x, weight, bias, target, class_weight, ignore_index, label_smoothing, softcap, z_loss, reduction, chunk_rows
    )
    _check_triton_input(op, x)
    check_class_indices(op, target, V, ignore_index)
    return N, H, V


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
    for name, t, shape in (("grad_loss", grad_loss, [N] if reduction == 0 else []), ("stats", stats, [2, N])):
        if list(t.shape) != shape:
            raise ValueError(f"{OP_BWD}: {name} must have shape {_shape(shape)}, got {_shape(t.shape)}")
        if t.dtype != acc:
            raise TypeError(f"{OP_BWD}: {name} must be {acc} for {x.dtype} x, got {t.dtype}")
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
if _stem_ops is not None:
    _stem_ops.register(torch.ops.fastops_triton)
