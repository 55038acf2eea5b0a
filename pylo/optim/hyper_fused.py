"""The fused VeLO / Celo backend: bounded memory, two passes, normalisers folded into the first layer.

Same update as the naive path (:mod:`pylo.optim.hyper`) within float32
round-off, computed in another order:

* a tensor is visited in slabs of at most ``chunk`` elements
  (:mod:`pylo.core.chunked`): no ``(numel, 30)`` feature tensor is ever built.
  Features are written channel-major into a reused ``(30, chunk)`` buffer
  (:class:`pylo.core.fused.Workspace`); the accumulators, stored with their
  decay axis last, are copied into planar rows once per slab so that every
  elementwise operation runs with unit stride;
* **pass 1** (before the LSTM, which needs its results): per slab, the sums the
  LSTM features read are taken on the *old* momentum and RMS (per-slab means and
  centred second moments, merged exactly like a parallel variance, so no
  cancellation), then momentum, RMS and the diagonal moment are updated in
  place, the new features built, and each channel's sum of squares taken
  (``sum p^2`` is the ``p`` channel's, which gives ``param_scale``);
* between the passes: the 14 second-moment normalisers are per-channel scales
  folded into a per-tensor copy of the interpolated first layer. For factored
  tensors the four row/column groups depend on one index only, so their
  first-layer contribution (and the bias) is a small ``(hidden, rows)`` and
  ``(hidden, cols)`` table, broadcast over the tensor: those 12 channels are
  never built per element;
* **pass 2**: per slab, the remaining 18 features again, the MLP (``addmm`` in
  channel-major layout, ``W @ X``) into reused activation buffers, the step, and
  the parameter update (low-precision parameters rounded once, as naive);
* small rank < 2 tensors (biases, norms, scalars) of one size share a slab
  (:class:`SmallBatch`): one concatenation per row, per-tensor sums as
  reductions over a ``(K, n)`` view, the K interpolated MLPs as batched
  products, state written back with ``torch._foreach_copy_``, so a model's
  hundreds of small tensors cost a few dozen operations, not a few thousand.

Transient memory: the workspace (reused), the small per-tensor tables, and
``g*g`` of one tensor for its Adafactor reductions (4 bytes per element of the
largest factored tensor). No host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pylo.core.chunked import DEFAULT_CHUNK, slabs
from pylo.core.fused import Workspace, adafactor_tables, broadcast_table, table_sumsq
from pylo.core.layout import to_work

GRAD_CLIP = 1000.0
GRAD_CLIP_FEATURE = 0.1
RMS_EPS = 1e-6
NORMALIZER_EPS = 1e-5

#: upstream's 14 feature groups (the ``w0__i`` blocks), by name, in upstream order
GROUPS = ("g", "clip", "p", "m", "rms", "mrs", "rs", "fac_g", "grs", "row", "col", "rs_row", "rs_col", "fac_mom")
#: the fused channel order: per-element groups first, the four row/column table groups last
FUSED_ORDER = ("g", "clip", "p", "m", "rms", "mrs", "rs", "fac_g", "grs", "fac_mom", "row", "col", "rs_row", "rs_col")


class ChannelLayout:
    """Where each feature group sits in the fused channel order, for ``(k_mom, k_rms, k_fac)`` decays."""

    def __init__(self, k_mom: int, k_rms: int, k_fac: int):
        self.k = (k_mom, k_rms, k_fac)
        widths = dict(zip(GROUPS, (1, 1, 1, k_mom, k_rms, max(k_mom, k_rms), k_rms, k_fac, k_rms, k_fac, k_fac,
                                   k_fac, k_fac, max(k_mom, k_fac))))
        upstream_start, start = {}, 0
        for name in GROUPS:
            upstream_start[name] = start
            start += widths[name]
        self.total = start
        self.slice: Dict[str, slice] = {}
        perm, start = [], 0
        for name in FUSED_ORDER:
            self.slice[name] = slice(start, start + widths[name])
            perm += range(upstream_start[name], upstream_start[name] + widths[name])
            start += widths[name]
        #: upstream channel index of each fused channel
        self.perm = perm
        #: channels built per element for a factored tensor (the table groups follow them)
        self.per_element = self.slice["row"].start

    def __getitem__(self, name: str) -> slice:
        return self.slice[name]


@dataclass
class TensorMoments:
    """Whole-tensor statistics of the *old* parameters and accumulators, as the LSTM features read them.

    For a batch of ``K`` tensors of one work ``shape`` (whose rank the LSTM reads):
    ``p_sq_mean`` ``(K,)`` is ``mean(p^2)``; the momentum and RMS means and
    (population) variances per decay are ``(K, k)`` (``None`` when the
    optimizer's LSTM does not read them).
    """

    shape: Tuple[int, ...]
    p_sq_mean: torch.Tensor
    m_mean: Optional[torch.Tensor] = None
    m_var: Optional[torch.Tensor] = None
    rms_mean: Optional[torch.Tensor] = None
    rms_var: Optional[torch.Tensor] = None


def merge_moments(sums: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor, n: int
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance from per-block sums and centred second moments.

    ``sums``, ``m2`` (each block's sum of squared deviations from its own mean):
    ``(blocks, channels)``; ``counts``: ``(blocks,)``. The blocks' moments are
    merged with the spread of the block means (Chan et al.), which never cancels.
    """
    mean = sums.sum(dim=0) / n
    block_mean = sums / counts.unsqueeze(-1)
    spread = counts.unsqueeze(-1) * torch.square(block_mean - mean)
    return mean, (m2 + spread).sum(dim=0) / n


def set_accumulator_moments(moments: TensorMoments, mean: torch.Tensor, var: torch.Tensor, k_mom: int) -> None:
    """Split ``(K, k_mom + k_rms)`` means and variances (momentum channels first) into ``moments``."""
    moments.m_mean, moments.rms_mean = mean[:, :k_mom], mean[:, k_mom:]
    moments.m_var, moments.rms_var = var[:, :k_mom], var[:, k_mom:]


class FusedTensor:
    """One tensor between the passes: its work views, tables and pass-1 sums."""

    def __init__(self, p: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor], kernel_layout: str):
        self.p = p
        self.pw = to_work(p, kernel_layout)
        self.gw = to_work(g, kernel_layout)
        self.shape = tuple(self.pw.shape)
        self.n = self.pw.numel()
        self.state = state
        self.m, self.rms, self.diag = state["mom"], state["rms"], None
        self.tables: Optional[Dict] = None
        self.sumsq: Optional[torch.Tensor] = None  # per fused channel
        self.moments: Optional[TensorMoments] = None

    @property
    def factored(self) -> bool:
        return self.tables is not None


