"""Adam arithmetic as the JAX wrappers compute it (CELO2's AdamW path, ELO-CELO2's shared-accumulator AdamW).

* :func:`update_moments` is optax ``scale_by_adam``'s moment update:
  ``mu <- (1-b1)*g + b1*mu``, ``nu <- (1-b2)*(g*g) + b2*nu`` with ``1 - b``
  computed in double and rounded to float32 (optax's Python-float betas),
  unlike the learned accumulators, whose ``1 - b`` is a float32 subtraction.
* :func:`bias_correction` is ``1 - b**t`` in float32 with ``t`` the
  parameter's *own* step count (a float32 tensor, so no host sync).
* :func:`adam_direction` is ``(m / bc1) / (sqrt(v / bc2) + eps)``.
"""

from __future__ import annotations

from typing import List, Sequence

import torch


def bias_correction(decay: float, steps: torch.Tensor) -> torch.Tensor:
    """``1 - decay ** steps`` in float32 (``steps`` a float32 tensor of any shape)."""
    base = torch.tensor(decay, dtype=torch.float32, device=steps.device)
    return 1 - torch.pow(base, steps)


def update_moments(mu: torch.Tensor, nu: torch.Tensor, g: torch.Tensor, b1: float, b2: float) -> None:
    """In place, optax's order and rounding (``g`` float32)."""
    mu.mul_(b1).add_(g * (1 - b1))
    nu.mul_(b2).add_((g * g) * (1 - b2))


def update_moments_foreach(mus: List[torch.Tensor], nus: List[torch.Tensor], gs: List[torch.Tensor],
                           b1: float, b2: float) -> None:
    """Multi-tensor :func:`update_moments` (same arithmetic)."""
    if not mus:
        return
    torch._foreach_mul_(mus, b1)
    torch._foreach_add_(mus, torch._foreach_mul(gs, 1 - b1))
    sq = torch._foreach_mul(gs, gs)
    torch._foreach_mul_(sq, 1 - b2)
    torch._foreach_mul_(nus, b2)
    torch._foreach_add_(nus, sq)


def adam_direction(m: torch.Tensor, v: torch.Tensor, bc1: torch.Tensor, bc2: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """``(m / bc1) / (sqrt(v / bc2) + eps)``."""
    return (m / bc1) / (torch.sqrt(v / bc2) + eps)


def adam_directions_foreach(ms: Sequence[torch.Tensor], vs: Sequence[torch.Tensor], bc1s: Sequence[torch.Tensor],
                            bc2s: Sequence[torch.Tensor], eps: float) -> List[torch.Tensor]:
    """Multi-tensor :func:`adam_direction`."""
    if not ms:
        return []
    den = torch._foreach_sqrt(torch._foreach_div(list(vs), list(bc2s)))
    torch._foreach_add_(den, eps)
    return torch._foreach_div(torch._foreach_div(list(ms), list(bc1s)), den)
