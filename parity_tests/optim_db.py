"""The optimizer database: what the generic tests and ``pylo-bench`` know about every optimizer, torch only.

In the spirit of PyTorch's ``OptimizerInfo`` (``torch/testing/_internal/common_optimizers.py``): one
:class:`OptimizerInfo` per optimizer of :data:`pylo.spec.OPTIMIZERS` (iterated, so no name is listed
again), holding

* its two classes, by name from the spec: ``X_naive`` and the recommended ``X``;
* a small seeded meta-network built in torch (passed as ``network=``: no checkpoint, no JAX), and the
  published-size network ``pylo-bench`` measures (``make_network``);
* its backends and the constructor kwargs that select each;
* valid inputs (constructor kwargs it accepts) and error inputs (kwargs it refuses, with the exception
  and a fragment of its message);
* whether ``step`` needs the loss (from the spec), the training horizon it takes (VeLO, Celo), and
  optional requirements: MuLO needs ``mup``, and gets its parameters the user's way
  (``mup.set_base_shapes`` on a model).

The parity registry (``registry.py``) wraps these entries with the JAX references and the fixtures.
This module imports torch and ``pylo`` only, never JAX.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type

import torch

from pylo.kernels import triton_available
from pylo.models import CELO2MLP, HyperNetwork, MetaMLP
from pylo.optim.backend import BACKENDS
from pylo.spec import OPTIMIZERS, OptimizerSpec
from pylo.spec.features import adafac_input_size, celo_lstm_input_size

NamedParams = List[Tuple[str, torch.nn.Parameter]]


@dataclass(frozen=True)
class OptimInput:
    """Constructor kwargs a class accepts (beside the parameters and ``network=``)."""

    desc: str
    kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class ErrorInput:
    """Constructor kwargs a class refuses: the exception it raises and a regex its message matches."""

    desc: str
    kwargs: Mapping[str, Any]
    error: Type[Exception] = ValueError
    match: str = ""


#: every backend selected by name (``backend="fused"``, ...)
BY_NAME = {b: {"backend": b} for b in BACKENDS}
#: naive and foreach selected by the published VeLO API's ``foreach=`` switch
FOREACH_SWITCH = {"naive": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"backend": "fused"},
                  "triton": {"backend": "triton"}}
#: tests use tiny chunks in the fused backend, so that every test tensor spans several of them
SMALL_CHUNKS = {"fused": {"chunk_size": 7}}

#: what every class accepts
COMMON_INPUTS = (
    OptimInput("defaults", {}),
    OptimInput("kernel_layout=jax", dict(kernel_layout="jax")),
    OptimInput("nonfinite_grads=upstream", dict(nonfinite_grads="upstream")),
)
#: what every class refuses (the backend ones are :func:`pylo.optim.backend.backend_options`' rules)
COMMON_ERRORS = (
    ErrorInput("lr=-1", dict(lr=-1.0), match="lr"),
    ErrorInput("backend=bogus", dict(backend="bogus"), match="backend"),
    ErrorInput("chunk_size=True", dict(chunk_size=True), match="chunk_size"),
    ErrorInput("chunk_size=0", dict(chunk_size=0), match="chunk_size"),
    ErrorInput("foreach=yes", dict(foreach="yes"), match="foreach"),
    ErrorInput("backend=fused,foreach=False", dict(backend="fused", foreach=False), match="contradicts"),
    ErrorInput("kernel_layout=bogus", dict(kernel_layout="bogus"), match="kernel_layout"),
    ErrorInput("nonfinite_grads=bogus", dict(nonfinite_grads="bogus"), match="nonfinite_grads"),
)


def _public_class(name: str):
    return getattr(importlib.import_module("pylo.optim"), name)


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer, as the torch-side tests and ``pylo-bench`` build and run it."""

    spec: OptimizerSpec
    #: ``make_small_network(seed)``: a small seeded meta-network for ``network=``
    make_small_network: Callable[[int], torch.nn.Module]
    #: backend name -> the constructor kwargs that select it
    backends: Mapping[str, Mapping[str, Any]]
    valid_inputs: Tuple[OptimInput, ...] = COMMON_INPUTS
    error_inputs: Tuple[ErrorInput, ...] = COMMON_ERRORS
    #: the training horizon ``num_steps`` the tests pass (None: the class takes none)
    horizon: Optional[int] = None
    requires: Tuple[str, ...] = ()  # optional modules the class needs (e.g. "mup")
    #: the parameters as a user hands them to the class, from ``(name, parameter)`` pairs
    prepare_params: Callable[[NamedParams], Any] = list
    #: a meta-network of the published size with random weights, for ``pylo-bench`` (None: not benchmarked)
    make_network: Optional[Callable[[], torch.nn.Module]] = None
    #: constructor kwargs ``pylo-bench`` adds (e.g. ``num_steps``)
    bench_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: extra kwargs per backend in tests (tiny chunks, so chunk boundaries are exercised)
    test_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: dict(SMALL_CHUNKS))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs_loss(self) -> bool:
        return self.spec.needs_loss

    @property
    def naive(self):
        """The pure-PyTorch class ``X_naive``."""
        return _public_class(self.spec.classes[1])

    @property
    def recommended(self):
        """The recommended class ``X`` (the ``"auto"`` backend)."""
        return _public_class(self.spec.classes[0])

    def backend_kwargs(self, backend: str, small_chunks: bool = False) -> Dict[str, Any]:
        """The kwargs that select ``backend`` (with the tests' tiny chunks when ``small_chunks``)."""
        return {**self.backends[backend], **(self.test_overrides.get(backend, {}) if small_chunks else {})}

    def construct(self, cls, named: NamedParams, **kwargs) -> torch.optim.Optimizer:
        """``cls`` built the user's way on ``named`` (the horizon added unless given)."""
        if self.horizon is not None:
            kwargs.setdefault("num_steps", self.horizon)
        return cls(self.prepare_params(named), **kwargs)

    def build(self, named: NamedParams, cls=None, run_on: Optional[str] = "naive", seed: int = 0,
              **kwargs) -> torch.optim.Optimizer:
        """``cls`` (default ``X_naive``) on the small network, with the kwargs that select backend ``run_on``
        (tiny chunks) and ``kwargs`` over them; ``run_on=None`` passes none (the class default)."""
        chosen = self.backend_kwargs(run_on, small_chunks=True) if run_on is not None else {}
        merged = {"network": self.make_small_network(seed), **chosen, **kwargs}
        return self.construct(cls or self.naive, named, **merged)


