"""Triton kernels of the AdafacLO family (AdafacLO, MuLO, ELO: the 39-feature MetaMLP update).

Two passes per tensor, each one fused kernel over blocks of elements:

1. ``_pass1``: update momentum, RMS (and the diagonal Adafactor moment) in
   place, build the 28 raw features and write each block's per-channel sums of
   squares (deterministic: reduced afterwards by torch, no atomics);
2. ``_pass2``: rebuild the features, run the MLP on the block — the normaliser
   and the 11 step features are folded into the first layer by the caller, the
   first layer is a sum of per-channel outer products, the hidden layers use
   ``tl.dot`` in IEEE float32 (never TF32), the output layer two dot products —
   and write the updated parameter in its own dtype (bf16/fp16 parameters keep
   float32 state).

Tensors are flat and contiguous in the work layout; a factored tensor's row
and column tables are gathered by index arithmetic, so every rank works.
Kernels run on the current CUDA stream. Without a GPU they run under
``TRITON_INTERPRET=1`` (how the tests check them against the naive path).
"""

from __future__ import annotations

import triton
import triton.language as tl

from pylo.core.accumulators import FACTORED_EPS
from pylo.kernels.triton_common import store_rounded
from pylo.optim.adafac import constants

# globals a kernel reads must be constexpr
NUM_RAW = tl.constexpr(constants.NUM_RAW)
RMS_EPS = tl.constexpr(constants.RMS_EPS)
GRAD_SQ_EPS = tl.constexpr(FACTORED_EPS)


