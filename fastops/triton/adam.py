# Adam / AdamW step, Triton kernel, registered as fastops_triton::adam_step_.
#
# Math (the same as csrc/cpu/adam.cpp; torch.optim.Adam's _single_tensor_adam), per element, with
# t = the step count after this step:
#   g = grad * inv_scale; g = -g (maximize); p *= 1 - lr*wd (AdamW) | g += wd*p (Adam L2)
#   m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2; vm = max(vm, v) (amsgrad, used for v)
#   p = p + neg_step_size * m / (sqrt(v) / bc2_sqrt + eps)
#   neg_step_size = -lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t)
# The per-tensor scalars depend on the step counts, the lr tensor and grad_scale, which live on the
# device: the launcher computes them there with a handful of tiny torch ops over all tensors at once
# (float64, as torch's host arithmetic; stored in the math type), so nothing is read back to the
# host. found_inf is read by every program, which then masks all its loads and stores off.
#
# Grid. One launch per parameter tensor of PACK_BELOW (16384) elements or more: grid = (cdiv(numel,
# BLOCK),), one BLOCK of elements per program, offsets in int64 (a tensor may exceed 2^31 elements).
# The smaller tensors (two or more) share one launch: their p, g, m, v (vm) are concatenated flat, a
# per-element int32 row index picks each element's two step-dependent scalars (neg_step_size,
# bc2_sqrt) from the table, and p, m, v (vm) are copied back with one foreach copy each. On a GPU a
# launch costs microseconds while a small tensor's step moves a few KB, so a model's hundred-odd
# biases and norms were launch-bound; the concatenation and the copy back add about twice the
# kernel's own traffic, on those small tensors only. Under the CPU interpreter (cost per launch and
# per program) the Adam tests' ~5000 small tensor steps become ~800 launches. The native CUDA kernel
# (csrc/cuda/adam.cu) takes a pointer table instead, which the interpreter cannot run (it copies
# each tensor argument).
#
# Entries that share memory with another (a tensor listed twice, views of one storage) are never
# packed: they are stepped one launch at a time, in order, as the native op steps them.
#
# Tiling. A program's BLOCK elements of p, g, m, v (vm) live in registers; no reuse, no shared memory.
#
# Traffic per parameter and step (s = bytes per element): read p, g, m, v, write p, m, v: 7s (28
# bytes in float32), 9s with amsgrad. Unfused torch (foreach=False) makes ~9 elementwise passes,
# about 24s. The benchmark's GB/s uses 7s (9s with amsgrad).
#
# Numerics. Math in float32 for fp16/bf16/fp32 and float64 for fp64; one rounding per stored value.
# NaN/inf in grads propagate as in torch. found_inf != 0: nothing is written (steps not advanced).
#
# Preconditions (fastops.ops.adam.check_op_args): per parameter, grad/m/v/vm of p's
# shape, dtype and device; one device and dtype per call, a CUDA device (CPU under TRITON_INTERPRET=1);
# one-element float32 steps; lr_tensor, grad_scale, found_inf one-element floating tensors on the
# params' device. lr >= 0: a negative (or NaN) lr_tensor raises on CPU, as the native CPU op; on CUDA,
# as the native CUDA op, it is not read back (that would be a host sync per step). Tensors that are
# not contiguous are updated through contiguous copies that are copied back.
#
# References. Kingma & Ba, "Adam" (arXiv:1412.6980); Loshchilov & Hutter, AdamW (arXiv:1711.05101);
# torch/optim/adam.py; llm.c dev/cuda/adamw.cu (read, not copied).
"""Triton Adam/AdamW step: ``fastops_triton::adam_step_``, same schema as the native ``fastops::adam_step_``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastops.ops import _autograd
from fastops.ops.adam import SCHEMA, adam_step_fake, check_op_args
from fastops.triton import interpreting
from fastops.triton._register import check_kernel_input, triton_library_op

# ruff: noqa: ANN001
# 1024 elements per program on a GPU (4 warps x 8 elements per thread: 16-byte accesses). The CPU
# interpreter runs each program as numpy ops over the whole block, masked lanes included, so there the
# block is the tensor's size rounded up to a power of two, at most 16384: a larger block means fewer
# (slow, Python-level) programs, and a block no larger than the tensor keeps a 91-element tensor from
# costing 16384-element numpy ops (the Adam tests step ~5000 small tensors: 101 s -> 62 s on a 2-core
# AMD EPYC).
BLOCK = 1024
INTERPRETER_MAX_BLOCK = 16384
# Tensors under this many elements (biases, norms, small convs) are stepped together: one launch over
# their concatenation instead of one each (see Grid).
PACK_BELOW = 1 << 14


def _block(numel: int) -> int:
    """Elements per program for a tensor of ``numel`` elements (see BLOCK)."""
    if not interpreting():
        return BLOCK
    return min(INTERPRETER_MAX_BLOCK, max(16, triton.next_power_of_2(numel)))


# The per-tensor scalar table: one row per parameter tensor, these columns, in the math type (built
# on the device by the launcher; the kernel reads its row by these column names).
SCALARS = ("neg_step_size", "bc2_sqrt", "decay", "wd", "w", "one_minus_w", "beta2", "one_minus_beta2", "eps")
_NEG_STEP_SIZE, _BC2_SQRT, _DECAY, _WD, _W, _ONE_MINUS_W, _BETA2, _ONE_MINUS_BETA2, _EPS = (
    tl.constexpr(i) for i in range(len(SCALARS))
)
_NSCAL = tl.constexpr(len(SCALARS))


@triton.jit
def _store(ptr, x, mask, BF16: tl.constexpr):
    # float32 -> bfloat16 rounded to nearest even by hand: the interpreter's cast truncates (on a GPU
    # the cast rounds; this gives the same bits), and truncation biases every stored value the same
    # way, which drifts visibly over many steps. NaN keeps the truncated (still NaN) bits.
    if BF16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        y = tl.where(x != x, bits >> 16, rounded).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        tl.store(ptr, y, mask=mask)
    else:
        tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def adam_step_elementwise_kernel(  # noqa: ANN201 - a Triton kernel returns nothing
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    vm_ptr,
    scal_ptr,  # (len(SCALARS),) math type: this tensor's row of the scalar table; PACKED: the whole table
    seg_ptr,  # PACKED: (numel,) int32, each element's row of the table (else unused)
    inv_scale_ptr,  # (1,) math type
    found_ptr,  # (1,) float32: nonzero skips the step
    numel,
    PACKED: tl.constexpr,  # several small tensors concatenated; the step-dependent scalars per element
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    DECOUPLED: tl.constexpr,
    L2: tl.constexpr,
    LERP_LOW: tl.constexpr,
    BF16: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    found = tl.load(found_ptr)
    mask = (offs < numel) & ((tl.zeros([BLOCK], dtype=tl.float32) + found) == 0.0)
    # Scalars travel in the math type (float64 for fp64 params), not as float32 kernel arguments.
    # Only the two that depend on the tensor's step count differ between rows of the table.
    if PACKED:
        row = tl.load(seg_ptr + offs, mask=offs < numel, other=0).to(tl.int64) * _NSCAL
        neg_step_size = tl.load(scal_ptr + row + _NEG_STEP_SIZE, mask=offs < numel, other=0.0)
        bc2_sqrt = tl.load(scal_ptr + row + _BC2_SQRT, mask=offs < numel, other=1.0)
    else:
        neg_step_size = tl.load(scal_ptr + _NEG_STEP_SIZE)
        bc2_sqrt = tl.load(scal_ptr + _BC2_SQRT)
    acc = neg_step_size.dtype
    decay = tl.load(scal_ptr + _DECAY)
    wd = tl.load(scal_ptr + _WD)
    w = tl.load(scal_ptr + _W)
    one_minus_w = tl.load(scal_ptr + _ONE_MINUS_W)
    b2 = tl.load(scal_ptr + _BETA2)
    one_minus_b2 = tl.load(scal_ptr + _ONE_MINUS_BETA2)
    eps = tl.load(scal_ptr + _EPS)
    inv_scale = tl.load(inv_scale_ptr)
    p = tl.load(p_ptr + offs, mask=mask).to(acc)
    g = tl.load(g_ptr + offs, mask=mask).to(acc) * inv_scale
    m = tl.load(m_ptr + offs, mask=mask).to(acc)
    v = tl.load(v_ptr + offs, mask=mask).to(acc)
    if MAXIMIZE:
        g = -g
    if DECOUPLED:
        p = p * decay
    if L2:
        g = g + wd * p
    if LERP_LOW:
        m = m + w * (g - m)
    else:
        m = g - (g - m) * one_minus_w
    v = v * b2 + one_minus_b2 * g * g
    vv = v
    if AMSGRAD:
        vm = tl.load(vm_ptr + offs, mask=mask).to(acc)
        vm = tl.maximum(vm, v, propagate_nan=tl.PropagateNan.ALL)
        _store(vm_ptr + offs, vm, mask, BF16)
        vv = vm
    denom = tl.sqrt(vv) / bc2_sqrt + eps
    p = p + neg_step_size * m / denom
    _store(p_ptr + offs, p, mask, BF16)
    _store(m_ptr + offs, m, mask, BF16)
    _store(v_ptr + offs, v, mask, BF16)


@triton_library_op(
    "fastops_triton::adam_step_",
    mutates_args=("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps"),
    schema=SCHEMA,
    fake=adam_step_fake,
)
def adam_step_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    lr: float,
    lr_tensor: torch.Tensor | None,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: torch.Tensor | None,
    found_inf: torch.Tensor | None,
) -> None:
    """One Adam/AdamW step in place over one device's and dtype's parameters (see the file header)."""
    # The op's contract (the native op's checks and text), then nothing can index out of bounds.
    check_op_args(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, lr_tensor, beta1, beta2,
        weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, grad_scale, found_inf,
    )  # fmt: skip
    n = len(params)
    if n == 0:
        return
    check_kernel_input("adam_step_", "adam", params[0], "params")
    device, dtype = params[0].device, params[0].dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    f64 = dict(dtype=torch.float64, device=device)
    t = torch.stack([s.reshape(()) for s in state_steps]).to(torch.float64) + 1  # (n,)
    lr_v = lr_tensor.reshape(()).to(torch.float64) if lr_tensor is not None else torch.tensor(lr, **f64)
    # torch rounds 1 - beta1 and 1 - beta2 from double to the math type, and forms lerp's 1 - w there.
    w = torch.tensor(1.0 - beta1, dtype=acc, device=device)
    columns = {
        "neg_step_size": -lr_v / (1 - torch.tensor(beta1, **f64) ** t),
        "bc2_sqrt": (1 - torch.tensor(beta2, **f64) ** t).sqrt(),
        "decay": (1 - lr_v * weight_decay).expand(n),
        "wd": torch.tensor(weight_decay, dtype=acc, device=device),
        "w": w,
        "one_minus_w": 1 - w,
        "beta2": torch.tensor(beta2, dtype=acc, device=device),
        "one_minus_beta2": torch.tensor(1.0 - beta2, dtype=acc, device=device),
        "eps": torch.tensor(eps, dtype=acc, device=device),
    }
    scal = torch.stack([columns[name].to(acc).expand(n) for name in SCALARS], dim=1)  # (n, len(SCALARS))
    if grad_scale is not None:
        inv_scale = (1.0 / grad_scale.reshape(1).to(torch.float64)).to(acc)
    else:
        inv_scale = torch.ones(1, dtype=acc, device=device)
    found = (
        found_inf.reshape(1).to(torch.float32)
        if found_inf is not None
        else torch.zeros(1, dtype=torch.float32, device=device)
    )
    kernel = wrap_triton(adam_step_elementwise_kernel)
    flags = dict(
        AMSGRAD=amsgrad,
        MAXIMIZE=maximize,
        DECOUPLED=decoupled_weight_decay and weight_decay != 0,
        L2=(not decoupled_weight_decay) and weight_decay != 0,
        LERP_LOW=abs(1.0 - beta1) < 0.5,
        BF16=dtype == torch.bfloat16,
    )
    shared = _shared_entries(params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else [])
    small = [i for i in range(n) if 0 < params[i].numel() < PACK_BELOW and i not in shared]
    if len(small) < 2:
        small = []
    if small:
        _step_packed(
            kernel, small, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, scal, inv_scale, found, flags
        )
    packed = set(small)
    for i in range(n):
        numel = params[i].numel()
        if numel == 0 or i in packed:
            continue
        bufs = [params[i], grads[i], exp_avgs[i], exp_avg_sqs[i]] + ([max_exp_avg_sqs[i]] if amsgrad else [])
        work = [b.contiguous() for b in bufs]
        p, g, m, v = work[:4]
        vm = work[4] if amsgrad else m  # never read or written without AMSGRAD
        block = _block(numel)
        kernel[(triton.cdiv(numel, block),)](
            p, g, m, v, vm, scal[i], scal[i], inv_scale, found, numel, PACKED=False, BLOCK=block, **flags
        )  # fmt: skip
        # Decided from strides, not data pointers: the launcher is traced on fake tensors on a GPU.
        for k, (dst, src) in enumerate(zip(bufs, work)):
            if k != 1 and not dst.is_contiguous():
                dst.copy_(src)
    # step += 1, or += 0 on an overflow step: no host sync.
    torch._foreach_add_(state_steps, (1 - found).reshape(()))


def _shared_entries(*lists: list[torch.Tensor]) -> set[int]:
    """Indices i whose written buffers (param, exp_avg, ...) share memory with another entry's: the same
    tensor listed twice, or views of one storage. They are stepped one launch at a time, in order, as the
    native op steps them; packed, both entries would read the old values and the later copy back would
    win (one step instead of two). Identity always; storages where they have an address (not fake
    tensors under tracing, where a shared storage is the same tensor object)."""
    seen: dict[object, int] = {}
    shared: set[int] = set()
    for lst in lists:
        for i, t in enumerate(lst):
            if t.numel() == 0:  # nothing to write; empty storages may all share one null address
                continue
            keys = [("id", id(t))]
            try:
                keys.append(("storage", t.untyped_storage().data_ptr()))
            except (RuntimeError, NotImplementedError, AttributeError):
                pass
            for key in keys:
                j = seen.setdefault(key, i)
                if j != i:
                    shared.update((i, j))
    return shared


def _step_packed(
    kernel,
    idx: list[int],
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    scal: torch.Tensor,
    inv_scale: torch.Tensor,
    found: torch.Tensor,
    flags: dict[str, bool],
) -> None:
    """Steps the tensors ``idx`` (each under PACK_BELOW elements) in one launch: each buffer list is
    concatenated flat, stepped with every element reading its tensor's row of ``scal`` (n, len(SCALARS))
    through a per-element row index, and the results are copied back (one foreach copy per buffer)."""
    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if flags["AMSGRAD"] else [])
    counts = [params[i].numel() for i in idx]
    total = sum(counts)
    flat = [torch.cat([buf[i].reshape(-1) for i in idx]) for buf in lists]
    device = params[0].device
    seg = torch.repeat_interleave(
        torch.tensor(idx, dtype=torch.int32, device=device), torch.tensor(counts, device=device), output_size=total
    )
    p, g, m, v = flat[:4]
    vm = flat[4] if flags["AMSGRAD"] else m
    block = _block(total)
    kernel[(triton.cdiv(total, block),)](
        p, g, m, v, vm, scal, seg, inv_scale, found, total, PACKED=True, BLOCK=block, **flags
    )  # fmt: skip
    for k, (buf, src) in enumerate(zip(lists, flat)):
        if k != 1:  # the gradient is only read
            dsts = [buf[i] for i in idx]
            torch._foreach_copy_(dsts, [c.view(d.shape) for c, d in zip(src.split(counts), dsts)])


# No derivative (see fastops.ops._autograd.register_in_place), as the native op.
_autograd.register_in_place(torch.ops.fastops_triton.adam_step_)
