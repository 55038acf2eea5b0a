"""Meta-networks of the learned optimizers (torch modules, hub-compatible)."""

from pylo.models.celo2_mlp import CELO2MLP
from pylo.models.hyper_network import HyperNetwork, VeLOMLP, VeLORNN
from pylo.models.meta_mlp import MetaMLP

__all__ = ["CELO2MLP", "HyperNetwork", "MetaMLP", "VeLOMLP", "VeLORNN"]
