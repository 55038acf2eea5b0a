"""The functional AdafacLO update (``torch.optim.adamw.adamw`` style), dispatching to one engine per backend.

Per tensor and step (``g`` the gradient, all in float32, conv kernels seen in
JAX's HWIO layout, scalars as shape (1,)):

1. momentum, RMS and Adafactor accumulators (``pylo.core.accumulators``);
2. 28 features (``g, p, m, rms, m/sqrt(rms), 1/sqrt(rms), fac_g`` and the
   Adafactor row/column features), second-moment normalised over the
   parameter's axes, plus 11 ``tanh`` features of the iteration: 39 inputs;
3. the MLP gives direction ``d`` and magnitude ``mu``;
   ``step = d * exp(mu * exp_mult) * step_mult``;
4. ``p <- p - lr * (step + weight_decay * p)``.

Gradient clipping and ``nan_to_num`` come before, in the optimizer classes.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from pylo.core.chunked import DEFAULT_CHUNK
from pylo.optim.adafac.foreach import ForeachEngine
from pylo.optim.adafac.fused import FusedEngine
from pylo.optim.adafac.naive import NaiveEngine
from pylo.optim.adafac.triton import TritonEngine
from pylo.optim.backend import check_shard_backend, engine_table

ENGINES = engine_table({"naive": NaiveEngine, "foreach": ForeachEngine, "fused": FusedEngine,
                        "triton": TritonEngine})


def adafaclo(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict[str, torch.Tensor]], *,
             network: torch.nn.Module, decays: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], lr: float,
             exp_mult: float, step_mult: float, weight_decay: float, kernel_layout: str,
             backend: str = "naive", workspaces: Optional[Dict] = None, chunk_size: int = DEFAULT_CHUNK,
             decay_values: Optional[Tuple[List[float], List[float], List[float]]] = None,
             splits: Optional[List] = None) -> None:
    """Functional AdafacLO update of one parameter group on one device (gradients already sanitised).

    ``states`` hold each tensor's state (:func:`pylo.optim.adafac.state.init_state`); ``decays`` are
    the momentum, RMS and Adafactor decays as float32 tensors on the device. The backends
    (:mod:`pylo.optim.backend`) compute the same update within float32 round-off; ``"fused"`` uses
    ``chunk_size`` and the reusable buffers in ``workspaces``, ``"triton"`` needs ``decay_values``,
    the decays as Python floats. ``splits`` (naive and fused backends) marks tensors that are one
    rank's part of a sharded parameter (:class:`pylo.core.reduce.Split`, None for a whole tensor).
    """
    if backend not in ENGINES:
        raise ValueError(f"backend must be one of {tuple(ENGINES)}, got {backend!r}")
    if not params:
        return
    check_shard_backend(backend, splits)
    if not all(states):
        raise ValueError("every parameter needs its AdafacLO state first (pylo.optim.adafac.state.init_state)")
    engine = ENGINES[backend](network=network, decays=decays, lr=lr, exp_mult=exp_mult, step_mult=step_mult,
                              weight_decay=weight_decay, kernel_layout=kernel_layout, chunk_size=chunk_size,
                              workspaces=workspaces, decay_values=decay_values, splits=splits)
    engine.finish(engine.prepare(params, grads, states))
