"""Triton kernels for CELO2 and ELO-CELO2: the per-element half of the learned update.

Launched by :mod:`pylo.optim.celo2.triton`. The plan of the fused engine (:mod:`pylo.optim.celo2.fused`) with each
per-element pass one kernel per tensor. CELO2 normalises every feature over the
*last two* axes, so a program works inside one matrix of those axes (program
``pid`` is block ``pid % blocks_per_matrix`` of matrix ``pid // blocks_per_matrix``;
a tensor of rank < 2 is one matrix):

1. ``_pass1``: momentum, RMS (and the diagonal Adafactor moment of a rank < 2
   tensor) updated in place, then the per-element features and each channel's
   sum of squares, written per block (reduced per matrix by torch: no atomics,
   deterministic);
2. ``_pass2``: the features again (plus, for a factored tensor, the four
   broadcast row/column table groups, gathered by index arithmetic), each scaled
   by its matrix's normaliser (computed by the host from the pass-1 sums), the
   first layer as per-channel outer products summed group by group in
   upstream's order (the naive path's rounding, as far as a kernel can), hidden
   layers with ``tl.dot`` in IEEE float32 (never TF32) when the padded width is
   at least 16, and ``direction * exp(magnitude * exp_mult)`` (times the
   parameter scale) written to a float32 step buffer: Newton-Schulz (torch)
   needs the whole step;
3. ``_apply``: output normaliser of the element's matrix, ``rmsmult``, weight
   decay, ``lr``, and the parameter stored in its own dtype (bf16/fp16
   parameters rounded once, float32 state).

Channel order (``K`` momentum = Adafactor decays, one RMS decay): upstream's
per-element groups 0-8 (``g, clip(g), p, m_0..K-1, rms, m*rs, rs, fac_g, g*rs``),
for factored tensors group 13 (``fac_mom``), then the table groups 9-12
(``v_row, v_col, rsqrt(v_row), rsqrt(v_col)``; :func:`pylo.optim.celo2.triton.channel_order`).
Decays arrive as a device table ``[b_mom(K), b_rms, b_fac(K), 1-b_mom(K),
1-b_rms, 1-b_fac(K)]`` (no host synchronisation). Kernels run on the current
CUDA stream; without a GPU, under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from pylo.core.accumulators import FACTORED_EPS as _FACTORED_EPS
from pylo.kernels.triton_common import activation, dense, store_rounded
from pylo.optim.celo2 import constants

FEATURE_CLIP = tl.constexpr(constants.GRAD_CLIP_FEATURE)
RMS_EPS = tl.constexpr(constants.RMS_EPS)
DIAG_EPS = tl.constexpr(constants.DIAG_EPS)
FACTORED_EPS = tl.constexpr(_FACTORED_EPS)


@triton.jit
def _sumsq(ptr, x, mask):
    """Store the sum of squares of ``x`` over the block's valid lanes."""
    x = tl.where(mask, x, 0.0)
    tl.store(ptr, tl.sum(x * x, axis=0))


@triton.jit
def _term(x, c, scale_ptr, w0_ptr, cols, H: tl.constexpr):
    """Channel ``c``'s first-layer term: ``(x * scale_c) (outer) w0_c`` (normalised as the naive path rounds it)."""
    return (x * tl.load(scale_ptr + c))[:, None] * tl.load(w0_ptr + c * H + cols)[None, :]


