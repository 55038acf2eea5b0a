"""Per-parameter state of the AdafacLO family, created by the optimizer class before any engine runs.

State keys (float32, in the work layout of ``pylo.spec.shapes``): ``mom``, ``rms``, ``fac_row``,
``fac_col``, ``fac_diag`` (:class:`pylo.core.accumulators.AccumulatorSet`) and ``step``, the
0-based iteration as a 0-d tensor.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from pylo.core.accumulators import AccumulatorSet
from pylo.core.decays import DECAY_KINDS
from pylo.core.reduce import Split
from pylo.optim.sharded import hold_as_dtensors, is_dtensor, local_split, local_tensor
from pylo.spec.shapes import work_shape


def decay_counts(group: Dict) -> Tuple[int, int, int]:
    """A param group's numbers of momentum, RMS and Adafactor decays."""
    return tuple(len(group[f"initial_{k}_decays"]) for k in DECAY_KINDS)


def init_state(state: Dict[str, torch.Tensor], shape: Sequence[int], counts: Sequence[int], device,
               split: Optional[Split] = None) -> None:
    """Zero accumulators and step of one tensor whose work-layout shape is ``shape`` (this rank's part
    of it with a ``split``)."""
    AccumulatorSet.init(state, shape, *counts, device, split)
    state["step"] = torch.zeros((), dtype=torch.float32, device=device)


def init_sharded(state: Dict, p, counts: Sequence[int], kernel_layout: str) -> None:
    """The state of a DTensor parameter stepped shard-wise: this rank's part of every tensor, held as
    DTensors on the parameter's mesh (``step`` stays a plain 0-d tensor, the same on every rank)."""
    split = local_split(p, kernel_layout)
    shape = work_shape(local_tensor(p).shape, kernel_layout)
    init_state(state, shape, counts, local_tensor(p).device, split)
    hold_as_dtensors(state, p, AccumulatorSet.splits(shape, split), AccumulatorSet.KEYS)


def init_missing(params: Sequence[torch.Tensor], states: Sequence[Dict], counts: Sequence[int],
                 kernel_layout: str) -> None:
    """Create the state of every parameter that has none yet (its first step)."""
    for p, state in zip(params, states):
        if state:
            continue
        if is_dtensor(p):
            init_sharded(state, p, counts, kernel_layout)
        else:
            init_state(state, work_shape(p.shape, kernel_layout), counts, p.device)
