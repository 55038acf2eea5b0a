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
from pylo.core.layout import to_work
from pylo.optim.sharded import hold_as_dtensors, is_dtensor, like_param, local_split, local_tensor


def _init_step(state: Dict, device) -> None:
    if "step" not in state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=device)


def init_accumulators(state: Dict, p: torch.Tensor, kernel_layout: str, decays: Sequence[torch.Tensor]) -> None:
    """Upstream's momentum / RMS / Adafactor state (plus a step count) of parameter ``p`` in its work layout;
    of a DTensor parameter, this rank's part held as DTensors (:mod:`pylo.optim.sharded`)."""
    local = local_tensor(p)
    if "mom" not in state:
        pw = to_work(local, kernel_layout)
        split = local_split(p, kernel_layout) if is_dtensor(p) else None
        acc.AccumulatorSet.init(state, pw.shape, *(d.numel() for d in decays), pw.device, split)
        if is_dtensor(p):
            hold_as_dtensors(state, p, acc.AccumulatorSet.splits(pw.shape, split), acc.AccumulatorSet.KEYS)
    _init_step(state, local.device)


def init_adamw(state: Dict, p: torch.Tensor) -> None:
    """CELO2's AdamW path: its own moments and step count (float32, ``p``'s shape and placements)."""
    local = local_tensor(p)
    if "exp_avg" not in state:
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = like_param(torch.zeros(local.shape, dtype=torch.float32, device=local.device), p)
    _init_step(state, local.device)
