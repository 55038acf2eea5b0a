"""Per-parameter state of the AdafacLO family, created by the optimizer class before any engine runs.

State keys (float32, in the work layout of ``pylo.spec.shapes``): ``mom``, ``rms``, ``fac_row``,
``fac_col``, ``fac_diag`` (:class:`pylo.core.accumulators.AccumulatorSet`) and ``step``, the
0-based iteration as a 0-d tensor.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch

from pylo.core.decays import DECAY_KINDS
from pylo.optim.sharded import init_accumulators, local_tensor


def decay_counts(group: Dict) -> Tuple[int, int, int]:
    """A param group's numbers of momentum, RMS and Adafactor decays."""
    return tuple(len(group[f"initial_{k}_decays"]) for k in DECAY_KINDS)


def init_state(state: Dict, p: torch.Tensor, counts: Sequence[int], kernel_layout: str) -> None:
    """Zero accumulators and step of parameter ``p`` (of a DTensor parameter, this rank's part held as
    DTensors; ``step`` stays a plain 0-d tensor, the same on every rank)."""
    init_accumulators(state, p, kernel_layout, counts)
    state["step"] = torch.zeros((), dtype=torch.float32, device=local_tensor(p).device)


def init_missing(params: Sequence[torch.Tensor], states: Sequence[Dict], counts: Sequence[int],
                 kernel_layout: str) -> None:
    """Create the state of every parameter that has none yet (its first step)."""
    for p, state in zip(params, states):
        if not state:
            init_state(state, p, counts, kernel_layout)
