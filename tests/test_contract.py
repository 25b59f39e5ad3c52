"""What every op must pass, generated from the op registry (``fastops.ops.OPS``): a new op gets
these tests by listing itself there and giving its ``fastops.ops.<stem>`` module the hooks
:mod:`fastops.testing` documents."""

from __future__ import annotations

import importlib

import pytest

import fastops
import fastops.triton
from fastops import _backend
from fastops.ops import OPS


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "on", "yes", "y"])
def test_one_triton_interpret_rule(monkeypatch, value):
    """fastops.triton and backend resolution read TRITON_INTERPRET with one rule (triton's own)."""
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert fastops.triton.interpreting()
    if fastops.triton.AVAILABLE:
        assert _backend._triton_reason("cpu") == ""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not fastops.triton.interpreting()
    if fastops.triton.AVAILABLE:
        assert "TRITON_INTERPRET=1" in _backend._triton_reason("cpu")


def test_swap_rules_come_from_the_registry():
    """Every module name in the registry resolves to a torch class and its fastops drop-in."""
    swap_module = importlib.import_module("fastops.swap")  # fastops.swap is the function
    drop_ins, pairs = swap_module._rules()
    named = [n for names in OPS.values() for n in names]
    assert len(drop_ins) + len(pairs) == len(named)
    for torch_cls, ours in drop_ins.items():
        assert issubclass(ours, torch_cls) and ours.__module__.startswith("fastops.nn")
    for (first, _second), ours in pairs.items():
        assert issubclass(ours, first) and ours.__module__.startswith("fastops.nn")
    assert set(fastops.nn.__all__) <= {n.replace("+", "") for n in named}
