"""The one pure-PyTorch reference per op, float64-capable.

Tests compare every backend against these run in float64; the ``torch`` backend runs them in the
input's dtype (float16/bfloat16 compute in float32 and round once at the end, like torch's own
kernels). They are written from the formulas, not by calling the torch op they stand in for, so
that a test comparing fastops to torch and to the reference checks two independent things.
"""

from __future__ import annotations

import torch


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Softmax cross-entropy with torch.nn.functional.cross_entropy's semantics.

    Args:
        input: logits ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``, floating.
        target: class indices (int64 or uint8) of ``input``'s shape without the class dim, or class
            probabilities (floating) of ``input``'s shape.
        weight: ``(C,)`` class weights or None.
        ignore_index: class index whose rows contribute nothing (index targets only).
        reduction: ``"none"`` (loss of the row shape), ``"mean"`` or ``"sum"`` (a scalar).
        label_smoothing: in [0, 1]; mixes the target with the uniform distribution.

    Returns:
        The loss in ``input``'s dtype. ``"mean"`` divides by the summed weight of the non-ignored
        targets (index targets) or by the number of rows (probabilities); an empty batch gives NaN.
    """
    cdim = 0 if input.dim() == 1 else 1
    n_classes = input.shape[cdim]
    x = input.to(_compute_dtype(input.dtype))
    # log_softmax computes (x - max) - log sum exp(x - max): exact near the max at any logit offset
    # (x - logsumexp(x) loses ulp(max) / 2, 6e-8 at 1e9 even in float64), and NaN for a row with a
    # +inf logit, as F.cross_entropy.
    logp = torch.log_softmax(x, dim=cdim)
    wshape = [1] * x.dim()
    wshape[cdim] = n_classes
    w = None if weight is None else weight.to(x.dtype).reshape(wshape)
    eps = label_smoothing
    if target.is_floating_point():
        t = target.to(x.dtype) * (1 - eps) + eps / n_classes if eps > 0 else target.to(x.dtype)
        loss = -((t if w is None else t * w) * logp).sum(cdim)
        if reduction == "mean":
            return (loss.sum() / loss.numel()).to(input.dtype)
    else:
        target = target.long()  # uint8 indices compared with a negative ignore_index would wrap
        valid = target != ignore_index
        y = torch.where(valid, target, 0)
        nll = -logp.gather(cdim, y.unsqueeze(cdim)).squeeze(cdim)
        w_y = torch.ones_like(nll) if weight is None else weight.to(x.dtype)[y]
        # Only with smoothing: masked (-inf) logits make this sum infinite, as in torch.
        smooth = -(logp if w is None else logp * w).sum(cdim) if eps > 0 else 0.0
        # where, not a multiply by the mask: ignored rows get an exact zero gradient even when the
        # mean's denominator is 0 (torch's behaviour), instead of 0 * inf = NaN.
        loss = torch.where(valid, (1 - eps) * nll * w_y + eps / n_classes * smooth, 0.0)
        if reduction == "mean":
            # torch's mean is the weighted NLL sum over the summed target weight plus the smoothing
            # sum over the same: NaN (0 / 0) when that weight is 0, even where the smoothing sum alone
            # would give inf.
            denom = torch.where(valid, w_y, 0.0).sum()
            return torch.where(denom == 0, float("nan"), loss.sum() / denom).to(input.dtype)
    if reduction == "sum":
        return loss.sum().to(input.dtype)
    return loss.to(input.dtype)


def linear_cross_entropy(
    input: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight_classes: torch.Tensor | None = None,
    softcap: float | None = None,
    z_loss: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of ``z = softcap(input @ weight.T + bias)`` plus ``z_loss * logsumexp(z)^2`` per row.

    Args:
        input: ``(*, H)`` hidden states, floating.
        weight: ``(V, H)``; bias: ``(V,)`` or None.
        target: class indices of ``input``'s leading shape ``(*)``.
        ignore_index, reduction, label_smoothing: as :func:`cross_entropy`; ``weight_classes`` is its
            ``weight`` (``(V,)`` or None).
        softcap: None, or > 0: ``z = softcap * tanh(logits / softcap)`` before the softmax.
        z_loss: coefficient of ``logsumexp(z)^2``, added to every non-ignored row's loss.

    Returns:
        The loss in ``input``'s dtype: ``(*)`` for ``"none"``, else a scalar. ``"mean"`` divides the
        summed row losses (z-loss included) by the summed class weight of the non-ignored targets
        (NaN when that is 0). Materialises the ``(N, V)`` logits (computed in float32 for float16 /
        bfloat16).
    """
    dt = _compute_dtype(input.dtype)
    x = input.reshape(-1, input.shape[-1]).to(dt)
    logits = x @ weight.to(dt).transpose(0, 1)
    if bias is not None:
        logits = logits + bias.to(dt)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    t = target.reshape(-1).long()
    valid = t != ignore_index
    loss = cross_entropy(logits, t, weight_classes, ignore_index, "none", label_smoothing)
    if z_loss:
        lse = torch.logsumexp(logits, dim=-1)
        loss = loss + torch.where(valid, z_loss * lse * lse, 0.0)
    if reduction == "none":
        return loss.reshape(target.shape).to(input.dtype)
    if reduction == "sum":
        return loss.sum().to(input.dtype)
    w_y = torch.ones_like(loss) if weight_classes is None else weight_classes.to(dt)[torch.where(valid, t, 0)]
    denom = torch.where(valid, w_y, 0.0).sum()
    return torch.where(denom == 0, float("nan"), loss.sum() / denom).to(input.dtype)


