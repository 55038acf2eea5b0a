"""Gradient accumulators shared by every learned optimizer (upstream ``common.py``).

All tensors here are float32 and in the work layout (``pylo.spec.shapes``); the
decay axis is trailing, as upstream's ``vmap(..., out_axes=-1)`` leaves it:

* momentum ``m``: ``S + (k,)``; ``m <- b*m + (1-b)*g`` with no clipping of ``b``
  and no bias correction;
* second moment ``rms``: ``S + (k,)``; ``b`` clipped to [0, 1];
* Adafactor-style factored moments: ``v_row`` (``S`` without its largest axis),
  ``v_col`` (``S`` without its second-largest axis), or ``v_diag`` (``S``) for
  rank < 2, each with a trailing ``k``; unused slots are empty ``(0, k)``.

Every formula keeps upstream's operation order, so float32 results agree to
within a few ulp with the JAX reference.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from pylo.core.reduce import Split, global_shape, mean_over
from pylo.spec.shapes import factored_dims

FACTORED_EPS = 1e-30  # added to g*g before averaging (upstream ``epsilon``)


def float32_decays(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """Decays as a float32 tensor: all arithmetic on them then happens in float32, as in JAX."""
    return torch.as_tensor(list(values), dtype=torch.float32, device=device)


def safe_rsqrt(x: torch.Tensor) -> torch.Tensor:
    """``rsqrt(max(x, 1e-9))``."""
    return torch.rsqrt(torch.clamp_min(x, 1e-9))


# --------------------------------------------------------------------------- init

def init_moment(work_shape: Sequence[int], k: int, device) -> torch.Tensor:
    return torch.zeros(tuple(work_shape) + (k,), dtype=torch.float32, device=device)


def init_factored(work_shape: Sequence[int], k: int, device, split: Optional[Split] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(v_row, v_col, v_diag)`` zeros with upstream's shapes (empty slots ``(0, k)``); with a
    ``split``, ``work_shape`` is this rank's part and the factored axes are the whole tensor's."""
    shape = tuple(work_shape)
    empty = torch.zeros((0, k), dtype=torch.float32, device=device)
    dims = factored_dims(global_shape(shape, split))
    if dims is None:
        return empty, empty.clone(), torch.zeros(shape + (k,), dtype=torch.float32, device=device)
    d1, d0 = dims
    row_shape = tuple(s for i, s in enumerate(shape) if i != d0) + (k,)
    col_shape = tuple(s for i, s in enumerate(shape) if i != d1) + (k,)
    return (torch.zeros(row_shape, dtype=torch.float32, device=device),
            torch.zeros(col_shape, dtype=torch.float32, device=device), empty)


# ------------------------------------------------------------------------- update

def update_momentum(m: torch.Tensor, g: torch.Tensor, decays: torch.Tensor) -> None:
    """In place: ``m <- b*m + (1-b)*g`` (decays unclipped)."""
    m.mul_(decays).add_((1 - decays) * g.unsqueeze(-1))


def update_rms(rms: torch.Tensor, g: torch.Tensor, decays: torch.Tensor) -> None:
    """In place: ``rms <- b*rms + (1-b)*g^2`` with ``b`` clipped to [0, 1]."""
    b = decays.clamp(0.0, 1.0)
    rms.mul_(b).add_((1 - b) * (g * g).unsqueeze(-1))


