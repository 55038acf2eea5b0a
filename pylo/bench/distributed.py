"""``pylo-bench --distributed``: the bytes each optimizer's step moves per rank under FSDP2.

Two (``--world``) CPU ranks on this machine (gloo over loopback) shard a workload with
``fully_shard``; a dispatch mode adds up the payload of every collective while FSDP2 runs forward
and backward (its parameter all-gathers and gradient reduce-scatter) and, separately, while the
optimizer steps. The payload of a collective is the data one rank holds in it: an all-gather's
output, a reduce-scatter's input, an all-reduce's tensor. For reference the table gives the
statistics floor ``sum over matrices of (rows + columns) x 4 bytes``, what an optimizer that
reduces only per-row and per-column statistics would move (the issue-10 goal for the AdafacLO
family, VeLO and Celo). pylo steps each shard and all-reduces only the reduced statistics
(:mod:`pylo.optim.sharded`); CELO2 and ELO-CELO2 also gather each matrix's step once for
Newton-Schulz.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: what part of a collective's arguments is its payload, by op name (``namespace::name``)
_OUTPUT_FIRST = {"c10d::_allgather_base_", "c10d::allgather_", "c10d::allgather_into_tensor_coalesced_"}
_INPUT_SECOND = {"c10d::_reduce_scatter_base_", "c10d::reduce_scatter_", "c10d::reduce_scatter_tensor_coalesced_"}


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def _kind(name: str) -> str:
    if "gather" in name:
        return "all_gather"
    if "reduce_scatter" in name:
        return "reduce_scatter"
    if "all_reduce" in name or "allreduce" in name:
        return "all_reduce"
    return name.split("::")[-1]


class CollectiveBytes(TorchDispatchMode):
    """Inside: the payload bytes of every collective op dispatched, per kind (``self.bytes``).

    It sees the collectives that reach the dispatcher as ops: FSDP2's, ``full_tensor()``'s, explicit
    ``torch.distributed`` calls. Redistributions DTensor makes inside its own op dispatch (an ``mm`` of
    sharded operands) do not pass through a plain dispatch mode; pylo's step makes none (its
    collectives are explicit ``torch.distributed`` calls)."""

    def __init__(self):
        super().__init__()
        self.bytes: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        collective = any(k in name for k in ("gather", "reduce", "broadcast", "all_to_all", "scatter"))
        if name.startswith(("c10d::", "_c10d_functional::")) and collective:
            if name in _OUTPUT_FIRST:
                payload = _nbytes(args[0])
            elif name in _INPUT_SECOND:
                payload = _nbytes(args[1])
            elif name in ("_c10d_functional::all_gather_into_tensor",
                          "_c10d_functional::all_gather_into_tensor_coalesced"):
                payload = _nbytes(args[0]) * int(args[1])
            else:
                payload = _nbytes(args[0])
            self.bytes[_kind(name)] += payload
        return func(*args, **(kwargs or {}))


class _Workload(torch.nn.Module):
    """The workload's parameters; ``forward()`` is a loss that reads every one of them."""

    def __init__(self, shapes, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.names = []
        for name, shape in shapes:
            key = name.replace(".", "_")
            self.names.append(key)
            self.register_parameter(key, torch.nn.Parameter(0.02 * torch.randn(shape, generator=g)))
            self.register_buffer(f"{key}_c", torch.randn(shape, generator=g))

    def forward(self) -> torch.Tensor:
        return torch.stack([(getattr(self, n) * getattr(self, f"{n}_c")).sum() for n in self.names]).sum()


def statistics_floor(shapes) -> int:
    """``sum over tensors of 2-D or more of (rows + columns) x 4`` bytes (the two largest axes)."""
    total = 0
    for _, shape in shapes:
        if len(shape) >= 2:
            a, b = sorted(shape)[-2:]
            total += 4 * (a + b)
    return total


def _one_run(info, shapes, backend: str, shard_wise: bool, timed_steps: int = 3) -> Dict:
    """One FSDP2 module and optimizer: the bytes of FSDP2's forward/backward and of one step, then the
    median wall time of ``timed_steps`` more steps. ``shard_wise=False``: the gather-whole fallback."""
    import time

    from torch.distributed.fsdp import fully_shard

    module = _Workload(shapes)
    fully_shard(module)
    opt = info.naive(module.parameters(), network=info.make_network(), **info.bench_kwargs,
                     **info.backend_kwargs(backend))
    opt.shard_wise = shard_wise

    def step(loss):
        opt.step(loss.detach()) if info.needs_loss else opt.step()

    with CollectiveBytes() as fsdp:
        loss = module()
        loss.backward()
    with CollectiveBytes() as moved:
        step(loss)
    times = []
    for _ in range(timed_steps):
        opt.zero_grad()
        loss = module()
        loss.backward()
        start = time.perf_counter()
        step(loss)
        times.append(1e3 * (time.perf_counter() - start))
    return {"step": dict(moved.bytes), "fsdp": dict(fsdp.bytes), "step_ms": sorted(times)[len(times) // 2]}


def _worker(rank: int, world: int, store: str, out: str, shapes, names: List[str], backend: str) -> None:
    import torch.distributed as dist

    from pylo.parity_tests import optim_db

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        rows = []
        for name in names:
            info = optim_db.get(name)
            sharded = _one_run(info, shapes, backend, True)
            gathered = _one_run(info, shapes, backend, False)
            rows.append({"optimizer": name, "backend": backend, **sharded,
                         "gathered": {"step": gathered["step"], "step_ms": gathered["step_ms"]}})
        if rank == 0:
            Path(out).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def run(workload: str, shapes, names: List[str], backend: str = "fused", world: int = 2) -> Dict:
    """Spawn ``world`` ranks, measure every optimizer in ``names``; the rows and the reference floors."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rows.json")
        mp.start_processes(_worker, args=(world, str(Path(tmp) / "store"), out, shapes, names, backend),
                           nprocs=world, start_method="spawn")
        rows = json.loads(Path(out).read_text())
    numel = sum(torch.Size(s).numel() for _, s in shapes)
    return {"workload": workload, "world": world, "params": numel, "statistics_floor_bytes": statistics_floor(shapes),
            "rows": rows}


def table(result: Dict) -> str:
    """The measurement as a text table (kB per rank per step; step time on rank 0)."""
    kb = 1e3
    lines = [f"{result['workload']}: {result['params'] / 1e6:.2f} M parameters, {result['world']} ranks (FSDP2); "
             f"statistics floor {result['statistics_floor_bytes'] / 1e3:.1f} kB",
             "shard-wise: each rank steps its shard (the fused engine for fused/Triton), statistics all-reduced; "
             "gathered: whole parameter and gradient gathered, the backend's engine on the whole tensor",
             f"{'optimizer':<10} {'backend':<8} {'step kB':>10} {'step ms':>8} {'gathered kB':>12} "
             f"{'gathered ms':>12} {'FSDP2 grad RS kB':>17} {'FSDP2 AG kB':>12} {'step / RS':>10}"]
    for r in result["rows"]:
        step = sum(r["step"].values())
        rs = r["fsdp"].get("reduce_scatter", 0)
        ratio = f"{step / rs:.2f}" if rs else "—"
        gathered = r["gathered"]
        lines.append(f"{r['optimizer']:<10} {r['backend']:<8} {step / kb:>10.1f} {r['step_ms']:>8.1f} "
                     f"{sum(gathered['step'].values()) / kb:>12.1f} {gathered['step_ms']:>12.1f} {rs / kb:>17.1f} "
                     f"{r['fsdp'].get('all_gather', 0) / kb:>12.1f} {ratio:>10}")
    return "\n".join(lines)
