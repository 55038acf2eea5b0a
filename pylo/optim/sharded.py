"""DTensor parameters (FSDP2 ``fully_shard``, HSDP, tensor parallel): stepped shard by shard, or whole.

Every pylo update reads whole-tensor statistics: factored means over rows and columns, per-tensor
normalisers, VeLO/Celo's per-tensor LSTM features, CELO2's Newton-Schulz over whole matrices. Two
ways to get them on a sharded parameter:

* **Shard-wise** (every family, the default; placements with at most one ``Shard``): each rank
  steps its own shard; every reduction over the split axis is a partial reduction plus an
  all-reduce of the reduced statistics (:class:`pylo.core.reduce.Split`), so a step moves
  O(rows + columns) bytes per matrix; CELO2 and ELO-CELO2 also gather each matrix's step once for
  Newton-Schulz. The element-wise state (momenta, RMS) is held as DTensors with the parameter's
  placements; the factored row/column statistics are sharded or replicated as their axes dictate.
  The engine is the family's fused one where the fused or Triton backend was chosen, else the naive
  one; results equal the unsharded run within float32 round-off (sums are taken in another order).
* **Whole** (other placements, VeLO/Celo averaging calls, or ``opt.shard_wise = False``):
  :func:`whole_tensors` gathers the parameter and its gradient (``full_tensor()``), steps the whole
  tensor with the ordinary engines and writes back this rank's shard. Every rank computes the same
  update on the same numbers, so the run equals the unsharded one bit for bit; the cost is one
  all-gather of each parameter and gradient (O(numel)) and the state held whole on every rank.

Example::

    fully_shard(model)                                   # after init_process_group
    opt = AdafacLO(model.parameters())                   # shard-wise: sharded state, statistics-only traffic
    loss = model(batch); loss.backward(); opt.step()
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from pylo.core.accumulators import AccumulatorSet
from pylo.core.reduce import Split
from pylo.spec.shapes import work_permutation, work_shape


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


def is_dtensor(t) -> bool:
    dtensor = dtensor_type()
    return bool(dtensor) and isinstance(t, dtensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (a view that shares its storage); other tensors as they are."""
    return t.to_local() if is_dtensor(t) else t


def shard_axis(p) -> Tuple[bool, Optional[Tuple[int, int]]]:
    """``(supported, (mesh_dim, tensor_dim))`` of a DTensor parameter's placements for shard-wise
    stepping: at most one ``Shard`` (replicated over any other mesh dims: FSDP2, HSDP, column- or
    row-wise tensor parallel); ``(True, None)`` when fully replicated."""
    from torch.distributed.tensor import Replicate, Shard

    shards = []
    for mesh_dim, placement in enumerate(p.placements):
        if type(placement) is Shard:  # not _StridedShard (FSDP2 over tensor parallel)
            shards.append((mesh_dim, placement.dim % p.dim()))
        elif not isinstance(placement, Replicate):
            return False, None  # Partial
    if len(shards) > 1:
        return False, None
    return True, (shards[0] if shards else None)


def local_split(p, kernel_layout: str) -> Optional[Split]:
    """The :class:`Split` of a DTensor parameter's local part in the work layout (None: replicated)."""
    _, axis = shard_axis(p)
    if axis is None:
        return None
    mesh_dim, dim = axis
    perm = work_permutation(p.dim(), kernel_layout)
    work_dim = perm.index(dim) if perm else dim
    return Split(work_dim, int(p.shape[dim]), p.device_mesh.get_group(mesh_dim))


def as_dtensor(local: torch.Tensor, p, split: Optional[Split]) -> torch.Tensor:
    """``local`` (this rank's part of a state tensor, ``split`` along ``split.dim``, else replicated) as
    a DTensor on ``p``'s mesh, so that ``torch.distributed.checkpoint`` saves and reshards it."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    placements = [Replicate()] * p.device_mesh.ndim
    shape = tuple(local.shape)
    if split is not None:
        mesh_dim, _ = shard_axis(p)[1]
        placements[mesh_dim] = Shard(split.dim)
        shape = split.global_shape(shape)
    stride = tuple(int(x) for x in torch.empty(shape, device="meta").stride())
    return DTensor.from_local(local, p.device_mesh, placements, run_check=False, shape=torch.Size(shape),
                              stride=stride)


def like_param(local: torch.Tensor, p) -> torch.Tensor:
    """``local`` (this rank's part of a tensor of ``p``'s shape and layout) as a DTensor placed as ``p``;
    ``local`` itself when ``p`` is no DTensor."""
    if not is_dtensor(p):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())


def hold_as_dtensors(state: Dict, p, splits: Dict[str, Optional[Split]], keys: Sequence[str]) -> None:
    """Replace ``state[key]`` (this rank's part) by its DTensor on ``p``'s mesh, for each of ``keys``."""
    for key in keys:
        state[key] = as_dtensor(state[key], p, splits.get(key))


def local_state(state: Dict) -> Dict:
    """A parameter's state with its DTensors as their local parts (in-place updates reach the state)."""
    return {k: local_tensor(v) for k, v in state.items()}


def local_views(params: Sequence[torch.Tensor], states: Sequence[Dict]) -> Tuple[List, List]:
    """The local parts of DTensor parameters and of their states, for an engine to step in place."""
    return [local_tensor(p) for p in params], [local_state(st) for st in states]


def init_accumulators(state: Dict, p, kernel_layout: str, counts: Sequence[int]) -> None:
    """:meth:`AccumulatorSet.init` for parameter ``p`` in its work layout; of a DTensor parameter, this
    rank's part, held as DTensors on its mesh (the factored axes are the whole tensor's)."""
    local = local_tensor(p)
    shape = work_shape(local.shape, kernel_layout)
    split = local_split(p, kernel_layout) if is_dtensor(p) else None
    AccumulatorSet.init(state, shape, *counts, local.device, split)
    if is_dtensor(p):
        hold_as_dtensors(state, p, AccumulatorSet.splits(shape, split), AccumulatorSet.KEYS)


def local_grad(p) -> torch.Tensor:
    """This rank's part of a DTensor parameter's gradient, laid out as the parameter."""
    g = p.grad
    if is_dtensor(g) and tuple(g.placements) != tuple(p.placements):
        g = g.redistribute(p.device_mesh, p.placements)
    return local_tensor(g)


@contextlib.contextmanager
def whole_tensors(opt: torch.optim.Optimizer) -> Iterator[None]:
    """Inside: ``opt.param_groups`` hold the whole tensors of its DTensor parameters (gradients and
    state with them), except those the optimizer steps shard-wise (``opt._steps_shard_wise(group,
    p)``); on leaving, each rank's shard is written back and the parameters restored."""
    swaps: List[Tuple[dict, int, torch.Tensor, torch.Tensor]] = []
    dtensor = dtensor_type()
    keep = getattr(opt, "_steps_shard_wise", lambda group, p: False)
    if dtensor:
        for group in opt.param_groups:
            for i, p in enumerate(group["params"]):
                if not isinstance(p, dtensor) or keep(group, p):
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
