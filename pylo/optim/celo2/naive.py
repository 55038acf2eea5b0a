"""The naive CELO2-family engine: tensor by tensor, the readable reference (:mod:`pylo.optim.celo2.learned`)."""

from __future__ import annotations

from typing import Dict, List, NamedTuple

import torch

from pylo.core.layout import subtract_update
from pylo.optim.celo2 import adamw
from pylo.optim.celo2.engine import Celo2Engine
from pylo.optim.celo2.learned import accumulate, decoupled, learned_steps, work_tensors


class Prepared(NamedTuple):
    params: List[torch.Tensor]
    pws: List[torch.Tensor]
    gws: List[torch.Tensor]
    states: List[Dict]
    fac_gs: List[torch.Tensor]
    splits: List


class NaiveEngine(Celo2Engine):
    """Accumulators and the MLP tensor by tensor."""

    name = "naive"
    #: multi-tensor accumulator updates and one MLP call over all tensors
    foreach = False

    def prepare(self, params, grads, states) -> Prepared:
        s = self.settings
        pws, gws = work_tensors(params, grads, s.kernel_layout, s.grad_clip_val)
        splits = self.splits_of(params)
        fac_gs = accumulate(gws, list(states), self.decays, self.foreach, splits)
        return Prepared(list(params), pws, gws, list(states), fac_gs, splits)

    def update_learned(self, prepared: Prepared) -> None:
        s, n = self.settings, len(prepared.params)
        for idx in [list(range(n))] if self.foreach else [[i] for i in range(n)]:  # naive: one tensor at a time
            pws, gws, states, fac_gs, splits = ([xs[i] for i in idx] for xs in prepared[1:])
            steps = learned_steps(pws, gws, states, fac_gs, self.network, s.step, self.foreach, splits)
            for i, step in zip(idx, steps):
                delta = decoupled(step, prepared.pws[i], s.lr, s.weight_decay, s.skip_zero_decay)
                subtract_update(prepared.params[i], delta, s.kernel_layout)

    def update_routed(self, params, grads, states) -> None:
        if self.settings.adamw.shared:
            adamw.shared_adamw(params, grads, states, self.settings, self.decays, self.foreach, self.splits_of(params))
        else:
            adamw.own_adamw(params, grads, states, self.settings, self.foreach)
