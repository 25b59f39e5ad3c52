"""Autograd, autocast and vmap registered with the ops themselves, for every backend's namespace.

Every differentiable op (``<stem>_fwd`` and ``<stem>_bwd`` in ``fastops`` and ``fastops_triton``) gets
a Python kernel at the dispatcher's ``Autograd`` key, so one differentiable op is what the
dispatcher, ``torch.export`` (an exported graph holds the op, and backward through
``ep.module()`` works), AOTAutograd (``torch.compile``) and raw ``torch.ops`` calls all see.

Why not ``torch.library.register_autograd``: the ``autograd.Function`` it generates has no
``setup_context``, so ``torch.func.grad`` over the op raises, and an ``autograd.Function`` applied
from inside a dispatcher kernel cannot run under a functorch transform at all. So the kernel here
takes three paths:

- no grad needed: redispatch below autograd, straight to the CPU / CUDA / Triton kernel;
- grad needed, no functorch transform active: ``Function.apply`` of a setup_context-style
  ``autograd.Function`` whose forward is the kernel and whose backward calls the ``_bwd`` op;
- under ``torch.func`` (grad, jacrev, vjp...): the op's torch composition, which functorch
  differentiates itself (values match the kernel to rounding; speed is not the point there).

The ``_bwd`` ops are differentiable too (double backward, gradient penalties): their backward
recomputes the torch composition of the ``_bwd`` op and differentiates it, so a second derivative
is never zero or None. ``vmap`` runs the kernels themselves, one call per batch element (a batching
rule registered here, so torch does not warn about its slow fallback).

``conv2d_fwd`` of the native namespace has its Autograd kernel in C++ instead
(csrc/conv2d_autograd.cpp: the same three paths and formula, without Python on either pass, which
was a tenth of a small layer's time); :func:`register_differentiable` leaves it in place.

Autocast follows torch's policy for the op replaced, registered at ``AutocastCPU`` / ``AutocastCUDA``
so it also holds inside torch.compile and export: conv2d and linear_relu run in the autocast dtype
(like ``aten::conv2d`` / ``aten::linear``), cross_entropy in float32 (like ``aten::cross_entropy_loss``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

_LIBS: dict[str, torch.library.Library] = {}


def _lib(namespace: str) -> torch.library.Library:
    if namespace not in _LIBS:
        _LIBS[namespace] = torch.library.Library(namespace, "IMPL")
    return _LIBS[namespace]


def _impl(overload: torch._ops.OpOverload, fn: Callable[..., Any], key: str, *, with_keyset: bool = False) -> None:
    """Register ``fn`` as ``overload``'s kernel at dispatch key ``key``.

    The Triton ops are ``torch.library.custom_op``s, which come with an Autograd kernel of their own
    (the one whose autograd.Function torch.func refuses). torch >= 2.12 lets a Library override it;
    torch 2.11 (the GPU image's) refuses in Python before the dispatcher is asked, through a
    registry of the keys Python has registered. Dropping the op's key from that registry is what
    the newer ``allow_override=True`` default amounts to; the dispatcher itself takes the new kernel.
    """
    lib = _lib(overload.namespace)
    try:
        lib.impl(overload._opname, fn, key, with_keyset=with_keyset)
    except RuntimeError as exc:
        if "already a kernel registered from python" not in str(exc):
            raise
        torch.library._impls.discard(f"{overload.namespace}/{overload._opname}/{key}")
        lib.impl(overload._opname, fn, key, with_keyset=with_keyset)


def _flat_tensors(args: Sequence[Any]) -> list[Tensor]:
    out: list[Tensor] = []
    for a in args:
        if isinstance(a, Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(t for t in a if isinstance(t, Tensor))
    return out


def _needs_grad(args: Sequence[Any]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in _flat_tensors(args))


def _functorch_active() -> bool:
    return torch._C._are_functorch_transforms_active()


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


def register_differentiable(
    op: torch._ops.OpOverloadPacket,
    *,
    setup_context: Callable[[Any, tuple[Any, ...], Any], None],
    backward: Callable[..., tuple[Tensor | None, ...]],
    composition: Callable[..., Any],
) -> type[torch.autograd.Function]:
    """Register the Autograd kernel and a vmap rule of ``op`` (a ``torch.ops.<ns>.<name>`` packet).

    setup_context(ctx, inputs, output) saves what backward needs (``ctx.mark_non_differentiable``
    for outputs without gradients); backward(ctx, *grad_outputs) returns one gradient (or None) per
    op argument. composition(*args) computes the op's outputs with differentiable torch ops: it runs
    under functorch transforms and is the ground truth of the second derivative.
    Returns the autograd.Function (tests use it).
    """
    overload = op.default

    class OpFunction(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(*args: Any) -> Any:  # noqa: ANN401 - the op's outputs
            # Straight to the kernel below autograd: calling the op would enter autograd_kernel
            # again (a second Python trip and a boxed redispatch) only to take its no-grad path.
            with torch._C._AutoDispatchBelowAutograd():
                return overload(*args)

        @staticmethod
        def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:  # noqa: ANN401
            setup_context(ctx, inputs, output)

        @staticmethod
        def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:  # noqa: ANN401
            return backward(ctx, *grads)

    OpFunction.__name__ = OpFunction.__qualname__ = f"{overload._opname}_Function"
    # Function.apply binds its arguments to forward's signature on every call (setup_context-style
    # Functions); inspect.signature() takes a cached __signature__ instead of rebuilding it, which
    # was a third of a small op's Python cost.
    OpFunction.forward.__signature__ = inspect.signature(OpFunction.forward)  # type: ignore[attr-defined]

    def autograd_kernel(keyset: torch._C.DispatchKeySet, *args: Any) -> Any:  # noqa: ANN401
        if not _needs_grad(args):
            with torch._C._AutoDispatchBelowAutograd():
                return overload.redispatch(keyset & torch._C._after_autograd_keyset, *args)
        if _functorch_active():
            return composition(*args)
        return OpFunction.apply(*args)

    if not has_cpp_autograd_kernel(overload):
        _impl(overload, autograd_kernel, "Autograd", with_keyset=True)
    torch.library.register_vmap(overload, _loop_vmap_rule(overload), lib=_lib(overload.namespace))
    return OpFunction


def has_cpp_autograd_kernel(overload: torch._ops.OpOverload) -> bool:
    """Whether the extension registered ``overload``'s Autograd kernel in C++ (``conv2d_fwd``:
    csrc/conv2d_autograd.cpp, the same formula as the op's Python setup_context / backward, without
    Python on either pass). The Python kernel is then not registered over it; the Python vmap rule,
    autocast kernel and the ``_bwd`` op's derivative still are."""
    # Only the extension's own namespace: a Triton custom_op has a (Python) Autograd kernel too.
    return overload.namespace == "fastops" and torch._C._dispatch_has_kernel_for_dispatch_key(
        overload.name(), "Autograd"
    )


