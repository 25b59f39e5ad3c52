"""Correctness before timing: the normalised error of a provider and the rule that judges it.

Errors are max|got - ref| / max|ref| against the float64 reference (normalised, so a mean-reduced
gradient of size 1/N is judged on its own scale; :class:`ErrorMeter` folds chunks, so a
(16384, 131072) case needs no float64 copy of the whole tensor).

The rule is :mod:`fastops.testing`'s, the one the test suite applies (design.md: fp16/bf16 may be
2x as far from the float64 reference as PyTorch's own same-dtype result, plus a small floor; fp32 /
fp64 tight). A benchmark row keeps one number per output, so the rule is taken in its normalised
form: allowed = 2 x torch eager's normalised error + the dtype's floor, where the floor is
``fastops.testing.TOLERANCES[dtype]`` rtol for float32/float64 (the tight bound relative to the
output's magnitude) and ``LOW_PRECISION_FLOOR_ULPS`` x eps for float16/bfloat16 (units in the last
place of ``max|ref|``). Eager's error enters the fp32 bound too, as ``fastops.testing`` does for a
torch composition: PyTorch's own float32 reductions can miss the tight bound on large cases.
"""

from __future__ import annotations

import math

import torch

from fastops.testing import LOW_PRECISION_FLOOR_ULPS, TOLERANCES


class ErrorMeter:
    """Accumulates max|got - ref| and max|ref| (possibly over chunks); ``.error`` is their ratio."""

    def __init__(self) -> None:
        self.max_diff = 0.0
        self.max_ref = 0.0
        self.nonfinite = False

    def add(self, got: torch.Tensor, ref: torch.Tensor) -> ErrorMeter:
        """Fold one (chunk of) output into the meter; ``got`` and ``ref`` have the same shape."""
        if got.shape != ref.shape:
            raise ValueError(f"shape mismatch: got {tuple(got.shape)}, reference {tuple(ref.shape)}")
        got64, ref64 = got.detach().double(), ref.detach().double()
        if not bool(torch.isfinite(got64).all()) and bool(torch.isfinite(ref64).all()):
            self.nonfinite = True
        if got64.numel():
            self.max_diff = max(self.max_diff, float((got64 - ref64).abs().max()))
            self.max_ref = max(self.max_ref, float(ref64.abs().max()))
        return self

    @property
    def error(self) -> float:
        """Normalised max error; inf when got had a NaN/inf the reference did not."""
        if self.nonfinite or math.isnan(self.max_diff):
            return math.inf
        return self.max_diff / self.max_ref if self.max_ref > 0 else self.max_diff


def normalised_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max|got - ref| / max|ref| in float64 for same-shape tensors (inf if got has a NaN/inf where
    ref is finite)."""
    return ErrorMeter().add(got, ref).error


def error_floor(dtype: torch.dtype) -> float:
    """The dtype's floor of the normalised rule, from fastops.testing (see the module docstring)."""
    if dtype in TOLERANCES:
        return TOLERANCES[dtype][0]
    return LOW_PRECISION_FLOOR_ULPS * torch.finfo(dtype).eps


def allowed_error(dtype: torch.dtype, eager_error: float | None) -> float:
    """The tolerance: 2x torch eager's own normalised error from the reference, plus the floor."""
    eager = 2 * eager_error if eager_error is not None and math.isfinite(eager_error) else 0.0
    return error_floor(dtype) + eager
