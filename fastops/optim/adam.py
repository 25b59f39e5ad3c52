"""``Adam`` and ``AdamW``: torch.optim.Adam / AdamW whose step is one fused fastops ``adam_step_`` call.

Thin: the classes collect the parameters with gradients and their state exactly as torch does
(``state["step"]`` a float32 scalar tensor, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` in the
parameter's dtype and layout), so ``state_dict()`` has torch's format and a checkpoint moves between
torch's optimizers and these both ways. The math is in :func:`fastops.ops.adam.adam_step_`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.optimizer import ParamsT

from fastops.ops import adam as adam_ops


class Adam(torch.optim.Adam):
    """torch.optim.Adam with a fused multi-tensor step.

    Same arguments as :class:`torch.optim.Adam` (``lr`` a float or a one-element tensor), plus
    ``backend`` (``"auto"``, ``"native"``, ``"triton"``, ``"torch"``). ``foreach`` and ``fused`` are
    accepted for compatibility and ignored (the step is always fused); ``capturable`` is accepted
    (steps live on the parameter's device anyway); ``differentiable=True`` is not supported.
    Works with ``torch.amp.GradScaler`` like torch's fused Adam: the scaler's ``grad_scale`` and
    ``found_inf`` go to the kernel, which unscales and skips an overflow step without a host sync.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        backend: str = "auto",
    ) -> None:
        if differentiable:
            raise RuntimeError("fastops.optim.Adam does not support differentiable=True")
        if isinstance(betas[0], torch.Tensor) or isinstance(betas[1], torch.Tensor):
            betas = (float(betas[0]), float(betas[1]))
        adam_ops.check_hyperparameters(lr, betas, eps, weight_decay)
        # torch rejects a tensor lr with foreach=True (its foreach kernels take a float); ours is fused.
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            foreach=None,
            maximize=maximize,
            capturable=capturable,
            differentiable=False,
            fused=None,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        del foreach, fused
        self.backend = backend
        # GradScaler then sets self.grad_scale / self.found_inf instead of unscaling the grads itself.
        self._step_supports_amp_scaling = True

    def _collect(
        self, group: dict
    ) -> tuple[
        list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list
    ]:
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")
            if torch.is_complex(p):
                raise TypeError("fastops.optim.Adam does not support complex parameters")
            state = self.state[p]
            if len(state) == 0:
                # On CPU exactly torch's state; on other devices the step lives with the parameter,
                # as with torch's fused/capturable Adam, so the kernel reads it without a sync.
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            step = state["step"]
            if not torch.is_tensor(step) or step.dtype != torch.float32 or step.device != p.device:
                # A checkpoint from torch's non-fused Adam keeps steps on the CPU (or as floats).
                step = torch.as_tensor(step, dtype=torch.float32).to(p.device).reshape(())
                state["step"] = step
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(step)
        return params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            lists = self._collect(group)
            if not lists[0]:
                continue
            beta1, beta2 = group["betas"]
            adam_ops.adam_step_(
                *lists,
                lr=group["lr"],
                beta1=float(beta1),
                beta2=float(beta2),
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                amsgrad=group["amsgrad"],
                maximize=group["maximize"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                grad_scale=grad_scale,
                found_inf=found_inf,
                backend=self.backend,
            )
        return loss


class AdamW(Adam):
    """torch.optim.AdamW (decoupled weight decay, default 1e-2) with a fused multi-tensor step.

    Same arguments as :class:`torch.optim.AdamW`, plus ``backend``; see :class:`Adam`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            backend=backend,
        )
