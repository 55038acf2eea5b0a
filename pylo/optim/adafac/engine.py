"""What every AdafacLO-family engine shares: its per-group settings and the step from the MLP output.

Per element, the MLP gives a direction ``d`` and a magnitude ``mu``; the parameter moves by
``lr * (d * exp(mu * exp_mult) * step_mult + weight_decay * p)``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pylo.core.chunked import DEFAULT_CHUNK
from pylo.optim.backend import Engine


class AdafacEngine(Engine):
    """Base of the four AdafacLO engines (one param group, one device, one step).

    Args:
        network: the float32 MetaMLP on the device.
        decays: momentum, RMS and Adafactor decays as float32 tensors on the device.
        lr, exp_mult, step_mult, weight_decay: the update's scalars (see the module docstring).
        kernel_layout: ``"torch"`` or ``"jax"`` (``pylo.spec.shapes``).
        chunk_size: elements per chunk (fused engine).
        workspaces: the optimizer's reusable buffers per device (fused engine).
        decay_values: the decays as Python floats (Triton engine: kernel arguments, no host sync).
        splits: per tensor, the :class:`~pylo.core.reduce.Split` of a tensor that is one rank's part
            of a sharded parameter, or None (naive and fused engines).
    """

    def __init__(self, *, network: torch.nn.Module, decays: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                 lr: float, exp_mult: float, step_mult: float, weight_decay: float, kernel_layout: str,
                 chunk_size: int = DEFAULT_CHUNK, workspaces: Optional[Dict] = None,
                 decay_values: Optional[Tuple[List[float], List[float], List[float]]] = None,
                 splits: Optional[Sequence] = None):
        self.network, self.decays = network, decays
        self.lr, self.exp_mult, self.step_mult, self.weight_decay = lr, exp_mult, step_mult, weight_decay
        self.kernel_layout, self.chunk_size, self.decay_values = kernel_layout, chunk_size, decay_values
        self.workspaces = {} if workspaces is None else workspaces
        self.splits = splits

    def scaled_step(self, direction: torch.Tensor, magnitude: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``lr * (direction * exp(magnitude * exp_mult) * step_mult + weight_decay * p)`` (float32)."""
        step = direction * torch.exp(magnitude * self.exp_mult) * self.step_mult
        if self.weight_decay:
            step = step + self.weight_decay * p
        return step * self.lr

