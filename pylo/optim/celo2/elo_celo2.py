"""ELO-CELO2: scaling_l2o's ``ELO_Celo2LOpt`` at inference (``meta_train=False``).

Reference: ``xiaol827/ELO: src/learned_optimizers/elo_celo2.py``; our JAX twin
is ``pylo.reference_jax.elo_celo2``. It differs from CELO2 (:mod:`pylo.optim.celo2.celo2`) in:

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

from pylo.core.chunked import DEFAULT_CHUNK
from pylo.models.celo2_mlp import CELO2MLP, build_celo2_mlp
from pylo.models.loading import NetworkSpec
from pylo.optim.celo2.base import Celo2Base
from pylo.optim.celo2.constants import (ADAFACTOR_DECAYS, ADAM_EPS, GRAD_CLIP, MOMENTUM_DECAYS, NS_COEFFS, NS_EPS,
                                        NS_ITERS, RMS_DECAYS)
from pylo.optim.celo2.settings import AdamWPath, Settings, float32_product
from pylo.optim.celo2.state import init_accumulators

ELO_CELO2_SPEC = NetworkSpec(name="ELO-CELO2 CELO2MLP", module_type=CELO2MLP, optimizers=("elo_celo2",),
                             build=build_celo2_mlp)


class ELO_CELO2_naive(Celo2Base):
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
                 ff_hidden_layers=2, initial_momentum_decays=MOMENTUM_DECAYS, initial_rms_decays=RMS_DECAYS,
                 initial_adafactor_decays=ADAFACTOR_DECAYS, exp_mult=0.0, rmsmult=1.0, param_scale_mult=False,
                 ns_coeffs=NS_COEFFS, ns_iters=NS_ITERS, ns_eps=NS_EPS, grad_clip_val=GRAD_CLIP,
                 hf_key: Optional[str] = "DiamondXL/elo-celo2", checkpoint_path=None,
                 network: Optional[CELO2MLP] = None, *, foreach: Optional[bool] = None, kernel_layout: str = "torch",
                 nonfinite_grads: str = "raise", backend: Optional[str] = None, chunk_size: int = DEFAULT_CHUNK):
        self._setup(params, locals())

    def _settings(self, group) -> Settings:
        """The AdamW path on the shared accumulators: betas are the first momentum and last RMS decays."""
        adamw = AdamWPath(lr=float32_product(group["adam_lr_mult"], group["lr"]),
                          betas=(group["initial_momentum_decays"][0], group["initial_rms_decays"][-1]),
                          eps=ADAM_EPS, weight_decay=self.adam_weight_decay(group), shared=True)
        return Settings.of(group, adamw, skip_zero_decay=False)

    def _init_group(self, group, params, adamw_mask, device):
        """One set of accumulators for every parameter, whichever path it takes."""
        decays = self._decays.of_group(group, device)
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            init_accumulators(state, p, group["kernel_layout"], decays)
        return states


class ELO_CELO2(ELO_CELO2_naive):
    """ELO-CELO2 on its fastest backend (``backend="auto"``): the recommended entry point.

    Same arguments and results as :class:`ELO_CELO2_naive` (within float32 round-off); see there.
    """

    default_backend = "auto"
