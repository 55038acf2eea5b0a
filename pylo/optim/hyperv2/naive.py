"""The naive VeLO / Celo engine: tensor by tensor, the readable reference of the update.

For each tensor ``p`` (work layout, float32; ``g`` clipped to [-1000, 1000]):

* **prepare**: the controller's LSTM input from the *old* ``p`` and accumulators, then the
  momentum, RMS and Adafactor accumulators updated with ``g``;
* **finish**: the tensor's MLP is the controls-weighted mean of the bank (times
  ``interp_mult``); it reads the 14 per-element feature groups
  (:func:`pylo.core.features.hyper_feature_groups`), each second-moment normalised, and returns a
  direction ``d`` and a magnitude ``mu``; ``step = lr_mult * d * (sqrt(mean(p^2) + 1e-9) *
  exp(mu * exp_mult)) * step_mult`` and ``p <- p - lr * (step + weight_decay * p)``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch

from pylo.core import accumulators as acc
from pylo.core import reduce
from pylo.core.features import hyper_feature_groups, second_moment_normalize
from pylo.core.layout import subtract_update, to_work
from pylo.core.reduce import Split, global_shape
from pylo.optim.backend import Engine
from pylo.optim.hyperv2.constants import GRAD_CLIP, NORMALIZER_EPS, PARAM_SCALE_EPS, RMS_EPS
from pylo.optim.hyperv2.settings import EngineSettings, Prepared
from pylo.spec.shapes import factored_dims


def preconditioned_gradient(state: Dict[str, torch.Tensor], gw: torch.Tensor, split: Optional[Split] = None
                            ) -> torch.Tensor:
    """``fac_g``: ``g`` preconditioned by the (already updated) Adafactor moments, ``S + (k,)``."""
    dims = factored_dims(global_shape(gw.shape, split))
    if dims is None:
        return gw.unsqueeze(-1) * acc.safe_rsqrt(state["fac_diag"] + 1e-9)
    row, col = acc.row_col_factors(state["fac_row"], state["fac_col"], dims, split)
    return gw.unsqueeze(-1) * row * col


class NaiveEngine(Engine):
    """The naive backend for one parameter group on one device.

    Tensors with a split (``settings.splits``) are one rank's part of a sharded parameter: their
    reductions over the split axis add an all-reduce of the reduced statistics (``pylo.core.reduce``).
    """

    name = "naive"

    def __init__(self, settings: EngineSettings):
        self.s = settings

    def prepare(self, params, grads, states) -> Prepared:
        """LSTM inputs of the old tensors, then the accumulator update. Handles: ``(p, pw, gw, state, split)``."""
        layout, inputs = self.s.kernel_layout, self.s.inputs
        splits = self.s.splits or [None] * len(params)
        handles, rows = [], []
        for p, g, state, split in zip(params, grads, states, splits):
            pw = to_work(p, layout).to(torch.float32)
            gw = to_work(torch.clamp(g, -GRAD_CLIP, GRAD_CLIP), layout)
            rows.append(inputs.tensor(pw, state["mom"], state["rms"], split))
            handles.append((p, pw, gw, state, split))
        self._accumulate([h[2] for h in handles], [h[3] for h in handles], splits)
        return Prepared(handles, torch.stack(rows))

    def _accumulate(self, grads: List[torch.Tensor], states: List[Dict], splits: Sequence) -> None:
        for gw, state, split in zip(grads, states, splits):
            acc.AccumulatorSet.update(state, gw, *self.s.decays, split=split)

    def _interpolated(self, controls: torch.Tensor) -> Callable[[int], List[torch.Tensor]]:
        """Tensor ``i``'s MLP weights: ``interp_mult * mean_k(controls[i, k] * bank[k])``, one at a time."""
        mlp, interp_mult = self.s.mlp, self.s.interp_mult
        bank = mlp.flat_bank()
        return lambda i: mlp.unflatten(interp_mult * (bank * controls[i].unsqueeze(-1)).mean(0))

    def finish(self, prepared: Prepared, *, controls: torch.Tensor, lr_mults: torch.Tensor) -> None:
        """Each tensor's interpolated MLP, its step and the parameter update."""
        weights = self._interpolated(controls)
        for i, (p, pw, gw, state, split) in enumerate(prepared.handles):
            self._step_tensor(p, pw, gw, state, weights(i), lr_mults[i], split)

    def _step_tensor(self, p, pw, gw, state, weights: Sequence[torch.Tensor], lr_mult: torch.Tensor,
                     split: Optional[Split] = None) -> None:
        s = self.s
        fac_g = preconditioned_gradient(state, gw, split)
        groups = hyper_feature_groups(pw, gw, state["mom"], state["rms"], fac_g, state["fac_row"], state["fac_col"],
                                      state["fac_diag"], rms_eps=RMS_EPS, diag_groups=True, split=split)
        dims = range(pw.dim())
        groups = [second_moment_normalize(x, dims, NORMALIZER_EPS, split) for x in groups]
        out = s.mlp(groups, weights, s.widths)
        direction, magnitude = out[..., 0], out[..., 1]
        param_scale = torch.sqrt(reduce.mean_square(pw, split) + PARAM_SCALE_EPS)
        step = direction * (param_scale * torch.exp(magnitude * s.exp_mult)) * s.step_mult
        if s.use_lr_mult:
            step = lr_mult * step
        if s.weight_decay:
            step = step + s.weight_decay * pw
        subtract_update(p, step * s.lr, s.kernel_layout)
