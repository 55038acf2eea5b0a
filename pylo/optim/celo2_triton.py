"""The Triton CELO2 / ELO-CELO2 backend (GPU): host side of :mod:`pylo.kernels.triton_celo2`.

The plan of the fused backend (:mod:`pylo.optim.celo2_fused`) with the
per-element passes as kernels, per learned tensor (work layout, any rank):

1. the Adafactor row/column moments and small tables in torch
   (:func:`pylo.core.fused.adafactor_tables`);
2. ``_pass1``: accumulators updated in place, per-block channel sums of
   squares, reduced per matrix of the last two axes by torch; the four table
   groups' sums come from the tables (:func:`pylo.optim.celo2_fused.matrix_table_sumsq`);
3. the normalisers, one per (matrix, channel), handed to ``_pass2``, which
   applies them to the features before the first layer as the naive path rounds
   them (the MLP zero-padded to a power-of-two width);
4. ``_pass2``: features, MLP, ``direction * exp(magnitude * exp_mult)`` into a
   float32 step buffer;
5. Newton-Schulz and the output normaliser in torch
   (:func:`pylo.optim.celo2_fused.orthogonalize_and_scale`);
6. ``_apply``: normalised step, ``rmsmult``, weight decay, ``lr``, the parameter
   in its own dtype.

The AdamW paths are elementwise multi-tensor torch code, the same as the fused
backend's (:func:`adamw_update`, :func:`shared_adamw_update` are re-exported).
No host synchronisation; kernels run on the current CUDA stream.

The kernels implement ``K`` momentum decays with as many Adafactor decays and
one RMS decay (CELO2's and ELO-CELO2's (3, 1, 3) among them), and a ``relu`` or
``tanh`` CELO2MLP of any width and depth; other decay counts raise a
``ValueError`` that points to ``backend='fused'``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pylo.core.chunked import DEFAULT_CHUNK
from pylo.core.fused import adafactor_tables
from pylo.core.layout import to_work
from pylo.kernels import axis_strides, require_triton
from pylo.optim.celo2_fused import NORMALIZER_EPS, matrix_table_sumsq, orthogonalize_and_scale
from pylo.optim.celo2_fused import adamw_update, shared_adamw_update  # noqa: F401  the AdamW paths, re-exported

__all__ = ["learned_update", "adamw_update", "shared_adamw_update", "channel_order", "unsupported"]

BLOCK = 128
#: int32 index arithmetic is exact below this many state entries (``K * numel``)
INT32_LIMIT = 2 ** 31 - 1


def channel_order(k: int, factored: bool) -> List[Tuple[int, int]]:
    """``(group, column)`` of upstream's 14 feature groups for each kernel channel, in kernel order.

    The per-element groups in upstream's order (0-8, then 13 for factored
    tensors), then for factored tensors the four broadcast table groups 9-12.
    """
    widths = (1, 1, 1, k, 1, k, 1, k, 1)
    groups = list(range(9)) + ([13, 9, 10, 11, 12] if factored else [])
    widths = widths + ((k,) * 5 if factored else ())
    return [(grp, j) for grp, w in zip(groups, widths) for j in range(w)]


def per_element_channels(k: int, factored: bool) -> int:
    """Channels whose sums of squares ``_pass1`` computes (the rest come from the tables)."""
    return 6 + k * (4 if factored else 3)


def unsupported(counts: Sequence[int]) -> Optional[str]:
    """Why the kernels cannot run these (momentum, RMS, Adafactor) decay counts (None when they can)."""
    counts = tuple(int(c) for c in counts)
    if counts[1] != 1 or counts[0] != counts[2] or counts[0] < 1:
        return (f"the triton CELO2 kernels implement K momentum decays, one RMS decay and K Adafactor decays; got "
                f"{counts} (momentum, RMS, Adafactor); use backend='fused'")
    return None


class _Weights:
    """The CELO2MLP in the kernels' layout: first-layer rows per channel order, ``(in, out)`` dense weights,
    everything zero-padded to a power-of-two width (padded units stay 0 under relu and tanh)."""

    def __init__(self, network, k: int, device):
        from pylo.kernels.triton_common import ACTIVATION_CODES

        if network.activation not in ACTIVATION_CODES:
            raise ValueError(f"the triton CELO2 kernels implement {sorted(ACTIVATION_CODES)} activations, got "
                             f"{network.activation!r}; use backend='fused'")
        self.act = ACTIVATION_CODES[network.activation]
        hidden = network.b0.shape[0]
        self.width = width = max(4, 1 << (hidden - 1).bit_length())
        w0 = [w.detach().to(device=device, dtype=torch.float32) for w in network.w0]

        def padded(x: torch.Tensor, shape) -> torch.Tensor:
            out = torch.zeros(shape, device=device)
            out[tuple(slice(0, s) for s in x.shape)] = x
            return out

        self.w0 = {f: padded(torch.stack([w0[grp][col] for grp, col in channel_order(k, f)]),
                             (len(channel_order(k, f)), width)) for f in (False, True)}
        self.b0 = padded(network.b0.detach().float(), (width,))
        dense_w = [w.detach().float() for w in network.dense_w]
        dense_b = [b.detach().float() for b in network.dense_b]
        self.layers = len(dense_w) - 1
        if self.layers:
            self.wh = torch.stack([padded(w, (width, width)) for w in dense_w[:-1]]).contiguous()
            self.bh = torch.stack([padded(b, (width,)) for b in dense_b[:-1]]).contiguous()
        else:
            self.wh = torch.zeros(1, width, width, device=device)
            self.bh = torch.zeros(1, width, device=device)
        self.wo = padded(dense_w[-1][:, :2].T, (2, width)).contiguous()  # rows: direction, magnitude
        self.bo = dense_b[-1][:2].to(device).contiguous()


def _weights(network, k: int, device, cache: Optional[Dict]) -> _Weights:
    """The kernels' copy of the network, cached in ``cache`` while the network's tensors are unchanged
    (same storage, same in-place version counters)."""
    key = ("celo2_triton", device, k, tuple((t.data_ptr(), t._version) for t in network.parameters()))
    if cache is None:
        return _Weights(network, k, device)
    found = cache.get(key)
    if found is None:
        for old in [c for c in cache if isinstance(c, tuple) and c[:1] == ("celo2_triton",) and c[1] == device]:
            del cache[old]
        found = cache[key] = _Weights(network, k, device)
    return found


def _contiguous_state(state: Dict, keys: Sequence[str]) -> None:
    """The kernels index state tensors flat: make them contiguous (a no-op for the optimizer's own)."""
    for key in keys:
        if not state[key].is_contiguous():
            state[key] = state[key].contiguous()


def learned_update(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict], *, network,
                   decays: Sequence[torch.Tensor], cfg, lr: float, weight_decay: float, grad_clip_val: Optional[float],
                   kernel_layout: str, skip_zero_decay: bool = True, chunk: int = DEFAULT_CHUNK,
                   workspaces: Optional[Dict] = None) -> None:
    """Triton CELO2 learned-path update (accumulators included) of tensors of one group on one device.

    The signature of :func:`pylo.optim.celo2_fused.learned_update`: ``chunk`` is unused (the kernels
    work in blocks of :data:`BLOCK`), ``workspaces`` caches the kernels' copy of the network.
    ``states`` already hold the accumulators; each tensor's step count is incremented.
    """
    if not params:
        return
    import triton

    from pylo.kernels.triton_celo2 import _apply, _pass1, _pass2

    device = params[0].device
    require_triton(device)
    why = unsupported([d.numel() for d in decays])
    if why:
        raise ValueError(why)
    mom_d, rms_d, fac_d = decays
    k = mom_d.numel()
    rms_b, fac_b = rms_d.clamp(0.0, 1.0), fac_d.clamp(0.0, 1.0)
    # [b_mom, b_rms, b_fac, 1-b_mom, 1-b_rms, 1-b_fac] on the device (float32 arithmetic, no host sync)
    dec = torch.cat([mom_d, rms_b, fac_b, 1 - mom_d, 1 - rms_b, 1 - fac_b]).to(torch.float32).contiguous()
    weights = _weights(network, k, device, workspaces)
    width = weights.width
    clip = 0.0 if grad_clip_val is None else float(grad_clip_val)
    decay = bool(weight_decay) or not skip_zero_decay
    rmsmult = float(cfg.rmsmult)

    for p, g, state in zip(params, grads, states):
        _contiguous_state(state, ("mom", "rms", "fac_diag"))
        pw = to_work(p, kernel_layout)
        work = pw if pw.is_contiguous() else pw.contiguous()
        gw = to_work(g, kernel_layout).to(torch.float32).contiguous()
        shape = tuple(pw.shape)
        n = pw.numel()
        tables = adafactor_tables(state, gw, fac_b, grad_clip_val)
        if n == 0:
            state["step"] += 1
            continue
        factored = tables is not None
        matrices = 1
        for s in shape[:-2]:
            matrices *= s
        matrix_numel = n // matrices
        blocks_per_matrix = triton.cdiv(matrix_numel, BLOCK)
        grid = (matrices * blocks_per_matrix,)
        wide = k * n > INT32_LIMIT
        strides = (1, 1, 1, 1)
        if factored:
            d1, d0 = tables["dims"]
            strides = (*axis_strides(shape, d0), *axis_strides(shape, d1))
            t = {name: tables[name].contiguous()
                 for name in ("row_fac", "col_fac", "v_row", "v_col", "row_rsqrt", "col_rsqrt")}
        else:
            t = {name: state["fac_diag"] for name in ("row_fac", "col_fac", "v_row", "v_col", "row_rsqrt",
                                                      "col_rsqrt")}
        nch = per_element_channels(k, factored)
        common = dict(K=k, FACTORED=factored, CLIP=grad_clip_val is not None, BLOCK=BLOCK, WIDE=wide)

        # pass 1: accumulators, per-block channel sums of squares
        partial = torch.empty(grid[0], nch, device=device)
        _pass1[grid](work, gw, state["mom"], state["rms"], state["fac_diag"], t["row_fac"], t["col_fac"], dec,
                     partial, matrix_numel, blocks_per_matrix, *strides, clip, NCH=nch, **common)
        sumsq = partial.view(matrices, blocks_per_matrix, nch).sum(dim=1)
        if factored:
            sumsq = torch.cat([sumsq, matrix_table_sumsq(tables, shape)], dim=1)

        # the normalisers: (matrices, channels)
        scale = torch.rsqrt(NORMALIZER_EPS + sumsq / matrix_numel).contiguous()
        w0 = weights.w0[factored]
        if cfg.param_scale_mult:
            p_scale = torch.sqrt(sumsq[:, 2].sum() / n + 1e-9).reshape(1)
        else:
            p_scale = scale  # unused

        # pass 2: features, MLP, direction * magnitude
        step = torch.empty(shape, device=device)
        _pass2[grid](work, gw, state["mom"], state["rms"], state["fac_diag"], t["row_fac"], t["col_fac"],
                     t["v_row"], t["v_col"], t["row_rsqrt"], t["col_rsqrt"], scale, w0, weights.b0, weights.wh,
                     weights.bh, weights.wo, weights.bo, p_scale, step, matrix_numel, blocks_per_matrix, *strides,
                     clip, float(cfg.exp_mult), NCH=w0.shape[0], PARAM_SCALE=bool(cfg.param_scale_mult),
                     HIDDEN_LAYERS=weights.layers, ACT=weights.act, H=width, **common)

        # Newton-Schulz and the output normaliser (torch), then the update
        step, out_scale = orthogonalize_and_scale(step, cfg, matrices)
        step = step.contiguous()
        _apply[(triton.cdiv(n, BLOCK),)](work, step, out_scale, n, matrix_numel, rmsmult, float(lr),
                                         float(weight_decay), RMSMULT=rmsmult != 1.0, DECAY=decay, BLOCK=BLOCK,
                                         WIDE=n > INT32_LIMIT)
        if work is not pw:
            pw.copy_(work)
        state["step"] += 1
