"""Per-parameter state of the CELO2 family, created by the optimizer classes before an engine runs.

* the learned path (and ELO-CELO2's AdamW path, which shares it): upstream's momentum, RMS and
  Adafactor accumulators of the tensor's work layout (:class:`pylo.core.accumulators.AccumulatorSet`)
  and a float32 step count;
* CELO2's AdamW path: its own moments ``exp_avg``, ``exp_avg_sq`` (the parameter's shape) and a step count.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from pylo.optim.sharded import init_accumulators as init_shared_accumulators
from pylo.optim.sharded import like_param, local_tensor


def _init_step(state: Dict, device) -> None:
    if "step" not in state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=device)


def init_accumulators(state: Dict, p: torch.Tensor, kernel_layout: str, decays: Sequence[torch.Tensor]) -> None:
    """Upstream's momentum / RMS / Adafactor state (plus a step count) of parameter ``p`` in its work layout;
    of a DTensor parameter, this rank's part held as DTensors (:mod:`pylo.optim.sharded`)."""
    if "mom" not in state:
        init_shared_accumulators(state, p, kernel_layout, [d.numel() for d in decays])
    _init_step(state, local_tensor(p).device)


def init_adamw(state: Dict, p: torch.Tensor) -> None:
    """CELO2's AdamW path: its own moments and step count (float32, ``p``'s shape and placements)."""
    local = local_tensor(p)
    if "exp_avg" not in state:
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = like_param(torch.zeros(local.shape, dtype=torch.float32, device=local.device), p)
    _init_step(state, local.device)
