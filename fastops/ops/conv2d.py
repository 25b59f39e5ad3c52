"""Conv2d: fake kernels of the native ops, argument normalisation and checks, the ops' autograd.

The registered ops take the canonical form only: 4-D input, pairs of ints, symmetric padding.
:func:`normalize_args` turns every form ``torch.nn.functional.conv2d`` accepts into it: int or
tuple arguments, ``padding="valid"`` / ``"same"`` (an odd total padding is made symmetric by
padding the input's bottom / right by one more, as torch does), unbatched ``(C, H, W)`` input.
:func:`register` is the one place that knows both passes, for each backend's namespace: both ops
are differentiable (see :mod:`fastops.ops._autograd`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial

import torch
import torch.nn.functional as F

from fastops import _backend, reference
from fastops.ops import _autograd, namespace
from fastops.ops._contract import INT64_MAX, check_same_device, dtype_str, once_per_signature, shape_str

OP = "conv2d"
FWD = "conv2d_fwd"  # the registered op the API calls: its checks' messages start with this name
ACTIVATIONS = (None, "relu")

_backend.register_op(
    OP,
    native_schema="conv2d_fwd",
    native={"cpu": _backend.ALL_FLOAT_DTYPES, "cuda": _backend.ALL_FLOAT_DTYPES},
    triton={"cuda": _backend.ALL_FLOAT_DTYPES, "cpu": _backend.FLOAT32_FLOAT64},
)

# ---- backend="auto" on CPU: which shape classes go to torch's own conv2d ------------------------------
#
# Measured fwd+bwd, fastops native vs F.conv2d (oneDNN) in one process, 2-core AMD EPYC (AVX-512),
# 2 threads, batch 4-8, session 2026-12-01 (the bench's conv2d rows are the same comparison):
#   float32  depthwise 3x3 / 5x5 / 7x7 (stride 1 or 2): 1.40-4.07x; C/g <= 4 first layers, 3x3 s1
#            1.42-1.49x, 4x4 s4 patchify 1.30x; everything else loses: dense 3x3 (C 8-128)
#            0.52-0.94x, 3x3 s2 0.70-0.85x, 5x5 0.44x, 2x2 s2 0.67x, 8 groups of 8 0.62x,
#            1x1 0.92-1.27x (mixed).
#   bfloat16 native wins or ties everywhere except dense stride-1 3x3 / 5x5 with C/g >= 16:
#            0.92-0.95x at small spatial sizes (1.04-1.07x at 56x56 / 28x28, given up for one rule).
#   float16  native 3.7-19.6x everywhere (torch has no fast CPU half conv).
#   float64  native 1.08-7.3x except dense 1x1 (0.90x).
# Rechecked on a 2-core Intel Xeon (AVX-512, AMX) in the full bench of session 2026-12-06, after the
# float32 direct passes: float32 dense 3x3 0.64-0.85x (1.29x at C32 16x16, single-run noise of
# 10-15%), 5x5 0.69x, 8 groups of 8 0.73x, depthwise 1.18-6.79x, 1x1 1.30-1.80x; bfloat16 dense
# stride-1 3x3 at 28-56 px 0.48-0.59x (torch runs AMX there), 5x5 0.67x. The same classes lose.
# Not routed yet, machine-dependent: bfloat16 8 groups of 8 (0.77x here, 2.29x on the AMD run) and
# bfloat16 first layers with the fused ReLU (0.79x here, 0.95x on AMD; 1.22-1.64x without it).
# So auto sends a class to torch's conv2d where native was measured slower; an explicit
# backend="native" (and FASTOPS_BACKEND=native) always runs the kernel.
# First layers (groups 1, C <= 4: RGB or grey images) whose input needs no gradient (a network's
# first conv, fed the data) lost without dgrad while the Autograd kernel was Python (2-core Intel Xeon,
# session 2026-12-06: N64 C1 8x8 K16 0.86x, N8 C3 32x32 K16 0.75x) and ran torch's conv2d. Remeasured
# after the C++ Autograd kernel (same machine, session 2026-12-06 #6, fwd + wgrad + bias grad, two
# alternating runs): N64 C1 8x8 K16 1.51/1.64x, N8 C3 32x32 K16 1.12/1.17x, K32 1.07x, N16 C1 28x28
# K32 5x5 1.03x, 4x4 s4 patchify K96 1.07/1.10x, N8 C3 64x64 K64 1.09-2.84x. So they run native
# whether or not the input needs a gradient.
# float32 3x3 stride-1 convs (groups 1, dilation 1, padding <= 2, C and K >= 16) run Winograd
# F(2x2, 3x3) in the native kernel since session 2026-12-06 (csrc/cpu/conv2d_winograd.cpp). Measured
# fwd+bwd against F.conv2d, 2-core Intel Xeon (AVX-512), batch 8, two alternating runs:
#   32-256 channels (C = K) at 28x28 and 56x56: 1.02-1.44x (C32 28 1.02/1.32, C32 56 1.10/1.19,
#   C64 28 1.32/1.37, C64 56 1.27/1.27, C128 28 1.07-1.33, C256 28 1.17/1.44);
#   at 8x8-16x16 it still loses: C32 14 0.82/0.99, C64 14 0.64/0.84, C128 14 0.77/0.83, C64 8 0.79-0.89,
#   C256 14 0.98/1.22, C512 7 0.62-0.65; C16 at 32x32 0.67-0.77.
# So auto runs native for that class with 32 <= C, K <= 256 when the output has at least 28 x 28
# pixels, torch's conv2d otherwise (cpu_auto_winograd_class plus a call-time rule on the output size,
# in functional.conv2d).
# float32 3x3 stride-1 convs with 8-16 channels in and out run the native kernel's register-blocked
# direct passes on outputs of at least 16 x 16 pixels since session 2026-12-06 #7 (csrc/cpu/conv2d.cpp,
# kRegisterMaxChannels). fwd+bwd against F.conv2d, 2-core Intel Xeon (AVX-512), batch 8, interleaved,
# one run each: C16 K16 at 16x16 1.27-1.50x, 32x32 1.05-1.48x (the bench row: 1.10x), 56x56
# 0.83-1.79x (noisy); C8 K16 32x32 1.19-1.50x; C12 K24 20x20 1.36-1.43x; below 16 x 16 they keep
# Winograd / the per-tap kernel (C16 8x8 1.7x either way, against 0.80x before the C++ Autograd
# kernel); 5x5 C16 at 28x28 still loses (0.84-0.96x). So auto runs native for that class on outputs
# of at least 16 x 16 pixels (cpu_auto_register_class, the same call-time rule).
# Rechecked on a 2-core AMD EPYC (Zen 3, AVX2 only: the kernels' 8-wide build), session 2026-12-06
# #8, fwd+bwd native vs F.conv2d, batch 8, interleaved: the register class C16 K16 at 16x16 1.46x,
# 32x32 1.22x, 56x56 1.25x, C8 K16 32x32 1.26x, C12 K24 20x20 1.51x (C16 at 14x14, below the rule:
# 1.16x); the Winograd class C32 28x28 1.22x, C64 28 1.29x, C64 56 1.59x, C128 28 1.47x; below its
# size rule C32 16x16 1.10x, C64 8x8 1.09x, C64 14x14 0.90x; 5x5 C16 28x28 0.84x. oneDNN's float32
# micro-kernel, which the direct passes need, runs there too. So the register class holds wherever
# ATen runs AVX2 or AVX-512 kernels with oneDNN enabled (_direct_passes_run).
# float32 1x1 convs, remeasured in session 2026-12-06 (fwd+bwd, x and w requiring grad, batch 8,
# 2-core Intel Xeon, AVX-512, three alternating runs, median ratio native / F.conv2d) after the C++
# Autograd kernel (csrc/conv2d_autograd.cpp) took ~60 us of Python off every native call: stride 1
# C64->256 56x56 3.08x, C256->64 56 2.78x, C128->512 28 1.24x, C512->128 28 1.44x, C256->1024 14
# 1.13x, C1024->256 14 1.17x, C64->64 56 1.92x, C96->576 14 1.31x, C576->96 7 1.39x, C32->64 16 2.13x,
# C128->128 8 1.61x; but C512->2048 7x7 0.87x and C2048->512 7x7 0.92x; stride 2 (ResNet downsampling)
# C64->128 16->8 2.29x, C128->256 1.99x, C256->512 1.67x, C1024->2048 14->7 1.41x. So auto runs them
# native, except stride-1 1x1 convs with C/groups x K >= 2^20 (ONE_BY_ONE_MAX_CHANNEL_PRODUCT).
# AVX2-only CPUs (ATen's capability "AVX2": x86 without AVX-512; measured on a 2-core AMD EPYC, Zen 3,
# session 2026-12-07 #11, fwd+bwd native vs F.conv2d, x and w requiring grad, interleaved, two runs
# where given). There oneDNN runs its AVX2 kernels, and three classes the rules above send to torch
# are faster native:
#   float32 stride = kernel size ("patch" convs, e.g. ConvNeXt's 2x2 s2 downsampling): batch 8
#   C96->192 16 px 1.43/1.36x, C192->384 8 px 1.69/1.70x, C384->768 4 px 1.48x, C64->128 32 px 1.44x,
#   C32->64 56 px 1.20x, C128->256 28 px 1.25x, C16->32 4x4 s4 1.69x; batch 2 / 32 C96 16 px 1.45 /
#   1.30x. The rule takes any padding, dilation and groups; those measured in session 2026-12-07
#   #12: N8 C96->192 32x32 2x2 s2 padding 1 1.18x, dilation 2 1.08x, groups 2 1.65x, groups 96
#   4.90x; C64->128 64x64 groups 4 2.28x; C32->64 64x64 4x4 s4 padding 2 1.06x.
#   float32 3x3 stride 2 (groups 1, padding 1) on small outputs, by output rows N*P*Q: 32 rows (N8
#   C256->512 2x2 out) 1.27/1.64x; 128 rows 1.29/1.43x (C128->256), 1.20x (C512), 1.28x, 1.51x (N2
#   C64 / C32), 1.57x (N32 C256->512); 392 rows (N8 C256->512 7x7) 1.12/1.28x; 512 rows 1.08/1.15x
#   (C64->128), 1.21x (C32->64), 1.12x (C128); 800 rows (C64->128 10x10) 1.20x. Past that level: 1568
#   rows 1.00x, 2048 rows 0.92-1.04x, 6272 rows 1.01x; at 8 rows mixed (N2 C256->512 2x2 out 0.42x).
#   (N64 / N128 C256->512 2x2 out, 256 / 512 rows: 1.60 / 1.62x; N64 C128->256 4x4 out, 1024 rows: 1.17x.)
#   float32 3x3 stride 1 (groups 1, padding 1) with C and K >= 256 on outputs of at most 4 pixels
#   (measured at 2 x 2 and 1 x 1)
#   (ResNet's last stage at 64 x 64 input, where oneDNN's backward is slow): N8 C512 2x2 2.06/2.19x,
#   C256 2x2 1.16/1.24x, C512 1x1 1.39x; N32 C512 2x2 1.82x, C256 1.36x, C512 1x1 4.14x; N64 / N128
#   (256 / 512 rows) C512 2x2 1.64 / 1.61x, C256 1.37 / 1.52x, C512 1x1 (64 / 128 rows) 3.94 / 4.24x. But at 8
#   rows N2 C256 2x2 0.44x, and with fewer channels or larger outputs level or slower (C64 / C128 2x2
#   0.88 / 1.26x, C128 1x1 0.80x, C256 / C512 3x3 out 0.90 / 1.12x, 4x4 out 0.95-1.05x).
#   Still slower there, so still torch's: the 7x7 s2 RGB stem without input grad (0.71-0.77x), 5x5
#   (0.57-0.94x), dense 3x3 stride 1 on 4-16 px outputs (0.83-1.12x), 8 groups of 8 (0.83-1.18x),
#   stride-1 1x1 at C/groups x K >= 2^20 (0.75-0.80x).
#   bfloat16 (no AVX512-BF16: the native kernel widens to its float32 passes, and torch's oneDNN conv
#   has no fast bfloat16 path): dense stride-1 3x3 at batch 8, C16 32 px 11.0x, C32 16 px 12.7x, C64
#   8 / 28 / 56 px 11.1 / 10.3 / 12.7x, C128 14 px 12.8x, C256 4 px 24.6x, 5x5 C16 28 px 6.7x; batch 2
#   C64 8 px 6.3x, C512 2 px 3.7x.
#   float64 dense 1x1: C64 28 px 1.26x, C256 14 px 1.02x.
# So on AVX2-only CPUs auto also runs native for float32 patch convs, every bfloat16 conv and float64
# 1x1 convs (cpu_auto_uses_torch), and for the two small-output float32 3x3 classes within their
# measured row ranges (cpu_auto_small_output_rule, checked per call in functional.conv2d). Not
# measured on an Intel CPU without AVX-512.


def cpu_auto_uses_torch(
    dtype: torch.dtype, weight_shape: tuple[int, ...] | torch.Size, stride: list[int] | tuple[int, int]
) -> str:
    """The measured-slower class (e.g. ``"float64 dense 1x1 convs"``) for which ``backend="auto"``
    runs torch's own ``F.conv2d`` on CPU, or ``""`` when it runs the native kernel.
    ``weight_shape`` is ``(K, C / groups, R, S)``; the rule depends on the dtype, C / groups, the
    kernel size and the stride (and, for float32 patch convs, bfloat16 and float64 1x1 convs, on
    whether the CPU is AVX2-only) only, not on N, H, W, so a swap report can state it per layer.
    The measurements behind it are in the comment above."""
    if len(weight_shape) != 4:
        return ""
    cg, r, s = int(weight_shape[1]), int(weight_shape[2]), int(weight_shape[3])
    if dtype == torch.float32:
        if cg == 1:
            return ""
        if cg <= 4 and (list(stride) == [1, 1] or list(stride) == [r, s]):
            return ""
        if r == s == 1:
            if list(stride) != [1, 1] or cg * int(weight_shape[0]) < ONE_BY_ONE_MAX_CHANNEL_PRODUCT:
                return ""
            return "float32 stride-1 1x1 convs with C/groups x K >= 2^20"
        if _CPU_AVX2_ONLY and list(stride) == [r, s]:
            return ""  # patch convs (stride = kernel size), measured faster native on AVX2-only CPUs
        return "float32 dense convs larger than 1x1 with C/groups > 4 or a stride"
    if dtype == torch.bfloat16:
        if _CPU_AVX2_ONLY:
            return ""  # torch's bfloat16 conv has no fast path there (measured 3.7-25x slower)
        if cg >= 16 and list(stride) == [1, 1] and r * s >= 9:
            return "bfloat16 dense stride-1 convs >= 3x3 with C/groups >= 16"
        return ""
    if dtype == torch.float64 and cg >= 16 and r == s == 1 and not _CPU_AVX2_ONLY:
        return "float64 dense 1x1 convs"
    return ""


# float32 1x1 convs run native below this C/groups x K at stride 1, at every size strided (see above).
ONE_BY_ONE_MAX_CHANNEL_PRODUCT = 1 << 20

# The class auto runs on the native Winograd kernel (see the comment above): output pixels, channels.
WINOGRAD_MIN_PIXELS = 28 * 28
WINOGRAD_CHANNELS = (32, 256)
# The class auto runs on the native register-blocked direct passes: output pixels, channels.
REGISTER_MIN_PIXELS = 16 * 16
REGISTER_CHANNELS = (8, 16)


def _plain_3x3_class(
    dtype: torch.dtype,
    weight_shape: tuple[int, ...] | torch.Size,
    stride: list[int] | tuple[int, int],
    padding: list[int] | tuple[int, int],
    dilation: list[int] | tuple[int, int],
    groups: int,
    channels: tuple[int, int],
) -> bool:
    """Whether a conv2d is float32, groups 1, 3x3, stride 1, dilation 1, padding <= 2, with C and K
    (``weight_shape`` ``(K, C, 3, 3)``) both in ``channels`` (inclusive): the size-ruled classes."""
    if dtype != torch.float32 or groups != 1 or len(weight_shape) != 4:
        return False
    k, c, r, s = (int(v) for v in weight_shape)
    lo, hi = channels
    return (
        (r, s) == (3, 3)
        and list(stride) == [1, 1]
        and list(dilation) == [1, 1]
        and all(0 <= p <= 2 for p in padding)
        and lo <= c <= hi
        and lo <= k <= hi
    )


def cpu_auto_winograd_class(
    dtype: torch.dtype,
    weight_shape: tuple[int, ...] | torch.Size,
    stride: list[int] | tuple[int, int],
    padding: list[int] | tuple[int, int],
    dilation: list[int] | tuple[int, int],
    groups: int,
) -> bool:
    """Whether a CPU conv2d is in the class whose native kernel runs Winograd and wins at large
    outputs (``weight_shape`` ``(K, C / groups, R, S)``): ``backend="auto"`` runs the native kernel
    for such a call with at least ``WINOGRAD_MIN_PIXELS`` output pixels although
    :func:`cpu_auto_uses_torch` names its class (measurements in the comment above)."""
    return _plain_3x3_class(dtype, weight_shape, stride, padding, dilation, groups, WINOGRAD_CHANNELS)


def cpu_auto_register_class(
    dtype: torch.dtype,
    weight_shape: tuple[int, ...] | torch.Size,
    stride: list[int] | tuple[int, int],
    padding: list[int] | tuple[int, int],
    dilation: list[int] | tuple[int, int],
    groups: int,
) -> bool:
    """Whether a CPU conv2d is in the class whose native kernel runs the register-blocked direct
    passes and wins at outputs of at least ``REGISTER_MIN_PIXELS`` pixels (float32 3x3 stride 1, 8-16
    channels in and out, ``weight_shape`` ``(K, C / groups, R, S)``): ``backend="auto"`` runs the
    native kernel for such a call although :func:`cpu_auto_uses_torch` names its class. Only where
    those passes run and were measured: an x86 CPU with AVX2 or AVX-512 and oneDNN enabled (the
    native kernel takes its direct passes only where oneDNN's float32 micro-kernel runs,
    csrc/cpu/conv2d.cpp)."""
    return _direct_passes_run() and _plain_3x3_class(
        dtype, weight_shape, stride, padding, dilation, groups, REGISTER_CHANNELS
    )


# ATen's CPU kernel level, fixed for the process (read here: torch.compile cannot trace the query):
# "AVX2" or "AVX512" on x86 CPUs with those instructions, "DEFAULT" (or an ARM / POWER level) else.
_CPU_CAPABILITY = torch.backends.cpu.get_cpu_capability()
_CPU_X86_SIMD = _CPU_CAPABILITY.startswith(("AVX2", "AVX512"))
# An x86 CPU with AVX2 and no AVX-512, where the AVX2-only rules above were measured.
_CPU_AVX2_ONLY = _CPU_CAPABILITY == "AVX2"

# AVX2-only CPUs, float32 3x3 groups-1 convs with padding 1: (stride, least C and K, most output pixels
# per sample, least and most output rows N * P * Q) within which auto runs native (comment above).
SMALL_OUTPUT_CLASSES = (((2, 2), 32, 800, 32, 800), ((1, 1), 256, 4, 32, 512))


def cpu_auto_small_output_rule(
    dtype: torch.dtype,
    weight_shape: tuple[int, ...] | torch.Size,
    stride: list[int] | tuple[int, int],
    padding: list[int] | tuple[int, int],
    dilation: list[int] | tuple[int, int],
    groups: int,
) -> tuple[int, int, int] | None:
    """``(most output pixels per sample, least rows, most rows)`` (rows: ``N * P * Q``) within which
    ``backend="auto"`` runs a CPU conv2d of a class :func:`cpu_auto_uses_torch` names on the native
    kernel because it wins on small outputs, or None. Only on AVX2-only CPUs with oneDNN enabled (where
    it was measured): float32 3x3 stride-2 convs with C, K >= 32 and stride-1 ones with C, K >= 256,
    groups 1, padding 1, dilation 1 (``weight_shape`` ``(K, C, 3, 3)``; the comment above)."""
    if not (_CPU_AVX2_ONLY and _direct_passes_run()) or dtype != torch.float32 or groups != 1:
        return None
    if len(weight_shape) != 4 or tuple(int(v) for v in weight_shape[2:]) != (3, 3):
        return None
    if list(padding) != [1, 1] or list(dilation) != [1, 1]:
        return None
    channels = min(int(weight_shape[0]), int(weight_shape[1]))
    for st, least_channels, most_pixels, least_rows, most_rows in SMALL_OUTPUT_CLASSES:
        if list(stride) == list(st) and channels >= least_channels:
            return most_pixels, least_rows, most_rows
    return None


def _direct_passes_run() -> bool:
    """Whether ATen runs its AVX2 or AVX-512 kernels here with oneDNN enabled
    (torch.backends.mkldnn): where oneDNN's float32 micro-kernel, and so the native kernel's direct
    passes, run (checked on Intel AVX-512 and AMD AVX2 CPUs). torch.export traces with oneDNN
    disabled (so its graph holds no oneDNN op); the exported program runs later under the caller's
    setting, enabled by default, so an export decides as if it were enabled, as eager does: it used to
    hold torch's conv2d for the classes that run native in eager."""
    return _CPU_X86_SIMD and (torch.backends.mkldnn.enabled or torch.compiler.is_exporting())


