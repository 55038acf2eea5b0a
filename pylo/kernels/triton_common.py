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
