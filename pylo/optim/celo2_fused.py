"""The fused CELO2 / ELO-CELO2 backend: bounded memory, few passes, the normaliser folded into the first layer.

Same update as the naive path (:mod:`pylo.optim.celo2`) within float32
round-off, computed differently. A learned tensor (work layout) is visited in
slabs that never cross a matrix of its last two axes
(:func:`pylo.core.chunked.matrix_slabs`), since CELO2 normalises per matrix:

1. the Adafactor row/column moments and their small tables
   (:func:`pylo.core.fused.adafactor_tables`; ``g*g`` is the only
   per-element temporary, freed at once);
2. pass 1: momentum, RMS (and a 1-D tensor's diagonal moment) updated in place,
   the per-element feature channels written channel-major into a reused
   buffer and their sums of squares accumulated per (matrix, channel); the 12
   channels that only broadcast the Adafactor tables get theirs from the tables;
3. the second-moment normaliser, one scale per (matrix, channel), folded into a
   per-matrix copy of the first layer (``(x * s) @ W0 = x @ (s * W0)``);
4. pass 2: the features again, the MLP with ``addmm`` in channel-major layout
   (``W @ X``: the long axis is the matmul's N), and ``d * exp(mag * exp_mult)``
   written into one step buffer (4 B/param: Newton-Schulz needs the whole step);
5. Newton-Schulz per matrix: small matrices batched exactly as the naive path
   does, large ones in place with symmetric block products
   (:func:`pylo.core.orthogonalize.newton_schulz_`, two ``r x r`` buffers);
6. pass 3: output normalisation, ``rmsmult``, weight decay, ``lr`` and the
   parameter update, slab by slab (bf16/fp16 parameters rounded once).

The AdamW paths (CELO2's own moments, ELO-CELO2's shared accumulators) are
elementwise: their tensors are cut into flat pieces of at most ``chunk``
elements and batched into multi-tensor (``torch._foreach_*``) calls with the
exact arithmetic of the foreach path.

Nothing synchronises with the host; transient memory is the step buffer, the
Newton-Schulz buffers of the largest matrix and a few chunk-sized buffers.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pylo.core import accumulators as acc
from pylo.core import adam
from pylo.core.chunked import DEFAULT_CHUNK, matrix_slabs
from pylo.core.features import GRAD_CLIP_FEATURE
from pylo.core.fused import Workspace, adafactor_tables, broadcast_table
from pylo.core.layout import to_work
from pylo.core.orthogonalize import newton_schulz, newton_schulz_
from pylo.spec.shapes import factored_dims

RMS_EPS = 1e-8
NORMALIZER_EPS = 1e-9
#: feature groups per element: every tensor has the first nine; factored tensors add group 13 (Adafactor momentum)
COMPUTED_GROUPS_1D = tuple(range(9))
COMPUTED_GROUPS = COMPUTED_GROUPS_1D + (13,)
#: groups 9-12 broadcast the Adafactor tables (row, column, and their rsqrt)
TABLE_GROUPS = (9, 10, 11, 12)
TABLE_NAMES = ("v_row", "v_col", "row_rsqrt", "col_rsqrt")
#: matrices of at least this many elements are orthogonalised in place in row blocks of NS_BLOCK
#: (:func:`pylo.core.orthogonalize.newton_schulz_`); smaller ones batched, as the naive path does
NS_IN_PLACE_MIN = 1 << 16
NS_BLOCK = 256


class Layout:
    """Where each upstream feature group sits in the channel-major buffer.

    Rows ``[0, computed)`` hold the per-element groups in :data:`COMPUTED_GROUPS`
    order; factored tensors then have the four table groups. ``w0`` (the MLP's
    first layer, ``(channels, hidden)`` in upstream group order) is permuted
    to this order by :meth:`first_layer`.
    """

    def __init__(self, widths: Sequence[int], factored: bool):
        self.widths = tuple(widths)
        self.groups = COMPUTED_GROUPS + TABLE_GROUPS if factored else COMPUTED_GROUPS_1D
        self.offsets: Dict[int, int] = {}
        row = 0
        for grp in self.groups:
            self.offsets[grp] = row
            row += self.widths[grp]
        self.channels = row
        self.computed = sum(self.widths[grp] for grp in (COMPUTED_GROUPS if factored else COMPUTED_GROUPS_1D))

    def rows(self, grp: int) -> slice:
        return slice(self.offsets[grp], self.offsets[grp] + self.widths[grp])

    def first_layer(self, w0: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(hidden, channels)``: the first-layer blocks of the groups used, in buffer order."""
        return torch.cat([w0[grp] for grp in self.groups]).T


