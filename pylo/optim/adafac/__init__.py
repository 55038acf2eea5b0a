"""The AdafacLO family: AdafacLO, MuLO and ELO (upstream ``AdafacMLPLOpt``, its μLO and ELO variants).

Modules, bottom to top (imports point one way):

* ``constants``: eps values, the μLO decay offsets, the feature counts;
* ``state``: per-parameter state, created by the optimizer classes;
* ``network``: checkpoint -> :class:`~pylo.models.MetaMLP`; ``features``: the 39 MLP inputs;
* ``engine`` (shared settings and step), then one engine per backend: ``naive``, ``foreach``,
  ``fused``, ``triton`` (host side of the ``kernels``);
* ``functional``: :func:`~pylo.optim.adafac.functional.adafaclo`, dispatching through ``ENGINES``;
* ``optimizer`` (what the classes share), then ``adafaclo``, ``elo``, ``mulo``: the public classes.
"""

from pylo.optim.adafac.adafaclo import AdafacLO, AdafacLO_naive
from pylo.optim.adafac.elo import ELO, ELO_naive
from pylo.optim.adafac.mulo import MuLO, MuLO_naive

__all__ = ["AdafacLO", "AdafacLO_naive", "ELO", "ELO_naive", "MuLO", "MuLO_naive"]
