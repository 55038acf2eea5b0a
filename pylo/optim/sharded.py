"""DTensor parameters (FSDP2 ``fully_shard``, HSDP, tensor parallel) stepped as their whole tensors.

Every pylo update reads whole tensors: factored statistics over rows and columns, per-tensor
normalisers, VeLO/Celo's per-tensor LSTM features, CELO2's Newton-Schulz over whole matrices. On a
DTensor parameter pylo therefore gathers the parameter and its gradient (``full_tensor()``), steps
the whole tensor with the ordinary engines, and writes back this rank's shard. Every rank computes
the same update on the same numbers, so a sharded run equals the unsharded one bit for bit.

The cost, per step and rank: one all-gather of each sharded parameter and gradient (O(numel)), and
the optimizer state held whole (replicated) on every rank. Sharded state and statistics-only
collectives are not implemented.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Tuple

import torch


def dtensor_type():
    """torch's DTensor class (an empty tuple where torch.distributed has none)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without distributed
        return ()
    return DTensor


def _local_shard(full: torch.Tensor, like) -> torch.Tensor:
    """This rank's shard of ``full`` as ``like`` (a DTensor) places it, without communication."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


@contextlib.contextmanager
def whole_tensors(opt: torch.optim.Optimizer) -> Iterator[None]:
    """Inside: ``opt.param_groups`` hold the whole tensors of its DTensor parameters (gradients and
    state with them); on leaving, each rank's shard is written back and the parameters restored."""
    swaps: List[Tuple[dict, int, torch.Tensor, torch.Tensor]] = []
    dtensor = dtensor_type()
    if dtensor:
        for group in opt.param_groups:
            for i, p in enumerate(group["params"]):
                if not isinstance(p, dtensor):
                    continue
                whole = p.detach().full_tensor().requires_grad_(p.requires_grad)
                if p.grad is not None:
                    whole.grad = p.grad.full_tensor() if isinstance(p.grad, dtensor) else p.grad
                if p in opt.state:
                    opt.state[whole] = opt.state.pop(p)
                group["params"][i] = whole
                swaps.append((group, i, p, whole))
    try:
        yield
    finally:
        for group, i, p, whole in swaps:
            p.to_local().copy_(_local_shard(whole, p))
            group["params"][i] = p
            if whole in opt.state:
                opt.state[p] = opt.state.pop(whole)
