"""The fused AdafacLO engine: bounded memory, the normaliser folded into the first layer.

Same update as the naive engine within float32 round-off, computed differently:

* a tensor is visited in slabs of at most ``chunk_size`` elements
  (``pylo.core.chunked``); no ``(numel, 39)`` tensor is ever built, so the
  transient memory is a few chunk-sized buffers plus one float per element
  (``g*g`` for the Adafactor reductions);
* features are written channel-major into a reused ``(28, chunk)`` buffer;
  Adafactor row/column features come from the small tables by broadcasting
  (their ``rsqrt`` is taken on the tables, not per element);
* ``prepare`` (pass 1) updates momentum, RMS and the diagonal moment in place
  and sums each channel's squares; the second-moment normaliser is then a
  per-channel scale ``s``, folded into a per-tensor copy of the first layer
  (``(x * s) @ W0 = x @ (s[:, None] * W0)``), and the 11 step features, constant
  over a tensor, fold into its bias;
* ``finish`` (pass 2) rebuilds each chunk's features and runs the MLP with
  ``addmm`` into reused activation buffers, then applies the step.

Between the passes only the small tables and the 28 sums of squares are kept per tensor. Of one
rank's part of a sharded tensor (``splits``), the tables' means and the sums of squares are summed
over the ranks (one all-reduce of 28 numbers per tensor, besides the tables').
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch

from pylo.core import accumulators as acc
from pylo.core.chunked import slabs
from pylo.core.features import tanh_embedding
from pylo.core.fused import Workspace, adafactor_tables, broadcast_table, table_sumsq
from pylo.core.layout import from_work, subtract_update, to_work
from pylo.core.reduce import all_reduce_sum, global_shape, row_sum_squares
from pylo.optim.adafac.constants import NORMALIZER_EPS, NUM_RAW, RMS_EPS
from pylo.optim.adafac.engine import AdafacEngine
from pylo.optim.adafac.network import linear_layers

#: channels that are broadcasts of the small Adafactor tables for factored tensors
TABLE_ROWS = slice(13, 25)
TABLE_NAMES = ("v_row", "v_col", "row_rsqrt", "col_rsqrt")


def mlp_weights(network):
    """``(out, in)`` weights and ``(out, 1)`` biases of a MetaMLP, in layer order.

    Activations are kept channel-major, ``h^T = W @ x^T + b``: the long axis is
    the matmul's N dimension, which BLAS handles much better for such thin layers.
    """
    return [(m.weight, m.bias.unsqueeze(-1)) for m in linear_layers(network)]


class _TensorView:
    """One tensor's contiguous float32 work views and its Adafactor tables broadcast over the tensor.

    ``g`` is the contiguous work-layout gradient; ``tables`` come from :func:`adafactor_tables`
    (None for a tensor that is not factored).
    """

    def __init__(self, pw: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor], tables: Optional[Dict]):
        self.shape = tuple(pw.shape)
        self.p = pw if (pw.dtype == torch.float32 and pw.is_contiguous()) else pw.to(torch.float32).contiguous()
        self.p_is_copy = self.p.data_ptr() != pw.data_ptr() or self.p.dtype != pw.dtype
        self.g = g
        self.m, self.rms = state["mom"], state["rms"]
        self.diag = state["fac_diag"] if tables is None else None
        if tables is None:
            return
        self.row, self.col, self.row_rsqrt, self.col_rsqrt, self.row_fac, self.col_fac = (
            broadcast_table(tables[k], self.shape, tables["dims"], k) for k in TABLE_NAMES + ("row_fac", "col_fac"))


def _fill(xt: torch.Tensor, v: _TensorView, idx, tables: bool = True) -> None:
    """Write one slab's 28 raw AdafacMLPLOpt features (upstream's order) into ``xt`` (channels, count).

    ``tables=False`` skips the rows that only broadcast Adafactor tables (their
    sums of squares come from the tables themselves).
    """
    shape = v.p[idx].shape
    rows = lambda a, b: xt[a:b].view((b - a,) + shape)  # noqa: E731  channel rows shaped like the slab
    one = lambda i: xt[i].view(shape)  # noqa: E731
    g, p, m, rms = v.g[idx], v.p[idx], v.m[idx], v.rms[idx]
    mt = m.movedim(-1, 0)  # (k,) + slab: decay channels first, as the rows are laid out
    one(0).copy_(g)
    one(1).copy_(p)
    rows(2, 5).copy_(mt)
    one(5).copy_(rms[..., 0])
    rsqrt = torch.rsqrt(rms[..., 0] + RMS_EPS)
    torch.mul(mt, rsqrt, out=rows(6, 9))
    one(9).copy_(rsqrt)
    if v.diag is None:
        row_fac, col_fac = v.row_fac[idx].movedim(-1, 0), v.col_fac[idx].movedim(-1, 0)
        torch.mul(g * row_fac, col_fac, out=rows(10, 13))
        if tables:
            rows(13, 16).copy_(v.row[idx].movedim(-1, 0))
            rows(16, 19).copy_(v.col[idx].movedim(-1, 0))
            rows(19, 22).copy_(v.row_rsqrt[idx].movedim(-1, 0))
            rows(22, 25).copy_(v.col_rsqrt[idx].movedim(-1, 0))
        torch.mul(mt * row_fac, col_fac, out=rows(25, 28))
    else:
        diag = v.diag[idx].movedim(-1, 0)
        torch.mul(g, acc.safe_rsqrt(diag + 1e-9), out=rows(10, 13))
        rows(13, 16).copy_(diag)
        rows(16, 19).copy_(diag)
        torch.rsqrt(diag + 1e-8, out=rows(19, 22))
        rows(22, 25).copy_(rows(19, 22))
        torch.mul(mt, torch.pow(diag + RMS_EPS, -0.5), out=rows(25, 28))


class FusedEngine(AdafacEngine):
    """Two passes per tensor over chunks: ``prepare`` accumulates, ``finish`` runs the folded MLP."""

    name = "fused"

    def _workspace(self, device) -> Workspace:
        hidden = mlp_weights(self.network)[0][0].shape[0]
        return Workspace.get(self.workspaces, self.chunk_size, NUM_RAW, hidden, 2, device)

    def prepare(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], states: Sequence[Dict]
                ) -> List:
        ws = self._workspace(params[0].device) if params else None
        mom_d, rms_d, fac_d = self.decays
        rms_b, fac_b = rms_d.clamp(0.0, 1.0), fac_d.clamp(0.0, 1.0)
        coefficients = (mom_d, 1 - mom_d, rms_b, 1 - rms_b, fac_b, 1 - fac_b)
        prepared = []
        for p, g, state, split in zip(params, grads, states, self.splits or [None] * len(params)):
            gw = to_work(g, self.kernel_layout).contiguous()
            tables = adafactor_tables(state, gw, fac_b, split=split)
            v = _TensorView(to_work(p, self.kernel_layout), gw, state, tables)
            sumsq = self._accumulate(v, ws, coefficients)
            if tables is not None:
                sumsq[TABLE_ROWS] = table_sumsq(tables, v.shape, TABLE_NAMES)
            all_reduce_sum(sumsq, split)
            prepared.append((p, g, state, tables, sumsq, math.prod(global_shape(v.shape, split))))
        return prepared

    def _accumulate(self, v: _TensorView, ws: Workspace, coefficients) -> torch.Tensor:
        """Pass 1 over ``v``: accumulators in place, slab by slab; each feature channel's sum of squares.

        ``coefficients``: each accumulator's decay (RMS and Adafactor ones clipped to [0, 1]) and ``1 - decay``.
        """
        mom_d, mix_m, rms_b, mix_r, fac_b, mix_f = coefficients
        sumsq = torch.zeros(NUM_RAW, device=v.p.device)
        factored = v.diag is None
        for idx, count in slabs(v.shape, self.chunk_size):
            g_s = v.g[idx].unsqueeze(-1)
            v.m[idx].mul_(mom_d).add_(mix_m * g_s)
            g_sq = g_s * g_s
            v.rms[idx].mul_(rms_b).add_(mix_r * g_sq)
            if not factored:
                v.diag[idx].mul_(fac_b).add_(mix_f * (g_sq + acc.FACTORED_EPS))
            x = ws.x(count)
            _fill(x, v, idx, tables=not factored)
            if factored:
                sumsq[:TABLE_ROWS.start] += row_sum_squares(x[:TABLE_ROWS.start])
                sumsq[TABLE_ROWS.stop:] += row_sum_squares(x[TABLE_ROWS.stop:])
            else:
                sumsq += row_sum_squares(x)
        return sumsq

    def finish(self, prepared: List, **inputs) -> None:
        if not prepared:
            return
        layers = mlp_weights(self.network)
        ws = self._workspace(prepared[0][0].device)
        for p, g, state, tables, sumsq, numel in prepared:
            v = _TensorView(to_work(p, self.kernel_layout), to_work(g, self.kernel_layout).contiguous(), state,
                            tables)
            self._apply(v, ws, layers, sumsq, state["step"], numel)
            if v.p_is_copy:
                p.copy_(from_work(v.p, p, self.kernel_layout).to(p.dtype))
            state["step"] += 1

    def _apply(self, v: _TensorView, ws: Workspace, layers, sumsq: torch.Tensor, step: torch.Tensor,
               numel: int) -> None:
        """Pass 2 over ``v``: the normaliser and step features folded into the first layer, features, MLP, step
        (``numel``: the whole tensor's elements)."""
        (w0, b0), hidden, (w_out, b_out) = layers[0], layers[1:-1], layers[-1]
        scale = torch.rsqrt(NORMALIZER_EPS + sumsq / numel)
        w0_t = w0[:, :NUM_RAW] * scale
        b0_t = b0 + w0[:, NUM_RAW:] @ tanh_embedding(step).unsqueeze(-1)
        for idx, count in slabs(v.shape, self.chunk_size):
            x = ws.x(count)
            _fill(x, v, idx)
            h = torch.addmm(b0_t, w0_t, x, out=ws.h(0, count)).relu_()
            for i, (w, bias) in enumerate(hidden):
                h = torch.addmm(bias, w, h, out=ws.h(i + 1, count)).relu_()
            out = torch.addmm(b_out, w_out, h, out=ws.out(count))
            p_s = v.p[idx]
            # p_s is a float32 slab already in the work layout ("jax": no permutation)
            subtract_update(p_s, self.scaled_step(out[0], out[1], p_s.reshape(-1)).view(p_s.shape), "jax")
