"""AdafacLO: upstream ``AdafacMLPLOpt`` (small_fc_lopt) with μLO's additions.

Reference: ``learned_optimization/learned_optimizers/adafac_mlp_lopt.py`` and
``mu_learned_optimization/src/mup_adafac_mlp_lopt.py``; our JAX twin is
``pylo.reference_jax.adafac_mlp_lopt``.

Per tensor and step (``g`` the gradient, all in float32, conv kernels seen in
JAX's HWIO layout, scalars as shape (1,)):

1. optional global-norm clipping over *all* groups, then ``nan_to_num`` (μLO);
2. momentum, RMS and Adafactor accumulators with learned decays
   ``1 - (1 - d0) * exp(10 * theta)``;
3. 28 features (``g, p, m, rms, m/sqrt(rms), 1/sqrt(rms), fac_g`` and the
   Adafactor row/column features), second-moment normalised over the
   parameter's axes, plus 11 ``tanh`` features of the iteration: 39 inputs;
4. the MLP gives direction ``d`` and magnitude ``mu``;
   ``step = d * exp(mu * exp_mult) * step_mult``;
5. ``p <- p - lr * (step + weight_decay * p)``. ``lr`` is the μP per-parameter
   scale of upstream μLO (``MuLO`` sets it per group); ``weight_decay`` is a
   pylo addition (upstream has none) and is 0 by default.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pylo.core import accumulators as acc
from pylo.core.decays import learned_decays
from pylo.core.features import TANH_TIMESCALES, adafactor_features, second_moment_normalize, tanh_embedding
from pylo.core.layout import from_work, to_work
from pylo.spec.shapes import KERNEL_LAYOUTS, factored_dims
from pylo.kernels import triton_available
from pylo.models.loading import NetworkSpec, load_network
from pylo.models.meta_mlp import MetaMLP
from pylo.optim.base import LearnedOptimizer, check_number

#: learned decay offsets of the released μLO checkpoint (the published defaults)
MULO_MOMENTUM_OFFSETS = [0.15216392, 0.14245212, 0.06812963]
MULO_RMS_OFFSETS = [0.01079706]
MULO_ADAFACTOR_OFFSETS = [0.18621896, -0.10864615, -0.06185547]

NUM_FEATURES = 39  # 28 normalised accumulator features + 11 tanh step features
RMS_EPS = 1e-6
NORMALIZER_EPS = 1e-5


def _build_meta_mlp(config: Dict) -> MetaMLP:
    return MetaMLP(**{k: config[k] for k in ("input_size", "hidden_size", "hidden_layers",
                                             "momentum_decays", "rms_decays", "adafactor_decays") if k in config})


META_MLP_SPEC = NetworkSpec(name="AdafacLO MetaMLP", module_type=MetaMLP, optimizers=("adafaclo", "mulo"),
                            build=_build_meta_mlp)


def adafaclo_inputs(p: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor], fac_g: torch.Tensor
                    ) -> torch.Tensor:
    """The 39 MLP inputs of one work-layout tensor, shape ``S + (39,)``."""
    m, rms = state["mom"], state["rms"]
    rsqrt_rms = torch.rsqrt(rms + RMS_EPS)
    groups = [g.unsqueeze(-1), p.unsqueeze(-1), m, rms, m * rsqrt_rms, rsqrt_rms, fac_g]
    groups += adafactor_features(m, state["fac_row"], state["fac_col"], state["fac_diag"], p.shape,
                                 factored_dims(p.shape), diag_mom_eps=RMS_EPS)
    x = second_moment_normalize(torch.cat(groups, dim=-1), range(p.dim()), NORMALIZER_EPS)
    step_features = tanh_embedding(state["step"]).expand(tuple(p.shape) + (len(TANH_TIMESCALES),))
    return torch.cat([x, step_features], dim=-1)


BACKENDS = ("naive", "foreach", "fused", "triton")


def adafaclo(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict[str, torch.Tensor]], *,
             network: torch.nn.Module, decays: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], lr: float,
             exp_mult: float, step_mult: float, weight_decay: float, kernel_layout: str,
             backend: str = "naive", workspaces: Optional[Dict] = None, chunk_size: int = 16384,
             decay_values: Optional[Tuple[List[float], List[float], List[float]]] = None) -> None:
    """Functional AdafacLO update of one parameter group on one device (gradients already sanitised).

    Backends compute the same update within float32 round-off:
    ``"naive"`` goes tensor by tensor; ``"foreach"`` updates momentum and RMS
    with multi-tensor kernels and runs the MLP once over all tensors;
    ``"fused"`` (``pylo.optim.adafaclo_fused``) works in bounded memory with the
    normaliser folded into the first layer; ``"triton"``
    (``pylo.optim.adafaclo_triton``) runs the same plan as two GPU kernels per
    tensor and needs ``decay_values``, the decays as Python floats.
    """
    if not params:
        return
    kwargs = dict(network=network, decays=decays, lr=lr, exp_mult=exp_mult, step_mult=step_mult,
                  weight_decay=weight_decay, kernel_layout=kernel_layout)
    if backend == "triton":
        from pylo.optim.adafaclo_triton import triton_adafaclo

        triton_adafaclo(params, grads, states, decay_values=decay_values, **kwargs)
    elif backend == "fused":
        from pylo.optim.adafaclo_fused import fused_adafaclo

        fused_adafaclo(params, grads, states, workspaces=workspaces, chunk=chunk_size, **kwargs)
    elif backend == "foreach":
        _multi_tensor_adafaclo(params, grads, states, **kwargs)
    elif backend == "naive":
        _single_tensor_adafaclo(params, grads, states, **kwargs)
    else:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"``: Triton kernels on CUDA when available, else the fused CPU/GPU backend."""
    if backend != "auto":
        return backend
    return "triton" if device.type == "cuda" and triton_available(device) else "fused"


