"""Celo v1 (Moudgil et al. 2025): a learned LSTM scheduler over a learned per-element MLP.

Not CELO2 (:mod:`pylo.optim.celo2`, an unrelated later algorithm): Celo is built on VeLO's
HyperV2 architecture.

Reference: ``amoudgl/celo`` ``celo/optimizers/celo.py`` (released config
``Celo(lstm_hidden_size=64, param_inits=1, train_phase=2)``); our JAX twin is
:mod:`pylo.reference_jax.celo`. Celo is VeLO's machinery
(:class:`pylo.optim.hyperv2.optimizer.HyperV2Optimizer`) with a smaller scheduler
(:class:`pylo.optim.hyperv2.controller.CeloController`):

* the LSTM reads only the fraction of training done and the loss features
  (18 inputs, the same for every tensor except through the LSTM state);
* ``lr_mult = 0.1 * exp(step_size(h))``, applied only when ``train_phase > 1``;
* controls are a softmax over the MLP bank and the interpolation is a plain
  mean (with the released ``param_inits=1`` the MLP is the checkpoint's one MLP).
"""

from __future__ import annotations

from typing import Optional

from pylo.core.chunked import DEFAULT_CHUNK
from pylo.models.hyper_network import HyperNetwork, build_hyper_network
from pylo.models.loading import NetworkSpec, load_network
from pylo.optim.hyperv2.constants import DEFAULT_ADAFACTOR_DECAYS, DEFAULT_MOMENTUM_DECAYS, DEFAULT_RMS_DECAYS
from pylo.optim.hyperv2.controller import CeloController
from pylo.optim.hyperv2.optimizer import HyperV2Optimizer

CELO_NETWORK_SPEC = NetworkSpec(name="Celo network (LSTM + MLP)", module_type=HyperNetwork, optimizers=("celo",),
                                build=build_hyper_network)
PUBLISHED_WEIGHTS = "hf://amoudgl/celo/theta.state"


class Celo_naive(HyperV2Optimizer):
    """Celo learned optimizer (pure PyTorch), step for step upstream's ``Celo``.

    Args:
        params: parameters, ``named_parameters()``, or param groups.
        num_steps: the planned number of ``step()`` calls (required: the LSTM
            scheduler reads the fraction of training done and loss averages
            with half-lives up to ``num_steps``).
        lr: multiplies Celo's step (1.0 reproduces Celo).
        weight_decay, weight_decay_mode: ``"decoupled"`` (default):
            ``p <- p - lr * (step + weight_decay * p)``; ``"prefab"``: ``weight_decay * p``
            added to the gradient and ``sum_params(weight_decay * sum(p^2))`` to the
            loss the LSTM sees (learned_optimization's ``WeightDecayWrapper``).
        exp_mult, step_mult: ``step = lr_mult * d * param_scale * exp(mu * exp_mult) * step_mult``.
        train_phase: upstream's phase; 1 ignores the LSTM's ``lr_mult`` (phase-1 weights).
        hf_key: a hub repo in pylo's checkpoint layout (none is published: Celo's
            weights are a JAX ``theta.state``, convert them with
            ``pylo-convert theta.state celo_ckpt --optimizer celo``).
        checkpoint_path: a pylo checkpoint folder (``pylo-convert ... --optimizer celo``).
        network: a ready :class:`~pylo.models.HyperNetwork`; wins over everything.
        clip_grad, max_grad_norm, all_reduce_loss, initial_*_decays, foreach, backend,
        chunk_size, kernel_layout, nonfinite_grads: as for :class:`~pylo.optim.VeLO_naive`.

    ``step(loss)`` needs the loss (or a closure returning it).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = Celo_naive(model.parameters(), num_steps=1000, checkpoint_path="celo_ckpt")  # doctest: +SKIP
        >>> loss = model(torch.randn(8, 4)).square().mean(); loss.backward()  # doctest: +SKIP
        >>> opt.step(loss); opt.zero_grad()  # doctest: +SKIP
    """

    display_name = "Celo"

    def __init__(self, params, num_steps: int, lr=1.0, weight_decay=0.0, exp_mult=0.001, step_mult=0.001,
                 train_phase: int = 2, hf_key: Optional[str] = None, *, checkpoint_path=None,
                 network: Optional[HyperNetwork] = None, weight_decay_mode: str = "decoupled", clip_grad=False,
                 max_grad_norm=None, all_reduce_loss: Optional[bool] = None,
                 initial_momentum_decays=DEFAULT_MOMENTUM_DECAYS, initial_rms_decays=DEFAULT_RMS_DECAYS,
                 initial_adafactor_decays=DEFAULT_ADAFACTOR_DECAYS, foreach: Optional[bool] = None,
                 kernel_layout: str = "torch", nonfinite_grads: str = "raise", backend: Optional[str] = None,
                 chunk_size: int = DEFAULT_CHUNK):
        if train_phase not in (1, 2):
            raise ValueError(f"train_phase must be 1 or 2, got {train_phase!r}")
        if network is None and checkpoint_path is None and not hf_key:
            raise ValueError(f"Celo needs its meta-network: its weights are published as a JAX checkpoint "
                             f"({PUBLISHED_WEIGHTS}); convert them with `pylo-convert theta.state celo_ckpt "
                             f"--optimizer celo` and pass checkpoint_path='celo_ckpt' (or network=)")
        net, _ = load_network(CELO_NETWORK_SPEC, network=network, checkpoint_path=checkpoint_path,
                              hub_keys=[hf_key] if hf_key else [])
        self.train_phase = int(train_phase)
        controller = CeloController(use_lr_mult=self.train_phase > 1)
        super().__init__(params, network=net, controller=controller, num_steps=num_steps, lr=lr,
                         exp_mult=exp_mult, step_mult=step_mult, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
                         momentum_decays=[0.0] * len(initial_momentum_decays),
                         rms_decays=[0.0] * len(initial_rms_decays),
                         adafactor_decays=[0.0] * len(initial_adafactor_decays),
                         initial_momentum_decays=initial_momentum_decays, initial_rms_decays=initial_rms_decays,
                         initial_adafactor_decays=initial_adafactor_decays, interp_mult=1.0, clip_grad=clip_grad,
                         max_grad_norm=max_grad_norm, all_reduce_loss=all_reduce_loss, max_training_steps=None,
                         foreach=foreach, kernel_layout=kernel_layout, nonfinite_grads=nonfinite_grads,
                         backend=backend, chunk_size=chunk_size)


class Celo(Celo_naive):
    """Celo on its fastest backend (``backend="auto"``: Triton kernels on CUDA, else the
    fused backend): the recommended entry point.

    Same arguments and results as :class:`Celo_naive` (within float32 round-off);
    an explicit ``foreach=`` or ``backend=`` still selects that backend.
    """

    default_backend = "auto"
