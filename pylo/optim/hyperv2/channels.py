"""The fused and Triton engines' view of the per-element MLP: channel order and folded first layer.

The fused plan writes the 14 feature groups (:data:`pylo.spec.features.HYPER_GROUPS`) in its own
channel order, per-element groups first and the four row/column groups of a factored tensor last
(:class:`ChannelLayout`), and never normalises a feature: the 14 second-moment normalisers are
per-channel scales, folded into a per-tensor copy of the interpolated first layer
(:func:`fold_mlp`).
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from pylo.optim.hyperv2.constants import NORMALIZER_EPS
from pylo.spec.features import HYPER_GROUPS, hyper_group_widths

#: the fused channel order: per-element groups first, the four row/column table groups last
FUSED_ORDER = ("g", "clip", "p", "m", "rms", "mrs", "rs", "fac_g", "grs", "fac_mom", "row", "col", "rs_row", "rs_col")
#: the Adafactor tables (:func:`pylo.core.fused.adafactor_tables`) behind the last four groups, in that order
TABLE_NAMES = ("v_row", "v_col", "row_rsqrt", "col_rsqrt")


class ChannelLayout:
    """Where each feature group sits in the fused channel order, for ``(k_mom, k_rms, k_fac)`` decays."""

    def __init__(self, k_mom: int, k_rms: int, k_fac: int):
        self.k = (k_mom, k_rms, k_fac)
        widths = dict(zip(HYPER_GROUPS, hyper_group_widths(k_mom, k_rms, k_fac)))
        upstream_start, start = {}, 0
        for name in HYPER_GROUPS:
            upstream_start[name] = start
            start += widths[name]
        self.total = start
        self.slice: Dict[str, slice] = {}
        perm, start = [], 0
        for name in FUSED_ORDER:
            self.slice[name] = slice(start, start + widths[name])
            perm += range(upstream_start[name], upstream_start[name] + widths[name])
            start += widths[name]
        #: upstream channel index of each fused channel
        self.perm = perm
        #: channels built per element for a factored tensor (the table groups follow them)
        self.per_element = self.slice["row"].start

    def __getitem__(self, name: str) -> slice:
        return self.slice[name]

    @property
    def k_mom(self) -> int:
        return self.k[0]


def fold_mlp(layout: ChannelLayout, t, weights: Sequence[torch.Tensor]) -> Dict:
    """A tensor's interpolated MLP with its 14 second-moment normalisers folded into the first layer.

    ``t`` is a :class:`pylo.optim.hyperv2.two_pass.PassTensor` after pass 1; ``weights`` as
    :meth:`pylo.models.hyper_network.VeLOMLP.unflatten` gives them (torch ``(out, in)``
    layout); ``t.sumsq`` are the channels' sums of squares (fused order). Returns ``w_elem``
    ``(hidden, channels)``: the first layer on the channels built per element (18 for a
    factored tensor, all 30 otherwise); ``b0`` ``(hidden, 1)``; for a factored tensor
    ``row_tab`` / ``col_tab`` instead: the bias plus the ``row`` and ``rsqrt(row)`` groups'
    contribution, and the ``col`` and ``rsqrt(col)`` groups', as ``S' + (hidden,)`` tables
    indexed like ``v_row`` / ``v_col``; ``dense`` (``(W, b)`` pairs), and the output layer's two
    used rows ``w_out``, ``b_out``.
    """
    n_hidden = (len(weights) - 4) // 2
    w_in, b_in = weights[0], weights[1]
    scale = torch.rsqrt(NORMALIZER_EPS + t.sumsq / t.n)
    w = w_in[:, layout.perm] * scale  # (hidden, 30), fused channel order
    folded = {"dense": [(weights[2 + i], weights[2 + n_hidden + i].unsqueeze(-1)) for i in range(n_hidden)],
              "w_out": weights[2 + 2 * n_hidden][:2], "b_out": weights[3 + 2 * n_hidden][:2].unsqueeze(-1),
              "b0": b_in.unsqueeze(-1)}
    if not t.factored:
        folded["w_elem"] = w.contiguous()
        return folded
    folded["w_elem"] = w[:, :layout.per_element].contiguous()
    tables = t.tables
    flat = lambda name: tables[name].reshape(-1, tables[name].shape[-1]).t()  # noqa: E731  (k, entries)
    row = torch.addmm(folded["b0"], w[:, layout["row"]], flat("v_row"))
    row.addmm_(w[:, layout["rs_row"]], flat("row_rsqrt"))
    col = torch.mm(w[:, layout["col"]], flat("v_col"))
    col.addmm_(w[:, layout["rs_col"]], flat("col_rsqrt"))
    hidden = w.shape[0]
    folded["row_tab"] = row.t().reshape(tables["v_row"].shape[:-1] + (hidden,))
    folded["col_tab"] = col.t().reshape(tables["v_col"].shape[:-1] + (hidden,))
    return folded


def interpolate(mlp, controls: torch.Tensor, interp_mult: float) -> torch.Tensor:
    """``interp_mult * mean_k(controls[:, k] * bank[k])`` for every tensor at once: ``(n, bank_size)``.

    One matrix product (no ``(n, param_inits, bank_size)`` temporary).
    """
    bank = mlp.flat_bank()
    return torch.mm(controls, bank).div_(bank.shape[0]).mul_(interp_mult)