def _init_state(state, p_work: torch.Tensor, decays) -> None:
    if not state:
        acc.AccumulatorSet.init(state, p_work.shape, *(d.numel() for d in decays), p_work.device)
        state["step"] = torch.zeros((), dtype=torch.float32, device=p_work.device)


def _apply(p: torch.Tensor, p_work: torch.Tensor, out: torch.Tensor, *, lr, exp_mult, step_mult, weight_decay,
           kernel_layout) -> None:
    step = out[..., 0] * torch.exp(out[..., 1] * exp_mult) * step_mult
    if weight_decay:
        step = step + weight_decay * p_work
    update = from_work(step * lr, p, kernel_layout)
    if p.dtype == torch.float32:
        p.sub_(update)
    else:
        p.copy_((p.to(torch.float32) - update).to(p.dtype))


def _single_tensor_adafaclo(params, grads, states, *, network, decays, lr, exp_mult, step_mult, weight_decay,
                            kernel_layout) -> None:
    mom_d, rms_d, fac_d = decays
    for p, g, state in zip(params, grads, states):
        pw = to_work(p, kernel_layout).to(torch.float32)
        gw = to_work(g, kernel_layout)
        _init_state(state, pw, decays)
        fac_g = acc.AccumulatorSet.update(state, gw, mom_d, rms_d, fac_d)
        out = network(adafaclo_inputs(pw, gw, state, fac_g))
        _apply(p, pw, out, lr=lr, exp_mult=exp_mult, step_mult=step_mult, weight_decay=weight_decay,
               kernel_layout=kernel_layout)
        state["step"] += 1


def _multi_tensor_adafaclo(params, grads, states, *, network, decays, lr, exp_mult, step_mult, weight_decay,
                           kernel_layout) -> None:
    mom_d, rms_d, fac_d = decays
    pws = [to_work(p, kernel_layout).to(torch.float32) for p in params]
    gws = [to_work(g, kernel_layout) for g in grads]
    for state, pw in zip(states, pws):
        _init_state(state, pw, decays)
    acc.update_momentum_foreach([s["mom"] for s in states], gws, mom_d)
    acc.update_rms_foreach([s["rms"] for s in states], gws, rms_d)
    inputs = []
    for pw, gw, state in zip(pws, gws, states):
        fac_g = acc.update_factored(state["fac_row"], state["fac_col"], state["fac_diag"], gw, fac_d)
        inputs.append(adafaclo_inputs(pw, gw, state, fac_g).reshape(-1, NUM_FEATURES))
    outs = network(torch.cat(inputs)).split([x.shape[0] for x in inputs])
    for p, pw, out in zip(params, pws, outs):
        _apply(p, pw, out.reshape(tuple(pw.shape) + (-1,)), lr=lr, exp_mult=exp_mult, step_mult=step_mult,
               weight_decay=weight_decay, kernel_layout=kernel_layout)
    torch._foreach_add_([s["step"] for s in states], 1)


