"""VeLO: the versatile learned optimizer (Metz et al. 2022), upstream HyperV2.

Reference: ``learned_optimization/research/general_lopt/hyper_v2.py`` (and
``prefab.py`` for the >150k-step averaging and the prefab weight decay); our
JAX twin is :mod:`pylo.reference_jax.hyper_v2`. The shared machinery is in
:mod:`pylo.optim.hyper`; this file adds VeLO's LSTM inputs: per tensor, 30
features (in upstream's sorted-key order) of the old parameters and
accumulators, all rescaled by ``rsqrt(max(1e-9, mean(p^2)))``:

* ``fraction_left`` (9): ``tanh(10 * (iteration / num_steps - tau))``;
* ``loss_features`` (9): from the loss buffer;
* ``mean_rms`` (1), ``var_m`` (3) and ``var_rms`` (3): ``0.5 * clip(log(1e-8 + |10 v|), -5, 5)``
  of the mean RMS, the variance of the momentum, and the spread of the RMS
  *around the momentum's mean* (upstream's quirk, kept);
* ``rank`` (5): one-hot number of axes longer than 1 (all zero from 5 on).
"""

from __future__ import annotations

from typing import Optional

import torch

from pylo.core.reduce import mean_over
from pylo.core.features import FRACTION_OFFSETS
from pylo.core.loss_buffer import SIZE as LOSS_BUFFER_SIZE
from pylo.models.hyper_network import HyperNetwork, build_hyper_network, merge_hub_parts
from pylo.models.loading import NetworkSpec, load_network
from pylo.optim.hyper import (DEFAULT_ADAFACTOR_DECAYS, DEFAULT_CHUNK, DEFAULT_MOMENTUM_DECAYS,
                              DEFAULT_RMS_DECAYS, HyperOptimizerBase)

RANK_CLASSES = 5
MAX_TRAINING_STEPS = 150_000
BUGGED_LOSS_HORIZON = 10

VELO_NETWORK_SPEC = NetworkSpec(name="VeLO network (LSTM + MLP bank)", module_type=HyperNetwork, optimizers=("velo",),
                                build=build_hyper_network)


def clip_log_abs(v: torch.Tensor, scale: float) -> torch.Tensor:
    """``0.5 * clip(log(1e-8 + |v * scale|), -5, 5)``."""
    return torch.clamp(torch.log(1e-8 + torch.abs(v * scale)), -5.0, 5.0) * 0.5


def velo_lstm_inputs(p: torch.Tensor, mom: torch.Tensor, rms: torch.Tensor, fraction_features: torch.Tensor,
                     loss_features: torch.Tensor) -> torch.Tensor:
    """VeLO's per-tensor LSTM input (work-layout ``p``, accumulators with a trailing decay axis)."""
    norm_mult = torch.rsqrt(torch.clamp_min((p * p).mean(), 1e-9))
    mom = mom * norm_mult
    rms = rms * norm_mult
    axes = range(p.dim())
    mean_m = mean_over(mom, axes, keepdim=True)
    mean_rms = mean_over(rms, axes, keepdim=True).reshape(rms.shape[-1])
    var_m = mean_over(torch.square(mom - mean_m), axes)
    var_rms = mean_over(torch.square(rms - mean_m), axes)  # centred on the momentum's mean, as upstream
    return _lstm_vector(fraction_features, loss_features, p.shape, mean_rms, var_m, var_rms)


def _lstm_vector(fraction_features, loss_features, shape, mean_rms, var_m, var_rms) -> torch.Tensor:
    """The 30 inputs in upstream's sorted-key order, from the rescaled statistics.

    The statistics may carry leading axes (a batch of tensors of one ``shape``); the
    fraction and loss features and the rank are the same for all of them.
    """
    rank = torch.zeros(RANK_CLASSES, dtype=torch.float32, device=mean_rms.device)
    n_rank = sum(1 for s in shape if s > 1)
    if n_rank < RANK_CLASSES:
        rank[n_rank] = 1.0
    lead = tuple(mean_rms.shape[:-1])
    shared = [x.expand(lead + tuple(x.shape)) for x in (fraction_features, loss_features)]
    return torch.cat([*shared, clip_log_abs(mean_rms, 10.0), rank.expand(lead + (RANK_CLASSES,)),
                      clip_log_abs(var_m, 10.0), clip_log_abs(var_rms, 10.0)], dim=-1)


