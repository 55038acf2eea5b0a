"""CELO2 and CELO2-base: the learned update of ``celo2_optax`` inside scaling_l2o's ``Celo2LOpt``.

References: ``amoudgl/celo: celo/optimizers/celo2_optax.py`` (the learned
update) and ``xiaol827/ELO: src/learned_optimizers/celo2_lopt.py`` (the full
optimizer, at inference); our JAX twin is ``pylo.reference_jax.celo2``.

Per step (``g`` float32, tensors in the work layout: torch conv kernels seen
as JAX's HWIO, scalars as ``(1,)``):

1. optional global-norm clipping over *all* groups (``clip_grad``);
2. routing: 0-/1-D parameters, and any parameter whose name contains
   ``embed`` (or in a group with ``is_embedding=True``), take AdamW when
   ``use_adamw_for_1d`` (optax ``adamw``: own moments, betas (0.9, 0.95),
   bias correction by the parameter's own step count, no clamp); the rest the
   learned path;
3. learned path: clamp to ``+-grad_clip_val`` (1000), momentum / RMS /
   Adafactor accumulators with fixed decays, 14 feature groups (9 for 1-D),
   each second-moment normalised over the tensor's *last two* axes, the
   split-input MLP, ``d * exp(mag * exp_mult)``, Newton-Schulz over the last
   two axes (per spatial tap of a conv kernel), output normalisation and
   ``rmsmult``;
4. ``p <- p - lr * (step + weight_decay * p)``; AdamW uses
   ``adam_lr_mult * lr`` and ``adam_weight_decay``.

Upstream's schedule lives in the optimizer; here ``lr`` is the group's, so
torch schedulers drive it (a constant upstream schedule ``init_lr = peak_lr =
end_lr`` is the same optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pylo.core import accumulators as acc
from pylo.core import adam
from pylo.core.chunked import DEFAULT_CHUNK
from pylo.core.clipping import clamp_elementwise
from pylo.core.decays import DecayTensors, checked_decays
from pylo.core.features import hyper_feature_groups, second_moment_normalize
from pylo.core.layout import subtract_update, to_work
from pylo.core.orthogonalize import NS_COEFFS, newton_schulz
from pylo.spec.shapes import KERNEL_LAYOUTS
from pylo.models.celo2_mlp import CELO2MLP
from pylo.models.loading import NetworkSpec, load_network
from pylo.optim.backend import BACKENDS, resolve_backend
from pylo.optim.base import LearnedOptimizer, check_number

RMS_EPS = 1e-8
NORMALIZER_EPS = 1e-9
EMBED_MARKER = "embed"


def feature_widths(n_mom: int, n_rms: int, n_fac: int) -> Tuple[int, ...]:
    """Widths of the 14 feature groups for the given numbers of decays."""
    return (1, 1, 1, n_mom, n_rms, n_mom, n_rms, n_fac, n_rms) + (n_fac,) * 4 + (n_mom,)


def _build_celo2_mlp(config: Dict) -> CELO2MLP:
    keys = ("feature_dims", "hidden_size", "hidden_layers", "output_size", "activation")
    return CELO2MLP(**{k: config[k] for k in keys if k in config})


CELO2_SPEC = NetworkSpec(name="CELO2 CELO2MLP", module_type=CELO2MLP, optimizers=("celo2",), build=_build_celo2_mlp)


@dataclass(frozen=True)
class LearnedStep:
    """How the MLP output becomes a step (upstream ``Celo2Transformation`` options)."""

    exp_mult: float = 0.0
    rmsmult: float = 1.0
    param_scale_mult: bool = False
    orthogonalize: bool = True
    ns_coeffs: Tuple[float, float, float] = NS_COEFFS
    ns_iters: int = 5
    ns_eps: float = 1e-8

    @classmethod
    def of(cls, group: Dict) -> "LearnedStep":
        return cls(exp_mult=group["exp_mult"], rmsmult=group["rmsmult"], param_scale_mult=group["param_scale_mult"],
                   orthogonalize=group["orthogonalize"], ns_coeffs=tuple(group["ns_coeffs"]),
                   ns_iters=group["ns_iters"], ns_eps=group["ns_eps"])


# ---------------------------------------------------------------- the learned path

def init_accumulators(state: Dict, pw: torch.Tensor, decays: Sequence[torch.Tensor]) -> None:
    """Upstream's momentum / RMS / Adafactor state (plus a step count) for one work-layout tensor."""
    if "mom" not in state:
        acc.AccumulatorSet.init(state, pw.shape, *(d.numel() for d in decays), pw.device)
    if "step" not in state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=pw.device)


