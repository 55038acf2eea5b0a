"""The parity registry: one :class:`OptimizerInfo` per optimizer, iterated by the pytest
suite (``parity_tests/test_parity.py``) and by ``pylo-parity`` alike.

An entry names the torch optimizer, how to build it from a converted
checkpoint, the JAX reference, the ``pylo-convert`` name, the backends to run,
and its fixture configs. Adding an optimizer means adding an entry here.
"""

from __future__ import annotations

import importlib

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from pylo.optim import AdafacLO_naive, CELO2_naive, Celo_naive, ELO_CELO2_naive, ELO_naive, MuLO_naive, VeLO_naive
from pylo.parity_tests.fixtures import DEFAULT_SHAPES, GRAD_SCALES, Shape

NamedParams = List[Tuple[str, torch.nn.Parameter]]


@dataclass(frozen=True)
class ParityConfig:
    """One fixture: reference/torch settings, shapes, steps and the upstream file layout."""

    name: str
    description: str
    reference_kwargs: Mapping[str, Any] = field(default_factory=dict)
    torch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    shapes: Mapping[str, Shape] = field(default_factory=lambda: dict(DEFAULT_SHAPES))
    steps: int = 50
    num_steps: int = 1000  # the training horizon handed to both optimizers
    #: how the seeded theta is written before ``pylo-convert``: bare / parameter-checkpoint / tuple / pickle
    container: str = "bare"
    seed: int = 0
    grad_scales: Tuple[float, ...] = GRAD_SCALES
    #: standard deviation of the noise added to theta leaves that start at zero (biases, decay offsets)
    theta_noise: float = 0.1
    #: a real upstream checkpoint to use instead of a seeded theta, relative to the shared checkpoints
    #: folder (``fixtures.shared_checkpoints_dir()``); the case is skipped where it is absent
    real_theta: Optional[str] = None


