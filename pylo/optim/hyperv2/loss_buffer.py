"""The loss history VeLO and Celo feed their LSTM (upstream ``hyper_v2.BufferLossAccumulators``).

Ten exponential moving averages of the loss, with half-lives spaced
logarithmically from 10 steps to the training horizon. Each update caps the
loss at twice the largest (bias-corrected) average, so one exploding loss
cannot swamp the history. The nine features say, for each average but the
last, how far it sits above its own running minimum relative to the next
longer average: -1 while the loss keeps falling, up to +1 when it rises. They
are zero for the first two updates.

The features are ratios of differences of nearly equal averages, so they
amplify rounding differences about a hundredfold. The state is float32 as
upstream's, and every rounding happens where upstream's compiled code rounds:

* ``means * decays + loss * (1 - decays)`` is one fused multiply-add (XLA
  contracts it to ``fma(means, decays, loss * (1 - decays))``);
* ``decays`` and ``decays ** k`` are the float32 roundings of the exact values
  (XLA's own float32 ``log``/``pow``/``exp`` are within an ulp of them, and
  agree with them for most horizons).

The state is a plain dict (``means``, ``running_min``, ``decays``: float32
``(10,)``; ``iteration``: int) so it goes through ``state_dict`` unchanged.
"""

from __future__ import annotations

import math
from typing import Dict

import torch

from pylo.spec.features import LOSS_BUFFER_SIZE

SIZE = LOSS_BUFFER_SIZE
RUNNING_MIN_INIT = 999999999999.0


def loss_decays(horizon: int, device=None) -> torch.Tensor:
    """``exp(-1 / logspace(1, log10(horizon), 10))``, rounded once to float32."""
    stop = math.log10(float(horizon))
    exponents = [1.0 + (stop - 1.0) * i / (SIZE - 1) for i in range(SIZE - 1)] + [stop]
    exact = torch.tensor([math.exp(-1.0 / 10.0 ** e) for e in exponents], dtype=torch.float64)
    return exact.to(device=device, dtype=torch.float32)


def init(horizon: int, device=None) -> Dict:
    if horizon < 1:
        raise ValueError(f"the loss-buffer horizon must be >= 1, got {horizon}")
    return {"means": torch.zeros(SIZE, dtype=torch.float32, device=device), "iteration": 0,
            "running_min": torch.full((SIZE,), RUNNING_MIN_INIT, dtype=torch.float32, device=device),
            "decays": loss_decays(horizon, device)}


def to(state: Dict, device) -> Dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` rounded once to float32 (the float64 product of two float32 values is exact)."""
    return (a.double() * b.double() + c.double()).float()


def _power(decays: torch.Tensor, k: int) -> torch.Tensor:
    """``decays ** k`` rounded once to float32."""
    return (decays.double() ** k).float()


def update(state: Dict, loss: torch.Tensor) -> Dict:
    """A new state after seeing ``loss`` (a float32 0-d tensor); ``state`` is not modified."""
    decays, it = state["decays"], state["iteration"]
    correction = 1 - _power(decays, it + 1)
    cap = loss if it == 0 else torch.max(state["means"] / correction)
    loss = torch.minimum(torch.abs(cap) * 2, loss)
    means = _fma(state["means"], decays, loss * (1.0 - decays))
    return {"means": means, "iteration": it + 1,
            "running_min": torch.minimum(state["running_min"], means / correction), "decays": decays}


def features(state: Dict) -> torch.Tensor:
    """The nine loss features, float32 in [-1, 1] (zeros while ``iteration <= 2``)."""
    decays, it = state["decays"], state["iteration"]
    debiased = state["means"] / (1 - _power(decays, it))
    running_min = state["running_min"][:-1]
    den = torch.clamp_min(debiased[1:] - running_min, 1e-8)
    feature = torch.clamp((debiased[:-1] - running_min) / den - 1.0, -1.0, 1.0)
    return feature * 0 if it <= 2 else feature