def velo_lstm_inputs_from_moments(moments, fraction_features: torch.Tensor,
                                  loss_features: torch.Tensor) -> torch.Tensor:
    """:func:`velo_lstm_inputs` from whole-tensor statistics (:class:`pylo.optim.hyper_fused.TensorMoments`
    of ``K`` tensors): ``(K, 30)``.

    With ``s = rsqrt(max(1e-9, mean(p^2)))``: the rescaled mean RMS is ``s * mean(rms)``,
    the momentum's variance ``s^2 * var(m)``, and the RMS spread around the
    momentum's mean ``s^2 * (var(rms) + (mean(rms) - mean(m))^2)`` (a sum of
    non-negative terms: no cancellation).
    """
    norm_mult = torch.rsqrt(torch.clamp_min(moments.p_sq_mean, 1e-9)).unsqueeze(-1)  # (K, 1)
    norm_sq = norm_mult * norm_mult
    mean_rms = moments.rms_mean * norm_mult
    var_m = moments.m_var * norm_sq
    var_rms = (moments.rms_var + torch.square(moments.rms_mean - moments.m_mean)) * norm_sq
    return _lstm_vector(fraction_features, loss_features, moments.shape, mean_rms, var_m, var_rms)


class VeLO_naive(HyperOptimizerBase):
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
            With ``True`` the loss is averaged over ranks with
            ``torch.distributed.all_reduce`` when the process group is
            initialised (no-op otherwise); else pass an already-averaged loss.
        max_training_steps: as upstream's prefab: when ``num_steps`` exceeds it,
            ``k = ceil(num_steps / max_training_steps)`` consecutive ``step()``
            calls are averaged (gradients and losses) into one VeLO update,
            which runs on every ``k``-th call with horizon ``num_steps // k``;
            parameters do not move in between. ``None`` turns it off.
        ff_mult: the interpolation factor of the MLP bank (100 in VeLO; the
            Celo repository's small ``velo-s`` uses 1).
        foreach: multi-tensor implementation (default: True on CUDA); shorthand for
            ``backend="foreach"`` (``False``: ``"naive"``).
        backend: ``None`` (default here: the ``foreach`` rule above), ``"naive"``
            (tensor by tensor), ``"foreach"`` (multi-tensor accumulators, one batched
            interpolation), ``"fused"`` (chunked, bounded memory, normalisers folded into
            the first layer; fastest on CPU), ``"triton"`` (GPU kernels), or ``"auto"``
            (triton on CUDA when available, else fused; the default of :class:`VeLO`).
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
                 all_reduce_loss: bool = False, max_training_steps: Optional[int] = MAX_TRAINING_STEPS,
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
        super().__init__(params, network=net, num_steps=num_steps, lr=lr, exp_mult=exp_mult, step_mult=step_mult,
                         weight_decay=weight_decay, weight_decay_mode=weight_decay_mode,
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

    def lstm_input_size(self, decays) -> int:
        k_mom, k_rms = len(decays[0]), len(decays[1])
        return len(FRACTION_OFFSETS) + (LOSS_BUFFER_SIZE - 1) + k_rms + RANK_CLASSES + k_mom + max(k_mom, k_rms)

    def lstm_inputs(self, p, mom, rms, fraction_features, loss_features):
        return velo_lstm_inputs(p, mom, rms, fraction_features, loss_features)

    def lstm_inputs_from_moments(self, moments, fraction_features, loss_features):
        return velo_lstm_inputs_from_moments(moments, fraction_features, loss_features)

    def propagates_lstm_state(self) -> bool:
        return not self.use_bugged_next_lstm_state

    def loss_horizon(self, inner_steps: int) -> int:
        return BUGGED_LOSS_HORIZON if self.use_bugged_loss_features else inner_steps


class VeLO(VeLO_naive):
    """VeLO on its fastest backend (``backend="auto"``: Triton kernels on CUDA, else the
    fused backend): the recommended entry point.

    Same arguments and results as :class:`VeLO_naive` (within float32 round-off);
    an explicit ``foreach=`` still selects the foreach (or naive) backend.
    """

    def __init__(self, params, *args, backend: Optional[str] = None, **kwargs):
        if backend is None and kwargs.get("foreach") is None:
            backend = "auto"
        super().__init__(params, *args, backend=backend, **kwargs)