def row_col_factors(v_row: torch.Tensor, v_col: torch.Tensor, dims: Tuple[int, int],
                    split: Optional[Split] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Adafactor preconditioner factors, broadcastable against ``S + (k,)``.

    ``row = safe_rsqrt(v_row / (mean(v_row, rd1) + 1e-9))`` and ``col = safe_rsqrt(v_col)``,
    expanded at ``d0`` and ``d1`` respectively. ``split``: that of the full tensor ``S + (k,)``.
    """
    d1, d0 = dims
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    row_mean = mean_over(v_row, (reduced_d1,), keepdim=True, split=split and split.without(d0))
    row = safe_rsqrt(v_row / (row_mean + 1e-9))
    col = safe_rsqrt(v_col)
    return row.unsqueeze(d0), col.unsqueeze(d1)


def update_factored(v_row: torch.Tensor, v_col: torch.Tensor, v_diag: torch.Tensor,
                    g: torch.Tensor, decays: torch.Tensor, split: Optional[Split] = None) -> torch.Tensor:
    """Update the factored moments in place and return the preconditioned ``fac_g`` (``split``: that of
    ``g``, when it is one rank's part of a split tensor)."""
    b = decays.clamp(0.0, 1.0)
    mix = 1 - b
    grad_sqr = g * g + FACTORED_EPS
    dims = factored_dims(global_shape(g.shape, split))
    if dims is None:
        v_diag.mul_(b).add_(mix * grad_sqr.unsqueeze(-1))
        return g.unsqueeze(-1) * safe_rsqrt(v_diag + 1e-9)
    d1, d0 = dims
    v_row.mul_(b).add_(mix * mean_over(grad_sqr, (d0,), split=split).unsqueeze(-1))
    v_col.mul_(b).add_(mix * mean_over(grad_sqr, (d1,), split=split).unsqueeze(-1))
    row, col = row_col_factors(v_row, v_col, dims, split)
    return g.unsqueeze(-1) * row * col


class AccumulatorSet:
    """The three upstream accumulators of one tensor, stored in an optimizer state dict.

    State keys: ``mom``, ``rms``, ``fac_row``, ``fac_col``, ``fac_diag``.
    """

    KEYS = ("mom", "rms", "fac_row", "fac_col", "fac_diag")

    @staticmethod
    def splits(work_shape: Sequence[int], split: Optional[Split]) -> Dict[str, Optional[Split]]:
        """Which axis of each accumulator is split when the work-layout tensor (local ``work_shape``) is
        (a key left out, or None: the accumulator is whole on every rank)."""
        if split is None:
            return {}
        dims = factored_dims(global_shape(work_shape, split))
        if dims is None:
            return {"mom": split, "rms": split, "fac_diag": split}
        d1, d0 = dims
        return {"mom": split, "rms": split, "fac_row": split.without(d0), "fac_col": split.without(d1)}

    @staticmethod
    def init(state: Dict[str, torch.Tensor], work_shape, n_mom: int, n_rms: int, n_fac: int, device,
             split: Optional[Split] = None) -> None:
        state["mom"] = init_moment(work_shape, n_mom, device)
        state["rms"] = init_moment(work_shape, n_rms, device)
        state["fac_row"], state["fac_col"], state["fac_diag"] = init_factored(work_shape, n_fac, device, split)

    @staticmethod
    def update(state: Dict[str, torch.Tensor], g: torch.Tensor, mom_decays: torch.Tensor,
               rms_decays: torch.Tensor, fac_decays: torch.Tensor, split: Optional[Split] = None) -> torch.Tensor:
        """Update all three in place; return ``fac_g``."""
        update_momentum(state["mom"], g, mom_decays)
        update_rms(state["rms"], g, rms_decays)
        return update_factored(state["fac_row"], state["fac_col"], state["fac_diag"], g, fac_decays, split)


def update_momentum_foreach(ms, gs, decays: torch.Tensor) -> None:
    """Multi-tensor :func:`update_momentum` (same arithmetic, one call per op)."""
    if not ms:
        return
    torch._foreach_mul_(ms, [decays] * len(ms))
    torch._foreach_add_(ms, torch._foreach_mul([g.unsqueeze(-1) for g in gs], [1 - decays] * len(ms)))


def update_rms_foreach(rs, gs, decays: torch.Tensor) -> None:
    """Multi-tensor :func:`update_rms`."""
    if not rs:
        return
    b = decays.clamp(0.0, 1.0)
    sq = torch._foreach_mul(gs, gs)
    torch._foreach_mul_(rs, [b] * len(rs))
    torch._foreach_add_(rs, torch._foreach_mul([s.unsqueeze(-1) for s in sq], [1 - b] * len(rs)))
