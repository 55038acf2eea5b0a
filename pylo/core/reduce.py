"""Every reduction over a parameter's axes, in one place.

Second-moment normalisers, factored row/column accumulators, per-tensor statistics (VeLO's and
Celo's LSTM inputs, parameter scales) and the global norm for clipping all reduce through these
functions, so that sharded parameters (a DTensor whose reduced axis is split over ranks) need a
collective added here and nowhere else.

Semantics follow JAX: a mean or sum over an *empty* axis list is the identity (``torch.mean(x,
dim=[])`` would reduce over everything, which broke every 0-d parameter in the published port).

>>> x = torch.arange(6.0).reshape(2, 3)
>>> mean_over(x, ()).shape, mean_over(x, (1,)).tolist(), mean_all(x).item()
(torch.Size([2, 3]), [1.0, 4.0], 2.5)
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def mean_over(x: torch.Tensor, dims: Sequence[int], keepdim: bool = False) -> torch.Tensor:
    """Mean over ``dims``; an empty ``dims`` is the identity."""
    dims = tuple(dims)
    if not dims:
        return x
    return x.mean(dim=dims, keepdim=keepdim)


def sum_over(x: torch.Tensor, dims: Sequence[int], keepdim: bool = False) -> torch.Tensor:
    """Sum over ``dims``; an empty ``dims`` is the identity."""
    dims = tuple(dims)
    if not dims:
        return x
    return x.sum(dim=dims, keepdim=keepdim)


def second_moment(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``mean(x^2, dims)`` kept broadcastable against ``x`` (the normalisers' denominator)."""
    return mean_over(x * x, dims, keepdim=True)


def mean_all(x: torch.Tensor) -> torch.Tensor:
    """Mean over every element (a 0-d tensor)."""
    return x.mean()


def sum_all(x: torch.Tensor) -> torch.Tensor:
    """Sum over every element (a 0-d tensor)."""
    return torch.sum(x)


def mean_square(x: torch.Tensor) -> torch.Tensor:
    """``mean(x^2)`` over every element (parameter scales)."""
    return (x * x).mean()


def sum_squares(x: torch.Tensor, dims: Optional[Sequence[int]] = None, keepdim: bool = False) -> torch.Tensor:
    """``sum(x^2)`` over ``dims`` (every element when None)."""
    sq = x * x
    return torch.sum(sq) if dims is None else sum_over(sq, dims, keepdim)


def global_sq_norm(tensors: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """``sum_i sum(t_i^2)`` in float32, summed leaf by leaf as ``optax.tree.norm`` does (None if empty)."""
    total = None
    for t in tensors:
        sq = sum_squares(t)
        total = sq if total is None else total + sq.to(total.device)
    return total


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sqrt(sum_i sum(t_i^2))``: optax's global norm (0 for no tensors)."""
    total = global_sq_norm(tensors)
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


def merge_moments(sums: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor, n: int):
    """Mean and population variance of a whole tensor from per-block sums and centred second moments.

    ``sums``, ``m2`` (each block's sum of squared deviations from its own mean):
    ``(blocks, channels)``; ``counts``: ``(blocks,)``; ``n``: the elements in all. The blocks'
    moments are merged with the spread of the block means (Chan et al.), which never cancels.
    """
    mean = sums.sum(dim=0) / n
    block_mean = sums / counts.unsqueeze(-1)
    spread = counts.unsqueeze(-1) * torch.square(block_mean - mean)
    return mean, (m2 + spread).sum(dim=0) / n


def norm_over(x: torch.Tensor, dims: Sequence[int], keepdim: bool = False) -> torch.Tensor:
    """The 2-norm over ``dims`` (Newton-Schulz's Frobenius norm per matrix; squared, a sum of squares
    without a temporary of ``x``'s size)."""
    return torch.linalg.vector_norm(x, dim=tuple(dims), keepdim=keepdim)
