"""The per-tensor LSTM of VeLO and Celo ("the controller"): what it reads and how its outputs are used.

Every tensor gets one LSTM input vector from its *old* parameters and accumulators (before this
step's accumulator update), plus the fraction of training done and the loss features. The LSTM
(:class:`pylo.models.hyper_network.VeLORNN`) turns them into per-tensor controls (the weights of
the MLP bank) and a learning-rate multiplier. The naive and foreach engines compute the inputs
from the tensors (:meth:`LSTMInputs.tensor`), the fused and Triton engines from whole-tensor
statistics they gather in their first pass (:class:`TensorMoments`, :meth:`LSTMInputs.moments`).

* VeLO (:class:`VeLOController`) reads 30 features in upstream's sorted-key order, all rescaled
  by ``rsqrt(max(1e-9, mean(p^2)))``: ``fraction_left`` (9), ``loss_features`` (9),
  ``mean_rms`` (1), ``rank`` (5: one-hot number of axes longer than 1, all zero from 5 on),
  ``var_m`` (3) and ``var_rms`` (3), the last three as ``0.5 * clip(log(1e-8 + |10 v|), -5, 5)``;
  ``var_rms`` is the spread of the RMS *around the momentum's mean* (upstream's quirk, kept).
* Celo (:class:`CeloController`) reads only the fraction and loss features (18); its controls are
  a softmax over the bank and its multiplier ``0.1 * exp(raw)``, applied only in ``train_phase`` 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from pylo.core import reduce
from pylo.spec.features import RANK_CLASSES, celo_lstm_input_size, velo_lstm_input_size

#: Celo's learning-rate multiplier is ``LR_MULT_SCALE * exp(raw)``
LR_MULT_SCALE = 0.1


@dataclass
class TensorMoments:
    """Whole-tensor statistics of the *old* parameters and accumulators, as the LSTM features read them.

    For a batch of ``K`` tensors of one work ``shape`` (whose rank the LSTM reads):
    ``p_sq_mean`` ``(K,)`` is ``mean(p^2)``; the momentum and RMS means and
    (population) variances per decay are ``(K, k)`` (``None`` when the
    optimizer's LSTM does not read them).
    """

    shape: Tuple[int, ...]
    p_sq_mean: torch.Tensor
    m_mean: Optional[torch.Tensor] = None
    m_var: Optional[torch.Tensor] = None
    rms_mean: Optional[torch.Tensor] = None
    rms_var: Optional[torch.Tensor] = None

    def set_accumulators(self, mean: torch.Tensor, var: torch.Tensor, k_mom: int) -> None:
        """Split ``(K, k_mom + k_rms)`` means and variances (momentum channels first)."""
        self.m_mean, self.rms_mean = mean[:, :k_mom], mean[:, k_mom:]
        self.m_var, self.rms_var = var[:, :k_mom], var[:, k_mom:]


def clip_log_abs(v: torch.Tensor, scale: float) -> torch.Tensor:
    """``0.5 * clip(log(1e-8 + |v * scale|), -5, 5)``."""
    return torch.clamp(torch.log(1e-8 + torch.abs(v * scale)), -5.0, 5.0) * 0.5


def _velo_vector(fraction_features, loss_features, shape, mean_rms, var_m, var_rms) -> torch.Tensor:
    """VeLO's 30 inputs in upstream's sorted-key order, from the rescaled statistics.

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


class Controller:
    """What the engines and the functional entry ask of a HyperV2 controller (defaults: VeLO's)."""

    #: whether the inputs read the momentum / RMS statistics (else the engines gather only ``mean(p^2)``)
    reads_moments = True
    #: whether the step is multiplied by the LSTM's learning-rate multiplier
    use_lr_mult = True
    #: whether the per-tensor LSTM state advances (upstream's ``use_bugged_next_lstm_state`` freezes it)
    advances_state = True

    @staticmethod
    def input_size(k_mom: int, k_rms: int) -> int:
        raise NotImplementedError

    @staticmethod
    def tensor_inputs(p, mom, rms, fraction_features, loss_features, split=None) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def moment_inputs(moments: TensorMoments, fraction_features, loss_features) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def controls(raw: torch.Tensor) -> torch.Tensor:
        """The MLP bank's weights from the LSTM's raw controls ``(n, P)``."""
        return raw

    @staticmethod
    def lr_mult(raw: torch.Tensor) -> torch.Tensor:
        """The learning-rate multipliers from the LSTM's raw ``(n,)`` outputs."""
        return raw


class VeLOController(Controller):
    """VeLO's LSTM: 30 inputs per tensor; raw controls and multiplier; the state advances unless bugged."""

    def __init__(self, advances_state: bool = True):
        self.advances_state = advances_state

    @staticmethod
    def input_size(k_mom: int, k_rms: int) -> int:
        return velo_lstm_input_size(k_mom, k_rms)

    @staticmethod
    def tensor_inputs(p, mom, rms, fraction_features, loss_features, split=None) -> torch.Tensor:
        """One tensor's input (work-layout ``p``, accumulators with a trailing decay axis; ``split``: ``p``
        is one rank's part of a sharded tensor, :class:`pylo.core.reduce.Split`)."""
        norm_mult = torch.rsqrt(torch.clamp_min(reduce.mean_square(p, split), 1e-9))
        mom = mom * norm_mult
        rms = rms * norm_mult
        axes = range(p.dim())
        mean_m = reduce.mean_over(mom, axes, keepdim=True, split=split)
        mean_rms = reduce.mean_over(rms, axes, keepdim=True, split=split).reshape(rms.shape[-1])
        var_m = reduce.mean_over(torch.square(mom - mean_m), axes, split=split)
        # centred on the momentum's mean, as upstream
        var_rms = reduce.mean_over(torch.square(rms - mean_m), axes, split=split)
        return _velo_vector(fraction_features, loss_features, reduce.global_shape(p.shape, split), mean_rms,
                            var_m, var_rms)

    @staticmethod
    def moment_inputs(moments: TensorMoments, fraction_features, loss_features) -> torch.Tensor:
        """:meth:`tensor_inputs` of ``K`` tensors from their statistics: ``(K, 30)``.

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
        return _velo_vector(fraction_features, loss_features, moments.shape, mean_rms, var_m, var_rms)


class CeloController(Controller):
    """Celo's LSTM: only the fraction and loss features; softmax controls; ``0.1 * exp`` multiplier."""

    reads_moments = False

    def __init__(self, use_lr_mult: bool = True):
        self.use_lr_mult = use_lr_mult

    @staticmethod
    def input_size(k_mom: int, k_rms: int) -> int:
        return celo_lstm_input_size()

    @staticmethod
    def tensor_inputs(p, mom, rms, fraction_features, loss_features, split=None) -> torch.Tensor:
        return torch.cat([fraction_features, loss_features])

    @staticmethod
    def moment_inputs(moments: TensorMoments, fraction_features, loss_features) -> torch.Tensor:
        row = torch.cat([fraction_features, loss_features])
        return row.expand(moments.p_sq_mean.shape[0], row.shape[0])

    @staticmethod
    def controls(raw: torch.Tensor) -> torch.Tensor:
        return torch.softmax(raw, dim=-1)

    @staticmethod
    def lr_mult(raw: torch.Tensor) -> torch.Tensor:
        return torch.exp(raw) * LR_MULT_SCALE


@dataclass
class LSTMInputs:
    """A controller's inputs for one step on one device: the shared features bound in."""

    controller: Controller
    fraction_features: torch.Tensor
    loss_features: torch.Tensor

    @property
    def reads_moments(self) -> bool:
        """Whether the inputs read the momentum / RMS statistics (else only ``mean(p^2)`` is gathered)."""
        return self.controller.reads_moments

    def tensor(self, p: torch.Tensor, mom: torch.Tensor, rms: torch.Tensor, split=None) -> torch.Tensor:
        return self.controller.tensor_inputs(p, mom, rms, self.fraction_features, self.loss_features, split)

    def moments(self, moments: TensorMoments) -> torch.Tensor:
        return self.controller.moment_inputs(moments, self.fraction_features, self.loss_features)
