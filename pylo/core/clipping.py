"""Gradient sanitising shared by the optimizers (torch side)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from pylo.core.reduce import Split, global_norm  # noqa: F401 (part of this module's API)


def clip_by_global_norm(grads: List[torch.Tensor], max_norm: float,
                        splits: Optional[Sequence[Optional[Split]]] = None) -> List[torch.Tensor]:
    """optax ``clip_by_global_norm``: unchanged if ``norm < max_norm``, else ``g / norm * max_norm``.

    Returns new tensors (the caller's gradients are never modified) and does not
    synchronise with the host. ``splits``: which gradients are one rank's part of a split tensor.
    """
    if not grads:
        return []
    norm = global_norm(grads, splits)
    keep = norm < max_norm
    return [torch.where(keep.to(g.device), g, g / norm.to(g.device) * max_norm) for g in grads]


def nan_to_num(grads: List[torch.Tensor]) -> List[torch.Tensor]:
    """``jnp.nan_to_num``: NaN -> 0, +-inf -> the largest finite float32."""
    return [torch.nan_to_num(g) for g in grads]


def clamp_elementwise(grads: List[torch.Tensor], bound: float) -> List[torch.Tensor]:
    """``clip(g, -bound, bound)``."""
    return [torch.clamp(g, -bound, bound) for g in grads]
