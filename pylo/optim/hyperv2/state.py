"""The state of the HyperV2 optimizers (VeLO, Celo), created by the optimizer class.

Per parameter, ``optimizer.state[p]``, float32 in the work layout (:mod:`pylo.core.layout`):
``mom``, ``rms``, ``fac_row``, ``fac_col``, ``fac_diag`` (the accumulators of
:class:`pylo.core.accumulators.AccumulatorSet`, decay axis last), the tensor's LSTM state
``lstm_hidden`` and ``lstm_cell``, and ``grad_accum`` while gradients are being averaged.

Optimizer-wide, ``optimizer.state[p]["hyper_v2"]`` (:data:`~.constants.GLOBAL_STATE_KEY`) of the first
parameter ``p`` of the first param group:
``iteration``, ``num_steps`` (the horizon of one update per averaged group of calls),
``micro_step``, ``loss_accum`` and ``loss_buffer`` (:mod:`.loss_buffer`).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import torch

from pylo.core.decays import learned_decays
from pylo.optim.hyperv2 import loss_buffer
from pylo.optim.hyperv2.constants import GLOBAL_STATE_KEY
from pylo.optim.sharded import init_accumulators, local_tensor


def effective_decays(initial: Sequence[float], offsets: Sequence[float]) -> List[float]:
    """The decays to use: the initial ones, or upstream's reparameterisation when offsets are given.

    HyperV2 uses its initial decays as they are; the published API also takes
    learned offsets (all zero by default), applied as ``1 - (1 - d0) * exp(10 * offset)``.
    """
    if len(offsets) != len(initial):
        raise ValueError(f"{len(offsets)} decay offsets given for {len(initial)} initial decays")
    if not any(offsets):
        return [float(x) for x in torch.tensor(list(initial), dtype=torch.float32)]
    return learned_decays(initial, offsets)


def init_param_state(state: Dict, p: torch.Tensor, kernel_layout: str, decay_counts: Sequence[int], rnn) -> None:
    """Zero accumulators in ``p``'s work layout (of a DTensor parameter, this rank's part held as DTensors)
    and the LSTM's learned initial state (plain tensors, the same on every rank)."""
    init_accumulators(state, p, kernel_layout, decay_counts)
    hidden, cell = rnn.lstm_init_state
    device = local_tensor(p).device
    state["lstm_hidden"] = hidden.detach()[0].to(device=device, dtype=torch.float32, copy=True)
    state["lstm_cell"] = cell.detach()[0].to(device=device, dtype=torch.float32, copy=True)


def init_global_state(inner_steps: int, loss_horizon: int) -> Dict:
    """The optimizer-wide entry before the first update."""
    return {"iteration": 0, "num_steps": inner_steps, "micro_step": 0, "loss_accum": None,
            "loss_buffer": loss_buffer.init(loss_horizon)}


def global_entry(state: Mapping) -> Optional[Dict]:
    """The optimizer-wide entry in ``opt.state`` or in a state dict's ``"state"`` (``None`` before the first
    update)."""
    for value in state.values():
        if isinstance(value, Mapping) and GLOBAL_STATE_KEY in value:
            return value[GLOBAL_STATE_KEY]
    return None
