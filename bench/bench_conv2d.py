"""Conv2d: x (N, C, H, W), weight (K, C, R, S), bias (K,); y (N, K, P, Q).

Shapes. GPU: the ResNet-50 (torchvision v1.5: stride on the 3x3) conv layers at batch 32 in
bfloat16 and channels_last; padding convention: 7x7 stem pad 3 stride 2, every 3x3 pad 1 (stride 1,
or 2 for the first block of a stage), 1x1 pad 0 (stride 2 on the downsampling projections). CPU:
a small CIFAR-style ResNet's convs at batch 8 in float32 and bfloat16, contiguous NCHW, plus two
56x56 layers (and 28x28 at 128 channels), then depthwise / grouped layers (MobileNet 3x3 and 5x5,
ConvNeXt 7x7, a stride-2 3x3, 8 groups) and a dense 5x5; the shape label ends in ``g<groups>``.

Providers: torch eager (cuDNN / oneDNN), ``torch.compile`` of the same, fastops native (C++ on
CPU: BLAS for float32, oneDNN's brgemm micro-kernel for bfloat16; on GPU the CUDA tensor-core
kernel for bfloat16, SIMT for float32), fastops triton (CUDA only: the interpreter is a test path). A second op,
``conv2d_bias_relu``, compares ``FF.conv2d(..., activation="relu")`` (ReLU in the epilogue) with
torch's conv followed by a separate ReLU. The providers of one shape are timed together
(:meth:`bench.context.Context.bench_autograd_together`): on CPU their fwd+bwd in alternating blocks,
so that a machine whose speed drifts (this project's shared VMs) slows each alike.

Work (the TFLOP/s column): 2 N K P Q C/g R S flops per pass, so fwd = 1x, bwd = 2x (dgrad + wgrad;
the bias gradient is ignored), fwd+bwd = 3x; the same count is in the kernel files' headers.

Correctness: output and (input, weight, bias) gradients against ``fastops.reference.conv2d`` in
float64 (normalised max error), once per provider before timing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .common import EAGER, Context, ErrorMeter, Row, Work

OP = "conv2d"
LEVEL = "op"

# (C, H(=W), K, R(=S), stride, padding[, groups]); groups defaults to 1
RESNET50 = [
    (3, 224, 64, 7, 2, 3),
    (64, 56, 64, 1, 1, 0), (64, 56, 64, 3, 1, 1), (64, 56, 256, 1, 1, 0), (256, 56, 64, 1, 1, 0),
    (256, 56, 128, 1, 1, 0), (128, 56, 128, 3, 2, 1), (128, 28, 512, 1, 1, 0), (512, 28, 128, 1, 1, 0),
    (128, 28, 128, 3, 1, 1), (256, 56, 512, 1, 2, 0),
    (512, 28, 256, 1, 1, 0), (256, 28, 256, 3, 2, 1), (256, 14, 1024, 1, 1, 0), (1024, 14, 256, 1, 1, 0),
    (256, 14, 256, 3, 1, 1), (512, 28, 1024, 1, 2, 0),
    (1024, 14, 512, 1, 1, 0), (512, 14, 512, 3, 2, 1), (512, 7, 2048, 1, 1, 0), (2048, 7, 512, 1, 1, 0),
    (512, 7, 512, 3, 1, 1), (1024, 14, 2048, 1, 2, 0),
]  # fmt: skip
SMALL_CNN = [
    (3, 32, 16, 3, 1, 1), (16, 32, 16, 3, 1, 1), (16, 32, 32, 3, 2, 1), (32, 16, 32, 3, 1, 1),
    (32, 16, 64, 3, 2, 1), (64, 8, 64, 3, 1, 1), (64, 56, 64, 3, 1, 1), (64, 56, 64, 1, 1, 0),
    (128, 28, 128, 3, 1, 1), (64, 56, 128, 1, 2, 0),
]  # fmt: skip
# Grouped / depthwise (C, H, K, R, stride, padding, groups): MobileNet-style 3x3 and 5x5, ConvNeXt's
# 7x7 (pad 3), a stride-2 3x3, and one dense 5x5 (groups 1) beside them.
GROUPED_CPU = [
    (64, 16, 64, 3, 1, 1, 64), (96, 14, 96, 5, 1, 2, 96), (96, 14, 96, 7, 1, 3, 96), (64, 32, 64, 3, 2, 1, 64),
    (64, 16, 64, 3, 1, 1, 8), (16, 28, 16, 5, 1, 2, 1),
]  # fmt: skip
SHAPES = {
    ("cpu", False): (8, SMALL_CNN + GROUPED_CPU),
    ("cpu", True): (8, SMALL_CNN[:3] + GROUPED_CPU[:1]),
    ("cuda", False): (32, RESNET50),
    ("cuda", True): (32, RESNET50[1:4]),
}
DTYPES = {"cpu": [torch.float32, torch.bfloat16], "cuda": [torch.bfloat16]}


def _out(h: int, r: int, stride: int, pad: int) -> int:
    return (h + 2 * pad - r) // stride + 1


def flops(n: int, c: int, h: int, k: int, r: int, stride: int, pad: int, groups: int = 1) -> Work:
    """2 N K P Q (C / groups) R S per GEMM pass (see the module docstring)."""
    p = _out(h, r, stride, pad)
    one = 2.0 * n * k * p * p * (c // groups) * r * r
    return Work(flops={"fwd": one, "bwd": 2 * one, "fwd+bwd": 3 * one})


def make_check(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, pad: int, relu: bool, groups: int = 1
) -> Callable[[torch.Tensor, list[torch.Tensor | None]], tuple[float, float]]:
    """check(y, [gx, gw, gb]) -> (output error, worst gradient error) vs the float64 reference."""
    import fastops.reference

    def check(y: torch.Tensor, grads: list[torch.Tensor | None]) -> tuple[float, float]:
        leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
        act = "relu" if relu else None
        ref = fastops.reference.conv2d(*leaves, stride=stride, padding=pad, groups=groups, activation=act)
        g = torch.Generator(device=y.device).manual_seed(0)  # bench_autograd's grad_out
        gy = torch.randn(y.shape, generator=g, device=y.device, dtype=y.dtype).double()
        ref_grads = torch.autograd.grad(ref, leaves, gy)
        bwd = 0.0
        for got, exp in zip(grads, ref_grads):
            if got is None:
                raise RuntimeError("a gradient did not reach its input")
            bwd = max(bwd, ErrorMeter().add(got, exp).error)
        return ErrorMeter().add(y, ref).error, bwd

    return check


def providers(
    ctx: Context, dtype: torch.dtype, stride: int, pad: int, relu: bool, groups: int = 1
) -> dict[str, Callable[..., torch.Tensor]]:
    """name -> forward(x, w, b) for the providers that can run here; the others go to ctx.skip."""
    import fastops
    import fastops.functional as FF

    op = "conv2d_bias_relu" if relu else OP
    if relu:
        eager = lambda x, w, b: F.relu(F.conv2d(x, w, b, stride, pad, 1, groups))  # noqa: E731
    else:
        eager = lambda x, w, b: F.conv2d(x, w, b, stride, pad, 1, groups)  # noqa: E731
    out: dict[str, Callable[..., torch.Tensor]] = {EAGER: eager}
    if (compiled := ctx.compiled(op, eager, dtype)) is not None:
        out["torch_compile"] = compiled
    act = "relu" if relu else None
    probe = lambda be: fastops._backend.why_not(OP, be, ctx.device, dtype) or ""  # noqa: E731
    for backend in ctx.fastops_backends(op, dtype, probe):
        out[f"fastops_{backend}"] = lambda x, w, b, be=backend: FF.conv2d(
            x, w, b, stride, pad, 1, groups, activation=act, backend=be
        )
    return out


def run(ctx: Context) -> list[Row]:
    """Every shape x dtype x provider x pass for this device, then the fused-ReLU comparison."""
    rows: list[Row] = []
    batch, shapes = SHAPES[(ctx.device, ctx.quick)]
    layout = torch.channels_last if ctx.device == "cuda" else torch.contiguous_format
    for dtype in ctx.select_dtypes(DTYPES[ctx.device]):
        for relu in (False, True):
            op = "conv2d_bias_relu" if relu else OP
            for c, h, k, r, stride, pad, *g in shapes if not relu else shapes[: max(1, len(shapes) // 3)]:
                groups = g[0] if g else 1
                shape = f"N{batch} C{c} H{h} K{k} R{r} s{stride} p{pad}" + (f" g{groups}" if groups > 1 else "")
                elem = torch.empty((), dtype=dtype).element_size()
                p = _out(h, r, stride, pad)
                need = (6 * batch * c * h * h + 6 * batch * k * p * p) * max(elem, 8)
                if not ctx.fits(need):
                    ctx.skip(op, "all", f"needs about {need / 2**30:.1f} GiB, more than is free", shape, dtype)
                    continue
                x = torch.randn(batch, c, h, h, device=ctx.device, dtype=dtype).to(memory_format=layout)
                w = (torch.randn(k, c // groups, r, r, device=ctx.device) / (c // groups * r * r) ** 0.5).to(dtype)
                w = w.to(memory_format=layout)
                b = torch.randn(k, device=ctx.device, dtype=dtype)
                inputs = [t.requires_grad_() for t in (x, w, b)]
                check = make_check(x, w, b, stride, pad, relu, groups)
                rows += ctx.bench_autograd_together(
                    op=op,
                    shape=shape,
                    dtype=dtype,
                    providers=providers(ctx, dtype, stride, pad, relu, groups),
                    inputs=inputs,
                    check=check,
                    work=flops(batch, c, h, k, r, stride, pad, groups),
                )
                del x, w, b, inputs, check
                if ctx.device == "cuda":
                    torch.cuda.empty_cache()
    return rows
