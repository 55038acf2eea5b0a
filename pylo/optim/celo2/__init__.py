"""The CELO2 family: CELO2 / CELO2-base and ELO-CELO2, a per-element MLP followed by Newton-Schulz
orthogonalisation, with AdamW for 0-/1-D and embedding parameters.

Modules, bottom to top (each imports only those above it in this list):

* :mod:`~pylo.optim.celo2.constants`: epsilons, clamps, default decays;
* :mod:`~pylo.optim.celo2.settings`: one param group's settings as the engines read them;
* :mod:`~pylo.optim.celo2.state`: per-parameter state, created by the optimizer classes;
* :mod:`~pylo.optim.celo2.learned`, :mod:`~pylo.optim.celo2.adamw`: the learned and AdamW paths
  as the naive and foreach engines compute them (the readable reference);
* :mod:`~pylo.optim.celo2.plan`, :mod:`~pylo.optim.celo2.chunked_adamw`: what the fused and
  Triton engines share (feature channel layout, Newton-Schulz and output normaliser, chunked AdamW);
* :mod:`~pylo.optim.celo2.engine` and one engine per backend: :mod:`~pylo.optim.celo2.naive`,
  :mod:`~pylo.optim.celo2.foreach`, :mod:`~pylo.optim.celo2.fused`, :mod:`~pylo.optim.celo2.triton`
  (whose kernels are :mod:`~pylo.optim.celo2.kernels`, imported only when it runs);
* :mod:`~pylo.optim.celo2.functional`: :func:`~pylo.optim.celo2.functional.celo2`, the functional
  entry, dispatching through ``ENGINES``;
* :mod:`~pylo.optim.celo2.base` (:class:`Celo2Base`), then one file per optimizer:
  :mod:`~pylo.optim.celo2.celo2` and :mod:`~pylo.optim.celo2.elo_celo2`.
"""

from pylo.optim.celo2.base import Celo2Base
from pylo.optim.celo2.celo2 import CELO2, CELO2_SPEC, CELO2_naive
from pylo.optim.celo2.elo_celo2 import ELO_CELO2, ELO_CELO2_SPEC, ELO_CELO2_naive

__all__ = ["CELO2", "CELO2_naive", "ELO_CELO2", "ELO_CELO2_naive", "Celo2Base", "CELO2_SPEC", "ELO_CELO2_SPEC"]
