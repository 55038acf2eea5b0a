"""What every CELO2-family engine shares: its settings, and the split of one step into the learned
path (:meth:`Engine.prepare`, :meth:`Engine.finish`) and the AdamW-routed tensors."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pylo.optim.backend import Engine
from pylo.optim.celo2.settings import Settings

#: parameters, gradients and states of some tensors
Tensors = Tuple[List[torch.Tensor], List[torch.Tensor], List[Dict]]


class Celo2Engine(Engine):
    """One backend of the CELO2 family for one param group on one device and one step.

    :meth:`prepare` takes the learned path's tensors (state already created by the optimizer class)
    and updates their accumulators; :meth:`finish` computes their features, runs the MLP and
    Newton-Schulz and updates them, then takes the AdamW-routed tensors (``routed``) through
    :meth:`update_routed`.
    """

    def __init__(self, settings: Settings, network: torch.nn.Module, decays: Sequence[torch.Tensor],
                 workspaces: Optional[Dict] = None, splits: Optional[Dict[int, object]] = None):
        self.settings = settings
        self.network = network
        self.decays = tuple(decays)
        #: buffers an engine keeps between steps (the optimizer's ``_workspaces``)
        self.workspaces = {} if workspaces is None else workspaces
        #: ``id(tensor) -> Split`` of the tensors that are one rank's part of a sharded parameter (naive, fused)
        self.splits = splits or {}

    def splits_of(self, tensors: Sequence[torch.Tensor]) -> List:
        """The :class:`~pylo.core.reduce.Split` (or None) of each of ``tensors``."""
        return [self.splits.get(id(t)) for t in tensors]

    def finish(self, prepared, routed: Optional[Tensors] = None) -> None:
        if prepared is not None:
            self.update_learned(prepared)
        if routed is not None and routed[0]:
            self.update_routed(*routed)

    def update_learned(self, prepared) -> None:
        """The learned path after :meth:`prepare`: features, MLP, Newton-Schulz, the parameter update."""
        raise NotImplementedError

    def update_routed(self, params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict]) -> None:
        """The AdamW path (``settings.adamw``)."""
        raise NotImplementedError
