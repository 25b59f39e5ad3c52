"""What a benchmark produces: one :class:`Row` per (op, shape, dtype, device, provider, pass), the
:class:`Work` a pass must do (for GB/s or TFLOP/s), and the :class:`Skip` records of what did not
run here. Pure data: no timing, no output."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

PASSES = ("fwd", "bwd", "fwd+bwd")
EAGER = "torch_eager"


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> "float32"."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    """Parse a dtype name: "float32", "fp32", "bf16", "torch.bfloat16", ..."""
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp64": "float64"}
    name = aliases.get(name.removeprefix("torch."), name.removeprefix("torch."))
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unknown floating dtype {name!r}")
    return dtype


@dataclass
class Row:
    """One measured (op, shape, dtype, device, provider, pass). Times in ms; None where not measured.

    ``throughput`` is in ``metric`` units ("GB/s" or "TFLOP/s"); ``pct_of_ceiling`` compares it to
    the copy bandwidth or the same-dtype matmul rate of this run. ``correct`` is the check's
    verdict; a row whose check failed or raised has no times and says why in ``note``.
    """

    op: str
    shape: str
    dtype: str
    device: str
    provider: str
    pass_: str
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    metric: str = ""
    throughput: float | None = None
    pct_of_ceiling: float | None = None
    peak_mem_mib: float | None = None
    speedup_vs_eager: float | None = None
    correct: bool | None = None
    error: float | None = None
    allowed_error: float | None = None
    samples: int | None = None
    timer: str = ""
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        """Plain dict for JSON/CSV; the pass field is spelled "pass"."""
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return {k: d[k] for k in ROW_FIELDS}

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """(op, shape, dtype, device, pass): rows with the same key are comparable."""
        return (self.op, self.shape, self.dtype, self.device, self.pass_)


# The results files' column order: the dataclass fields, with pass_ spelled "pass".
ROW_FIELDS = [f.name.removesuffix("_") if f.name == "pass_" else f.name for f in fields(Row)]


@dataclass
class Work:
    """What one call of each pass must do: ideal bytes moved (memory-bound ops) or flops (matrix
    ops), keyed by pass name. Exactly one of the two is given."""

    bytes: dict[str, float] | None = None
    flops: dict[str, float] | None = None


@dataclass
class Skip:
    """A provider or case that was not run here, and why."""

    op: str
    provider: str
    reason: str
    shape: str = ""
    dtype: str = ""


def fill_speedups(rows: list[Row]) -> None:
    """Set ``speedup_vs_eager`` = eager median / provider median for rows sharing a key."""
    eager = {r.key: r.median_ms for r in rows if r.provider == EAGER and r.median_ms}
    for r in rows:
        base = eager.get(r.key)
        r.speedup_vs_eager = base / r.median_ms if base and r.median_ms else None
