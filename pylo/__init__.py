"""pylo: learned optimizers for PyTorch, verified step for step against their JAX originals.

>>> from pylo.optim import AdafacLO, MuLO

Importing ``pylo`` loads nothing else: the optimizers (``pylo.optim``) and the meta-networks
(``pylo.models``) are imported on first use (PEP 562), so ``pylo.converters``, ``pylo.spec`` and
``pylo.reference_jax`` stay free of what they do not need.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_MODELS = ("CELO2MLP", "MetaMLP")


def __getattr__(name: str):
    if name in _MODELS:
        return getattr(importlib.import_module("pylo.models"), name)
    from pylo.spec import optimizer_class_names

    if name in optimizer_class_names():
        return getattr(importlib.import_module("pylo.optim"), name)
    raise AttributeError(f"module 'pylo' has no attribute {name!r}")


def __dir__():
    from pylo.spec import optimizer_class_names

    return sorted([*globals(), *_MODELS, *optimizer_class_names()])
