"""Small CUDA workload for compute-sanitizer (memcheck / racecheck / synccheck), run by gpu_suite.sh.

Every native CUDA kernel path once, on small shapes, float16 and bfloat16 conv2d included: the
tensor-core implicit GEMM with vector gathers (channels % 8 == 0), with per-element gathers (RGB
stem), with a base pointer that is not 16-byte aligned (a view at storage offset 1), and with
split-K. Exit status 0 when the results also match torch's within the dtype's tolerance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fastops.functional as FF


def _offset_view(t: torch.Tensor) -> torch.Tensor:
    """t's values in channels_last memory that starts one element past an allocation's start."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    n, c, h, w = t.shape
    v = buf[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    v.copy_(t)
    return v


def main() -> int:
    """Run the workload; return 0 when every result matches torch."""
    torch.manual_seed(0)
    dev = "cuda"
    failures = 0
    cases = [
        ((2, 64, 14, 14), (64, 64, 3, 3), 1, 1),
        ((1, 3, 19, 17), (16, 3, 7, 7), 2, 3),
        ((2, 32, 9, 9), (48, 32, 1, 1), 1, 0),
    ]
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for xs, ws, st, pad in cases:
            for layout in ("cl", "nchw", "offset"):
                x = torch.randn(xs, device=dev, dtype=dtype)
                w = torch.randn(ws, device=dev, dtype=dtype) * ws[1] ** -0.5
                b = torch.randn(ws[0], device=dev, dtype=dtype)
                if layout == "cl":
                    x = x.contiguous(memory_format=torch.channels_last)
                elif layout == "offset":
                    x = _offset_view(x)
                xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
                xf, wf, bf = (t.detach().clone().requires_grad_() for t in (x, w, b))
                ref = F.relu(F.conv2d(xr.float(), wr.float(), br.float(), st, pad))
                got = FF.conv2d(xf, wf, bf, stride=st, padding=pad, activation="relu", backend="native")
                g = torch.randn_like(ref)
                ref.backward(g)
                got.backward(g.to(dtype))
                tol = {torch.float16: 2e-2, torch.bfloat16: 8e-2, torch.float32: 1e-4}[dtype]
                for name, a, r in (
                    ("y", got, ref),
                    ("dx", xf.grad, xr.grad),
                    ("dw", wf.grad, wr.grad),
                    ("db", bf.grad, br.grad),
                ):
                    err = ((a.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-6)).item()
                    if not err <= tol:
                        failures += 1
                        print(f"FAIL {dtype} {xs} {ws} {layout} {name}: rel err {err:.3g} > {tol}")
    # The other ops once each, so their kernels run under the sanitizer too.
    logits = torch.randn(64, 1000, device=dev, requires_grad=True)
    FF.cross_entropy(logits, torch.randint(0, 1000, (64,), device=dev), backend="native").backward()
    lin_x = torch.randn(33, 70, device=dev, dtype=torch.bfloat16, requires_grad=True)
    lin_w = torch.randn(50, 70, device=dev, dtype=torch.bfloat16, requires_grad=True)
    FF.linear_relu(lin_x, lin_w, backend="native").sum().backward()
    torch.cuda.synchronize()
    print("gpu_sanitize:", "ok" if failures == 0 else f"{failures} failures")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
