"""The fused CELO2-family engine: bounded memory, few passes, upstream's arithmetic order in the MLP.

Same update as the naive engine within float32 round-off, computed differently. A learned tensor
(work layout) is visited in slabs that never cross a matrix of its last two axes
(:func:`pylo.core.chunked.matrix_slabs`), since CELO2 normalises per matrix:

1. (:meth:`FusedEngine.prepare`) the Adafactor row/column moments and their small tables
   (:func:`pylo.core.fused.adafactor_tables`; ``g*g`` is the only per-element temporary, freed at
   once); pass 1: momentum, RMS (and a 1-D tensor's diagonal moment) updated in place, the
   per-element feature channels written channel-major into a reused buffer and their sums of
   squares accumulated per (matrix, channel); the 12 channels that only broadcast the Adafactor
   tables get theirs from the tables;
2. (:meth:`FusedEngine.finish`) the second-moment normaliser, one scale per (matrix, channel);
3. pass 2: the features again, each channel times its scale (``x * s``, as upstream), the MLP in
   channel-major layout (``W @ X``: the long axis is the matmul's N) with the first layer summed
   group by group in upstream's order and its bias added last (upstream's unrolled first layer), and
   ``d * exp(mag * exp_mult)`` written into one step buffer (4 B/param: Newton-Schulz needs the whole
   step). The order matters: Newton-Schulz amplifies round-off in a nearly singular step (about 80x
   at a condition number of 1e4), so folding the scale into ``W0`` (``x @ (s * W0)``) or one
   ``addmm`` over all channels drifted twice as far from the reference;
4. Newton-Schulz per matrix (:func:`pylo.optim.celo2.plan.orthogonalize_and_scale`);
5. pass 3: output normalisation, ``rmsmult``, weight decay, ``lr`` and the parameter update, slab
   by slab (bf16/fp16 parameters rounded once).

The AdamW paths are :mod:`pylo.optim.celo2.chunked_adamw`. Nothing synchronises with the host;
transient memory is the step buffer, the Newton-Schulz buffers of the largest matrix and a few
chunk-sized buffers.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch

from pylo.core import reduce
from pylo.core.chunked import matrix_slabs
from pylo.core.fused import Workspace, adafactor_tables, broadcast_table
from pylo.core.layout import subtract_update, to_work
from pylo.optim.celo2 import chunked_adamw
from pylo.core import accumulators as acc
from pylo.optim.celo2.constants import DIAG_EPS, GRAD_CLIP_FEATURE, NORMALIZER_EPS, PARAM_SCALE_EPS, RMS_EPS
from pylo.optim.celo2.engine import Celo2Engine
from pylo.optim.celo2.plan import GROUP, TABLE_GROUPS, TABLE_NAMES, Layout, matrix_count, matrix_table_sumsq, \
    orthogonalize_and_scale, row_sumsq


class LearnedTensor:
    """One learned tensor: work views, state, Adafactor tables broadcast channel-major, and (after
    pass 1) its per-(matrix, channel) sums of squares."""

    def __init__(self, p: torch.Tensor, g: torch.Tensor, state: Dict, kernel_layout: str, fac_b: torch.Tensor,
                 clip: Optional[float], counts, split: Optional[reduce.Split] = None):
        self.p, self.g = to_work(p, kernel_layout), to_work(g, kernel_layout)
        self.shape = tuple(self.p.shape)
        self.state = state
        self.m, self.rms = state["mom"], state["rms"]
        self.clip = clip
        self.split = split
        #: the split axis is one of the matrices' own (last two) axes: per-matrix sums span the ranks
        self.split_in_matrix = split is not None and split.dim >= len(self.shape) - 2
        tables = adafactor_tables(state, self.g, fac_b, clip, split)
        self.factored = tables is not None
        self.layout = Layout(counts, self.factored)
        self.diag = None if self.factored else state["fac_diag"]
        if self.factored:
            self.cm = {name: broadcast_table(tables[name], self.shape, tables["dims"], name, channel_major=True)
                       for name in ("row_fac", "col_fac") + TABLE_NAMES}
            self.tables = tables
        self.matrices = matrix_count(self.shape)
        whole = reduce.global_shape(self.shape, split)
        self.numel = math.prod(whole)
        self.matrix_numel = math.prod(whole[-2:])  # one matrix of the whole tensor (all of it below rank 2)
        self.sumsq: Optional[torch.Tensor] = None


def load_grad(x: torch.Tensor, t: LearnedTensor, idx) -> torch.Tensor:
    """Row 0 of the buffer := the (clamped) gradient of the slab; returned shaped like the slab."""
    g_src = t.g[idx]
    g = x[0].view(g_src.shape)
    if t.clip is None:
        g.copy_(g_src)
    else:
        torch.clamp(g_src, -t.clip, t.clip, out=g)
    return g


def accumulate_slab(t: LearnedTensor, idx, g: torch.Tensor, mixes, sq: torch.Tensor, tmp: torch.Tensor) -> None:
    """Momentum, RMS (and the diagonal moment) of the slab, in place, in the naive path's rounding order.

    ``sq`` (a slab) and ``tmp`` (at least ``slab x k`` elements) are scratch.
    """
    mom_d, rms_b, fac_b, mix_m, mix_r, mix_f = mixes
    m = t.m[idx]
    m_tmp = tmp[: m.numel()].view(m.shape)
    m.mul_(mom_d)
    torch.mul(g.unsqueeze(-1), mix_m, out=m_tmp)
    m.add_(m_tmp)
    r = t.rms[idx]
    r_tmp = tmp[: r.numel()].view(r.shape)
    torch.mul(g, g, out=sq)
    r.mul_(rms_b)
    torch.mul(sq.unsqueeze(-1), mix_r, out=r_tmp)
    r.add_(r_tmp)
    if t.diag is not None:
        sq.add_(acc.FACTORED_EPS)
        d = t.diag[idx]
        d_tmp = tmp[: d.numel()].view(d.shape)
        d.mul_(fac_b)
        torch.mul(sq.unsqueeze(-1), mix_f, out=d_tmp)
        d.add_(d_tmp)


def fill_slab(x: torch.Tensor, t: LearnedTensor, idx, g: torch.Tensor, tables: bool) -> None:
    """Rows of the feature buffer for one slab, upstream's formulas (``hyper_feature_groups``).

    ``tables`` also writes the four broadcast table groups (pass 2).
    """
    lay = t.layout
    rows = lambda name: x[lay.rows(GROUP[name])].view((lay.widths[GROUP[name]],) + g.shape)  # noqa: E731
    cm = (slice(None),) + idx
    torch.clamp(g, -GRAD_CLIP_FEATURE, GRAD_CLIP_FEATURE, out=rows("clip")[0])
    rows("p")[0].copy_(t.p[idx])
    m = rows("m")
    m.copy_(t.m[idx].movedim(-1, 0))
    rows("rms").copy_(t.rms[idx].movedim(-1, 0))
    rs = rows("rs")
    torch.add(rows("rms"), RMS_EPS, out=rs)
    rs.rsqrt_()
    torch.mul(m, rs, out=rows("mrs"))
    torch.mul(g, rs, out=rows("grs"))
    fac_g = rows("fac_g")
    if t.factored:
        torch.mul(g, t.cm["row_fac"][cm], out=fac_g)
        fac_g.mul_(t.cm["col_fac"][cm])
        fac_m = rows("fac_mom")
        torch.mul(m, t.cm["row_fac"][cm], out=fac_m)
        fac_m.mul_(t.cm["col_fac"][cm])
        if tables:
            for grp, name in zip(TABLE_GROUPS, TABLE_NAMES):
                x[lay.rows(grp)].view((lay.widths[grp],) + g.shape).copy_(t.cm[name][cm])
    else:
        torch.add(t.diag[idx].movedim(-1, 0), DIAG_EPS, out=fac_g)
        fac_g.clamp_min_(DIAG_EPS).rsqrt_().mul_(g)


def _mlp(network):
    """A CELO2MLP as channel-major pieces: ``w0`` blocks, ``b0`` as a column, the dense layers as
    ``(out, in)`` weights with column biases (the last one cut to the two outputs used), the activation."""
    dense = [(w.T, b.unsqueeze(-1)) for w, b in zip(network.dense_w, network.dense_b)]
    dense[-1] = (dense[-1][0][:2], dense[-1][1][:2])
    act = torch.relu_ if network.activation == "relu" else torch.tanh_
    return list(network.w0), network.b0.unsqueeze(-1), dense, act


class FusedEngine(Celo2Engine):
    """The fused plan in chunks of ``settings.chunk_size`` elements (fastest on CPU)."""

    name = "fused"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        mom_d, rms_d, fac_d = self.decays
        self.rms_b, self.fac_b = rms_d.clamp(0.0, 1.0), fac_d.clamp(0.0, 1.0)
        self.mixes = (mom_d, self.rms_b, self.fac_b, 1 - mom_d, 1 - self.rms_b, 1 - self.fac_b)
        self.counts = tuple(d.numel() for d in self.decays)
        # rows after the features: scratch for the accumulators and the update
        self.first_scratch = Layout(self.counts, True).channels

    def _workspace(self, device) -> Workspace:
        rows = self.first_scratch + 1 + max(self.counts)
        return Workspace.get(self.workspaces, self.settings.chunk_size, rows, self.network.b0.shape[0], 2, device)

    def prepare(self, params, grads, states) -> List[LearnedTensor]:
        """Adafactor tables and pass 1 of every tensor: accumulators and the sums of squares."""
        s = self.settings
        ws = self._workspace(params[0].device)
        prepared = []
        for p, g, state, split in zip(params, grads, states, self.splits_of(params)):
            t = LearnedTensor(p, g, state, s.kernel_layout, self.fac_b, s.grad_clip_val, self.counts, split)
            lay, n_c = t.layout, t.layout.computed
            t.sumsq = torch.zeros(t.matrices, lay.channels, device=p.device)
            if t.factored:
                t.sumsq[:, n_c:] = matrix_table_sumsq(t.tables, t.shape)
            for mat, idx, count in matrix_slabs(t.shape, s.chunk_size):
                x = ws.x(count)
                g_s = load_grad(x, t, idx)
                scratch = x[self.first_scratch:]
                accumulate_slab(t, idx, g_s, self.mixes, scratch[0].view(g_s.shape), scratch[1:].reshape(-1))
                fill_slab(x, t, idx, g_s, tables=False)
                t.sumsq[mat, :n_c] += row_sumsq(x[:n_c])
            if t.split_in_matrix:
                reduce.all_reduce_sum(t.sumsq, split)
            prepared.append(t)
        return prepared

    def update_learned(self, prepared: List[LearnedTensor]) -> None:
        w0_blocks, b0, dense, act = _mlp(self.network)
        ws = self._workspace(prepared[0].p.device)
        for t in prepared:
            step = self._directions(t, ws, w0_blocks, b0, dense, act)
            step, out_scale = self._orthogonalized(t, step)
            self._apply(t, ws, step, out_scale)
            t.state["step"] += 1

    def _orthogonalized(self, t: LearnedTensor, step: torch.Tensor):
        """:func:`~pylo.optim.celo2.plan.orthogonalize_and_scale`; of one rank's part of matrices split over
        ranks, on the whole step (one all-gather), keeping this rank's part."""
        cfg = self.settings.step
        if t.split_in_matrix:
            whole, out_scale = orthogonalize_and_scale(reduce.gather_split(step, t.split), cfg, t.matrices)
            return reduce.local_part(whole, t.split), out_scale
        if step.numel() == 0:  # an empty part of matrices split along a leading axis
            return step, step.new_empty((0,))
        return orthogonalize_and_scale(step, cfg, t.matrices)

    def _directions(self, t: LearnedTensor, ws: Workspace, w0_blocks, b0, dense, act) -> torch.Tensor:
        """Pass 2: features, normalised per (matrix, channel); the MLP and ``direction * magnitude`` into
        the step buffer."""
        cfg, lay = self.settings.step, t.layout
        scale = torch.rsqrt(NORMALIZER_EPS + t.sumsq / t.matrix_numel)
        first = [(w0_blocks[grp].T, lay.rows(grp)) for grp in sorted(lay.groups)]  # upstream's group order
        mag_scale = None
        if cfg.param_scale_mult:
            p_sq = reduce.sum_all(t.sumsq[:, lay.offsets[GROUP["p"]]])
            if t.split is not None and not t.split_in_matrix:  # whole matrices here, others elsewhere
                reduce.all_reduce_sum(p_sq, t.split)
            mag_scale = torch.sqrt(p_sq / t.numel + PARAM_SCALE_EPS)
        step = torch.empty(t.shape, device=t.p.device)
        for mat, idx, count in matrix_slabs(t.shape, self.settings.chunk_size):
            x = ws.x(count)
            g_s = load_grad(x, t, idx)
            fill_slab(x, t, idx, g_s, tables=True)
            features = x[: lay.channels].mul_(scale[mat].unsqueeze(1))
            h = torch.mm(first[0][0], features[first[0][1]], out=ws.h(0, count))
            for w, rows in first[1:]:
                h.addmm_(w, features[rows])
            h = act(h.add_(b0))
            for j, (w, b) in enumerate(dense[:-1]):
                h = act(torch.addmm(b, w, h, out=ws.h(j + 1, count)))
            out = torch.addmm(dense[-1][1], dense[-1][0], h, out=ws.out(count))
            mag = out[1].mul_(cfg.exp_mult).exp_()
            if mag_scale is not None:
                mag = torch.mul(mag_scale, mag, out=mag)
            torch.mul(out[0], mag, out=step[idx].view(count))
        return step

    def _apply(self, t: LearnedTensor, ws: Workspace, step: torch.Tensor, out_scale: torch.Tensor) -> None:
        """Pass 3: output normalisation, ``rmsmult``, weight decay, ``lr``, the parameter update."""
        s = self.settings
        for mat, idx, count in matrix_slabs(t.shape, s.chunk_size):
            x = ws.x(count)
            d, decay, p32 = (x[i].view(step[idx].shape) for i in range(3))  # feature rows are free now
            torch.mul(step[idx], out_scale[mat], out=d)
            if s.step.rmsmult != 1.0:
                d.mul_(s.step.rmsmult)
            p_s = t.p[idx]
            if s.weight_decay or not s.skip_zero_decay:
                p32 = p_s if p_s.dtype == torch.float32 else p32.copy_(p_s)
                d.add_(torch.mul(p32, s.weight_decay, out=decay))
            d.mul_(s.lr)
            subtract_update(p_s, d, "jax")

    def update_routed(self, params, grads, states) -> None:
        if self.settings.adamw.shared:
            chunked_adamw.shared_adamw(params, grads, states, self.settings, self.decays, self.splits_of(params))
        else:
            chunked_adamw.own_adamw(params, grads, states, self.settings)
