"""Feature builders shared by the learned optimizers (torch side).

Each function mirrors one upstream expression; names say which.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from pylo.core.accumulators import row_col_factors
from pylo.core.reduce import Split, global_shape, second_moment
from pylo.spec.features import FRACTION_OFFSETS, HYPER_GROUP_WIDTHS, TANH_TIMESCALES  # noqa: F401 (re-exported)
from pylo.spec.shapes import factored_dims



def second_moment_normalize(x: torch.Tensor, dims: Sequence[int], eps: float, split: Optional[Split] = None
                            ) -> torch.Tensor:
    """``x * rsqrt(eps + mean(x^2, dims))`` per channel; empty ``dims`` is the identity mean."""
    return x * torch.rsqrt(eps + second_moment(x, dims, split))


def tanh_embedding(iteration: torch.Tensor) -> torch.Tensor:
    """Eleven ``tanh(it / tau - 1)`` values for the (0-based) iteration ``it``."""
    taus = torch.tensor(TANH_TIMESCALES, dtype=torch.float32, device=iteration.device)
    return torch.tanh(iteration.to(torch.float32) / taus - 1.0)


def fractional_tanh_embedding(fraction: torch.Tensor) -> torch.Tensor:
    """Nine ``tanh(10 * (x - tau))`` values of the fraction of training done."""
    taus = torch.tensor(FRACTION_OFFSETS, dtype=torch.float32, device=fraction.device)
    return torch.tanh(10.0 * (fraction.to(torch.float32) - taus))


def adafactor_features(m: torch.Tensor, v_row: torch.Tensor, v_col: torch.Tensor, v_diag: torch.Tensor,
                       shape: Sequence[int], dims: Optional[Tuple[int, int]], diag_mom_eps: float,
                       split: Optional[Split] = None) -> List[torch.Tensor]:
    """The five Adafactor feature groups, each ``S + (k,)``.

    ``[row, col, rsqrt(row + 1e-8), rsqrt(col + 1e-8), fac_mom_mult]`` where for a
    factored tensor ``row``/``col`` are ``v_row``/``v_col`` broadcast along the
    axis they average out and ``fac_mom_mult = m * row_factor * col_factor``;
    for a non-factored tensor ``row = col = v_diag`` and
    ``fac_mom_mult = m * (v_diag + diag_mom_eps) ** -0.5`` (AdafacMLPLOpt uses
    1e-6, VeLO 0). ``shape`` is the local one; ``dims`` and ``split`` (of ``m``) the whole tensor's.
    """
    k = m.shape[-1]
    full = tuple(shape) + (k,)
    if dims is None:
        row = col = v_diag
        base = v_diag + diag_mom_eps if diag_mom_eps else v_diag
        fac_mom_mult = m * torch.pow(base, -0.5)
    else:
        d1, d0 = dims
        row = v_row.unsqueeze(d0).expand(full)
        col = v_col.unsqueeze(d1).expand(full)
        row_factor, col_factor = row_col_factors(v_row, v_col, dims, split)
        fac_mom_mult = m * row_factor * col_factor
    return [row, col, torch.rsqrt(row + 1e-8), torch.rsqrt(col + 1e-8), fac_mom_mult]


GRAD_CLIP_FEATURE = 0.1


def hyper_feature_groups(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, rms: torch.Tensor, fac_g: torch.Tensor,
                         v_row: torch.Tensor, v_col: torch.Tensor, v_diag: torch.Tensor, *, rms_eps: float,
                         diag_groups: bool, split: Optional[Split] = None) -> List[torch.Tensor]:
    """The per-element feature groups of HyperV2 (VeLO), Celo and CELO2, un-normalised.

    ``[g, clip(g, -0.1, 0.1), p, m, rms, m*rsqrt(rms+eps), rsqrt(rms+eps), fac_g,
    g*rsqrt(rms+eps)]`` followed, for factored tensors (rank >= 2), by the five
    Adafactor groups. For rank < 2, VeLO and Celo (``diag_groups=True``) add the
    diagonal versions (``fac_mom_mult = m * v_diag**-0.5``, no epsilon) while
    CELO2 adds none. ``rms_eps`` is 1e-6 (VeLO, Celo) or 1e-8 (CELO2). ``split``: ``p`` is one
    rank's part of a sharded tensor (the factored axes are the whole tensor's).
    """
    rsqrt = torch.rsqrt(rms + rms_eps)
    g1 = g.unsqueeze(-1)
    groups = [g1, torch.clamp(g1, -GRAD_CLIP_FEATURE, GRAD_CLIP_FEATURE), p.unsqueeze(-1), m, rms, m * rsqrt,
              rsqrt, fac_g, g1 * rsqrt]
    dims = factored_dims(global_shape(p.shape, split))
    if dims is not None or diag_groups:
        groups += adafactor_features(m, v_row, v_col, v_diag, p.shape, dims, diag_mom_eps=0.0, split=split)
    return groups
