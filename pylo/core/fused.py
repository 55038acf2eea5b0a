"""Pieces shared by the fused (chunked) backends and the Triton backends' host side.

* :class:`Workspace`: chunk-sized, channel-major buffers reused across tensors
  and steps, so that a step allocates nothing proportional to a parameter;
* :func:`adafactor_tables`: a factored tensor's Adafactor update and the small
  tables its features broadcast (row/column moments, their ``rsqrt`` and the
  preconditioner factors), computed once per tensor on the tables themselves;
* :func:`broadcast_table` and :func:`table_sumsq`: those tables seen over the
  whole tensor (sliced by a slab index, :mod:`pylo.core.chunked`) and the sums
  of squares their broadcast channels contribute to a second-moment normaliser.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from pylo.core import accumulators as acc
from pylo.core.reduce import Split, global_shape, mean_over
from pylo.spec.shapes import factored_dims


class Workspace:
    """Flat buffers of ``chunk`` elements per row, reused across tensors and steps (one per device).

    ``x(count, rows)`` is a contiguous ``(rows, count)`` channel-major view of the
    feature buffer (``channels`` rows); ``h(i, count)`` alternates between two
    ``(hidden, count)`` activation buffers; ``out(count)`` is ``(outputs, count)``.
    """

    def __init__(self, chunk: int, channels: int, hidden: int, outputs: int, device):
        self.chunk, self.channels, self.hidden, self.outputs = chunk, channels, hidden, outputs
        self._x = torch.empty(channels * chunk, device=device)
        self._h = [torch.empty(hidden * chunk, device=device) for _ in range(2)]
        self._out = torch.empty(outputs * chunk, device=device)

    def x(self, count: int, rows: Optional[int] = None) -> torch.Tensor:
        rows = self.channels if rows is None else rows
        return self._x[: rows * count].view(rows, count)

    def h(self, i: int, count: int) -> torch.Tensor:
        return self._h[i % 2][: self.hidden * count].view(self.hidden, count)

    def out(self, count: int) -> torch.Tensor:
        return self._out[: self.outputs * count].view(self.outputs, count)

    @classmethod
    def get(cls, cache: Dict, chunk: int, channels: int, hidden: int, outputs: int, device) -> "Workspace":
        """The cached workspace for ``device``, rebuilt when the geometry changes."""
        ws = cache.get(device)
        if ws is None or (ws.chunk, ws.channels, ws.hidden, ws.outputs) != (chunk, channels, hidden, outputs):
            ws = cache[device] = cls(chunk, channels, hidden, outputs, device)
        return ws


def adafactor_tables(state: Dict[str, torch.Tensor], g: torch.Tensor, fac_b: torch.Tensor,
                     clip: Optional[float] = None, split: Optional[Split] = None) -> Optional[Dict]:
    """Update a factored tensor's ``v_row``/``v_col`` in place and return its small tables.

    ``None`` for tensors that are not factored (rank < 2). ``g`` is the work-layout
    gradient, clipped element-wise to ``[-clip, clip]`` first when ``clip`` is given
    (VeLO, Celo). The tables are those the features broadcast: ``v_row``, ``v_col``,
    their ``rsqrt(. + 1e-8)`` and the Adafactor factors; ``g*g`` is the only
    per-element temporary. ``split``: ``g`` is one rank's part of a sharded tensor (factored axes are
    the whole tensor's; means over the split axis sum over the ranks).
    """
    dims = factored_dims(global_shape(g.shape, split))
    if dims is None:
        return None
    d1, d0 = dims
    if clip is None:
        grad_sqr = g * g
    else:
        grad_sqr = torch.clamp(g, -clip, clip)
        grad_sqr.mul_(grad_sqr)
    grad_sqr.add_(acc.FACTORED_EPS)
    state["fac_row"].mul_(fac_b).add_((1 - fac_b) * mean_over(grad_sqr, (d0,), split=split).unsqueeze(-1))
    state["fac_col"].mul_(fac_b).add_((1 - fac_b) * mean_over(grad_sqr, (d1,), split=split).unsqueeze(-1))
    del grad_sqr
    v_row, v_col = state["fac_row"], state["fac_col"]
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    return {"dims": dims, "v_row": v_row, "v_col": v_col,
            "row_rsqrt": torch.rsqrt(v_row + 1e-8), "col_rsqrt": torch.rsqrt(v_col + 1e-8),
            "row_fac": acc.safe_rsqrt(v_row / (mean_over(v_row, (reduced_d1,), keepdim=True,
                                                         split=split and split.without(d0)) + 1e-9)),
            "col_fac": acc.safe_rsqrt(v_col)}


#: which axis each table is broadcast along: 0 -> the largest axis d0, 1 -> the second-largest d1
TABLE_AXIS = {"v_row": 0, "row_rsqrt": 0, "row_fac": 0, "v_col": 1, "col_rsqrt": 1, "col_fac": 1}


def broadcast_table(table: torch.Tensor, shape: Sequence[int], dims: Tuple[int, int], name: str,
                    channel_major: bool = False) -> torch.Tensor:
    """Table ``name`` (``S`` without one axis, plus a trailing ``k``) seen over the whole tensor.

    ``S + (k,)`` by default; with ``channel_major`` ``(k,) + S`` (a contiguous copy
    of the small table, so that each channel row reads with unit stride), to be
    sliced with ``(slice(None),) + index``.
    """
    d1, d0 = dims
    axis = d0 if TABLE_AXIS[name] == 0 else d1
    k = table.shape[-1]
    if channel_major:
        return table.movedim(-1, 0).contiguous().unsqueeze(axis + 1).expand((k,) + tuple(shape))
    return table.unsqueeze(axis).expand(tuple(shape) + (k,))


def table_sumsq(tables: Dict, shape: Sequence[int], names: Sequence[str]) -> torch.Tensor:
    """Per channel, the sum of squares of each named table broadcast over ``shape`` (concatenated).

    Each table entry repeats along the one axis it was reduced over. Of one rank's part of a sharded
    tensor (local ``shape`` and tables) it is that part's share: the ranks' shares sum to the whole.
    """
    d1, d0 = tables["dims"]
    out = []
    for name in names:
        t = tables[name]
        reps = shape[d0] if TABLE_AXIS[name] == 0 else shape[d1]
        out.append((t * t).reshape(-1, t.shape[-1]).sum(dim=0) * reps)
    return torch.cat(out)