# ------------------------------------------------------------------ networks
def _seeded(seed: int, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``make()`` under ``torch.manual_seed(seed)``, leaving the global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _small_meta_mlp(seed: int = 0) -> torch.nn.Module:
    return _seeded(seed, lambda: MetaMLP(adafac_input_size(), 8, 1))


def _small_celo2_mlp(seed: int = 0) -> torch.nn.Module:
    return _seeded(seed, CELO2MLP)


def _small_hyper_network(**config) -> Callable[[int], torch.nn.Module]:
    def make(seed: int = 0) -> torch.nn.Module:
        return HyperNetwork.random(seed=seed, **config)

    return make


def _published_meta_mlp() -> torch.nn.Module:
    return MetaMLP(adafac_input_size(), 32, 1)


def _published_hyper_network(**config) -> Callable[[], torch.nn.Module]:
    def make() -> torch.nn.Module:
        return HyperNetwork.random(**config)

    return make


#: the small network of each meta-network kind (``OptimizerSpec.network``); per-optimizer ones below. The
#: hyper-networks' weight scale is chosen so that a step moves the test parameters visibly in bfloat16 (VeLO's
#: default scale 0.05 moves them by 1e-7) and the trajectory stays bounded
SMALL_NETWORKS = {"meta_mlp": _small_meta_mlp, "celo2_mlp": _small_celo2_mlp,
                  "hyper_network": _small_hyper_network(std=0.15, lstm_hidden_size=24, param_inits=8)}


# ------------------------------------------------------------------- μLO's μP
def _base_shape(shape) -> Tuple[int, ...]:
    """A narrower 'base model' shape: every dimension of size >= 4 halved (those become μP-infinite)."""
    return tuple(s // 2 if s >= 4 else s for s in shape)


def with_base_shapes(named: NamedParams) -> NamedParams:
    """MuLO's parameters as a user hands them: ``mup.set_base_shapes`` on a model, then its
    ``named_parameters()`` (the same parameter objects, now with an ``infshape``)."""
    import mup

    model = torch.nn.ParameterDict(dict(named))
    base = torch.nn.ParameterDict({n: torch.nn.Parameter(torch.zeros(_base_shape(p.shape))) for n, p in named})
    mup.set_base_shapes(model, base)
    return list(model.named_parameters())


# ------------------------------------------------------- the optimizers' facts
def _inputs(*extra: OptimInput) -> Tuple[OptimInput, ...]:
    return COMMON_INPUTS + extra


def _errors(*extra: ErrorInput) -> Tuple[ErrorInput, ...]:
    return COMMON_ERRORS + extra


NEGATIVE_DECAY = ErrorInput("weight_decay=-1", dict(weight_decay=-1.0), match="weight_decay")
ZERO_CLIP_NORM = ErrorInput("clip_norm=0", dict(clip_norm=0.0), match="clip_norm")
MUP_LRS = ErrorInput("mup_lrs", dict(mup_lrs={"w": 1.0}), match="mup_lrs")
ZERO_HORIZON = ErrorInput("num_steps=0", dict(num_steps=0), match="num_steps")
#: the CELO2 family's inputs (CELO2 and ELO-CELO2 take the same arguments)
CELO2_INPUTS = (
    OptimInput("orthogonalize=False", dict(orthogonalize=False)),
    OptimInput("all-mlp", dict(use_adamw_for_1d=False, exp_mult=0.05, param_scale_mult=True, rmsmult=0.7)),
)
CELO2_ERRORS = (
    NEGATIVE_DECAY, ZERO_CLIP_NORM,
    ErrorInput("ns_coeffs of two", dict(ns_coeffs=(1.0, 2.0)), match="ns_coeffs"),
    ErrorInput("ns_iters=-1", dict(ns_iters=-1), match="ns_iters"),
)

#: per optimizer, what differs from :class:`OptimizerInfo`'s defaults and its family's
FACTS: Dict[str, Dict[str, Any]] = {
    "adafaclo": dict(
        make_network=_published_meta_mlp,
        valid_inputs=_inputs(OptimInput("lr+weight_decay", dict(lr=0.5, weight_decay=0.01)),
                             OptimInput("clip_grad", dict(clip_grad=True)),
                             OptimInput("max_grad_norm", dict(max_grad_norm=0.5)),
                             OptimInput("step_mult+exp_mult", dict(step_mult=0.001, exp_mult=0.01))),
        error_inputs=_errors(NEGATIVE_DECAY, MUP_LRS,
                             ErrorInput("max_grad_norm=0", dict(max_grad_norm=0.0), match="max_grad_norm"))),
    "mulo": dict(
        requires=("mup",), prepare_params=with_base_shapes,
        valid_inputs=_inputs(OptimInput("clip_grad", dict(clip_grad=True)), OptimInput("lr=0.5", dict(lr=0.5))),
        error_inputs=_errors(NEGATIVE_DECAY, MUP_LRS)),
    "elo": dict(
        make_network=_published_meta_mlp,
        valid_inputs=_inputs(OptimInput("lr+weight_decay+clip", dict(lr=0.01, weight_decay=0.1, clip_grad=True)),
                             OptimInput("clip_norm", dict(clip_grad=True, clip_norm=0.5)),
                             OptimInput("exp_mult", dict(exp_mult=0.01))),
        error_inputs=_errors(NEGATIVE_DECAY, ZERO_CLIP_NORM,
                             ErrorInput("two rms decays", dict(initial_rms_decays=(0.9, 0.99)), match="decays"))),
    "velo": dict(
        horizon=1000, make_network=_published_hyper_network(lstm_hidden_size=512, param_inits=256),
        bench_kwargs=dict(num_steps=10_000),
        valid_inputs=_inputs(
            OptimInput("legacy flags", dict(use_bugged_loss_features=True, use_bugged_next_lstm_state=True)),
            OptimInput("prefab decay", dict(weight_decay=1e-4, weight_decay_mode="prefab", max_training_steps=500)),
            OptimInput("clip", dict(clip_grad=True, max_grad_norm=0.5)),
            OptimInput("num_steps=3", dict(num_steps=3))),
        error_inputs=_errors(
            NEGATIVE_DECAY, MUP_LRS, ZERO_HORIZON,
            ErrorInput("weight_decay_mode=bogus", dict(weight_decay_mode="bogus"), match="weight_decay_mode"),
            ErrorInput("max_training_steps=0", dict(max_training_steps=0), match="max_training_steps"))),
    "celo": dict(
        horizon=1000, bench_kwargs=dict(num_steps=10_000),
        make_small_network=_small_hyper_network(std=0.5, lstm_input_size=celo_lstm_input_size(),
                                                lstm_hidden_size=16, param_inits=1),
        make_network=_published_hyper_network(lstm_input_size=celo_lstm_input_size(), lstm_hidden_size=64,
                                              param_inits=1),
        valid_inputs=_inputs(OptimInput("train_phase=1", dict(train_phase=1)),
                             OptimInput("weight_decay", dict(weight_decay=0.01)),
                             OptimInput("clip", dict(clip_grad=True))),
        error_inputs=_errors(NEGATIVE_DECAY, ZERO_HORIZON,
                             ErrorInput("train_phase=3", dict(train_phase=3), match="train_phase"),
                             ErrorInput("no network", dict(network=None), match="meta-network"))),
    "celo2": dict(
        make_network=CELO2MLP,
        valid_inputs=_inputs(*CELO2_INPUTS,
                             OptimInput("lr+weight_decay+adam_lr_mult",
                                        dict(lr=0.01, weight_decay=0.1, adam_lr_mult=2.0)),
                             OptimInput("clip+adam decay",
                                        dict(clip_grad=True, clip_norm=1.0, adam_weight_decay=0.02))),
        error_inputs=_errors(*CELO2_ERRORS,
                             ErrorInput("adam_betas=(0.9,)", dict(adam_betas=(0.9,)), match="adam_betas"),
                             ErrorInput("adam_betas[1]=1", dict(adam_betas=(0.9, 1.0)), match=r"adam_betas\[1\]"),
                             ErrorInput("adam_eps=-1", dict(adam_eps=-1.0), match="adam_eps"))),
    "elo_celo2": dict(
        make_network=CELO2MLP,
        valid_inputs=_inputs(*CELO2_INPUTS, OptimInput("adam_lr_mult", dict(adam_lr_mult=20.0)),
                             OptimInput("no clip, no clamp", dict(clip_grad=False, grad_clip_val=None,
                                                                  adam_weight_decay=0.01))),
        error_inputs=_errors(*CELO2_ERRORS)),
}
#: VeLO and Celo keep the published VeLO API's ``foreach=`` switch for naive/foreach
FAMILY_BACKENDS = {"hyperv2": FOREACH_SWITCH}


def _entry(spec: OptimizerSpec) -> OptimizerInfo:
    unknown = set(FACTS) - set(OPTIMIZERS)
    if unknown:  # pragma: no cover  (a typo, or an optimizer the spec does not declare)
        raise KeyError(f"facts for optimizers pylo.spec does not declare: {sorted(unknown)}")
    facts = {"make_small_network": SMALL_NETWORKS[spec.network],
             "backends": FAMILY_BACKENDS.get(spec.family, BY_NAME), **FACTS.get(spec.name, {})}
    return OptimizerInfo(spec=spec, **facts)


#: every optimizer, in the spec's order
DATABASE: Tuple[OptimizerInfo, ...] = tuple(_entry(spec) for spec in OPTIMIZERS.values())


def get(name: str) -> OptimizerInfo:
    for info in DATABASE:
        if info.name == name:
            return info
    raise KeyError(f"no optimizer {name!r}; known: {', '.join(i.name for i in DATABASE)}")


def backend_available(backend: str, device: str = "cpu") -> bool:
    """GPU-only backends run on CUDA, or on a CPU under ``TRITON_INTERPRET=1`` (Triton's interpreter)."""
    return backend != "triton" or triton_available(torch.device(device))


def interpreted(backend: str, device: str = "cpu") -> bool:
    """Whether ``backend`` runs in Triton's interpreter on ``device`` (a CPU with ``TRITON_INTERPRET=1``)."""
    return backend == "triton" and torch.device(device).type == "cpu"
