"""Compile every fastops Triton kernel for an NVIDIA GPU (sm_90) on a machine without one.

CI has no GPU, and the Triton interpreter that runs the kernels there on CPU tensors never compiles
them: a kernel can pass every interpreted test and still fail to compile on a GPU (a construct the
interpreter accepts that the compiler does not, a shape or dtype mismatch in a 2-D tile). Triton
compiles ahead of time for a named target with no device present (``triton.compile`` with a
``GPUTarget``: TTIR -> TTGIR -> LLVM IR -> PTX -> cubin, ptxas included), so this script does that
for each kernel with the argument types and constexpr combinations its launchers use: every dtype
family, every flag a launcher sets, multi-row and single-row tiles.

    python scripts/triton_compile_check.py      # TRITON_INTERPRET must be unset (the interpreter
                                                # patches triton.language, which the compiler needs)

Exit status 0 when every kernel compiled; otherwise 1, with each failure printed. It checks that the
kernels compile, not that they are right or fast on a GPU (``scripts/gpu_suite.sh`` does that).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes", "y"):
    sys.exit("triton_compile_check.py: unset TRITON_INTERPRET (the interpreter patches triton.language)")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import fastops.triton.adam as TA  # noqa: E402
import fastops.triton.conv2d as TC  # noqa: E402
import fastops.triton.cross_entropy as TCE  # noqa: E402
import fastops.triton.linear_cross_entropy as TLCE  # noqa: E402
import fastops.triton.linear_relu as TLR  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)  # H100 / H200: what CI's nvcc build targets too
ACC = {"fp32": "fp32", "bf16": "fp32", "fp16": "fp32", "fp64": "fp64"}  # a dtype's accumulation type


def _jit(kernel: object) -> triton.runtime.jit.JITFunction:
    """The JITFunction under an autotuner (or a heuristics wrapper)."""
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def _source(kernel: object, pointers: dict[str, str], floats: tuple[str, ...], consts: dict[str, object]) -> ASTSource:
    """An ASTSource for ``kernel``: pointer arguments typed by ``pointers`` (name -> element type),
    ``floats`` fp32, the remaining non-constexpr arguments i32, constexprs from ``consts``."""
    fn = _jit(kernel)
    signature, constexprs = {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            if p.name not in consts:
                raise KeyError(f"{fn.__name__}: no value for constexpr {p.name}")
            signature[p.name] = "constexpr"
            constexprs[(i,)] = consts[p.name]
        elif p.name in pointers:
            signature[p.name] = "*" + pointers[p.name]
        elif p.name in floats:
            signature[p.name] = "fp32"
        else:
            signature[p.name] = "i32"
    unknown = set(consts) - {p.name for p in fn.params if p.is_constexpr}
    if unknown:
        raise KeyError(f"{fn.__name__}: constexprs it does not take: {sorted(unknown)}")
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs)


def cases() -> Iterator[tuple[str, ASTSource, int]]:
    """(name, source, num_warps) for every kernel and configuration checked."""
    # Cross-entropy: index and probability targets, weights, smoothing; many short rows a program
    # and one long row a program (the launcher's two regimes), each dtype family.
    for dt, flags, (rows, block) in [
        ("fp32", (False, False, False), (1, TCE.MAX_BLOCK_C)),
        ("fp32", (True, True, True), (256, 16)),
        ("fp32", (False, True, True), (4, 1024)),
        ("bf16", (True, False, True), (1, TCE.MAX_BLOCK_C)),
        ("fp16", (False, True, False), (64, 64)),
        ("fp64", (True, True, True), (128, 16)),
        ("fp64", (False, True, True), (1, TCE.MAX_BLOCK_C // 2)),
    ]:
        probs, has_w, smooth = flags
        consts = {"PROBS": probs, "HAS_WEIGHT": has_w, "SMOOTHING": smooth, "ROWS": rows, "BLOCK_C": block}
        tgt = dt if probs else "i64"
        ptrs = {"x_ptr": dt, "tgt_ptr": tgt, "w_ptr": dt, "wsum_ptr": ACC[dt], "stats_ptr": ACC[dt]}
        warps = max(1, min(16, rows * block // 256))
        name = f"{dt} probs={probs} weight={has_w} smoothing={smooth} rows={rows} block={block}"
        fwd = _source(
            TCE.cross_entropy_fwd_online_lse_kernel, ptrs | {"loss_ptr": ACC[dt]}, ("eps_hi", "eps_lo"), consts
        )
        yield f"cross_entropy_fwd {name}", fwd, warps
        bwd_ptrs = ptrs | {"g_ptr": ACC[dt], "out_ptr": dt}
        bwd = _source(TCE.cross_entropy_bwd_softmax_minus_target_kernel, bwd_ptrs, ("eps_hi", "eps_lo"), consts)
        yield f"cross_entropy_bwd {name}", bwd, warps
    # Linear + cross-entropy chunk kernel: forward with gradients, forward only, backward only.
    for dt, (fwd, grad), (rows, block) in [
        ("fp32", (True, True), (1, TLCE.MAX_BLOCK_V)),
        ("fp32", (True, False), (8, 256)),
        ("bf16", (False, True), (1, TLCE.MAX_BLOCK_V)),
        ("fp64", (True, True), (16, 128)),
    ]:
        consts = {
            "FWD": fwd, "GRAD": grad, "HAS_WEIGHT": True, "SMOOTHING": True, "SOFTCAP": True, "ZLOSS": True,
            "ROWS": rows, "BLOCK_V": block,
        }  # fmt: skip
        a = ACC[dt]
        ptrs = {"z_ptr": dt, "tgt_ptr": "i64", "w_ptr": a, "wsum_ptr": a, "g_ptr": a, "loss_ptr": a, "stats_ptr": a}
        floats = ("eps_hi", "eps_lo", "cap_hi", "cap_lo", "zl_hi", "zl_lo")
        src = _source(TLCE.linear_cross_entropy_chunk_kernel, ptrs, floats, consts)
        yield (
            f"linear_cross_entropy_chunk {dt} fwd={fwd} grad={grad} rows={rows}",
            src,
            max(1, min(16, rows * block // 256)),
        )
    # Adam: one tensor a launch and the packed launch of small tensors, each dtype family.
    adam = [
        ("fp32", False, False),
        ("fp32", True, True),
        ("bf16", True, False),
        ("fp16", False, True),
        ("fp64", True, True),
    ]
    for dt, packed, amsgrad in adam:
        a = ACC[dt]
        ptrs = {k: dt for k in ("p_ptr", "g_ptr", "m_ptr", "v_ptr", "vm_ptr")}
        ptrs |= {"scal_ptr": a, "seg_ptr": "i32" if packed else a, "inv_scale_ptr": a, "found_ptr": "fp32"}
        consts = {
            "PACKED": packed, "AMSGRAD": amsgrad, "MAXIMIZE": amsgrad, "DECOUPLED": not amsgrad, "L2": amsgrad,
            "LERP_LOW": True, "BF16": dt == "bf16", "BLOCK": TA.BLOCK,
        }  # fmt: skip
        yield (
            f"adam_step {dt} packed={packed} amsgrad={amsgrad}",
            _source(TA.adam_step_elementwise_kernel, ptrs, (), consts),
            4,
        )
    # conv2d implicit GEMMs and the linear + ReLU GEMM: the largest and the smallest autotune tile.
    conv_cfgs = [c for c in TC._configs()]
    for dt, cfg in [("fp32", conv_cfgs[0]), ("bf16", conv_cfgs[0]), ("fp64", conv_cfgs[-1])]:
        tile = dict(cfg.kwargs)
        common = {"ACC_F64": dt == "fp64", "IEEE": dt == "fp32"} | tile
        fwd_c = common | {"HAS_BIAS": True, "RELU": True}
        ptrs = {"x_ptr": dt, "w_ptr": dt, "b_ptr": dt, "y_ptr": dt}
        yield f"conv2d_fwd {dt} {tile}", _source(TC.conv2d_fwd_implicit_gemm_kernel, ptrs, (), fwd_c), cfg.num_warps
        ptrs = {"dy_ptr": dt, "w_ptr": dt, "w_finite_ptr": "i32", "dx_ptr": dt}
        yield (
            f"conv2d_dgrad {dt} {tile}",
            _source(TC.conv2d_dgrad_implicit_gemm_kernel, ptrs, (), common),
            cfg.num_warps,
        )
        ptrs = {"dy_ptr": dt, "x_ptr": dt, "dw_ptr": dt, "db_ptr": dt}
        wg = common | {"BIAS_GRAD": True}
        yield f"conv2d_wgrad {dt} {tile}", _source(TC.conv2d_wgrad_implicit_gemm_kernel, ptrs, (), wg), cfg.num_warps
    lr_cfgs = [c for c in TLR._configs()]
    for dt, cfg, mask in [("fp32", lr_cfgs[0], True), ("bf16", lr_cfgs[-1], False), ("fp64", lr_cfgs[-1], True)]:
        consts = dict(cfg.kwargs) | {
            "HAS_MASK": mask, "HAS_BIAS": True, "RELU": not mask, "WRITE_DB": mask, "ACC_FP64": dt == "fp64",
            "DOT_PRECISION": "ieee" if dt in ("fp32", "fp64") else "tf32",
        }  # fmt: skip
        ptrs = {k: dt for k in ("y_ptr", "z_ptr", "p_ptr", "c_ptr", "bias_ptr")} | {"db_ptr": ACC[dt]}
        yield (
            f"linear_relu_gemm {dt} mask={mask}",
            _source(TLR.linear_relu_gemm_kernel, ptrs, (), consts),
            cfg.num_warps,
        )


def main() -> int:
    """Compile every case; print one line each; 1 if any failed."""
    failed = 0
    start = time.time()
    n = 0
    for name, src, warps in cases():
        n += 1
        t = time.time()
        try:
            triton.compile(src, target=TARGET, options={"num_warps": warps})
            print(f"ok    {name} ({time.time() - t:.1f} s)", flush=True)
        except Exception:  # noqa: BLE001 - report every kernel's failure, then fail
            failed += 1
            print(f"FAIL  {name}\n{traceback.format_exc()}", flush=True)
    print(f"triton_compile_check.py: {n - failed} of {n} compiled for sm_90 in {time.time() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
