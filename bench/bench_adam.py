"""Adam step (torch.optim.Adam semantics, lr=1e-3, weight_decay=0, no amsgrad) over parameter lists.

Providers: torch eager (``torch.optim.Adam(foreach=False)``, the per-tensor for-loop), torch foreach
(``foreach=True``), torch fused (``fused=True``), fastops native (C++ on CPU, the multi-tensor CUDA
kernel on GPU) and fastops triton (CUDA only: the Triton interpreter on CPU is a test path).

Parameter lists:
    transformer-10M   a small transformer: 8192 x 512 embedding + 2 layers (qkv, proj, MLP 4x,
                      2 LayerNorms), ~10.5M float32 values in 26 tensors (the issue's CPU target)
    resnet50          ResNet-50's 161 parameter tensors (convs, BatchNorm weights and biases, fc),
                      25.6M values; many small tensors
    one-tensor        one large tensor: 10M values on CPU, 128M on CUDA

Traffic (the GB/s column), per parameter and step with elem = bytes per element: read p, g, m, v
and write p, m, v once: 7 * elem (28 bytes in float32); the kernel files' headers use the same
count. torch eager moves several times that (one pass per elementwise op), so its GB/s is "useful
bytes per second".

Correctness: each provider takes 3 steps from the same start on fresh copies; params are compared
with torch.optim.Adam(foreach=False) run in float64 on the same values (normalised max error).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .common import EAGER, Context, ErrorMeter, Row, Work

OP = "adam"
DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float32, torch.bfloat16)}
CHECK_STEPS = 3


def transformer_shapes(d: int = 512, layers: int = 2, vocab: int = 8192) -> list[tuple[int, ...]]:
    """Parameter shapes of a small pre-LN transformer (tied embedding)."""
    shapes: list[tuple[int, ...]] = [(vocab, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


def resnet50_shapes() -> list[tuple[int, ...]]:
    """The 161 parameter shapes of torchvision's resnet50 (bottleneck blocks 3, 4, 6, 3)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            cout = width * 4
            shapes += [(width, cin, 1, 1), (width,), (width,), (width, width, 3, 3), (width,), (width,)]
            shapes += [(cout, width, 1, 1), (cout,), (cout,)]
            if b == 0:
                shapes += [(cout, cin, 1, 1), (cout,), (cout,)]
            cin = cout
    return shapes + [(1000, 2048), (1000,)]


def cases(device: str, quick: bool) -> dict[str, list[tuple[int, ...]]]:
    """name -> parameter shapes."""
    if quick:
        return {"transformer-small": transformer_shapes(128, 1, 1024), "one-tensor": [(1 << 20,)]}
    big = (128 << 20,) if device == "cuda" else (10 << 20,)
    return {"transformer-10M": transformer_shapes(), "resnet50": resnet50_shapes(), "one-tensor": [big]}


def providers(ctx: Context, dtype: torch.dtype) -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    """name -> optimizer factory, for the providers that can run here (others recorded as skipped)."""
    import fastops

    out: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
        EAGER: lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False),
        "torch_foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "torch_fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
    }
    for backend in ctx.fastops_backends(OP, dtype):
        out[f"fastops_{backend}"] = lambda ps, b=backend: fastops.optim.Adam(ps, lr=1e-3, backend=b)
    return out


def _params(shapes: list[tuple[int, ...]], device: str, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ps = []
    for s in shapes:
        p = torch.randn(s, generator=g).to(device=device, dtype=dtype).requires_grad_()
        p.grad = torch.randn(s, generator=g).to(device=device, dtype=dtype)
        ps.append(p)
    return ps


def _check(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], shapes, device, dtype) -> float:
    ps = _params(shapes, device, dtype, seed=0)
    ref = [p.detach().double().requires_grad_() for p in ps]
    for p, r in zip(ps, ref):
        r.grad = p.grad.double()
    opt, ref_opt = make(ps), torch.optim.Adam(ref, lr=1e-3, foreach=False)
    for _ in range(CHECK_STEPS):
        opt.step()
        ref_opt.step()
    meter = ErrorMeter()
    # Compare the change made by the steps (the params themselves are O(1), the change O(lr)).
    start = _params(shapes, device, torch.float64, seed=0)
    for p, r, s in zip(ps, ref, start):
        meter.add(p.detach().double() - s.detach().to(device), r.detach() - s.detach())
    return meter.error


def run(ctx: Context) -> list[Row]:
    """Every parameter list x dtype x provider for this device."""
    rows: list[Row] = []
    for dtype in ctx.select_dtypes(DTYPES[ctx.device]):
        elem = torch.finfo(dtype).bits // 8
        makers = {
            name: make
            for name, make in providers(ctx, dtype).items()
            if not (name == "torch_fused" and dtype != torch.float32 and ctx.device == "cpu")
        }
        for name, shapes in cases(ctx.device, ctx.quick).items():
            numel = sum(torch.Size(s).numel() for s in shapes)
            shape = f"{name} ({len(shapes)} tensors, {numel / 1e6:.1f}M)"
            # every provider's params, grads and 2 states at once; the check's own 4 (and eager's or
            # foreach's ~2 step temporaries) in the bench dtype, and its float64 reference's 5
            need = numel * elem * (4 * len(makers) + 6) + numel * 8 * 5
            if not ctx.fits(need):
                ctx.skip(OP, "all", f"needs about {need / 2**30:.1f} GiB, more than is free", shape, dtype)
                continue
            work = Work(bytes={"step": 7 * elem * numel})
            # Every provider's parameters and state live at once: their steps are timed together
            # (alternating blocks on CPU), so a drifting machine slows each alike.
            timed: dict[str, tuple[Callable[[], object], Callable[[], float]]] = {}
            for provider, make in makers.items():
                opt = make(_params(shapes, ctx.device, dtype, seed=1))
                opt.step()  # state allocated outside the timing
                check = lambda make=make, shapes=shapes, dtype=dtype: _check(make, shapes, ctx.device, dtype)  # noqa: E731
                timed[provider] = (opt.step, check)
            rows += ctx.bench_fns_together(op=OP, shape=shape, dtype=dtype, providers=timed, work=work, pass_="step")
            del timed, opt, check
            if ctx.device == "cuda":
                torch.cuda.empty_cache()
    return rows