def register_in_place(op: torch._ops.OpOverloadPacket) -> None:
    """Autograd kernel of an op that writes into its arguments (``cross_entropy_bwd_``, ``adam_step_``):
    it has no derivative, so with grad mode on and a written tensor that requires grad it raises
    (as torch does for an in-place op on a leaf that requires grad), and otherwise runs below autograd.
    The version counters are bumped by the native ADInplaceOrView kernel / custom_op's mutation
    handling."""
    overload = op.default
    schema_args = overload._schema.arguments
    written = [i for i, a in enumerate(schema_args) if a.alias_info is not None and a.alias_info.is_write]

    def kernel(keyset: torch._C.DispatchKeySet, *args: Any) -> Any:  # noqa: ANN401
        if torch.is_grad_enabled():
            for i in written:
                if any(t.requires_grad for t in _flat_tensors([args[i]])):
                    raise RuntimeError(
                        f"{overload._opname}: {schema_args[i].name} requires grad and is written in place by an "
                        "op without a derivative; call it under torch.no_grad() (as optimizers and backward "
                        "passes do)"
                    )
        with torch._C._AutoDispatchBelowAutograd():
            return overload.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    _impl(overload, kernel, "Autograd", with_keyset=True)


def recomputed_backward(composition: Callable[..., Any]) -> tuple[Callable[..., None], Callable[..., Any]]:
    """(setup_context, backward) that differentiate ``composition`` (the op's torch form) at the
    saved inputs: for the ``_bwd`` ops, whose own derivative (a second derivative of the loss) is
    needed only for double backward.

    The partial derivatives are taken at detached copies of the inputs: an input of a ``_bwd`` op is
    often a function of another (grad_out of ``(out ** 2).sum()`` is ``2 out``), and differentiating
    through the originals would add that path into the partials, and reach into graph nodes the
    running backward has already freed. A third derivative (this backward under ``create_graph``)
    would need the partials as functions of the originals: it raises instead of returning values
    silently cut off from them.
    """

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:  # noqa: ANN401
        positions = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
        ctx.save_for_backward(*[inputs[i] for i in positions])
        ctx.positions = positions
        ctx.others = [None if isinstance(a, Tensor) else a for a in inputs]

    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # noqa: ANN401
        if torch.is_grad_enabled():
            raise NotImplementedError(
                "fastops: derivatives of third order and above are not implemented (the backward of a "
                "fastops backward op was asked for create_graph=True)"
            )
        args = list(ctx.others)
        for i, t in zip(ctx.positions, ctx.saved_tensors):
            args[i] = t.detach().requires_grad_(ctx.needs_input_grad[i])
        want = [i for i in ctx.positions if ctx.needs_input_grad[i]]
        result: list[Tensor | None] = [None] * len(args)
        with torch.enable_grad():
            outs = _as_tuple(composition(*args))
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
            if not want or not pairs:
                return tuple(result)
            found = torch.autograd.grad(
                [o for o, _ in pairs], [args[i] for i in want], [g for _, g in pairs], allow_unused=True
            )
        for i, g in zip(want, found):
            result[i] = g
        return tuple(result)

    return setup_context, backward