def cpu_auto_native_min_pixels(
    dtype: torch.dtype,
    weight_shape: tuple[int, ...] | torch.Size,
    stride: list[int] | tuple[int, int],
    padding: list[int] | tuple[int, int],
    dilation: list[int] | tuple[int, int],
    groups: int,
) -> int:
    """The output size (pixels) from which ``backend="auto"`` runs a CPU conv2d of a class
    :func:`cpu_auto_uses_torch` names on the native kernel (Winograd or the register-blocked
    passes), or 0 when no size does."""
    if cpu_auto_winograd_class(dtype, weight_shape, stride, padding, dilation, groups):
        return WINOGRAD_MIN_PIXELS
    if cpu_auto_register_class(dtype, weight_shape, stride, padding, dilation, groups):
        return REGISTER_MIN_PIXELS
    return 0


# ---- the registered ops' argument contract (csrc/fastops.h check_conv2d_args, same order, same text) -


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one spatial dim: ``(size + 2 padding - dilation (kernel - 1) - 1) // stride + 1``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _overflow_text(op: str, padding: list[int], dilation: list[int]) -> str:
    return (
        f"{op}: padding {list(padding)} or dilation {list(dilation)} is too large: the padded input or the "
        "dilated kernel exceeds 2^63 - 1 elements per side"
    )


