"""Optimizer drop-ins: ``fastops.optim.Adam`` and ``fastops.optim.AdamW`` (torch's constructor and state_dict)."""

from fastops.optim.adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
