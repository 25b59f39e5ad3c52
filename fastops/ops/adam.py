"""Adam / AdamW step: the op's contract (:func:`check_op_args`, which is also its fake kernel), and the
multi-tensor dispatcher.

There is no autograd here (an optimizer step is not differentiated): :func:`adam_step_` groups the
parameters by (device, dtype) and calls ``adam_step_`` of the chosen backend per group, which checks
its own arguments (the torch path runs the contract first):
``torch.ops.fastops.adam_step_`` (native), ``torch.ops.fastops_triton.adam_step_`` (Triton) or
:func:`fastops.reference.adam_step_` (torch).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch._subclasses.fake_tensor import is_fake

from fastops import _backend, reference
from fastops.ops import _autograd, namespace
from fastops.ops._contract import dtype_str, num_str, shape_str

OP = "adam"

_backend.register_op(
    OP,
    native_schema="adam_step_",
    native={"cpu": _backend.ALL_FLOAT_DTYPES, "cuda": _backend.ALL_FLOAT_DTYPES},
    triton={"cuda": _backend.ALL_FLOAT_DTYPES, "cpu": _backend.ALL_FLOAT_DTYPES},
)

SCHEMA = (
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
    "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, float lr, Tensor? lr_tensor, float beta1, "
    "float beta2, float weight_decay, float eps, bool amsgrad, bool maximize, bool decoupled_weight_decay, "
    "Tensor? grad_scale, Tensor? found_inf) -> ()"
)


def may_overlap(t: torch.Tensor) -> bool:
    """True when two elements of ``t`` may share memory (csrc/fastops.h may_overlap): stride 0 on a
    dimension of size > 1, or strides that, sorted, do not each exceed the span of the smaller ones.
    A tensor without elements has none to share (ATen's has_internal_overlap says No), whatever its
    strides: elementwise ops give an empty (2, 0, 1) input the strides (0, 1, 0)."""
    if t.numel() == 0:
        return False
    dims = sorted((abs(st), n) for st, n in zip(t.stride(), t.shape) if n > 1)
    span = 0
    for stride, size in dims:
        if stride <= span:
            return True
        span += stride * (size - 1)
    return False


def check_hyperparameters(
    lr: float | torch.Tensor, betas: tuple[float, float], eps: float, weight_decay: float
) -> None:
    """torch.optim.Adam's ValueErrors for out-of-range hyperparameters."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def check_op_args(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    lr: float,
    lr_tensor: torch.Tensor | None,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: torch.Tensor | None,
    found_inf: torch.Tensor | None,
) -> None:
    """The registered op's contract for one (device, dtype) group: csrc/fastops.h check_adam_args, in
    its order and with its text, plus csrc/cpu/adam.cpp's ``lr_tensor >= 0`` on CPU. It takes the
    op's schema arguments, and is also the op's fake kernel (:data:`adam_step_fake`): the step
    writes only into its arguments, so there is nothing to allocate, and a meta tensor among CPU
    ones, which dispatches to the fake kernel (Meta outranks CPU), is rejected with the native text
    instead of a step that silently does nothing.

    Raises ValueError / TypeError naming the list, the index and the expected vs given shape, dtype
    or device. Metadata only (traceable), except the CPU lr_tensor read.
    """
    op = "adam_step_"
    n = len(params)
    lengths = [len(grads), len(exp_avgs), len(exp_avg_sqs), len(state_steps)]
    if any(k != n for k in lengths):
        raise ValueError(
            f"{op}: params, grads, exp_avgs, exp_avg_sqs and state_steps must have the same length, "
            f"got {', '.join(map(str, [n, *lengths]))}"
        )
    if len(max_exp_avg_sqs) != (n if amsgrad else 0):
        raise ValueError(
            f"{op}: max_exp_avg_sqs must have {n if amsgrad else 0} tensors (amsgrad={int(amsgrad)}), "
            f"got {len(max_exp_avg_sqs)}"
        )
    for bad, what, value in (
        (not lr >= 0.0, "Invalid learning rate", lr),
        (not eps >= 0.0, "Invalid epsilon value", eps),
        (not 0.0 <= beta1 < 1.0, "Invalid beta parameter at index 0", beta1),
        (not 0.0 <= beta2 < 1.0, "Invalid beta parameter at index 1", beta2),
        (not weight_decay >= 0.0, "Invalid weight_decay value", weight_decay),
    ):
        if bad:
            raise ValueError(f"{op}: {what}: {num_str(value)}")
    if n == 0:
        return
    dev, dt = params[0].device, params[0].dtype
    if not dt.is_floating_point:
        raise TypeError(f"{op}: params must be floating, got {dtype_str(dt)}")
    for name, t in (("lr_tensor", lr_tensor), ("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is None:
            continue
        if t.numel() != 1:
            raise ValueError(f"{op}: {name} must have one element, got shape {shape_str(t.shape)}")
        if t.device != dev:
            raise ValueError(f"{op}: {name} is on {t.device} but params are on {dev}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{op}: {name} must be floating, got {dtype_str(t.dtype)}")
    for i, p in enumerate(params):
        if p.device != dev:
            raise ValueError(
                f"{op}: all params must be on one device; params[0] is on {dev} but params[{i}] is on {p.device}"
            )
        if p.dtype != dt:
            raise TypeError(
                f"{op}: all params must have one dtype; params[0] is {dtype_str(dt)} but params[{i}] is "
                f"{dtype_str(p.dtype)}"
            )
        if grads[i].is_sparse:
            raise ValueError(
                f"{op}: Adam does not support sparse gradients, please consider SparseAdam instead (grads[{i}])"
            )
        written = [("params", params), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)]
        written += [("max_exp_avg_sqs", max_exp_avg_sqs)] if amsgrad else []
        for name, lst in written + [("state_steps", state_steps)]:
            if may_overlap(lst[i]):
                raise ValueError(
                    f"{op}: {name}[{i}] has elements that share memory (an expanded or overlapping "
                    f"as_strided view); it is written in place, so it must not"
                )
        others = [("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)]
        if amsgrad:
            others.append(("max_exp_avg_sqs", max_exp_avg_sqs))
        for name, lst in others:
            t = lst[i]
            if t.shape != p.shape:
                raise ValueError(
                    f"{op}: {name}[{i}] must have params[{i}]'s shape {shape_str(p.shape)}, got {shape_str(t.shape)}"
                )
            if t.dtype != dt:
                raise TypeError(
                    f"{op}: {name}[{i}] must have the params' dtype {dtype_str(dt)}, got {dtype_str(t.dtype)}"
                )
            if t.device != dev:
                raise ValueError(f"{op}: {name}[{i}] is on {t.device} but params are on {dev}")
        s = state_steps[i]
        if s.numel() != 1 or s.dtype != torch.float32 or s.device != dev:
            raise ValueError(
                f"{op}: state_steps[{i}] must be a one-element float32 tensor on {dev}, got {dtype_str(s.dtype)} "
                f"of shape {shape_str(s.shape)} on {s.device}"
            )
    # csrc/cpu/adam.cpp reads a CPU lr_tensor (free there); on CUDA that would sync every step (the
    # native CUDA op does not read it either), and under tracing there is no value to read.
    if lr_tensor is not None and lr_tensor.device.type == "cpu" and not is_fake(lr_tensor):
        if not torch.compiler.is_compiling():
            value = float(lr_tensor.reshape(()))
            if not value >= 0.0:
                raise ValueError(f"{op}: Invalid learning rate: {num_str(value)}")


adam_step_fake = check_op_args

if _backend.NATIVE_LOADED:
    torch.library.register_fake("fastops::adam_step_")(adam_step_fake)
    # No derivative: with grad mode on and a parameter that requires grad it raises, as torch's
    # in-place ops on such a leaf do (optimizers step under torch.no_grad()).
    _autograd.register_in_place(torch.ops.fastops.adam_step_)


def _local_shards(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each DTensor replaced by its local shard (the same memory: writes land in the DTensor)."""
    if not any(type(t).__name__ == "DTensor" for t in tensors):
        return tensors
    from torch.distributed.tensor import DTensor

    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def _on(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return t if t is None or t.device == device else t.to(device, non_blocking=True)


def adam_step_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    *,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    backend: str = "auto",
) -> None:
    """One Adam/AdamW step over parameters of any devices and dtypes, in place.

    Lists as in :func:`fastops.reference.adam_step_` (``max_exp_avg_sqs`` empty unless amsgrad). The
    parameters are grouped by (device, dtype); each group runs as one call of the resolved backend's
    op. ``lr``, ``grad_scale`` and ``found_inf`` may be tensors on another device (moved without a
    host sync, as torch's fused Adam does).
    """
    # DTensor parameters (FSDP2's fully_shard, tensor parallel): Adam is elementwise, so each rank
    # steps its local shards; the states made with zeros_like(param) are sharded the same way.
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = (
        _local_shards(lst) for lst in (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs)
    )
    # A tensor lr is not range-checked here: that would read it back from the device every step.
    check_hyperparameters(0.0 if isinstance(lr, torch.Tensor) else lr, (beta1, beta2), eps, weight_decay)
    n = len(params)
    if not amsgrad:
        max_exp_avg_sqs = []
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    lengths = [len(grads), len(exp_avgs), len(exp_avg_sqs), len(state_steps)] + (
        [len(max_exp_avg_sqs)] if amsgrad else []
    )
    if any(k != n for k in lengths):  # before grouping by index: the contract's message
        check_op_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, 0.0, None, beta1, beta2,
                      weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, None, None)  # fmt: skip
    for (device, dtype), idx in groups.items():
        lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
        args = tuple([lst[i] for i in idx] if lst else [] for lst in lists)  # max_exp_avg_sqs: [] unless amsgrad
        lr_tensor = _on(lr, device) if isinstance(lr, torch.Tensor) else None
        kwargs = dict(
            lr=float(lr) if lr_tensor is None else 0.0,
            lr_tensor=lr_tensor,
            beta1=float(beta1),
            beta2=float(beta2),
            weight_decay=float(weight_decay),
            eps=float(eps),
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
            grad_scale=_on(grad_scale, device),
            found_inf=_on(found_inf, device),
        )
        chosen = _backend.resolve(OP, backend, device.type, dtype)
        if chosen == "torch":  # the registered ops check their own arguments
            check_op_args(*args, **kwargs)
            reference.adam_step_(*args, **kwargs)
        else:
            namespace(chosen, OP).adam_step_(*args, **kwargs)


# ---- the calls the generated tests make (tests/test_contract.py) -------------------------------


def opcheck_examples(ns, device: str, backend: str) -> Iterator[tuple[object, tuple, dict]]:  # noqa: ANN001
    """``(op, args, kwargs)``: ``adam_step_`` calls for ``torch.library.opcheck`` over a matrix, a
    vector and a 0-d parameter (float32), with amsgrad and a float lr, and without amsgrad and
    with a tensor lr; both with grad_scale and found_inf."""
    for amsgrad, lr_tensor in ((True, False), (False, True)):
        ps = [torch.randn(s, device=device) for s in [(5, 3), (17,), ()]]
        gs = [torch.randn_like(p) for p in ps]
        ms = [torch.randn_like(p) for p in ps]
        vs = [torch.rand_like(p) for p in ps]
        vms = [v + torch.rand_like(v) for v in vs] if amsgrad else []
        steps = [torch.tensor(float(k + 1), device=device) for k in range(len(ps))]
        kwargs = dict(
            lr=1e-2,
            lr_tensor=torch.tensor(1e-3, device=device) if lr_tensor else None,
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.1,
            eps=1e-8,
            amsgrad=amsgrad,
            maximize=False,
            decoupled_weight_decay=False,
            grad_scale=torch.tensor(4.0, device=device),
            found_inf=torch.zeros((), device=device),
        )
        yield ns.adam_step_, (ps, gs, ms, vs, vms, steps), kwargs
