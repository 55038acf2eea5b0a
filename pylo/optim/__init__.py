"""PyTorch learned optimizers with the published PyLO ``pylo.optim`` API.

``X_naive`` is the plain PyTorch implementation; ``X`` is the default alias.
"""

from pylo.optim.adafaclo import AdafacLO, AdafacLO_naive
from pylo.optim.celo import Celo, Celo_naive
from pylo.optim.celo2 import CELO2, CELO2_naive
from pylo.optim.elo import ELO, ELO_naive
from pylo.optim.elo_celo2 import ELO_CELO2, ELO_CELO2_naive
from pylo.optim.mulo import MuLO, MuLO_naive
from pylo.optim.velo import VeLO, VeLO_naive

__all__ = ["AdafacLO", "AdafacLO_naive", "CELO2", "CELO2_naive", "Celo", "Celo_naive", "ELO", "ELO_naive",
           "ELO_CELO2", "ELO_CELO2_naive", "MuLO", "MuLO_naive", "VeLO", "VeLO_naive"]
