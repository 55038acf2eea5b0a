"""The AdamW paths of the fused and Triton engines: bounded memory, multi-tensor arithmetic.

The paths are elementwise: their tensors are cut into flat pieces of at most ``chunk``
elements and batched into multi-tensor (``torch._foreach_*``) calls with the exact arithmetic
of the foreach engine's (:mod:`pylo.optim.celo2.adamw`). Nothing synchronises with the host.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from pylo.core import accumulators as acc
from pylo.core import adam
from pylo.core.fused import adafactor_tables
from pylo.core.layout import subtract_update, to_work
from pylo.optim.celo2.adamw import bias_corrections
from pylo.optim.celo2.constants import ADAM_BATCH_CHUNKS
from pylo.optim.celo2.settings import Settings


class _Flat:
    """Tensors of one path seen as flat contiguous vectors, cut into pieces of at most ``chunk`` elements.

    A non-contiguous parameter is worked on in a contiguous copy that :meth:`write_back` copies back.
    """

    def __init__(self, params: Sequence[torch.Tensor], chunk: int):
        self.params = list(params)
        self.work = [p if p.is_contiguous() else p.contiguous() for p in self.params]
        self.pieces = [(i, s, min(w.numel(), s + chunk)) for i, w in enumerate(self.work)
                       for s in range(0, w.numel(), chunk)]
        self.budget = ADAM_BATCH_CHUNKS * chunk

    def batches(self):
        """Consecutive pieces grouped into batches of at most ``budget`` elements (one piece at least)."""
        batch, total = [], 0
        for piece in self.pieces:
            size = piece[2] - piece[1]
            if batch and total + size > self.budget:
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


def _decoupled_update(ps: List[torch.Tensor], d: List[torch.Tensor], lr: float, weight_decay: float,
                      skip_zero_decay: bool) -> None:
    """``p -= lr * (d + weight_decay * p)`` over pieces, as :func:`pylo.optim.celo2.learned.decoupled` rounds it
    (``d`` float32, consumed)."""
    if weight_decay or not skip_zero_decay:
        p32 = [p if p.dtype == torch.float32 else p.to(torch.float32) for p in ps]
        torch._foreach_add_(d, torch._foreach_mul(p32, weight_decay))
    torch._foreach_mul_(d, lr)
    for p, delta in zip(ps, d):
        subtract_update(p, delta, "jax")


def _next_bias_corrections(states: List[Dict], b1: float, b2: float):
    """Advance each tensor's own step count; its AdamW bias corrections (device tensors, no host sync)."""
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    return bias_corrections(steps, b1, b2)


def own_adamw(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict], settings: Settings) -> None:
    """CELO2's AdamW (optax ``adamw``, own moments): the foreach engine's arithmetic on flat pieces."""
    path = settings.adamw
    b1, b2 = path.betas
    bc1, bc2 = _next_bias_corrections(states, b1, b2)
    flat = _Flat(params, settings.chunk_size)
    ps = [w.view(-1) for w in flat.work]
    gs = [g.reshape(-1) for g in grads]
    mus = [s["exp_avg"].view(-1) for s in states]
    nus = [s["exp_avg_sq"].view(-1) for s in states]
    for batch in flat.batches():
        mu, nu = flat.cut(mus, batch), flat.cut(nus, batch)
        adam.update_moments_foreach(mu, nu, flat.cut(gs, batch), b1, b2)
        d = adam.adam_directions_foreach(mu, nu, [bc1[i] for i, _, _ in batch], [bc2[i] for i, _, _ in batch],
                                         path.eps)
        _decoupled_update(flat.cut(ps, batch), d, path.lr, path.weight_decay, settings.skip_zero_decay)
    flat.write_back()


def _update_diag(ds: List[torch.Tensor], gs: List[torch.Tensor], fac_b: torch.Tensor) -> None:
    """A rank < 2 tensor's diagonal Adafactor moment, over pieces (``pylo.core.accumulators.update_factored``)."""
    sq = torch._foreach_mul(gs, gs)
    torch._foreach_add_(sq, acc.FACTORED_EPS)
    torch._foreach_mul_(ds, [fac_b] * len(ds))
    torch._foreach_add_(ds, torch._foreach_mul([s.unsqueeze(-1) for s in sq], [1 - fac_b] * len(ds)))


def shared_adamw(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict], settings: Settings,
                 decays: Sequence[torch.Tensor], splits: Optional[Sequence] = None) -> None:
    """ELO-CELO2's AdamW: the shared accumulators (all three kinds) updated, then
    ``m[..., 0] / bc1 / (sqrt(rms[..., -1] / bc2) + eps)`` with the tensor's own step count
    (``splits``: the :class:`~pylo.core.reduce.Split` of each tensor that is one rank's part of a sharded one)."""
    mom_d, rms_d, fac_d = decays
    fac_b = fac_d.clamp(0.0, 1.0)
    path, clip = settings.adamw, settings.grad_clip_val
    works = [to_work(p, settings.kernel_layout) for p in params]
    gws = [to_work(g, settings.kernel_layout) for g in grads]
    # the factored moments need row/column means: one g*g temporary per tensor, freed at once
    diag = [adafactor_tables(s, gw, fac_b, clip, split) is None
            for gw, s, split in zip(gws, states, splits or [None] * len(gws))]
    bc1, bc2 = _next_bias_corrections(states, *path.betas)
    flat = _Flat(works, settings.chunk_size)
    ps = [w.view(-1) for w in flat.work]
    gs = [g.reshape(-1) for g in gws]
    rows = lambda t, w: t.view(w.numel(), t.shape[-1])  # noqa: E731  (elements, decays); an empty shard too
    ms = [rows(s["mom"], w) for s, w in zip(states, flat.work)]
    rs = [rows(s["rms"], w) for s, w in zip(states, flat.work)]
    ds = [rows(s["fac_diag"], w) if d else None for s, w, d in zip(states, flat.work, diag)]
    for batch in flat.batches():
        g = flat.cut(gs, batch)
        if clip is not None:
            g = torch._foreach_clamp_min(g, -clip)
            torch._foreach_clamp_max_(g, clip)
        m, r = flat.cut(ms, batch), flat.cut(rs, batch)
        acc.update_momentum_foreach(m, g, mom_d)
        acc.update_rms_foreach(r, g, rms_d)
        on_diag = [j for j, (i, _, _) in enumerate(batch) if diag[i]]
        if on_diag:
            _update_diag([ds[batch[j][0]][batch[j][1]: batch[j][2]] for j in on_diag], [g[j] for j in on_diag], fac_b)
        direction = adam.adam_directions_foreach([x[..., 0] for x in m], [x[..., -1] for x in r],
                                                 [bc1[i] for i, _, _ in batch], [bc2[i] for i, _, _ in batch],
                                                 path.eps)
        _decoupled_update(flat.cut(ps, batch), direction, path.lr, path.weight_decay, settings.skip_zero_decay)
    flat.write_back()
