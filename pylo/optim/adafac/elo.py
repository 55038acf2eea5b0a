"""ELO: scaling_l2o's ``ELO_AdafacMLPLOpt`` at inference (``meta_train=False``).

Reference: ``xiaol827/ELO: src/learned_optimizers/elo_adfac_mlp_lopt.py``; our
JAX twin is ``pylo.reference_jax.elo``. The features and the network are
AdafacMLPLOpt's (the 39 inputs of :mod:`pylo.optim.adafac.features` into a
:class:`~pylo.models.MetaMLP`); ELO differs in three ways, so it runs the
AdafacLO update (:func:`pylo.optim.adafac.functional.adafaclo`) with:

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

from typing import Optional

from pylo.core.chunked import DEFAULT_CHUNK
from pylo.core.decays import DECAY_KINDS, DecayTensors, checked_decays
from pylo.models.meta_mlp import MetaMLP
from pylo.optim.adafac.constants import DECAY_COUNTS, NUM_FEATURES
from pylo.optim.adafac.network import ELO_NETWORK, load_meta_mlp
from pylo.optim.adafac.optimizer import AdafacOptimizer
from pylo.optim.base import check_number


class ELO_naive(AdafacOptimizer):
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
        foreach: ``True``: ``backend="foreach"``; ``False``: ``"naive"``; ``None`` (default):
            see ``backend``.
        backend: AdafacLO's backends: ``"naive"``, ``"foreach"``, ``"fused"`` (chunked,
            bounded memory), ``"triton"`` (GPU kernels) or ``"auto"`` (triton on CUDA when
            available, else fused; the default of :class:`ELO`). ``None`` (default here):
            ``"foreach"`` on CUDA, ``"naive"`` elsewhere (:mod:`pylo.optim.backend`).
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
                 foreach: Optional[bool] = None, backend: Optional[str] = None, chunk_size: int = DEFAULT_CHUNK,
                 kernel_layout: str = "torch", nonfinite_grads: str = "raise"):
        check_number("lr", lr, minimum=0.0)
        check_number("exp_mult", exp_mult)
        check_number("weight_decay", weight_decay, minimum=0.0)
        check_number("clip_norm", clip_norm, minimum=0.0, strict=True)
        options = self._layout_and_backend(kernel_layout, backend, foreach, chunk_size)
        decays = {k: checked_decays(f"initial_{k}_decays", v) for k, v in zip(
            DECAY_KINDS, (initial_momentum_decays, initial_rms_decays, initial_adafactor_decays))}
        if tuple(len(d) for d in decays.values()) != DECAY_COUNTS:
            raise ValueError(f"ELO's {NUM_FEATURES} features need 3 momentum, 1 RMS and 3 Adafactor decays, got "
                             f"{len(decays['momentum'])}, {len(decays['rms'])} and {len(decays['adafactor'])}")
        net = load_meta_mlp(ELO_NETWORK, self.display_name, network=network, checkpoint_path=checkpoint_path,
                            hub_keys=[hf_key], hidden_size=hidden_size, hidden_layers=hidden_layers)
        defaults = dict(lr=lr, exp_mult=exp_mult, weight_decay=weight_decay,
                        **{f"initial_{k}_decays": v for k, v in decays.items()}, **options)
        super().__init__(params, defaults, net, nonfinite_grads)
        self.clip_grad = bool(clip_grad)
        self.clip_norm = float(clip_norm)
        self._decays = DecayTensors()

    def _clip_norm(self) -> Optional[float]:
        return self.clip_norm if self.clip_grad else None

    def _decay_tensors(self, group, device):
        return self._decays.of_group(group, device)

    def _decay_values(self, group):
        return tuple(group[f"initial_{k}_decays"] for k in DECAY_KINDS)

    def _step_mult(self, group) -> float:
        return 1.0  # upstream's lr (its scheduled step_mult) is the group's lr


class ELO(ELO_naive):
    """ELO on its fastest backend (``backend="auto"``: Triton on CUDA, else fused): the recommended entry point.

    Same arguments and results as :class:`ELO_naive` (within float32 round-off); see there.
    An explicit ``backend=`` or ``foreach=`` still selects that backend.
    """

    default_backend = "auto"
