"""Small workload for compute-sanitizer (memcheck / racecheck / synccheck), run by gpu_suite.sh.

Every native CUDA kernel path once, on small shapes, float16 and bfloat16 conv2d included: the
tensor-core implicit GEMM with vector gathers (channels % 8 == 0), with per-element gathers (RGB
stem), with a base pointer that is not 16-byte aligned (a view at storage offset 1), and with
split-K; then cross_entropy, linear_relu (SIMT and WMMA), linear_cross_entropy and the Adam step once
each, and last every registered op once per call of its opcheck examples (fastops.ops.OPS: a new op
runs here with no edit). Results are
compared with fastops.reference run in float64 (TF32 is switched off as well, so nothing on the
reference side rounds to 10 mantissa bits). Exit status 0 when every result is within its dtype's
tolerance.

    python scripts/gpu_sanitize.py                  # the workload on CUDA
    python scripts/gpu_sanitize.py --quick          # one conv case per dtype and layout (racecheck)
    python scripts/gpu_sanitize.py --device cpu --dtype float32 --quick   # CPU smoke (gpu_suite --dry-run)
"""

from __future__ import annotations

import argparse

import torch

import fastops.functional as FF
import fastops.optim
from fastops import reference
from fastops.ops import STEMS, load, namespace

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
# Max abs error over max |reference|, against the float64 reference.
TOL = {torch.float16: 2e-2, torch.bfloat16: 8e-2, torch.float32: 1e-4, torch.float64: 1e-10}
CONV_CASES = [  # x shape, weight shape, stride, padding
    ((2, 64, 14, 14), (64, 64, 3, 3), 1, 1),  # vector gathers; split-K on a small tile grid
    ((1, 3, 19, 17), (16, 3, 7, 7), 2, 3),  # RGB stem: per-element gathers
    ((2, 32, 9, 9), (48, 32, 1, 1), 1, 0),  # 1x1
]


