"""Every reduction over a parameter's axes, in one place.

Second-moment normalisers, factored row/column accumulators, per-tensor statistics (VeLO's and
Celo's LSTM inputs, parameter scales) and the global norm for clipping all reduce through these
functions. A tensor whose axis is split over ranks (this rank's shard of a DTensor parameter)
carries a :class:`Split`; a reduction over that axis is then a partial reduction plus an
all-reduce of the reduced values on the split's process group, here and nowhere else.

Semantics follow JAX: a mean or sum over an *empty* axis list is the identity (``torch.mean(x,
dim=[])`` would reduce over everything, which broke every 0-d parameter in the published port).

>>> x = torch.arange(6.0).reshape(2, 3)
>>> mean_over(x, ()).shape, mean_over(x, (1,)).tolist(), mean_all(x).item()
(torch.Size([2, 3]), [1.0, 4.0], 2.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch


@dataclass(frozen=True)
class Split:
    """Axis ``dim`` of a local tensor is this rank's part of an axis of length ``size`` split over the
    ranks of ``group`` (a ``torch.distributed`` process group); every other axis is whole."""

    dim: int
    size: int
    group: Any

    def global_shape(self, local_shape: Sequence[int]) -> Tuple[int, ...]:
        return tuple(self.size if i == self.dim else int(s) for i, s in enumerate(local_shape))

    def without(self, axis: int) -> Optional["Split"]:
        """The split of the tensor reduced over ``axis`` (None once the split axis is gone)."""
        if axis == self.dim:
            return None
        return Split(self.dim - 1 if axis < self.dim else self.dim, self.size, self.group)


def global_shape(shape: Sequence[int], split: Optional[Split]) -> Tuple[int, ...]:
    """The whole tensor's shape (``shape`` itself when nothing is split)."""
    return tuple(int(s) for s in shape) if split is None else split.global_shape(shape)


def all_reduce_sum(x: torch.Tensor, split: Optional[Split]) -> torch.Tensor:
    """In place and returned: ``x`` summed over the ranks of ``split`` (unchanged when None)."""
    if split is not None:
        import torch.distributed as dist

        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=split.group)
    return x


def all_reduce_leaves(values: List[torch.Tensor], splits: Sequence[Optional[Split]], op: str = "sum"
                      ) -> List[torch.Tensor]:
    """Per-leaf 0-d values with the split leaves' reduced over their ranks (``"sum"`` or ``"max"``),
    one collective per process group; leaves without a split are returned as they are."""
    by_group: Dict[Any, List[int]] = {}
    for i, split in enumerate(splits):
        if split is not None:
            by_group.setdefault(split.group, []).append(i)
    if not by_group:
        return list(values)
    import torch.distributed as dist

    out = list(values)
    for group, idx in by_group.items():
        packed = torch.stack([values[i].to(torch.float32) for i in idx])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=group)
        for j, i in enumerate(idx):
            out[i] = packed[j]
    return out


def _rank_range(split: Split) -> Tuple[int, int, int]:
    """``(start, length, chunk)`` of this rank's part of the split axis, as DTensor's ``Shard`` cuts it
    (``torch.chunk``: ``ceil(size / world)`` per rank, the last parts shorter or empty)."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(split.group), dist.get_rank(split.group)
    chunk = -(-split.size // world)
    start = min(rank * chunk, split.size)
    return start, min(chunk, split.size - start), chunk


def gather_split(x: torch.Tensor, split: Split) -> torch.Tensor:
    """The whole tensor from every rank's part of it (one all-gather of the split axis, padded to
    equal parts)."""
    import torch.distributed as dist

    _, length, chunk = _rank_range(split)
    world = dist.get_world_size(split.group)
    part = x.movedim(split.dim, 0)
    if length < chunk:
        part = torch.cat([part, part.new_zeros((chunk - length,) + tuple(part.shape[1:]))])
    out = part.new_empty((world * chunk,) + tuple(part.shape[1:]))
    # torch 2.13 deprecates all_gather_into_tensor in favour of all_gather_single (same arguments)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, part.contiguous(), group=split.group)
    return out[:split.size].movedim(0, split.dim)


def local_part(whole: torch.Tensor, split: Split) -> torch.Tensor:
    """This rank's part of ``whole`` along the split axis (no communication)."""
    start, length, _ = _rank_range(split)
    return whole.narrow(split.dim, start, length)


def mean_over(x: torch.Tensor, dims: Sequence[int], keepdim: bool = False, split: Optional[Split] = None
              ) -> torch.Tensor:
    """Mean over ``dims``; an empty ``dims`` is the identity. With a ``split`` among ``dims``: the
    local sum, summed over the ranks, over the whole tensor's count."""
    dims = tuple(d % x.dim() for d in dims) if x.dim() else tuple(dims)
    if not dims:
        return x
    if split is None or split.dim not in dims:
        return x.mean(dim=dims, keepdim=keepdim)
    count = math.prod(split.size if d == split.dim else x.shape[d] for d in dims)
    return all_reduce_sum(x.sum(dim=dims, keepdim=keepdim), split) / count


