"""Meta-networks of the learned optimizers (torch modules, hub-compatible)."""

from pylo.models.meta_mlp import MetaMLP

__all__ = ["MetaMLP"]
