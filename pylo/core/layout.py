"""Moving torch tensors in and out of the optimizers' work layout (see ``shapes``)."""

from __future__ import annotations

import torch

from pylo.spec.shapes import inverse_permutation, work_permutation


def to_work(t: torch.Tensor, kernel_layout: str = "torch") -> torch.Tensor:
    """A view of ``t`` in the work layout: scalars as ``(1,)``, OIHW kernels as HWIO."""
    if t.dim() == 0:
        return t.reshape(1)
    perm = work_permutation(t.dim(), kernel_layout)
    return t.permute(perm) if perm else t


def from_work(t: torch.Tensor, like: torch.Tensor, kernel_layout: str = "torch") -> torch.Tensor:
    """Inverse of :func:`to_work` for a tensor shaped like ``to_work(like)``."""
    if like.dim() == 0:
        return t.reshape(())
    perm = work_permutation(like.dim(), kernel_layout)
    return t.permute(inverse_permutation(perm)) if perm else t


def subtract_update(p: torch.Tensor, delta: torch.Tensor, kernel_layout: str = "torch") -> None:
    """``p <- p - delta`` in place, ``delta`` float32 in the work layout of ``p``.

    Low-precision parameters are updated in float32 and rounded once.
    """
    delta = from_work(delta, p, kernel_layout)
    if p.dtype == torch.float32:
        p.sub_(delta)
    else:
        p.copy_((p.to(torch.float32) - delta).to(p.dtype))