class SmallBatch:
    """Rank < 2 tensors of one size, processed together: their elements side by side in one slab.

    ``K`` tensors of ``n`` elements each (``K * n <= chunk``); every row of the
    feature buffer is viewed ``(K, n)``, so per-tensor sums are reductions over the
    last axis and the per-tensor MLPs one batched matrix product each.
    """

    def __init__(self, tensors: List[FusedTensor]):
        self.tensors = tensors
        self.k, self.n = len(tensors), tensors[0].n
        self.moments: Optional[TensorMoments] = None


class BatchMember:
    """A tensor's place in a :class:`SmallBatch`."""

    def __init__(self, batch: SmallBatch, index: int):
        self.batch, self.index = batch, index


class HyperEngine:
    """What the fused and Triton engines share: batching of pass 1, and pass 2 for a group's tensors."""

    #: rank < 2 tensors are processed together (grouped by size) up to this many elements per batch; 0: never
    batch_limit = 0

    def prepare_all(self, params, grads, states, moments: bool):
        """Pass 1 of a group's tensors (states initialised).

        Returns ``(handles, batches)``: per tensor a handle for :meth:`finish`, and
        ``(positions, TensorMoments)`` pairs covering every tensor once, for the LSTM.
        """
        handles: List[object] = [None] * len(params)
        batches = []
        small: Dict[int, List[int]] = {}
        for j, (p, g, state) in enumerate(zip(params, grads, states)):
            if state["fac_diag"].numel() and p.numel() <= self.batch_limit:  # rank < 2, small
                small.setdefault(p.numel(), []).append(j)
                continue
            t = self.prepare(p, g, state, moments)
            handles[j] = t
            batches.append(([j], t.moments))
        for n, positions in small.items():
            per_batch = max(1, self.batch_limit // n)
            for start in range(0, len(positions), per_batch):
                part = positions[start:start + per_batch]
                batch = self.prepare_batch([params[j] for j in part], [grads[j] for j in part],
                                           [states[j] for j in part], moments)
                for i, j in enumerate(part):
                    handles[j] = BatchMember(batch, i)
                batches.append((part, batch.moments))
        return handles, batches

    def finish(self, handles, controls: torch.Tensor, lr_mults: torch.Tensor, *, mlp, interp_mult: float,
               use_lr_mult: bool, lr: float, exp_mult: float, step_mult: float, weight_decay: float) -> None:
        """Pass 2 of a group's tensors: every tensor's MLP interpolated at once, folded, applied."""
        weights = interpolate(mlp, controls, interp_mult)
        step_kwargs = dict(lr=lr, exp_mult=exp_mult, step_mult=step_mult, weight_decay=weight_decay)
        members: Dict[int, List[int]] = {}
        for j, handle in enumerate(handles):
            if isinstance(handle, BatchMember):
                members.setdefault(id(handle.batch), []).append(j)
                continue
            self.apply(handle, self.fold(handle, mlp.unflatten(weights[j])),
                       lr_mults[j] if use_lr_mult else None, **step_kwargs)
        for positions in members.values():
            batch = handles[positions[0]].batch
            order = sorted(positions, key=lambda j: handles[j].index)
            sel = torch.tensor(order, device=weights.device)
            self.apply_batch(batch, mlp.unflatten(weights.index_select(0, sel)),
                             lr_mults.index_select(0, sel) if use_lr_mult else None, **step_kwargs)


class FusedHyper(HyperEngine):
    """The fused backend for one parameter group on one device: :meth:`prepare_all`, then :meth:`finish`."""

    def __init__(self, *, decays: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], hidden: int, kernel_layout: str,
                 chunk: int = DEFAULT_CHUNK, workspaces: Optional[Dict] = None, device=None):
        mom_d, rms_d, fac_d = decays
        self.layout = ChannelLayout(mom_d.numel(), rms_d.numel(), fac_d.numel())
        self.kernel_layout, self.chunk = kernel_layout, chunk
        rms_b, fac_b = rms_d.clamp(0.0, 1.0), fac_d.clamp(0.0, 1.0)
        col = lambda t: t.unsqueeze(-1)  # noqa: E731  (k, 1): broadcasts over a (k, count) block of rows
        self.mom_b, self.mom_mix = col(mom_d), col(1 - mom_d)
        self.rms_b, self.rms_mix = col(rms_b), col(1 - rms_b)
        self.fac_b_vec, self.fac_b, self.fac_mix = fac_b, col(fac_b), col(1 - fac_b)
        self.ws = Workspace.get(workspaces if workspaces is not None else {}, chunk, self.layout.total, hidden, 2,
                                device if device is not None else mom_d.device)
        self.batch_limit = chunk

    # ------------------------------------------------------------------ slabs
    def _load(self, x: torch.Tensor, t: FusedTensor, idx, shape) -> None:
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

    def _store(self, x: torch.Tensor, t: FusedTensor, idx, shape) -> None:
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

    def _features(self, x: torch.Tensor, t: Optional[FusedTensor], idx=None, shape=None) -> None:
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

    # ------------------------------------------------------------------ pass 1
    def prepare(self, p: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor], moments: bool) -> FusedTensor:
        """Pass 1 of one tensor (state already initialised): accumulators, sums, LSTM statistics."""
        L = self.layout
        t = FusedTensor(p, g, state, self.kernel_layout)
        t.tables = adafactor_tables(state, t.gw, self.fac_b_vec, clip=GRAD_CLIP)
        if t.factored:
            t.row_fac, t.col_fac = (broadcast_table(t.tables[k], t.shape, t.tables["dims"], k, channel_major=True)
                                    for k in ("row_fac", "col_fac"))
        else:
            t.diag = state["fac_diag"]
        n_rows = L.per_element if t.factored else L.total
        blocks = list(slabs(t.shape, self.chunk))
        device = self.ws._x.device
        norms = torch.empty(len(blocks), n_rows, device=device)
        acc_rows = slice(L["m"].start, L["rms"].stop)  # momentum and RMS rows are adjacent
        if moments:
            n_acc = acc_rows.stop - acc_rows.start
            sums = torch.empty(len(blocks), n_acc, device=device)
            root_m2 = torch.empty(len(blocks), n_acc, device=device)
        for b, (idx, count) in enumerate(blocks):
            x = self.ws.x(count)
            shape = t.pw[idx].shape
            self._load(x, t, idx, shape)
            if moments:  # on the old accumulators
                old = x[acc_rows]
                torch.sum(old, dim=1, out=sums[b])
                torch.linalg.vector_norm(old - (sums[b] / count).unsqueeze(-1), dim=1, out=root_m2[b])
            self._accumulate(x, t.diag is not None)
            self._store(x, t, idx, shape)
            self._features(x, t, idx, shape)
            torch.linalg.vector_norm(x[:n_rows], dim=1, out=norms[b])
        sumsq = torch.zeros(L.total, device=device)
        sumsq[:n_rows] = torch.square(norms).sum(dim=0)
        if t.factored:
            sumsq[L.per_element:] = table_sumsq(t.tables, t.shape, ("v_row", "v_col", "row_rsqrt", "col_rsqrt"))
        t.sumsq = sumsq
        t.p_sq_mean = sumsq[L["p"].start] / t.n
        t.moments = TensorMoments(t.shape, t.p_sq_mean.reshape(1))
        if moments:
            counts = torch.tensor([float(c) for _, c in blocks], device=device)
            mean, var = merge_moments(sums, torch.square(root_m2), counts, t.n)
            set_accumulator_moments(t.moments, mean.unsqueeze(0), var.unsqueeze(0), L["m"].stop - L["m"].start)
        return t

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
        batch = SmallBatch([FusedTensor(p, g, st, self.kernel_layout) for p, g, st in zip(params, grads, states)])
        k, n = batch.k, batch.n
        x = self.ws.x(k * n)
        self._load_batch(x, batch)
        rows = lambda s: x[s].view(-1, k, n)  # noqa: E731  (channels, tensor, element)
        if moments:  # on the old accumulators: each tensor is one block
            old = rows(slice(L["m"].start, L["rms"].stop))
            mean = old.mean(dim=-1)
            var = torch.square(old - mean.unsqueeze(-1)).mean(dim=-1)
        self._accumulate(x, True)
        for key, dst in (("mom", "m"), ("rms", "rms"), ("fac_diag", "row")):
            torch._foreach_copy_([t.state[key].view(-1, t.state[key].shape[-1]).t() for t in batch.tensors],
                                 list(rows(L[dst]).unbind(1)))
        self._features(x, None)
        batch.sumsq = torch.square(torch.linalg.vector_norm(rows(slice(0, L.total)), dim=-1)).t()  # (K, 30)
        batch.p_sq_mean = batch.sumsq[:, L["p"].start] / n
        batch.moments = TensorMoments(batch.tensors[0].shape, batch.p_sq_mean)
        if moments:
            set_accumulator_moments(batch.moments, mean.t(), var.t(), L["m"].stop - L["m"].start)
        return batch

    def apply_batch(self, batch: SmallBatch, weights: Sequence[torch.Tensor], lr_mults: Optional[torch.Tensor], *,
                    lr: float, exp_mult: float, step_mult: float, weight_decay: float) -> None:
        """Pass 2 of a :class:`SmallBatch`: one batched product per layer (``weights`` have a leading ``K``)."""
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
        param_scale = torch.sqrt(batch.p_sq_mean + 1e-9).unsqueeze(-1)
        magnitude.mul_(exp_mult).exp_().mul_(param_scale)
        step.mul_(magnitude).mul_(step_mult)
        if lr_mults is not None:
            step.mul_(lr_mults.unsqueeze(-1))
        p_old = x[L["p"].start].view(k, n)
        if weight_decay:
            step.add_(p_old * weight_decay)
        if lr != 1.0:
            step.mul_(lr)
        targets = [t.pw for t in batch.tensors]  # 1-D work views (scalars as (1,))
        if targets[0].dtype == torch.float32:
            torch._foreach_sub_(targets, list(step.unbind(0)))
        else:
            torch._foreach_copy_(targets, list((p_old - step).unbind(0)))

    # ------------------------------------------------------------------ pass 2
    def fold(self, t: FusedTensor, weights: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One tensor's interpolated MLP with its normalisers folded in (:func:`fold_mlp`).

        The row/column tables become ``(hidden,) + S`` broadcast views, sliced per slab.
        """
        folded = fold_mlp(self.layout, t, weights)
        if t.factored:
            dims = t.tables["dims"]
            for key, name in (("row_tab", "v_row"), ("col_tab", "v_col")):
                folded[key] = broadcast_table(folded[key], t.shape, dims, name, channel_major=True)
        return folded

    def apply(self, t: FusedTensor, folded: Dict, lr_mult: Optional[torch.Tensor], *, lr: float, exp_mult: float,
              step_mult: float, weight_decay: float) -> None:
        """Pass 2 of one tensor: features again, the MLP, the step, the parameter update."""
        L = self.layout
        param_scale = torch.sqrt(t.p_sq_mean + 1e-9)
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
            # step = lr_mult * (d * (param_scale * exp(mu * exp_mult)) * step_mult), in naive's order
            magnitude.mul_(exp_mult).exp_().mul_(param_scale)
            step.mul_(magnitude).mul_(step_mult)
            if lr_mult is not None:
                step.mul_(lr_mult)
            p_old = x[L["p"].start]
            if weight_decay:
                step.add_(p_old * weight_decay)
            if lr != 1.0:
                step.mul_(lr)
            target = t.pw[idx]
            if target.dtype == torch.float32:
                target.sub_(step.view(shape))
            else:
                target.copy_((p_old - step).view(shape))


def fold_mlp(layout: ChannelLayout, t: FusedTensor, weights: Sequence[torch.Tensor]) -> Dict:
    """A tensor's interpolated MLP with its 14 second-moment normalisers folded into the first layer.

    ``weights`` as :meth:`pylo.models.hyper_network.VeLOMLP.unflatten` gives them
    (torch ``(out, in)`` layout); ``t.sumsq`` are the channels' sums of squares
    (fused order). Returns ``w_elem`` ``(hidden, channels)``: the first layer on
    the channels built per element (18 for a factored tensor, all 30 otherwise);
    ``b0`` ``(hidden, 1)``; for a factored tensor ``row_tab`` / ``col_tab``
    instead: the bias plus the ``row`` and ``rsqrt(row)`` groups' contribution, and
    the ``col`` and ``rsqrt(col)`` groups', as ``S' + (hidden,)`` tables indexed
    like ``v_row`` / ``v_col``; ``dense`` (``(W, b)`` pairs), and the output
    layer's two used rows ``w_out``, ``b_out``.
    """
    n_hidden = (len(weights) - 4) // 2
    w_in, b_in = weights[0], weights[1]
    scale = torch.rsqrt(NORMALIZER_EPS + t.sumsq / t.n)
    w = w_in[:, layout.perm] * scale  # (hidden, 30), fused channel order
    folded = {"dense": [(weights[2 + i], weights[2 + n_hidden + i].unsqueeze(-1)) for i in range(n_hidden)],
              "w_out": weights[2 + 2 * n_hidden][:2], "b_out": weights[3 + 2 * n_hidden][:2].unsqueeze(-1),
              "b0": b_in.unsqueeze(-1)}
    if not t.factored:
        folded["w_elem"] = w.contiguous()
        return folded
    folded["w_elem"] = w[:, :layout.per_element].contiguous()
    tables = t.tables
    flat = lambda name: tables[name].reshape(-1, tables[name].shape[-1]).t()  # noqa: E731  (k, entries)
    row = torch.addmm(folded["b0"], w[:, layout["row"]], flat("v_row"))
    row.addmm_(w[:, layout["rs_row"]], flat("row_rsqrt"))
    col = torch.mm(w[:, layout["col"]], flat("v_col"))
    col.addmm_(w[:, layout["rs_col"]], flat("col_rsqrt"))
    hidden = w.shape[0]
    folded["row_tab"] = row.t().reshape(tables["v_row"].shape[:-1] + (hidden,))
    folded["col_tab"] = col.t().reshape(tables["v_col"].shape[:-1] + (hidden,))
    return folded


def interpolate(mlp, controls: torch.Tensor, interp_mult: float) -> torch.Tensor:
    """``interp_mult * mean_k(controls[:, k] * bank[k])`` for every tensor at once: ``(n, bank_size)``.

    One matrix product (no ``(n, param_inits, bank_size)`` temporary).
    """
    bank = mlp.flat_bank()
    return torch.mm(controls, bank).div_(bank.shape[0]).mul_(interp_mult)