@triton.jit
def _elements(matrix_numel, blocks_per_matrix, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """The flat indices, validity mask and matrix number of this program's block."""
    pid = tl.program_id(0)
    mat = pid // blocks_per_matrix
    local = (pid % blocks_per_matrix) * BLOCK + tl.arange(0, BLOCK)
    mask = local < matrix_numel
    if WIDE:
        i = mat.to(tl.int64) * matrix_numel + local
    else:
        i = mat * matrix_numel + local
    return pid, mat, i, mask


@triton.jit
def _table_index(i, inner, span):
    """Entry of a table that drops one axis (``(inner, span)`` from :func:`pylo.kernels.axis_strides`)."""
    return (i // span) * inner + i % inner


@triton.jit
def _load_grad(g_ptr, i, mask, clip, CLIP: tl.constexpr):
    g = tl.load(g_ptr + i, mask=mask, other=0.0).to(tl.float32)
    if CLIP:
        g = tl.minimum(tl.maximum(g, -clip), clip)
    return g


@triton.jit
def _pass1(p_ptr, g_ptr, m_ptr, rms_ptr, diag_ptr, rowfac_ptr, colfac_ptr, dec_ptr, partial_ptr,
           matrix_numel, blocks_per_matrix, inner0, span0, inner1, span1, clip,
           K: tl.constexpr, FACTORED: tl.constexpr, CLIP: tl.constexpr, NCH: tl.constexpr, BLOCK: tl.constexpr,
           WIDE: tl.constexpr):
    pid, mat, i, mask = _elements(matrix_numel, blocks_per_matrix, BLOCK, WIDE)
    out = partial_ptr + pid * NCH
    g = _load_grad(g_ptr, i, mask, clip, CLIP)
    p = tl.load(p_ptr + i, mask=mask, other=0.0).to(tl.float32)
    # RMS: b * state + (1 - b) * g^2, as upstream (decays pre-clipped by the host)
    r = tl.load(dec_ptr + K) * tl.load(rms_ptr + i, mask=mask, other=0.0) + tl.load(dec_ptr + 3 * K + 1) * (g * g)
    tl.store(rms_ptr + i, r, mask=mask)
    rs = tl.math.rsqrt(r + RMS_EPS)
    _sumsq(out, g, mask)
    _sumsq(out + 1, tl.minimum(tl.maximum(g, -FEATURE_CLIP), FEATURE_CLIP), mask)
    _sumsq(out + 2, p, mask)
    _sumsq(out + 3 + K, r, mask)
    _sumsq(out + 4 + 2 * K, rs, mask)
    _sumsq(out + 5 + 3 * K, g * rs, mask)
    if FACTORED:
        ri = _table_index(i, inner0, span0)
        ci = _table_index(i, inner1, span1)
    else:
        gsq = g * g + FACTORED_EPS
    for j in tl.static_range(K):
        m = tl.load(dec_ptr + j) * tl.load(m_ptr + K * i + j, mask=mask, other=0.0) \
            + tl.load(dec_ptr + 2 * K + 1 + j) * g
        tl.store(m_ptr + K * i + j, m, mask=mask)
        _sumsq(out + 3 + j, m, mask)
        _sumsq(out + 4 + K + j, m * rs, mask)
        if FACTORED:
            rf = tl.load(rowfac_ptr + K * ri + j, mask=mask, other=1.0)
            cf = tl.load(colfac_ptr + K * ci + j, mask=mask, other=1.0)
            _sumsq(out + 5 + 2 * K + j, g * rf * cf, mask)
            _sumsq(out + 6 + 3 * K + j, m * rf * cf, mask)
        else:
            d = tl.load(dec_ptr + K + 1 + j) * tl.load(diag_ptr + K * i + j, mask=mask, other=0.0) \
                + tl.load(dec_ptr + 3 * K + 2 + j) * gsq
            tl.store(diag_ptr + K * i + j, d, mask=mask)
            _sumsq(out + 5 + 2 * K + j, g * tl.math.rsqrt(tl.maximum(d + DIAG_EPS, DIAG_EPS)), mask)


@triton.jit
def _pass2(p_ptr, g_ptr, m_ptr, rms_ptr, diag_ptr, rowfac_ptr, colfac_ptr, vrow_ptr, vcol_ptr, rowrs_ptr, colrs_ptr,
           scale_ptr, w0_ptr, b0_ptr, wh_ptr, bh_ptr, wo_ptr, bo_ptr, pscale_ptr, step_ptr,
           matrix_numel, blocks_per_matrix, inner0, span0, inner1, span1, clip, exp_mult,
           K: tl.constexpr, FACTORED: tl.constexpr, CLIP: tl.constexpr, NCH: tl.constexpr,
           PARAM_SCALE: tl.constexpr, HIDDEN_LAYERS: tl.constexpr, ACT: tl.constexpr, H: tl.constexpr,
           BLOCK: tl.constexpr, WIDE: tl.constexpr):
    pid, mat, i, mask = _elements(matrix_numel, blocks_per_matrix, BLOCK, WIDE)
    cols = tl.arange(0, H)
    sc = scale_ptr + mat * NCH  # this matrix's normalisers, one per channel
    g = _load_grad(g_ptr, i, mask, clip, CLIP)
    p = tl.load(p_ptr + i, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(rms_ptr + i, mask=mask, other=0.0)
    rs = tl.math.rsqrt(r + RMS_EPS)
    if FACTORED:
        ri = _table_index(i, inner0, span0)
        ci = _table_index(i, inner1, span1)
    # the first layer group by group in upstream's order, each group's terms summed before it is added
    h = _term(g, 0, sc, w0_ptr, cols, H)
    h += _term(tl.minimum(tl.maximum(g, -FEATURE_CLIP), FEATURE_CLIP), 1, sc, w0_ptr, cols, H)
    h += _term(p, 2, sc, w0_ptr, cols, H)
    t = tl.zeros((BLOCK, H), dtype=tl.float32)
    for j in tl.static_range(K):
        t += _term(tl.load(m_ptr + K * i + j, mask=mask, other=0.0), 3 + j, sc, w0_ptr, cols, H)
    h += t
    h += _term(r, 3 + K, sc, w0_ptr, cols, H)
    t = tl.zeros((BLOCK, H), dtype=tl.float32)
    for j in tl.static_range(K):
        t += _term(tl.load(m_ptr + K * i + j, mask=mask, other=0.0) * rs, 4 + K + j, sc, w0_ptr, cols, H)
    h += t
    h += _term(rs, 4 + 2 * K, sc, w0_ptr, cols, H)
    t = tl.zeros((BLOCK, H), dtype=tl.float32)
    for j in tl.static_range(K):
        if FACTORED:
            rf = tl.load(rowfac_ptr + K * ri + j, mask=mask, other=1.0)
            cf = tl.load(colfac_ptr + K * ci + j, mask=mask, other=1.0)
            fg = g * rf * cf
        else:
            fg = g * tl.math.rsqrt(tl.maximum(tl.load(diag_ptr + K * i + j, mask=mask, other=1.0) + DIAG_EPS, DIAG_EPS))
        t += _term(fg, 5 + 2 * K + j, sc, w0_ptr, cols, H)
    h += t
    h += _term(g * rs, 5 + 3 * K, sc, w0_ptr, cols, H)
    if FACTORED:
        T = 6 + 4 * K  # the table groups 9-12 (group 13, fac_mom, sits before them)
        t = tl.zeros((BLOCK, H), dtype=tl.float32)
        for j in tl.static_range(K):
            t += _term(tl.load(vrow_ptr + K * ri + j, mask=mask, other=1.0), T + j, sc, w0_ptr, cols, H)
        h += t
        t = tl.zeros((BLOCK, H), dtype=tl.float32)
        for j in tl.static_range(K):
            t += _term(tl.load(vcol_ptr + K * ci + j, mask=mask, other=1.0), T + K + j, sc, w0_ptr, cols, H)
        h += t
        t = tl.zeros((BLOCK, H), dtype=tl.float32)
        for j in tl.static_range(K):
            t += _term(tl.load(rowrs_ptr + K * ri + j, mask=mask, other=1.0), T + 2 * K + j, sc, w0_ptr, cols, H)
        h += t
        t = tl.zeros((BLOCK, H), dtype=tl.float32)
        for j in tl.static_range(K):
            t += _term(tl.load(colrs_ptr + K * ci + j, mask=mask, other=1.0), T + 3 * K + j, sc, w0_ptr, cols, H)
        h += t
        t = tl.zeros((BLOCK, H), dtype=tl.float32)
        for j in tl.static_range(K):
            rf = tl.load(rowfac_ptr + K * ri + j, mask=mask, other=1.0)
            cf = tl.load(colfac_ptr + K * ci + j, mask=mask, other=1.0)
            t += _term(tl.load(m_ptr + K * i + j, mask=mask, other=0.0) * rf * cf, 6 + 3 * K + j, sc, w0_ptr,
                       cols, H)
        h += t
    h = activation(h + tl.load(b0_ptr + cols)[None, :], ACT)
    for layer in tl.static_range(HIDDEN_LAYERS):
        h = dense(h, wh_ptr + layer * H * H, bh_ptr + layer * H, H, ACT)
    direction = tl.sum(h * tl.load(wo_ptr + cols)[None, :], axis=1) + tl.load(bo_ptr)
    magnitude = tl.sum(h * tl.load(wo_ptr + H + cols)[None, :], axis=1) + tl.load(bo_ptr + 1)
    mag = tl.exp(tl.where(mask, magnitude, 0.0) * exp_mult)  # padding lanes: no overflow warnings
    if PARAM_SCALE:
        mag = tl.load(pscale_ptr) * mag
    tl.store(step_ptr + i, direction * mag, mask=mask)


@triton.jit
def _apply(p_ptr, step_ptr, scale_ptr, n, matrix_numel, rmsmult, lr, weight_decay,
           RMSMULT: tl.constexpr, DECAY: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    i = pid * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    s = tl.load(step_ptr + i, mask=mask, other=0.0) * tl.load(scale_ptr + i // matrix_numel, mask=mask, other=0.0)
    if RMSMULT:
        s = s * rmsmult
    p = tl.load(p_ptr + i, mask=mask, other=0.0).to(tl.float32)
    if DECAY:
        s = s + weight_decay * p
    store_rounded(p_ptr + i, p - s * lr, mask)
