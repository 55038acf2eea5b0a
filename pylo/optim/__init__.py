"""PyTorch learned optimizers with the published PyLO ``pylo.optim`` API.

``X_naive`` is the plain PyTorch implementation; ``X`` is the default alias.
"""

from pylo.optim.adafaclo import AdafacLO, AdafacLO_naive
from pylo.optim.mulo import MuLO, MuLO_naive

__all__ = ["AdafacLO", "AdafacLO_naive", "MuLO", "MuLO_naive"]
