"""pylo: learned optimizers for PyTorch, verified step for step against their JAX originals.

>>> from pylo.optim import AdafacLO, MuLO
"""

from pylo.models import CELO2MLP, MetaMLP
from pylo.optim import *  # noqa: F401,F403
from pylo.optim import __all__ as _optim_all

__version__ = "0.1.0"
__all__ = ["CELO2MLP", "MetaMLP", *_optim_all]
