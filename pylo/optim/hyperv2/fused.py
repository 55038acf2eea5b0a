"""The fused VeLO / Celo engine: bounded memory, two passes, normalisers folded into the first layer.

Same update as the naive engine (:mod:`.naive`) within float32 round-off, computed in another
order (the plan of :mod:`.two_pass`):

* a tensor is visited in slabs of at most ``chunk_size`` elements (:mod:`pylo.core.chunked`):
  no ``(numel, 30)`` feature tensor is ever built. Features are written channel-major into a
  reused ``(30, chunk)`` buffer (:class:`pylo.core.fused.Workspace`) in the order of
  :class:`.channels.ChannelLayout`; the accumulators, stored with their decay axis last, are
  copied into planar rows once per slab so that every elementwise operation runs with unit stride;
* **pass 1**, per slab: the sums the LSTM reads on the *old* momentum and RMS (per-slab means
  and centred second moments, merged like a parallel variance by
  :func:`pylo.core.reduce.merge_moments`, so no cancellation), then momentum, RMS and the
  diagonal moment updated in place, the new features built, and each channel's sum of squares
  taken (``sum p^2`` is the ``p`` channel's, which gives ``param_scale``);
* between the passes the normalisers are folded into a per-tensor first layer
  (:func:`.channels.fold_mlp`). For factored tensors the four row/column groups depend on one
  index only, so their contribution (and the bias) is a small ``(hidden, rows)`` and ``(hidden,
  cols)`` table broadcast over the tensor: those 12 channels are never built per element;
* **pass 2**, per slab: the remaining 18 features again, the MLP (``addmm`` in channel-major
  layout, ``W @ X``) into reused activation buffers, the step, and the parameter update
  (low-precision parameters rounded once, as naive);
* small rank < 2 tensors of one size share a slab (:class:`.two_pass.SmallBatch`).

Transient memory: the workspace (reused), the small per-tensor tables, and ``g*g`` of one tensor
for its Adafactor reductions (4 bytes per element of the largest factored tensor). No host
synchronisation.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from pylo.core import reduce
from pylo.core.chunked import slabs
from pylo.core.features import GRAD_CLIP_FEATURE
from pylo.core.fused import Workspace, adafactor_tables, broadcast_table, table_sumsq
from pylo.core.layout import subtract_update
from pylo.optim.hyperv2.channels import TABLE_NAMES, ChannelLayout, fold_mlp
from pylo.optim.hyperv2.constants import GRAD_CLIP, NORMALIZER_EPS, PARAM_SCALE_EPS, RMS_EPS
from pylo.optim.hyperv2.controller import TensorMoments
from pylo.optim.hyperv2.settings import EngineSettings
from pylo.optim.hyperv2.two_pass import PassTensor, SmallBatch, TwoPassEngine

class FusedEngine(TwoPassEngine):
    """The fused backend for one parameter group on one device."""

    name = "fused"

    def __init__(self, settings: EngineSettings):
        super().__init__(settings)
        mom_d, rms_d, fac_d = settings.decays
        self.layout = ChannelLayout(*settings.decay_counts)
        self.kernel_layout, self.chunk = settings.kernel_layout, settings.chunk_size
        rms_b, fac_b = rms_d.clamp(0.0, 1.0), fac_d.clamp(0.0, 1.0)
        col = lambda t: t.unsqueeze(-1)  # noqa: E731  (k, 1): broadcasts over a (k, count) block of rows
        self.mom_b, self.mom_mix = col(mom_d), col(1 - mom_d)
        self.rms_b, self.rms_mix = col(rms_b), col(1 - rms_b)
        self.fac_b_vec, self.fac_b, self.fac_mix = fac_b, col(fac_b), col(1 - fac_b)
        self.ws = Workspace.get(settings.workspaces, self.chunk, self.layout.total, settings.mlp.hidden_size, 2,
                                settings.device)
        self.batch_limit = self.chunk

    # ------------------------------------------------------------------ slabs
    def _load(self, x: torch.Tensor, t: PassTensor, idx, shape) -> None:
        """Clipped ``g``, ``clip(g)``, ``p`` and the accumulators (planar) into their rows."""
        L = self.layout
        rows = lambda s: x[s].view((s.stop - s.start,) + shape)  # noqa: E731
        g = x[L["g"]].view(shape)
        torch.clamp(t.gw[idx], -GRAD_CLIP, GRAD_CLIP, out=g)
        torch.clamp(g, -GRAD_CLIP_FEATURE, GRAD_CLIP_FEATURE, out=x[L["clip"]].view(shape))
        x[L["p"]].view(shape).copy_(t.pw[idx])
        for src, dst in ((t.m, "m"), (t.rms, "rms"), (t.diag, "row")):
            if src is None:
                continue
            block, s = rows(L[dst]), src[idx]
            for k in range(block.shape[0]):
                block[k].copy_(s[..., k])

    def _store(self, x: torch.Tensor, t: PassTensor, idx, shape) -> None:
        """The updated accumulators from their planar rows back into the state."""
        L = self.layout
        for src, dst in ((t.m, "m"), (t.rms, "rms"), (t.diag, "row")):
            if src is None:
                continue
            block, s = x[L[dst]].view((-1,) + shape), src[idx]
            for k in range(block.shape[0]):
                s[..., k].copy_(block[k])

    def _accumulate(self, x: torch.Tensor, diag: bool) -> None:
        """Momentum, RMS (and the diagonal moment) updated in their rows with upstream's arithmetic."""
        L = self.layout
        g = x[L["g"]]
        x[L["m"]].mul_(self.mom_b).add_(self.mom_mix * g)
        g_sq = g * g
        x[L["rms"]].mul_(self.rms_b).add_(self.rms_mix * g_sq)
        if diag:
            x[L["row"]].mul_(self.fac_b).add_(self.fac_mix * g_sq.add_(1e-30))

    def _features(self, x: torch.Tensor, t: Optional[PassTensor], idx=None, shape=None) -> None:
        """The remaining per-element features from the rows already filled (new accumulators).

        ``t`` is a factored tensor (``idx``, ``shape``: the slab), or None for diagonal rows.
        """
        L = self.layout
        g = x[L["g"]]
        rs = x[L["rs"]]
        torch.add(x[L["rms"]], RMS_EPS, out=rs).rsqrt_()
        torch.mul(x[L["m"]], rs, out=x[L["mrs"]])
        torch.mul(g, rs, out=x[L["grs"]])
        if t is not None and t.factored:
            k_m, k_f = x[L["m"]].shape[0], x[L["fac_g"]].shape[0]
            ix = (slice(None),) + idx
            row, col = t.row_fac[ix], t.col_fac[ix]
            fac_g = x[L["fac_g"]].view((k_f,) + shape)
            torch.mul(g.view(shape), row, out=fac_g).mul_(col)
            torch.mul(x[L["m"]].view((k_m,) + shape), row, out=x[L["fac_mom"]].view((-1,) + shape)).mul_(col)
        else:
            diag = x[L["row"]]
            torch.add(diag, 1e-9, out=x[L["fac_g"]]).clamp_min_(1e-9).rsqrt_().mul_(g)
            torch.mul(x[L["m"]], torch.pow(diag, -0.5), out=x[L["fac_mom"]])
            x[L["col"]].copy_(diag)
            torch.add(diag, 1e-8, out=x[L["rs_row"]]).rsqrt_()
            x[L["rs_col"]].copy_(x[L["rs_row"]])

    def _scale_step(self, step: torch.Tensor, magnitude: torch.Tensor, param_scale: torch.Tensor,
                    lr_mult: Optional[torch.Tensor], p_old: torch.Tensor) -> None:
        """In place: ``step = lr * (lr_mult * (d * (param_scale * exp(mu * exp_mult)) * step_mult) + wd * p)``,
        in naive's order."""
        s = self.s
        magnitude.mul_(s.exp_mult).exp_().mul_(param_scale)
        step.mul_(magnitude).mul_(s.step_mult)
        if lr_mult is not None:
            step.mul_(lr_mult)
        if s.weight_decay:
            step.add_(p_old * s.weight_decay)
        if s.lr != 1.0:
            step.mul_(s.lr)

    # ------------------------------------------------------------------ pass 1
    def _pass1_slab(self, x, t: PassTensor, idx, count, acc_rows, stats, b: int) -> None:
        """Pass 1 of one slab: old-accumulator sums (``stats``: sums, root m2, norms), update, features."""
        shape = t.pw[idx].shape
        self._load(x, t, idx, shape)
        sums, root_m2, norms = stats
        if sums is not None:  # on the old accumulators
            old = x[acc_rows]
            reduce.channel_sums(old, out=sums[b])
            reduce.channel_norms(old - (sums[b] / count).unsqueeze(-1), out=root_m2[b])
        self._accumulate(x, t.diag is not None)
        self._store(x, t, idx, shape)
        self._features(x, t, idx, shape)
        reduce.channel_norms(x[:norms.shape[1]], out=norms[b])

    def prepare_tensor(self, p: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor], moments: bool,
                       split: Optional[reduce.Split] = None) -> PassTensor:
        """Pass 1 of one tensor (state already initialised): accumulators, sums, LSTM statistics (with a
        ``split``, of one rank's part: the sums are summed over the ranks)."""
        L = self.layout
        t = PassTensor(p, g, state, self.kernel_layout, split)
        t.tables = adafactor_tables(state, t.gw, self.fac_b_vec, clip=GRAD_CLIP, split=split)
        if t.factored:
            t.row_fac, t.col_fac = (broadcast_table(t.tables[k], t.shape, t.tables["dims"], k, channel_major=True)
                                    for k in ("row_fac", "col_fac"))
        else:
            t.diag = state["fac_diag"]
        n_rows = L.per_element if t.factored else L.total
        blocks = list(slabs(t.shape, self.chunk))
        device = self.ws._x.device
        acc_rows = slice(L["m"].start, L["rms"].stop)  # momentum and RMS rows are adjacent
        n_acc = acc_rows.stop - acc_rows.start
        stats = (torch.empty(len(blocks), n_acc, device=device) if moments else None,
                 torch.empty(len(blocks), n_acc, device=device) if moments else None,
                 torch.empty(len(blocks), n_rows, device=device))
        for b, (idx, count) in enumerate(blocks):
            self._pass1_slab(self.ws.x(count), t, idx, count, acc_rows, stats, b)
        sumsq = torch.zeros(L.total, device=device)
        sumsq[:n_rows] = reduce.merge_sumsq(stats[2])
        if t.factored:
            sumsq[L.per_element:] = table_sumsq(t.tables, t.shape, TABLE_NAMES)
        t.sumsq = reduce.all_reduce_sum(sumsq, split)
        t.p_sq_mean = sumsq[L["p"].start] / t.n
        t.moments = TensorMoments(t.global_shape, t.p_sq_mean.reshape(1))
        if moments:
            counts = torch.tensor([float(c) for _, c in blocks], device=device)
            mean, var = reduce.merge_moments(stats[0], torch.square(stats[1]), counts, t.n, split)
            t.moments.set_accumulators(mean.unsqueeze(0), var.unsqueeze(0), L.k_mom)
        return t

    # ------------------------------------------------------------------ pass 2
    def fold(self, t: PassTensor, weights: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One tensor's interpolated MLP with its normalisers folded in (:func:`.channels.fold_mlp`).

        The row/column tables become ``(hidden,) + S`` broadcast views, sliced per slab.
        """
        folded = fold_mlp(self.layout, t, weights)
        if t.factored:
            dims = t.tables["dims"]
            for key, name in (("row_tab", "v_row"), ("col_tab", "v_col")):
                folded[key] = broadcast_table(folded[key], t.shape, dims, name, channel_major=True)
        return folded

    def finish_tensor(self, t: PassTensor, folded: Dict, lr_mult: Optional[torch.Tensor]) -> None:
        """Pass 2 of one tensor: features again, the MLP, the step, the parameter update."""
        L = self.layout
        param_scale = torch.sqrt(t.p_sq_mean + PARAM_SCALE_EPS)
        n_rows = L.per_element if t.factored else L.total
        w_elem = folded["w_elem"]
        for idx, count in slabs(t.shape, self.chunk):
            x = self.ws.x(count)
            shape = t.pw[idx].shape
            self._load(x, t, idx, shape)
            self._features(x, t, idx, shape)
            h = self.ws.h(0, count)
            if t.factored:
                ix = (slice(None),) + idx
                torch.add(folded["row_tab"][ix], folded["col_tab"][ix], out=h.view((-1,) + shape))
                h.addmm_(w_elem, x[:n_rows])
            else:
                torch.addmm(folded["b0"], w_elem, x[:n_rows], out=h)
            h.relu_()
            for i, (w, b) in enumerate(folded["dense"]):
                h = torch.addmm(b, w, h, out=self.ws.h(i + 1, count)).relu_()
            out = torch.addmm(folded["b_out"], folded["w_out"], h, out=self.ws.out(count))
            step, magnitude = out[0], out[1]
            self._scale_step(step, magnitude, param_scale, lr_mult, x[L["p"].start])
            subtract_update(t.pw[idx], step.view(shape), "jax")  # a work-layout slab: no permutation


    # ------------------------------------------------------- small tensors
    def _load_batch(self, x: torch.Tensor, batch: SmallBatch) -> None:
        """Every tensor's ``g``, ``clip(g)``, ``p`` and accumulators side by side in the rows (one op each)."""
        L = self.layout
        ts = batch.tensors
        g = x[L["g"].start]
        torch.cat([t.gw.reshape(-1) for t in ts], out=g).clamp_(-GRAD_CLIP, GRAD_CLIP)
        torch.clamp(g, -GRAD_CLIP_FEATURE, GRAD_CLIP_FEATURE, out=x[L["clip"].start])
        torch.cat([t.pw.reshape(-1) for t in ts], out=x[L["p"].start])
        for key, dst in (("mom", "m"), ("rms", "rms"), ("fac_diag", "row")):
            k = ts[0].state[key].shape[-1]
            torch.cat([t.state[key].view(-1, k).t() for t in ts], dim=1, out=x[L[dst]])

    def prepare_batch(self, params, grads, states, moments: bool) -> SmallBatch:
        """Pass 1 of rank < 2 tensors of one size, all in one slab."""
        L = self.layout
        batch = SmallBatch([PassTensor(p, g, st, self.kernel_layout) for p, g, st in zip(params, grads, states)])
        k, n = batch.k, batch.n
        x = self.ws.x(k * n)
        self._load_batch(x, batch)
        rows = lambda s: x[s].view(-1, k, n)  # noqa: E731  (channels, tensor, element)
        if moments:  # on the old accumulators: each tensor is one block
            old = rows(slice(L["m"].start, L["rms"].stop))
            mean = reduce.mean_over(old, (-1,))
            var = reduce.mean_over(torch.square(old - mean.unsqueeze(-1)), (-1,))
        self._accumulate(x, True)
        for key, dst in (("mom", "m"), ("rms", "rms"), ("fac_diag", "row")):
            torch._foreach_copy_([t.state[key].view(-1, t.state[key].shape[-1]).t() for t in batch.tensors],
                                 list(rows(L[dst]).unbind(1)))
        self._features(x, None)
        batch.sumsq = torch.square(reduce.channel_norms(rows(slice(0, L.total)), dim=-1)).t()  # (K, 30)
        batch.p_sq_mean = batch.sumsq[:, L["p"].start] / n
        batch.moments = TensorMoments(batch.tensors[0].shape, batch.p_sq_mean)
        if moments:
            batch.moments.set_accumulators(mean.t(), var.t(), L.k_mom)
        return batch

    def finish_batch(self, batch: SmallBatch, weights: Sequence[torch.Tensor], lr_mults: Optional[torch.Tensor]
                     ) -> None:
        """Pass 2 of a :class:`.two_pass.SmallBatch`: one batched product per layer (``weights`` lead with ``K``)."""
        L = self.layout
        k, n = batch.k, batch.n
        x = self.ws.x(k * n)
        self._load_batch(x, batch)
        self._features(x, None)
        n_hidden = (len(weights) - 4) // 2
        scale = torch.rsqrt(NORMALIZER_EPS + batch.sumsq / n)  # (K, 30)
        w0 = weights[0][:, :, L.perm] * scale.unsqueeze(1)
        xs = x.view(L.total, k, n).transpose(0, 1)  # (K, 30, n)
        h = torch.baddbmm(weights[1].unsqueeze(-1), w0, xs, out=self.ws.h(0, k * n).view(k, -1, n)).relu_()
        for i in range(n_hidden):
            h = torch.baddbmm(weights[2 + n_hidden + i].unsqueeze(-1), weights[2 + i], h,
                              out=self.ws.h(i + 1, k * n).view(k, -1, n)).relu_()
        out = torch.baddbmm(weights[3 + 2 * n_hidden][:, :2].unsqueeze(-1), weights[2 + 2 * n_hidden][:, :2], h,
                            out=self.ws.out(k * n).view(k, 2, n))
        step, magnitude = out[:, 0], out[:, 1]
        param_scale = torch.sqrt(batch.p_sq_mean + PARAM_SCALE_EPS).unsqueeze(-1)
        p_old = x[L["p"].start].view(k, n)
        self._scale_step(step, magnitude, param_scale, None if lr_mults is None else lr_mults.unsqueeze(-1), p_old)
        targets = [t.pw for t in batch.tensors]  # 1-D work views (scalars as (1,))
        # the multi-tensor form of pylo.core.layout.subtract_update (one operation for the whole batch)
        if targets[0].dtype == torch.float32:
            torch._foreach_sub_(targets, list(step.unbind(0)))
        else:
            torch._foreach_copy_(targets, list((p_old - step).unbind(0)))
