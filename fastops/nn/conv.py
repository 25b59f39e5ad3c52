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
            return FF.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups, backend=self.backend)
        return FF.conv2d(
            input, weight, bias, self.stride, self.padding, self.dilation, self.groups, backend=self.backend
        )

    def extra_repr(self) -> str:
        """torch's fields, then the backend."""
        return super().extra_repr() + f", backend={self.backend!r}"
