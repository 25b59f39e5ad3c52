"""Fused linear+ReLU: x (M, K), weight (N, K), bias (N,) -> relu(x @ weight.T + bias) (M, N).

Providers: torch eager (``F.linear`` then ``F.relu``: nn.Linear + nn.ReLU), ``torch.compile`` of
the same, fastops native (C++ on CPU: ATen's mm + our epilogue / masked backward; our CUDA GEMM
on GPU), fastops triton (CUDA only: the Triton interpreter on CPU is a test path). The cuBLASLt
epilogue path the issue allows as a second CUDA path is not implemented; it is recorded as a skip.

Work (the TFLOP/s column; % of ceiling is against the large matmul measured in the same run):

    fwd      2 * M * N * K      (A B^T; the bias/ReLU epilogue's M*N is not counted)
    bwd      4 * M * N * K      (dX = D B and dW = D^T A)
    fwd+bwd  6 * M * N * K

Shapes: transformer-MLP sizes on CUDA (M = 4096-16384 tokens, K/N = 1024-8192), smaller on CPU
including M=2048, K=N=1024 and issue 15's MLP shapes 4096x768x3072 and 1000^3, in float32 and
bfloat16 (on CPU both sides' products are oneDNN's bfloat16 GEMM; ours adds the bias inside it and
fuses the masking with db). The providers of one shape are timed together
(:meth:`bench.context.Context.bench_autograd_together`): on CPU their fwd+bwd in alternating blocks,
as conv2d's: timed in turn, one provider's fwd+bwd once read 0.85x and 1.15x in two runs minutes apart.
Correctness: output and the three gradients against ``fastops.reference.linear_relu`` in float64,
with the harness's upstream gradient (a fixed seed-0 normal tensor of the output's shape).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .common import EAGER, Context, ErrorMeter, Row, Work

OP = "linear_relu"
LEVEL = "op"

SHAPES = {  # (M, K, N)
    ("cpu", False): [(2048, 1024, 1024), (1024, 1024, 4096), (1823, 781, 517), (4096, 768, 3072), (1000, 1000, 1000)],
    ("cpu", True): [(256, 256, 256), (37, 45, 29)],
    ("cuda", False): [(4096, 1024, 4096), (8192, 4096, 4096), (16384, 4096, 16384), (8192, 8192, 8192)],
    ("cuda", True): [(1024, 1024, 1024), (37, 45, 29)],
}
DTYPES = {"cpu": [torch.float32, torch.bfloat16], "cuda": [torch.bfloat16, torch.float32]}


def flops(m: int, k: int, n: int) -> Work:
    """Matrix-product FLOPs per pass (see the module docstring)."""
    f = 2.0 * m * n * k
    return Work(flops={"fwd": f, "bwd": 2 * f, "fwd+bwd": 3 * f})


def eager(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """nn.Linear then nn.ReLU."""
    return F.relu(F.linear(x, weight, bias))


def make_check(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> Callable[[torch.Tensor, list[torch.Tensor | None]], tuple[float, float]]:
    """check(out, [gx, gw, gb]) -> (output error, worst gradient error) vs the float64 reference."""
    import fastops.reference

    def check(out: torch.Tensor, grads: list[torch.Tensor | None]) -> tuple[float, float]:
        if any(g is None for g in grads):
            raise RuntimeError("a gradient did not reach x, weight or bias")
        leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
        ref = fastops.reference.linear_relu(*leaves)
        gen = torch.Generator(device=out.device).manual_seed(0)  # the harness's upstream gradient
        g = torch.randn(out.shape, generator=gen, device=out.device, dtype=out.dtype)
        rgrads = torch.autograd.grad(ref, leaves, g.double())
        bwd = max(ErrorMeter().add(got, exp).error for got, exp in zip(grads, rgrads))
        return ErrorMeter().add(out, ref.detach()).error, bwd

    return check


def providers(ctx: Context, dtype: torch.dtype) -> dict[str, Callable[..., torch.Tensor]]:
    """name -> forward(x, weight, bias) for the providers that can run here; the others are
    recorded with ctx.skip."""
    import fastops.functional as FF

    out: dict[str, Callable[..., torch.Tensor]] = {EAGER: eager}
    if (compiled := ctx.compiled(OP, eager, dtype)) is not None:
        out["torch_compile"] = compiled
    probe = lambda be: _probe(lambda x, w, b: FF.linear_relu(x, w, b, backend=be), ctx.device, dtype)  # noqa: E731
    for backend in ctx.fastops_backends(OP, dtype, probe):
        out[f"fastops_{backend}"] = lambda x, w, b, be=backend: FF.linear_relu(x, w, b, backend=be)
    if ctx.device == "cuda":
        ctx.skip(OP, "fastops_native_cublaslt", "the cuBLASLt epilogue path is not implemented", dtype=dtype)
    return out


def _probe(fn: Callable[..., torch.Tensor], device: str, dtype: torch.dtype) -> str:
    """Empty if fn runs on a tiny input of this device and dtype, else fastops' reason why not."""
    try:
        fn(*(torch.randn(s, device=device, dtype=dtype) for s in ((2, 3), (4, 3), (4,))))
    except RuntimeError as exc:
        return str(exc)
    return ""


def run(ctx: Context) -> list[Row]:
    """Every shape x dtype x provider x pass for this device."""
    rows: list[Row] = []
    for dtype in ctx.select_dtypes(DTYPES[ctx.device]):
        for m, k, n in SHAPES[(ctx.device, ctx.quick)]:
            shape = f"{m}x{k}x{n}"
            elem = torch.empty((), dtype=dtype).element_size()
            # inputs, clones, output, mask/grad copies, gradients, plus the float64 reference's copies
            need = (4 * (m * k + n * k) + 4 * m * n) * elem + 3 * (m * k + n * k + 2 * m * n) * 8
            if not ctx.fits(need):
                ctx.skip(OP, "all", f"needs about {need / 2**30:.1f} GiB, more than is free", shape, dtype)
                continue
            x = torch.randn(m, k, device=ctx.device, dtype=dtype, requires_grad=True)
            weight = (torch.randn(n, k, device=ctx.device, dtype=dtype) / k**0.5).requires_grad_()
            bias = torch.randn(n, device=ctx.device, dtype=dtype, requires_grad=True)
            check = make_check(x, weight, bias)
            rows += ctx.bench_autograd_together(
                op=OP,
                shape=shape,
                dtype=dtype,
                providers=providers(ctx, dtype),
                inputs=[x, weight, bias],
                check=check,
                work=flops(m, k, n),
            )
            del x, weight, bias, check
            if ctx.device == "cuda":
                torch.cuda.empty_cache()
    return rows