def _mlp(network) -> Tuple[List[torch.Tensor], torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]], object]:
    """A CELO2MLP as channel-major pieces: ``w0`` blocks, ``b0`` as a column, the dense layers as
    ``(out, in)`` weights with column biases (the last one cut to the two outputs used), the activation."""
    dense = [(w.T, b.unsqueeze(-1)) for w, b in zip(network.dense_w, network.dense_b)]
    dense[-1] = (dense[-1][0][:2], dense[-1][1][:2])
    act = torch.relu_ if network.activation == "relu" else torch.tanh_
    return list(network.w0), network.b0.unsqueeze(-1), dense, act


class _Tensor:
    """One learned tensor: work views, state, Adafactor tables broadcast channel-major."""

    def __init__(self, p: torch.Tensor, g: torch.Tensor, state: Dict, kernel_layout: str, fac_b: torch.Tensor,
                 clip: Optional[float], widths: Sequence[int]):
        self.p, self.g = to_work(p, kernel_layout), to_work(g, kernel_layout)
        self.shape = tuple(self.p.shape)
        self.m, self.rms = state["mom"], state["rms"]
        self.clip = clip
        tables = adafactor_tables(state, self.g, fac_b, clip)
        self.factored = tables is not None
        self.layout = Layout(widths, self.factored)
        self.diag = None if self.factored else state["fac_diag"]
        if self.factored:
            self.dims = tables["dims"]
            self.cm = {name: broadcast_table(tables[name], self.shape, self.dims, name, channel_major=True)
                       for name in ("row_fac", "col_fac") + TABLE_NAMES}
            self.tables = tables
        rank = len(self.shape)
        self.matrix = self.shape[-2:] if rank >= 2 else self.shape
        self.matrices = 1
        for s in self.shape[:-2]:
            self.matrices *= s
        self.matrix_numel = self.p.numel() // max(self.matrices, 1)

    def table_sumsq(self) -> torch.Tensor:
        """``(matrices, 12)``: per matrix, the sums of squares of the four broadcast table groups."""
        return matrix_table_sumsq(self.tables, self.shape)


def matrix_table_sumsq(tables: Dict, shape: Sequence[int]) -> torch.Tensor:
    """``(matrices, 4k)``: per matrix of the last two axes, the sums of squares of the broadcast table groups
    (:data:`TABLE_NAMES`, concatenated).

    A table repeats along the axis it was reduced over: inside a matrix (one of
    the last two axes) that multiplies its sum, across matrices it repeats it.
    """
    shape = tuple(shape)
    d1, d0 = tables["dims"]
    rank = len(shape)
    norm_axes = (rank - 2, rank - 1)
    out = []
    for name in TABLE_NAMES:
        t = tables[name]
        axis = d0 if name in ("v_row", "row_rsqrt") else d1
        sq = (t * t).unsqueeze(axis).sum(dim=norm_axes)
        if axis in norm_axes:
            sq = sq * shape[axis]
        out.append(sq.expand(shape[:-2] + (t.shape[-1],)).reshape(-1, t.shape[-1]))
    return torch.cat(out, dim=1)


def _load_grad(x: torch.Tensor, t: _Tensor, idx) -> torch.Tensor:
    """Row 0 of the buffer := the (clamped) gradient of the slab; returned shaped like the slab."""
    g_src = t.g[idx]
    g = x[0].view(g_src.shape)
    if t.clip is None:
        g.copy_(g_src)
    else:
        torch.clamp(g_src, -t.clip, t.clip, out=g)
    return g


