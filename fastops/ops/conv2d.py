"""Conv2d: fake kernels of the native ops, argument normalisation and checks, the ops' autograd.

The registered ops take the canonical form only: 4-D input, pairs of ints, symmetric padding.
:func:`normalize_args` turns every form ``torch.nn.functional.conv2d`` accepts into it: int or
tuple arguments, ``padding="valid"`` / ``"same"`` (an odd total padding is made symmetric by
padding the input's bottom / right by one more, as torch does), unbatched ``(C, H, W)`` input.
:func:`register` is the one place that knows both passes, for each backend's namespace: both ops
are differentiable (see :mod:`fastops.ops._autograd`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastops import _backend, reference
from fastops.ops import _autograd
from fastops.ops import _conv2d_shapes as shapes

OP = "conv2d"
ACTIVATIONS = (None, "relu")

_backend.register_op(
    OP,
    native_schema="conv2d_fwd",
    native={"cpu": _backend.ALL_FLOAT_DTYPES, "cuda": _backend.ALL_FLOAT_DTYPES},
    triton={"cuda": _backend.ALL_FLOAT_DTYPES, "cpu": _backend.FLOAT32_FLOAT64},
)

if _backend.NATIVE_LOADED:
    torch.library.register_fake("fastops::conv2d_fwd")(shapes.fwd_fake)
    torch.library.register_fake("fastops::conv2d_bwd")(shapes.bwd_fake)


def _shape(t: torch.Size | list[int] | tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in t) + (",)" if len(t) == 1 else ")")


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


is_channels_last = shapes.is_channels_last


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
    if activation not in ACTIVATIONS:
        raise ValueError(f"conv2d: activation must be None or 'relu', got {activation!r}")
    if input.dim() not in (3, 4):
        raise ValueError(
            f"conv2d: input must have shape (N, C, H, W) or unbatched (C, H, W), got {_shape(input.shape)}"
        )
    if weight.dim() != 4:
        raise ValueError(f"conv2d: weight must have shape (K, C/groups, R, S), got {_shape(weight.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"conv2d: input must be floating, got {input.dtype}")
    if weight.dtype != input.dtype:
        raise TypeError(f"conv2d: weight must have input's dtype {input.dtype}, got {weight.dtype}")
    if weight.device != input.device:
        raise ValueError(f"conv2d: weight is on {weight.device} but input is on {input.device}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    c, k = x.shape[1], weight.shape[0]
    if c % groups != 0:
        raise ValueError(f"conv2d: groups={groups} must divide the input channels C={c}")
    if k % groups != 0:
        raise ValueError(f"conv2d: groups={groups} must divide the output channels K={k} (weight.shape[0])")
    if min(k, weight.shape[2], weight.shape[3]) <= 0:
        raise ValueError(f"conv2d: weight must be non-empty, got {_shape(weight.shape)}")
    if weight.shape[1] * groups != c:
        raise ValueError(
            f"conv2d: weight must have shape ({k}, {c // groups}, R, S) for input with C={c} channels and "
            f"groups={groups}, got {_shape(weight.shape)} (channel mismatch)"
        )
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != k:
            raise ValueError(f"conv2d: bias must have shape ({k},) (one per output channel), got {_shape(bias.shape)}")
        if bias.dtype != input.dtype:
            raise TypeError(f"conv2d: bias must have input's dtype {input.dtype}, got {bias.dtype}")
        if bias.device != input.device:
            raise ValueError(f"conv2d: bias is on {bias.device} but input is on {input.device}")
    st = _pair(stride, "stride", 1)
    dil = _pair(dilation, "dilation", 1)
    kernel = weight.shape[2:]
    if isinstance(padding, str):
        if padding == "valid":
            pad = [0, 0]
        elif padding == "same":
            if st != [1, 1]:
                raise ValueError("conv2d: padding='same' is not supported for strided convolutions")
            totals = [dil[i] * (kernel[i] - 1) for i in range(2)]
            pad = [t // 2 for t in totals]
            extra = [t - 2 * p for t, p in zip(totals, pad)]  # 0 or 1: goes to the bottom / right
            if any(extra):
                x = F.pad(x, [0, extra[1], 0, extra[0]])
        else:
            raise ValueError(f"conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    else:
        pad = _pair(padding, "padding", 0)
    shapes.check_geometry_range("conv2d", x.shape, weight.shape, st, pad, dil)
    for i, name in enumerate(("height", "width")):
        span = dil[i] * (kernel[i] - 1) + 1
        padded = x.shape[2 + i] + 2 * pad[i]
        if padded < span:
            raise ValueError(
                f"conv2d: output size would be <= 0: the padded input {name} {padded} is smaller than the "
                f"dilated kernel {span} (input {_shape(input.shape)}, weight {_shape(weight.shape)})"
            )
    return x, st, pad, dil, unbatched


def ops(backend: str):  # noqa: ANN201 - a torch.ops namespace
    """The namespace holding ``backend``'s conv2d ops (importing the Triton module registers them)."""
    if backend == "native":
        return torch.ops.fastops
    import fastops.triton.conv2d  # noqa: F401  (registers torch.ops.fastops_triton.conv2d_*)

    return torch.ops.fastops_triton


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
    return y.contiguous(memory_format=shapes.memory_format(x, weight))


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
    of a convolution); a masked-off output is an empty (0,) tensor, as the op returns."""
    k = weight.shape[0]
    outs = torch.ops.aten.convolution_backward(
        grad_out, x, weight, [k] if output_mask[2] else None, stride, padding, dilation, False, [0, 0], groups,
        list(output_mask),
    )  # fmt: skip
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
            # threshold_backward's mask: zero where y <= 0, grad where y is NaN (a NaN output is not
            # a clipped unit; torch passes its gradient on).
            grad = torch.where(y <= 0, 0, grad)
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


if _backend.NATIVE_LOADED:
    register(torch.ops.fastops)
