"""The AdafacLO family: AdafacLO, MuLO, ELO (interim: re-exports until the package is built)."""

from pylo.optim.adafaclo import AdafacLO, AdafacLO_naive  # noqa: F401
from pylo.optim.elo import ELO, ELO_naive  # noqa: F401
from pylo.optim.mulo import MuLO, MuLO_naive  # noqa: F401
