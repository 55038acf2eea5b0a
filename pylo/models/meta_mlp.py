"""MetaMLP: the per-element MLP of AdafacLO / MuLO / ELO.

State-dict keys are those of the published PyLO ``MetaMLP`` hub repos
(``network.input``, ``network.linear_<i>``, ``network.output``), so those
repositories load unchanged. ``hidden_layers`` counts hidden-to-hidden layers:
upstream's ``hidden_layers=2`` (weights ``w0, w1, w2``) is ``hidden_layers=1``
here. Upstream Haiku weights ``w`` are ``(in, out)``; ``nn.Linear.weight`` is ``w.T``.

A converted checkpoint also records AdafacMLPLOpt's learned decay offsets in
its config (``momentum_decays``, ``rms_decays``, ``adafactor_decays``); they are
constructor arguments so ``from_pretrained`` carries them, and the optimizers
read them from there.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn


class MetaMLP(nn.Module, PyTorchModelHubMixin, license="apache-2.0", tags=["learned-optimizer", "pylo"]):
    """``input -> [hidden]*(1 + hidden_layers) -> 2`` MLP with ReLU between layers.

    Example:
        >>> net = MetaMLP(39, 32, 1)
        >>> net(torch.zeros(5, 39)).shape
        torch.Size([5, 2])
    """

    def __init__(self, input_size: int = 39, hidden_size: int = 32, hidden_layers: int = 1,
                 momentum_decays: Optional[Sequence[float]] = None,
                 rms_decays: Optional[Sequence[float]] = None,
                 adafactor_decays: Optional[Sequence[float]] = None):
        super().__init__()
        if min(input_size, hidden_size) < 1 or hidden_layers < 0:
            raise ValueError(f"invalid MetaMLP geometry ({input_size}, {hidden_size}, {hidden_layers})")
        self.input_size, self.hidden_size, self.hidden_layers = input_size, hidden_size, hidden_layers
        self.momentum_decays = None if momentum_decays is None else [float(x) for x in momentum_decays]
        self.rms_decays = None if rms_decays is None else [float(x) for x in rms_decays]
        self.adafactor_decays = None if adafactor_decays is None else [float(x) for x in adafactor_decays]
        layers = [("input", nn.Linear(input_size, hidden_size)), ("relu_input", nn.ReLU())]
        for i in range(hidden_layers):
            layers += [(f"linear_{i}", nn.Linear(hidden_size, hidden_size)), (f"relu_{i}", nn.ReLU())]
        layers.append(("output", nn.Linear(hidden_size, 2)))
        self.network = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def learned_decay_offsets(self):
        """``(momentum, rms, adafactor)`` offsets stored with the weights, or None when absent."""
        if self.momentum_decays is None:
            return None
        return self.momentum_decays, self.rms_decays, self.adafactor_decays
