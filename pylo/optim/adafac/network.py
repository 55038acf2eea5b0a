"""The AdafacLO family's meta-network: how a checkpoint becomes a :class:`~pylo.models.MetaMLP`.

AdafacLO and MuLO read the same checkpoints (``"adafaclo"`` / ``"mulo"``); ELO's are its own
(``"elo"``), with the same network.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from pylo.models.loading import NetworkSpec, load_network
from pylo.models.meta_mlp import MetaMLP
from pylo.optim.adafac.constants import NUM_FEATURES

#: the MetaMLP constructor arguments a checkpoint config may state
CONFIG_KEYS = ("input_size", "hidden_size", "hidden_layers", "momentum_decays", "rms_decays", "adafactor_decays")


def build_meta_mlp(config: Dict) -> MetaMLP:
    """A MetaMLP from a checkpoint config (keys it does not state take MetaMLP's defaults)."""
    return MetaMLP(**{k: config[k] for k in CONFIG_KEYS if k in config})


ADAFACLO_NETWORK = NetworkSpec(name="AdafacLO MetaMLP", module_type=MetaMLP, optimizers=("adafaclo", "mulo"),
                               build=build_meta_mlp)
ELO_NETWORK = NetworkSpec(name="ELO MetaMLP", module_type=MetaMLP, optimizers=("elo",), build=build_meta_mlp)


def load_meta_mlp(spec: NetworkSpec, who: str, *, network: Optional[MetaMLP], checkpoint_path,
                  hub_keys: Sequence[str], hidden_size: int, hidden_layers: int,
                  input_size: int = NUM_FEATURES) -> MetaMLP:
    """The network (``network=`` > ``checkpoint_path=`` > hub), checked to take the family's inputs.

    ``input_size``, ``hidden_size`` and ``hidden_layers`` are used where the checkpoint does not state them.
    """
    net, _ = load_network(spec, network=network, checkpoint_path=checkpoint_path, hub_keys=hub_keys,
                          fallback_config=dict(input_size=input_size, hidden_size=hidden_size,
                                               hidden_layers=hidden_layers))
    if net.input_size != NUM_FEATURES:
        raise ValueError(f"{who} builds {NUM_FEATURES} features but the meta-network takes {net.input_size}")
    return net


def linear_layers(network: MetaMLP) -> List[torch.nn.Linear]:
    """The MetaMLP's linear layers in order: input, hidden ones, output (ReLU between them)."""
    return [m for m in network.network if isinstance(m, torch.nn.Linear)]
