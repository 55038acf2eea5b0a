"""Triton kernels of the HyperV2 family (VeLO, Celo): the per-element half of the update.

HyperV2 is upstream's name for the VeLO / Celo architecture. The host side is
:mod:`pylo.optim.hyperv2.triton`. Two passes per tensor, each one fused kernel over blocks of
elements (the plan of the fused CPU engine, :mod:`pylo.optim.hyperv2.fused`):

1. ``_pass1`` (before the LSTM): per block, the sums the LSTM features read on
   the *old* momentum and RMS (block sums and second moments about the block's
   own mean, merged by torch without cancellation); then momentum, RMS (and the
   diagonal moment of rank < 2 tensors) updated in place; then the features and
   each channel's sum of squares, written per block (reduced by torch: no
   atomics, deterministic);
2. ``_pass2`` (after it): the features again and the tensor's interpolated MLP
   with the 14 normalisers folded into the first layer by the host, which is a
   sum of per-channel outer products; for factored tensors the four row/column
   groups and the bias arrive as two gathered ``(entries, H)`` tables. Hidden
   layers use ``tl.dot`` in IEEE float32 (never TF32) when the width is at least
   16, else a broadcast product (VeLO's width is 4); then the step and the
   parameter, stored in its own dtype (bf16/fp16 parameters, float32 state).

Features, in the fused channel order (18 per element; 30 for rank < 2, whose
row/column groups are the diagonal moment): ``g, clip(g), p, m0..2, rms,
m*rs 0..2, rs, fac_g 0..2, g*rs, fac_mom 0..2`` then ``row, col, rsqrt(row),
rsqrt(col)`` (3 each). ``g`` is clipped to +-1000 on load. Tensors are flat and
contiguous in the work layout; the row/column tables are gathered by index
arithmetic, so every rank works. Kernels run on the current CUDA stream;
without a GPU, under ``TRITON_INTERPRET=1``. Decay counts are VeLO's (3, 1, 3); the
constants (clip 1000 and 0.1, eps 1e-6, 1e-8, 1e-9, 1e-30) are those of
:mod:`pylo.optim.hyperv2.constants` and :mod:`pylo.core.accumulators`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from pylo.kernels.triton_common import dense, load3, store_rounded

N_ELEM = 18  # features built per element for a factored tensor
N_ALL = 30   # every feature (rank < 2 tensors)
N_MOM = 4    # old m0..2 and rms: block sums, then block second moments


@triton.jit
def _features(g, p, m0, m1, m2, r, a0, a1, a2, b0, b1, b2, FACTORED: tl.constexpr):
    """All 30 features in the fused order (the last 12 are meaningful for rank < 2 only).

    Factored: ``a``/``b`` are the row/column Adafactor factors of the element;
    otherwise ``a`` is the diagonal moment (``b`` unused).
    """
    clip = tl.minimum(tl.maximum(g, -0.1), 0.1)
    rs = tl.math.rsqrt(r + 1e-6)
    if FACTORED:
        fg0, fg1, fg2 = g * a0 * b0, g * a1 * b1, g * a2 * b2
        fm0, fm1, fm2 = m0 * a0 * b0, m1 * a1 * b1, m2 * a2 * b2
        rr0, rr1, rr2 = a0, a1, a2  # placeholders: the table groups come from the host's tables
    else:
        fg0 = g * tl.math.rsqrt(tl.maximum(a0 + 1e-9, 1e-9))
        fg1 = g * tl.math.rsqrt(tl.maximum(a1 + 1e-9, 1e-9))
        fg2 = g * tl.math.rsqrt(tl.maximum(a2 + 1e-9, 1e-9))
        fm0, fm1, fm2 = m0 * tl.math.rsqrt(a0), m1 * tl.math.rsqrt(a1), m2 * tl.math.rsqrt(a2)
        rr0, rr1, rr2 = tl.math.rsqrt(a0 + 1e-8), tl.math.rsqrt(a1 + 1e-8), tl.math.rsqrt(a2 + 1e-8)
    return (g, clip, p, m0, m1, m2, r, m0 * rs, m1 * rs, m2 * rs, rs, fg0, fg1, fg2, g * rs, fm0, fm1, fm2,
            a0, a1, a2, a0, a1, a2, rr0, rr1, rr2, rr0, rr1, rr2)


@triton.jit
def _pass1(p_ptr, g_ptr, m_ptr, rms_ptr, diag_ptr, rowfac_ptr, colfac_ptr, partial_ptr, n,
           inner0, span0, inner1, span1,
           bm0, bm1, bm2, am0, am1, am2, br, ar, bf0, bf1, bf2, af0, af1, af2,
           FACTORED: tl.constexpr, MOMENTS: tl.constexpr, NCH: tl.constexpr, NP: tl.constexpr,
           BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    out = partial_ptr + pid * NP
    g = tl.load(g_ptr + i, mask=mask, other=0.0)
    g = tl.minimum(tl.maximum(g, -1000.0), 1000.0)
    p = tl.load(p_ptr + i, mask=mask, other=0.0).to(tl.float32)
    m0, m1, m2 = load3(m_ptr, i, mask, 0.0)
    r = tl.load(rms_ptr + i, mask=mask, other=0.0)
    if MOMENTS:  # of the old accumulators, for the LSTM
        # block sums, and second moments about the block's own mean (merged by the host without cancellation)
        count = tl.minimum(n - pid * BLOCK, BLOCK).to(tl.float32)
        old = (m0, m1, m2, r)
        for c in tl.static_range(4):
            total = tl.sum(old[c], axis=0)  # masked lanes hold 0
            d = tl.where(mask, old[c] - total / count, 0.0)
            tl.store(out + NCH + c, total)
            tl.store(out + NCH + 4 + c, tl.sum(d * d, axis=0))
    # accumulators: b * state + (1 - b) * value, as upstream (decays pre-clipped by the caller)
    m0 = bm0 * m0 + am0 * g
    m1 = bm1 * m1 + am1 * g
    m2 = bm2 * m2 + am2 * g
    r = br * r + ar * (g * g)
    tl.store(m_ptr + 3 * i, m0, mask=mask)
    tl.store(m_ptr + 3 * i + 1, m1, mask=mask)
    tl.store(m_ptr + 3 * i + 2, m2, mask=mask)
    tl.store(rms_ptr + i, r, mask=mask)
    if FACTORED:
        ri = (i // span0) * inner0 + i % inner0  # the row / column tables' entries of each element
        ci = (i // span1) * inner1 + i % inner1
        a0, a1, a2 = load3(rowfac_ptr, ri, mask, 1.0)
        b0, b1, b2 = load3(colfac_ptr, ci, mask, 1.0)
    else:
        gsq = g * g + 1e-30
        a0, a1, a2 = load3(diag_ptr, i, mask, 1.0)
        a0 = bf0 * a0 + af0 * gsq
        a1 = bf1 * a1 + af1 * gsq
        a2 = bf2 * a2 + af2 * gsq
        tl.store(diag_ptr + 3 * i, a0, mask=mask)
        tl.store(diag_ptr + 3 * i + 1, a1, mask=mask)
        tl.store(diag_ptr + 3 * i + 2, a2, mask=mask)
        b0, b1, b2 = a0, a1, a2
    feats = _features(g, p, m0, m1, m2, r, a0, a1, a2, b0, b1, b2, FACTORED)
    for c in tl.static_range(NCH):
        x = tl.where(mask, feats[c], 0.0)
        tl.store(out + c, tl.sum(x * x, axis=0))


@triton.jit
def _pass2(p_ptr, g_ptr, m_ptr, rms_ptr, diag_ptr, rowfac_ptr, colfac_ptr,
           w0_ptr, b0_ptr, rowtab_ptr, coltab_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr, scale_ptr, lr_mult_ptr,
           n, inner0, span0, inner1, span1, exp_mult, step_mult, lr, weight_decay,
           FACTORED: tl.constexpr, USE_LR_MULT: tl.constexpr, NCH: tl.constexpr, HIDDEN_LAYERS: tl.constexpr,
           H: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    g = tl.load(g_ptr + i, mask=mask, other=0.0)
    g = tl.minimum(tl.maximum(g, -1000.0), 1000.0)
    p = tl.load(p_ptr + i, mask=mask, other=0.0).to(tl.float32)
    m0, m1, m2 = load3(m_ptr, i, mask, 0.0)
    r = tl.load(rms_ptr + i, mask=mask, other=0.0)
    cols = tl.arange(0, H)
    if FACTORED:
        ri = (i // span0) * inner0 + i % inner0
        ci = (i // span1) * inner1 + i % inner1
        a0, a1, a2 = load3(rowfac_ptr, ri, mask, 1.0)
        b0, b1, b2 = load3(colfac_ptr, ci, mask, 1.0)
        # bias and the row/column groups, folded into two (entries, H) tables by the host
        h = (tl.load(rowtab_ptr + ri[:, None] * H + cols[None, :], mask=mask[:, None], other=0.0)
             + tl.load(coltab_ptr + ci[:, None] * H + cols[None, :], mask=mask[:, None], other=0.0))
    else:
        a0, a1, a2 = load3(diag_ptr, i, mask, 1.0)
        b0, b1, b2 = a0, a1, a2
        h = tl.zeros((BLOCK, H), dtype=tl.float32) + tl.load(b0_ptr + cols)[None, :]
    feats = _features(g, p, m0, m1, m2, r, a0, a1, a2, b0, b1, b2, FACTORED)
    # first layer (normalisers folded in): a sum of per-channel outer products
    for c in tl.static_range(NCH):
        h += feats[c][:, None] * tl.load(w0_ptr + c * H + cols)[None, :]
    h = tl.maximum(h, 0.0)
    for layer in tl.static_range(HIDDEN_LAYERS):
        h = dense(h, wh_ptr + layer * H * H, bh_ptr + layer * H, H, 0)  # relu
    direction = tl.sum(h * tl.load(wo_ptr + cols)[None, :], axis=1) + tl.load(bo_ptr)
    magnitude = tl.sum(h * tl.load(wo_ptr + H + cols)[None, :], axis=1) + tl.load(bo_ptr + 1)
    step = direction * (tl.load(scale_ptr) * tl.exp(magnitude * exp_mult)) * step_mult
    if USE_LR_MULT:
        step = tl.load(lr_mult_ptr) * step
    if weight_decay != 0.0:
        step = step + weight_decay * p
    store_rounded(p_ptr + i, p - step * lr, mask)
