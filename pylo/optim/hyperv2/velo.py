"""VeLO: the versatile learned optimizer (Metz et al. 2022), upstream's HyperV2.

HyperV2 is upstream's name for the VeLO architecture. Reference:
``learned_optimization/research/general_lopt/hyper_v2.py`` (and ``prefab.py`` for the
>150k-step averaging and the prefab weight decay); our JAX twin is
:mod:`pylo.reference_jax.hyper_v2`. The machinery it shares with Celo is
:class:`pylo.optim.hyperv2.optimizer.HyperV2Optimizer`; VeLO's own part is its LSTM inputs
(:class:`pylo.optim.hyperv2.controller.VeLOController`: 30 per-tensor features of the old
parameters and accumulators), the interpolation factor 100 and upstream's two legacy flags.
"""

from __future__ import annotations

from typing import Optional

from pylo.core.chunked import DEFAULT_CHUNK
from pylo.models.hyper_network import HyperNetwork, build_hyper_network, merge_hub_parts
from pylo.models.loading import NetworkSpec, load_network
from pylo.optim.hyperv2.constants import DEFAULT_ADAFACTOR_DECAYS, DEFAULT_MOMENTUM_DECAYS, DEFAULT_RMS_DECAYS
from pylo.optim.hyperv2.controller import VeLOController
from pylo.optim.hyperv2.optimizer import HyperV2Optimizer

MAX_TRAINING_STEPS = 150_000
BUGGED_LOSS_HORIZON = 10

VELO_NETWORK_SPEC = NetworkSpec(name="VeLO network (LSTM + MLP bank)", module_type=HyperNetwork, optimizers=("velo",),
                                build=build_hyper_network)