@triton.jit
def _features(i, mask, p_ptr, g_ptr, m_ptr, rms_ptr, diag_ptr, vrow_ptr, vcol_ptr, rowfac_ptr, colfac_ptr,
              rowrs_ptr, colrs_ptr, inner0, span0, inner1, span1, FACTORED: tl.constexpr):
    """The 28 raw AdafacMLPLOpt features of elements ``i`` (upstream's order), from the updated state."""
    p = tl.load(p_ptr + i, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + i, mask=mask, other=0.0)
    m0 = tl.load(m_ptr + 3 * i, mask=mask, other=0.0)
    m1 = tl.load(m_ptr + 3 * i + 1, mask=mask, other=0.0)
    m2 = tl.load(m_ptr + 3 * i + 2, mask=mask, other=0.0)
    rms = tl.load(rms_ptr + i, mask=mask, other=0.0)
    rs = tl.math.rsqrt(rms + RMS_EPS)
    if FACTORED:
        ri = (i // span0) * inner0 + i % inner0
        ci = (i // span1) * inner1 + i % inner1
        rf0 = tl.load(rowfac_ptr + 3 * ri, mask=mask, other=1.0)
        rf1 = tl.load(rowfac_ptr + 3 * ri + 1, mask=mask, other=1.0)
        rf2 = tl.load(rowfac_ptr + 3 * ri + 2, mask=mask, other=1.0)
        cf0 = tl.load(colfac_ptr + 3 * ci, mask=mask, other=1.0)
        cf1 = tl.load(colfac_ptr + 3 * ci + 1, mask=mask, other=1.0)
        cf2 = tl.load(colfac_ptr + 3 * ci + 2, mask=mask, other=1.0)
        fg0, fg1, fg2 = g * rf0 * cf0, g * rf1 * cf1, g * rf2 * cf2
        r0 = tl.load(vrow_ptr + 3 * ri, mask=mask, other=1.0)
        r1 = tl.load(vrow_ptr + 3 * ri + 1, mask=mask, other=1.0)
        r2 = tl.load(vrow_ptr + 3 * ri + 2, mask=mask, other=1.0)
        c0 = tl.load(vcol_ptr + 3 * ci, mask=mask, other=1.0)
        c1 = tl.load(vcol_ptr + 3 * ci + 1, mask=mask, other=1.0)
        c2 = tl.load(vcol_ptr + 3 * ci + 2, mask=mask, other=1.0)
        rr0 = tl.load(rowrs_ptr + 3 * ri, mask=mask, other=1.0)
        rr1 = tl.load(rowrs_ptr + 3 * ri + 1, mask=mask, other=1.0)
        rr2 = tl.load(rowrs_ptr + 3 * ri + 2, mask=mask, other=1.0)
        cr0 = tl.load(colrs_ptr + 3 * ci, mask=mask, other=1.0)
        cr1 = tl.load(colrs_ptr + 3 * ci + 1, mask=mask, other=1.0)
        cr2 = tl.load(colrs_ptr + 3 * ci + 2, mask=mask, other=1.0)
        fm0, fm1, fm2 = m0 * rf0 * cf0, m1 * rf1 * cf1, m2 * rf2 * cf2
    else:
        r0 = tl.load(diag_ptr + 3 * i, mask=mask, other=1.0)
        r1 = tl.load(diag_ptr + 3 * i + 1, mask=mask, other=1.0)
        r2 = tl.load(diag_ptr + 3 * i + 2, mask=mask, other=1.0)
        c0, c1, c2 = r0, r1, r2
        fg0 = g * tl.math.rsqrt(tl.maximum(r0 + 1e-9, 1e-9))
        fg1 = g * tl.math.rsqrt(tl.maximum(r1 + 1e-9, 1e-9))
        fg2 = g * tl.math.rsqrt(tl.maximum(r2 + 1e-9, 1e-9))
        rr0, rr1, rr2 = tl.math.rsqrt(r0 + 1e-8), tl.math.rsqrt(r1 + 1e-8), tl.math.rsqrt(r2 + 1e-8)
        cr0, cr1, cr2 = rr0, rr1, rr2
        fm0 = m0 * tl.math.rsqrt(r0 + RMS_EPS)
        fm1 = m1 * tl.math.rsqrt(r1 + RMS_EPS)
        fm2 = m2 * tl.math.rsqrt(r2 + RMS_EPS)
    return (g, p, m0, m1, m2, rms, m0 * rs, m1 * rs, m2 * rs, rs, fg0, fg1, fg2, r0, r1, r2, c0, c1, c2,
            rr0, rr1, rr2, cr0, cr1, cr2, fm0, fm1, fm2)


@triton.jit
def _pass1(p_ptr, g_ptr, m_ptr, rms_ptr, diag_ptr, vrow_ptr, vcol_ptr, rowfac_ptr, colfac_ptr, rowrs_ptr, colrs_ptr,
           partial_ptr, n, inner0, span0, inner1, span1,
           bm0, bm1, bm2, am0, am1, am2, br, ar, bf0, bf1, bf2, af0, af1, af2,
           FACTORED: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    g = tl.load(g_ptr + i, mask=mask, other=0.0)
    # accumulators: b * state + (1 - b) * value, as upstream (decays pre-clipped by the caller)
    tl.store(m_ptr + 3 * i, bm0 * tl.load(m_ptr + 3 * i, mask=mask, other=0.0) + am0 * g, mask=mask)
    tl.store(m_ptr + 3 * i + 1, bm1 * tl.load(m_ptr + 3 * i + 1, mask=mask, other=0.0) + am1 * g, mask=mask)
    tl.store(m_ptr + 3 * i + 2, bm2 * tl.load(m_ptr + 3 * i + 2, mask=mask, other=0.0) + am2 * g, mask=mask)
    tl.store(rms_ptr + i, br * tl.load(rms_ptr + i, mask=mask, other=0.0) + ar * (g * g), mask=mask)
    if not FACTORED:
        gsq = g * g + GRAD_SQ_EPS
        tl.store(diag_ptr + 3 * i, bf0 * tl.load(diag_ptr + 3 * i, mask=mask, other=0.0) + af0 * gsq, mask=mask)
        tl.store(diag_ptr + 3 * i + 1, bf1 * tl.load(diag_ptr + 3 * i + 1, mask=mask, other=0.0) + af1 * gsq,
                 mask=mask)
        tl.store(diag_ptr + 3 * i + 2, bf2 * tl.load(diag_ptr + 3 * i + 2, mask=mask, other=0.0) + af2 * gsq,
                 mask=mask)
    feats = _features(i, mask, p_ptr, g_ptr, m_ptr, rms_ptr, diag_ptr, vrow_ptr, vcol_ptr, rowfac_ptr, colfac_ptr,
                      rowrs_ptr, colrs_ptr, inner0, span0, inner1, span1, FACTORED)
    for c in tl.static_range(NUM_RAW):
        x = tl.where(mask, feats[c], 0.0)
        tl.store(partial_ptr + pid * NUM_RAW + c, tl.sum(x * x, axis=0))


@triton.jit
def _pass2(p_ptr, g_ptr, m_ptr, rms_ptr, diag_ptr, vrow_ptr, vcol_ptr, rowfac_ptr, colfac_ptr, rowrs_ptr, colrs_ptr,
           w0_ptr, b0_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr, n, inner0, span0, inner1, span1,
           exp_mult, step_mult, lr, weight_decay,
           FACTORED: tl.constexpr, HIDDEN_LAYERS: tl.constexpr, H: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    feats = _features(i, mask, p_ptr, g_ptr, m_ptr, rms_ptr, diag_ptr, vrow_ptr, vcol_ptr, rowfac_ptr, colfac_ptr,
                      rowrs_ptr, colrs_ptr, inner0, span0, inner1, span1, FACTORED)
    cols = tl.arange(0, H)
    # first layer: normaliser and step features already folded into w0 (NUM_RAW x H) and b0 (H)
    h = tl.zeros((BLOCK, H), dtype=tl.float32) + tl.load(b0_ptr + cols)[None, :]
    for c in tl.static_range(NUM_RAW):
        h += feats[c][:, None] * tl.load(w0_ptr + c * H + cols)[None, :]
    h = tl.maximum(h, 0.0)
    rows = tl.arange(0, H)
    for layer in tl.static_range(HIDDEN_LAYERS):
        w = tl.load(wh_ptr + layer * H * H + rows[:, None] * H + cols[None, :])
        h = tl.dot(h, w, input_precision="ieee") + tl.load(bh_ptr + layer * H + cols)[None, :]
        h = tl.maximum(h, 0.0)
    direction = tl.sum(h * tl.load(wo_ptr + cols)[None, :], axis=1) + tl.load(bo_ptr)
    magnitude = tl.sum(h * tl.load(wo_ptr + H + cols)[None, :], axis=1) + tl.load(bo_ptr + 1)
    p = feats[1]
    step = direction * tl.exp(magnitude * exp_mult) * step_mult
    if weight_decay != 0.0:
        step = step + weight_decay * p
    store_rounded(p_ptr + i, p - step * lr, mask)