def _conv2d_pairs(value: int | tuple[int, ...] | list[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"conv2d: {name} must be an int or a pair, got {value!r}")
    return int(pair[0]), int(pair[1])


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    activation: str | None = None,
) -> torch.Tensor:
    """2-D cross-correlation with torch.nn.functional.conv2d's semantics, written as a sum of shifted
    slices: ``y = sum_{r,s} W[:, :, r, s] . x_pad[:, :, r dh + sh p, s dw + sw q]`` per group.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``, floating.
        weight: ``(K, C / groups, R, S)``.
        bias: ``(K,)`` or None.
        stride, dilation: int or pair. padding: int, pair, ``"valid"`` or ``"same"`` (stride 1;
            an odd total padding puts the extra row / column at the bottom / right, as torch does).
        groups: input and output channels split into this many independent convolutions.
        activation: None or ``"relu"`` (applied after the bias).

    Returns:
        ``(N, K, P, Q)`` (or ``(K, P, Q)``) in ``input``'s dtype, contiguous.
    """
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    sh, sw = _conv2d_pairs(stride, "stride")
    dh, dw = _conv2d_pairs(dilation, "dilation")
    k_out, cg, kr, ks = weight.shape
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        else:
            th, tw = dh * (kr - 1), dw * (ks - 1)
            pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)  # (left, right, top, bottom)
    else:
        ph, pw = _conv2d_pairs(padding, "padding")
        pads = (pw, pw, ph, ph)
    cdt = _compute_dtype(input.dtype)
    x = torch.nn.functional.pad(x.to(cdt), pads)
    w = weight.to(cdt)
    n, c, hp, wp = x.shape
    p_out = (hp - dh * (kr - 1) - 1) // sh + 1
    q_out = (wp - dw * (ks - 1) - 1) // sw + 1
    kg = k_out // groups
    # A stride larger than the input (only possible with one output row / column) would overflow the
    # sliced view's stride (stride * step); the step is irrelevant then.
    sh, sw = (sh if p_out > 1 else 1), (sw if q_out > 1 else 1)
    outs = []
    for g in range(groups):
        xg = x[:, g * cg : (g + 1) * cg]
        wg = w[g * kg : (g + 1) * kg]
        acc = x.new_zeros((n, kg, p_out, q_out))
        for r in range(kr):
            for s in range(ks):
                h0, w0 = r * dh, s * dw
                patch = xg[:, :, h0 : h0 + sh * (p_out - 1) + 1 : sh, w0 : w0 + sw * (q_out - 1) + 1 : sw]
                acc = acc + torch.einsum("nchw,kc->nkhw", patch, wg[:, :, r, s])
        outs.append(acc)
    y = torch.cat(outs, dim=1)
    if bias is not None:
        y = y + bias.to(cdt).view(1, -1, 1, 1)
    if activation == "relu":
        y = torch.relu(y)
    y = y.to(input.dtype).contiguous()
    return y.squeeze(0) if unbatched else y


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``relu(x @ weight.T + bias)``: x ``(*, K)``, weight ``(N, K)``, bias ``(N,)`` or None -> ``(*, N)``.

    Computed in float32 for float16/bfloat16 (rounded once at the end), else in x's dtype. The
    ReLU is ``masked_fill(y <= 0, 0)``: NaN stays NaN, and the derivative is 0 at exactly 0 and 1
    above, torch.relu's convention (``clamp``'s would pass the gradient at 0).
    """
    dt = _compute_dtype(x.dtype)
    y = torch.matmul(x.to(dt), weight.to(dt).transpose(0, 1))
    if bias is not None:
        y = y + bias.to(dt)
    return y.masked_fill(y <= 0, 0).to(x.dtype)


def adam_step_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    *,
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
    """One Adam (``decoupled_weight_decay=False``) or AdamW step, in place, with torch.optim's formulas.

    Args:
        params, grads, exp_avgs, exp_avg_sqs: one tensor per parameter, each list entry of the
            parameter's shape and dtype (any shape, including ``()`` and empty).
        max_exp_avg_sqs: as exp_avgs when ``amsgrad``, else an empty list.
        state_steps: one-element float32 tensors, the step count before this step; incremented.
        lr / lr_tensor: the learning rate; a one-element ``lr_tensor`` replaces ``lr``.
        grad_scale, found_inf: one-element tensors from a GradScaler or None: grads are divided by
            ``grad_scale``; when ``found_inf`` is nonzero nothing changes.

    float16/bfloat16 state is updated in float32 and rounded once per stored value.
    """
    if found_inf is not None and bool(found_inf.item() != 0):
        return
    lr_value = float(lr_tensor.item()) if lr_tensor is not None else lr
    for i, p in enumerate(params):
        dtype = _compute_dtype(p.dtype)
        state_steps[i] += 1
        t = float(state_steps[i].item())
        g = grads[i].to(dtype)
        if grad_scale is not None:
            g = g / grad_scale.to(dtype)
        if maximize:
            g = -g
        x = p.to(dtype)
        if weight_decay != 0:
            if decoupled_weight_decay:
                x = x * (1 - lr_value * weight_decay)
            else:
                g = g + weight_decay * x
        m = exp_avgs[i].to(dtype).lerp(g, 1 - beta1)
        v = exp_avg_sqs[i].to(dtype) * beta2 + (1 - beta2) * g * g
        v_used = v
        if amsgrad:
            v_used = torch.maximum(max_exp_avg_sqs[i].to(dtype), v)
            max_exp_avg_sqs[i].copy_(v_used)
        step_size = lr_value / (1 - beta1**t)
        denom = v_used.sqrt() / (1 - beta2**t) ** 0.5 + eps
        p.copy_(x - step_size * m / denom)
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
