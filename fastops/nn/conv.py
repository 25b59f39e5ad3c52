"""fastops.nn.Conv2d: torch.nn.Conv2d running fastops kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastops import functional as FF


class Conv2d(nn.Conv2d):
    """Drop-in for :class:`torch.nn.Conv2d` (same constructor, initialisation, parameters, state_dict).

    Extra keyword-only argument: ``backend`` (see :func:`fastops.backends`). ``padding_mode``
    ``"reflect"`` / ``"replicate"`` / ``"circular"`` pad the input with ``F.pad`` first, as torch does.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, K, P, Q)`` or ``(K, P, Q)``.
    """

    # A class attribute too, so that fastops.swap can change a torch Conv2d's class in place.
    backend: str = "auto"
    # The activation fused into the kernel's epilogue: None here, "relu" in Conv2dReLU.
    _activation: str | None = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        self.backend = backend

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding: int | tuple[int, int] | str = 0
        else:
            padded, padding = input, self.padding
        return FF.conv2d(
            padded,
            weight,
            bias,
            self.stride,
            padding,
            self.dilation,
            self.groups,
            activation=self._activation,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        """torch's fields, then the backend."""
        return super().extra_repr() + f", backend={self.backend!r}"


class Conv2dReLU(Conv2d):
    """Drop-in for ``nn.Sequential(nn.Conv2d(...), nn.ReLU())``: the ReLU runs in the conv kernel's
    epilogue (native and Triton; ``relu(F.conv2d(...))`` where ``backend="auto"`` runs torch's conv).

    A subclass of :class:`torch.nn.Conv2d` with its constructor, initialisation, parameters and
    ``state_dict`` keys, so the conv layer's checkpoint loads as is; ``fastops.swap`` retypes an
    ``nn.Conv2d`` directly followed by an ``nn.ReLU`` in an ``nn.Sequential`` to this class.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, K, P, Q)`` or ``(K, P, Q)``, >= 0.
    """

    _activation = "relu"
