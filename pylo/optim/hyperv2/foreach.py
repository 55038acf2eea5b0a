"""The foreach VeLO / Celo engine: the naive update with multi-tensor accumulators and one interpolation.

Momentum and RMS of all a group's tensors are updated with ``torch._foreach_*`` kernels, and every
tensor's MLP is interpolated from the bank in one batched operation; the per-element MLP and the
parameter update stay tensor by tensor (:mod:`.naive`). Same arithmetic, same results.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch

from pylo.core import accumulators as acc
from pylo.optim.hyperv2.naive import NaiveEngine


class ForeachEngine(NaiveEngine):
    """The foreach backend for one parameter group on one device."""

    name = "foreach"

    def _accumulate(self, grads: List[torch.Tensor], states: List[Dict], splits: Sequence) -> None:
        mom_d, rms_d, fac_d = self.s.decays
        acc.update_momentum_foreach([s["mom"] for s in states], grads, mom_d)
        acc.update_rms_foreach([s["rms"] for s in states], grads, rms_d)
        for gw, state, split in zip(grads, states, splits):
            acc.update_factored(state["fac_row"], state["fac_col"], state["fac_diag"], gw, fac_d, split)

    def _interpolated(self, controls: torch.Tensor) -> Callable[[int], List[torch.Tensor]]:
        """Every tensor's MLP weights in one batched product, unflattened per tensor."""
        mlp = self.s.mlp
        all_weights = self.s.interp_mult * (mlp.flat_bank().unsqueeze(0) * controls.unsqueeze(-1)).mean(1)
        return lambda i: mlp.unflatten(all_weights[i])
