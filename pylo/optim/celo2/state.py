"""Per-parameter state of the CELO2 family, created by the optimizer classes before an engine runs.

* the learned path (and ELO-CELO2's AdamW path, which shares it): upstream's momentum, RMS and
  Adafactor accumulators of the tensor's work layout (:class:`pylo.core.accumulators.AccumulatorSet`)
  and a float32 step count;
* CELO2's AdamW path: its own moments ``exp_avg``, ``exp_avg_sq`` (the parameter's shape) and a step count.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from pylo.core import accumulators as acc


def _init_step(state: Dict, device) -> None:
    if "step" not in state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=device)


def init_accumulators(state: Dict, pw: torch.Tensor, decays: Sequence[torch.Tensor]) -> None:
    """Upstream's momentum / RMS / Adafactor state (plus a step count) for one work-layout tensor."""
    if "mom" not in state:
        acc.AccumulatorSet.init(state, pw.shape, *(d.numel() for d in decays), pw.device)
    _init_step(state, pw.device)


def init_adamw(state: Dict, p: torch.Tensor) -> None:
    """CELO2's AdamW path: its own moments and step count (float32, ``p``'s shape)."""
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
    _init_step(state, p.device)
