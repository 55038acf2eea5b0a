"""Meta-networks of the learned optimizers (torch modules, hub-compatible)."""

from pylo.models.hyper_network import HyperNetwork, VeLOMLP, VeLORNN
from pylo.models.meta_mlp import MetaMLP

__all__ = ["HyperNetwork", "MetaMLP", "VeLOMLP", "VeLORNN"]