def accumulate(gws: List[torch.Tensor], states: List[Dict], decays: Sequence[torch.Tensor],
               foreach: bool) -> List[torch.Tensor]:
    """Update every tensor's accumulators in place (and count its step); return the ``fac_g``s."""
    mom_d, rms_d, fac_d = decays
    if foreach:
        acc.update_momentum_foreach([s["mom"] for s in states], gws, mom_d)
        acc.update_rms_foreach([s["rms"] for s in states], gws, rms_d)
        fac_gs = [acc.update_factored(s["fac_row"], s["fac_col"], s["fac_diag"], g, fac_d)
                  for g, s in zip(gws, states)]
        if states:
            torch._foreach_add_([s["step"] for s in states], 1)
        return fac_gs
    fac_gs = []
    for g, s in zip(gws, states):
        fac_gs.append(acc.AccumulatorSet.update(s, g, mom_d, rms_d, fac_d))
        s["step"] += 1
    return fac_gs


def _norm_axes(pw: torch.Tensor) -> List[int]:
    """Upstream normalises over ``list(range(ndim))[-2:]``: the last two axes (one for 1-D)."""
    return list(range(pw.dim()))[-2:]


def celo2_inputs(pw: torch.Tensor, gw: torch.Tensor, state: Dict, fac_g: torch.Tensor) -> List[torch.Tensor]:
    """The normalised feature groups of one tensor: 14 for rank >= 2, 9 below."""
    groups = hyper_feature_groups(pw, gw, state["mom"], state["rms"], fac_g, state["fac_row"], state["fac_col"],
                                  state["fac_diag"], rms_eps=RMS_EPS, diag_groups=False)
    axes = _norm_axes(pw)
    return [second_moment_normalize(x, axes, NORMALIZER_EPS) for x in groups]


def celo2_step_from_output(out: torch.Tensor, pw: torch.Tensor, cfg: LearnedStep) -> torch.Tensor:
    """MLP output ``(S..., >=2)`` -> the step of one tensor (before lr and weight decay)."""
    direction, magnitude = out[..., 0], out[..., 1]
    mag = torch.exp(magnitude * cfg.exp_mult)
    if cfg.param_scale_mult:
        step = direction * (torch.sqrt(torch.mean(pw * pw) + 1e-9) * mag)
    else:
        step = direction * mag
    if cfg.orthogonalize and step.dim() >= 2:
        step = newton_schulz(step, cfg.ns_coeffs, cfg.ns_iters, cfg.ns_eps)
    return second_moment_normalize(step, _norm_axes(pw), NORMALIZER_EPS) * cfg.rmsmult


def learned_steps(pws: List[torch.Tensor], gws: List[torch.Tensor], states: List[Dict],
                  fac_gs: List[torch.Tensor], network: torch.nn.Module, cfg: LearnedStep,
                  foreach: bool) -> List[torch.Tensor]:
    """The CELO2 step of every tensor. ``foreach`` runs the MLP once per group count over all tensors."""
    inputs = [celo2_inputs(pw, gw, s, fg) for pw, gw, s, fg in zip(pws, gws, states, fac_gs)]
    if not foreach:
        return [celo2_step_from_output(network(x), pw, cfg) for x, pw in zip(inputs, pws)]
    outs: List[Optional[torch.Tensor]] = [None] * len(pws)
    for n_groups in sorted({len(x) for x in inputs}):
        idx = [i for i, x in enumerate(inputs) if len(x) == n_groups]
        flat = [torch.cat([inputs[i][k].reshape(-1, inputs[i][k].shape[-1]) for i in idx]) for k in range(n_groups)]
        rows = network(flat).split([pws[i].numel() for i in idx])
        for i, r in zip(idx, rows):
            outs[i] = r.reshape(tuple(pws[i].shape) + (r.shape[-1],))
    return [celo2_step_from_output(o, pw, cfg) for o, pw in zip(outs, pws)]