def _accumulate(t: _Tensor, idx, g: torch.Tensor, decays, sq: torch.Tensor, tmp: torch.Tensor) -> None:
    """Momentum, RMS (and the diagonal moment) of the slab, in place, in the naive path's rounding order.

    ``sq`` (a slab) and ``tmp`` (at least ``slab x k`` elements) are scratch.
    """
    mom_d, rms_b, fac_b, mix_m, mix_r, mix_f = decays
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


def _fill(x: torch.Tensor, t: _Tensor, idx, g: torch.Tensor, tables: bool) -> None:
    """Rows of the feature buffer for one slab, upstream's formulas (``hyper_feature_groups``, rms eps 1e-8).

    ``tables`` also writes the four broadcast table groups (pass 2).
    """
    lay = t.layout
    shape = g.shape
    rows = lambda grp: x[lay.rows(grp)].view((lay.widths[grp],) + shape)  # noqa: E731
    cm = (slice(None),) + idx
    torch.clamp(g, -GRAD_CLIP_FEATURE, GRAD_CLIP_FEATURE, out=rows(1)[0])
    rows(2)[0].copy_(t.p[idx])
    m = rows(3)
    m.copy_(t.m[idx].movedim(-1, 0))
    rows(4).copy_(t.rms[idx].movedim(-1, 0))
    rs = rows(6)
    torch.add(rows(4), RMS_EPS, out=rs)
    rs.rsqrt_()
    torch.mul(m, rs, out=rows(5))
    torch.mul(g, rs, out=rows(8))
    fac_g = rows(7)
    if t.factored:
        torch.mul(g, t.cm["row_fac"][cm], out=fac_g)
        fac_g.mul_(t.cm["col_fac"][cm])
        fac_m = rows(13)
        torch.mul(m, t.cm["row_fac"][cm], out=fac_m)
        fac_m.mul_(t.cm["col_fac"][cm])
        if tables:
            for grp, name in zip(TABLE_GROUPS, TABLE_NAMES):
                rows(grp).copy_(t.cm[name][cm])
    else:
        torch.add(t.diag[idx].movedim(-1, 0), 1e-9, out=fac_g)
        fac_g.clamp_min_(1e-9).rsqrt_().mul_(g)


def _row_sumsq(x: torch.Tensor) -> torch.Tensor:
    """Sum of squares of each row of a 2-D tensor (no temporary of its size)."""
    return torch.linalg.vector_norm(x, dim=1).square()


