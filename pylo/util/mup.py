"""μLO's readout layer for the ``mup`` package, without patching site-packages.

μLO's μP models scale the *output* of the readout, bias included
(``logits * output_mult / width``); ``mup.MuReadout`` scales its *input*. The
published port edited ``mup/layer.py`` on disk to get μLO's form; use this
subclass instead (``mup.set_base_shapes`` still recognises it as a readout).
"""

from __future__ import annotations

from typing import Dict

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

    def width_mult(self) -> float:
        """The weight's μP width multiplier; remembered, so that forward also runs where the weight has
        lost its ``infshape`` (FSDP2 gathers a new unsharded weight for each forward)."""
        infshape = getattr(self.weight, "infshape", None)
        if infshape is not None:
            self._pylo_width_mult = float(infshape.width_mult())
        elif getattr(self, "_pylo_width_mult", None) is None:
            raise RuntimeError("MuLOReadout has no μP base shapes: call mup.set_base_shapes(model, base_model)")
        return self._pylo_width_mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Linear.forward(self, x) * (self.output_mult / self.width_mult())


def record_base_shapes(model: nn.Module) -> Dict[str, object]:
    """The μP base shapes (``infshape``) of ``model``'s parameters by name, to carry across ``fully_shard``.

    FSDP2 replaces every parameter by a DTensor, dropping the ``infshape`` that ``mup.set_base_shapes``
    attached; :func:`restore_base_shapes` puts them back, and then MuLO runs under FSDP2:

    Example::

        mup.set_base_shapes(model, base_model)
        model.head.width_mult()                        # a MuLOReadout remembers its multiplier
        shapes = record_base_shapes(model)
        fully_shard(model)
        restore_base_shapes(model, shapes)
        opt = MuLO(model.parameters())
    """
    return {name: p.infshape for name, p in model.named_parameters() if hasattr(p, "infshape")}


def restore_base_shapes(model: nn.Module, shapes: Dict[str, object]) -> None:
    """Attach the recorded ``infshape`` of each parameter again (after ``fully_shard``), checking that it
    still describes the parameter's (global) shape."""
    for name, p in model.named_parameters():
        if name not in shapes:
            continue
        infshape = shapes[name]
        dims = tuple(int(d.dim) for d in infshape)
        if dims != tuple(p.shape):
            raise ValueError(f"restore_base_shapes: {name!r} has shape {tuple(p.shape)}, the recorded base shapes "
                             f"are for {dims}")
        for module in (m for m in model.modules() if isinstance(m, MuLOReadout) and m.weight is p):
            module.width_mult()
        p.infshape = infshape
