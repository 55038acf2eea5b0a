"""The CELO2 family's functional update, in the style of ``torch.optim.adamw.adamw``.

One call updates one param group's tensors on one device through the engine of ``backend``
(:data:`ENGINES`); the optimizer classes (:mod:`pylo.optim.celo2.base`) call it once per group and
device after clipping the gradients and creating the state (:mod:`pylo.optim.celo2.state`).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from pylo.optim.backend import check_shard_backend, engine_table
from pylo.optim.celo2.foreach import ForeachEngine
from pylo.optim.celo2.fused import FusedEngine
from pylo.optim.celo2.naive import NaiveEngine
from pylo.optim.celo2.settings import Settings
from pylo.optim.celo2.triton import TritonEngine

ENGINES = engine_table({"naive": NaiveEngine, "foreach": ForeachEngine, "fused": FusedEngine, "triton": TritonEngine})


def celo2(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict], adamw_mask: Sequence[bool], *,
          network: torch.nn.Module, decays: Sequence[torch.Tensor], settings: Settings, backend: str = "naive",
          workspaces: Optional[Dict] = None, splits: Optional[Sequence] = None) -> None:
    """One CELO2 / ELO-CELO2 step of ``params`` (one group, one device), in place.

    ``grads`` are float32 and already clipped as the optimizer clips them; ``adamw_mask[i]`` sends
    parameter ``i`` to the AdamW path (``settings.adamw``), the rest take the learned path.
    ``decays`` are the (momentum, RMS, Adafactor) decays as float32 tensors on the device;
    ``workspaces`` keeps an engine's reusable buffers between calls. Every backend computes the
    same update within float32 round-off. ``splits`` (naive and fused backends): per tensor, the
    :class:`~pylo.core.reduce.Split` of one rank's part of a sharded parameter, or None.
    """
    if backend not in ENGINES:
        raise ValueError(f"backend must be one of {tuple(ENGINES)}, got {backend!r}")
    check_shard_backend(backend, splits)
    by_id = {id(p): s for p, s in zip(params, splits or ()) if s is not None}
    engine = ENGINES[backend](settings, network, decays, workspaces, by_id)

    def pick(routed: bool):
        idx = [i for i, r in enumerate(adamw_mask) if bool(r) is routed]
        return [params[i] for i in idx], [grads[i] for i in idx], [states[i] for i in idx]

    learned = pick(False)
    prepared = engine.prepare(*learned) if learned[0] else None
    engine.finish(prepared, routed=pick(True))
