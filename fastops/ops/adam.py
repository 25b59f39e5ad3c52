"""Adam / AdamW step: the fake kernel of the native op, argument checks, and the multi-tensor dispatcher.

There is no autograd here (an optimizer step is not differentiated): :func:`adam_step_` groups the
parameters by (device, dtype), validates once, and calls ``adam_step_`` of the chosen backend per group:
``torch.ops.fastops.adam_step_`` (native), ``torch.ops.fastops_triton.adam_step_`` (Triton) or
:func:`fastops.reference.adam_step_` (torch).
"""

from __future__ import annotations

import torch

from fastops import _backend, reference
from fastops.ops import _autograd
from fastops.ops._devices import check_same_device

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


def adam_step_fake(
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
    """The step writes only into its arguments: nothing to allocate, no shapes to compute. It checks
    that every tensor is on one device: a meta tensor among CPU ones dispatches here (Meta outranks
    CPU), and the step would otherwise silently do nothing."""
    check_same_device(
        "adam_step_",
        params=params,
        grads=grads,
        exp_avgs=exp_avgs,
        exp_avg_sqs=exp_avg_sqs,
        max_exp_avg_sqs=max_exp_avg_sqs,
        state_steps=state_steps,
        lr_tensor=lr_tensor,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )


if _backend.NATIVE_LOADED:
    torch.library.register_fake("fastops::adam_step_")(adam_step_fake)
    # No derivative: with grad mode on and a parameter that requires grad it raises, as torch's
    # in-place ops on such a leaf do (optimizers step under torch.no_grad()).
    _autograd.register_in_place(torch.ops.fastops.adam_step_)


def may_overlap(t: torch.Tensor) -> bool:
    """True when two elements of ``t`` may share memory (csrc/fastops.h may_overlap): stride 0 on a
    dimension of size > 1, or strides that, sorted, do not each exceed the span of the smaller ones."""
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


def check_args(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    amsgrad: bool,
) -> None:
    """The native op's checks (csrc/fastops.h check_adam_args) for one (device, dtype) group, in Python.

    Raises ValueError / TypeError naming the list, the index and the expected vs given shape, dtype
    or device.
    """
    n = len(params)
    lengths = [len(grads), len(exp_avgs), len(exp_avg_sqs), len(state_steps)]
    if any(k != n for k in lengths):
        raise ValueError(
            f"adam_step_: params, grads, exp_avgs, exp_avg_sqs and state_steps must have the same length, "
            f"got {[n, *lengths]}"
        )
    if len(max_exp_avg_sqs) != (n if amsgrad else 0):
        raise ValueError(
            f"adam_step_: max_exp_avg_sqs must have {n if amsgrad else 0} tensors (amsgrad={amsgrad}), "
            f"got {len(max_exp_avg_sqs)}"
        )
    if n == 0:
        return
    dev, dt = params[0].device, params[0].dtype
    if not dt.is_floating_point:
        raise TypeError(f"adam_step_: params must be floating, got {dt}")
    for i, p in enumerate(params):
        if p.device != dev:
            raise ValueError(
                f"adam_step_: all params must be on one device; params[0] is on {dev} but params[{i}] is on {p.device}"
            )
        if p.dtype != dt:
            raise TypeError(
                f"adam_step_: all params must have one dtype; params[0] is {dt} but params[{i}] is {p.dtype}"
            )
        if grads[i].is_sparse:
            raise ValueError(
                f"adam_step_: Adam does not support sparse gradients, please consider SparseAdam instead (grads[{i}])"
            )
        written = [("params", params), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)]
        written += [("max_exp_avg_sqs", max_exp_avg_sqs)] if amsgrad else []
        for name, lst in written + [("state_steps", state_steps)]:
            if may_overlap(lst[i]):
                raise ValueError(
                    f"adam_step_: {name}[{i}] has elements that share memory (an expanded or overlapping "
                    f"as_strided view); it is written in place, so it must not"
                )
        others = [("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)]
        if amsgrad:
            others.append(("max_exp_avg_sqs", max_exp_avg_sqs))
        for name, lst in others:
            t = lst[i]
            if t.shape != p.shape:
                raise ValueError(
                    f"adam_step_: {name}[{i}] must have params[{i}]'s shape {tuple(p.shape)}, got {tuple(t.shape)}"
                )
            if t.dtype != dt:
                raise TypeError(f"adam_step_: {name}[{i}] must have the params' dtype {dt}, got {t.dtype}")
            if t.device != dev:
                raise ValueError(f"adam_step_: {name}[{i}] is on {t.device} but params are on {dev}")
        s = state_steps[i]
        if s.numel() != 1 or s.dtype != torch.float32 or s.device != dev:
            raise ValueError(
                f"adam_step_: state_steps[{i}] must be a one-element float32 tensor on {dev}, got {s.dtype} "
                f"of shape {tuple(s.shape)} on {s.device}"
            )


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
    if len(grads) != n or len(exp_avgs) != n or len(exp_avg_sqs) != n or len(state_steps) != n:
        check_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad)
    if amsgrad and len(max_exp_avg_sqs) != n:
        check_args(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad)
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
        if chosen == "native":
            torch.ops.fastops.adam_step_(*args, **kwargs)
        elif chosen == "triton":
            check_args(*args, amsgrad)
            import fastops.triton

            fastops.triton.load("adam")
            torch.ops.fastops_triton.adam_step_(*args, **kwargs)
        else:
            check_args(*args, amsgrad)
            reference.adam_step_(*args, **kwargs)
