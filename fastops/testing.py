"""Test helpers shared by the test suite and the benchmarks: the tolerance rule, input makers,
checkers.

The tolerance rule (design.md): results are compared with ``fastops.reference`` run in float64.
float32 / float64 results must match within tight tolerances; float16 / bfloat16 results may be at
most twice as far from the float64 reference as PyTorch's own same-dtype result is, plus a small
floor of a few units in the last place of the output's magnitude.
"""

from __future__ import annotations

import torch

# (rtol, atol) against a float64 reference, for outputs of unit scale.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
}
# Units in the last place of |reference|max added to the 2x-torch error bound for low precision.
LOW_PRECISION_FLOOR_ULPS = 1


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