def _numel_text(op: str, padding: list[int], stride: list[int], sizes: list[int]) -> str:
    return (
        f"{op}: padding {list(padding)} or stride {list(stride)} gives an output of shape "
        f"({', '.join(map(str, sizes))}), more than 2^63 - 1 elements"
    )


def check_int64(op: str, stride: list[int], padding: list[int], dilation: list[int]) -> None:
    """ValueError naming the argument unless stride, padding and dilation are pairs of int64 values in
    range (stride, dilation >= 1, padding >= 0). The part of the contract an API call checks itself on
    every backend: the dispatcher refuses a value beyond int64 without saying which argument is wrong."""
    for name, pair, low in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(pair) != 2:
            raise ValueError(f"{op}: {name} must have 2 elements, got {list(pair)}")
        for v in pair:
            if isinstance(v, int) and not low <= v <= INT64_MAX:
                raise ValueError(f"{op}: {name} must be between {low} and 2**63 - 1, got {list(pair)}")


def check_geometry_range(
    op: str,
    x_shape: list[int] | torch.Size,
    w_shape: list[int] | torch.Size,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> None:
    """The integer-argument part of the contract, which also holds before a fake kernel computes a
    shape: ValueError naming the argument when stride / dilation < 1, padding < 0 or a value beyond
    int64, or when a padded input (``H + 2 padding``), a dilated kernel (``dilation (R - 1) + 1``) or
    the output's element count does not fit in int64, the C++ kernels' index type.

    Python ints never overflow, so the sums are formed exactly here, before any int64 code sees them
    (in C++ ``2 * padding`` with padding = 2**62 wraps to a negative number). Plain ints only: a
    symbolic size under torch.compile is left to the runtime call.
    """
    check_int64(op, stride, padding, dilation)
    if len(x_shape) != 4 or len(w_shape) != 4:
        return  # the shape checks say so
    for i in range(2):
        h, r = x_shape[2 + i], w_shape[2 + i]
        if not all(isinstance(v, int) for v in (h, r, padding[i], dilation[i])):
            continue
        if h + 2 * padding[i] > INT64_MAX or dilation[i] * (r - 1) + 1 > INT64_MAX:
            raise ValueError(_overflow_text(op, padding, dilation))
    sizes = [x_shape[0], w_shape[0]] + [
        out_size(x_shape[2 + i], w_shape[2 + i], stride[i], padding[i], dilation[i]) for i in range(2)
    ]
    if all(isinstance(v, int) for v in sizes) and min(sizes) > 0 and math.prod(sizes) > INT64_MAX:
        raise ValueError(_numel_text(op, padding, stride, sizes))


def check_op_args(
    op: str,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> tuple[int, int]:
    """csrc/fastops.h check_conv2d_args: ValueError for shapes/values/devices, TypeError for dtypes;
    returns the output size (P, Q)."""
    if x.dim() != 4:
        raise ValueError(f"{op}: input must have shape (N, C, H, W), got {shape_str(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"{op}: weight must have shape (K, C/groups, R, S), got {shape_str(weight.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: input must be a floating tensor, got {dtype_str(x.dtype)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: weight must have input's dtype {dtype_str(x.dtype)}, got {dtype_str(weight.dtype)}")
    if weight.device != x.device:
        raise ValueError(f"{op}: weight is on {weight.device} but input is on {x.device}")
    if len(stride) != 2 or len(padding) != 2 or len(dilation) != 2:
        raise ValueError(f"{op}: stride, padding and dilation must have 2 elements each")
    if min(stride) < 1:
        raise ValueError(f"{op}: stride must be positive, got {list(stride)}")
    if min(dilation) < 1:
        raise ValueError(f"{op}: dilation must be positive, got {list(dilation)}")
    if min(padding) < 0:
        raise ValueError(f"{op}: padding must be non-negative, got {list(padding)}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be positive, got {groups}")
    c, k = x.shape[1], weight.shape[0]
    if c % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels C={c}")
    if k % groups:
        raise ValueError(f"{op}: groups={groups} must divide the output channels K={k} (weight.size(0))")
    if weight.shape[1] != c // groups:
        raise ValueError(
            f"{op}: weight must have shape ({k}, {c // groups}, R, S) for {c} input channels and "
            f"groups={groups}, got {shape_str(weight.shape)}"
        )
    if min(k, weight.shape[2], weight.shape[3]) <= 0:
        raise ValueError(f"{op}: weight must be non-empty, got {shape_str(weight.shape)}")
    span = [dilation[i] * (weight.shape[2 + i] - 1) + 1 for i in range(2)]
    padded = [x.shape[2 + i] + 2 * padding[i] for i in range(2)]
    if max(span + padded) > INT64_MAX:
        raise ValueError(_overflow_text(op, padding, dilation))
    if padded[0] < span[0] or padded[1] < span[1]:
        raise ValueError(
            f"{op}: output size would be <= 0: padded input {padded[0]}x{padded[1]} is smaller than the "
            f"dilated kernel {span[0]}x{span[1]}"
        )
    p, q = (out_size(x.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i]) for i in range(2))
    if x.shape[0] * k * p * q > INT64_MAX:
        raise ValueError(_numel_text(op, padding, stride, [x.shape[0], k, p, q]))
    return p, q


def check_op_bias(op: str, x: torch.Tensor, k: int, bias: torch.Tensor | None) -> None:
    """csrc/fastops.h check_conv2d_bias: bias (K,) in x's dtype and device, or None."""
    if bias is None:
        return
    if bias.dim() != 1 or bias.shape[0] != k:
        raise ValueError(f"{op}: bias must have shape ({k},) (one per output channel), got {shape_str(bias.shape)}")
    if bias.dtype != x.dtype:
        raise TypeError(f"{op}: bias must have input's dtype {dtype_str(x.dtype)}, got {dtype_str(bias.dtype)}")
    if bias.device != x.device:
        raise ValueError(f"{op}: bias is on {bias.device} but input is on {x.device}")


def check_op_grad_out(op: str, x: torch.Tensor, expected: list[int], grad_out: torch.Tensor) -> None:
    """csrc/fastops.h check_conv2d_grad_out: grad_out (N, K, P, Q) in x's dtype and device."""
    if list(grad_out.shape) != expected:
        raise ValueError(f"{op}: grad_out must have shape {shape_str(expected)}, got {shape_str(grad_out.shape)}")
    if grad_out.dtype != x.dtype:
        raise TypeError(f"{op}: grad_out must have input's dtype {dtype_str(x.dtype)}, got {dtype_str(grad_out.dtype)}")
    if grad_out.device != x.device:
        raise ValueError(f"{op}: grad_out is on {grad_out.device} but input is on {x.device}")


# ---- output shapes: the fake kernels ------------------------------------------------------------


def is_channels_last(t: torch.Tensor) -> bool:
    """torch's suggest_memory_format: channels_last strides that are not also plain contiguous."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def memory_format(
    x: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int], dilation: list[int], groups: int
) -> torch.memory_format:
    """The layout of every conv2d op's y, grad_x and grad_weight: the one F.conv2d gives, asked of
    torch (the backend it would pick for x (N, C, H, W) and weight (K, C / groups, R, S), and that
    backend's format, as torch's own fake conv does). Mostly channels_last when x or weight is, but
    cuDNN keeps float64 contiguous and CUDA's depthwise kernel is contiguous. The C++ ops ask the
    same (``conv_memory_format`` in csrc/fastops.h); C = 0, which torch's conv refuses, keeps the
    plain rule."""
    if x.shape[1] == 0:
        return torch.channels_last if is_channels_last(x) or is_channels_last(weight) else torch.contiguous_format
    with torch.no_grad():  # the choice depends on grad mode only in mobile builds; pinned all the same
        backend = torch._C._select_conv_backend(x, weight, None, stride, padding, dilation, False, [0, 0], groups)
    return torch._C._conv_determine_backend_memory_format(x, weight, backend)


# Dynamo cannot trace _select_conv_backend (it returns no tensor): under torch.compile the choice is
# made once at trace time (torch.compiler.assume_constant_result's mark, set without importing
# dynamo). Tensor inputs' dtype, device and strides are guarded anyway; with dynamic shapes a size
# that would switch torch's backend keeps the traced layout (strides only, never values).
memory_format._dynamo_marked_constant = True  # type: ignore[attr-defined]


def in_memory_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """t in ``fmt`` with the strides torch gives a new tensor of that format: ``t.contiguous(fmt)``
    keeps t when it already counts as contiguous in fmt, whatever the strides of its size-1 dims
    (a (2, 8, 1, 1) tensor computed channels_last has strides (8, 1, 8, 8), torch's are (8, 1, 1, 1)).
    Those get a fresh tensor, not an ``as_strided`` view: an op's output must not be a view (autograd
    forbids modifying a view made inside a custom Function in place, which ``y.relu_()`` would do)."""
    t = t.contiguous(memory_format=fmt)
    if t.dim() != 4 or t.numel() == 0:
        return t
    _, c, h, w = t.shape
    canon = (h * w * c, 1, w * c, c) if fmt == torch.channels_last else (c * h * w, h * w, w, 1)
    if t.stride() == canon:
        return t
    return torch.empty_strided(t.shape, canon, dtype=t.dtype, device=t.device).copy_(t)


def sees_only_padding(
    x: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int], dilation: list[int]
) -> bool:
    """Whether along H or along W every output position's taps all land in the zero padding (the
    output is the bias alone). torch 2.14's oneDNN CPU convolution segfaults on such calls (float32
    and bfloat16, channels_last, with bias), e.g. ``x`` (2, 16, 13, 2), ``weight`` (34, 8, 5, 1),
    stride 3, padding 1, dilation (1, 3), groups 2. Random scans of torch's conv fwd + bwd on small
    geometries crashed within a few hundred of these each, and ran ~15000 of the others without
    one; with the padding made explicit (zeros in the input, padding 0) ~11000 of these ran too. So
    fastops never hands torch's CPU conv such a call: auto runs the native kernel, and the routes
    that must call torch's conv pad explicitly (:func:`explicit_padding`)."""
    for size, k, s, p, d in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation):
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        reads = False
        for j in range(k):  # tap j of output o reads o s - p + j d
            before = p - j * d
            o = 0 if before <= 0 else -(-before // s)  # the first o whose read is at or past index 0
            reads = reads or (o < out and o * s - p + j * d < size)
        if not reads:
            return True
    return False


def explicit_padding(x: torch.Tensor, padding: list[int]) -> torch.Tensor:
    """``x`` (N, C, H, W) with its zero padding written in, in x's memory format: the same conv runs
    on it with padding 0 (:func:`sees_only_padding`)."""
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    return F.pad(x, [padding[1], padding[1], padding[0], padding[0]]).contiguous(memory_format=fmt)


def fwd_fake(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    relu: bool,
) -> torch.Tensor:
    """y (N, K, P, Q) in x's dtype, in :func:`memory_format`."""
    check_same_device("conv2d_fwd", x=x, weight=weight, bias=bias)
    check_geometry_range("conv2d_fwd", x.shape, weight.shape, stride, padding, dilation)
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    p = out_size(h, r, stride[0], padding[0], dilation[0])
    q = out_size(w, s, stride[1], padding[1], dilation[1])
    fmt = memory_format(x, weight, stride, padding, dilation, groups)
    return x.new_empty((n, k, p, q)).contiguous(memory_format=fmt)


def bwd_fake(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x of x's shape, grad_weight of weight's shape, both in :func:`memory_format`, grad_bias
    (K,)); a masked-off output is an empty ``(0,)`` tensor."""
    check_same_device("conv2d_bwd", grad_out=grad_out, x=x, weight=weight)
    check_geometry_range("conv2d_bwd", x.shape, weight.shape, stride, padding, dilation)
    fmt = memory_format(x, weight, stride, padding, dilation, groups)
    empty = x.new_empty((0,))
    return (
        x.new_empty(x.shape).contiguous(memory_format=fmt) if output_mask[0] else empty,
        x.new_empty(weight.shape).contiguous(memory_format=fmt) if output_mask[1] else x.new_empty((0,)),
        x.new_empty((weight.shape[0],)) if output_mask[2] else x.new_empty((0,)),
    )


if _backend.NATIVE_LOADED:
    torch.library.register_fake("fastops::conv2d_fwd")(fwd_fake)
    torch.library.register_fake("fastops::conv2d_bwd")(bwd_fake)


# ---- the public API's call (fastops.functional.conv2d) -----------------------------------------


def _pair(value: object, name: str, minimum: int) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = [value, value]
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        pair = [int(v) for v in value]
    elif isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        pair = [int(value[0])] * 2
    else:
        raise ValueError(f"conv2d: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"conv2d: {name} must be >= {minimum}, got {value!r}")
    return pair


def normalize_args(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int] | str,
    dilation: int | tuple[int, int],
    groups: int,
    activation: str | None,
) -> tuple[torch.Tensor, list[int], list[int], list[int], bool]:
    """Validate a conv2d call and bring it to the registered ops' canonical form.

    Returns ``(x, stride, padding, dilation, unbatched)``: ``x`` is 4-D ``(N, C, H', W')`` with any
    asymmetric 'same' padding already applied, the others are pairs. Raises ValueError / TypeError
    naming the argument and the expected vs given shape, dtype or device.
    """
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"conv2d: input and weight must be tensors, got {type(input)} and {type(weight)}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"conv2d: bias must be a tensor or None, got {type(bias).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"conv2d: activation must be None or 'relu', got {activation!r}")
    if input.dim() not in (3, 4):
        raise ValueError(
            f"conv2d: input must have shape (N, C, H, W) or unbatched (C, H, W), got {shape_str(input.shape)}"
        )
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    st = _pair(stride, "stride", 1)
    dil = _pair(dilation, "dilation", 1)
    if isinstance(padding, str):
        if padding == "valid":
            pad = [0, 0]
        elif padding == "same":
            if st != [1, 1]:
                raise ValueError("conv2d: padding='same' is not supported for strided convolutions")
            if weight.dim() != 4:  # the op's contract says so; the kernel size is needed first
                check_op_args(FWD, x, weight, st, [0, 0], dil, groups)
            totals = [dil[i] * (weight.shape[2 + i] - 1) for i in range(2)]
            pad = [t // 2 for t in totals]
            extra = [t - 2 * p for t, p in zip(totals, pad)]  # 0 or 1: goes to the bottom / right
            if any(extra):
                x = F.pad(x, [0, extra[1], 0, extra[0]])
        else:
            raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    else:
        pad = _pair(padding, "padding", 0)
    # Values beyond int64 never reach an op; the rest of the contract is the op's (check_call).
    check_int64(OP, st, pad, dil)
    return x, st, pad, dil, unbatched


@once_per_signature
def check_call(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> None:
    """The contract of a ``conv2d_fwd`` call, for the API calls no registered op checks (the torch
    composition): the text the op would raise. A tensor on ``meta`` beside others makes the
    dispatcher run the op's fake kernel (:func:`fwd_fake`), whose device check speaks first; any
    other bad input meets the C++ checks (:func:`check_op_args`, :func:`check_op_bias`). Once per
    call signature (:func:`fastops.ops._contract.checked_once`)."""
    if any(t is not None and t.device.type == "meta" for t in (x, weight, bias)):
        check_same_device(FWD, x=x, weight=weight, bias=bias)
    check_geometry_range(FWD, x.shape, weight.shape, stride, padding, dilation)
    check_op_args(FWD, x, weight, stride, padding, dilation, groups)
    check_op_bias(FWD, x, weight.shape[0], bias)


ops = partial(namespace, stem=OP)  # ops(backend): the torch.ops namespace of backend's conv2d ops


def _fwd_composition(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    relu: bool,
) -> torch.Tensor:
    """conv2d_fwd as torch ops (the reference), in the op's memory format."""
    y = reference.conv2d(x, weight, bias, stride, padding, dilation, groups, "relu" if relu else None)
    return in_memory_format(y, memory_format(x, weight, stride, padding, dilation, groups))


def _bwd_composition(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """conv2d_bwd as torch ops: aten's convolution_backward, itself differentiable (double backward
    of a convolution); a masked-off output is an empty (0,) tensor, as the op returns. A CPU call
    whose output sees only padding runs on the explicitly padded input (:func:`sees_only_padding`)."""
    k = weight.shape[0]
    padded = x.device.type == "cpu" and sees_only_padding(x, weight, stride, padding, dilation)
    xp, pad = (explicit_padding(x, padding), [0, 0]) if padded else (x, padding)
    outs = list(
        torch.ops.aten.convolution_backward(
            grad_out, xp, weight, [k] if output_mask[2] else None, stride, pad, dilation, False, [0, 0], groups,
            list(output_mask),
        )
    )  # fmt: skip
    if padded:  # grad_input cropped to x; both in the layout torch gives for x itself
        fmt = memory_format(x, weight, stride, padding, dilation, groups)
        if outs[0] is not None:
            h, w = x.shape[2:]
            outs[0] = in_memory_format(outs[0][:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w], fmt)
        if outs[1] is not None:
            outs[1] = in_memory_format(outs[1], fmt)
    return tuple(o if o is not None else x.new_empty((0,)) for o in outs)


def register(namespace) -> None:  # noqa: ANN001 - a torch.ops namespace
    """Autograd (double backward included), vmap and autocast of ``namespace``'s conv2d ops."""

    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        x, weight, bias, stride, padding, dilation, groups, relu = inputs
        ctx.save_for_backward(x, weight, output if relu else None)
        ctx.config = (stride, padding, dilation, groups, relu, bias is not None)

    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN202
        x, weight, y = ctx.saved_tensors
        stride, padding, dilation, groups, relu, has_bias = ctx.config
        if relu:
            # torch's ReLU backward: zero where y <= 0, grad where y is NaN (a NaN output is not a
            # clipped unit; torch passes its gradient on). One pass; torch.where(y <= 0, 0, grad) took
            # ~14x as long (a bool mask, then a scalar-promotion path).
            grad = torch.ops.aten.threshold_backward(grad, y, 0)
        need = ctx.needs_input_grad
        mask = [need[0], need[1], has_bias and need[2]]
        gx, gw, gb = namespace.conv2d_bwd(grad, x, weight, stride, padding, dilation, groups, mask)
        return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None) + (None,) * 5

    _autograd.register_differentiable(
        namespace.conv2d_fwd, setup_context=setup_context, backward=backward, composition=_fwd_composition
    )
    bwd_setup, bwd_backward = _autograd.recomputed_backward(_bwd_composition)
    _autograd.register_differentiable(
        namespace.conv2d_bwd, setup_context=bwd_setup, backward=bwd_backward, composition=_bwd_composition
    )
    _autograd.register_autocast(namespace.conv2d_fwd, to_float32=False)


# ---- the calls the generated tests make (tests/test_contract.py) -------------------------------


def opcheck_examples(ns, device: str, backend: str) -> Iterator[tuple[object, tuple, dict]]:  # noqa: ANN001
    """``(op, args, kwargs)``: small valid calls of ``ns``'s conv2d ops for ``torch.library.opcheck``:
    strides, padding, dilation, groups, bias, fused ReLU, channels_last operands (the fake kernels
    must give the real ops' strides) and every output_mask of the backward, float64."""
    from fastops.testing import make_tensor

    cl = torch.channels_last
    for xs, ws, st, pad, dil, groups, with_bias, relu, x_fmt, w_fmt in [
        ((2, 4, 5, 6), (4, 2, 3, 3), [1, 2], [1, 0], [1, 1], 2, True, False, None, None),
        ((1, 3, 6, 5), (2, 3, 2, 2), [2, 1], [0, 1], [2, 1], 1, False, True, None, None),
        ((2, 4, 5, 6), (6, 4, 3, 3), [1, 1], [1, 1], [1, 1], 1, True, True, cl, None),
        ((2, 4, 5, 6), (6, 2, 1, 3), [2, 1], [0, 1], [1, 1], 2, False, False, None, cl),
    ]:
        x = make_tensor(xs, torch.float64, device)
        w = make_tensor(ws, torch.float64, device)
        if x_fmt is not None:
            x = x.contiguous(memory_format=x_fmt)
        if w_fmt is not None:
            w = w.contiguous(memory_format=w_fmt)
        b = make_tensor((ws[0],), torch.float64, device) if with_bias else None
        yield ns.conv2d_fwd, (x, w, b, st, pad, dil, groups, relu), {}
        gy = torch.randn_like(ns.conv2d_fwd(x, w, b, st, pad, dil, groups, relu))
        for mask in ([True, True, True], [True, False, False], [False, True, False]):
            yield ns.conv2d_bwd, (gy, x, w, st, pad, dil, groups, mask), {}


if _backend.NATIVE_LOADED:
    register(torch.ops.fastops)
