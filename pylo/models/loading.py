"""Finding and strictly loading an optimizer's meta-network.

Precedence, the same for every pylo optimizer: an explicit ``network=`` module,
then ``checkpoint_path=`` (a local folder or file), then the hub key. Loading is
strict: a missing, unexpected or wrongly shaped tensor is an error naming it,
never a silent random initialisation.

Nothing is printed: each load is logged at INFO on the ``pylo`` logger
(``logging.getLogger("pylo").setLevel(logging.INFO)`` with a handler shows where
each meta-network came from).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from pylo.checkpoint_io import META_KEY, Checkpoint, read_checkpoint
from pylo.errors import CheckpointError
from pylo.hub import fetch_hub_checkpoint
from pylo.spec import OPTIMIZERS

log = logging.getLogger("pylo")

def _identity_layout(tensors: Dict[str, torch.Tensor], config: Dict) -> Dict[str, torch.Tensor]:
    return tensors


@dataclass(frozen=True)
class NetworkSpec:
    """How one or more optimizers build and fill their meta-network.

    ``build(config)`` makes the module from a checkpoint config (constructor
    arguments at top level, missing ones taken from the optimizer's own
    arguments); ``adapt`` maps a published hub layout onto the module's keys.
    ``optimizers`` are the optimizer names (``pylo.spec.OPTIMIZERS``) whose checkpoints fit.
    """

    name: str
    module_type: type
    optimizers: Tuple[str, ...]
    build: Callable[[Dict], nn.Module]
    adapt: Callable[[Dict[str, torch.Tensor], Dict], Dict[str, torch.Tensor]] = field(default=_identity_layout)

    def __post_init__(self):
        if isinstance(self.optimizers, str) or not self.optimizers:
            raise ValueError(f"NetworkSpec {self.name!r}: optimizers must be a non-empty tuple of pylo.spec.OPTIMIZERS "
                             f"names, got {self.optimizers!r}")
        unknown = [o for o in self.optimizers if o not in OPTIMIZERS]
        if unknown:
            raise ValueError(f"NetworkSpec {self.name!r}: {', '.join(map(repr, unknown))} not in pylo.spec.OPTIMIZERS "
                             f"(known: {', '.join(OPTIMIZERS)})")


def load_network(spec: NetworkSpec, *, network: Optional[nn.Module] = None, checkpoint_path=None,
                 hub_keys: Sequence[str] = (), fallback_config: Optional[Dict] = None,
                 hub_merge: Optional[Callable[[Sequence[Checkpoint]], Checkpoint]] = None
                 ) -> Tuple[nn.Module, Dict]:
    """Return ``(module, config)`` following network > checkpoint_path > hub keys."""
    fallback_config = dict(fallback_config or {})
    if network is not None:
        if not isinstance(network, spec.module_type):
            raise TypeError(f"network must be a {spec.module_type.__name__}, got {type(network).__name__}")
        return network, {}
    if checkpoint_path is not None:
        ckpt = read_checkpoint(checkpoint_path)
    else:
        keys = [k for k in hub_keys if k]
        if not keys:
            raise ValueError(f"no {spec.name} meta-network: pass network=, checkpoint_path= or a hub key")
        parts = [fetch_hub_checkpoint(k) for k in keys]
        ckpt = parts[0] if len(parts) == 1 else hub_merge(parts)
    return module_from_checkpoint(spec, ckpt, fallback_config), ckpt.config


def module_from_checkpoint(spec: NetworkSpec, ckpt: Checkpoint, fallback_config: Optional[Dict] = None) -> nn.Module:
    recorded = ckpt.optimizer
    if recorded is not None and recorded not in spec.optimizers:
        raise CheckpointError(
            f"{ckpt.origin}: checkpoint is for optimizer {recorded!r}, which does not fit {spec.name} "
            f"(expected one of {', '.join(spec.optimizers)})")
    config = {**(fallback_config or {}), **{k: v for k, v in ckpt.config.items() if k != META_KEY}}
    try:
        module = spec.build(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.origin}: config does not describe a {spec.name}: {e}") from None
    tensors = spec.adapt(dict(ckpt.tensors), config)
    load_strict(module, tensors, ckpt.origin)
    log.info("%s meta-network loaded from %s (%d tensors, %d weights)", spec.name, ckpt.origin, len(tensors),
             sum(t.numel() for t in tensors.values()))
    return module


def load_strict(module: nn.Module, tensors: Dict[str, torch.Tensor], origin: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line message naming every problem."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs expected {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(tensors)) if tensors[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append("missing tensors " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected tensors " + ", ".join(unexpected))
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes))
    if problems:
        raise CheckpointError(f"{origin}: does not fit {type(module).__name__}: " + " | ".join(problems))
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{origin}: non-finite values in " + ", ".join(sorted(bad)))
    module.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
