"""The parity fixtures: per optimizer, the configs its parity cases run (data only: no torch, no JAX).

A :class:`ParityConfig` gives the JAX reference's and the torch optimizer's settings, the parameter
shapes, the number of steps, the training horizon and how the seeded theta is written before
``pylo-convert``. The registry (``registry.py``) pairs these with the optimizer database and the
JAX references.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from pylo.parity_tests.fixtures import DEFAULT_SHAPES, GRAD_SCALES, Shape


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
class ParityFixtures:
    """One optimizer's configs, and those whose ``triton`` case the pytest suite runs when Triton is
    *interpreted* (no GPU, ``TRITON_INTERPRET=1``; empty: all). The interpreter takes about a minute per
    case, so pytest checks the kernels on a representative subset; ``pylo-parity --backend triton`` and a
    GPU run all."""

    configs: Tuple[ParityConfig, ...]
    interpreter_configs: Tuple[str, ...] = ()
    #: the config of the quick run (``pylo-parity`` without ``--full``; default: the first)
    quick: Optional[str] = None

    @property
    def quick_config(self) -> ParityConfig:
        name = self.quick or self.configs[0].name
        return next(c for c in self.configs if c.name == name)


# ============================================================== AdafacLO, MuLO
MULO_SIZE = dict(hidden_size=32, hidden_layers=2, step_mult=0.01)

ADAFACLO = ParityFixtures(interpreter_configs=("mulo-size",), configs=(
    ParityConfig("mulo-size", "published defaults (hidden 32, step_mult 0.01), learned decays",
                 reference_kwargs=MULO_SIZE),
    ParityConfig("upstream-defaults", "AdafacMLPLOpt defaults (hidden 4, step_mult 1e-3), pickled theta",
                 torch_kwargs=dict(step_mult=0.001), container="pickle", seed=1),
))

MULO = ParityFixtures(interpreter_configs=("clip",), configs=(
    ParityConfig("clip", "μLO with global-norm clipping, μP per-tensor lr scales",
                 reference_kwargs=dict(MULO_SIZE, clip_grad=True), torch_kwargs=dict(clip_grad=True), seed=2),
    ParityConfig("noclip", "μLO without clipping, ParameterCheckpoint file",
                 reference_kwargs=MULO_SIZE, container="parameter-checkpoint", seed=3),
))

# ================================================================== VeLO, Celo
RELEASED_VELO_FLAGS = dict(use_bugged_loss_features=False, use_bugged_next_lstm_state=False)
LEGACY_VELO_FLAGS = dict(use_bugged_loss_features=True, use_bugged_next_lstm_state=True)
VELO_PUBLISHED = dict(lstm_hidden_size=512, param_inits=256)
VELO_SMALL = dict(lstm_hidden_size=24, param_inits=8)
VELO_SHAPES = {**DEFAULT_SHAPES, "tensor5d": (2, 1, 3, 1, 4)}  # rank feature: five axes, two of size 1

#: Seeds and theta noise are chosen so the random meta-weights give a bounded trajectory: most random
#: VeLO weights make the parameters grow geometrically within 50 steps, and a diverging trajectory
#: amplifies float32 rounding exponentially (it tests the seed, not the port). Horizons are ones whose
#: loss-buffer decays XLA computes correctly rounded (see tests/hyperv2/test_loss_buffer.py).
VELO = ParityFixtures(interpreter_configs=("small-short",), quick="small-short", configs=(
    ParityConfig("published", "released VeLO: lstm 512, 256 MLPs, released flags, ParameterCheckpoint",
                 reference_kwargs=dict(VELO_PUBLISHED, **RELEASED_VELO_FLAGS), torch_kwargs=RELEASED_VELO_FLAGS,
                 shapes=VELO_SHAPES, steps=60, num_steps=1000, container="parameter-checkpoint", theta_noise=1.0),
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
))

CELO_RELEASED = dict(lstm_hidden_size=64, param_inits=1, train_phase=2)

CELO = ParityFixtures(interpreter_configs=("seeded-bank-phase1",), configs=(
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
))


# ======================================================= CELO2, ELO-CELO2, ELO
#: gradient scales with a step far beyond +-1000 elementwise (CELO2's clamp acts; AdamW sees it raw)
HUGE_GRAD_SCALES = (0.1, 0.01, 1.0, 3000.0, 0.1, 10.0, 0.001, 0.3, 3.0)


def _constant_lr(lr: float) -> Dict[str, float]:
    """The scaling_l2o schedule that equals torch's constant ``lr``: init_lr = peak_lr = end_lr."""
    return dict(init_lr=lr, peak_lr=lr, end_lr=lr)


#: CELO2 and ELO-CELO2 run every backend; in parity runs the fused backend's tiny chunks also put every fixture
#: matrix through the in-place Newton-Schulz with 2-row blocks (the CELO2 family's fused backend)
CELO2 = ParityFixtures(interpreter_configs=("all-mlp",), configs=(
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
))

ELO_CELO2 = ParityFixtures(interpreter_configs=("noclip",), configs=(
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
))


def _elo_constant(lr: float) -> Dict[str, float]:
    """ELO's constant schedule: step_mult = init_lr = lr, no warmup."""
    return dict(step_mult=lr, init_lr=lr, warmup_fraction=0.0)


ELO_SIZE = dict(hidden_size=32, hidden_layers=2)

ELO = ParityFixtures(interpreter_configs=("clip",), configs=(
    ParityConfig("clip", "published size (hidden 32), lr 0.01, wd 0.1, global-norm clipping",
                 reference_kwargs=dict(ELO_SIZE, **_elo_constant(0.01), weight_decay=0.1, clip_grad=True),
                 torch_kwargs=dict(lr=0.01, weight_decay=0.1, clip_grad=True), seed=12),
    ParityConfig("defaults", "published defaults (lr 1e-3), exp_mult 0.01, pickled theta",
                 reference_kwargs=dict(ELO_SIZE, **_elo_constant(0.001), exp_mult=0.01),
                 torch_kwargs=dict(exp_mult=0.01), container="pickle", seed=13),
))

#: every optimizer's fixtures, by its :data:`pylo.spec.OPTIMIZERS` key
FIXTURES: Dict[str, ParityFixtures] = {"adafaclo": ADAFACLO, "mulo": MULO, "elo": ELO, "velo": VELO, "celo": CELO,
                                       "celo2": CELO2, "elo_celo2": ELO_CELO2}