def _loop_vmap_rule(overload: torch._ops.OpOverload) -> Callable[..., Any]:
    """vmap over any op: one call per batch element, outputs stacked on dim 0."""

    def rule(info: Any, in_dims: tuple[Any, ...], *args: Any) -> tuple[Any, Any]:  # noqa: ANN401
        size = info.batch_size
        per_sample = []
        for b in range(size):
            sample = [
                a.select(d, b) if isinstance(a, Tensor) and d is not None else a
                for a, d in zip(args, in_dims, strict=True)
            ]
            per_sample.append(_as_tuple(overload(*sample)))
        if not per_sample:
            raise ValueError(f"{overload}: vmap over a batch of size 0")
        stacked = tuple(torch.stack([s[k] for s in per_sample]) for k in range(len(per_sample[0])))
        single = not isinstance(overload._schema.returns, list) or len(overload._schema.returns) == 1
        return (stacked[0], 0) if single else (stacked, (0,) * len(stacked))

    return rule


def register_autocast(
    op: torch._ops.OpOverloadPacket, *, to_float32: bool, devices: Sequence[str] = ("cpu", "cuda")
) -> None:
    """Autocast kernels for ``op``: floating tensor arguments on the autocast device are cast to the
    autocast dtype (``to_float32=False``: torch's lower-precision ops, conv2d / linear) or to float32
    (``to_float32=True``: torch's fp32 ops, cross_entropy), then the op runs with autocast off."""
    overload = op.default
    for device in devices:
        key = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}[device]

        def kernel(*args: Any, _device: str = device, _key: str = key) -> Any:  # noqa: ANN401
            dtype = torch.float32 if to_float32 else torch.get_autocast_dtype(_device)
            cast = [cast_for_autocast(a, _device, dtype) for a in args]
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, _key))):
                return overload(*cast)

        _impl(overload, kernel, key)


def cast_for_autocast(value: Any, device: str, dtype: torch.dtype) -> Any:  # noqa: ANN401
    """``value`` cast to ``dtype`` when it is a floating tensor on ``device`` (lists element-wise)."""
    if isinstance(value, Tensor):
        if value.is_floating_point() and value.device.type == device and value.dtype != dtype:
            return value.to(dtype)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(cast_for_autocast(v, device, dtype) for v in value)
    return value


def autocast_dtype(device: str, to_float32: bool) -> torch.dtype | None:
    """The dtype autocast gives an op's inputs on ``device`` now, or None when autocast is off there."""
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    return torch.float32 if to_float32 else torch.get_autocast_dtype(device)
