"""Distributed training with fastops (issue 11): DDP and FSDP2 (``fully_shard``, DTensor parameters)
on 2 gloo ranks over 127.0.0.1, CPU.

FSDP2: a swapped model trained with ``fastops.optim.AdamW`` tracks the stock model trained with
``torch.optim.AdamW`` under the same ``fully_shard`` setup, within float32 tolerance, and the
swapped modules give no FSDP warning (a view returned from forward, for one). DDP: the ranks'
parameters stay bit-identical and match the single-process result.
"""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
STEPS = 4

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 5),
    )


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 5, (4,), generator=g)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    import fastops

    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    results: dict[str, object] = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # FSDP2: stock + torch AdamW vs swapped + fastops AdamW, both sharded over the 2 ranks
            stock, swapped = _model(), _model()
            fastops.swap(swapped)
            for m in (stock, swapped):
                for layer in m:
                    if isinstance(layer, (nn.Linear, nn.Conv2d)):
                        fully_shard(layer)
                fully_shard(m)
            opt_stock = torch.optim.AdamW(stock.parameters(), lr=1e-2)
            opt_fast = fastops.optim.AdamW(swapped.parameters(), lr=1e-2)
            ce = fastops.nn.CrossEntropyLoss()
            for step in range(STEPS):
                x, t = _batch(rank, step)
                for model, opt, crit in ((stock, opt_stock, nn.CrossEntropyLoss()), (swapped, opt_fast, ce)):
                    opt.zero_grad()
                    crit(model(x), t).backward()
                    opt.step()
            diffs = [
                (a.full_tensor() - b.full_tensor()).abs().max().item()
                for a, b in zip(stock.parameters(), swapped.parameters())
            ]
            results["fsdp_max_diff"] = max(diffs)
            results["fsdp_moved"] = max(
                (a.full_tensor() - b).abs().max().item() for a, b in zip(swapped.parameters(), _model().parameters())
            )
            results["fsdp_warnings"] = [
                str(w.message) for w in caught if "fsdp" in str(w.message).lower() or "view" in str(w.message).lower()
            ]
            # DDP: the swapped model's replicas stay bit-identical across ranks
            ddp_model = _model()
            fastops.swap(ddp_model)
            ddp = DistributedDataParallel(ddp_model)
            opt = fastops.optim.AdamW(ddp.parameters(), lr=1e-2)
            for step in range(STEPS):
                x, t = _batch(rank, step)
                opt.zero_grad()
                ce(ddp(x), t).backward()
                opt.step()
            flat = torch.cat([p.detach().reshape(-1) for p in ddp_model.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(WORLD)]
            dist.all_gather(gathered, flat)
            results["ddp_identical"] = all(torch.equal(gathered[0], g) for g in gathered)
            results["ddp_params"] = flat
    finally:
        dist.destroy_process_group()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def test_fsdp2_and_ddp_two_gloo_ranks(tmp_path):
    port = _free_port()
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for r, res in enumerate(results):
        assert res["fsdp_moved"] > 1e-3, "the optimizer did not move the parameters"
        # float32 over 4 AdamW steps at lr 1e-2: the two trajectories agree to rounding
        assert res["fsdp_max_diff"] <= 1e-5, (r, res["fsdp_max_diff"])
        assert res["fsdp_warnings"] == [], res["fsdp_warnings"]
        assert res["ddp_identical"], r
    # DDP averages gradients over both ranks: the same as one process stepping on the mean gradient
    import fastops

    single = _model()
    fastops.swap(single)
    opt = fastops.optim.AdamW(single.parameters(), lr=1e-2)
    ce = fastops.nn.CrossEntropyLoss()
    for step in range(STEPS):
        opt.zero_grad()
        for rank in range(WORLD):
            x, t = _batch(rank, step)
            (ce(single(x), t) / WORLD).backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in single.parameters()])
    torch.testing.assert_close(results[0]["ddp_params"], flat, rtol=1e-5, atol=1e-6)
