"""The AdafacLO optimizer classes: upstream ``AdafacMLPLOpt`` (small_fc_lopt) with μLO's additions.

Reference: ``learned_optimization/learned_optimizers/adafac_mlp_lopt.py`` and
``mu_learned_optimization/src/mup_adafac_mlp_lopt.py``; our JAX twin is
``pylo.reference_jax.adafac_mlp_lopt``.

The update is :func:`pylo.optim.adafac.functional.adafaclo`, after optional global-norm clipping
over *all* groups and ``nan_to_num`` (μLO), with learned decays ``1 - (1 - d0) * exp(10 * theta)``.
``lr`` is the μP per-parameter scale of upstream μLO (``MuLO`` sets it per group);
``weight_decay`` is a pylo addition (upstream has none) and is 0 by default.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from pylo.core import accumulators as acc
from pylo.core.chunked import DEFAULT_CHUNK
from pylo.core.decays import DECAY_KINDS, learned_decays
from pylo.models.meta_mlp import MetaMLP
from pylo.optim.adafac.constants import MULO_ADAFACTOR_OFFSETS, MULO_MOMENTUM_OFFSETS, MULO_RMS_OFFSETS, NUM_FEATURES
from pylo.optim.adafac.network import ADAFACLO_NETWORK, load_meta_mlp
from pylo.optim.adafac.optimizer import AdafacOptimizer
from pylo.optim.base import check_number

DEFAULT_OFFSETS = (MULO_MOMENTUM_OFFSETS, MULO_RMS_OFFSETS, MULO_ADAFACTOR_OFFSETS)


def _offsets(explicit, initials, stored) -> List[List[float]]:
    """The decay offsets: those passed, else those stored with the network, else the μLO defaults."""
    out = [given if (given is not default or stored is None) else kept
           for given, default, kept in zip(explicit, DEFAULT_OFFSETS, stored or (None, None, None))]
    for name, off, init in zip(DECAY_KINDS, out, initials):
        if len(off) != len(init):
            raise ValueError(f"{len(off)} {name} decay offsets for {len(init)} initial {name} decays")
    return [[float(x) for x in off] for off in out]


class AdafacLO_naive(AdafacOptimizer):
    """AdafacLO / μLO learned optimizer (pure PyTorch).

    Args:
        params: parameters, ``named_parameters()``, or param groups.
        momentum_decays, rms_decays, adafactor_decays: learned decay *offsets*
            (upstream theta). The defaults are the released μLO values; when left
            at their defaults, the offsets stored in a loaded checkpoint are used.
        lr: multiplies every step: upstream μLO's per-parameter learning-rate
            scale (1.0 reproduces AdafacMLPLOpt; ``MuLO`` sets it per group).
        exp_mult, step_mult: ``step = d * exp(mu * exp_mult) * step_mult``.
        input_size, hidden_size, hidden_layers: MetaMLP geometry used when the
            checkpoint does not state its own (``hidden_layers`` counts
            hidden-to-hidden layers: upstream ``hidden_layers=2`` is 1 here).
        initial_momentum_decays, initial_rms_decays, initial_adafactor_decays:
            the decays the offsets are relative to.
        max_grad_norm, clip_grad: global-norm clipping over all groups (optax
            ``clip_by_global_norm``) when ``clip_grad=True`` or ``max_grad_norm`` is
            given, to ``max_grad_norm`` (default 1.0). Gradients then go through
            ``nan_to_num`` as in μLO.
        nonfinite_grads: ``"raise"`` (default): a NaN/Inf gradient raises
            ``NonFiniteGradientError`` and nothing changes; ``"upstream"``: μLO's
            ``nan_to_num`` (NaN -> 0, Inf -> largest float32).
        concat_weights, make_separate_weights, split_weights: upstream's
            alternative evaluations of the same network; accepted for API
            compatibility, the result is the same.
        weight_decay: decoupled decay, ``p -= lr * weight_decay * p`` (pylo addition).
        mup_lrs: not used (as upstream); μP scales are per-group ``lr``.
        hf_key: hub repo of the meta-network (``"owner/name[@revision]"``).
        checkpoint_path: a local converted checkpoint (folder or file); wins over ``hf_key``.
        network: a ready :class:`~pylo.models.MetaMLP`; wins over everything.
        foreach: ``True``: ``backend="foreach"``; ``False``: ``"naive"``; ``None`` (default):
            see ``backend``.
        backend: ``"naive"`` (tensor by tensor), ``"foreach"`` (multi-tensor accumulators,
            one MLP call), ``"fused"`` (chunked, bounded memory, fastest on CPU), ``"triton"``
            (GPU kernels), or ``"auto"`` (triton on CUDA when available, else fused; the
            default of :class:`AdafacLO`). ``None`` (default here): ``"foreach"`` on CUDA,
            ``"naive"`` elsewhere (:mod:`pylo.optim.backend`).
        chunk_size: elements per chunk of the fused backend (bounds its transient memory).
        kernel_layout: ``"torch"`` (default) treats 4-D tensors as OIHW conv
            kernels and computes in JAX's HWIO layout, like upstream on the same
            kernel; ``"jax"`` takes 4-D tensors as they are.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = AdafacLO_naive(model.parameters(), checkpoint_path="mulo_folder")  # doctest: +SKIP
        >>> model(torch.randn(8, 4)).square().mean().backward(); opt.step(); opt.zero_grad()  # doctest: +SKIP
    """

    display_name = "AdafacLO"

    def __init__(self, params, momentum_decays=MULO_MOMENTUM_OFFSETS, rms_decays=MULO_RMS_OFFSETS,
                 adafactor_decays=MULO_ADAFACTOR_OFFSETS, lr=1.0, exp_mult=0.001, step_mult=0.01,
                 input_size=NUM_FEATURES, hidden_size=32, hidden_layers=1, initial_momentum_decays=(0.9, 0.99, 0.999),
                 initial_rms_decays=(0.999,), initial_adafactor_decays=(0.9, 0.99, 0.999), max_grad_norm=None,
                 concat_weights=True, make_separate_weights=False, split_weights=False, clip_grad=False,
                 weight_decay=0.0, mup_lrs=None, hf_key: Optional[str] = "btherien/mulo", *,
                 checkpoint_path=None, network: Optional[MetaMLP] = None, foreach: Optional[bool] = None,
                 kernel_layout: str = "torch", nonfinite_grads: str = "raise", backend: Optional[str] = None,
                 chunk_size: int = DEFAULT_CHUNK):
        check_number("lr", lr, minimum=0.0)
        check_number("exp_mult", exp_mult)
        check_number("step_mult", step_mult)
        check_number("weight_decay", weight_decay, minimum=0.0)
        if max_grad_norm is not None:
            check_number("max_grad_norm", max_grad_norm, minimum=0.0, strict=True)
        options = self._layout_and_backend(kernel_layout, backend, foreach, chunk_size)
        if mup_lrs is not None:
            raise ValueError("mup_lrs is not used (as upstream): μP learning-rate scales are the per-group lr; "
                             "use MuLO(model.parameters()) after mup.set_base_shapes")
        net = load_meta_mlp(ADAFACLO_NETWORK, self.display_name, network=network, checkpoint_path=checkpoint_path,
                            hub_keys=[hf_key], input_size=input_size, hidden_size=hidden_size,
                            hidden_layers=hidden_layers)
        initials = (initial_momentum_decays, initial_rms_decays, initial_adafactor_decays)
        offsets = _offsets((momentum_decays, rms_decays, adafactor_decays), initials, net.learned_decay_offsets())
        defaults = dict(lr=lr, exp_mult=exp_mult, step_mult=step_mult, weight_decay=weight_decay,
                        **{f"{k}_decays": off for k, off in zip(DECAY_KINDS, offsets)},
                        **{f"initial_{k}_decays": [float(x) for x in d] for k, d in zip(DECAY_KINDS, initials)},
                        **options, concat_weights=concat_weights, make_separate_weights=make_separate_weights,
                        split_weights=split_weights)
        super().__init__(params, defaults, net, nonfinite_grads)
        self.clip_grad = bool(clip_grad) or max_grad_norm is not None
        self.max_grad_norm = 1.0 if max_grad_norm is None else float(max_grad_norm)
        self._decay_cache: Dict[Tuple, Tuple[torch.Tensor, ...]] = {}

    def effective_decays(self, group) -> Tuple[List[float], List[float], List[float]]:
        """The group's momentum, RMS and Adafactor decays after the learned offsets."""
        return tuple(learned_decays(group[f"initial_{k}_decays"], group[f"{k}_decays"]) for k in DECAY_KINDS)

    def _clip_norm(self) -> Optional[float]:
        return self.max_grad_norm if self.clip_grad else None

    def _decay_tensors(self, group, device) -> Tuple[torch.Tensor, ...]:
        key = (device,) + tuple(tuple(group[f"{prefix}{k}_decays"]) for prefix in ("", "initial_") for k in DECAY_KINDS)
        if key not in self._decay_cache:
            self._decay_cache[key] = tuple(acc.float32_decays(d, device) for d in self.effective_decays(group))
        return self._decay_cache[key]

    _decay_values = effective_decays

    def _step_mult(self, group) -> float:
        return group["step_mult"]


class AdafacLO(AdafacLO_naive):
    """AdafacLO on its fastest backend (``backend="auto"``: Triton on CUDA, else fused): the recommended entry point.

    Same arguments and results as :class:`AdafacLO_naive` (within float32 round-off); see there.
    An explicit ``backend=`` or ``foreach=`` still selects that backend.
    """

    default_backend = "auto"
