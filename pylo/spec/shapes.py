"""Shape rules shared by the torch optimizers and the JAX references.

Pure Python (no torch, no JAX) so that both sides import the *same* rule.

Two decisions live here:

* ``factored_dims``: which two axes an Adafactor-style accumulator factors.
  Upstream calls ``numpy.argsort(shape)``, whose order on *tied* sizes depends
  on the numpy build and CPU (SIMD sorts are not stable: on numpy 2.4 and x86,
  ``(64, 64, 3, 3)`` factors axes (1, 0) while a stable sort gives (0, 1)).
  pylo uses a stable sort everywhere, in torch and in ``reference_jax`` alike.
  On shapes without ties among the two largest sizes the result is identical
  to upstream's on every machine.
* the *work layout*: the layout in which an optimizer sees a torch tensor.
  Upstream's features depend on the axis order (factored rows/columns, CELO2's
  "last two axes"), so a torch conv kernel ``(out, in, kh, kw)`` is viewed in
  JAX's ``(kh, kw, in, out)`` layout, and a 0-d scalar as shape ``(1,)``
  (upstream expands scalars to ``(1,)`` before its per-parameter network).
  Every other rank is taken as is.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

# torch OIHW -> JAX HWIO, and back.
TORCH_CONV_TO_JAX = (2, 3, 1, 0)
JAX_CONV_TO_TORCH = (3, 2, 0, 1)

#: kernel layouts a param group may declare for its 4-D tensors
KERNEL_LAYOUTS = ("torch", "jax")


def factored_dims(shape: Sequence[int]) -> Optional[Tuple[int, int]]:
    """Return ``(d1, d0)``: the second-largest and the largest axis, or None.

    Tensors of rank < 2 are not factored. Ties are broken by a stable sort:
    among equal sizes the earlier axis ranks lower, so for a square matrix
    ``d1 = 0`` and ``d0 = 1`` (what numpy also returns for rank 2).

    >>> factored_dims((3, 5))
    (0, 1)
    >>> factored_dims((64, 64, 3, 3))
    (0, 1)
    >>> factored_dims((7,)) is None
    True
    """
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda axis: shape[axis])
    return order[-2], order[-1]


def work_permutation(ndim: int, kernel_layout: str = "torch") -> Optional[Tuple[int, ...]]:
    """Permutation from a torch tensor to the optimizer's work layout (None: identity)."""
    if kernel_layout not in KERNEL_LAYOUTS:
        raise ValueError(f"kernel_layout must be one of {KERNEL_LAYOUTS}, got {kernel_layout!r}")
    if ndim == 4 and kernel_layout == "torch":
        return TORCH_CONV_TO_JAX
    return None


def inverse_permutation(perm: Sequence[int]) -> Tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def work_shape(shape: Sequence[int], kernel_layout: str = "torch") -> Tuple[int, ...]:
    """Shape of a tensor in the work layout (scalars become ``(1,)``)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return (1,)
    perm = work_permutation(len(shape), kernel_layout)
    return tuple(shape[i] for i in perm) if perm else shape
