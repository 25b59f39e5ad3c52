"""One device for every tensor argument of a registered op: the check every fake kernel runs first.

Why the fake kernels need it. The ``Meta`` dispatch key outranks ``CPU`` (and ``CUDA``), so a raw
op called with one ``meta`` tensor beside CPU tensors runs the fake kernel, not the C++ kernel whose
checks would reject the mix: without this check the call returns uninitialised CPU memory shaped
like the result (or, for an in-place op, silently writes nothing). Under ``FakeTensorMode``
(torch.compile, export, ``opcheck``) every tensor reports the device of the real tensor it stands
for, so a well-formed traced call passes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

TensorArg = torch.Tensor | Sequence[torch.Tensor] | None


def _named_tensors(name: str, value: object) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for a tensor, ``(name[i], tensor)`` for each of a list's, nothing for None / non-tensors."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, (list, tuple)):
        for i, t in enumerate(value):
            if isinstance(t, torch.Tensor):
                yield f"{name}[{i}]", t


def check_same_device(op: str, **tensors: TensorArg) -> None:
    """ValueError unless every tensor argument is on the first one's device.

    Keyword arguments in the schema's order, each a tensor, a list of tensors or None (skipped);
    the first tensor found is the reference. The message names both, e.g.
    ``"cross_entropy_fwd: target is on meta but logits is on cpu"``.
    """
    first: tuple[str, torch.Tensor] | None = None
    for name, value in tensors.items():
        for arg, t in _named_tensors(name, value):
            if first is None:
                first = (arg, t)
            elif t.device != first[1].device:
                raise ValueError(f"{op}: {arg} is on {t.device} but {first[0]} is on {first[1].device}")