def sum_over(x: torch.Tensor, dims: Sequence[int], keepdim: bool = False) -> torch.Tensor:
    """Sum over ``dims``; an empty ``dims`` is the identity."""
    dims = tuple(dims)
    if not dims:
        return x
    return x.sum(dim=dims, keepdim=keepdim)


def second_moment(x: torch.Tensor, dims: Sequence[int], split: Optional[Split] = None) -> torch.Tensor:
    """``mean(x^2, dims)`` kept broadcastable against ``x`` (the normalisers' denominator)."""
    return mean_over(x * x, dims, keepdim=True, split=split)


def mean_all(x: torch.Tensor) -> torch.Tensor:
    """Mean over every element (a 0-d tensor)."""
    return x.mean()


def sum_all(x: torch.Tensor) -> torch.Tensor:
    """Sum over every element (a 0-d tensor)."""
    return torch.sum(x)


def mean_square(x: torch.Tensor, split: Optional[Split] = None) -> torch.Tensor:
    """``mean(x^2)`` over every element (parameter scales); with a ``split``, over all ranks' parts."""
    if split is None:
        return (x * x).mean()
    return mean_over(x * x, range(x.dim()), split=split)


def sum_squares(x: torch.Tensor, dims: Optional[Sequence[int]] = None, keepdim: bool = False) -> torch.Tensor:
    """``sum(x^2)`` over ``dims`` (every element when None)."""
    sq = x * x
    return torch.sum(sq) if dims is None else sum_over(sq, dims, keepdim)


def global_sq_norm(tensors: Sequence[torch.Tensor], splits: Optional[Sequence[Optional[Split]]] = None
                   ) -> Optional[torch.Tensor]:
    """``sum_i sum(t_i^2)`` in float32, summed leaf by leaf as ``optax.tree.norm`` does (None if empty);
    a leaf with a split counts all its ranks' parts."""
    leaves = [sum_squares(t) for t in tensors]
    if splits is not None:
        leaves = all_reduce_leaves(leaves, splits)
    total = None
    for sq in leaves:
        total = sq if total is None else total + sq.to(total.device)
    return total


def global_norm(tensors: Sequence[torch.Tensor], splits: Optional[Sequence[Optional[Split]]] = None
                ) -> torch.Tensor:
    """``sqrt(sum_i sum(t_i^2))``: optax's global norm (0 for no tensors)."""
    total = global_sq_norm(tensors, splits)
    if total is None:
        return torch.zeros(())
    return torch.sqrt(total)


def row_sum_squares(x: torch.Tensor) -> torch.Tensor:
    """``sum(x^2)`` of each row of a 2-D tensor, e.g. per channel of a channel-major ``(channels, count)``
    feature block (no temporary of its size)."""
    return torch.linalg.vector_norm(x, dim=1).square()


# ------------------------------------------------ chunked statistics (the fused backends' slabs)
def channel_sums(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-channel sums of a channel-major ``(channels, count)`` slab of a tensor's elements."""
    return torch.sum(x, dim=1, out=out)


def channel_norms(x: torch.Tensor, dim: int = 1, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-channel Euclidean norms over ``dim`` of a channel-major slab (``sqrt`` of the sums of squares)."""
    return torch.linalg.vector_norm(x, dim=dim, out=out)


def merge_sumsq(norms: torch.Tensor) -> torch.Tensor:
    """Per-channel sums of squares of a whole tensor from its slabs' norms ``(slabs, channels)``."""
    return torch.square(norms).sum(dim=0)


def merge_sums(partial: torch.Tensor) -> torch.Tensor:
    """Per-channel totals of a whole tensor from its blocks' partial sums ``(blocks, channels)``."""
    return partial.sum(dim=0)


def merge_moments(sums: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor, n: int,
                  split: Optional[Split] = None):
    """Mean and population variance of a whole tensor from per-block sums and centred second moments.

    ``sums``, ``m2`` (each block's sum of squared deviations from its own mean):
    ``(blocks, channels)``; ``counts``: ``(blocks,)``; ``n``: the elements in all. The blocks'
    moments are merged with the spread of the block means (Chan et al.), which never cancels.
    With a ``split`` the blocks are this rank's and ``n`` the whole tensor's: the totals and the
    spreads around the whole mean are summed over the ranks (two all-reduces of ``channels``).
    """
    mean = all_reduce_sum(sums.sum(dim=0), split) / n
    block_mean = sums / counts.unsqueeze(-1)
    spread = counts.unsqueeze(-1) * torch.square(block_mean - mean)
    return mean, all_reduce_sum((m2 + spread).sum(dim=0), split) / n


def norm_over(x: torch.Tensor, dims: Sequence[int], keepdim: bool = False) -> torch.Tensor:
    """The 2-norm over ``dims`` (Newton-Schulz's Frobenius norm per matrix; squared, a sum of squares
    without a temporary of ``x``'s size)."""
    return torch.linalg.vector_norm(x, dim=tuple(dims), keepdim=keepdim)
