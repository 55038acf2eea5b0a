"""The Triton CELO2-family engine (GPU): the host side of :mod:`pylo.optim.celo2.kernels`.

The fused plan (:mod:`pylo.optim.celo2.plan`) with the per-element passes as kernels, per learned
tensor (work layout, any rank):

1. (:meth:`TritonEngine.prepare`) the Adafactor row/column moments and small tables in torch
   (:func:`pylo.core.fused.adafactor_tables`); ``_pass1``: accumulators updated in place, per-block
   channel sums of squares, reduced per matrix of the last two axes by torch; the four table
   groups' sums come from the tables (:func:`pylo.optim.celo2.plan.matrix_table_sumsq`);
2. (:meth:`TritonEngine.finish`) the normalisers, one per (matrix, channel), handed to ``_pass2``,
   which applies them to the features before the first layer as the naive path rounds them (the
   MLP zero-padded to a power-of-two width): features, MLP, ``direction * exp(magnitude *
   exp_mult)`` into a float32 step buffer;
3. Newton-Schulz and the output normaliser in torch (:func:`pylo.optim.celo2.plan.orthogonalize_and_scale`);
4. ``_apply``: normalised step, ``rmsmult``, weight decay, ``lr``, the parameter in its own dtype.

The AdamW paths are the fused engine's (elementwise multi-tensor torch code). No host
synchronisation; kernels run on the current CUDA stream.

The kernels implement ``K`` momentum decays with as many Adafactor decays and one RMS decay
(CELO2's and ELO-CELO2's (3, 1, 3) among them), and a ``relu`` or ``tanh`` CELO2MLP of any width
and depth; other decay counts raise a ``ValueError`` that points to ``backend='fused'``.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from pylo.core import reduce
from pylo.core.fused import adafactor_tables
from pylo.core.layout import to_work
from pylo.kernels import axis_strides, require_triton
from pylo.optim.celo2.constants import NORMALIZER_EPS, PARAM_SCALE_EPS
from pylo.optim.celo2.fused import FusedEngine
from pylo.optim.celo2.plan import GROUP, Layout, matrix_count, matrix_table_sumsq, orthogonalize_and_scale

BLOCK = 128
#: int32 index arithmetic is exact below this many state entries (``K * numel``)
INT32_LIMIT = 2 ** 31 - 1
TABLES = ("row_fac", "col_fac", "v_row", "v_col", "row_rsqrt", "col_rsqrt")


def channel_order(k: int, factored: bool):
    """``(group, column)`` of upstream's 14 feature groups for each kernel channel, in kernel order:
    the fused engine's buffer order (:class:`pylo.optim.celo2.plan.Layout`) for ``K`` momentum and
    Adafactor decays and one RMS decay."""
    return Layout((k, 1, k), factored).channel_order()


def decay_counts(network: torch.nn.Module):
    """(momentum, RMS, Adafactor) decay counts a CELO2MLP's first layer was built for."""
    dims = tuple(network.feature_dims)
    return dims[GROUP["m"]], dims[GROUP["rms"]], dims[GROUP["fac_g"]]


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


def _weights(network, k: int, device, cache: Dict) -> _Weights:
    """The kernels' copy of the network, cached in ``cache`` while the network's tensors are unchanged
    (same storage, same in-place version counters)."""
    key = ("celo2_triton", device, k, tuple((t.data_ptr(), t._version) for t in network.parameters()))
    found = cache.get(key)
    if found is None:
        for old in [c for c in cache if isinstance(c, tuple) and c[:1] == ("celo2_triton",) and c[1] == device]:
            del cache[old]
        found = cache[key] = _Weights(network, k, device)
    return found


