"""What one backend engine gets for one param group on one device and one step.

The optimizer class builds an :class:`EngineSettings` per (group, device) from the group's
hyperparameters; an engine (:mod:`.naive`, :mod:`.foreach`, :mod:`.fused`, :mod:`.triton`) reads
nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from pylo.optim.hyperv2.controller import LSTMInputs
from pylo.spec.features import hyper_group_widths


@dataclass
class EngineSettings:
    """One group's settings on one device.

    ``decays``: the momentum, RMS and Adafactor decays as float32 tensors on the device, and
    ``decay_values`` the same as Python floats (the Triton kernels' scalars); ``mlp``: the
    meta-network's MLP bank on the device (:class:`pylo.models.hyper_network.VeLOMLP`);
    ``inputs``: the controller's LSTM inputs with this step's shared features; ``step = lr_mult *
    d * param_scale * exp(mu * exp_mult) * step_mult`` (``lr_mult`` when ``use_lr_mult``), and
    ``p <- p - lr * (step + weight_decay * p)``; ``interp_mult`` scales the interpolated MLP;
    ``chunk_size`` bounds the fused backend's slabs, whose buffers live in ``workspaces``;
    ``splits`` (naive and fused engines): per tensor, the :class:`~pylo.core.reduce.Split` of one rank's part
    of a sharded parameter, or None.
    """

    decays: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    decay_values: Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]]
    mlp: torch.nn.Module
    inputs: LSTMInputs
    kernel_layout: str
    lr: float
    exp_mult: float
    step_mult: float
    weight_decay: float
    interp_mult: float
    use_lr_mult: bool
    chunk_size: int
    device: torch.device
    workspaces: Dict = field(default_factory=dict)
    splits: Optional[List] = None

    @property
    def decay_counts(self) -> Tuple[int, int, int]:
        return tuple(d.numel() for d in self.decays)

    @property
    def widths(self) -> Tuple[int, ...]:
        """The widths of the 14 per-element feature groups (:data:`pylo.spec.features.HYPER_GROUPS`)."""
        return hyper_group_widths(*self.decay_counts)


@dataclass
class Prepared:
    """What an engine's :meth:`~pylo.optim.backend.Engine.prepare` hands to its ``finish``.

    ``handles``: one per tensor, the engine's own; ``lstm_inputs``: ``(n, inputs)`` on the
    group's device, row ``i`` for tensor ``i``, computed from the *old* parameters and accumulators.
    """

    handles: list
    lstm_inputs: torch.Tensor
