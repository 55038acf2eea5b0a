"""Decays: learned reparameterisation (AdafacMLPLOpt, MuLO) and fixed decay tensors (CELO2, ELO).

Upstream stores decay *offsets* theta and uses
``param_to_decay(decay_to_param(d0) + theta) = 1 - exp(10 * (log(1 - d0) / 10 + theta))``,
computed in float32.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch


def learned_decays(initial: Sequence[float], offsets: Sequence[float]) -> List[float]:
    """Effective decays (as exact float32 values) from initial decays and learned offsets."""
    if len(initial) != len(offsets):
        raise ValueError(f"{len(offsets)} decay offsets given for {len(initial)} initial decays")
    d0 = torch.tensor(list(initial), dtype=torch.float32)
    theta = torch.tensor(list(offsets), dtype=torch.float32)
    param = torch.log(1 - d0) / 10.0 + theta
    return (1 - torch.exp(param * 10.0)).tolist()


def checked_decays(name: str, values) -> List[float]:
    """A non-empty sequence of finite decays as floats, or a ValueError naming ``name``."""
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be a non-empty sequence of finite numbers, got {values!r}")
    return out


DECAY_KINDS = ("momentum", "rms", "adafactor")


class DecayTensors:
    """Fixed decays as float32 tensors, built once per device and value."""

    def __init__(self):
        self._cache: Dict[Tuple, Tuple[torch.Tensor, ...]] = {}

    def get(self, device: torch.device, *decays: Sequence[float]) -> Tuple[torch.Tensor, ...]:
        key = (device,) + tuple(tuple(d) for d in decays)
        if key not in self._cache:
            self._cache[key] = tuple(torch.as_tensor(list(d), dtype=torch.float32, device=device) for d in decays)
        return self._cache[key]

    def of_group(self, group, device: torch.device) -> Tuple[torch.Tensor, ...]:
        """A param group's ``initial_{momentum,rms,adafactor}_decays``."""
        return self.get(device, *(group[f"initial_{k}_decays"] for k in DECAY_KINDS))