def orthogonalize_and_scale(step: torch.Tensor, cfg, matrices: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Newton-Schulz over the last two axes of a whole float32 step (work layout), then the output normaliser.

    Small matrices are batched exactly as the naive path does, large ones
    orthogonalised in place with symmetric block products
    (:func:`pylo.core.orthogonalize.newton_schulz_`, two ``r x r`` buffers).
    Returns the step and ``rsqrt(eps + mean(step**2))`` per matrix (``(matrices,)``).
    """
    shape = tuple(step.shape)
    matrix_numel = step.numel() // max(matrices, 1)
    if cfg.orthogonalize and len(shape) >= 2:
        if matrix_numel < NS_IN_PLACE_MIN:
            step = newton_schulz(step, cfg.ns_coeffs, cfg.ns_iters, cfg.ns_eps)
        else:
            for mat in step.view(-1, *shape[-2:]).unbind(0):
                newton_schulz_(mat, cfg.ns_coeffs, cfg.ns_iters, cfg.ns_eps, block=NS_BLOCK)
    return step, torch.rsqrt(NORMALIZER_EPS + _row_sumsq(step.reshape(matrices, -1)) / matrix_numel)


def learned_update(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict], *, network,
                   decays: Sequence[torch.Tensor], cfg, lr: float, weight_decay: float, grad_clip_val: Optional[float],
                   kernel_layout: str, skip_zero_decay: bool = True, chunk: int = DEFAULT_CHUNK,
                   workspaces: Optional[Dict] = None) -> None:
    """Fused CELO2 learned-path update (accumulators included) of tensors of one group on one device.

    ``states`` already hold the accumulators (``pylo.optim.celo2.init_accumulators``);
    each tensor's step count is incremented.
    """
    if not params:
        return
    from pylo.optim.celo2 import feature_widths

    mom_d, rms_d, fac_d = decays
    rms_b, fac_b = rms_d.clamp(0.0, 1.0), fac_d.clamp(0.0, 1.0)
    mixes = (mom_d, rms_b, fac_b, 1 - mom_d, 1 - rms_b, 1 - fac_b)
    widths = feature_widths(mom_d.numel(), rms_d.numel(), fac_d.numel())
    w0_blocks, b0, dense, act = _mlp(network)
    hidden = b0.shape[0]
    device = params[0].device
    k_max = max(mom_d.numel(), rms_d.numel(), fac_d.numel())
    first_scratch = sum(widths)  # rows after the features: scratch for the accumulators and the update
    ws = Workspace.get(workspaces if workspaces is not None else {}, chunk, first_scratch + 1 + k_max, hidden, 2,
                       device)

    for p, g, state in zip(params, grads, states):
        t = _Tensor(p, g, state, kernel_layout, fac_b, grad_clip_val, widths)
        lay = t.layout
        n_c = lay.computed

        # pass 1: accumulators and per-(matrix, channel) sums of squares
        sumsq = torch.zeros(t.matrices, lay.channels, device=device)
        if t.factored:
            sumsq[:, n_c:] = t.table_sumsq()
        for mat, idx, count in matrix_slabs(t.shape, chunk):
            x = ws.x(count)
            g_s = _load_grad(x, t, idx)
            scratch = x[first_scratch:]
            _accumulate(t, idx, g_s, mixes, scratch[0].view(g_s.shape), scratch[1:].reshape(-1))
            _fill(x, t, idx, g_s, tables=False)
            sumsq[mat, :n_c] += _row_sumsq(x[:n_c])

        # the normaliser, folded into a first layer per matrix
        scale = torch.rsqrt(NORMALIZER_EPS + sumsq / t.matrix_numel)
        w0 = lay.first_layer(w0_blocks).unsqueeze(0) * scale.unsqueeze(1)  # (matrices, hidden, channels)
        mag_scale = None
        if cfg.param_scale_mult:
            p_sq = sumsq[:, lay.offsets[2]].sum()
            mag_scale = torch.sqrt(p_sq / t.p.numel() + 1e-9)

        # pass 2: features, MLP, direction * magnitude into the step buffer
        step = torch.empty(t.shape, device=device)
        for mat, idx, count in matrix_slabs(t.shape, chunk):
            x = ws.x(count)
            g_s = _load_grad(x, t, idx)
            _fill(x, t, idx, g_s, tables=True)
            h = act(torch.addmm(b0, w0[mat], x[: lay.channels], out=ws.h(0, count)))
            for j, (w, b) in enumerate(dense[:-1]):
                h = act(torch.addmm(b, w, h, out=ws.h(j + 1, count)))
            out = torch.addmm(dense[-1][1], dense[-1][0], h, out=ws.out(count))
            mag = out[1].mul_(cfg.exp_mult).exp_()
            if mag_scale is not None:
                mag = torch.mul(mag_scale, mag, out=mag)
            torch.mul(out[0], mag, out=step[idx].view(count))

        # Newton-Schulz over the last two axes
        step, out_scale = orthogonalize_and_scale(step, cfg, t.matrices)

        # pass 3: output normalisation, decay, lr, update
        for mat, idx, count in matrix_slabs(t.shape, chunk):
            x = ws.x(count)
            s, decay, p32 = (x[i].view(step[idx].shape) for i in range(3))  # feature rows are free now
            torch.mul(step[idx], out_scale[mat], out=s)
            if cfg.rmsmult != 1.0:
                s.mul_(cfg.rmsmult)
            p_s = t.p[idx]
            if p_s.dtype != torch.float32:
                p_s = p32.copy_(p_s)
            if weight_decay or not skip_zero_decay:
                s.add_(torch.mul(p_s, weight_decay, out=decay))
            s.mul_(lr)
            if p_s is p32:
                t.p[idx].copy_(p32.sub_(s))
            else:
                p_s.sub_(s)
        state["step"] += 1


# ---------------------------------------------------------------------------------------- AdamW paths

#: elements per multi-tensor batch of the AdamW paths (in units of ``chunk``)
ADAM_BATCH_CHUNKS = 4


class _Flat:
    """Tensors of one path seen as flat contiguous vectors, cut into pieces of at most ``chunk`` elements.

    A non-contiguous parameter is worked on in a contiguous copy that :meth:`write_back` copies back.
    """

    def __init__(self, params: Sequence[torch.Tensor], chunk: int):
        self.params = list(params)
        self.work = [p if p.is_contiguous() else p.contiguous() for p in self.params]
        self.pieces = [(i, s, min(w.numel(), s + chunk)) for i, w in enumerate(self.work)
                       for s in range(0, w.numel(), chunk)]

    def batches(self, budget: int):
        """Consecutive pieces grouped into batches of at most ``budget`` elements (one piece at least)."""
        batch, total = [], 0
        for piece in self.pieces:
            size = piece[2] - piece[1]
            if batch and total + size > budget:
                yield batch
                batch, total = [], 0
            batch.append(piece)
            total += size
        if batch:
            yield batch

    @staticmethod
    def cut(rows: Sequence[torch.Tensor], batch) -> List[torch.Tensor]:
        """The batch's pieces of per-tensor ``(n,)`` or ``(n, k)`` views."""
        return [rows[i][s:e] for i, s, e in batch]

    def write_back(self) -> None:
        for p, w in zip(self.params, self.work):
            if w is not p:
                p.copy_(w)


def _rows(t: torch.Tensor, numel: int) -> torch.Tensor:
    """A contiguous accumulator ``S + (k,)`` as ``(numel, k)``."""
    return t.view(numel, -1)


def _decoupled_update(ps: List[torch.Tensor], d: List[torch.Tensor], lr: float, weight_decay: float,
                      skip_zero_decay: bool) -> None:
    """``p -= lr * (d + weight_decay * p)`` over pieces, as ``pylo.optim.celo2.decoupled`` rounds it
    (``d`` float32, consumed; bf16/fp16 pieces updated in float32 and rounded once)."""
    p32 = [p if p.dtype == torch.float32 else p.to(torch.float32) for p in ps]
    if weight_decay or not skip_zero_decay:
        torch._foreach_add_(d, torch._foreach_mul(p32, weight_decay))
    torch._foreach_mul_(d, lr)
    torch._foreach_sub_(p32, d)
    for p, q in zip(ps, p32):
        if q is not p:
            p.copy_(q)


def _next_bias_corrections(states: List[Dict], b1: float, b2: float):
    """Advance each tensor's own step count; its AdamW bias corrections (device tensors, no host sync)."""
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    stacked = torch.stack(steps)
    return adam.bias_correction(b1, stacked).unbind(), adam.bias_correction(b2, stacked).unbind()


def adamw_update(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict], *, lr: float,
                 betas: Tuple[float, float], eps: float, weight_decay: float, chunk: int = DEFAULT_CHUNK) -> None:
    """CELO2's AdamW path (optax ``adamw``, own moments) in bounded memory.

    The arithmetic of ``pylo.optim.celo2.adamw(foreach=True)`` on flat pieces
    batched into multi-tensor calls; ``states`` already hold ``exp_avg``,
    ``exp_avg_sq`` and ``step``; ``lr`` is already float32-rounded.
    """
    if not params:
        return
    b1, b2 = betas
    bc1, bc2 = _next_bias_corrections(states, b1, b2)
    flat = _Flat(params, chunk)
    ps = [w.view(-1) for w in flat.work]
    gs = [g.reshape(-1) for g in grads]
    mus = [s["exp_avg"].view(-1) for s in states]
    nus = [s["exp_avg_sq"].view(-1) for s in states]
    for batch in flat.batches(ADAM_BATCH_CHUNKS * chunk):
        mu, nu = flat.cut(mus, batch), flat.cut(nus, batch)
        adam.update_moments_foreach(mu, nu, flat.cut(gs, batch), b1, b2)
        d = adam.adam_directions_foreach(mu, nu, [bc1[i] for i, _, _ in batch], [bc2[i] for i, _, _ in batch], eps)
        _decoupled_update(flat.cut(ps, batch), d, lr, weight_decay, skip_zero_decay=True)
    flat.write_back()


