"""Test helpers shared by the test suite and the benchmarks: the tolerance rule, input makers,
checkers, and the tests' parametrisation (:func:`device_backend_params`); tests import them from
here, not from conftest.py (which only sets the session up).

The tolerance rule (design.md): results are compared with ``fastops.reference`` run in float64.
float32 / float64 results must match within tight tolerances; float16 / bfloat16 results may be at
most twice as far from the float64 reference as PyTorch's own same-dtype result is, plus a small
floor of a few units in the last place of the output's magnitude.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

HAS_CUDA = torch.cuda.is_available()
# Fresh random inputs every test run (design.md); tests/conftest.py prints the seed so a failure can
# be replayed with FASTOPS_TEST_SEED=<seed>, and derives each test's torch seed from it.
SEED = int(os.environ.get("FASTOPS_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
# Property fuzz (tests/test_fuzz.py): examples per test for each backend, per hypothesis profile. The
# default keeps CI short; `pytest --slow` runs thousands (the Triton interpreter gets far fewer, on
# tiny shapes); conftest.py loads the profile into FUZZ_EXAMPLES. The search is seeded from SEED.
FUZZ_PROFILES = {
    "fastops-ci": {"native": 60, "triton": 10},
    "fastops-slow": {"native": 2000, "triton": 150},
}
FUZZ_EXAMPLES: dict[str, int] = dict(FUZZ_PROFILES["fastops-ci"])


def device_backend_params(
    cpu_backends: tuple[str, ...] = ("native", "triton", "torch"),
    cuda_backends: tuple[str, ...] = ("native", "triton", "torch"),
) -> list[object]:
    """pytest params ``(device, backend)``: the CPU ones always, the CUDA ones marked ``gpu`` and
    skipped without a GPU; Triton ones marked ``triton``. Ids ``cpu-native``, ``cuda-triton``, ..."""
    import pytest  # only the tests need it

    params = []
    for device, backends in (("cpu", cpu_backends), ("cuda", cuda_backends)):
        for backend in backends:
            marks = []
            if device == "cuda":
                marks += [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible")]
            if backend == "triton":
                marks.append(pytest.mark.triton)
            params.append(pytest.param(device, backend, marks=marks, id=f"{device}-{backend}"))
    return params


def triton_device_params() -> list[object]:
    """pytest params ``device`` for tests that call the Triton ops directly: ``cpu`` when the Triton
    interpreter runs them on CPU tensors, and ``cuda`` marked ``gpu`` (skipped without a GPU)."""
    import pytest  # only the tests need it

    from fastops import triton as fastops_triton

    params: list[object] = []
    if fastops_triton.interpreting():
        params.append(pytest.param("cpu", id="cpu"))
    gpu_marks = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible")]
    params.append(pytest.param("cuda", id="cuda", marks=gpu_marks))
    return params


LOW_PRECISION = (torch.float16, torch.bfloat16)


def low_precision_native_cpu(device: str, backend: str) -> list[torch.dtype]:
    """float16 / bfloat16 where the native CPU kernels run them (the extra cases of the op tests):
    ``[float16, bfloat16]`` for ``("cpu", "native")``, else ``[]``."""
    return list(LOW_PRECISION) if (device, backend) == ("cpu", "native") else []


def kernel_dtypes(device: str, backend: str) -> list[torch.dtype]:
    """float32 and float64, plus float16 / bfloat16 on the GPU backends and in the native CPU kernels
    (the Triton interpreter's CPU table for conv2d and linear_relu is float32 / float64)."""
    low = device == "cuda" or backend == "native"
    return [torch.float32, torch.float64] + (list(LOW_PRECISION) if low else [])


# (rtol, atol) against a float64 reference, for outputs of unit scale.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
}
# Units in the last place of |reference|max added to the 2x-torch error bound for low precision.
LOW_PRECISION_FLOOR_ULPS = 1


