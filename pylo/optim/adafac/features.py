"""The 39 MLP inputs of AdafacMLPLOpt (AdafacLO, MuLO, ELO), built whole (naive and foreach engines).

The fused and Triton engines compute the same features chunk by chunk (``fused.py``, ``kernels.py``).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from pylo.core.features import adafactor_features, second_moment_normalize, tanh_embedding
from pylo.core.reduce import Split, global_shape
from pylo.optim.adafac.constants import NORMALIZER_EPS, NUM_STEP_FEATURES, RMS_EPS
from pylo.spec.shapes import factored_dims


def adafaclo_inputs(p: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor], fac_g: torch.Tensor,
                    split: Optional[Split] = None) -> torch.Tensor:
    """The 39 MLP inputs of one work-layout tensor from its updated state, shape ``S + (39,)``.

    28 accumulator features (``g, p, m, rms, m/sqrt(rms), 1/sqrt(rms), fac_g`` and the Adafactor
    row/column features), second-moment normalised over the tensor's axes, then 11 ``tanh``
    features of the iteration. With a ``split`` (``p`` one rank's part of a split tensor) the
    factored axes are the whole tensor's and the normaliser's moments sum over all ranks.
    """
    m, rms = state["mom"], state["rms"]
    rsqrt_rms = torch.rsqrt(rms + RMS_EPS)
    groups = [g.unsqueeze(-1), p.unsqueeze(-1), m, rms, m * rsqrt_rms, rsqrt_rms, fac_g]
    groups += adafactor_features(m, state["fac_row"], state["fac_col"], state["fac_diag"], p.shape,
                                 factored_dims(global_shape(p.shape, split)), diag_mom_eps=RMS_EPS, split=split)
    x = second_moment_normalize(torch.cat(groups, dim=-1), range(p.dim()), NORMALIZER_EPS, split)
    step_features = tanh_embedding(state["step"]).expand(tuple(p.shape) + (NUM_STEP_FEATURES,))
    return torch.cat([x, step_features], dim=-1)