def shared_adamw_update(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict], *,
                        decays: Sequence[torch.Tensor], betas: Tuple[float, float], lr: float, weight_decay: float,
                        grad_clip_val: Optional[float], kernel_layout: str, eps: float = 1e-8,
                        chunk: int = DEFAULT_CHUNK) -> None:
    """ELO-CELO2's AdamW path: the shared accumulators (all three kinds) updated, then
    ``m[..., 0] / bc1 / (sqrt(rms[..., -1] / bc2) + eps)`` with the tensor's own step count.

    The arithmetic of ``pylo.optim.elo_celo2.elo_celo2(foreach=True)``; the decay term is always added.
    """
    if not params:
        return
    mom_d, rms_d, fac_d = decays
    fac_b = fac_d.clamp(0.0, 1.0)
    b1, b2 = betas
    works = [to_work(p, kernel_layout) for p in params]
    gws = [to_work(g, kernel_layout) for g in grads]
    diag = []
    for gw, s in zip(gws, states):
        # the factored moments need row/column means: one g*g temporary per tensor, freed at once
        diag.append(adafactor_tables(s, gw, fac_b, grad_clip_val) is None)
    bc1, bc2 = _next_bias_corrections(states, b1, b2)
    flat = _Flat(works, chunk)
    ps = [w.view(-1) for w in flat.work]
    gs = [g.reshape(-1) for g in gws]
    ms = [_rows(s["mom"], w.numel()) for s, w in zip(states, flat.work)]
    rs = [_rows(s["rms"], w.numel()) for s, w in zip(states, flat.work)]
    ds = [_rows(s["fac_diag"], w.numel()) if is_diag else None for s, w, is_diag in zip(states, flat.work, diag)]
    for batch in flat.batches(ADAM_BATCH_CHUNKS * chunk):
        g = flat.cut(gs, batch)
        if grad_clip_val is not None:
            g = torch._foreach_clamp_min(g, -grad_clip_val)
            torch._foreach_clamp_max_(g, grad_clip_val)
        m, r = flat.cut(ms, batch), flat.cut(rs, batch)
        acc.update_momentum_foreach(m, g, mom_d)
        acc.update_rms_foreach(r, g, rms_d)
        on_diag = [j for j, (i, _, _) in enumerate(batch) if diag[i]]
        if on_diag:
            d = [ds[batch[j][0]][batch[j][1]: batch[j][2]] for j in on_diag]
            sq = torch._foreach_mul([g[j] for j in on_diag], [g[j] for j in on_diag])
            torch._foreach_add_(sq, acc.FACTORED_EPS)
            torch._foreach_mul_(d, [fac_b] * len(d))
            torch._foreach_add_(d, torch._foreach_mul([s.unsqueeze(-1) for s in sq], [1 - fac_b] * len(d)))
        direction = adam.adam_directions_foreach([x[..., 0] for x in m], [x[..., -1] for x in r],
                                                 [bc1[i] for i, _, _ in batch], [bc2[i] for i, _, _ in batch], eps)
        _decoupled_update(flat.cut(ps, batch), direction, lr, weight_decay, skip_zero_decay=False)
    flat.write_back()
