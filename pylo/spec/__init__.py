"""What pylo knows about its optimizers, written once, torch-free and JAX-free.

``pylo.optim``, ``pylo.converters``, ``pylo.reference_jax``, the parity registry and the
optimizer database all read these facts from here:

* :data:`OPTIMIZERS`: every optimizer's name (the ``pylo-convert --optimizer`` and registry
  key), its family and its torch classes;
* :mod:`pylo.spec.shapes`: the factored-dims rule and the work layout;
* :mod:`pylo.spec.features`: feature-group widths and LSTM input counts;
* :mod:`pylo.spec.networks`: the meta-networks' configs and their state-dict keys and shapes.

>>> OPTIMIZERS["velo"].family
'hyperv2'
>>> optimizer_names()[:3]
('adafaclo', 'mulo', 'elo')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

#: the families: optimizers of one family share features, state layout and backends
FAMILIES = ("adafac", "hyperv2", "celo2")


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer: its key, its family, its torch classes and the package that defines them."""

    name: str
    family: str
    classes: Tuple[str, str]  # (fast alias, pure-PyTorch ``_naive`` class)
    network: str  # the meta-network kind (a key of ``pylo.spec.networks.NETWORKS``)
    needs_loss: bool = False

    @property
    def module(self) -> str:
        """The ``pylo.optim`` package that defines the classes."""
        return f"pylo.optim.{self.family}"


_ALL = (
    OptimizerSpec("adafaclo", "adafac", ("AdafacLO", "AdafacLO_naive"), "meta_mlp"),
    OptimizerSpec("mulo", "adafac", ("MuLO", "MuLO_naive"), "meta_mlp"),
    OptimizerSpec("elo", "adafac", ("ELO", "ELO_naive"), "meta_mlp"),
    OptimizerSpec("velo", "hyperv2", ("VeLO", "VeLO_naive"), "hyper_network", needs_loss=True),
    OptimizerSpec("celo", "hyperv2", ("Celo", "Celo_naive"), "hyper_network", needs_loss=True),
    OptimizerSpec("celo2", "celo2", ("CELO2", "CELO2_naive"), "celo2_mlp"),
    OptimizerSpec("elo_celo2", "celo2", ("ELO_CELO2", "ELO_CELO2_naive"), "celo2_mlp"),
)

#: every optimizer by name, in the order pylo lists them
OPTIMIZERS: Dict[str, OptimizerSpec] = {o.name: o for o in _ALL}


def optimizer_names() -> Tuple[str, ...]:
    """Every optimizer's key (``pylo-convert --optimizer``, registries, checkpoint folders)."""
    return tuple(OPTIMIZERS)


def family_members(family: str) -> Tuple[str, ...]:
    """The optimizers of one family."""
    if family not in FAMILIES:
        raise KeyError(f"no family {family!r}; known: {', '.join(FAMILIES)}")
    return tuple(o.name for o in _ALL if o.family == family)


def optimizer_class_names() -> Tuple[str, ...]:
    """Every public optimizer class of ``pylo.optim``."""
    return tuple(c for o in _ALL for c in o.classes)


def class_module(class_name: str) -> str:
    """The package that defines a public optimizer class."""
    for o in _ALL:
        if class_name in o.classes:
            return o.module
    raise KeyError(class_name)
