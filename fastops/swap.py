"""fastops.swap: put fastops modules into an existing model, in place.

The swap changes the class of the existing module object (``module.__class__``) to the fastops
subclass instead of building a new module, so everything a user holds on to survives by
construction: the parameters are the same tensor objects (an optimizer built before the swap keeps
working), ``state_dict()`` keys and values are unchanged, hooks, train/eval mode and any extra
attributes stay. Only the class, and so ``forward``, changes.

Rules:
  nn.Conv2d                        -> fastops.nn.Conv2d
  nn.Linear then nn.ReLU in an nn.Sequential
                                   -> fastops.nn.LinearReLU, and nn.Identity in the ReLU's slot
  nn.CrossEntropyLoss              -> fastops.nn.CrossEntropyLoss
Only exact torch classes are swapped: a user subclass may override forward, and swapping its class
would drop that. A module that no fastops backend supports stays untouched, never half-converted.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

import fastops.nn as fnn


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


def _targets() -> dict[type[nn.Module], type[nn.Module]]:
    """torch class -> fastops class, for the fastops modules this build has."""
    rules = {
        nn.Conv2d: getattr(fnn, "Conv2d", None),
        nn.Linear: getattr(fnn, "LinearReLU", None),
        nn.CrossEntropyLoss: getattr(fnn, "CrossEntropyLoss", None),
    }
    return {k: v for k, v in rules.items() if v is not None}


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


def _unsupported(cls: type[nn.Module], module: nn.Module) -> str | None:
    """The fastops class's own verdict on the module's arguments (None: supported)."""
    check = getattr(cls, "unsupported_reason", None)
    return check(module) if check is not None else None


def _convert(module: nn.Module, cls: type[nn.Module], backend: str) -> None:
    # fastops modules keep their extra settings' defaults as class attributes, so the changed
    # class is a complete module without running its __init__.
    module.__class__ = cls
    module.backend = backend


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
    targets = _targets()
    report = SwapReport()
    fused_linears: set[int] = set()

    # Linear + ReLU pairs inside Sequentials first: a Linear not in such a pair is not swapped.
    for seq_name, seq in model.named_modules():
        if type(seq) is not nn.Sequential or nn.Linear not in targets:
            continue
        children = list(seq.named_children())
        for (lin_key, lin), (relu_key, relu) in zip(children, children[1:]):
            if type(lin) is not nn.Linear or type(relu) is not nn.ReLU:
                continue
            name = f"{seq_name}.{lin_key}" if seq_name else lin_key
            if not _selected(name, lin, include, exclude):
                continue
            why = None
            if lin._forward_hooks or lin._forward_pre_hooks or relu._forward_hooks or relu._forward_pre_hooks:
                why = "a hook on the Linear or the ReLU would see the pre-activation, which the fused op never forms"
            else:
                why = _unsupported(targets[nn.Linear], lin)
            if why:
                report.skipped.append((name, "Linear+ReLU", why))
                continue
            _convert(lin, targets[nn.Linear], backend)
            setattr(seq, relu_key, nn.Identity())
            fused_linears.add(id(lin))
            note = " (the ReLU was inplace=True; the fused op writes the activated output once)" if relu.inplace else ""
            report.replaced.append((name, "Linear+ReLU", targets[nn.Linear].__name__ + " + Identity" + note))

    for name, module in model.named_modules():
        cls = type(module)
        if cls is nn.Linear:
            if (
                id(module) not in fused_linears
                and _selected(name, module, include, exclude)
                and not any(n == name for n, _, _ in report.skipped)
            ):
                why = (
                    "not directly followed by an nn.ReLU inside an nn.Sequential (nothing to fuse)"
                    if nn.Linear in targets
                    else "this build of fastops has no LinearReLU"
                )
                report.skipped.append((name, "Linear", why))
            continue
        if cls not in targets or cls is nn.Linear or not _selected(name, module, include, exclude):
            continue
        why = _unsupported(targets[cls], module)
        if why:
            report.skipped.append((name, cls.__name__, why))
            continue
        _convert(module, targets[cls], backend)
        report.replaced.append((name, cls.__name__, targets[cls].__name__))
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
