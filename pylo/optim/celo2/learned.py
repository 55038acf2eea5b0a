"""The learned path as the naive and foreach engines compute it: the readable reference.

Per tensor (work layout, float32): momentum / RMS / Adafactor accumulators with fixed decays, the
feature groups of :data:`pylo.spec.features.HYPER_GROUPS` (14 for rank >= 2, 9 below), each
second-moment normalised over the tensor's *last two* axes, the split-input MLP,
``d * exp(mag * exp_mult)``, Newton-Schulz over the last two axes (per spatial tap of a conv
kernel), the output normaliser and ``rmsmult``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pylo.core import accumulators as acc
from pylo.core import reduce
from pylo.core.clipping import clamp_elementwise
from pylo.core.features import hyper_feature_groups, second_moment_normalize
from pylo.core.layout import to_work
from pylo.core.orthogonalize import newton_schulz
from pylo.core.reduce import Split
from pylo.optim.celo2.constants import NORMALIZER_EPS, PARAM_SCALE_EPS, RMS_EPS
from pylo.optim.celo2.settings import LearnedStep


def work_tensors(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], kernel_layout: str,
                 grad_clip_val: Optional[float]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """float32 work-layout parameters and the (clamped) work-layout gradients."""
    pws = [to_work(p, kernel_layout).to(torch.float32) for p in params]
    gws = [to_work(g, kernel_layout) for g in grads]
    if grad_clip_val is not None:
        gws = clamp_elementwise(gws, grad_clip_val)
    return pws, gws


def accumulate(gws: List[torch.Tensor], states: List[Dict], decays: Sequence[torch.Tensor],
               foreach: bool, splits: Optional[Sequence[Optional[Split]]] = None) -> List[torch.Tensor]:
    """Update every tensor's accumulators in place (and count its step); return the ``fac_g``s.
    ``splits``: per tensor, the :class:`~pylo.core.reduce.Split` of one rank's part of a sharded one."""
    mom_d, rms_d, fac_d = decays
    splits = splits or [None] * len(gws)
    if foreach:
        acc.update_momentum_foreach([s["mom"] for s in states], gws, mom_d)
        acc.update_rms_foreach([s["rms"] for s in states], gws, rms_d)
        fac_gs = [acc.update_factored(s["fac_row"], s["fac_col"], s["fac_diag"], g, fac_d, split)
                  for g, s, split in zip(gws, states, splits)]
        if states:
            torch._foreach_add_([s["step"] for s in states], 1)
        return fac_gs
    fac_gs = []
    for g, s, split in zip(gws, states, splits):
        fac_gs.append(acc.AccumulatorSet.update(s, g, mom_d, rms_d, fac_d, split))
        s["step"] += 1
    return fac_gs


def norm_axes(pw: torch.Tensor) -> List[int]:
    """Upstream normalises over ``list(range(ndim))[-2:]``: the last two axes (one for 1-D)."""
    return list(range(pw.dim()))[-2:]


def learned_inputs(pw: torch.Tensor, gw: torch.Tensor, state: Dict, fac_g: torch.Tensor,
                   split: Optional[Split] = None) -> List[torch.Tensor]:
    """The normalised feature groups of one tensor: 14 for rank >= 2, 9 below."""
    groups = hyper_feature_groups(pw, gw, state["mom"], state["rms"], fac_g, state["fac_row"], state["fac_col"],
                                  state["fac_diag"], rms_eps=RMS_EPS, diag_groups=False, split=split)
    axes = norm_axes(pw)
    return [second_moment_normalize(x, axes, NORMALIZER_EPS, split) for x in groups]


def step_from_output(out: torch.Tensor, pw: torch.Tensor, cfg: LearnedStep, split: Optional[Split] = None
                     ) -> torch.Tensor:
    """MLP output ``(S..., >=2)`` -> the step of one tensor (before lr and weight decay).

    Of one rank's part of a sharded matrix (``split`` one of its last two axes), Newton-Schulz and the
    output normaliser run on the whole step, gathered once; each rank keeps its part.
    """
    direction, magnitude = out[..., 0], out[..., 1]
    mag = torch.exp(magnitude * cfg.exp_mult)
    if cfg.param_scale_mult:
        step = direction * (torch.sqrt(reduce.mean_square(pw, split) + PARAM_SCALE_EPS) * mag)
    else:
        step = direction * mag
    axes = norm_axes(pw)
    orthogonal = cfg.orthogonalize and step.dim() >= 2
    if orthogonal and split is not None and split.dim in axes:
        whole = newton_schulz(reduce.gather_split(step, split), cfg.ns_coeffs, cfg.ns_iters, cfg.ns_eps)
        return reduce.local_part(second_moment_normalize(whole, axes, NORMALIZER_EPS) * cfg.rmsmult, split)
    if orthogonal:
        step = newton_schulz(step, cfg.ns_coeffs, cfg.ns_iters, cfg.ns_eps)
    return second_moment_normalize(step, axes, NORMALIZER_EPS, split) * cfg.rmsmult


def learned_steps(pws: List[torch.Tensor], gws: List[torch.Tensor], states: List[Dict],
                  fac_gs: List[torch.Tensor], network: torch.nn.Module, cfg: LearnedStep,
                  foreach: bool, splits: Optional[Sequence[Optional[Split]]] = None) -> List[torch.Tensor]:
    """The CELO2 step of every tensor. ``foreach`` runs the MLP once per group count over all tensors
    (tensors with a split, one rank's part of a sharded parameter: naive only)."""
    if not foreach:
        splits = splits or [None] * len(pws)
        return [step_from_output(network(learned_inputs(pw, gw, s, fg, sp)), pw, cfg, sp)
                for pw, gw, s, fg, sp in zip(pws, gws, states, fac_gs, splits)]
    inputs = [learned_inputs(pw, gw, s, fg) for pw, gw, s, fg in zip(pws, gws, states, fac_gs)]
    outs: List[Optional[torch.Tensor]] = [None] * len(pws)
    for n_groups in sorted({len(x) for x in inputs}):
        idx = [i for i, x in enumerate(inputs) if len(x) == n_groups]
        flat = [torch.cat([inputs[i][k].reshape(-1, inputs[i][k].shape[-1]) for i in idx]) for k in range(n_groups)]
        rows = network(flat).split([pws[i].numel() for i in idx])
        for i, r in zip(idx, rows):
            outs[i] = r.reshape(tuple(pws[i].shape) + (r.shape[-1],))
    return [step_from_output(o, pw, cfg) for o, pw in zip(outs, pws)]


def decoupled(step: torch.Tensor, pw: torch.Tensor, lr: float, weight_decay: float,
              skip_zero_decay: bool = True) -> torch.Tensor:
    """``lr * (step + weight_decay * p)`` (a zero decay skipped when ``skip_zero_decay``)."""
    if weight_decay or not skip_zero_decay:
        step = step + weight_decay * pw
    return step * lr
