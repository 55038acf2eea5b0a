"""The functional form of one HyperV2 (VeLO / Celo) update, dispatching to the backend engines.

In the style of ``torch.optim.adamw.adamw``: the optimizer classes (:mod:`.optimizer`) validate
their arguments, create the state and group their tensors into :class:`Part` s (one per param
group, device and backend); :func:`hyperv2` then runs the update of all of them:

1. every part's engine (:data:`ENGINES`) runs its first pass: per tensor the LSTM input from the
   *old* parameters and accumulators, then the accumulator update;
2. one LSTM step over all tensors at once (they meet in a max-pool) gives per-tensor controls,
   a learning-rate multiplier and the next LSTM state;
3. every engine runs its second pass: the controls-weighted MLP, the step and the update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from pylo.optim.backend import engine_table
from pylo.optim.hyperv2.controller import Controller
from pylo.optim.hyperv2.foreach import ForeachEngine
from pylo.optim.hyperv2.fused import FusedEngine
from pylo.optim.hyperv2.naive import NaiveEngine
from pylo.optim.hyperv2.settings import EngineSettings, Prepared
from pylo.optim.hyperv2.triton import TritonEngine

ENGINES = engine_table({"naive": NaiveEngine, "foreach": ForeachEngine, "fused": FusedEngine,
                        "triton": TritonEngine})


@dataclass
class Part:
    """The tensors of one param group on one device, and the backend that updates them.

    ``positions``: each tensor's row in the step's LSTM batch (all parts together cover ``0..n-1``);
    ``grads`` are float32, in the parameters' layout; ``states`` already initialised.
    """

    backend: str
    positions: List[int]
    params: List[torch.Tensor]
    grads: List[torch.Tensor]
    states: List[Dict[str, torch.Tensor]]
    settings: EngineSettings


def hyperv2(parts: Sequence[Part], *, rnn: torch.nn.Module, controller: Controller, device: torch.device) -> None:
    """One HyperV2 update of every tensor of ``parts``.

    ``rnn``: the meta-network's LSTM (:class:`pylo.models.hyper_network.VeLORNN`) on ``device``,
    where it runs; ``controller`` reads its outputs (:mod:`.controller`).
    """
    engines = [ENGINES[part.backend](part.settings) for part in parts]
    prepared = [engine.prepare(part.params, part.grads, part.states) for engine, part in zip(engines, parts)]
    controls, lr_mults = _lstm_step(parts, prepared, rnn, controller, device)
    for engine, part, prep in zip(engines, parts, prepared):
        sel = torch.tensor(part.positions, device=device)
        target = part.settings.device
        engine.finish(prep, controls=controls.index_select(0, sel).to(target),
                      lr_mults=lr_mults.index_select(0, sel).to(target))


def _lstm_step(parts: Sequence[Part], prepared: Sequence[Prepared], rnn, controller: Controller, device
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The LSTM over every tensor: ``(controls (n, P), lr_mults (n,))``; the LSTM states advance in place."""
    n = sum(len(part.positions) for part in parts)
    lstm_in = torch.empty(n, rnn.input_size, device=device)
    states: List[Dict] = [None] * n
    for part, prep in zip(parts, prepared):
        lstm_in.index_copy_(0, torch.tensor(part.positions, device=device), prep.lstm_inputs.to(device))
        for i, state in zip(part.positions, part.states):
            states[i] = state
    hidden = torch.stack([st["lstm_hidden"].to(device) for st in states])
    cell = torch.stack([st["lstm_cell"].to(device) for st in states])
    raw_controls, raw_lr, (next_hidden, next_cell) = rnn(lstm_in, (hidden, cell))
    if controller.advances_state:
        for key, new in (("lstm_hidden", next_hidden), ("lstm_cell", next_cell)):
            if all(st[key].device == device for st in states):
                torch._foreach_copy_([st[key] for st in states], list(new.unbind(0)))
            else:
                for i, st in enumerate(states):
                    st[key].copy_(new[i])
    return controller.controls(raw_controls), controller.lr_mult(raw_lr)