class VeLO_naive(HyperV2Optimizer):
    """VeLO learned optimizer (pure PyTorch), step for step upstream's HyperV2.

    Args:
        params: parameters, ``named_parameters()``, or param groups.
        momentum_decays, rms_decays, adafactor_decays: decay offsets of the
            published API. VeLO has none (all zero: the initial decays are used
            as they are); non-zero offsets give ``1 - (1 - d0) * exp(10 * offset)``.
        lr: multiplies VeLO's step: ``p <- p - lr * step``. The default 1.0
            reproduces VeLO (the published port defaulted to 0.001, i.e. steps
            1000x smaller than VeLO's). VeLO sets its own schedule, so
            ``lr`` is best left at 1 (an lr scheduler still works).
        exp_mult, step_mult: ``step = lr_mult * d * param_scale * exp(mu * exp_mult) * step_mult``.
        input_size, hidden_size, hidden_layers, lstm_input_size, lstm_hidden_size,
        param_inits: network geometry used when a checkpoint does not state its own.
        initial_momentum_decays, initial_rms_decays, initial_adafactor_decays: the accumulators' decays.
        num_steps: the planned number of ``step()`` calls. VeLO's LSTM sees the
            fraction of training done and loss averages with half-lives up to
            ``num_steps``; set it to the real length of the run.
        concat_weights, make_separate_weights, split_weights: accepted for API
            compatibility (no effect).
        weight_decay, weight_decay_mode: with ``"decoupled"`` (default),
            ``p <- p - lr * (step + weight_decay * p)`` (``p`` before the step);
            with ``"prefab"``, learned_optimization's prefab semantics: every call
            adds ``weight_decay * p`` to the gradient and
            ``sum_params(weight_decay * sum(p^2))`` to the loss the LSTM sees.
        clip_grad, max_grad_norm: optional global-norm clipping of the raw
            gradients (to ``max_grad_norm``, default 1.0) before everything else;
            a pylo addition, off by default as in VeLO. VeLO's own element-wise
            clip at +-1000 always applies.
        mup_lrs: not supported (must be None).
        hf_key_rnn, hf_key_mlp: the published PyLO hub repos (``owner/name[@rev]``)
            or local folders in their layout; used when neither ``network`` nor
            ``checkpoint_path`` is given.
        checkpoint_path: a pylo checkpoint folder (``pylo-convert ... --optimizer velo``).
        network: a ready :class:`~pylo.models.HyperNetwork`; wins over everything.
        use_bugged_loss_features: upstream's flag: the loss buffer's horizon is
            10 steps whatever ``num_steps`` is. Off for the released VeLO; the
            older "no_config" checkpoints need it on.
        use_bugged_next_lstm_state: upstream's flag: the LSTM state never
            advances. Off for the released VeLO; on for the "no_config" ones.
        all_reduce_loss: under DDP every rank must feed the *same* loss (the
            LSTM reads it, and replicas that see different losses drift apart).
            By default (``None``) the loss is averaged over ranks with
            ``torch.distributed.all_reduce`` whenever a process group of more
            than one rank is initialised: what one process would see on the
            whole batch. ``False`` opts out (pass an already-averaged loss, or
            run where not every rank steps together); ``True`` averages
            whenever a process group is initialised.
        max_training_steps: as upstream's prefab: when ``num_steps`` exceeds it,
            ``k = ceil(num_steps / max_training_steps)`` consecutive ``step()``
            calls are averaged (gradients and losses) into one VeLO update,
            which runs on every ``k``-th call with horizon ``num_steps // k``;
            parameters do not move in between. ``None`` turns it off.
        ff_mult: the interpolation factor of the MLP bank (100 in VeLO; the
            Celo repository's small ``velo-s`` uses 1).
        foreach: ``True`` / ``False``: shorthand for ``backend="foreach"`` / ``"naive"``.
        backend: ``None`` (default): the class's choice, torch's rule here (``"foreach"``
            on CUDA, ``"naive"`` elsewhere) and ``"auto"`` for :class:`VeLO`; ``"naive"``
            (tensor by tensor), ``"foreach"`` (multi-tensor accumulators, one batched
            interpolation), ``"fused"`` (chunked, bounded memory, normalisers folded into
            the first layer; fastest on CPU), ``"triton"`` (GPU kernels), or ``"auto"``
            (triton on CUDA when available and the network fits the kernels, else fused).
            All compute the same update within float32 round-off.
        chunk_size: elements per chunk of the fused backend (bounds its transient memory).
        kernel_layout: ``"torch"`` (default) treats 4-D tensors as OIHW conv
            kernels and computes in JAX's HWIO layout, as upstream sees the same
            kernel; ``"jax"`` takes 4-D tensors as they are.
        nonfinite_grads: ``"raise"`` (default): a NaN/Inf gradient or loss raises
            before anything changes; ``"upstream"``: as upstream (gradients clipped
            to +-1000, so Inf is harmless; NaN propagates).

    ``step(loss)`` needs the loss (or a closure returning it). Parameters
    without a gradient sit a step out, keeping their own LSTM state.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = VeLO_naive(model.parameters(), num_steps=1000, checkpoint_path="velo_folder")  # doctest: +SKIP
        >>> loss = model(torch.randn(8, 4)).square().mean(); loss.backward()  # doctest: +SKIP
        >>> opt.step(loss); opt.zero_grad()  # doctest: +SKIP
    """

    display_name = "VeLO"

    def __init__(self, params, momentum_decays=(0.0, 0.0, 0.0), rms_decays=(0.0,), adafactor_decays=(0.0, 0.0, 0.0),
                 lr=1.0, exp_mult=0.001, step_mult=0.001, input_size=30, hidden_size=4, hidden_layers=1,
                 initial_momentum_decays=DEFAULT_MOMENTUM_DECAYS, lstm_input_size=30, lstm_hidden_size=512,
                 param_inits=256, num_steps=10000, initial_rms_decays=DEFAULT_RMS_DECAYS,
                 initial_adafactor_decays=DEFAULT_ADAFACTOR_DECAYS, concat_weights=True, make_separate_weights=False,
                 split_weights=False, weight_decay=0.0, clip_grad=False, mup_lrs=None,
                 hf_key_rnn: Optional[str] = "Pauljanson002/VeLO_RNN",
                 hf_key_mlp: Optional[str] = "Pauljanson002/VeLO_MLP", *, checkpoint_path=None,
                 network: Optional[HyperNetwork] = None, use_bugged_loss_features: bool = False,
                 use_bugged_next_lstm_state: bool = False, weight_decay_mode: str = "decoupled",
                 all_reduce_loss: Optional[bool] = None, max_training_steps: Optional[int] = MAX_TRAINING_STEPS,
                 ff_mult: float = 100.0, max_grad_norm=None, foreach: Optional[bool] = None,
                 kernel_layout: str = "torch", nonfinite_grads: str = "raise", backend: Optional[str] = None,
                 chunk_size: int = DEFAULT_CHUNK):
        if mup_lrs is not None:
            raise ValueError("mup_lrs is not supported by VeLO (upstream's VeLO has no μP scales)")
        if network is None and checkpoint_path is None and not (hf_key_rnn and hf_key_mlp):
            raise ValueError("VeLO needs both hf_key_rnn and hf_key_mlp (or checkpoint_path= / network=)")
        net, config = load_network(
            VELO_NETWORK_SPEC, network=network, checkpoint_path=checkpoint_path, hub_keys=[hf_key_rnn, hf_key_mlp],
            hub_merge=merge_hub_parts,
            fallback_config=dict(lstm_input_size=lstm_input_size, lstm_hidden_size=lstm_hidden_size,
                                 param_inits=param_inits, input_size=input_size, hidden_size=hidden_size,
                                 hidden_layers=hidden_layers))
        self.use_bugged_loss_features = bool(use_bugged_loss_features)
        self.use_bugged_next_lstm_state = bool(use_bugged_next_lstm_state)
        controller = VeLOController(advances_state=not self.use_bugged_next_lstm_state)
        super().__init__(params, network=net, controller=controller, num_steps=num_steps, lr=lr,
                         exp_mult=exp_mult, step_mult=step_mult, weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
                         momentum_decays=momentum_decays, rms_decays=rms_decays, adafactor_decays=adafactor_decays,
                         initial_momentum_decays=initial_momentum_decays, initial_rms_decays=initial_rms_decays,
                         initial_adafactor_decays=initial_adafactor_decays, interp_mult=ff_mult,
                         clip_grad=clip_grad, max_grad_norm=max_grad_norm, all_reduce_loss=all_reduce_loss,
                         max_training_steps=max_training_steps, foreach=foreach, kernel_layout=kernel_layout,
                         nonfinite_grads=nonfinite_grads, extra_defaults=dict(concat_weights=concat_weights,
                                             make_separate_weights=make_separate_weights,
                                             split_weights=split_weights), backend=backend, chunk_size=chunk_size)
        self._warn_on_training_config(config, use_bugged_loss_features=use_bugged_loss_features,
                                      use_bugged_next_lstm_state=use_bugged_next_lstm_state)

    def loss_horizon(self, inner_steps: int) -> int:
        return BUGGED_LOSS_HORIZON if self.use_bugged_loss_features else inner_steps


class VeLO(VeLO_naive):
    """VeLO on its fastest backend (``backend="auto"``: Triton kernels on CUDA, else the
    fused backend): the recommended entry point.

    Same arguments and results as :class:`VeLO_naive` (within float32 round-off);
    an explicit ``foreach=`` or ``backend=`` still selects that backend.
    """

    default_backend = "auto"
