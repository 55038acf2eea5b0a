"""Newton-Schulz orthogonalisation over a tensor's last two axes (CELO2, upstream ``celo2_optax``).

Leading axes are a batch: a JAX conv kernel ``(kh, kw, in, out)`` is
orthogonalised per spatial tap over ``(in, out)``, a 3-D tensor per leading
index. The arithmetic follows upstream's order, including
``b * A + (c * A) @ A`` (Python evaluates ``c * A @ A`` left to right).
"""

from __future__ import annotations

from typing import Sequence

import torch

from pylo.core import reduce

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
    x = x / (reduce.norm_over(x, (-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.transpose(-2, -1)
        poly = b * gram + (c * gram) @ gram
        x = a * x + poly @ x
    return x.transpose(-2, -1) if swap else x


def newton_schulz_flops(shape: Sequence[int], steps: int = 5) -> int:
    """Floating-point operations of :func:`newton_schulz` on a tensor of ``shape`` (0 below rank 2).

    Per matrix ``r x c`` (``r`` the smaller side) and step: the Gram matrix and
    ``P x`` cost ``2 r^2 c`` each, ``(c A) A`` costs ``2 r^3``. This is the
    matmul floor CELO2 adds to its per-element MLP (``pylo-bench`` reports it).

    >>> newton_schulz_flops((4, 6), steps=1)  # 2*16*6 + 2*64 + 2*16*6
    512
    """
    if len(shape) < 2:
        return 0
    r, c = sorted(shape[-2:])
    batch = 1
    for d in shape[:-2]:
        batch *= d
    return batch * steps * (4 * r * r * c + 2 * r ** 3)


def newton_schulz_(x: torch.Tensor, coeffs: Sequence[float] = NS_COEFFS, steps: int = 5, eps: float = 1e-8,
                   block: int = 256) -> torch.Tensor:
    """:func:`newton_schulz` of one matrix, in place and in bounded memory (returns ``x``).

    Same arithmetic up to float32 round-off (each product is the same sum of
    products, only evaluated in blocks), for large matrices: besides ``x``
    itself it holds two ``r x r`` matrices (``r`` the smaller side) and one
    ``block``-row buffer, never a copy of ``x``. The Gram matrix ``x x^T`` and
    ``(c A) A`` are symmetric, so only their upper block triangles are
    multiplied (about a third fewer flops than the plain iteration) and the
    lower triangles mirrored; ``a x + P x`` is applied column block by column
    block, each block depending only on its own columns.

    >>> m = torch.randn(40, 30)
    >>> torch.allclose(newton_schulz_(m.clone(), block=8), newton_schulz(m), atol=1e-5)
    True
    """
    if x.dim() != 2:
        raise ValueError(f"newton_schulz_ takes one matrix, got shape {tuple(x.shape)}")
    a, b, c = (float(v) for v in coeffs)
    work = x.transpose(0, 1) if x.shape[0] > x.shape[1] else x
    r, cols = work.shape
    block = max(1, int(block))
    work.div_(reduce.norm_over(work, (-2, -1), keepdim=True) + eps)
    gram = torch.empty(r, r, dtype=x.dtype, device=x.device)
    poly = torch.empty(r, r, dtype=x.dtype, device=x.device)
    buf = torch.empty(max(block * r, r * min(block, cols)), dtype=x.dtype, device=x.device)
    for _ in range(steps):
        _symmetric_product(gram, buf, block, lambda rows, cols_: torch.mm(work[rows], work[cols_].T,
                                                                          out=buf[: _n(rows) * _n(cols_, r)]
                                                                          .view(_n(rows), _n(cols_, r))))
        torch.mul(gram, c, out=poly)  # c * A, rounded as upstream's (c * A) @ A
        _symmetric_product(poly, buf, block, lambda rows, cols_: torch.addmm(
            gram[rows, cols_], poly[rows], gram[:, cols_], beta=b,
            out=buf[: _n(rows) * _n(cols_, r)].view(_n(rows), _n(cols_, r))))
        for j in range(0, cols, block):
            cb = slice(j, min(cols, j + block))
            out = buf[: r * _n(cb)].view(r, _n(cb))
            torch.addmm(work[:, cb], poly, work[:, cb], beta=a, out=out)
            work[:, cb].copy_(out)
    return x


def _n(s: slice, size: int = 0) -> int:
    """Length of ``s`` (``size`` is the axis length when ``s.stop`` is None)."""
    return (size if s.stop is None else s.stop) - s.start


def _symmetric_product(dest: torch.Tensor, buf: torch.Tensor, block: int, product) -> None:
    """Fill symmetric ``dest`` block row by block row: ``product(rows, cols)`` gives the block of
    ``dest[rows, cols]`` for the upper part ``cols = i0:``; the part left of the diagonal is
    mirrored from rows already done. ``product`` may read ``dest[rows]`` (it is written after)."""
    r = dest.shape[0]
    for i0 in range(0, r, block):
        rows = slice(i0, min(r, i0 + block))
        upper = slice(i0, None)
        dest[rows, upper].copy_(product(rows, upper))
        if i0:
            dest[rows, :i0].copy_(dest[:i0, rows].T)
