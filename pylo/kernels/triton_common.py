"""Triton helpers shared by the kernels of every learned optimizer."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def store_rounded(ptr, x, mask):
    """Store float32 ``x`` in ``ptr``'s dtype, rounding to nearest-even as torch does.

    bfloat16 is rounded by hand: Triton's interpreter truncates in ``.to(bfloat16)``.
    """
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + (((bits >> 16) & 1) + 0x7FFF)
        tl.store(ptr, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load3(ptr, j, mask, other):
    """Entries ``3j``, ``3j+1``, ``3j+2`` (three decays stored last) of a float32 table."""
    return (tl.load(ptr + 3 * j, mask=mask, other=other), tl.load(ptr + 3 * j + 1, mask=mask, other=other),
            tl.load(ptr + 3 * j + 2, mask=mask, other=other))


#: the ``ACT`` code of :func:`activation` for each activation name
ACTIVATION_CODES = {"relu": 0, "tanh": 1}


@triton.jit
def activation(x, ACT: tl.constexpr):
    """``relu`` (``ACT == 0``) or ``tanh`` (``ACT == 1``; by ``exp``, as the interpreter has no libdevice:
    within a few float32 ulps of 1 of ``torch.tanh``)."""
    if ACT == 0:
        y = tl.maximum(x, 0.0)
    else:
        e = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - e) / (1.0 + e)
        y = tl.where(x < 0.0, -t, t)
    return y


@triton.jit
def dense(h, w_ptr, b_ptr, H: tl.constexpr, ACT: tl.constexpr):
    """``act(h @ W + b)`` for an ``(H, H)`` (in, out) weight: ``tl.dot`` (IEEE float32) when H >= 16,
    else a broadcast product."""
    rows = tl.arange(0, H)
    w = tl.load(w_ptr + rows[:, None] * H + rows[None, :])
    if H >= 16:
        h = tl.dot(h, w, input_precision="ieee")
    else:
        h = tl.sum(h[:, :, None] * w[None, :, :], axis=1)
    return activation(h + tl.load(b_ptr + rows)[None, :], ACT)