def is_fastops_node(node: object) -> bool:
    """Whether an autograd graph node belongs to a fastops op: the autograd.Function of a Python
    Autograd kernel (``OpFunctionBackward``) or the C++ one of csrc/conv2d_autograd.cpp (a CppNode
    named after its ``fastops::`` Function)."""
    if node is None:
        return False
    return type(node).__name__ == "OpFunctionBackward" or "fastops::" in node.name()


def make_tensor(
    shape: tuple[int, ...] | list[int],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    scale: float = 1.0,
    requires_grad: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fresh standard-normal values times ``scale`` (never zeros or ones alone)."""
    t = torch.randn(tuple(shape), dtype=torch.float64, generator=generator) * scale
    return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t`` in a non-contiguous layout (every other element of a wider buffer)."""
    buf = torch.full((*t.shape, 2), float("nan") if t.is_floating_point() else -1, dtype=t.dtype, device=t.device)
    buf[..., 0] = t.detach()
    out = buf[..., 0]
    assert not out.is_contiguous() or out.numel() <= 1
    return out.requires_grad_(t.requires_grad)


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN (floats) or -1 (integers) so an unwritten element shows."""
    return t.fill_(float("nan") if t.is_floating_point() else -1)


def _describe(actual: torch.Tensor, expected: torch.Tensor) -> str:
    diff = (actual.double() - expected.double()).abs()
    finite = torch.nan_to_num(diff, nan=float("inf"))
    idx = int(finite.flatten().argmax()) if finite.numel() else 0
    return (
        f"max |error| {finite.max().item() if finite.numel() else 0:.3e} at flat index {idx} "
        f"(got {actual.flatten()[idx].item() if actual.numel() else None}, "
        f"expected {expected.flatten()[idx].item() if expected.numel() else None})"
    )


def assert_same_nonfinite(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """``actual`` has NaN, and +-inf, exactly where ``expected`` does (the sign of an inf included)."""
    assert torch.equal(torch.isnan(actual), torch.isnan(expected)), f"{what}: NaN pattern differs"
    assert torch.equal(torch.isinf(actual), torch.isinf(expected)), f"{what}: inf pattern differs"


# |pre-activation| / its RMS below which a correct float32 kernel's ReLU may decide either way: the
# pre-activation's float32 rounding (~1e-6 of its RMS for the op tests' sums of tens to hundreds of
# unit-scale products) can cross 0 where float64's does not.
RELU_KINK_MARGIN = 1e-5


def relu_decisions(pre64: torch.Tensor, kernel_out: torch.Tensor) -> torch.Tensor:
    """The ReLU mask a float32 result of relu(pre) is held to (bool, ``pre64``'s shape): float64's own
    ``pre64 > 0``, except at elements whose pre-activation lies within ``RELU_KINK_MARGIN`` of its RMS
    of the kink, where the kernel's decision ``kernel_out > 0`` stands. A flipped decision there is
    rounding, not a defect, but it sends or withholds a whole row of the input gradient (float64's
    mask failed correct kernels on about 1 seed in 250-400 of the conv2d and linear+ReLU op tests); a
    wrong mask anywhere else still fails."""
    p = pre64.detach().double()
    finite = p[torch.isfinite(p)]  # an inf must not widen the margin over every finite element
    rms = finite.pow(2).mean().sqrt().item() if finite.numel() else 0.0
    near = p.abs() < RELU_KINK_MARGIN * rms
    return torch.where(near, kernel_out.detach().to(p.device) > 0, p > 0)


# |g/scale ± weight_decay·p| below which the tests' Adam first step (from a zero second moment) is
# ill-conditioned under L2 weight decay. That step is lr·g/(|g| + eps), with g = grad/scale + wd·p:
# where the two terms cancel, g keeps only their rounding error (~1e-7 of wd·|p| in float32, which
# two correct implementations may round differently), and the step amplifies it by up to 1/eps (1e3
# to 1e8). CI saw it once (seed 823266030): the Triton step moved one element 7.4e-5 from torch's own
# float32 Adam, 2.7x the tolerance, from a g of 1e-8. Outside the margin that rounding moves a
# parameter by at most lr·δ/(4·margin) on the first step and ~2·lr·δ/margin on the next (δ the
# rounding of g): for wd <= 0.1, lr <= 0.1, over 50x below the float32 tolerance's rtol part alone.
ADAM_L2_CANCEL_MARGIN = 1e-2


def without_l2_cancellation(
    grad: torch.Tensor,
    param: torch.Tensor,
    weight_decay: float,
    draw: Callable[[int], torch.Tensor],
    *,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """``grad`` (any shape, float64) with each element where Adam's L2-decayed first-step gradient
    cancels (``||grad|/grad_scale - weight_decay·|param|| < ADAM_L2_CANCEL_MARGIN``, for either sign
    of the gradient: maximize flips it) replaced by a fresh ``draw(n)`` value (n elements, float64),
    until none is left. ``param`` has ``grad``'s shape. Use it for the first step of a fresh state
    only: later steps divide by a second moment the first step made no smaller than the margin."""
    g = grad.detach().double().clone()
    decay = weight_decay * param.detach().double().abs()
    for _ in range(1000):
        bad = ((g.abs() / grad_scale) - decay).abs() < ADAM_L2_CANCEL_MARGIN
        if not bool(bad.any()):
            return g
        g[bad] = draw(int(bad.sum())).to(g)
    raise AssertionError("without_l2_cancellation: draw keeps landing within the margin")


def to_unit_scale(
    actual: torch.Tensor,
    expected64: torch.Tensor,
    torch_same_dtype: torch.Tensor | None = None,
    *,
    min_rms: float = 1e-30,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Divide a result, its float64 reference and torch's same-dtype result by the reference's RMS
    (over its finite elements, at least ``min_rms``): the tolerance rule's premise is unit-scale
    outputs. A sum of K unit-scale products (a conv output over C*kh*kw taps, a weight gradient over
    N*P*Q positions) has scale ~sqrt(K), and its rounding error grows with it, so at an element near
    cancellation the fixed atol would measure the data's scale, not the kernel (torch's own float32
    conv2d misses it on 6 of 3000 seeds at 4x5x5 / 6x4x3x3). ``min_rms=1`` only scales large outputs
    down, for results that may be all zero. Shapes and dtypes are kept; NaN / inf stay where they
    are. float16 / bfloat16 results are returned as they are: their bound (2x torch's own error plus
    a floor relative to the output's magnitude) is already scale-free, and dividing in the low
    precision would add a rounding of its own."""
    if actual.dtype not in TOLERANCES:
        return actual, expected64, torch_same_dtype
    e = expected64.detach().double()
    finite = e[torch.isfinite(e)]
    rms = max(finite.pow(2).mean().sqrt().item() if finite.numel() else 1.0, min_rms)
    same = None if torch_same_dtype is None else torch_same_dtype / rms
    return actual / rms, expected64 / rms, same


def assert_close_to_reference(
    actual: torch.Tensor,
    expected64: torch.Tensor,
    *,
    torch_same_dtype: torch.Tensor | None = None,
    what: str = "result",
    is_torch_composition: bool = False,
) -> None:
    """Check ``actual`` (any float dtype) against a float64 reference by the tolerance rule.

    ``torch_same_dtype`` is PyTorch's own result in ``actual``'s dtype; it is required for
    float16/bfloat16 (the bound is 2x its error). ``is_torch_composition``: ``actual`` comes from
    the ``torch`` backend, itself a PyTorch composition, so a float32/float64 result outside the
    tight tolerance still passes when it is within 2x ``torch_same_dtype``'s error (required then)
    plus the floor: PyTorch's own float32 reductions miss the tight bound on confident
    70k-class rows, and the kernels are what the tight bound is for. NaN must be where the
    reference has NaN, and nowhere else. Raises AssertionError with the worst element.
    """
    if actual.shape != expected64.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected64.shape)}")
    a, e = actual.detach().double().cpu(), expected64.detach().double().cpu()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if not torch.equal(nan_a, nan_e):
        raise AssertionError(
            f"{what}: NaN pattern differs from the reference ({int(nan_a.sum())} vs {int(nan_e.sum())})"
        )
    a, e = a.masked_fill(nan_a, 0), e.masked_fill(nan_e, 0)
    inf_e = torch.isinf(e)
    if not torch.equal(a[inf_e], e[inf_e]):
        raise AssertionError(f"{what}: infinities differ from the reference")
    a, e = a.masked_fill(inf_e, 0), e.masked_fill(inf_e, 0)
    dtype = actual.dtype
    if dtype in TOLERANCES:
        rtol, atol = TOLERANCES[dtype]
        bad = (a - e).abs() > atol + rtol * e.abs()
        if not bool(bad.any()):
            return
        if not is_torch_composition:
            raise AssertionError(f"{what} ({dtype}): {int(bad.sum())} elements out of tolerance; {_describe(a, e)}")
    if torch_same_dtype is None:
        raise ValueError(f"{what}: a {dtype} result needs torch's own {dtype} result to set the bound")
    t = torch_same_dtype.detach().double().cpu().masked_fill(nan_e, 0).masked_fill(inf_e, 0)
    torch_err = (t - e).abs().max().item() if e.numel() else 0.0
    floor = LOW_PRECISION_FLOOR_ULPS * torch.finfo(dtype).eps * max(1.0, e.abs().max().item() if e.numel() else 0.0)
    err = (a - e).abs().max().item() if e.numel() else 0.0
    if err > 2 * torch_err + floor:
        raise AssertionError(
            f"{what} ({dtype}): error {err:.3e} exceeds 2 x torch's {torch_err:.3e} + floor {floor:.1e}; "
            f"{_describe(a, e)}"
        )