@dataclass(frozen=True)
class OptimizerInfo:
    name: str  # registry key and ``pylo-convert --optimizer`` name
    torch_class: Callable
    make_torch: Callable[[NamedParams, str, ParityConfig, Mapping[str, Any]], torch.optim.Optimizer]
    make_reference: Callable[[ParityConfig], Any]
    configs: Tuple[ParityConfig, ...]
    #: extra keyword arguments for the reference ``update`` (e.g. μLO's model_state), from the torch optimizer
    reference_extras: Callable[[torch.optim.Optimizer, NamedParams], Dict] = lambda opt, named: {}
    backends: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: {"naive": {"foreach": False}, "foreach": {"foreach": True}})
    needs_loss: bool = False
    requires: Tuple[str, ...] = ()  # optional modules the torch side needs (e.g. "mup")
    #: extra kwargs per backend for parity runs only (e.g. tiny chunks so chunk boundaries are exercised)
    parity_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: a meta-network of the published size with random weights, for ``pylo-bench`` (None: not benchmarked)
    make_network: Optional[Callable[[], torch.nn.Module]] = None
    #: constructor kwargs ``pylo-bench`` adds (e.g. ``num_steps``)
    bench_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: configs whose ``triton`` case the pytest suite runs when Triton is *interpreted* (no GPU,
    #: ``TRITON_INTERPRET=1``; empty: all). The interpreter takes about a minute per case, so pytest
    #: checks the kernels on a representative subset; ``pylo-parity --backend triton`` and a GPU run all.
    interpreter_configs: Tuple[str, ...] = ()

    def backend_kwargs(self, backend: str, parity: bool = False) -> Dict[str, Any]:
        return {**self.backends[backend], **(self.parity_overrides.get(backend, {}) if parity else {})}


# ============================================================== AdafacLO, MuLO
def _from_checkpoint(cls) -> Callable:
    """``make_torch`` for an optimizer built from the converted checkpoint, the config's kwargs and the backend's."""
    def make(named: NamedParams, ckpt: str, config: ParityConfig, backend: Mapping) -> torch.optim.Optimizer:
        return cls(named, checkpoint_path=ckpt, **config.torch_kwargs, **backend)

    return make


def _reference(module: str, name: str) -> Callable:
    """``make_reference`` for ``pylo.reference_jax.<module>.<name>(**config.reference_kwargs)``, imported lazily
    (JAX is an optional extra)."""
    def make(config: ParityConfig):
        return getattr(importlib.import_module(f"pylo.reference_jax.{module}"), name)(**config.reference_kwargs)

    return make


def _mulo_torch(named: NamedParams, ckpt: str, config: ParityConfig, backend: Mapping) -> torch.optim.Optimizer:
    """MuLO as a user runs it: ``mup.set_base_shapes`` on a model, then ``MuLO(model.named_parameters())``."""
    import mup

    model = torch.nn.ParameterDict(dict(named))
    base = torch.nn.ParameterDict({n: torch.nn.Parameter(torch.zeros(_base_shape(p.shape))) for n, p in named})
    mup.set_base_shapes(model, base)
    return MuLO_naive(list(model.named_parameters()), checkpoint_path=ckpt, **config.torch_kwargs, **backend)


def _base_shape(shape) -> Tuple[int, ...]:
    """A narrower 'base model' shape: every dimension of size >= 4 halved (those become μP-infinite)."""
    return tuple(s // 2 if s >= 4 else s for s in shape)


def _mulo_extras(opt: torch.optim.Optimizer, named: NamedParams) -> Dict:
    import numpy as np

    lr_of = {id(p): group["lr"] for group in opt.param_groups for p in group["params"]}
    return {"model_state": {"mup_lrs_to_use": {n: np.float32(lr_of[id(p)]) for n, p in named}}}


MULO_SIZE = dict(hidden_size=32, hidden_layers=2, step_mult=0.01)
ADAFAC_BACKENDS = {"naive": {"backend": "naive"}, "foreach": {"backend": "foreach"}, "fused": {"backend": "fused"},
                   "triton": {"backend": "triton"}}
#: in parity runs the fused backend uses tiny chunks so that every fixture tensor spans several of them
SMALL_CHUNKS = {"fused": {"chunk_size": 7}}


def _meta_mlp_network() -> torch.nn.Module:
    from pylo.models import MetaMLP

    return MetaMLP(39, 32, 1)

ADAFACLO = OptimizerInfo(
    name="adafaclo",
    interpreter_configs=("mulo-size",),
    torch_class=AdafacLO_naive,
    make_torch=_from_checkpoint(AdafacLO_naive),
    make_reference=_reference("adafac_mlp_lopt", "AdafacMLPLOpt"),
    backends=ADAFAC_BACKENDS,
    parity_overrides=SMALL_CHUNKS,
    make_network=_meta_mlp_network,
    configs=(
        ParityConfig("mulo-size", "published defaults (hidden 32, step_mult 0.01), learned decays",
                     reference_kwargs=MULO_SIZE),
        ParityConfig("upstream-defaults", "AdafacMLPLOpt defaults (hidden 4, step_mult 1e-3), pickled theta",
                     torch_kwargs=dict(step_mult=0.001), container="pickle", seed=1),
    ),
)

MULO = OptimizerInfo(
    name="mulo",
    interpreter_configs=("clip",),
    torch_class=MuLO_naive,
    make_torch=_mulo_torch,
    make_reference=_reference("adafac_mlp_lopt", "MuAdafacMLPLOpt"),
    reference_extras=_mulo_extras,
    backends=ADAFAC_BACKENDS,
    parity_overrides=SMALL_CHUNKS,
    requires=("mup",),
    configs=(
        ParityConfig("clip", "μLO with global-norm clipping, μP per-tensor lr scales",
                     reference_kwargs=dict(MULO_SIZE, clip_grad=True), torch_kwargs=dict(clip_grad=True), seed=2),
        ParityConfig("noclip", "μLO without clipping, ParameterCheckpoint file",
                     reference_kwargs=MULO_SIZE, container="parameter-checkpoint", seed=3),
    ),
)

# ================================================================== VeLO, Celo
def _velo_torch(named: NamedParams, ckpt: str, config: ParityConfig, backend: Mapping) -> torch.optim.Optimizer:
    return VeLO_naive(named, checkpoint_path=ckpt, num_steps=config.num_steps, **config.torch_kwargs, **backend)


def _velo_reference(config: ParityConfig):
    from pylo.reference_jax.hyper_v2 import HyperV2
    from pylo.reference_jax.prefab import Prefab

    kwargs = dict(config.reference_kwargs)
    prefab = kwargs.pop("prefab", None)
    lopt = HyperV2(**kwargs)
    return Prefab(lopt, **prefab) if prefab else lopt


def _celo_torch(named: NamedParams, ckpt: str, config: ParityConfig, backend: Mapping) -> torch.optim.Optimizer:
    return Celo_naive(named, num_steps=config.num_steps, checkpoint_path=ckpt, **config.torch_kwargs, **backend)


RELEASED_VELO_FLAGS = dict(use_bugged_loss_features=False, use_bugged_next_lstm_state=False)
LEGACY_VELO_FLAGS = dict(use_bugged_loss_features=True, use_bugged_next_lstm_state=True)
VELO_PUBLISHED = dict(lstm_hidden_size=512, param_inits=256)
VELO_SMALL = dict(lstm_hidden_size=24, param_inits=8)
VELO_SHAPES = {**DEFAULT_SHAPES, "tensor5d": (2, 1, 3, 1, 4)}  # rank feature: five axes, two of size 1

HYPER_BACKENDS = {"naive": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"backend": "fused"},
                  "triton": {"backend": "triton"}}

#: Seeds and theta noise are chosen so the random meta-weights give a bounded trajectory: most random
#: VeLO weights make the parameters grow geometrically within 50 steps, and a diverging trajectory
#: amplifies float32 rounding exponentially (it tests the seed, not the port). Horizons are ones whose
#: loss-buffer decays XLA computes correctly rounded (see tests/test_loss_buffer.py).
def _hyper_network(**config) -> Callable[[], torch.nn.Module]:
    def make() -> torch.nn.Module:
        from pylo.models import HyperNetwork

        return HyperNetwork.random(**config)
    return make


VELO = OptimizerInfo(
    name="velo",
    torch_class=VeLO_naive,
    make_torch=_velo_torch,
    make_reference=_velo_reference,
    needs_loss=True,
    backends=HYPER_BACKENDS,
    parity_overrides=SMALL_CHUNKS,
    interpreter_configs=("small-short",),
    make_network=_hyper_network(lstm_hidden_size=512, param_inits=256),
    bench_kwargs=dict(num_steps=10_000),
    configs=(
        ParityConfig("published", "released VeLO: lstm 512, 256 MLPs, released flags, ParameterCheckpoint",
                     reference_kwargs=dict(VELO_PUBLISHED, **RELEASED_VELO_FLAGS), torch_kwargs=RELEASED_VELO_FLAGS,
                     shapes=VELO_SHAPES, steps=60, num_steps=1000, container="parameter-checkpoint",
                     theta_noise=1.0),
        ParityConfig("small-short", "lstm 24, 8 MLPs, released flags, num_steps 50 < 60 steps run",
                     reference_kwargs=dict(VELO_SMALL, **RELEASED_VELO_FLAGS), torch_kwargs=RELEASED_VELO_FLAGS,
                     shapes=VELO_SHAPES, steps=60, num_steps=50, seed=36),
        ParityConfig("published-legacy", "lstm 512, 256 MLPs, both legacy flags on, (theta, '', 0) file",
                     reference_kwargs=dict(VELO_PUBLISHED, **LEGACY_VELO_FLAGS), torch_kwargs=LEGACY_VELO_FLAGS,
                     shapes=VELO_SHAPES, steps=60, num_steps=1000, container="tuple", seed=5, theta_noise=0.5),
        ParityConfig("small-legacy-short", "lstm 24, 8 MLPs, both legacy flags on, num_steps 30",
                     reference_kwargs=dict(VELO_SMALL, **LEGACY_VELO_FLAGS), torch_kwargs=LEGACY_VELO_FLAGS,
                     shapes=VELO_SHAPES, steps=60, num_steps=30, seed=7),
        ParityConfig("small-prefab", "prefab: 2-step gradient averaging (horizon 120 > 60), weight decay 1e-4",
                     reference_kwargs=dict(VELO_SMALL, **RELEASED_VELO_FLAGS,
                                           prefab=dict(weight_decay=1e-4, max_training_steps=60)),
                     torch_kwargs=dict(RELEASED_VELO_FLAGS, weight_decay=1e-4, weight_decay_mode="prefab",
                                       max_training_steps=60),
                     shapes=VELO_SHAPES, steps=120, num_steps=120, seed=43),
    ),
)

CELO_RELEASED = dict(lstm_hidden_size=64, param_inits=1, train_phase=2)

CELO = OptimizerInfo(
    name="celo",
    torch_class=Celo_naive,
    make_torch=_celo_torch,
    make_reference=_reference("celo", "Celo"),
    needs_loss=True,
    backends=HYPER_BACKENDS,
    parity_overrides=SMALL_CHUNKS,
    interpreter_configs=("seeded-bank-phase1",),
    make_network=_hyper_network(lstm_input_size=18, lstm_hidden_size=64, param_inits=1),
    bench_kwargs=dict(num_steps=10_000),
    configs=(
        ParityConfig("seeded-released-size", "seeded theta at the released size (lstm 64, 1 MLP)",
                     reference_kwargs=CELO_RELEASED, shapes=VELO_SHAPES, steps=60, num_steps=200, seed=11,
                     theta_noise=0.5),
        ParityConfig("real", "the real Celo checkpoint (amoudgl/celo theta.state), num_steps 1000",
                     reference_kwargs=CELO_RELEASED, shapes=VELO_SHAPES, steps=60, num_steps=1000,
                     real_theta="celo/theta.state", seed=9),
        ParityConfig("real-short", "the real Celo checkpoint, num_steps 50 < 60 steps run",
                     reference_kwargs=CELO_RELEASED, shapes=VELO_SHAPES, steps=60, num_steps=50,
                     real_theta="celo/theta.state", seed=10),
        ParityConfig("seeded-bank-phase1", "seeded lstm 16 with a bank of 4 MLPs (softmax controls), train_phase 1",
                     reference_kwargs=dict(lstm_hidden_size=16, param_inits=4, train_phase=1),
                     torch_kwargs=dict(train_phase=1), shapes=VELO_SHAPES, steps=60, num_steps=100, seed=12,
                     theta_noise=0.5),
    ),
)


# ======================================================= CELO2, ELO-CELO2, ELO
#: gradient scales with a step far beyond +-1000 elementwise (CELO2's clamp acts; AdamW sees it raw)
HUGE_GRAD_SCALES = (0.1, 0.01, 1.0, 3000.0, 0.1, 10.0, 0.001, 0.3, 3.0)


def _constant_lr(lr: float) -> Dict[str, float]:
    """The scaling_l2o schedule that equals torch's constant ``lr``: init_lr = peak_lr = end_lr."""
    return dict(init_lr=lr, peak_lr=lr, end_lr=lr)


#: CELO2 and ELO-CELO2 run every backend; in parity runs the fused backend's tiny chunks also put every fixture
#: matrix through the in-place Newton-Schulz with 2-row blocks (``pylo.optim.celo2_fused``)
CELO2_BACKENDS = ADAFAC_BACKENDS


def _celo2_network() -> torch.nn.Module:
    from pylo.models import CELO2MLP

    return CELO2MLP()


CELO2 = OptimizerInfo(
    name="celo2",
    torch_class=CELO2_naive,
    make_torch=_from_checkpoint(CELO2_naive),
    make_reference=_reference("celo2", "Celo2LOpt"),
    backends=CELO2_BACKENDS,
    parity_overrides=SMALL_CHUNKS,
    interpreter_configs=("all-mlp",),
    make_network=_celo2_network,
    configs=(
        ParityConfig("celo2", "CELO2, lr 0.01, wd 0.1, adam_lr_mult 2, grads beyond the +-1000 clamp",
                     reference_kwargs=dict(_constant_lr(0.01), weight_decay=0.1, adam_lr_mult=2.0),
                     torch_kwargs=dict(lr=0.01, weight_decay=0.1, adam_lr_mult=2.0), grad_scales=HUGE_GRAD_SCALES),
        ParityConfig("clip", "CELO2, global-norm clipping, separate AdamW decay, pickled theta",
                     reference_kwargs=dict(_constant_lr(0.01), weight_decay=0.1, adam_weight_decay=0.02,
                                           clip_grad=True, clip_norm=1.0),
                     torch_kwargs=dict(lr=0.01, weight_decay=0.1, adam_weight_decay=0.02, clip_grad=True,
                                       clip_norm=1.0), container="pickle", seed=5),
        ParityConfig("base", "CELO2-base (orthogonalize=False), wd 0.05, grads beyond the clamp",
                     reference_kwargs=dict(_constant_lr(0.01), weight_decay=0.05, orthogonalize=False),
                     torch_kwargs=dict(lr=0.01, weight_decay=0.05, orthogonalize=False),
                     grad_scales=HUGE_GRAD_SCALES, seed=6),
        ParityConfig("all-mlp", "CELO2 without AdamW (1-D and embeddings through the MLP), exp_mult, "
                     "param_scale_mult, rmsmult", reference_kwargs=dict(
                         _constant_lr(0.01), weight_decay=0.1, use_adamw_for_1d=False, exp_mult=0.05,
                         param_scale_mult=True, rmsmult=0.7),
                     torch_kwargs=dict(lr=0.01, weight_decay=0.1, use_adamw_for_1d=False, exp_mult=0.05,
                                       param_scale_mult=True, rmsmult=0.7), seed=7),
        ParityConfig("defaults", "published defaults (lr 1e-3, no weight decay), ParameterCheckpoint file",
                     reference_kwargs=_constant_lr(0.001), container="parameter-checkpoint", seed=8),
    ),
)


ELO_CELO2 = OptimizerInfo(
    name="elo_celo2",
    torch_class=ELO_CELO2_naive,
    make_torch=_from_checkpoint(ELO_CELO2_naive),
    make_reference=_reference("elo_celo2", "ELO_Celo2LOpt"),
    backends=CELO2_BACKENDS,
    parity_overrides=SMALL_CHUNKS,
    interpreter_configs=("noclip",),
    make_network=_celo2_network,
    configs=(
        ParityConfig("defaults", "published defaults (lr 1e-3, wd 0.1, global-norm clipping), adam_lr_mult 20",
                     reference_kwargs=dict(_constant_lr(0.001), weight_decay=0.1, clip_grad=True, adam_lr_mult=20.0),
                     torch_kwargs=dict(adam_lr_mult=20.0), seed=9),
        ParityConfig("noclip", "no clipping and no clamp (as upstream), grads up to 3e4, lr 0.01, AdamW decay "
                     "0.01, pickled theta", reference_kwargs=dict(_constant_lr(0.01), weight_decay=0.1,
                                                                  adam_weight_decay=0.01),
                     torch_kwargs=dict(lr=0.01, weight_decay=0.1, adam_weight_decay=0.01, clip_grad=False,
                                       grad_clip_val=None), grad_scales=HUGE_GRAD_SCALES, container="pickle",
                     seed=10),
        ParityConfig("base-all-mlp", "orthogonalize=False, every tensor through the MLP, lr 0.01, clipping",
                     reference_kwargs=dict(_constant_lr(0.01), weight_decay=0.1, clip_grad=True, orthogonalize=False,
                                           use_adamw_for_1d=False),
                     torch_kwargs=dict(lr=0.01, orthogonalize=False, use_adamw_for_1d=False), seed=11),
    ),
)


def _elo_constant(lr: float) -> Dict[str, float]:
    """ELO's constant schedule: step_mult = init_lr = lr, no warmup."""
    return dict(step_mult=lr, init_lr=lr, warmup_fraction=0.0)


ELO_SIZE = dict(hidden_size=32, hidden_layers=2)

ELO = OptimizerInfo(
    name="elo",
    interpreter_configs=("clip",),
    torch_class=ELO_naive,
    make_torch=_from_checkpoint(ELO_naive),
    make_reference=_reference("elo", "ELO_AdafacMLPLOpt"),
    backends=ADAFAC_BACKENDS,
    parity_overrides=SMALL_CHUNKS,
    make_network=_meta_mlp_network,
    configs=(
        ParityConfig("clip", "published size (hidden 32), lr 0.01, wd 0.1, global-norm clipping",
                     reference_kwargs=dict(ELO_SIZE, **_elo_constant(0.01), weight_decay=0.1, clip_grad=True),
                     torch_kwargs=dict(lr=0.01, weight_decay=0.1, clip_grad=True), seed=12),
        ParityConfig("defaults", "published defaults (lr 1e-3), exp_mult 0.01, pickled theta",
                     reference_kwargs=dict(ELO_SIZE, **_elo_constant(0.001), exp_mult=0.01),
                     torch_kwargs=dict(exp_mult=0.01), container="pickle", seed=13),
    ),
)

REGISTRY: List[OptimizerInfo] = [ADAFACLO, MULO, VELO, CELO, CELO2, ELO_CELO2, ELO]


def unavailable(config: ParityConfig) -> Optional[str]:
    """Why a case cannot run here (a real checkpoint that is absent), or None."""
    if config.real_theta is None:
        return None
    from pylo.parity_tests.fixtures import shared_checkpoints_dir

    path = shared_checkpoints_dir() / config.real_theta
    if not path.is_file():
        return f"real checkpoint {path} not found (set PYLO_SHARED_CHECKPOINTS)"
    return None


def get(name: str) -> OptimizerInfo:
    for info in REGISTRY:
        if info.name == name:
            return info
    raise KeyError(f"no parity entry {name!r}; known: {', '.join(i.name for i in REGISTRY)}")


def backend_available(backend: str, device: str = "cpu") -> bool:
    """GPU-only backends run on CUDA, or on a CPU under ``TRITON_INTERPRET=1`` (Triton's interpreter)."""
    if backend != "triton":
        return True
    from pylo.kernels import triton_available

    return triton_available(torch.device(device))


def interpreted(backend: str, device: str = "cpu") -> bool:
    """Whether ``backend`` runs in Triton's interpreter on ``device`` (a CPU with ``TRITON_INTERPRET=1``)."""
    return backend == "triton" and torch.device(device).type == "cpu"


def cases(optimizers: Optional[Sequence[str]] = None, configs: Optional[Sequence[str]] = None,
          backends: Optional[Sequence[str]] = None, device: str = "cpu", interpreter_subset: bool = False):
    """Yield ``(info, config, backend_name)`` for every selected case runnable on ``device``.

    ``interpreter_subset``: interpreted Triton cases only for the entry's ``interpreter_configs``
    (what the pytest suite runs without a GPU).
    """
    for info in REGISTRY:
        if optimizers and info.name not in optimizers:
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
