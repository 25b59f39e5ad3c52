"""The device's ceilings, measured once per process in the same run as the rows they divide.

Bandwidth: ``dst.copy_(src)`` of a large buffer (256 MiB on CPU, 1 GiB on CUDA), counting read +
write bytes. FLOP/s: a large square matmul (fp32 on CPU; bf16 and fp32 on CUDA, TF32 off), 2*N^3
flops. Other dtypes are measured on first use. Both are recorded in the results file.

On CPU the matmul's N is 2048 unless one call of a smaller N already takes 50 ms: a CPU without
bf16 / fp16 matmul instructions (AMD Zen 3, Intel before AVX512-BF16 / AMX) runs a 2048 bf16 matmul
in about a minute (measured on a 2-core AMD EPYC: 59 s bf16, 65 s fp16, 0.001 TFLOP/s at every N
from 512 to 2048), which made the ceilings most of a --quick run. Where the rate is that slow it is
flat in N, so the smaller N measures the same ceiling.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .rows import dtype_name
from .timing import Timing, time_cpu, time_cuda


def _cpu_matmul_size(dtype: torch.dtype, largest: int = 2048, slow_s: float = 0.05) -> int:
    """The N of the CPU matmul ceiling: doubling from 256 up to ``largest``, stopping at the first N
    whose single ``torch.mm`` takes ``slow_s`` or more."""
    n = 256
    while n < largest:
        a = torch.randn(n, n, dtype=dtype)
        start = time.perf_counter()
        torch.mm(a, a)
        if time.perf_counter() - start >= slow_s:
            break
        n *= 2
    return n


class Ceilings:
    """The device's copy bandwidth and matmul FLOP/s, measured on first use and cached."""

    def __init__(self, device: str, quick: bool = False) -> None:
        self.device = device
        self.quick = quick
        self._bandwidth: float | None = None
        self._tflops: dict[torch.dtype, float] = {}
        self.notes: dict[str, str] = {}

    def _time(self, fn: Callable[[], object]) -> Timing:
        # A ceiling is the denominator of every % column: timed as long in --quick as in a full run.
        fn()
        if self.device == "cuda":
            return time_cuda(fn, rep_ms=200, cudagraph=False)
        return time_cpu(fn, min_run_time=0.5)

    def bandwidth_gbs(self) -> float:
        """GB/s of ``dst.copy_(src)``, read + write bytes counted."""
        if self._bandwidth is None:
            nbytes = (1 << 30) if self.device == "cuda" else (256 << 20)
            src = torch.randn(nbytes // 4, device=self.device)
            dst = torch.zeros_like(src)  # touched, so the timed copies take no page faults
            t = self._time(lambda: dst.copy_(src))
            self._bandwidth = 2 * nbytes / (t.median_ms * 1e-3) / 1e9
            self.notes["bandwidth"] = f"copy_ of {nbytes >> 20} MiB float32, read+write counted; {t.timer}"
            del src, dst
        return self._bandwidth

    def matmul_tflops(self, dtype: torch.dtype) -> float:
        """TFLOP/s of an n x n x n matmul in ``dtype`` (2 n^3 flops; TF32 off for float32)."""
        if dtype not in self._tflops:
            n = 8192 if self.device == "cuda" else _cpu_matmul_size(dtype)
            a = torch.randn(n, n, device=self.device, dtype=dtype)
            b = torch.randn(n, n, device=self.device, dtype=dtype)
            old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                t = self._time(lambda: torch.mm(a, b))
            finally:
                torch.backends.cuda.matmul.allow_tf32 = old
            self._tflops[dtype] = 2 * n**3 / (t.median_ms * 1e-3) / 1e12
            self.notes[f"matmul_{dtype_name(dtype)}"] = f"torch.mm {n}x{n}x{n}; {t.timer}"
        return self._tflops[dtype]

    def measure_defaults(self) -> None:
        """Measure what every run records: bandwidth, and fp32 (+ bf16 on CUDA) matmul."""
        self.bandwidth_gbs()
        for dt in (torch.bfloat16, torch.float32) if self.device == "cuda" else (torch.float32,):
            self.matmul_tflops(dt)

    def as_dict(self) -> dict[str, object]:
        """What the results file records."""
        return {
            "copy_bandwidth_GBps": self._bandwidth,
            "matmul_TFLOPs": {dtype_name(k): v for k, v in self._tflops.items()},
            "how": dict(self.notes),
        }
