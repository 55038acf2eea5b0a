"""PyTorch learned optimizers with the published PyLO ``pylo.optim`` API.

``X_naive`` is the plain PyTorch implementation; ``X`` is the default alias.
"""

from pylo.optim.adafaclo import AdafacLO, AdafacLO_naive
from pylo.optim.celo import Celo, Celo_naive
from pylo.optim.mulo import MuLO, MuLO_naive
from pylo.optim.velo import VeLO, VeLO_naive

__all__ = ["AdafacLO", "AdafacLO_naive", "Celo", "Celo_naive", "MuLO", "MuLO_naive", "VeLO", "VeLO_naive"]