class KernelTensor:
    """One learned tensor as the kernels index it: its tables and launch geometry, and (after pass 1) its
    sums of squares. The contiguous work copies are made again in each pass (:meth:`views`), so that
    none outlives its pass."""

    def __init__(self, p: torch.Tensor, g: torch.Tensor, state: Dict, kernel_layout: str):
        self.p, self.g, self.state, self.kernel_layout = p, g, state, kernel_layout
        for key in ("mom", "rms", "fac_diag"):  # the kernels index state flat (a no-op for the optimizer's own)
            if not state[key].is_contiguous():
                state[key] = state[key].contiguous()
        self.sumsq: Optional[torch.Tensor] = None

    def views(self):
        """The work view of the parameter, a contiguous copy of it (or itself) and the float32 gradient."""
        pw = to_work(self.p, self.kernel_layout)
        work = pw if pw.is_contiguous() else pw.contiguous()
        return pw, work, to_work(self.g, self.kernel_layout).to(torch.float32).contiguous()

    def set_tables(self, tables: Optional[Dict], shape, k: int, clip: bool) -> None:
        """The Adafactor tables (None: not factored) and the launch geometry of a work tensor of ``shape``."""
        self.tables, self.factored = tables, tables is not None
        self.shape, self.n = tuple(shape), 1
        for size in self.shape:
            self.n *= size
        self.matrices = matrix_count(self.shape)
        self.matrix_numel = self.n // max(self.matrices, 1)
        self.blocks_per_matrix = -(-self.matrix_numel // BLOCK)
        self.grid = (self.matrices * self.blocks_per_matrix,)
        self.strides = (1, 1, 1, 1)
        if self.factored:
            d1, d0 = tables["dims"]
            self.strides = (*axis_strides(self.shape, d0), *axis_strides(self.shape, d1))
            self.t = {name: tables[name].contiguous() for name in TABLES}
        else:
            self.t = {name: self.state["fac_diag"] for name in TABLES}
        self.layout = Layout((k, 1, k), self.factored)
        self.common = dict(K=k, FACTORED=self.factored, CLIP=clip, BLOCK=BLOCK, WIDE=k * self.n > INT32_LIMIT)

    def state_ptrs(self):
        return self.state["mom"], self.state["rms"], self.state["fac_diag"], self.t["row_fac"], self.t["col_fac"]


class TritonEngine(FusedEngine):
    """The fused plan as Triton kernels (CUDA; on a CPU only under ``TRITON_INTERPRET=1``)."""

    name = "triton"

    @classmethod
    def unsupported(cls, network: torch.nn.Module) -> Optional[str]:
        """Why the kernels cannot run a network built for these (momentum, RMS, Adafactor) decay counts."""
        counts = decay_counts(network)
        if counts[1] != 1 or counts[0] != counts[2] or counts[0] < 1:
            return (f"the triton CELO2 kernels implement K momentum decays, one RMS decay and K Adafactor decays; got "
                    f"{counts} (momentum, RMS, Adafactor); use backend='fused'")
        return None

    def prepare(self, params, grads, states) -> List[KernelTensor]:
        """Adafactor tables and ``_pass1`` of every tensor: accumulators and per-matrix sums of squares."""
        from pylo.optim.celo2.kernels import _pass1

        device = params[0].device
        require_triton(device)
        why = self.unsupported(self.network)
        if why:
            raise ValueError(why)
        s, k = self.settings, self.counts[0]
        self.weights = _weights(self.network, k, device, self.workspaces)
        self.dec = torch.cat(self.mixes).to(torch.float32).contiguous()  # [b, 1-b] per kind, on the device
        self.clip = 0.0 if s.grad_clip_val is None else float(s.grad_clip_val)
        prepared = []
        for p, g, state in zip(params, grads, states):
            t = KernelTensor(p, g, state, s.kernel_layout)
            _, work, gw = t.views()
            t.set_tables(adafactor_tables(state, gw, self.fac_b, s.grad_clip_val), gw.shape, k,
                         s.grad_clip_val is not None)
            prepared.append(t)
            if t.n == 0:
                continue
            nch = t.layout.computed
            partial = torch.empty(t.grid[0], nch, device=device)
            _pass1[t.grid](work, gw, *t.state_ptrs(), self.dec, partial, t.matrix_numel, t.blocks_per_matrix,
                           *t.strides, self.clip, NCH=nch, **t.common)
            t.sumsq = reduce.sum_over(partial.view(t.matrices, t.blocks_per_matrix, nch), (1,))
            if t.factored:
                t.sumsq = torch.cat([t.sumsq, matrix_table_sumsq(t.tables, t.shape)], dim=1)
        return prepared

    def update_learned(self, prepared: List[KernelTensor]) -> None:
        for t in prepared:
            if t.n:
                self._update(t, self.weights)
            t.state["step"] += 1

    def _update(self, t: KernelTensor, weights: _Weights) -> None:
        """``_pass2`` (features, MLP, direction * magnitude), Newton-Schulz, ``_apply``."""
        import triton

        from pylo.optim.celo2.kernels import _apply, _pass2

        s, cfg = self.settings, self.settings.step
        pw, work, gw = t.views()
        scale = torch.rsqrt(NORMALIZER_EPS + t.sumsq / t.matrix_numel).contiguous()
        w0 = weights.w0[t.factored]
        if cfg.param_scale_mult:
            p_sq = reduce.sum_all(t.sumsq[:, t.layout.offsets[GROUP["p"]]])
            p_scale = torch.sqrt(p_sq / t.n + PARAM_SCALE_EPS).reshape(1)
        else:
            p_scale = scale  # unused
        step = torch.empty(t.shape, device=pw.device)
        _pass2[t.grid](work, gw, *t.state_ptrs(), t.t["v_row"], t.t["v_col"], t.t["row_rsqrt"], t.t["col_rsqrt"],
                       scale, w0, weights.b0, weights.wh, weights.bh, weights.wo, weights.bo, p_scale, step,
                       t.matrix_numel, t.blocks_per_matrix, *t.strides, self.clip, float(cfg.exp_mult), NCH=w0.shape[0],
                       PARAM_SCALE=bool(cfg.param_scale_mult), HIDDEN_LAYERS=weights.layers, ACT=weights.act,
                       H=weights.width, **t.common)
        step, out_scale = orthogonalize_and_scale(step, cfg, t.matrices)
        step = step.contiguous()
        rmsmult = float(cfg.rmsmult)
        _apply[(triton.cdiv(t.n, BLOCK),)](work, step, out_scale, t.n, t.matrix_numel, rmsmult, float(s.lr),
                                           float(s.weight_decay), RMSMULT=rmsmult != 1.0,
                                           DECAY=bool(s.weight_decay) or not s.skip_zero_decay, BLOCK=BLOCK,
                                           WIDE=t.n > INT32_LIMIT)
        if work is not pw:
            pw.copy_(work)