def decoupled(step: torch.Tensor, pw: torch.Tensor, lr: float, weight_decay: float,
              skip_zero_decay: bool = True) -> torch.Tensor:
    """``lr * (step + weight_decay * p)``.

    optax skips a zero decay; ELO-CELO2 always adds ``0 * p`` (which differs
    only for a non-finite ``p``).
    """
    if weight_decay or not skip_zero_decay:
        step = step + weight_decay * pw
    return step * lr


def celo2(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict], *,
          network: torch.nn.Module, decays: Sequence[torch.Tensor], cfg: LearnedStep, lr: float,
          weight_decay: float, grad_clip_val: Optional[float], kernel_layout: str, foreach: bool) -> None:
    """Functional CELO2 learned-path update of parameters routed to the MLP (gradients already clipped).

    ``foreach=True`` updates the accumulators with multi-tensor kernels and
    evaluates the MLP once over all tensors; ``False`` goes tensor by tensor.
    Both compute the same update.
    """
    if not params:
        return
    pws = [to_work(p, kernel_layout).to(torch.float32) for p in params]
    gws = [to_work(g, kernel_layout) for g in grads]
    if grad_clip_val is not None:
        gws = clamp_elementwise(gws, grad_clip_val)
    for s, pw in zip(states, pws):
        init_accumulators(s, pw, decays)
    if foreach:
        fac_gs = accumulate(gws, states, decays, True)
        deltas = [decoupled(s, pw, lr, weight_decay)
                  for s, pw in zip(learned_steps(pws, gws, states, fac_gs, network, cfg, True), pws)]
        for p, d in zip(params, deltas):
            subtract_update(p, d, kernel_layout)
        return
    for p, pw, gw, s in zip(params, pws, gws, states):
        fac_g = accumulate([gw], [s], decays, False)
        step = learned_steps([pw], [gw], [s], fac_g, network, cfg, False)[0]
        subtract_update(p, decoupled(step, pw, lr, weight_decay), kernel_layout)


# ----------------------------------------------------------------- the AdamW path

def adamw(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict], *, lr: float,
          betas: Tuple[float, float], eps: float, weight_decay: float, foreach: bool) -> None:
    """optax ``adamw`` with its own moments; bias correction by each parameter's own step count.

    ``lr`` must already be a float32 value (``adam_lr_mult * lr`` rounded as JAX rounds it).
    """
    if not params:
        return
    b1, b2 = betas
    for p, s in zip(params, states):
        init_adamw(s, p)
    mus, nus, steps = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states]
    if foreach:
        adam.update_moments_foreach(mus, nus, grads, b1, b2)
        torch._foreach_add_(steps, 1)
        stacked = torch.stack(steps)
        bc1 = adam.bias_correction(b1, stacked).unbind()
        bc2 = adam.bias_correction(b2, stacked).unbind()
        directions = adam.adam_directions_foreach(mus, nus, bc1, bc2, eps)
    else:
        directions = []
        for mu, nu, g, st in zip(mus, nus, grads, steps):
            adam.update_moments(mu, nu, g, b1, b2)
            st += 1
            directions.append(adam.adam_direction(mu, nu, adam.bias_correction(b1, st),
                                                  adam.bias_correction(b2, st), eps))
    for p, d in zip(params, directions):
        subtract_update(p, decoupled(d, p.to(torch.float32), lr, weight_decay), "jax")


