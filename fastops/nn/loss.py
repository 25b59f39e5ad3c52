"""fastops.nn.CrossEntropyLoss: torch.nn.CrossEntropyLoss running fastops kernels."""

from __future__ import annotations

import torch
from torch import nn

from fastops import functional as FF


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Drop-in for :class:`torch.nn.CrossEntropyLoss` (same constructor, buffers, state_dict).

    Extra keyword-only arguments: ``backend`` (see :func:`fastops.backends`) and
    ``inplace_backward`` (see :func:`fastops.functional.cross_entropy`). Their defaults are class
    attributes, so :func:`fastops.swap` can convert an existing torch module by changing its class.

    Shapes: input ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``; target of the index shape
    (int64) or of input's shape (probabilities); output a scalar, or the index shape for
    ``reduction="none"``.
    """

    backend: str = "auto"
    inplace_backward: bool = False

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        backend: str = "auto",
        inplace_backward: bool = False,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.backend = backend
        self.inplace_backward = inplace_backward

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input (N, C, ...) logits, target indices or probabilities -> loss."""
        return FF.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            backend=self.backend,
            inplace_backward=self.inplace_backward,
        )

    def extra_repr(self) -> str:
        """Show the backend beside torch's fields."""
        return f"reduction={self.reduction!r}, backend={self.backend!r}"
