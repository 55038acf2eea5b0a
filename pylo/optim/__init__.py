"""PyTorch learned optimizers with the published PyLO ``pylo.optim`` API.

``X_naive`` is the plain PyTorch implementation; ``X`` is the recommended alias on the fastest
backend. One package per family (``pylo.optim.adafac``: AdafacLO, MuLO, ELO; ``pylo.optim.hyperv2``:
VeLO, Celo; ``pylo.optim.celo2``: CELO2, ELO-CELO2); the names are listed once, in
:data:`pylo.spec.OPTIMIZERS`, and imported on first use.

>>> from pylo.optim import VeLO   # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from pylo.spec import class_module, optimizer_class_names

__all__ = sorted(optimizer_class_names())


def __getattr__(name: str):
    if name in __all__:
        value = getattr(importlib.import_module(class_module(name)), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pylo.optim' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
