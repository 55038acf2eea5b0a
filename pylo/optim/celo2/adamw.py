"""The AdamW path of 0-/1-D and embedding parameters, as the naive and foreach engines compute it.

* :func:`own_adamw` (CELO2): optax ``adamw`` with the parameter's own moments, bias correction by its
  own step count, no clamp;
* :func:`shared_adamw` (ELO-CELO2): the learned path's accumulators updated (the gradient clamped
  first), then ``m[..., 0] / bc1 / (sqrt(rms[..., -1] / bc2) + eps)``.

Both end in ``p <- p - lr * (d + weight_decay * p)`` (:func:`pylo.optim.celo2.learned.decoupled`).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from pylo.core import adam
from pylo.core.layout import subtract_update
from pylo.optim.celo2.learned import accumulate, decoupled, work_tensors
from pylo.optim.celo2.settings import Settings


def own_adamw(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict], settings: Settings,
              foreach: bool) -> None:
    """CELO2's AdamW (state from :func:`pylo.optim.celo2.state.init_adamw`)."""
    path = settings.adamw
    b1, b2 = path.betas
    mus, nus, steps = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states]
    if foreach:
        adam.update_moments_foreach(mus, nus, grads, b1, b2)
        torch._foreach_add_(steps, 1)
        bc1, bc2 = bias_corrections(steps, b1, b2)
        directions = adam.adam_directions_foreach(mus, nus, bc1, bc2, path.eps)
    else:
        directions = []
        for mu, nu, g, st in zip(mus, nus, grads, steps):
            adam.update_moments(mu, nu, g, b1, b2)
            st += 1
            directions.append(adam.adam_direction(mu, nu, adam.bias_correction(b1, st),
                                                  adam.bias_correction(b2, st), path.eps))
    for p, d in zip(params, directions):
        subtract_update(p, decoupled(d, p.to(torch.float32), path.lr, path.weight_decay, settings.skip_zero_decay),
                        "jax")


def shared_adamw(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict], settings: Settings,
                 decays: Sequence[torch.Tensor], foreach: bool, splits: Optional[Sequence] = None) -> None:
    """ELO-CELO2's AdamW on the shared accumulators (state from :func:`pylo.optim.celo2.state.init_accumulators`)."""
    path = settings.adamw
    b1, b2 = path.betas
    pws, gws = work_tensors(params, grads, settings.kernel_layout, settings.grad_clip_val)
    if foreach:
        accumulate(gws, states, decays, True)
        bc1, bc2 = bias_corrections([s["step"] for s in states], b1, b2)
        directions = adam.adam_directions_foreach([s["mom"][..., 0] for s in states],
                                                  [s["rms"][..., -1] for s in states], bc1, bc2, path.eps)
    else:
        directions = []
        for gw, s, split in zip(gws, states, splits or [None] * len(gws)):
            accumulate([gw], [s], decays, False, [split])
            directions.append(adam.adam_direction(s["mom"][..., 0], s["rms"][..., -1],
                                                  adam.bias_correction(b1, s["step"]),
                                                  adam.bias_correction(b2, s["step"]), path.eps))
    for p, pw, d in zip(params, pws, directions):
        subtract_update(p, decoupled(d, pw, path.lr, path.weight_decay, settings.skip_zero_decay),
                        settings.kernel_layout)


def bias_corrections(steps: List[torch.Tensor], b1: float, b2: float):
    """Each tensor's bias corrections from its own step count (one stacked computation, no host sync)."""
    stacked = torch.stack(steps)
    return adam.bias_correction(b1, stacked).unbind(), adam.bias_correction(b2, stacked).unbind()
