"""The HyperV2 family: VeLO, Celo (interim: re-exports until the package is built)."""

from pylo.optim.celo import Celo, Celo_naive  # noqa: F401
from pylo.optim.velo import VeLO, VeLO_naive  # noqa: F401