# --------------------------------------------------------------------------------------------------
# Model level: a whole network, swapped vs stock, in float32
#
# Why not the per-tensor max-abs rule above: a network takes discrete decisions (a ReLU's sign, a
# max-pool's argmax) on values that rounding can push across the tie. float32 flips one of them
# against float64 on a few percent of random inputs (measured: 4 of 200 seeds each for resnet18
# and vgg11 at 2x3x32x32, in torch or in fastops), and a flipped ReLU sends or withholds one whole
# upstream gradient term: 1e-2 to 8e-2 relative error in the weight gradient next to it, versus
# ~1e-6 of rounding everywhere else. No floor separates that from a 1e-3 defect. So each float32
# model is compared with a float64 run that takes *the float32 model's own decisions* (replayed at
# every ReLU, fused Linear+ReLU and MaxPool2d), which leaves pure rounding; and every decision the
# float32 model took differently from float64 must sit within DECISION_MARGIN of a tie in float64,
# so a wrong mask or argmax (a defect, not rounding) still fails.

# Relative Frobenius error floor per tensor (output, each parameter gradient), added to 2x torch's
# own relative error. float32, measured by scripts/seed_sweep.py over 200 seeds x {resnet18, vgg11
# of test_swap, resnet18 and digits CNN of bench train_step} on AMD EPYC: errors up to 1.7e-6
# (torch's 1.4e-6), and error - 2 x torch error at most 3.5e-7; worst error/allowed 0.15. 1e-5
# leaves ~30x headroom for other CPUs' summation orders and still fails a 1e-3 error in one
# tensor by ~90x (1e-4 by ~9x). The bench's per-row floor for float32 is TOLERANCES' rtol (2e-5),
# so a model that passes this rule also passes the bench row's verdict (2x eager's worst error + floor).
MODEL_REL_FLOOR = {torch.float32: 1e-5}  # other dtypes: measure, then pass floor=
# Largest |float64 distance from the tie| / rms(decision input) at which a float32 decision may
# differ from float64's own: a flipped ReLU's pre-activation, or the gap between float64's max and
# the element the float32 max-pool chose. The same sweep flipped decisions on 17 of 800 runs (torch
# on 10), all within 8.9e-7 x rms of the tie; a wrong mask or argmax lands ~1e-2 away.
DECISION_MARGIN = 1e-4


