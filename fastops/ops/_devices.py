"""Deprecated name of :mod:`fastops.ops._contract` (where ``check_same_device`` now lives, beside the
shared message formats). Kept only so that branches written before the rename (the
linear_cross_entropy glue) import; remove once nothing imports it."""

from fastops.ops._contract import check_same_device

__all__ = ["check_same_device"]
