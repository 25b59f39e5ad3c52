"""Fused linear + cross-entropy (the LM loss head): x (N, H), lm_head weight (V, H), no bias, int64
targets (N,), reduction="mean"; gradients to x and the weight.

Providers: torch eager (``F.cross_entropy(F.linear(x, w), t)``), ``torch.compile`` of the same,
fastops native (C++ on CPU, CUDA on GPU), fastops triton (CUDA only: the Triton interpreter on CPU is
a test path), and liger-kernel's ``LigerFusedLinearCrossEntropyLoss`` when importable (CUDA only).
fastops and liger compute the gradients inside the forward (one chunk sweep, 3 GEMMs in all), so
their ``fwd`` carries the backward's work and their ``bwd`` is a scalar multiply: compare ``fwd+bwd``.

Work (the TFLOP/s column): the useful GEMM flops, fwd 2 N H V, bwd 4 N H V, fwd+bwd 6 N H V (the
softmax's O(N V) is ignored). Peak memory: the bench's usual column (the most bytes allocated at once
during the pass beyond what was live before it, returned gradients included; CPU through
torch.profiler's allocator events, CUDA through max_memory_allocated); each row's note adds the part
beyond the returned gradients (grad_x N H + grad_weight V H elements), "extra", the number the issue's
target (<= 1/8 of eager's) is about.

Correctness: loss and both gradients against ``fastops.reference`` in float64, in row chunks (the
float64 (N, V) logits of the large cases would not fit).

Shapes: CPU float32 N=4096, H=1024, V=32000 and V=128256; CUDA bfloat16 N=8192, H=4096, V=128256;
``--quick``: small ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .common import EAGER, Context, ErrorMeter, Row, Work

OP = "linear_cross_entropy"
LEVEL = "op"

SHAPES = {  # (N, H, V)
    ("cpu", False): [(4096, 1024, 32000), (4096, 1024, 128256)],
    ("cpu", True): [(512, 128, 4096), (37, 19, 131)],
    ("cuda", False): [(8192, 4096, 128256)],
    ("cuda", True): [(1024, 512, 32000)],
}
DTYPES = {"cpu": [torch.float32], "cuda": [torch.bfloat16]}
REF_CHUNK_ELEMS = 1 << 24  # float64 reference logits per chunk: 128 MiB


def work(n: int, h: int, v: int) -> Work:
    """Useful GEMM flops per pass (see the module docstring)."""
    f = 2.0 * n * h * v
    return Work(flops={"fwd": f, "bwd": 2 * f, "fwd+bwd": 3 * f})


def make_check(
    x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor
) -> Callable[[torch.Tensor, list[torch.Tensor | None]], tuple[float, float]]:
    """check(loss, [grad_x, grad_weight, None]) -> (loss error, worst gradient error) vs float64."""
    import fastops.reference

    n, v = x.shape[0], weight.shape[0]
    rows = max(1, REF_CHUNK_ELEMS // v)

    ref: dict[str, torch.Tensor] = {}  # computed once, on the first provider's check

    def reference_values() -> dict[str, torch.Tensor]:
        if not ref:
            w64 = weight.detach().double().requires_grad_()
            total = torch.zeros((), dtype=torch.float64, device=x.device)
            gx64 = torch.empty(x.shape, dtype=torch.float64, device=x.device)
            gw64 = torch.zeros_like(w64)
            for i in range(0, n, rows):
                xc = x[i : i + rows].detach().double().requires_grad_()
                part = fastops.reference.linear_cross_entropy(xc, w64, target[i : i + rows], reduction="sum")
                dx, dw = torch.autograd.grad(part, (xc, w64))
                total += part.detach()
                gx64[i : i + rows] = dx / n
                gw64 += dw
            ref.update(loss=total / n, gx=gx64, gw=gw64 / n)
        return ref

    def check(loss: torch.Tensor, grads: list[torch.Tensor | None]) -> tuple[float, float]:
        gx, gw = grads[0], grads[1]
        if gx is None or gw is None:
            raise RuntimeError("no gradient reached x or the weight")
        r = reference_values()
        bwd = max(ErrorMeter().add(gx, r["gx"]).error, ErrorMeter().add(gw, r["gw"]).error)
        return ErrorMeter().add(loss, r["loss"]).error, bwd

    return check


def providers(ctx: Context, dtype: torch.dtype) -> dict[str, Callable[..., torch.Tensor]]:
    """name -> forward(x, weight, target) for the providers that can run here (others: ctx.skip)."""
    import fastops.functional as FF

    def eager(x: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(x, w), t)

    out: dict[str, Callable[..., torch.Tensor]] = {EAGER: eager}
    if (compiled := ctx.compiled(OP, eager, dtype)) is not None:
        out["torch_compile"] = compiled
    probe = lambda be: _probe(lambda x, w, t: FF.linear_cross_entropy(x, w, t, backend=be), ctx.device, dtype)  # noqa: E731
    for backend in ctx.fastops_backends(OP, dtype, probe):
        out[f"fastops_{backend}"] = lambda x, w, t, b=backend: FF.linear_cross_entropy(x, w, t, backend=b)
    liger, why = _liger()
    if liger is None or ctx.device != "cuda":
        ctx.skip(OP, "liger", why if liger is None else "liger-kernel runs on CUDA only", dtype=dtype)
    else:
        out["liger"] = liger
    return out


def _probe(fn: Callable[..., torch.Tensor], device: str, dtype: torch.dtype) -> str:
    """Empty if fn runs on a tiny input of this device and dtype, else the reason why not."""
    try:
        fn(
            torch.randn(2, 3, device=device, dtype=dtype),
            torch.randn(5, 3, device=device, dtype=dtype),
            torch.zeros(2, dtype=torch.long, device=device),
        )
    except (RuntimeError, ImportError, ModuleNotFoundError) as exc:
        return str(exc)
    return ""


def _liger() -> tuple[Callable[..., torch.Tensor] | None, str]:
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError as exc:
        return None, f"liger-kernel is not importable ({exc})"
    loss = LigerFusedLinearCrossEntropyLoss()
    return (lambda x, w, t: loss(w, x, t)), ""


def run(ctx: Context) -> list[Row]:
    """Every shape x dtype x provider x pass for this device."""
    rows: list[Row] = []
    for dtype in ctx.select_dtypes(DTYPES[ctx.device]):
        elem = torch.empty((), dtype=dtype).element_size()
        for n, h, v in SHAPES[(ctx.device, ctx.quick)]:
            shape = f"{n}x{h}x{v}"
            # eager: logits, log_softmax and their gradient; inputs, grads twice; a reference chunk
            need = 3 * n * v * elem + 4 * (n * h + v * h) * elem + 3 * REF_CHUNK_ELEMS * 8
            if not ctx.fits(need):
                ctx.skip(OP, "all", f"needs about {need / 2**30:.1f} GiB, more than is free", shape, dtype)
                continue
            x = torch.randn(n, h, device=ctx.device, dtype=dtype, requires_grad=True)
            weight = (torch.randn(v, h, device=ctx.device) * h**-0.5).to(dtype).requires_grad_()
            target = torch.randint(0, v, (n,), device=ctx.device)
            check = make_check(x, weight, target)
            grads_mib = (n * h + v * h) * elem / 2**20
            for name, fwd in providers(ctx, dtype).items():
                got = ctx.bench_autograd(
                    op=OP,
                    shape=shape,
                    dtype=dtype,
                    provider=name,
                    forward=fwd,
                    inputs=[x, weight, target],
                    check=check,
                    work=work(n, h, v),
                )
                for r in got:
                    if r.peak_mem_mib is not None and r.pass_ != "fwd":
                        extra = f"extra beyond the returned grads {r.peak_mem_mib - grads_mib:.1f} MiB"
                        r.note = f"{r.note}; {extra}" if r.note else extra
                rows += got
            del x, weight, target, check
            if ctx.device == "cuda":
                torch.cuda.empty_cache()
    return rows
