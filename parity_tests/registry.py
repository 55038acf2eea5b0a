"""The parity registry: one :class:`ParityInfo` per optimizer, iterated by the pytest suite
(``parity_tests/test_parity.py``) and by ``pylo-parity`` alike.

An entry wraps the optimizer's torch-side facts (:mod:`pylo.parity_tests.optim_db`: classes, backends,
how a user builds it) with its JAX reference and its fixture configs (:mod:`pylo.parity_tests.configs`).
The torch optimizer is built from the checkpoint ``pylo-convert`` made of the reference's theta. The
JAX references are imported only when a case runs (JAX is an optional extra).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from pylo.parity_tests.configs import FIXTURES, ParityConfig, ParityFixtures
from pylo.optim.backend import resolve_backend
from pylo.parity_tests.optim_db import DATABASE, NamedParams, OptimizerInfo, backend_available, interpreted
from pylo.spec import optimizer_names

def _no_extras(opt: torch.optim.Optimizer, named: NamedParams) -> Dict:
    return {}


@dataclass(frozen=True)
class ParityInfo:
    """One optimizer's parity cases: the database entry, the JAX reference and the fixtures."""

    db: OptimizerInfo
    make_reference: Callable[[ParityConfig], Any]
    fixtures: ParityFixtures
    #: extra keyword arguments for the reference ``update`` (e.g. μLO's model_state), from the torch optimizer
    reference_extras: Callable[[torch.optim.Optimizer, NamedParams], Dict] = _no_extras

    @property
    def name(self) -> str:  # registry key and ``pylo-convert --optimizer`` name
        return self.db.name

    @property
    def configs(self) -> Tuple[ParityConfig, ...]:
        return self.fixtures.configs

    @property
    def interpreter_configs(self) -> Tuple[str, ...]:
        return self.fixtures.interpreter_configs

    @property
    def backends(self) -> Mapping[str, Mapping[str, Any]]:
        return self.db.backends

    @property
    def needs_loss(self) -> bool:
        return self.db.needs_loss

    @property
    def requires(self) -> Tuple[str, ...]:
        return self.db.requires

    def backend_kwargs(self, backend: str, parity: bool = False) -> Dict[str, Any]:
        """The kwargs that select ``backend``; in parity runs with tiny chunks (chunk boundaries exercised)."""
        return self.db.backend_kwargs(backend, small_chunks=parity)

    def make_torch(self, named: NamedParams, ckpt: str, config: ParityConfig,
                   backend: Mapping[str, Any]) -> torch.optim.Optimizer:
        """``X_naive`` built the user's way from the converted checkpoint, the config's kwargs and the backend's."""
        horizon = {} if self.db.horizon is None else {"num_steps": config.num_steps}
        return self.db.construct(self.db.naive, named, checkpoint_path=ckpt, **horizon, **config.torch_kwargs,
                                 **backend)


# ============================================================ JAX references
def _reference(module: str, name: str) -> Callable[[ParityConfig], Any]:
    """``make_reference`` for ``pylo.reference_jax.<module>.<name>(**config.reference_kwargs)``, imported lazily."""
    def make(config: ParityConfig):
        return getattr(importlib.import_module(f"pylo.reference_jax.{module}"), name)(**config.reference_kwargs)

    return make


def _velo_reference(config: ParityConfig):
    """HyperV2, wrapped in upstream's ``Prefab`` when the config has a ``prefab`` entry."""
    from pylo.reference_jax.hyper_v2 import HyperV2
    from pylo.reference_jax.prefab import Prefab

    kwargs = dict(config.reference_kwargs)
    prefab = kwargs.pop("prefab", None)
    lopt = HyperV2(**kwargs)
    return Prefab(lopt, **prefab) if prefab else lopt


def _mulo_extras(opt: torch.optim.Optimizer, named: NamedParams) -> Dict:
    """μLO's reference reads the μP per-tensor lr scales from ``model_state``: the torch groups' ``lr``."""
    import numpy as np

    lr_of = {id(p): group["lr"] for group in opt.param_groups for p in group["params"]}
    return {"model_state": {"mup_lrs_to_use": {n: np.float32(lr_of[id(p)]) for n, p in named}}}


#: every optimizer's JAX reference, by its :data:`pylo.spec.OPTIMIZERS` key
REFERENCES: Dict[str, Callable[[ParityConfig], Any]] = {
    "adafaclo": _reference("adafac_mlp_lopt", "AdafacMLPLOpt"),
    "mulo": _reference("adafac_mlp_lopt", "MuAdafacMLPLOpt"),
    "elo": _reference("elo", "ELO_AdafacMLPLOpt"),
    "velo": _velo_reference,
    "celo": _reference("celo", "Celo"),
    "celo2": _reference("celo2", "Celo2LOpt"),
    "elo_celo2": _reference("elo_celo2", "ELO_Celo2LOpt"),
}
REFERENCE_EXTRAS = {"mulo": _mulo_extras}


def _registry() -> List[ParityInfo]:
    missing = [n for n in optimizer_names() if n not in REFERENCES or n not in FIXTURES]
    if missing:  # pragma: no cover  (a new optimizer needs its reference and fixtures here)
        raise KeyError(f"no JAX reference or parity fixtures for {missing}")
    return [ParityInfo(info, REFERENCES[info.name], FIXTURES[info.name], REFERENCE_EXTRAS.get(info.name, _no_extras))
            for info in DATABASE]


#: every optimizer's parity cases, in the spec's order
REGISTRY: List[ParityInfo] = _registry()


def unavailable(config: ParityConfig) -> Optional[str]:
    """Why a case cannot run here (a real checkpoint that is absent), or None."""
    if config.real_theta is None:
        return None
    from pylo.parity_tests.fixtures import shared_checkpoints_dir

    path = shared_checkpoints_dir() / config.real_theta
    if not path.is_file():
        return f"real checkpoint {path} not found (set PYLO_SHARED_CHECKPOINTS)"
    return None


def get(name: str) -> ParityInfo:
    for info in REGISTRY:
        if info.name == name:
            return info
    raise KeyError(f"no parity entry {name!r}; known: {', '.join(i.name for i in REGISTRY)}")


def cases(optimizers: Optional[Sequence[str]] = None, configs: Optional[Sequence[str]] = None,
          backends: Optional[Sequence[str]] = None, device: str = "cpu", interpreter_subset: bool = False,
          quick: bool = False):
    """Yield ``(info, config, backend_name)`` for every selected case runnable on ``device``.

    ``interpreter_subset``: interpreted Triton cases only for the entry's ``interpreter_configs``
    (what the pytest suite runs without a GPU). ``quick``: one case per optimizer, its quick config
    on the backend the recommended class picks on ``device`` (``"auto"``: fused on a CPU, Triton on CUDA).
    """
    for info in REGISTRY:
        if optimizers and info.name not in optimizers:
            continue
        if quick:
            yield info, info.fixtures.quick_config, resolve_backend("auto", torch.device(device))
            continue
        for config in info.configs:
            if configs and config.name not in configs:
                continue
            for backend in info.backends:
                if (backends and backend not in backends) or not backend_available(backend, device):
                    continue
                if (interpreter_subset and interpreted(backend, device) and info.interpreter_configs
                        and config.name not in info.interpreter_configs):
                    continue
                yield info, config, backend
