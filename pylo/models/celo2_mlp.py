"""CELO2MLP: the per-element MLP of CELO2 and ELO-CELO2 (upstream ``ff_mod_stack``).

The first layer is split by feature group: group ``i`` (width ``d_i``) owns
``w0.<i>`` of shape ``(d_i, hidden)`` and the pre-activation is
``sum_i group_i @ w0.<i> + b0`` (Haiku ``w0__i``; weights stay ``(in, out)``
and multiply as ``x @ w``). Dense layers ``dense_w.<j>`` / ``dense_b.<j>`` are
upstream's ``w<j+1>`` / ``b<j+1>``. State-dict keys and constructor arguments
are those of the published PyLO ``CELO2MLP`` (hub repos ``DiamondXL/celo2``,
``DiamondXL/elo-celo2``), so those repositories load unchanged.

1-D tensors give CELO2 only the first 9 groups; the remaining blocks of
``w0`` are then unused, as upstream.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from pylo.core.features import HYPER_GROUP_WIDTHS
from pylo.core.mlp import split_input_mlp

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


class CELO2MLP(nn.Module, PyTorchModelHubMixin, license="apache-2.0", tags=["learned-optimizer", "pylo"]):
    """Split-input MLP ``[hidden] * hidden_layers + [output_size]`` (upstream ``ff_hidden_layers``).

    Example:
        >>> net = CELO2MLP(hidden_size=8, hidden_layers=2)
        >>> groups = [torch.zeros(5, d) for d in net.feature_dims]
        >>> net(groups).shape
        torch.Size([5, 3])
    """

    def __init__(self, feature_dims: Sequence[int] = HYPER_GROUP_WIDTHS, hidden_size: int = 8,
                 hidden_layers: int = 2, output_size: int = 3, activation: str = "relu"):
        super().__init__()
        feature_dims = tuple(int(d) for d in feature_dims)
        if not feature_dims or min(feature_dims) < 1 or hidden_size < 1 or hidden_layers < 1 or output_size < 2:
            raise ValueError(f"invalid CELO2MLP geometry: feature_dims={feature_dims}, hidden_size={hidden_size}, "
                             f"hidden_layers={hidden_layers}, output_size={output_size}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.feature_dims = feature_dims
        self.hidden_size, self.hidden_layers, self.output_size = hidden_size, hidden_layers, output_size
        self.activation = activation
        self.w0 = nn.ParameterList([nn.Parameter(torch.empty(d, hidden_size)) for d in feature_dims])
        self.b0 = nn.Parameter(torch.zeros(hidden_size))
        sizes = [hidden_size] * hidden_layers + [output_size]
        self.dense_w = nn.ParameterList([nn.Parameter(torch.empty(a, b)) for a, b in zip(sizes[:-1], sizes[1:])])
        self.dense_b = nn.ParameterList([nn.Parameter(torch.zeros(b)) for b in sizes[1:]])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Haiku's init: truncated normal (+-2 sigma), sigma = 1/sqrt(fan_in); zero biases."""
        fan_in = sum(self.feature_dims)
        for w in self.w0:
            nn.init.trunc_normal_(w, std=fan_in ** -0.5, a=-2 * fan_in ** -0.5, b=2 * fan_in ** -0.5)
        for w in self.dense_w:
            std = w.shape[0] ** -0.5
            nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)

    def flops_per_element(self) -> int:
        """Multiply-adds x 2 per element of a factored tensor (all feature groups)."""
        return 2 * (sum(self.feature_dims) * self.hidden_size + sum(w.numel() for w in self.dense_w))

    def forward(self, groups: Sequence[torch.Tensor]) -> torch.Tensor:
        """``groups[i]`` is ``(..., feature_dims[i])``; fewer groups than blocks use the leading blocks."""
        if len(groups) > len(self.w0):
            raise ValueError(f"{len(groups)} feature groups for {len(self.w0)} first-layer blocks")
        return split_input_mlp(groups, list(self.w0), self.b0, list(self.dense_w), list(self.dense_b),
                               ACTIVATIONS[self.activation])


#: the constructor arguments a checkpoint's ``config.json`` may give
CONFIG_KEYS = ("feature_dims", "hidden_size", "hidden_layers", "output_size", "activation")


def build_celo2_mlp(config: Dict) -> CELO2MLP:
    """A CELO2MLP from a checkpoint config (other keys ignored): the ``build`` of CELO2's and ELO-CELO2's
    :class:`pylo.models.loading.NetworkSpec`."""
    return CELO2MLP(**{k: config[k] for k in CONFIG_KEYS if k in config})
