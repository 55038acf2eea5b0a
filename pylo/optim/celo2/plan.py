"""What the fused and the Triton engines share: the feature channels' layout, the sums of squares of
the Adafactor table groups, and Newton-Schulz with the output normaliser.

Both compute the learned path in the *fused plan*: per tensor, pass 1 updates the accumulators and
sums each feature channel's squares per matrix of the last two axes; the normalisers follow from
those sums; pass 2 computes the features again and the MLP into a float32 step buffer, which
Newton-Schulz needs whole; pass 3 applies the normalised step.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from pylo.core import reduce
from pylo.core.orthogonalize import newton_schulz, newton_schulz_
from pylo.optim.celo2.constants import NORMALIZER_EPS, NS_BLOCK, NS_IN_PLACE_MIN
from pylo.spec.features import HYPER_GROUPS, UNFACTORED_GROUPS, celo2_group_widths

#: a feature group's index in upstream's order (:data:`pylo.spec.features.HYPER_GROUPS`)
GROUP = {name: i for i, name in enumerate(HYPER_GROUPS)}
#: the groups that only broadcast the Adafactor tables (row, column, and their rsqrt), and the tables
TABLE_GROUPS = tuple(GROUP[n] for n in ("row", "col", "rs_row", "rs_col"))
TABLE_NAMES = ("v_row", "v_col", "row_rsqrt", "col_rsqrt")
#: groups computed per element: every tensor has the first nine, factored tensors add the Adafactor momentum
COMPUTED_GROUPS_1D = tuple(range(UNFACTORED_GROUPS))
COMPUTED_GROUPS = COMPUTED_GROUPS_1D + (GROUP["fac_mom"],)


class Layout:
    """Where each feature group sits in the channel-major buffer (and the kernels' channel order).

    Rows ``[0, computed)`` hold the per-element groups in :data:`COMPUTED_GROUPS` order; factored
    tensors then have the four table groups. ``counts``: the numbers of momentum, RMS and Adafactor
    decays.
    """

    def __init__(self, counts: Sequence[int], factored: bool):
        self.widths = celo2_group_widths(*counts, factored=factored)
        computed = COMPUTED_GROUPS if factored else COMPUTED_GROUPS_1D
        self.groups = computed + TABLE_GROUPS if factored else computed
        self.offsets: Dict[int, int] = {}
        row = 0
        for grp in self.groups:
            self.offsets[grp] = row
            row += self.widths[grp]
        self.channels = row
        self.computed = sum(self.widths[grp] for grp in computed)

    def rows(self, grp: int) -> slice:
        return slice(self.offsets[grp], self.offsets[grp] + self.widths[grp])

    def channel_order(self) -> List[Tuple[int, int]]:
        """``(group, column)`` of each channel, in buffer order."""
        return [(grp, j) for grp in self.groups for j in range(self.widths[grp])]


def matrix_count(shape: Sequence[int]) -> int:
    """Matrices of the last two axes in a work-layout tensor (1 below rank 3)."""
    matrices = 1
    for s in tuple(shape)[:-2]:
        matrices *= s
    return matrices


def row_sumsq(x: torch.Tensor) -> torch.Tensor:
    """Sum of squares of each row of a 2-D tensor (no temporary of its size)."""
    return reduce.norm_over(x, (1,)).square()


def matrix_table_sumsq(tables: Dict, shape: Sequence[int]) -> torch.Tensor:
    """``(matrices, 4k)``: per matrix of the last two axes, the sums of squares of the broadcast table groups
    (:data:`TABLE_NAMES`, concatenated).

    A table repeats along the axis it was reduced over: inside a matrix (one of
    the last two axes) that multiplies its sum, across matrices it repeats it.
    """
    shape = tuple(shape)
    d1, d0 = tables["dims"]
    rank = len(shape)
    norm_axes = (rank - 2, rank - 1)
    out = []
    for name in TABLE_NAMES:
        t = tables[name]
        axis = d0 if name in ("v_row", "row_rsqrt") else d1
        sq = reduce.sum_over((t * t).unsqueeze(axis), norm_axes)
        if axis in norm_axes:
            sq = sq * shape[axis]
        out.append(sq.expand(shape[:-2] + (t.shape[-1],)).reshape(-1, t.shape[-1]))
    return torch.cat(out, dim=1)


def orthogonalize_and_scale(step: torch.Tensor, cfg, matrices: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Newton-Schulz over the last two axes of a whole float32 step (work layout), then the output normaliser.

    Small matrices are batched exactly as the naive path does, large ones
    orthogonalised in place with symmetric block products
    (:func:`pylo.core.orthogonalize.newton_schulz_`, two ``r x r`` buffers).
    Returns the step and ``rsqrt(eps + mean(step**2))`` per matrix (``(matrices,)``).
    """
    shape = tuple(step.shape)
    matrix_numel = step.numel() // max(matrices, 1)
    if cfg.orthogonalize and len(shape) >= 2:
        if matrix_numel < NS_IN_PLACE_MIN:
            step = newton_schulz(step, cfg.ns_coeffs, cfg.ns_iters, cfg.ns_eps)
        else:
            for mat in step.view(-1, *shape[-2:]).unbind(0):
                newton_schulz_(mat, cfg.ns_coeffs, cfg.ns_iters, cfg.ns_eps, block=NS_BLOCK)
    return step, torch.rsqrt(NORMALIZER_EPS + row_sumsq(step.reshape(matrices, -1)) / matrix_numel)
