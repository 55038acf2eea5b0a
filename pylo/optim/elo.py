"""ELO: scaling_l2o's ``ELO_AdafacMLPLOpt`` at inference (``meta_train=False``).

Reference: ``xiaol827/ELO: src/learned_optimizers/elo_adfac_mlp_lopt.py``; our
JAX twin is ``pylo.reference_jax.elo``. The features and the network are
AdafacMLPLOpt's (the 39 inputs of ``pylo.optim.adafaclo`` into a
:class:`~pylo.models.MetaMLP`); ELO differs in three ways, so it runs the
AdafacLO update with:

* the raw initial decays (ELO's theta has no learned decay offsets);
* ``p <- p - (d * exp(mu * exp_mult) + weight_decay * p) * lr``, where ``lr``
  is upstream's ``scheduled_lr`` (``step_mult`` after its warmup): AdafacLO's
  update with ``step_mult = 1`` and ``lr`` as the multiplier;
* optional global-norm clipping, then ``nan_to_num``.

Upstream's warmup starts at ``init_lr = 0`` by default; torch's ``lr`` comes
from the group (drive it with a scheduler), so a constant upstream schedule
(``init_lr = step_mult``, no warmup) is the same optimizer.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from pylo.core.decays import DECAY_KINDS, DecayTensors, checked_decays
from pylo.spec.shapes import KERNEL_LAYOUTS
from pylo.models.loading import NetworkSpec, load_network
from pylo.models.meta_mlp import MetaMLP
from pylo.optim.adafaclo import BACKENDS, NUM_FEATURES, _build_meta_mlp, adafaclo, resolve_backend
from pylo.optim.base import LearnedOptimizer, check_number

ELO_SPEC = NetworkSpec(name="ELO MetaMLP", module_type=MetaMLP, optimizers=("elo",), build=_build_meta_mlp)


class ELO_naive(LearnedOptimizer):
    """ELO (Adafactor-MLP) learned optimizer (pure PyTorch).

    Args:
        params: parameters, ``named_parameters()``, or param groups.
        lr: upstream's ``step_mult`` / scheduled lr; no internal schedule
            (drive it with ``torch.optim.lr_scheduler``).
        exp_mult: ``exp(mu * exp_mult)`` magnitude multiplier.
        weight_decay: decoupled, ``p -= lr * weight_decay * p``.
        hidden_size, hidden_layers: MetaMLP geometry when the checkpoint does
            not state its own (``hidden_layers`` counts hidden-to-hidden layers:
            upstream ``hidden_layers=2`` is 1 here).
        initial_momentum_decays, initial_rms_decays, initial_adafactor_decays:
            the accumulator decays, used as they are.
        clip_grad, clip_norm: optax ``clip_by_global_norm`` over all groups first.
        hf_key: hub repo of the meta-network (``"owner/name[@revision]"``).
        checkpoint_path: a local converted checkpoint (folder or file); wins over ``hf_key``.
        network: a ready :class:`~pylo.models.MetaMLP`; wins over everything.
        foreach: shorthand for ``backend="foreach"``.
        backend: AdafacLO's backends: ``"naive"`` (default), ``"foreach"``,
            ``"fused"`` (chunked, bounded memory), ``"triton"`` (GPU kernels) or
            ``"auto"`` (triton on CUDA when available, else fused).
        chunk_size: elements per chunk of the fused backend.
        kernel_layout: ``"torch"`` (default) computes conv kernels in JAX's
            HWIO layout, as upstream sees the same kernel; ``"jax"`` takes 4-D
            tensors as they are.
        nonfinite_grads: ``"raise"`` (default) or ``"upstream"`` (``nan_to_num``).

    Example:
        >>> opt = ELO_naive(model.parameters(), checkpoint_path="elo_folder")  # doctest: +SKIP
    """

    display_name = "ELO"

    def __init__(self, params, lr=0.001, exp_mult=0.001, weight_decay=0.0, hidden_size=32, hidden_layers=1,
                 initial_momentum_decays=(0.9, 0.99, 0.999), initial_rms_decays=(0.999,),
                 initial_adafactor_decays=(0.9, 0.99, 0.999), clip_grad=False, clip_norm=1.0,
                 hf_key: Optional[str] = "DiamondXL/elo", checkpoint_path=None, network: Optional[MetaMLP] = None, *,
                 foreach: Optional[bool] = None, backend: Optional[str] = None, chunk_size: int = 16384,
                 kernel_layout: str = "torch", nonfinite_grads: str = "raise"):
        check_number("lr", lr, minimum=0.0)
        check_number("exp_mult", exp_mult)
        check_number("weight_decay", weight_decay, minimum=0.0)
        check_number("clip_norm", clip_norm, minimum=0.0, strict=True)
        if kernel_layout not in KERNEL_LAYOUTS:
            raise ValueError(f"kernel_layout must be one of {KERNEL_LAYOUTS}, got {kernel_layout!r}")
        if backend is None:
            backend = "foreach" if foreach else "naive"
        if backend not in BACKENDS + ("auto",):
            raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        decays = {k: checked_decays(f"initial_{k}_decays", v) for k, v in (
            ("momentum", initial_momentum_decays), ("rms", initial_rms_decays),
            ("adafactor", initial_adafactor_decays))}
        if (len(decays["momentum"]), len(decays["rms"]), len(decays["adafactor"])) != (3, 1, 3):
            raise ValueError("ELO's 39 features need 3 momentum, 1 RMS and 3 Adafactor decays, got "
                             f"{len(decays['momentum'])}, {len(decays['rms'])} and {len(decays['adafactor'])}")
        net, _ = load_network(ELO_SPEC, network=network, checkpoint_path=checkpoint_path,
                              hub_keys=[hf_key] if hf_key else [],
                              fallback_config=dict(input_size=NUM_FEATURES, hidden_size=hidden_size,
                                                   hidden_layers=hidden_layers))
        if net.input_size != NUM_FEATURES:
            raise ValueError(f"ELO builds {NUM_FEATURES} features but the meta-network takes {net.input_size}")
        defaults = dict(lr=lr, exp_mult=exp_mult, weight_decay=weight_decay,
                        **{f"initial_{k}_decays": v for k, v in decays.items()}, kernel_layout=kernel_layout,
                        backend=backend, chunk_size=chunk_size)
        super().__init__(params, defaults, net, nonfinite_grads)
        self.clip_grad = bool(clip_grad)
        self.clip_norm = float(clip_norm)
        self._decays = DecayTensors()
        self._workspaces: Dict = {}

    @staticmethod
    def _decay_values(group):
        return tuple(group[f"initial_{k}_decays"] for k in DECAY_KINDS)

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One update. ``closure`` (re-evaluates the model) or ``loss`` are optional; the loss is returned."""
        loss = self._resolve_loss(closure, loss)
        for group, params, grads in self._sanitized_entries(self.clip_norm if self.clip_grad else None, True):
            for device, idx in self._by_device(params).items():
                backend = resolve_backend(group["backend"], device)
                adafaclo([params[i] for i in idx], [grads[i] for i in idx], [self.state[params[i]] for i in idx],
                         network=self.network_on(device), decays=self._decays.of_group(group, device), lr=group["lr"],
                         exp_mult=group["exp_mult"], step_mult=1.0, weight_decay=group["weight_decay"],
                         kernel_layout=group["kernel_layout"], backend=backend, workspaces=self._workspaces,
                         chunk_size=group["chunk_size"], decay_values=self._decay_values(group))
        return loss


class ELO(ELO_naive):
    """ELO on its fastest backend (``backend="auto"``: Triton on CUDA, else fused): the recommended entry point.

    Same arguments and results as :class:`ELO_naive` (within float32 round-off); see there.
    """

    def __init__(self, params, *args, backend: Optional[str] = "auto", **kwargs):
        super().__init__(params, *args, backend=backend, **kwargs)
