"""ELO-CELO2: scaling_l2o's ``ELO_Celo2LOpt`` at inference (``meta_train=False``).

Reference: ``xiaol827/ELO: src/learned_optimizers/elo_celo2.py``; our JAX twin
is ``pylo.reference_jax.elo_celo2``. It differs from CELO2 (``pylo.optim.celo2``) in:

* gradients: optional global-norm clipping, then ``nan_to_num``; upstream has
  no +-1000 clamp (``grad_clip_val``, kept from the published signature, is
  inert under the default ``clip_grad=True``; ``None`` removes it);
* one set of accumulators for every parameter; AdamW-routed parameters (0-/1-D,
  ``embed`` names, ``is_embedding`` groups) step with
  ``m[..., 0] / (1 - b1^t)`` over ``sqrt(rms[..., -1] / (1 - b2^t)) + 1e-8``,
  ``b1``/``b2`` the first momentum and last RMS decays and ``t`` the
  parameter's own step count;
* ``p <- p - lr * (step + weight_decay * p)`` with the decay term always
  added, ``adam_lr_mult * lr`` and ``adam_weight_decay`` on the AdamW path.

Upstream evaluates its schedule at the 1-based iteration; torch's ``lr`` is
that value (a constant upstream schedule is the same optimizer).
"""

from __future__ import annotations

from typing import Optional

import torch

from pylo.core import adam
from pylo.core.chunked import DEFAULT_CHUNK
from pylo.core.clipping import clamp_elementwise
from pylo.core.layout import subtract_update, to_work
from pylo.core.orthogonalize import NS_COEFFS
from pylo.models.celo2_mlp import CELO2MLP
from pylo.models.loading import NetworkSpec
from pylo.optim.celo2 import (Celo2Family, LearnedStep, _build_celo2_mlp, _fast_backend, accumulate, decoupled,
                              float32_product, init_accumulators, learned_steps)

ADAM_EPS = 1e-8

ELO_CELO2_SPEC = NetworkSpec(name="ELO-CELO2 CELO2MLP", module_type=CELO2MLP, optimizers=("elo_celo2",),
                             build=_build_celo2_mlp)


def elo_celo2(params, grads, states, adamw_mask, *, network, decays, betas, cfg: LearnedStep, lr: float,
              weight_decay: float, adam_lr: float, adam_weight_decay: float, grad_clip_val: Optional[float],
              kernel_layout: str, foreach: bool) -> None:
    """Functional ELO-CELO2 update of one group's parameters on one device (gradients already sanitised).

    ``adamw_mask[i]`` routes parameter ``i`` to the shared-accumulator AdamW,
    whose betas are ``betas`` (the first momentum and last RMS decays);
    ``adam_lr`` must already be rounded to float32. ``foreach`` batches the
    accumulator updates and the MLP; both paths compute the same update.
    """
    if not params:
        return
    pws = [to_work(p, kernel_layout).to(torch.float32) for p in params]
    gws = [to_work(g, kernel_layout) for g in grads]
    if grad_clip_val is not None:
        gws = clamp_elementwise(gws, grad_clip_val)
    for s, pw in zip(states, pws):
        init_accumulators(s, pw, decays)
    b1, b2 = betas
    if foreach:
        fac_gs = accumulate(gws, states, decays, True)
        learned = [i for i, a in enumerate(adamw_mask) if not a]
        steps = learned_steps([pws[i] for i in learned], [gws[i] for i in learned], [states[i] for i in learned],
                              [fac_gs[i] for i in learned], network, cfg, True)
        deltas = dict(zip(learned, (decoupled(s, pws[i], lr, weight_decay, False) for i, s in zip(learned, steps))))
        routed = [i for i, a in enumerate(adamw_mask) if a]
        if routed:
            stacked = torch.stack([states[i]["step"] for i in routed])
            directions = adam.adam_directions_foreach(
                [states[i]["mom"][..., 0] for i in routed], [states[i]["rms"][..., -1] for i in routed],
                adam.bias_correction(b1, stacked).unbind(), adam.bias_correction(b2, stacked).unbind(), ADAM_EPS)
            for i, d in zip(routed, directions):
                deltas[i] = decoupled(d, pws[i], adam_lr, adam_weight_decay, False)
        for i, p in enumerate(params):
            subtract_update(p, deltas[i], kernel_layout)
        return
    for p, pw, gw, s, routed in zip(params, pws, gws, states, adamw_mask):
        fac_g = accumulate([gw], [s], decays, False)
        if routed:
            d = adam.adam_direction(s["mom"][..., 0], s["rms"][..., -1], adam.bias_correction(b1, s["step"]),
                                    adam.bias_correction(b2, s["step"]), ADAM_EPS)
            delta = decoupled(d, pw, adam_lr, adam_weight_decay, False)
        else:
            step = learned_steps([pw], [gw], [s], fac_g, network, cfg, False)[0]
            delta = decoupled(step, pw, lr, weight_decay, False)
        subtract_update(p, delta, kernel_layout)


