"""The naive AdafacLO engine: tensor by tensor, the readable reference of the update."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from pylo.core.accumulators import AccumulatorSet
from pylo.core.layout import subtract_update, to_work
from pylo.optim.adafac.engine import AdafacEngine
from pylo.optim.adafac.features import adafaclo_inputs


class NaiveEngine(AdafacEngine):
    """``prepare``: every tensor's accumulators; ``finish``: per tensor, features, MLP and update.

    Tensors with a split (``self.splits``) are one rank's part of a sharded parameter: their
    reductions over the split axis add an all-reduce of the reduced statistics (``pylo.core.reduce``).
    """

    name = "naive"

    def prepare(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], states: Sequence[Dict]
                ) -> List:
        mom_d, rms_d, fac_d = self.decays
        splits = self.splits or [None] * len(params)
        prepared = []
        for p, g, state, split in zip(params, grads, states, splits):
            gw = to_work(g, self.kernel_layout)
            prepared.append((p, gw, state, AccumulatorSet.update(state, gw, mom_d, rms_d, fac_d, split), split))
        return prepared

    def finish(self, prepared: List, **inputs) -> None:
        for p, gw, state, fac_g, split in prepared:
            pw = to_work(p, self.kernel_layout).to(torch.float32)
            out = self.network(adafaclo_inputs(pw, gw, state, fac_g, split))
            subtract_update(p, self.scaled_step(out[..., 0], out[..., 1], pw), self.kernel_layout)
            state["step"] += 1