class AdafacLO_naive(LearnedOptimizer):
    """AdafacLO / μLO learned optimizer (pure PyTorch).

    Args:
        params: parameters, ``named_parameters()``, or param groups.
        momentum_decays, rms_decays, adafactor_decays: learned decay *offsets*
            (upstream theta). The defaults are the released μLO values; when left
            at their defaults, the offsets stored in a loaded checkpoint are used.
        lr: multiplies every step: upstream μLO's per-parameter learning-rate
            scale (1.0 reproduces AdafacMLPLOpt; ``MuLO`` sets it per group).
        exp_mult, step_mult: ``step = d * exp(mu * exp_mult) * step_mult``.
        input_size, hidden_size, hidden_layers: MetaMLP geometry used when the
            checkpoint does not state its own (``hidden_layers`` counts
            hidden-to-hidden layers: upstream ``hidden_layers=2`` is 1 here).
        initial_momentum_decays, initial_rms_decays, initial_adafactor_decays:
            the decays the offsets are relative to.
        max_grad_norm, clip_grad: global-norm clipping over all groups (optax
            ``clip_by_global_norm``) when ``clip_grad=True`` or ``max_grad_norm`` is
            given, to ``max_grad_norm`` (default 1.0). Gradients then go through
            ``nan_to_num`` as in μLO.
        nonfinite_grads: ``"raise"`` (default): a NaN/Inf gradient raises
            ``NonFiniteGradientError`` and nothing changes; ``"upstream"``: μLO's
            ``nan_to_num`` (NaN -> 0, Inf -> largest float32).
        concat_weights, make_separate_weights, split_weights: upstream's
            alternative evaluations of the same network; accepted for API
            compatibility, the result is the same.
        weight_decay: decoupled decay, ``p -= lr * weight_decay * p`` (pylo addition).
        mup_lrs: not used (as upstream); μP scales are per-group ``lr``.
        hf_key: hub repo of the meta-network (``"owner/name[@revision]"``).
        checkpoint_path: a local converted checkpoint (folder or file); wins over ``hf_key``.
        network: a ready :class:`~pylo.models.MetaMLP`; wins over everything.
        foreach: shorthand for ``backend="foreach"``.
        backend: ``"naive"`` (tensor by tensor, the default here), ``"foreach"``
            (multi-tensor accumulators, one MLP call), ``"fused"`` (chunked, bounded
            memory, fastest on CPU), ``"triton"`` (GPU kernels), or ``"auto"`` (triton on
            CUDA when available, else fused; the default of :class:`AdafacLO`).
        chunk_size: elements per chunk of the fused backend (bounds its transient memory).
        kernel_layout: ``"torch"`` (default) treats 4-D tensors as OIHW conv
            kernels and computes in JAX's HWIO layout, like upstream on the same
            kernel; ``"jax"`` takes 4-D tensors as they are.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = AdafacLO_naive(model.parameters(), checkpoint_path="mulo_folder")  # doctest: +SKIP
        >>> model(torch.randn(8, 4)).square().mean().backward(); opt.step(); opt.zero_grad()  # doctest: +SKIP
    """

    display_name = "AdafacLO"

    def __init__(self, params, momentum_decays=MULO_MOMENTUM_OFFSETS, rms_decays=MULO_RMS_OFFSETS,
                 adafactor_decays=MULO_ADAFACTOR_OFFSETS, lr=1.0, exp_mult=0.001, step_mult=0.01, input_size=39,
                 hidden_size=32, hidden_layers=1, initial_momentum_decays=(0.9, 0.99, 0.999),
                 initial_rms_decays=(0.999,), initial_adafactor_decays=(0.9, 0.99, 0.999), max_grad_norm=None,
                 concat_weights=True, make_separate_weights=False, split_weights=False, clip_grad=False,
                 weight_decay=0.0, mup_lrs=None, hf_key: Optional[str] = "btherien/mulo", *,
                 checkpoint_path=None, network: Optional[MetaMLP] = None, foreach: Optional[bool] = None,
                 kernel_layout: str = "torch", nonfinite_grads: str = "raise", backend: Optional[str] = None,
                 chunk_size: int = 16384):
        check_number("lr", lr, minimum=0.0)
        check_number("exp_mult", exp_mult)
        check_number("step_mult", step_mult)
        check_number("weight_decay", weight_decay, minimum=0.0)
        if max_grad_norm is not None:
            check_number("max_grad_norm", max_grad_norm, minimum=0.0, strict=True)
        if kernel_layout not in KERNEL_LAYOUTS:
            raise ValueError(f"kernel_layout must be one of {KERNEL_LAYOUTS}, got {kernel_layout!r}")
        if backend is None:
            backend = "foreach" if foreach else "naive"
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if backend not in BACKENDS + ("auto",):
            raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
        if mup_lrs is not None:
            raise ValueError("mup_lrs is not used (as upstream): μP learning-rate scales are the per-group lr; "
                             "use MuLO(model.parameters()) after mup.set_base_shapes")
        net, _ = load_network(META_MLP_SPEC, network=network, checkpoint_path=checkpoint_path, hub_keys=[hf_key],
                              fallback_config=dict(input_size=input_size, hidden_size=hidden_size,
                                                   hidden_layers=hidden_layers))
        if net.input_size != NUM_FEATURES:
            raise ValueError(f"AdafacLO builds {NUM_FEATURES} features but the meta-network takes {net.input_size}")
        stored = net.learned_decay_offsets()
        offsets = [explicit if (explicit is not default or stored is None) else stored_value
                   for explicit, default, stored_value in zip(
                       (momentum_decays, rms_decays, adafactor_decays),
                       (MULO_MOMENTUM_OFFSETS, MULO_RMS_OFFSETS, MULO_ADAFACTOR_OFFSETS),
                       stored or (None, None, None))]
        initials = (initial_momentum_decays, initial_rms_decays, initial_adafactor_decays)
        for name, off, init in zip(("momentum", "rms", "adafactor"), offsets, initials):
            if len(off) != len(init):
                raise ValueError(f"{len(off)} {name} decay offsets for {len(init)} initial {name} decays")
        defaults = dict(lr=lr, exp_mult=exp_mult, step_mult=step_mult, weight_decay=weight_decay,
                        momentum_decays=[float(x) for x in offsets[0]], rms_decays=[float(x) for x in offsets[1]],
                        adafactor_decays=[float(x) for x in offsets[2]],
                        initial_momentum_decays=[float(x) for x in initial_momentum_decays],
                        initial_rms_decays=[float(x) for x in initial_rms_decays],
                        initial_adafactor_decays=[float(x) for x in initial_adafactor_decays],
                        kernel_layout=kernel_layout, backend=backend, chunk_size=chunk_size,
                        concat_weights=concat_weights,
                        make_separate_weights=make_separate_weights, split_weights=split_weights)
        super().__init__(params, defaults, net, nonfinite_grads)
        self.clip_grad = bool(clip_grad) or max_grad_norm is not None
        self.max_grad_norm = 1.0 if max_grad_norm is None else float(max_grad_norm)
        self._decay_cache: Dict[Tuple, torch.Tensor] = {}
        self._workspaces: Dict = {}

    def effective_decays(self, group) -> Tuple[List[float], List[float], List[float]]:
        """The group's momentum, RMS and Adafactor decays after the learned offsets."""
        return tuple(learned_decays(group[f"initial_{k}_decays"], group[f"{k}_decays"])
                     for k in ("momentum", "rms", "adafactor"))

    def _decay_tensors(self, group, device) -> Tuple[torch.Tensor, ...]:
        key = (device, tuple(group["momentum_decays"]), tuple(group["rms_decays"]), tuple(group["adafactor_decays"]),
               tuple(group["initial_momentum_decays"]), tuple(group["initial_rms_decays"]),
               tuple(group["initial_adafactor_decays"]))
        if key not in self._decay_cache:
            self._decay_cache[key] = tuple(acc.float32_decays(d, device) for d in self.effective_decays(group))
        return self._decay_cache[key]

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One update. ``closure`` (re-evaluates the model) or ``loss`` are optional; the loss is returned."""
        loss = self._resolve_loss(closure, loss)
        for group, params, grads in self._sanitized_entries(self.max_grad_norm if self.clip_grad else None, True):
            for device, idx in self._by_device(params).items():
                backend = resolve_backend(group["backend"], device)
                adafaclo([params[i] for i in idx], [grads[i] for i in idx], [self.state[params[i]] for i in idx],
                         network=self.network_on(device), decays=self._decay_tensors(group, device), lr=group["lr"],
                         exp_mult=group["exp_mult"], step_mult=group["step_mult"],
                         weight_decay=group["weight_decay"], kernel_layout=group["kernel_layout"], backend=backend,
                         workspaces=self._workspaces, chunk_size=group["chunk_size"],
                         decay_values=self.effective_decays(group) if backend == "triton" else None)
        return loss


class AdafacLO(AdafacLO_naive):
    """AdafacLO on its fastest backend (``backend="auto"``): the recommended entry point.

    Same arguments and results as :class:`AdafacLO_naive` (within float32
    round-off); see there.
    """

    def __init__(self, params, *args, backend: Optional[str] = "auto", **kwargs):
        super().__init__(params, *args, backend=backend, **kwargs)
