"""The HyperV2 family: VeLO and Celo.

HyperV2 is upstream's name (``learned_optimization``'s ``hyper_v2.py``) for the architecture VeLO
introduced and Celo reuses: a per-tensor LSTM over whole-tensor statistics that mixes a bank of
per-element MLPs. Modules, bottom to top (imports point one way):

* :mod:`.constants`, :mod:`.loss_buffer`, :mod:`.state`: eps and clip values, the loss history,
  state initialisation;
* :mod:`.controller`: the LSTM's inputs (VeLO's 30, Celo's 18) and how its outputs are read;
  :mod:`.settings`: what an engine gets per group; :mod:`.channels`: the fused channel order
  and the normalisers folded into the first layer;
* one engine per backend, same interface (:class:`pylo.optim.backend.Engine`): :mod:`.naive`,
  :mod:`.foreach`, :mod:`.fused` and :mod:`.triton` (sharing :mod:`.two_pass`; its Triton
  kernels are :mod:`.kernels`);
* :mod:`.functional`: one update of all tensors through the engine table;
* :mod:`.prefab`, :mod:`.optimizer`: loss handling, prefab wrappers and the shared class;
  :mod:`.velo`, :mod:`.celo`: the optimizers.
"""

from pylo.optim.hyperv2.celo import Celo, Celo_naive
from pylo.optim.hyperv2.velo import VeLO, VeLO_naive

__all__ = ["Celo", "Celo_naive", "VeLO", "VeLO_naive"]
