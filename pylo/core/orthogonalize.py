"""Newton-Schulz orthogonalisation over a tensor's last two axes (CELO2, upstream ``celo2_optax``).

Leading axes are a batch: a JAX conv kernel ``(kh, kw, in, out)`` is
orthogonalised per spatial tap over ``(in, out)``, a 3-D tensor per leading
index. The arithmetic follows upstream's order, including
``b * A + (c * A) @ A`` (Python evaluates ``c * A @ A`` left to right).
"""

from __future__ import annotations

from typing import Sequence

import torch

#: upstream's quintic coefficients (Muon's)
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(x: torch.Tensor, coeffs: Sequence[float] = NS_COEFFS, steps: int = 5,
                  eps: float = 1e-8) -> torch.Tensor:
    """Approximately orthogonalise each trailing matrix of ``x`` (rank >= 2, float32).

    >>> q = newton_schulz(torch.randn(3, 4, 6))
    >>> q.shape
    torch.Size([3, 4, 6])
    """
    if x.dim() < 2:
        raise ValueError(f"newton_schulz needs a tensor of rank >= 2, got shape {tuple(x.shape)}")
    a, b, c = (float(v) for v in coeffs)
    swap = x.shape[-2] > x.shape[-1]
    if swap:
        x = x.transpose(-2, -1)
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.transpose(-2, -1)
        poly = b * gram + (c * gram) @ gram
        x = a * x + poly @ x
    return x.transpose(-2, -1) if swap else x
