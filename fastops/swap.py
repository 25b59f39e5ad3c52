"""fastops.swap: put fastops modules into an existing model, in place.

The swap changes the class of the existing module object (``module.__class__``) to the fastops
subclass instead of building a new module, so everything a user holds on to survives by
construction: the parameters are the same tensor objects (an optimizer built before the swap keeps
working), ``state_dict()`` keys and values are unchanged, hooks, train/eval mode and any extra
attributes stay. Only the class, and so ``forward``, changes.

Rules:
  nn.Conv2d                        -> fastops.nn.Conv2d
  nn.Conv2d then nn.ReLU in an nn.Sequential
                                   -> fastops.nn.Conv2dReLU, and nn.Identity in the ReLU's slot
  nn.Linear then nn.ReLU in an nn.Sequential
                                   -> fastops.nn.LinearReLU, and nn.Identity in the ReLU's slot
  nn.CrossEntropyLoss              -> fastops.nn.CrossEntropyLoss
Only exact torch classes are swapped: a user subclass may override forward, and swapping its class
would drop that. Every configuration of these classes is supported (the ``torch`` backend runs
anything the kernels do not take), so a module is left only for a reason of the model's structure,
which the report gives: a Linear with no ReLU to fuse, or a hook that would see the pre-activation
(a Conv2d with such a hook is still swapped, unfused).
The rules are read from the op registry, :data:`fastops.ops.OPS`. For a swapped CPU conv the
report also says what ``backend="auto"`` runs at the weight's dtype: the native kernel, or torch's
own conv2d for a shape class the kernel was measured slower on
(:func:`fastops.ops.conv2d.cpu_auto_uses_torch`), so a swap does not knowingly slow a layer down.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

import fastops.nn as fnn
from fastops.ops import OPS
from fastops.ops import conv2d as _conv
from fastops.ops import cross_entropy as _ce
from fastops.ops import linear_relu as _lr


@dataclass
class SwapReport:
    """What :func:`swap` replaced and what it left, with the reason."""

    replaced: list[tuple[str, str, str]] = field(default_factory=list)  # (name, from class, to class)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (name, class, reason)

    def __str__(self) -> str:
        lines = [f"fastops.swap: {len(self.replaced)} replaced, {len(self.skipped)} left"]
        lines += [f"  replaced {name or '<root>'}: {a} -> {b}" for name, a, b in self.replaced]
        lines += [f"  left     {name or '<root>'} ({cls}): {why}" for name, cls, why in self.skipped]
        return "\n".join(lines)


Module = type[nn.Module]


def _rules() -> tuple[dict[Module, Module], dict[tuple[Module, Module], Module]]:
    """(torch class -> fastops class, (torch class, next torch class) -> fused fastops class), from
    :data:`fastops.ops.OPS`."""
    drop_ins, pairs = {}, {}
    for names in OPS.values():
        for name in names:
            parts = name.split("+")
            ours = getattr(fnn, "".join(parts))
            if len(parts) == 1:
                drop_ins[getattr(nn, name)] = ours
            else:
                first, second = (getattr(nn, p) for p in parts)
                pairs[(first, second)] = ours
    return drop_ins, pairs


def _selected(
    name: str,
    module: nn.Module,
    include: Iterable[type | str] | None,
    exclude: Iterable[type | str] | None,
) -> bool:
    def hit(patterns: Iterable[type | str]) -> bool:
        return any(
            (isinstance(p, type) and isinstance(module, p)) or (isinstance(p, str) and fnmatch.fnmatchcase(name, p))
            for p in patterns
        )

    if include is not None and not hit(include):
        return False
    return not (exclude is not None and hit(exclude))


def _convert(module: nn.Module, cls: type[nn.Module], backend: str) -> None:
    # fastops modules keep their extra settings' defaults as class attributes, so the changed
    # class is a complete module without running its __init__.
    module.__class__ = cls
    module.backend = backend


def _runs_on(module: nn.Module, backend: str) -> str:
    """Which implementation a swapped CPU module runs under ``backend="auto"``: for a conv (at the
    weight's dtype) the native kernel or torch's own conv2d for a shape class the kernel was measured
    slower on; for linear+ReLU and cross-entropy, the per-call size below which torch's own ops run."""
    weight = getattr(module, "weight", None)
    device = weight.device.type if isinstance(weight, torch.Tensor) else "cpu"
    if backend != "auto" or device != "cpu":
        return ""
    if isinstance(module, nn.Conv2d):
        w = module.weight
        why = _conv.cpu_auto_uses_torch(w.dtype, w.shape, list(module.stride))
        dtype = str(w.dtype).replace("torch.", "")
        padding = [1, 1] if module.padding == "same" else [0, 0] if module.padding == "valid" else module.padding
        args = (w.dtype, w.shape, list(module.stride), list(padding), list(module.dilation), module.groups)
        zeros = module.padding_mode == "zeros"
        least = _conv.cpu_auto_native_min_pixels(*args) if zeros else 0
        small = _conv.cpu_auto_small_output_rule(*args) if zeros else None
        if why and (least or small):
            ranges = []
            if least:
                kind = "Winograd" if _conv.cpu_auto_winograd_class(*args) else "register-blocked"
                ranges.append(f"native {kind} for outputs of at least {least} pixels")
            if small:
                most_pixels, least_rows, most_rows = small
                pixels = f"at most {most_pixels} pixels and " if most_pixels < most_rows else ""
                ranges.append(f"native for outputs of {pixels}{least_rows}-{most_rows} rows (batch x pixels)")
            return f" (CPU {dtype}: {', '.join(ranges)}, else torch's conv2d, native measured slower elsewhere)"
        if why:
            return f" (CPU {dtype}: torch's conv2d, native measured slower on {why})"
        return f" (CPU {dtype}: native)"
    if isinstance(module, nn.Linear):
        limit = _lr.CPU_AUTO_TORCH_BELOW.bit_length() - 1
        out_limit = _lr.CPU_AUTO_TORCH_OUTPUT_BELOW.bit_length() - 1
        return (
            f" (CPU: native; torch's linear + relu for calls under 2^{limit} multiply-adds, and float32 /"
            f" float64 ones under 2^{out_limit} outputs)"
        )
    if isinstance(module, nn.CrossEntropyLoss):
        limit = _ce.CPU_AUTO_TORCH_BELOW.bit_length() - 1
        return f" (CPU: native; torch's cross_entropy for logits under 2^{limit} elements)"
    return ""


def swap(
    model: nn.Module,
    *,
    backend: str = "auto",
    include: Iterable[type | str] | None = None,
    exclude: Iterable[type | str] | None = None,
) -> SwapReport:
    """Replace torch modules inside ``model`` (in place) with their fastops drop-ins.

    Args:
        model: any module tree; it may itself be one of the swappable modules.
        backend: the ``backend`` the swapped modules run with (see :func:`fastops.backends`).
        include: only modules of these types or whose qualified names match these fnmatch
            patterns (e.g. ``"layer1.*"``) are considered.
        exclude: modules of these types or matching these patterns are left alone.

    Returns:
        A :class:`SwapReport` listing every replacement and every candidate left, with why.
    """
    include = list(include) if include is not None else None
    exclude = list(exclude) if exclude is not None else None
    drop_ins, pairs = _rules()
    report = SwapReport()
    fused: set[int] = set()

    # Fusable pairs inside Sequentials first: a module of a pair's first class that is not in such a
    # pair is not swapped.
    for seq_name, seq in model.named_modules():
        if type(seq) is not nn.Sequential:
            continue
        children = list(seq.named_children())
        for (first_key, first), (second_key, second) in zip(children, children[1:]):
            cls = pairs.get((type(first), type(second)))
            if cls is None or id(first) in fused:
                continue
            name = f"{seq_name}.{first_key}" if seq_name else first_key
            if not _selected(name, first, include, exclude):
                continue
            label = f"{type(first).__name__}+{type(second).__name__}"
            if first._forward_hooks or first._forward_pre_hooks or second._forward_hooks or second._forward_pre_hooks:
                if type(first) in drop_ins:
                    continue  # swapped alone below (a Conv2d); the ReLU stays
                why = (
                    f"a hook on the {type(first).__name__} or the {type(second).__name__} would see the "
                    "pre-activation, which the fused op never forms"
                )
                report.skipped.append((name, label, why))
                continue
            _convert(first, cls, backend)
            setattr(seq, second_key, nn.Identity())
            fused.add(id(first))
            note = (
                f" (the {type(second).__name__} was inplace=True; the fused op writes the activated output once)"
                if getattr(second, "inplace", False)
                else ""
            )
            report.replaced.append((name, label, cls.__name__ + " + Identity" + _runs_on(first, backend) + note))

    pair_firsts = {a: b for a, b in pairs}
    for name, module in model.named_modules():
        cls = type(module)
        if id(module) in fused or not _selected(name, module, include, exclude):
            continue
        if cls in drop_ins:
            _convert(module, drop_ins[cls], backend)
            report.replaced.append((name, cls.__name__, drop_ins[cls].__name__ + _runs_on(module, backend)))
        elif cls in pair_firsts and not any(n == name for n, _, _ in report.skipped):
            after = pair_firsts[cls].__name__
            why = f"not directly followed by an nn.{after} inside an nn.Sequential (nothing to fuse)"
            report.skipped.append((name, cls.__name__, why))
    report.skipped += _functional_losses(model, include, exclude)
    return report


# Issue 13.5: what swap cannot reach. A Hugging Face causal LM computes its loss in forward
# (self.loss_function(self.lm_head(hidden), labels)), not in a module, so no class swap touches it;
# the report says so and names the tool that does.
def _functional_losses(
    model: nn.Module, include: Iterable[type | str] | None, exclude: Iterable[type | str] | None
) -> list[tuple[str, str, str]]:
    """(name, class, why) for every module whose loss is computed functionally, not by a module."""
    from fastops.hf import is_patched

    found = []
    for name, module in model.named_modules():
        if not (hasattr(type(module), "loss_function") and isinstance(getattr(module, "lm_head", None), nn.Linear)):
            continue
        if not _selected(name, module, include, exclude):
            continue
        why = (
            "its loss is computed functionally (self.loss_function on the lm_head logits), which no module swap "
            "reaches; fastops.patch_causal_lm(model) computes it with the fused linear_cross_entropy"
        )
        if is_patched(module):
            why = "its loss is computed functionally; already patched by fastops.patch_causal_lm (fused loss)"
        found.append((name, type(module).__name__, why))
    return found
