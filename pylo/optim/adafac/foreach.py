"""The foreach AdafacLO engine: multi-tensor accumulator updates and one MLP call over all tensors."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from pylo.core import accumulators as acc
from pylo.core.layout import subtract_update, to_work
from pylo.optim.adafac.constants import NUM_FEATURES
from pylo.optim.adafac.engine import AdafacEngine
from pylo.optim.adafac.features import adafaclo_inputs


class ForeachEngine(AdafacEngine):
    """``prepare``: ``torch._foreach_*`` momentum and RMS, then each tensor's factored moments;
    ``finish``: every tensor's features through the MLP at once, then the updates."""

    name = "foreach"

    def prepare(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], states: Sequence[Dict]
                ) -> List:
        mom_d, rms_d, fac_d = self.decays
        gws = [to_work(g, self.kernel_layout) for g in grads]
        acc.update_momentum_foreach([s["mom"] for s in states], gws, mom_d)
        acc.update_rms_foreach([s["rms"] for s in states], gws, rms_d)
        fac_gs = [acc.update_factored(s["fac_row"], s["fac_col"], s["fac_diag"], gw, fac_d)
                  for s, gw in zip(states, gws)]
        return list(zip(params, gws, states, fac_gs))

    def finish(self, prepared: List, **inputs) -> None:
        pws = [to_work(p, self.kernel_layout).to(torch.float32) for p, _, _, _ in prepared]
        features = [adafaclo_inputs(pw, gw, state, fac_g).reshape(-1, NUM_FEATURES)
                    for pw, (_, gw, state, fac_g) in zip(pws, prepared)]
        outs = self.network(torch.cat(features)).split([x.shape[0] for x in features])
        for pw, out, (p, _, _, _) in zip(pws, outs, prepared):
            out = out.reshape(tuple(pw.shape) + (-1,))
            subtract_update(p, self.scaled_step(out[..., 0], out[..., 1], pw), self.kernel_layout)
        torch._foreach_add_([state["step"] for _, _, state, _ in prepared], 1)