def _offset_view(t: torch.Tensor) -> torch.Tensor:
    """t's values in channels_last memory that starts one element past an allocation's start."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    n, c, h, w = t.shape
    v = buf[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    v.copy_(t)
    return v


def _rel_err(a: torch.Tensor, r: torch.Tensor) -> float:
    a, r = a.double(), r.double()
    return ((a - r).abs().max() / r.abs().max().clamp_min(1e-6)).item()


class Checker:
    def __init__(self) -> None:
        self.failures = 0
        self.checks = 0

    def close(self, what: str, got: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
        self.checks += 1
        err = _rel_err(got, ref)
        if not err <= tol:  # NaN fails too
            self.failures += 1
            print(f"FAIL {what}: rel err {err:.3g} > {tol}")


def _conv(chk: Checker, dev: str, dtype: torch.dtype, quick: bool) -> None:
    cases = CONV_CASES[:2] if quick else CONV_CASES
    for xs, ws, st, pad in cases:
        for layout in ("cl", "nchw", "offset"):
            x = torch.randn(xs, device=dev, dtype=dtype)
            w = torch.randn(ws, device=dev, dtype=dtype) * ws[1] ** -0.5
            b = torch.randn(ws[0], device=dev, dtype=dtype)
            if layout == "cl":
                x = x.contiguous(memory_format=torch.channels_last)
            elif layout == "offset":
                x = _offset_view(x)
            xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
            xf, wf, bf = (t.detach().clone().requires_grad_() for t in (x, w, b))
            ref = reference.conv2d(xr, wr, br, st, pad, activation="relu")
            got = FF.conv2d(xf, wf, bf, stride=st, padding=pad, activation="relu", backend="native")
            g = torch.randn_like(ref)
            ref.backward(g)
            got.backward(g.to(dtype))
            tol = TOL[dtype]
            for name, a, r in (
                ("y", got, ref),
                ("dx", xf.grad, xr.grad),
                ("dw", wf.grad, wr.grad),
                ("db", bf.grad, br.grad),
            ):
                chk.close(f"conv2d {dtype} {xs} {ws} {layout} {name}", a, r, tol)


def _others(chk: Checker, dev: str, dtypes: list[torch.dtype]) -> None:
    """cross_entropy, linear_relu, linear_cross_entropy and Adam once per dtype the native backend takes here."""
    for dtype in dtypes:
        if dev == "cpu" and dtype in (torch.float16, torch.bfloat16):
            continue  # the C++ kernels take fp32/fp64 (auto would route these to torch)
        tol = TOL[dtype]
        logits = torch.randn(64, 1000, device=dev, dtype=dtype)
        target = torch.randint(0, 1000, (64,), device=dev)
        lf, lr = logits.clone().requires_grad_(), logits.double().requires_grad_()
        got = FF.cross_entropy(lf, target, backend="native")
        ref = reference.cross_entropy(lr, target)
        got.backward()
        ref.backward()
        chk.close(f"cross_entropy {dtype} loss", got, ref, tol)
        chk.close(f"cross_entropy {dtype} dlogits", lf.grad, lr.grad, tol)

        # 33x70 @ 70x50: ragged edges on every tile (WMMA for fp16/bf16, SIMT otherwise).
        x = torch.randn(33, 70, device=dev, dtype=dtype)
        w = torch.randn(50, 70, device=dev, dtype=dtype) * 70**-0.5
        b = torch.randn(50, device=dev, dtype=dtype)
        xf, wf, bf = (t.clone().requires_grad_() for t in (x, w, b))
        xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
        got = FF.linear_relu(xf, wf, bf, backend="native")
        ref = reference.linear_relu(xr, wr, br)
        g = torch.randn_like(ref)
        got.backward(g.to(dtype))
        ref.backward(g)
        for name, a, r in (
            ("y", got, ref),
            ("dx", xf.grad, xr.grad),
            ("dw", wf.grad, wr.grad),
            ("db", bf.grad, br.grad),
        ):
            chk.close(f"linear_relu {dtype} {name}", a, r, tol)

        # Fused linear + cross-entropy: 37 rows in 16-row chunks (a ragged last chunk), 130 classes (a
        # ragged last block per row), ignored rows, softcap and z-loss on; loss and both gradients.
        x = torch.randn(37, 70, device=dev, dtype=dtype)
        w = torch.randn(130, 70, device=dev, dtype=dtype) * 70**-0.5
        target = torch.randint(0, 130, (37,), device=dev)
        target[::5] = -100
        xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
        xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
        opts = {"softcap": 20.0, "z_loss": 1e-3, "label_smoothing": 0.1}
        got = FF.linear_cross_entropy(xf, wf, target, chunk_rows=16, backend="native", **opts)
        ref = reference.linear_cross_entropy(xr, wr, target, **opts)
        got.backward()
        ref.backward()
        chk.close(f"linear_cross_entropy {dtype} loss", got, ref, tol)
        chk.close(f"linear_cross_entropy {dtype} dx", xf.grad, xr.grad, tol)
        chk.close(f"linear_cross_entropy {dtype} dw", wf.grad, wr.grad, tol)

        # Adam: two tensors of odd sizes, one step, against the float64 reference step.
        params = [torch.randn(1000, device=dev, dtype=dtype), torch.randn(7, 13, device=dev, dtype=dtype)]
        grads = [torch.randn_like(p) for p in params]
        ps = [p.clone().requires_grad_() for p in params]
        for p, gr in zip(ps, grads):
            p.grad = gr.clone()
        fastops.optim.Adam(ps, lr=1e-3, backend="native").step()
        with torch.no_grad():
            for i, (p, gr) in enumerate(zip(params, grads)):
                # Adam's first step moves each element by lr * sign(g) (bias-corrected m / sqrt(v)).
                ref = p.double() - 1e-3 * gr.double() / (gr.double().abs() + 1e-8)
                chk.close(f"adam {dtype} param{i}", ps[i], ref, max(tol, 1e-6))


def _every_registered_op(chk: Checker, dev: str) -> None:
    """Every registered native op once per call of its ``opcheck_examples`` (the op registry,
    ``fastops.ops.OPS``): the kernels of an op without a workload above still run under the
    sanitizers. Run for the memory accesses; the op tests check the values."""
    for stem in STEMS:
        for op, args, kwargs in load(stem).opcheck_examples(namespace("native", stem), dev, "native"):
            op(*args, **kwargs)
            chk.checks += 1


def main(argv: list[str] | None = None) -> int:
    """Run the workload; return 0 when every result matches the float64 reference."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="repeatable; default fp16, bf16, fp32")
    ap.add_argument("--quick", action="store_true", help="two conv cases instead of three (racecheck's run)")
    ap.add_argument("--check-args", action="store_true", help="parse the arguments, print them and exit 0")
    args = ap.parse_args(argv)
    dtypes = [DTYPES[d] for d in (args.dtype or ["float16", "bfloat16", "float32"])]
    if args.check_args:
        print(f"gpu_sanitize: device={args.device} dtypes={[str(d) for d in dtypes]} quick={args.quick}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_sanitize: no CUDA device visible")
        return 2
    # The reference runs in float64, so TF32 cannot touch it; off anyway so that no fp32 path of
    # torch that the workload goes through rounds to TF32 either.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    chk = Checker()
    for dtype in dtypes:
        if args.device == "cpu" and dtype in (torch.float16, torch.bfloat16):
            continue
        _conv(chk, args.device, dtype, args.quick)
    _others(chk, args.device, dtypes)
    _every_registered_op(chk, args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(f"gpu_sanitize: {chk.checks} checks,", "ok" if chk.failures == 0 else f"{chk.failures} failures")
    return 0 if chk.failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
