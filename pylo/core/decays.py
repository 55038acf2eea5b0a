"""Learned decay reparameterisation (AdafacMLPLOpt, MuLO).

Upstream stores decay *offsets* theta and uses
``param_to_decay(decay_to_param(d0) + theta) = 1 - exp(10 * (log(1 - d0) / 10 + theta))``,
computed in float32.
"""

from __future__ import annotations

from typing import List, Sequence

import torch


def learned_decays(initial: Sequence[float], offsets: Sequence[float]) -> List[float]:
    """Effective decays (as exact float32 values) from initial decays and learned offsets."""
    if len(initial) != len(offsets):
        raise ValueError(f"{len(offsets)} decay offsets given for {len(initial)} initial decays")
    d0 = torch.tensor(list(initial), dtype=torch.float32)
    theta = torch.tensor(list(offsets), dtype=torch.float32)
    param = torch.log(1 - d0) / 10.0 + theta
    return (1 - torch.exp(param * 10.0)).tolist()