class ELO_CELO2_naive(Celo2Family):
    """ELO-CELO2 learned optimizer (pure PyTorch): the CELO2 network with shared-accumulator AdamW.

    Args:
        params: parameters, ``model.named_parameters()`` (names containing
            ``embed`` go to AdamW), or param groups (``is_embedding=True``).
        lr: learning rate (upstream's scheduled lr; drive it with a torch scheduler).
        weight_decay: decoupled, ``p -= lr * weight_decay * p`` (default 0.1 as published).
        clip_grad, clip_norm: optax ``clip_by_global_norm`` over all groups (on by default).
        adam_lr_mult, adam_weight_decay: the AdamW path (``None``: ``weight_decay``);
            upstream's recommended ``adam_lr_mult`` for language models is 20.
        use_adamw_for_1d: route 0-/1-D and embedding parameters to AdamW.
        orthogonalize, ff_hidden_size, ff_hidden_layers, initial_*_decays,
        exp_mult, rmsmult, param_scale_mult, ns_coeffs, ns_iters, ns_eps: as CELO2.
        grad_clip_val: elementwise clamp of every gradient before the
            accumulators; not in upstream ELO-CELO2 (inert after the default
            global-norm clipping to 1.0). ``None`` disables it.
        hf_key, checkpoint_path, network: the meta-network (network > checkpoint_path > hub).
        foreach, backend, chunk_size, kernel_layout: as CELO2.
        nonfinite_grads: ``"raise"`` (default) or ``"upstream"`` (``nan_to_num``).

    Example:
        >>> opt = ELO_CELO2_naive(model.named_parameters(), checkpoint_path="elo_celo2")  # doctest: +SKIP
    """

    display_name = "ELO-CELO2"
    network_spec = ELO_CELO2_SPEC
    upstream_nan_to_num = True

    def __init__(self, params, lr=0.001, weight_decay=0.1, clip_grad=True, clip_norm=1.0, adam_lr_mult=1.0,
                 adam_weight_decay=None, use_adamw_for_1d=True, orthogonalize=True, ff_hidden_size=8,
                 ff_hidden_layers=2, initial_momentum_decays=(0.9, 0.99, 0.999), initial_rms_decays=(0.95,),
                 initial_adafactor_decays=(0.9, 0.99, 0.999), exp_mult=0.0, rmsmult=1.0, param_scale_mult=False,
                 ns_coeffs=NS_COEFFS, ns_iters=5, ns_eps=1e-08, grad_clip_val=1000.0,
                 hf_key: Optional[str] = "DiamondXL/elo-celo2", checkpoint_path=None,
                 network: Optional[CELO2MLP] = None, *, foreach: Optional[bool] = None, kernel_layout: str = "torch",
                 nonfinite_grads: str = "raise", backend: Optional[str] = None, chunk_size: int = DEFAULT_CHUNK):
        defaults = dict(lr=lr, weight_decay=weight_decay, adam_lr_mult=adam_lr_mult,
                        adam_weight_decay=adam_weight_decay, use_adamw_for_1d=bool(use_adamw_for_1d),
                        orthogonalize=bool(orthogonalize), initial_momentum_decays=initial_momentum_decays,
                        initial_rms_decays=initial_rms_decays, initial_adafactor_decays=initial_adafactor_decays,
                        exp_mult=exp_mult, rmsmult=rmsmult, param_scale_mult=bool(param_scale_mult),
                        ns_coeffs=tuple(ns_coeffs), ns_iters=ns_iters, ns_eps=ns_eps, grad_clip_val=grad_clip_val,
                        is_embedding=False, kernel_layout=kernel_layout, foreach=foreach, backend=backend,
                        chunk_size=chunk_size)
        self._setup(params, defaults, clip_grad=clip_grad, clip_norm=clip_norm, ff_hidden_size=ff_hidden_size,
                    ff_hidden_layers=ff_hidden_layers, hf_key=hf_key, checkpoint_path=checkpoint_path,
                    network=network, nonfinite_grads=nonfinite_grads)

    def _update_reference(self, group, device, learned, routed, foreach: bool) -> None:
        items = learned + routed
        params, grads = [p for p, _ in items], [g for _, g in items]
        elo_celo2(params, grads, [self.state[p] for p in params], [False] * len(learned) + [True] * len(routed),
                  network=self.network_on(device), decays=self._decays.of_group(group, device),
                  betas=(group["initial_momentum_decays"][0], group["initial_rms_decays"][-1]),
                  cfg=LearnedStep.of(group), lr=group["lr"], weight_decay=group["weight_decay"],
                  adam_lr=float32_product(group["adam_lr_mult"], group["lr"]),
                  adam_weight_decay=self.adam_weight_decay(group), grad_clip_val=group["grad_clip_val"],
                  kernel_layout=group["kernel_layout"], foreach=foreach)

    def _update_fast(self, group, device, learned, routed, backend: str) -> None:
        fast = _fast_backend(backend)
        decays = self._decays.of_group(group, device)
        layout = group["kernel_layout"]
        for p, _ in learned + routed:
            init_accumulators(self.state[p], to_work(p, layout), decays)
        if learned:
            params, grads = (list(x) for x in zip(*learned))
            fast.learned_update(params, grads, [self.state[p] for p in params], network=self.network_on(device),
                                decays=decays, cfg=LearnedStep.of(group), lr=group["lr"],
                                weight_decay=group["weight_decay"], grad_clip_val=group["grad_clip_val"],
                                kernel_layout=layout, skip_zero_decay=False, chunk=group["chunk_size"],
                                workspaces=self._workspaces)
        if routed:
            params, grads = (list(x) for x in zip(*routed))
            fast.shared_adamw_update(params, grads, [self.state[p] for p in params], decays=decays,
                                     betas=(group["initial_momentum_decays"][0], group["initial_rms_decays"][-1]),
                                     lr=float32_product(group["adam_lr_mult"], group["lr"]),
                                     weight_decay=self.adam_weight_decay(group), grad_clip_val=group["grad_clip_val"],
                                     kernel_layout=layout, eps=ADAM_EPS, chunk=group["chunk_size"])


class ELO_CELO2(ELO_CELO2_naive):
    """ELO-CELO2 on its fastest backend (``backend="auto"``): the recommended entry point.

    Same arguments and results as :class:`ELO_CELO2_naive` (within float32 round-off); see there.
    """

    def __init__(self, params, *args, backend: Optional[str] = "auto", **kwargs):
        super().__init__(params, *args, backend=backend, **kwargs)