@dataclass
class ModelComparison:
    """One float32 model vs stock torch, each against a float64 run taking its own decisions.

    ``errors`` / ``torch_errors``: per tensor (``"output"``, ``"grad <parameter>"``), the relative
    Frobenius error ``||got - ref64|| / ||ref64||`` of the model under test / of stock torch in the
    same dtype. ``allowed``: ``2 * torch_error + floor`` per tensor. ``flips`` / ``torch_flips``:
    how many discrete decisions (ReLU signs, max-pool argmaxes) differed from float64's own;
    ``worst_margin`` / ``torch_worst_margin``: the largest float64 distance from the tie among
    those flips, relative to the rms of the decision's input. ``bad_decisions``: the model's flips
    too far from a tie (stock torch's are its own business: only counted).
    """

    errors: dict[str, float]
    torch_errors: dict[str, float]
    allowed: dict[str, float]
    decisions: int = 0
    flips: int = 0
    torch_flips: int = 0
    worst_margin: float = 0.0
    torch_worst_margin: float = 0.0
    bad_decisions: list[str] = field(default_factory=list)

    @property
    def error(self) -> float:
        """The model's worst per-tensor relative error."""
        return max(self.errors.values(), default=0.0)

    @property
    def torch_error(self) -> float:
        """Stock torch's worst per-tensor relative error."""
        return max(self.torch_errors.values(), default=0.0)

    @property
    def worst(self) -> str:
        """The tensor with the largest error / allowed ratio."""
        return max(self.errors, key=lambda k: self.errors[k] / self.allowed[k])

    @property
    def worst_ratio(self) -> float:
        """max over tensors of error / allowed: the rule holds when it is at most 1."""
        return self.errors[self.worst] / self.allowed[self.worst] if self.errors else 0.0

    def failures(self) -> list[str]:
        """Every violation of the rule, one line each (empty: the model passes)."""
        out = [
            f"{k}: relative error {e:.3e} > 2 x torch's {self.torch_errors[k]:.3e} + floor = {self.allowed[k]:.3e}"
            for k, e in self.errors.items()
            if not e <= self.allowed[k]
        ]
        return out + self.bad_decisions

    def assert_ok(self, what: str = "model") -> ModelComparison:
        """Raise AssertionError listing every violation; return self when there is none."""
        problems = self.failures()
        if problems:
            raise AssertionError(
                f"{what}: {len(problems)} violation(s) of the model-level rule ({self.flips} model / "
                f"{self.torch_flips} torch decisions differ from float64's):\n  " + "\n  ".join(problems)
            )
        return self


