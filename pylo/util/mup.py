"""μLO's readout layer for the ``mup`` package, without patching site-packages.

μLO's μP models scale the *output* of the readout, bias included
(``logits * output_mult / width``); ``mup.MuReadout`` scales its *input*. The
published port edited ``mup/layer.py`` on disk to get μLO's form; use this
subclass instead (``mup.set_base_shapes`` still recognises it as a readout).
"""

from __future__ import annotations

import torch
from torch import nn

try:
    from mup import MuReadout
except ImportError as e:  # pragma: no cover - exercised only without mup
    raise ImportError("pylo.util.mup needs the `mup` package: pip install mup") from e


class MuLOReadout(MuReadout):
    """``MuReadout`` with μLO's output scaling: ``linear(x) * output_mult / width_mult``.

    Example:
        >>> head = MuLOReadout(256, 10)   # then mup.set_base_shapes(model, base_model)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Linear.forward(self, x) * (self.output_mult / self.width_mult())
