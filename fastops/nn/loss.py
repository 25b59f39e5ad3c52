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


class LinearCrossEntropyLoss(nn.Module):
    """The LM loss head: cross-entropy of ``softcap(input @ weight.T + bias)`` without materialising the
    ``(N, V)`` logits (:func:`fastops.functional.linear_cross_entropy`).

    Holds the loss options; the lm_head weight (and bias) are passed to :meth:`forward`, so the module
    sits beside the model's own ``lm_head`` (tied embeddings stay tied). Shapes: input ``(*, H)``,
    weight ``(V, H)``, target ``(*)`` int64, bias ``(V,)`` or None; output a scalar, or ``(*)`` for
    ``reduction="none"``.
    """

    def __init__(
        self,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        weight_classes: torch.Tensor | None = None,
        softcap: float | None = None,
        z_loss: float = 0.0,
        *,
        chunk_rows: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.register_buffer("weight_classes", weight_classes)
        self.softcap = softcap
        self.z_loss = z_loss
        self.chunk_rows = chunk_rows
        self.backend = backend

    def forward(
        self, input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input (*, H), weight (V, H), target (*), bias (V,) or None -> loss."""
        return FF.linear_cross_entropy(
            input,
            weight,
            target,
            bias,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            weight_classes=self.weight_classes,
            softcap=self.softcap,
            z_loss=self.z_loss,
            chunk_rows=self.chunk_rows,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        """The options that change the loss."""
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
            f"softcap={self.softcap}, z_loss={self.z_loss}, backend={self.backend!r}"
        )
