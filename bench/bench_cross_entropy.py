"""Softmax cross-entropy: logits (N, V), int64 class targets (N,), reduction="mean".

Providers: torch eager (``F.cross_entropy``), ``torch.compile`` of the same, fastops native
(C++ on CPU, CUDA on GPU), fastops native with ``inplace_backward=True`` (bwd and fwd+bwd: its forward is
native's; the gradient overwrites the logits, saving the N x V allocation), fastops
triton (CUDA only: the Triton interpreter on CPU is for tests, not a performance path), and
liger-kernel's cross-entropy when importable (CUDA only). Liger computes the gradient during the
forward and writes it over the logits, so its ``fwd`` includes the backward's work and its
``bwd`` is nearly free; compare its ``fwd+bwd``.

Traffic (the GB/s column), the ideal bytes with elem = bytes per logit and the O(N) terms
(targets, per-row loss and max/log-sum stats) ignored:

    fwd      reads the logits once                         N * V * elem
    bwd      reads the logits, writes the gradient         2 * N * V * elem
    fwd+bwd  both                                          3 * N * V * elem

The same count is in the kernel files' headers. Unfused torch moves more than this (it writes and
re-reads an N x V log_softmax), so its GB/s is "useful bytes per second", not bus traffic.

Correctness: loss and gradient against ``fastops.reference.cross_entropy`` in float64, computed in
row chunks so the (16384, 131072) case does not need a float64 copy of the whole tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .common import EAGER, Context, ErrorMeter, Row, Work

OP = "cross_entropy"
LEVEL = "op"

SHAPES = {
    ("cpu", False): [(512, 32000), (4096, 32000), (1823, 781)],
    ("cpu", True): [(256, 4096), (37, 1001)],
    ("cuda", False): [(4096, 32000), (16384, 131072)],
    ("cuda", True): [(1024, 32000), (37, 1001)],
}
# bfloat16 on CPU too: what torch.autocast("cpu", torch.bfloat16) hands the loss (the native kernels
# widen it to float32 in L1; torch eager's log_softmax / nll_loss run in bfloat16).
DTYPES = {"cpu": [torch.float32, torch.bfloat16], "cuda": [torch.bfloat16, torch.float32]}
REF_CHUNK_ELEMS = 1 << 25  # float64 reference rows per chunk: 256 MiB


def traffic(n: int, v: int, dtype: torch.dtype) -> Work:
    """Ideal bytes per pass (see the module docstring)."""
    nv = n * v * torch.empty((), dtype=dtype).element_size()
    return Work(bytes={"fwd": nv, "bwd": 2 * nv, "fwd+bwd": 3 * nv})


def make_check(
    logits: torch.Tensor, target: torch.Tensor
) -> Callable[[torch.Tensor, list[torch.Tensor | None]], tuple[float, float]]:
    """check(loss, [grad_logits, None]) -> (loss error, gradient error) vs the float64 reference."""
    import fastops.reference

    n, v = logits.shape
    rows = max(1, REF_CHUNK_ELEMS // v)

    def check(loss: torch.Tensor, grads: list[torch.Tensor | None]) -> tuple[float, float]:
        grad = grads[0]
        if grad is None:
            raise RuntimeError("no gradient reached the logits")
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        bwd = ErrorMeter()
        for i in range(0, n, rows):
            x = logits[i : i + rows].detach().double().requires_grad_()
            part = fastops.reference.cross_entropy(x, target[i : i + rows], reduction="sum")
            (g,) = torch.autograd.grad(part, x)
            total += part.detach()
            bwd.add(grad[i : i + rows], g / n)
        return ErrorMeter().add(loss, total / n).error, bwd.error

    return check


def providers(ctx: Context, dtype: torch.dtype) -> dict[str, tuple[Callable[..., torch.Tensor], tuple[str, ...]]]:
    """name -> (forward(logits, target), passes) for the providers that can run here; the others
    are recorded with ctx.skip."""
    import fastops.functional as FF

    out: dict[str, tuple[Callable[..., torch.Tensor], tuple[str, ...]]] = {
        EAGER: (F.cross_entropy, ("fwd", "bwd", "fwd+bwd")),
    }
    if (compiled := ctx.compiled(OP, F.cross_entropy, dtype)) is not None:
        out["torch_compile"] = (compiled, ("fwd", "bwd", "fwd+bwd"))

    probe = lambda be: _probe(lambda x, t: FF.cross_entropy(x, t, backend=be), ctx.device, dtype)  # noqa: E731
    for backend in ctx.fastops_backends(OP, dtype, probe):
        fwd = lambda x, t, b=backend: FF.cross_entropy(x, t, backend=b)  # noqa: E731
        out[f"fastops_{backend}"] = (fwd, ("fwd", "bwd", "fwd+bwd"))
        if backend == "native":
            inplace = lambda x, t: FF.cross_entropy(x, t, backend="native", inplace_backward=True)  # noqa: E731
            out["fastops_native_inplace"] = (inplace, ("bwd", "fwd+bwd"))

    liger, why = _liger()
    if liger is None or ctx.device != "cuda":
        ctx.skip(OP, "liger", why if liger is None else "liger-kernel runs on CUDA only", dtype=dtype)
    else:
        out["liger"] = (liger, ("fwd", "bwd", "fwd+bwd"))
    return out


def _probe(fn: Callable[..., torch.Tensor], device: str, dtype: torch.dtype) -> str:
    """Empty if fn runs on a tiny input of this device and dtype, else fastops' reason why not."""
    try:
        fn(torch.randn(2, 3, device=device, dtype=dtype), torch.zeros(2, dtype=torch.long, device=device))
    except RuntimeError as exc:
        return str(exc)
    return ""


def _liger() -> tuple[Callable[..., torch.Tensor] | None, str]:
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy

        return liger_cross_entropy, ""
    except ImportError:
        pass
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError as exc:
        return None, f"liger-kernel is not importable ({exc})"
    loss = LigerCrossEntropyLoss()
    return (lambda x, t: loss(x, t)), ""


def run(ctx: Context) -> list[Row]:
    """Every shape x dtype x provider x pass for this device."""
    rows: list[Row] = []
    for dtype in ctx.select_dtypes(DTYPES[ctx.device]):
        for n, v in SHAPES[(ctx.device, ctx.quick)]:
            shape = f"{n}x{v}"
            elem = torch.empty((), dtype=dtype).element_size()
            # logits + their clone + log_softmax + its grad + the gradient + a reference chunk
            need = 6 * n * v * elem + 4 * REF_CHUNK_ELEMS * 8
            if not ctx.fits(need):
                ctx.skip(OP, "all", f"needs about {need / 2**30:.1f} GiB, more than is free", shape, dtype)
                continue
            logits = torch.randn(n, v, device=ctx.device, dtype=dtype, requires_grad=True)
            target = torch.randint(0, v, (n,), device=ctx.device)
            check = make_check(logits, target)
            for name, (fwd, passes) in providers(ctx, dtype).items():
                rows += ctx.bench_autograd(
                    op=OP,
                    shape=shape,
                    dtype=dtype,
                    provider=name,
                    forward=fwd,
                    inputs=[logits, target],
                    check=check,
                    work=traffic(n, v, dtype),
                    passes=passes,
                )
            del logits, target, check
            if ctx.device == "cuda":
                torch.cuda.empty_cache()
    return rows
