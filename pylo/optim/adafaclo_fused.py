"""The fused AdafacLO backend: bounded memory, normalisation folded into the first layer.

Same update as the naive path within float32 round-off, computed differently:

* a tensor is visited in slabs of at most ``chunk`` elements
  (``pylo.core.chunked``); no ``(numel, 39)`` tensor is ever built, so the
  transient memory is a few chunk-sized buffers plus one float per element
  (``g*g`` for the Adafactor reductions);
* features are written channel-major into a reused ``(28, chunk)`` buffer;
  Adafactor row/column features come from the small tables by broadcasting
  (their ``rsqrt`` is taken on the tables, not per element);
* pass 1 updates momentum, RMS and the diagonal moment in place and sums each
  channel's squares; the second-moment normaliser is then a per-channel scale
  ``s``, folded into a per-tensor copy of the first layer
  (``(x * s) @ W0 = x @ (s[:, None] * W0)``), and the 11 step features, constant
  over a tensor, fold into its bias;
* pass 2 rebuilds each chunk's features and runs the MLP with ``addmm`` into
  reused activation buffers, then applies the step.
"""

from __future__ import annotations

from typing import Dict, List

import torch

from pylo.core import accumulators as acc
from pylo.core.chunked import DEFAULT_CHUNK, slabs
from pylo.core.features import tanh_embedding
from pylo.core.fused import Workspace, adafactor_tables, broadcast_table, table_sumsq
from pylo.core.layout import from_work, to_work

NUM_RAW = 28  # normalised features; the 11 step features follow them in the first layer
RMS_EPS = 1e-6
NORMALIZER_EPS = 1e-5


def _mlp_weights(network):
    """``(out, in)`` weights and ``(out, 1)`` biases of a MetaMLP, in layer order.

    Activations are kept channel-major, ``h^T = W @ x^T + b``: the long axis is
    the matmul's N dimension, which BLAS handles much better for such thin layers.
    """
    return [(m.weight, m.bias.unsqueeze(-1)) for m in network.network if isinstance(m, torch.nn.Linear)]


class _TensorView:
    """One tensor's work views and its Adafactor tables broadcast over the tensor."""

    def __init__(self, pw: torch.Tensor, gw: torch.Tensor, state: Dict[str, torch.Tensor], fac_b: torch.Tensor):
        self.shape = tuple(pw.shape)
        self.p = pw if (pw.dtype == torch.float32 and pw.is_contiguous()) else pw.to(torch.float32).contiguous()
        self.p_is_copy = self.p.data_ptr() != pw.data_ptr() or self.p.dtype != pw.dtype
        self.g = gw.contiguous()
        self.m, self.rms = state["mom"], state["rms"]
        tables = adafactor_tables(state, self.g, fac_b)
        self.diag = state["fac_diag"] if tables is None else None
        if tables is None:
            return
        self.row, self.col, self.row_rsqrt, self.col_rsqrt, self.row_fac, self.col_fac = (
            broadcast_table(tables[k], self.shape, tables["dims"], k)
            for k in ("v_row", "v_col", "row_rsqrt", "col_rsqrt", "row_fac", "col_fac"))
        # sums of squares of the broadcast channels: each table entry repeats along one axis
        self.table_sumsq = table_sumsq(tables, self.shape, ("v_row", "v_col", "row_rsqrt", "col_rsqrt"))


#: channels that are broadcasts of the small Adafactor tables for factored tensors
TABLE_ROWS = slice(13, 25)


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


def fused_adafaclo(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict[str, torch.Tensor]], *,
                   network, decays, lr, exp_mult, step_mult, weight_decay, kernel_layout,
                   chunk: int = DEFAULT_CHUNK, workspaces: Dict = None) -> None:
    """Fused AdafacLO update of one parameter group on one device."""
    from pylo.optim.adafaclo import _init_state  # shared state layout

    mom_d, rms_d, fac_d = decays
    layers = _mlp_weights(network)
    (w0, b0), hidden, (w_out, b_out) = layers[0], layers[1:-1], layers[-1]
    device = params[0].device
    ws = Workspace.get(workspaces if workspaces is not None else {}, chunk, NUM_RAW, w0.shape[0], 2, device)
    rms_b, fac_b = rms_d.clamp(0.0, 1.0), fac_d.clamp(0.0, 1.0)
    mix_m, mix_r, mix_f = 1 - mom_d, 1 - rms_b, 1 - fac_b

    for p, g, state in zip(params, grads, states):
        pw = to_work(p, kernel_layout)
        _init_state(state, pw, decays)
        v = _TensorView(pw, to_work(g, kernel_layout), state, fac_b)
        n = v.p.numel()

        # pass 1: accumulators (in place, slab by slab) and each channel's sum of squares
        sumsq = torch.zeros(NUM_RAW, device=device)
        factored = v.diag is None
        if factored:
            sumsq[TABLE_ROWS] = v.table_sumsq
        for idx, count in slabs(v.shape, chunk):
            g_s = v.g[idx].unsqueeze(-1)
            v.m[idx].mul_(mom_d).add_(mix_m * g_s)
            g_sq = g_s * g_s
            v.rms[idx].mul_(rms_b).add_(mix_r * g_sq)
            if not factored:
                v.diag[idx].mul_(fac_b).add_(mix_f * (g_sq + acc.FACTORED_EPS))
            x = ws.x(count)
            _fill(x, v, idx, tables=not factored)
            if factored:
                sumsq[:13] += torch.linalg.vector_norm(x[:13], dim=1).square()
                sumsq[25:] += torch.linalg.vector_norm(x[25:], dim=1).square()
            else:
                sumsq += torch.linalg.vector_norm(x, dim=1).square()

        # fold the normaliser and the step features into the first layer
        scale = torch.rsqrt(NORMALIZER_EPS + sumsq / n)
        w0_t = w0[:, :NUM_RAW] * scale
        b0_t = b0 + w0[:, NUM_RAW:] @ tanh_embedding(state["step"]).unsqueeze(-1)

        # pass 2: features again, MLP, step
        for idx, count in slabs(v.shape, chunk):
            x = ws.x(count)
            _fill(x, v, idx)
            h = torch.addmm(b0_t, w0_t, x, out=ws.h(0, count)).relu_()
            for i, (w, bias) in enumerate(hidden):
                h = torch.addmm(bias, w, h, out=ws.h(i + 1, count)).relu_()
            out = torch.addmm(b_out, w_out, h, out=ws.out(count))
            step = out[0] * torch.exp(out[1] * exp_mult) * step_mult
            p_s = v.p[idx]
            if weight_decay:
                step = step + weight_decay * p_s.reshape(-1)
            p_s.sub_((step * lr).view(p_s.shape))
        if v.p_is_copy:
            p.copy_(from_work(v.p, p, kernel_layout).to(p.dtype))
        state["step"] += 1