def _fused_relu_types() -> tuple[type, ...]:
    """Modules whose output is relu(something), with the mask taken inside a fused kernel."""
    import fastops.nn as fnn

    return tuple(t for t in (getattr(fnn, "LinearReLU", None), getattr(fnn, "Conv2dReLU", None)) if t is not None)


_Decision = tuple[str, str, torch.Tensor]  # (module name, "relu" | "maxpool", mask | flat argmax)


def _record_decisions(model: nn.Module, log: list[_Decision]) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks appending each ReLU's mask and each max-pool's argmax to ``log``, in call order."""
    fused = _fused_relu_types()

    def relu_hook(name: str, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        log.append((name, "relu", out.detach() > 0))  # torch's relu backward masks by out > 0 too

    def pool_hook(name: str, m: nn.MaxPool2d, inputs: tuple, out: torch.Tensor | tuple) -> None:
        if m.return_indices:
            idx = out[1]
        else:
            with torch.no_grad():
                args = (m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
                _, idx = F.max_pool2d(inputs[0], *args, return_indices=True)
        log.append((name, "maxpool", idx))

    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.ReLU, *fused)):
            handles.append(m.register_forward_hook(functools.partial(relu_hook, name)))
        elif isinstance(m, nn.MaxPool2d):
            handles.append(m.register_forward_hook(functools.partial(pool_hook, name)))
    return handles


class _Replay:
    """Patches a private float64 copy so its ReLUs and max-pools take recorded decisions."""

    def __init__(self, log: list[_Decision]) -> None:
        self.log, self.next, self.flips, self.worst_margin = log, 0, 0, 0.0
        self.bad: list[str] = []

    def _pop(self, name: str, kind: str, shape: torch.Size) -> tuple[str, torch.Tensor]:
        if self.next >= len(self.log):
            raise ValueError(f"model vs stock: stock's {kind} at {name!r} has no recorded decision to replay")
        site, got_kind, data = self.log[self.next]
        self.next += 1
        if got_kind != kind or data.shape != shape:
            raise ValueError(
                f"model vs stock: decision {self.next} is a {got_kind} {tuple(data.shape)} at {site!r} in the model "
                f"but a {kind} {tuple(shape)} at {name!r} in stock; the two do not compute the same network"
            )
        return site, data

    def _judge(self, site: str, flipped: torch.Tensor, distance: torch.Tensor, x: torch.Tensor) -> None:
        n = int(flipped.sum())
        if not n:
            return
        self.flips += n
        rms = x.detach().square().mean().sqrt().item()
        margin = distance[flipped].max().item() / (rms if rms > 0 else 1.0)
        self.worst_margin = max(self.worst_margin, margin)
        if not margin <= DECISION_MARGIN:
            self.bad.append(
                f"{site}: {n} decision(s) differ from float64's own, up to {margin:.2e} x rms from the tie "
                f"(rounding stays within {DECISION_MARGIN:.0e}): a wrong mask or argmax"
            )

    def relu(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """x * recorded mask (the mask's gradient too), judging the mask against x > 0."""
        site, mask = self._pop(name, "relu", x.shape)
        self._judge(site, mask != (x > 0), x.detach().abs(), x)
        return x * mask.to(x.dtype)

    def maxpool(self, m: nn.MaxPool2d, name: str, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x at the recorded argmax of each window, judged against float64's own max."""
        args = (m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        best, own = F.max_pool2d(x.detach(), *args, return_indices=True)
        site, idx = self._pop(name, "maxpool", own.shape)
        out = x.flatten(-2).gather(-1, idx.flatten(-2)).view(idx.shape)
        self._judge(site, idx != own, (best - out.detach()).abs(), x)
        return (out, idx) if m.return_indices else out

    def install(self, reference: nn.Module) -> None:
        """Point every ReLU and MaxPool2d of ``reference`` at this replay."""
        for name, m in reference.named_modules():
            if isinstance(m, _fused_relu_types()):
                raise ValueError(f"stock model has a fused fastops module at {name!r}; pass the torch model as stock")
            if isinstance(m, nn.ReLU):
                m.forward = functools.partial(self.relu, name)
            elif isinstance(m, nn.MaxPool2d):
                m.forward = functools.partial(self.maxpool, m, name)


def _forward_backward(
    model: nn.Module, x: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor], names: list[str]
) -> dict[str, torch.Tensor]:
    """{"output": model(x), "grad <name>": d loss(model(x)) / d parameter} for the named parameters."""
    params = dict(model.named_parameters())
    out = model(x)
    grads = torch.autograd.grad(loss(out), [params[n] for n in names], allow_unused=True)
    result = {"output": out.detach()}
    for n, g in zip(names, grads):
        result[f"grad {n}"] = g if g is not None else torch.zeros_like(params[n])
    return result


def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64 (inf if got is not finite; absolute when ref is all zero)."""
    diff = got.detach().double() - ref.detach().double()
    if not bool(torch.isfinite(diff).all()):
        return math.inf
    norm = ref.detach().double().norm().item()
    return diff.norm().item() / (norm if norm > 0 else 1.0)


def compare_models(
    model: nn.Module,
    stock: nn.Module,
    x: torch.Tensor,
    *,
    loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    stock_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    floor: float | None = None,
) -> ModelComparison:
    """Measure ``model`` (e.g. after :func:`fastops.swap`) against ``stock`` (the same network in
    stock torch, same parameters) on input ``x``, by the model-level rule; judge nothing.

    Runs forward and backward of ``loss(model(x))`` (default ``out.square().mean()``) and of
    ``stock_loss(stock(x))`` (default: ``loss``), recording every ReLU mask (``nn.ReLU`` and fused
    ``fastops.nn.LinearReLU``) and every ``nn.MaxPool2d`` argmax; then runs a float64 copy of
    ``stock`` twice, once taking the model's decisions and once taking stock's. Each tensor
    (output, every parameter gradient) gets its relative Frobenius error against the float64 run
    with its own decisions; the model may be ``2x`` as far as stock torch is, plus ``floor``
    (default :data:`MODEL_REL_FLOOR` of ``x``'s dtype). A decision that differs from float64's own
    is accepted only within :data:`DECISION_MARGIN` of a tie.

    Both models must be deterministic (eval mode or no dropout) and use their ReLUs' return values
    (the float64 copy's ReLUs return a new tensor instead of writing in place). Decisions taken
    outside those modules (a functional ``F.relu`` in a ``forward``) are not replayed, so they can
    still flip. Prefer eval mode: train-mode BatchNorm over a tiny batch amplifies rounding beyond
    any rule (resnet18 at batch 2, 32x32: stock torch's own float32 gradients are up to 1.5e-1 off
    float64). In train mode the running statistics of both models are updated once.
    """
    loss = loss if loss is not None else (lambda out: out.square().mean())
    stock_loss = stock_loss if stock_loss is not None else loss
    if floor is None:
        if x.dtype not in MODEL_REL_FLOOR:
            raise ValueError(f"no measured model-level floor for {x.dtype}; pass floor=")
        floor = MODEL_REL_FLOOR[x.dtype]
    names = [n for n, p in stock.named_parameters() if p.requires_grad]
    model_names = [n for n, p in model.named_parameters() if p.requires_grad]
    if sorted(names) != sorted(model_names):
        raise ValueError(f"model and stock have different parameters: {sorted(set(names) ^ set(model_names))}")
    template = copy.deepcopy(stock).to(torch.float64)  # before any forward can touch running stats

    results, logs = [], []
    for net, fn in ((model, loss), (stock, stock_loss)):
        log: list[_Decision] = []
        handles = _record_decisions(net, log)
        try:
            results.append(_forward_backward(net, x, fn, names))
        finally:
            for h in handles:
                h.remove()
        logs.append(log)

    refs, replays = [], []
    for log in logs:
        reference, replay = copy.deepcopy(template), _Replay(log)
        replay.install(reference)
        refs.append(_forward_backward(reference, x.to(torch.float64), stock_loss, names))
        if replay.next != len(log):
            raise ValueError(f"model vs stock: {len(log) - replay.next} recorded decisions were not replayed")
        replays.append(replay)

    errors = {k: _relative_error(results[0][k], refs[0][k]) for k in results[0]}
    torch_errors = {k: _relative_error(results[1][k], refs[1][k]) for k in results[1]}
    return ModelComparison(
        errors=errors,
        torch_errors=torch_errors,
        allowed={k: 2 * torch_errors[k] + floor for k in errors},
        decisions=sum(int(d.numel()) for _, _, d in logs[0]),
        flips=replays[0].flips,
        torch_flips=replays[1].flips,
        worst_margin=replays[0].worst_margin,
        torch_worst_margin=replays[1].worst_margin,
        bad_decisions=replays[0].bad,
    )


def assert_model_close(
    model: nn.Module,
    stock: nn.Module,
    x: torch.Tensor,
    *,
    loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    stock_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    floor: float | None = None,
    what: str = "model",
) -> ModelComparison:
    """The model-level float32 rule: :func:`compare_models`, raising AssertionError on any violation.

    Every tensor (output, each parameter gradient) of ``model`` must be within ``2x`` stock torch's
    relative Frobenius error plus the floor, each against a float64 run taking that model's own
    ReLU / max-pool decisions, and the model's decisions may differ from float64's only within
    :data:`DECISION_MARGIN` of a tie. Returns the comparison when it holds.
    """
    return compare_models(model, stock, x, loss=loss, stock_loss=stock_loss, floor=floor).assert_ok(
        f"{what} ({x.dtype})"
    )
