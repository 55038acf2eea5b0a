"""What the AdafacLO family's optimizer classes share: backend choice, state creation and the step."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pylo.optim.adafac.functional import ENGINES, adafaclo
from pylo.optim.adafac.state import decay_counts, init_missing
from pylo.optim.backend import TORCH_DEFAULT, backend_options, resolve_backend, shard_backend
from pylo.optim.base import LearnedOptimizer
from pylo.optim.sharded import is_dtensor, local_views
from pylo.spec.shapes import KERNEL_LAYOUTS


class AdafacOptimizer(LearnedOptimizer):
    """Base of :class:`~pylo.optim.AdafacLO_naive` and :class:`~pylo.optim.ELO_naive`.

    Subclasses say how a group's gradients are clipped and which decays and ``step_mult`` it runs with.
    DTensor parameters (FSDP2, HSDP, tensor parallel) are stepped shard-wise (:mod:`pylo.optim.sharded`).
    """

    shard_wise = True

    #: the backend when neither ``backend=`` nor ``foreach=`` is given (``"auto"`` in the recommended classes)
    default_backend: Optional[str] = TORCH_DEFAULT

    def __init__(self, params, defaults: Dict, network: torch.nn.Module, nonfinite_grads: str):
        super().__init__(params, defaults, network, nonfinite_grads)
        self._workspaces: Dict = {}  # the fused engine's reusable buffers, per device

    def _layout_and_backend(self, kernel_layout: str, backend: Optional[str], foreach: Optional[bool],
                            chunk_size: int) -> Dict:
        """``kernel_layout``, ``backend``, ``foreach`` and ``chunk_size`` validated, as param-group defaults."""
        if kernel_layout not in KERNEL_LAYOUTS:
            raise ValueError(f"kernel_layout must be one of {KERNEL_LAYOUTS}, got {kernel_layout!r}")
        return dict(kernel_layout=kernel_layout,
                    **backend_options(backend, foreach, chunk_size, default=self.default_backend))

    def _clip_norm(self) -> Optional[float]:
        """The global norm the gradients are clipped to (None: no clipping)."""
        raise NotImplementedError

    def _decay_tensors(self, group: Dict, device: torch.device) -> Tuple[torch.Tensor, ...]:
        """The group's momentum, RMS and Adafactor decays as float32 tensors on ``device``."""
        raise NotImplementedError

    def _decay_values(self, group: Dict) -> Tuple[List[float], List[float], List[float]]:
        """The same decays as Python floats (the Triton kernels' arguments)."""
        raise NotImplementedError

    def _step_mult(self, group: Dict) -> float:
        raise NotImplementedError

    def _init_group(self, group: Dict, params: Sequence[torch.Tensor]) -> None:
        """Create the state of the group's parameters that have none yet."""
        init_missing(params, [self.state[p] for p in params], decay_counts(group), group["kernel_layout"])

    def _init_state(self, entries) -> None:
        for group, params, _ in entries:
            self._init_group(group, params)

    def _step(self, loss):
        """The AdafacLO-family update; returns the loss (``None`` without one)."""
        for group, params, grads in self._sanitized_entries(self._clip_norm(), True):
            self._init_group(group, params)
            sharded = [i for i, p in enumerate(params) if is_dtensor(p)]
            if sharded:
                self._step_shards(group, [params[i] for i in sharded], [grads[i] for i in sharded])
            whole = [i for i, p in enumerate(params) if not is_dtensor(p)]
            params, grads = [params[i] for i in whole], [grads[i] for i in whole]
            for device, idx in self._by_device(params).items():
                network = self.network_on(device)
                backend = resolve_backend(group["backend"], device, ENGINES["triton"].unsupported(network))
                adafaclo([params[i] for i in idx], [grads[i] for i in idx], [self.state[params[i]] for i in idx],
                         network=network, decays=self._decay_tensors(group, device), lr=group["lr"],
                         exp_mult=group["exp_mult"], step_mult=self._step_mult(group),
                         weight_decay=group["weight_decay"], kernel_layout=group["kernel_layout"], backend=backend,
                         workspaces=self._workspaces, chunk_size=group["chunk_size"],
                         decay_values=self._decay_values(group) if backend == "triton" else None)
        return loss

    def _step_shards(self, group: Dict, params: List[torch.Tensor], grads: List[torch.Tensor]) -> None:
        """DTensor parameters, each rank its own shard, with the statistics over a split axis all-reduced
        (the same sequence of collectives on every rank): the fused engine where the group's backend is
        fused or Triton, else the naive one."""
        local, states = local_views(params, [self.state[p] for p in params])
        device = local[0].device
        network = self.network_on(device)
        chosen = resolve_backend(group["backend"], device, ENGINES["triton"].unsupported(network))
        adafaclo(local, grads, states, network=network, decays=self._decay_tensors(group, device), lr=group["lr"],
                 exp_mult=group["exp_mult"], step_mult=self._step_mult(group), weight_decay=group["weight_decay"],
                 kernel_layout=group["kernel_layout"], backend=shard_backend(chosen), workspaces=self._workspaces,
                 chunk_size=group["chunk_size"], splits=[self._split_for(group, p) for p in params])