def init_adamw(state: Dict, p: torch.Tensor) -> None:
    """The AdamW path's own moments and step count (float32, ``p``'s shape)."""
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
    if "step" not in state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)


def float32_product(a: float, b: float) -> float:
    """``a * b`` rounded as JAX's float32 arithmetic rounds it (e.g. ``adam_lr_mult * lr``)."""
    return float(np.float32(a) * np.float32(b))


# --------------------------------------------------------------------- optimizers

class Celo2Family(LearnedOptimizer):
    """What CELO2 and ELO-CELO2 share: validation, network loading, routing and the step loop.

    Subclasses set ``network_spec`` and implement ``_update_reference`` (naive / foreach) and
    ``_update_fast`` (fused / triton) for one group's learned and AdamW-routed parameters.
    """

    network_spec = CELO2_SPEC
    #: global-norm clipping, then nan_to_num (ELO-CELO2) or not (CELO2)
    upstream_nan_to_num = False

    def _setup(self, params, defaults: Dict, *, clip_grad, clip_norm, ff_hidden_size, ff_hidden_layers, hf_key,
               checkpoint_path, network, nonfinite_grads) -> None:
        check_number("lr", defaults["lr"], minimum=0.0)
        check_number("weight_decay", defaults["weight_decay"], minimum=0.0)
        check_number("adam_lr_mult", defaults["adam_lr_mult"], minimum=0.0)
        if defaults["adam_weight_decay"] is not None:
            check_number("adam_weight_decay", defaults["adam_weight_decay"], minimum=0.0)
        check_number("clip_norm", clip_norm, minimum=0.0, strict=True)
        check_number("exp_mult", defaults["exp_mult"])
        check_number("rmsmult", defaults["rmsmult"])
        coeffs = defaults["ns_coeffs"]
        if len(coeffs) != 3:
            raise ValueError(f"ns_coeffs must be three numbers (a, b, c), got {coeffs!r}")
        for c in coeffs:
            check_number("ns_coeffs", c)
        if not isinstance(defaults["ns_iters"], int) or isinstance(defaults["ns_iters"], bool) \
                or defaults["ns_iters"] < 0:
            raise ValueError(f"ns_iters must be a non-negative integer, got {defaults['ns_iters']!r}")
        check_number("ns_eps", defaults["ns_eps"], minimum=0.0)
        if defaults["grad_clip_val"] is not None:
            check_number("grad_clip_val", defaults["grad_clip_val"], minimum=0.0, strict=True)
        if defaults["kernel_layout"] not in KERNEL_LAYOUTS:
            raise ValueError(f"kernel_layout must be one of {KERNEL_LAYOUTS}, got {defaults['kernel_layout']!r}")
        if defaults["backend"] is None and defaults["foreach"] is not None:
            defaults["backend"] = "foreach" if defaults["foreach"] else "naive"
        if defaults["backend"] is not None and defaults["backend"] not in BACKENDS + ("auto",):
            raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {defaults['backend']!r}")
        chunk = defaults["chunk_size"]
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk!r}")
        for k in ("momentum", "rms", "adafactor"):
            defaults[f"initial_{k}_decays"] = checked_decays(f"initial_{k}_decays", defaults[f"initial_{k}_decays"])
        for name, v in (("ff_hidden_size", ff_hidden_size), ("ff_hidden_layers", ff_hidden_layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        widths = feature_widths(*(len(defaults[f"initial_{k}_decays"]) for k in ("momentum", "rms", "adafactor")))
        net, _ = load_network(self.network_spec, network=network, checkpoint_path=checkpoint_path,
                              hub_keys=[hf_key] if hf_key else [],
                              fallback_config=dict(feature_dims=list(widths), hidden_size=ff_hidden_size,
                                                   hidden_layers=ff_hidden_layers))
        if tuple(net.feature_dims) != widths:
            raise ValueError(f"{self.display_name} builds feature groups of widths {widths} (from the decays) but the "
                             f"meta-network takes {tuple(net.feature_dims)}")
        defaults["ns_coeffs"] = tuple(float(c) for c in coeffs)
        super().__init__(params, defaults, net, nonfinite_grads)
        self.clip_grad = bool(clip_grad)
        self.clip_norm = float(clip_norm)
        self._decays = DecayTensors()
        self._workspaces: Dict = {}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def backend_for(group, device: torch.device) -> str:
        """The group's backend on ``device``: ``"auto"`` is triton on CUDA (when available and the kernels
        implement the group's decay counts), else fused; unset (the published API's ``foreach=None``) is
        foreach on CUDA, else naive."""
        backend = group.get("backend")
        if backend is None:
            return "foreach" if device.type == "cuda" else "naive"
        resolved = resolve_backend(backend, device)
        if backend == "auto" and resolved == "triton":
            from pylo.optim.celo2_triton import unsupported

            counts = tuple(len(group[f"initial_{k}_decays"]) for k in ("momentum", "rms", "adafactor"))
            if unsupported(counts):
                return "fused"
        return resolved

    @staticmethod
    def routes_to_adamw(group, p: torch.Tensor, name: Optional[str]) -> bool:
        """scaling_l2o's routing: 0-/1-D, ``embed`` in the name, or an ``is_embedding`` group."""
        if not group["use_adamw_for_1d"]:
            return False
        return p.dim() <= 1 or bool(group.get("is_embedding")) or (name is not None and EMBED_MARKER in name)

    @staticmethod
    def adam_weight_decay(group) -> float:
        wd = group["adam_weight_decay"]
        return group["weight_decay"] if wd is None else wd

    # --------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One update. ``closure`` (re-evaluates the model) or ``loss`` are optional; the loss is returned."""
        loss = self._resolve_loss(closure, loss)
        for group, params, grads in self._sanitized_entries(self.clip_norm if self.clip_grad else None,
                                                            self.upstream_nan_to_num):
            names = dict(zip(map(id, group["params"]), group.get("param_names", ())))
            for device, idx in self._by_device(params).items():
                learned, routed = [], []
                for i in idx:
                    p = params[i]
                    (routed if self.routes_to_adamw(group, p, names.get(id(p))) else learned).append((p, grads[i]))
                self._update(group, device, learned, routed)
        return loss

    def _update(self, group, device, learned, routed) -> None:
        backend = self.backend_for(group, device)
        if backend in ("fused", "triton"):
            self._update_fast(group, device, learned, routed, backend)
        else:
            self._update_reference(group, device, learned, routed, foreach=backend == "foreach")

    def _update_reference(self, group, device, learned, routed, foreach: bool) -> None:
        """The naive / foreach update of one group (the published rule)."""
        raise NotImplementedError

    def _update_fast(self, group, device, learned, routed, backend: str) -> None:
        raise NotImplementedError


class CELO2_naive(Celo2Family):
    """CELO2 / CELO2-base learned optimizer (pure PyTorch), scaling_l2o's ``Celo2LOpt`` at inference.

    Args:
        params: parameters, ``model.named_parameters()`` (names containing
            ``embed`` go to AdamW, as upstream routes tree paths), or param
            groups (``is_embedding=True`` sends a whole group to AdamW).
        lr: learning rate of the learned path; AdamW uses ``adam_lr_mult * lr``.
            No internal schedule: drive it with ``torch.optim.lr_scheduler``.
        weight_decay: decoupled, ``p -= lr * weight_decay * p``.
        adam_lr_mult, adam_weight_decay, adam_betas, adam_eps: the AdamW path
            (own moments; ``adam_weight_decay=None`` means ``weight_decay``).
        use_adamw_for_1d: route 0-/1-D and embedding parameters to AdamW; if
            False every parameter takes the learned path (1-D with 9 feature groups).
        orthogonalize: Newton-Schulz on the steps of rank >= 2 (False: CELO2-base).
        clip_grad, clip_norm: optax ``clip_by_global_norm`` over all groups first.
        ff_hidden_size, ff_hidden_layers: network geometry when the checkpoint
            does not state its own.
        initial_momentum_decays, initial_rms_decays, initial_adafactor_decays:
            the fixed accumulator decays.
        exp_mult, rmsmult, param_scale_mult, ns_coeffs, ns_iters, ns_eps:
            ``Celo2Transformation`` options.
        grad_clip_val: elementwise clamp of the learned path's gradients
            (upstream's +-1000; ``None`` disables it). The AdamW path is not clamped.
        hf_key: hub repo of the meta-network (``"owner/name[@revision]"``).
        checkpoint_path: a local converted checkpoint (folder or file); wins over ``hf_key``.
        network: a ready :class:`~pylo.models.CELO2MLP`; wins over everything.
        foreach: shorthand for ``backend="foreach"`` / ``"naive"`` (unset: foreach on CUDA, else naive).
        backend: ``"naive"`` (tensor by tensor), ``"foreach"`` (multi-tensor
            accumulators, one MLP call), ``"fused"`` (chunked, bounded memory,
            fastest on CPU), ``"triton"`` (GPU kernels) or ``"auto"`` (triton on
            CUDA when available, else fused; the default of :class:`CELO2`).
        chunk_size: elements per chunk of the fused backend (bounds its transient memory).
        kernel_layout: ``"torch"`` (default) treats 4-D tensors as OIHW conv
            kernels and computes in JAX's HWIO layout, so Newton-Schulz and the
            normalisation run per spatial tap over (in, out), as upstream on
            the same kernel; ``"jax"`` takes 4-D tensors as they are.
        nonfinite_grads: ``"raise"`` (default) or ``"upstream"`` (no
            ``nan_to_num``: the learned path clamps +-inf to +-1000, NaN propagates).

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = CELO2_naive(model.named_parameters(), checkpoint_path="celo2_folder")  # doctest: +SKIP
        >>> model(torch.randn(8, 4)).square().mean().backward(); opt.step(); opt.zero_grad()  # doctest: +SKIP
    """

    display_name = "CELO2"

    def __init__(self, params, lr=0.001, weight_decay=0.0, adam_lr_mult=1.0, adam_weight_decay=None,
                 adam_betas=(0.9, 0.95), adam_eps=1e-08, use_adamw_for_1d=True, orthogonalize=True, clip_grad=False,
                 clip_norm=1.0, ff_hidden_size=8, ff_hidden_layers=2, initial_momentum_decays=(0.9, 0.99, 0.999),
                 initial_rms_decays=(0.95,), initial_adafactor_decays=(0.9, 0.99, 0.999), exp_mult=0.0,
                 rmsmult=1.0, param_scale_mult=False, ns_coeffs=NS_COEFFS, ns_iters=5, ns_eps=1e-08,
                 grad_clip_val=1000.0, hf_key: Optional[str] = "DiamondXL/celo2", checkpoint_path=None,
                 network: Optional[CELO2MLP] = None, *, foreach: Optional[bool] = None, kernel_layout: str = "torch",
                 nonfinite_grads: str = "raise", backend: Optional[str] = None, chunk_size: int = DEFAULT_CHUNK):
        betas = tuple(adam_betas)
        if len(betas) != 2:
            raise ValueError(f"adam_betas must be a pair (b1, b2), got {adam_betas!r}")
        for i, b in enumerate(betas):
            check_number(f"adam_betas[{i}]", b, minimum=0.0)
            if b >= 1.0:
                raise ValueError(f"adam_betas[{i}] must be < 1, got {b}")
        check_number("adam_eps", adam_eps, minimum=0.0)
        defaults = dict(lr=lr, weight_decay=weight_decay, adam_lr_mult=adam_lr_mult,
                        adam_weight_decay=adam_weight_decay, adam_betas=tuple(float(b) for b in betas),
                        adam_eps=float(adam_eps), use_adamw_for_1d=bool(use_adamw_for_1d),
                        orthogonalize=bool(orthogonalize), initial_momentum_decays=initial_momentum_decays,
                        initial_rms_decays=initial_rms_decays, initial_adafactor_decays=initial_adafactor_decays,
                        exp_mult=exp_mult, rmsmult=rmsmult, param_scale_mult=bool(param_scale_mult),
                        ns_coeffs=tuple(ns_coeffs), ns_iters=ns_iters, ns_eps=ns_eps, grad_clip_val=grad_clip_val,
                        is_embedding=False, kernel_layout=kernel_layout, foreach=foreach, backend=backend,
                        chunk_size=chunk_size)
        self._setup(params, defaults, clip_grad=clip_grad, clip_norm=clip_norm, ff_hidden_size=ff_hidden_size,
                    ff_hidden_layers=ff_hidden_layers, hf_key=hf_key, checkpoint_path=checkpoint_path,
                    network=network, nonfinite_grads=nonfinite_grads)

    def _update_reference(self, group, device, learned, routed, foreach: bool) -> None:
        if learned:
            params, grads = zip(*learned)
            celo2(list(params), list(grads), [self.state[p] for p in params], network=self.network_on(device),
                  decays=self._decays.of_group(group, device), cfg=LearnedStep.of(group), lr=group["lr"],
                  weight_decay=group["weight_decay"], grad_clip_val=group["grad_clip_val"],
                  kernel_layout=group["kernel_layout"], foreach=foreach)
        if routed:
            params, grads = zip(*routed)
            adamw(list(params), list(grads), [self.state[p] for p in params],
                  lr=float32_product(group["adam_lr_mult"], group["lr"]), betas=tuple(group["adam_betas"]),
                  eps=group["adam_eps"], weight_decay=self.adam_weight_decay(group), foreach=foreach)

    def _update_fast(self, group, device, learned, routed, backend: str) -> None:
        fast = _fast_backend(backend)
        decays = self._decays.of_group(group, device)
        if learned:
            params, grads = (list(x) for x in zip(*learned))
            states = [self.state[p] for p in params]
            for p, s in zip(params, states):
                init_accumulators(s, to_work(p, group["kernel_layout"]), decays)
            fast.learned_update(params, grads, states, network=self.network_on(device), decays=decays,
                                cfg=LearnedStep.of(group), lr=group["lr"], weight_decay=group["weight_decay"],
                                grad_clip_val=group["grad_clip_val"], kernel_layout=group["kernel_layout"],
                                chunk=group["chunk_size"], workspaces=self._workspaces)
        if routed:
            params, grads = (list(x) for x in zip(*routed))
            states = [self.state[p] for p in params]
            for p, s in zip(params, states):
                init_adamw(s, p)
            fast.adamw_update(params, grads, states, lr=float32_product(group["adam_lr_mult"], group["lr"]),
                              betas=tuple(group["adam_betas"]), eps=group["adam_eps"],
                              weight_decay=self.adam_weight_decay(group), chunk=group["chunk_size"])


def _fast_backend(backend: str):
    """The module implementing a fast backend: ``learned_update``, ``adamw_update``, ``shared_adamw_update``."""
    if backend == "triton":
        from pylo.optim import celo2_triton

        return celo2_triton
    from pylo.optim import celo2_fused

    return celo2_fused


class CELO2(CELO2_naive):
    """CELO2 / CELO2-base on its fastest backend (``backend="auto"``): the recommended entry point.

    Same arguments and results as :class:`CELO2_naive` (within float32 round-off); see there.
    """

    def __init__(self, params, *args, backend: Optional[str] = "auto", **kwargs):
        super().__init__(params, *args, backend=backend, **kwargs)


from pylo.optim.elo_celo2 import ELO_CELO2, ELO_CELO2_naive  # noqa: E402,F401  (interim, until the package is built)
