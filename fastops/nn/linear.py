"""fastops.nn.LinearReLU: nn.Linear followed by ReLU, as one fused op."""

from __future__ import annotations

import torch
from torch import nn

from fastops import functional as FF


class LinearReLU(nn.Linear):
    """Drop-in for ``nn.Sequential(nn.Linear(in_features, out_features, bias), nn.ReLU())``.

    A subclass of :class:`torch.nn.Linear`: the same constructor, initialisation, parameters and
    ``state_dict`` keys (``weight`` (out_features, in_features), ``bias`` (out_features,)), so the
    linear layer's checkpoint loads as is. Extra keyword-only argument ``backend`` (see
    :func:`fastops.backends`).

    Shapes: input ``(*, in_features)`` -> output ``(*, out_features)``.
    """

    # A class attribute too, so that fastops.swap can retype an existing nn.Linear without __init__.
    backend: str = "auto"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """input (*, in_features) -> relu(input @ weight.T + bias), (*, out_features)."""
        return FF.linear_relu(input, self.weight, self.bias, backend=self.backend)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, backend: str = "auto") -> LinearReLU:
        """A LinearReLU sharing ``linear``'s parameters (for swapping Linear+ReLU pairs)."""
        out = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device="meta",
            dtype=linear.weight.dtype,
            backend=backend,
        )
        out.weight = linear.weight
        out.bias = linear.bias
        return out
