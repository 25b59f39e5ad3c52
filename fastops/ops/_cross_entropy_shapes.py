"""Output shapes of the cross-entropy ops, shared by the fake kernels of every backend."""

from __future__ import annotations

import torch


def row_shape(logits: torch.Tensor) -> list[int]:
    """logits (C,) -> (); (N, C) -> (N,); (N, C, d1, ..., dk) -> (N, d1, ..., dk)."""
    shape = list(logits.shape)
    del shape[0 if logits.dim() == 1 else 1]
    return shape


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64 logits, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def fwd_fake(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, lse), both of logits' row shape in the accumulation dtype."""
    shape, dt = row_shape(logits), acc_dtype(logits.dtype)
    return logits.new_empty(shape, dtype=dt), logits.new_empty(shape, dtype=dt)


def bwd_fake(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    lse: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
) -> torch.Tensor:
    """d loss / d logits: logits' shape and dtype (contiguous)."""
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def bwd_inplace_fake(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    lse: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
) -> None:
    """The in-place backward returns nothing; logits is overwritten with the gradient."""
    return None
