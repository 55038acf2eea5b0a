"""What VeLO and Celo share as ``torch.optim`` optimizers: the HyperV2 class, written once.

HyperV2 is upstream's name (``learned_optimization/research/general_lopt/hyper_v2.py``) for the
architecture of VeLO and Celo. Per :meth:`HyperV2Optimizer.step` (``g`` the gradients, float32):

1. the loss goes through the loss buffer (:mod:`.loss_buffer`), which yields nine loss features;
   optional global-norm clipping and prefab weight decay (:mod:`.prefab`) come first, and
   beyond ``max_training_steps`` consecutive calls are averaged into one update;
2. missing state is created (:meth:`~HyperV2Optimizer._init_group`, :mod:`.state`) and the
   tensors grouped by param group, device and backend (:mod:`pylo.optim.backend`);
3. :func:`.functional.hyperv2` runs the update: accumulators, one LSTM step over all tensors
   (:mod:`.controller`), each tensor's controls-weighted MLP and ``p <- p - lr * step``.

DTensor parameters (FSDP2, HSDP, tensor parallel) are stepped shard-wise (:mod:`pylo.optim.sharded`)
unless gradients are averaged over calls (``max_training_steps``), then gathered whole.

The per-tensor LSTM state lives with each parameter's state, so parameters without a gradient
(or frozen) simply sit a step out, and parameters added later start from the learned initial
state. The optimizer-wide state (iteration, loss buffer) lives under ``"hyper_v2"`` in the state of
the first parameter (with or without a gradient), so ``opt.state`` is keyed by parameters only, as
``torch.distributed.checkpoint`` requires; state dicts that kept it at the top level still load.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from pylo.core import accumulators as acc
from pylo.core.chunked import DEFAULT_CHUNK
from pylo.core.clipping import clip_by_global_norm
from pylo.core.features import fractional_tanh_embedding
from pylo.models.hyper_network import HyperNetwork
from pylo.optim.backend import TORCH_DEFAULT, backend_options, resolve_backend, shard_backend
from pylo.optim.base import LearnedOptimizer, check_number
from pylo.optim.hyperv2 import loss_buffer, prefab
from pylo.optim.hyperv2.constants import GLOBAL_STATE_KEY, WEIGHT_DECAY_MODES
from pylo.optim.hyperv2.controller import Controller, LSTMInputs
from pylo.optim.hyperv2.functional import ENGINES, Part, hyperv2
from pylo.optim.hyperv2.settings import EngineSettings
from pylo.optim.hyperv2.state import effective_decays, init_global_state, init_param_state
from pylo.optim.sharded import is_dtensor, local_views
from pylo.spec.features import hyper_group_widths
from pylo.spec.shapes import KERNEL_LAYOUTS

DECAY_KINDS = ("momentum", "rms", "adafactor")


def _check_positive_int(name: str, value, allow_none: bool = False, what: str = "a positive integer") -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_arguments(*, lr, exp_mult, step_mult, weight_decay, interp_mult, num_steps, weight_decay_mode,
                    max_training_steps, max_grad_norm, kernel_layout) -> None:
    """Clear errors at construction for the hyperparameters every HyperV2 optimizer takes."""
    check_number("lr", lr, minimum=0.0)
    check_number("exp_mult", exp_mult)
    check_number("step_mult", step_mult)
    check_number("weight_decay", weight_decay, minimum=0.0)
    check_number("interp_mult", interp_mult)
    _check_positive_int("num_steps", num_steps, what="a positive integer (the training horizon)")
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {weight_decay_mode!r}")
    _check_positive_int("max_training_steps", max_training_steps, allow_none=True,
                        what="a positive integer or None")
    if max_grad_norm is not None:
        check_number("max_grad_norm", max_grad_norm, minimum=0.0, strict=True)
    if kernel_layout not in KERNEL_LAYOUTS:
        raise ValueError(f"kernel_layout must be one of {KERNEL_LAYOUTS}, got {kernel_layout!r}")


class HyperV2Optimizer(LearnedOptimizer):
    """Shared base of :class:`~pylo.optim.VeLO_naive` and :class:`~pylo.optim.Celo_naive`.

    Subclasses set ``display_name``, build their meta-network and pass their ``controller``
    (:class:`.controller.Controller`); ``default_backend`` is the class's backend when neither
    ``backend=`` nor ``foreach=`` is given (:func:`pylo.optim.backend.backend_options`).
    """

    default_backend: Optional[str] = TORCH_DEFAULT
    shard_wise = True

    def __init__(self, params, *, network: HyperNetwork, controller: Controller, num_steps: int, lr, exp_mult,
                 step_mult, weight_decay, weight_decay_mode: str, momentum_decays, rms_decays, adafactor_decays,
                 initial_momentum_decays, initial_rms_decays, initial_adafactor_decays, interp_mult: float,
                 clip_grad: bool, max_grad_norm: Optional[float], all_reduce_loss: Optional[bool],
                 max_training_steps: Optional[int], foreach: Optional[bool], kernel_layout: str,
                 nonfinite_grads: str = "raise", extra_defaults: Optional[Dict] = None,
                 backend: Optional[str] = None, chunk_size: int = DEFAULT_CHUNK):
        check_arguments(lr=lr, exp_mult=exp_mult, step_mult=step_mult, weight_decay=weight_decay,
                        interp_mult=interp_mult, num_steps=num_steps, weight_decay_mode=weight_decay_mode,
                        max_training_steps=max_training_steps, max_grad_norm=max_grad_norm,
                        kernel_layout=kernel_layout)
        options = backend_options(backend, foreach, chunk_size, default=self.default_backend)
        initials = [[float(x) for x in d] for d in (initial_momentum_decays, initial_rms_decays,
                                                      initial_adafactor_decays)]
        decays = [effective_decays(i, o) for i, o in zip(initials, (momentum_decays, rms_decays, adafactor_decays))]
        self.controller = controller
        self._check_network(network, decays)
        defaults = dict(lr=lr, exp_mult=exp_mult, step_mult=step_mult, weight_decay=weight_decay,
                        momentum_decays=decays[0], rms_decays=decays[1], adafactor_decays=decays[2],
                        kernel_layout=kernel_layout, **options, **(extra_defaults or {}))
        super().__init__(params, defaults, network, nonfinite_grads=nonfinite_grads)
        self.num_steps = int(num_steps)
        self.weight_decay_mode = weight_decay_mode
        self.interp_mult = float(interp_mult)
        self.clip_grad = bool(clip_grad) or max_grad_norm is not None
        self.max_grad_norm = 1.0 if max_grad_norm is None else float(max_grad_norm)
        if all_reduce_loss is not None and not isinstance(all_reduce_loss, bool):
            raise TypeError(f"all_reduce_loss must be None (auto), True or False, got {all_reduce_loss!r}")
        self.all_reduce_loss = all_reduce_loss
        self.max_training_steps = max_training_steps
        self.num_average = (int(math.ceil(self.num_steps / max_training_steps))
                            if max_training_steps is not None and self.num_steps > max_training_steps else 1)
        self._decay_cache: Dict[Tuple, Tuple[torch.Tensor, ...]] = {}
        #: the fused engine's scratch buffers, per device (reused across steps; ``pylo-bench`` reports them)
        self._workspaces: Dict = {}

    def loss_horizon(self, inner_steps: int) -> int:
        """The horizon of the loss buffer for ``inner_steps`` updates (VeLO's bugged flag fixes it at 10)."""
        return inner_steps

    # ------------------------------------------------------------------ checks
    def _check_network(self, net: HyperNetwork, decays) -> None:
        name = self.display_name
        want_lstm = self.controller.input_size(len(decays[0]), len(decays[1]))
        want_mlp = sum(hyper_group_widths(*(len(d) for d in decays)))
        if net.rnn.input_size != want_lstm:
            raise ValueError(f"{name} builds {want_lstm} LSTM inputs but the meta-network's LSTM takes "
                             f"{net.rnn.input_size}")
        if net.mlp.input_size != want_mlp:
            raise ValueError(f"{name} builds {want_mlp} per-element features but the meta-network's MLP takes "
                             f"{net.mlp.input_size}")
        if net.rnn.param_inits != net.mlp.param_inits:
            raise ValueError(f"the LSTM emits {net.rnn.param_inits} controls for a bank of "
                             f"{net.mlp.param_inits} MLPs")

    def _decay_tensors(self, group, device) -> Tuple[torch.Tensor, ...]:
        key = (device, *(tuple(group[f"{k}_decays"]) for k in DECAY_KINDS))
        if key not in self._decay_cache:
            self._decay_cache[key] = tuple(acc.float32_decays(group[f"{k}_decays"], device) for k in DECAY_KINDS)
        return self._decay_cache[key]

    # ------------------------------------------------------------------- step
    def _step(self, loss):
        """The VeLO/Celo update; needs the loss (``step(loss)``, ``step(loss=...)`` or a closure returning it).

        Returns the loss. With ``nonfinite_grads="raise"`` (default) a NaN/Inf gradient or
        loss raises and nothing changes; with ``"upstream"`` they go through as upstream
        lets them (gradients clipped to +-1000, NaN propagating).
        """
        if loss is None:
            raise prefab.missing_loss(self.display_name)
        items = [(group, p, g) for group, params, grads in self._grad_entries() for p, g in zip(params, grads)]
        if not items:
            return loss
        main = items[0][1].device
        loss_t = prefab.loss_tensor(loss, main, self.display_name, self.all_reduce_loss)
        grads = [g for _, _, g in items]
        splits = [self._split_for(group, p) for group, p, _ in items]
        if self.clip_grad:
            grads = clip_by_global_norm(grads, self.max_grad_norm, splits)
        if self.weight_decay_mode == "prefab" and any(group["weight_decay"] for group, _, _ in items):
            loss_t, grads = prefab.weight_decay(items, grads, loss_t, splits)
        if self.nonfinite_grads == "raise":
            prefab.check_loss(loss_t, self.display_name)
        items = [(group, p, g) for (group, p, _), g in zip(items, grads)]
        if self.num_average > 1:
            ready = self._accumulate(items, loss_t)
            if ready is None:
                return loss
            items, loss_t = ready
        self._update(items, loss_t, main)
        return loss

    def _init_state(self, entries) -> None:
        items = [(group, p, g) for group, params, grads in entries for p, g in zip(params, grads)]
        if items:
            self._init_group(items, self.network_on(items[0][1].device).rnn)
            self._global_state()

    def _steps_shard_wise(self, group, p) -> bool:
        return self.num_average == 1 and super()._steps_shard_wise(group, p)

    def _global_holder(self) -> torch.Tensor:
        """The parameter whose state holds the optimizer-wide entry: always the first one, with or without
        a gradient, so a checkpoint and a freshly built optimizer (DCP's load template) agree on it."""
        return self.param_groups[0]["params"][0]

    def _global_state(self) -> Dict:
        """The optimizer-wide state, created when missing."""
        state = self.state[self._global_holder()]
        if GLOBAL_STATE_KEY not in state:
            inner = self.num_steps // self.num_average
            state[GLOBAL_STATE_KEY] = init_global_state(inner, self.loss_horizon(inner))
        return state[GLOBAL_STATE_KEY]

    def _set_global_state(self, **changes) -> None:
        self.state[self._global_holder()][GLOBAL_STATE_KEY] = {**self._global_state(), **changes}

    def load_state_dict(self, state_dict: Dict) -> None:
        """:meth:`LearnedOptimizer.load_state_dict`; an optimizer-wide entry found elsewhere (at the top level,
        as pylo 0.1.0 kept it, or under another parameter) moves to the first parameter's state."""
        super().load_state_dict(state_dict)
        found = self.state.pop(GLOBAL_STATE_KEY, None)
        for p in [p for g in self.param_groups for p in g["params"]]:
            if p in self.state and GLOBAL_STATE_KEY in self.state[p]:
                found = self.state[p].pop(GLOBAL_STATE_KEY)
                if not self.state[p]:
                    del self.state[p]
        if found is not None:
            self.state[self._global_holder()][GLOBAL_STATE_KEY] = found

    def _accumulate(self, items, loss_t):
        """prefab's ``GradientAccumulator``: sum ``num_average`` micro-steps, update with their mean."""
        state = self._global_state()
        loss_accum, micro_step, ready = prefab.accumulate(self.state, self.param_groups, items, loss_t, state,
                                                          self.num_average)
        self._set_global_state(micro_step=micro_step, loss_accum=loss_accum)
        return ready

    # ----------------------------------------------------------------- update
    def _init_group(self, items, rnn) -> None:
        """Create the missing state of every ``(group, param, grad)`` item (as ``torch.optim`` does)."""
        for group, p, _ in items:
            state = self.state[p]
            if "mom" not in state:
                counts = tuple(len(group[f"{k}_decays"]) for k in DECAY_KINDS)
                init_param_state(state, p, group["kernel_layout"], counts, rnn)

    def _backend_for(self, group, device: torch.device) -> str:
        choice = group["backend"]
        reason = ENGINES["triton"].unsupported(self.network) if choice == "auto" else None
        return resolve_backend(choice, device, triton_unsupported=reason)

    def _settings(self, group, device: torch.device, inputs: LSTMInputs) -> EngineSettings:
        """What a group's engine on ``device`` reads (:class:`.settings.EngineSettings`)."""
        decoupled = self.weight_decay_mode == "decoupled"
        return EngineSettings(
            decays=self._decay_tensors(group, device),
            decay_values=tuple(tuple(group[f"{k}_decays"]) for k in DECAY_KINDS),
            mlp=self.network_on(device).mlp, inputs=inputs, kernel_layout=group["kernel_layout"], lr=group["lr"],
            exp_mult=group["exp_mult"], step_mult=group["step_mult"],
            weight_decay=group["weight_decay"] if decoupled else 0.0, interp_mult=self.interp_mult,
            use_lr_mult=self.controller.use_lr_mult, chunk_size=group["chunk_size"], device=device,
            workspaces=self._workspaces)

    def _parts(self, items, fraction_features, loss_features) -> List[Part]:
        """The items grouped by (param group, device, backend), in order of first appearance; DTensor
        parameters form parts of their own: their local shards, with their splits."""
        buckets: Dict[Tuple[int, torch.device, str], List[int]] = {}
        for i, (group, p, _) in enumerate(items):
            backend = "sharded" if is_dtensor(p) else self._backend_for(group, p.device)
            buckets.setdefault((id(group), p.device, backend), []).append(i)
        parts = []
        for (_, device, backend), idx in buckets.items():
            inputs = LSTMInputs(self.controller, fraction_features.to(device), loss_features.to(device))
            group, params = items[idx[0]][0], [items[i][1] for i in idx]
            settings = self._settings(group, device, inputs)
            states = [self.state[p] for p in params]
            if backend == "sharded":
                backend = shard_backend(self._backend_for(group, device))
                settings.splits = [self._split_for(group, p) for p in params]
                params, states = local_views(params, states)
            parts.append(Part(backend, idx, params, [items[i][2] for i in idx], states, settings))
        return parts

    def _update(self, items, loss_t, main) -> None:
        """One HyperV2 update of ``items`` (group, param, float32 grad in torch layout)."""
        g_state = self._global_state()
        # ten numbers, kept on the CPU: their float64 roundings work on every device
        buffer = loss_buffer.update(loss_buffer.to(g_state["loss_buffer"], "cpu"), loss_t.cpu())
        loss_features = loss_buffer.features(buffer).to(main)
        fraction = (torch.tensor(g_state["iteration"], dtype=torch.float32, device=main)
                    / torch.tensor(g_state["num_steps"], dtype=torch.float32, device=main))
        rnn = self.network_on(main).rnn
        self._init_group(items, rnn)
        hyperv2(self._parts(items, fractional_tanh_embedding(fraction), loss_features), rnn=rnn,
                controller=self.controller, device=main)
        self._set_global_state(iteration=g_state["iteration"] + 1, loss_buffer=buffer)

    # --------------------------------------------------------- checkpoint config
    def _warn_on_training_config(self, config: Dict, **flags) -> None:
        """Warn when the checkpoint records training flags that differ from the ones in use."""
        recorded = config.get("pylo", {}).get("optimizer_config", {}) if isinstance(config, dict) else {}
        differ = [name for name, value in flags.items() if name in recorded and bool(recorded[name]) != bool(value)]
        if differ:
            want = ", ".join(f"{name}={bool(recorded[name])}" for name in differ)
            warnings.warn(f"{self.display_name}: the checkpoint was trained with {want}, but "
                          f"{', '.join(f'{n}={bool(flags[n])}' for n in differ)} is in use; pass {want} to reproduce "
                          "upstream", stacklevel=3)
