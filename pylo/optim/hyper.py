"""What VeLO and Celo share: upstream HyperV2's machinery, written once.

Per :meth:`step` (``g`` the gradients, float32, conv kernels in JAX's HWIO
layout, scalars as ``(1,)``):

1. the loss goes through the loss buffer (:mod:`pylo.core.loss_buffer`), which
   yields nine loss features;
2. gradients are clipped element-wise to [-1000, 1000];
3. every tensor gets an LSTM input vector (the subclass decides which
   features) from its *old* parameters and accumulators; one LSTM step over
   all tensors at once (they meet in a max-pool) gives per-tensor controls,
   a learning-rate multiplier and the next LSTM state;
4. momentum, RMS and Adafactor accumulators are updated with the clipped ``g``;
5. each tensor's MLP is the controls-weighted mean of the bank of
   ``param_inits`` MLPs (times ``interp_mult``); it reads the 14 per-element
   feature groups (each second-moment normalised) and returns a direction
   ``d`` and a magnitude ``mu``;
6. ``step = lr_mult * d * (sqrt(mean(p^2) + 1e-9) * exp(mu * exp_mult)) * step_mult``
   and ``p <- p - lr * step``.

The per-tensor LSTM state lives with each parameter's state, so parameters
without a gradient (or frozen) simply sit a step out, and parameters added
later start from the learned initial state. The global state (iteration, loss
buffer, training horizon, gradient-averaging buffers) lives in
``self.state["hyper_v2"]``, which ``state_dict`` carries.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pylo.core import accumulators as acc
from pylo.core import loss_buffer
from pylo.core.clipping import clip_by_global_norm
from pylo.core.decays import learned_decays
from pylo.core.features import fractional_tanh_embedding, hyper_feature_groups, second_moment_normalize
from pylo.core.layout import from_work, to_work
from pylo.spec.shapes import KERNEL_LAYOUTS
from pylo.kernels import triton_available
from pylo.models.hyper_network import HyperNetwork
from pylo.optim.base import LearnedOptimizer, check_number

GLOBAL_STATE_KEY = "hyper_v2"
GRAD_CLIP = 1000.0
RMS_EPS = 1e-6
NORMALIZER_EPS = 1e-5
WEIGHT_DECAY_MODES = ("decoupled", "prefab")
DEFAULT_MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
DEFAULT_RMS_DECAYS = (0.999,)
DEFAULT_ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
BACKENDS = ("naive", "foreach", "fused", "triton")
#: elements per chunk of the fused backend: ~3.5 MB of channel-major features, few enough slabs that the
#: per-operation overhead stays small (single-thread CPU time: 16384 -> 32768 is ~10% faster, 65536 ~ the same)
DEFAULT_CHUNK = 32768
FAST_BACKENDS = ("fused", "triton")


def resolve_backend(backend: Optional[str], foreach: Optional[bool], device: torch.device,
                    triton_ok: bool = True) -> str:
    """The backend a group runs on ``device``.

    ``None`` is the published ``foreach`` rule (multi-tensor when ``foreach=True``,
    or by default on CUDA; else naive); ``"auto"`` is the Triton kernels on CUDA
    when Triton is available (and ``triton_ok``: the network's geometry is one
    they implement), else the fused backend.
    """
    if backend is None:
        return "foreach" if (foreach if foreach is not None else device.type == "cuda") else "naive"
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_ok and triton_available(device) else "fused"
    return backend


def check_backend(backend: Optional[str], foreach: Optional[bool], chunk_size) -> None:
    """Validate ``backend`` / ``foreach`` / ``chunk_size`` (clear errors at construction)."""
    if backend is not None and backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    if backend is not None and foreach is not None and backend != ("foreach" if foreach else "naive"):
        raise ValueError(f"backend={backend!r} contradicts foreach={foreach!r}: pass one of them")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def group_widths(k_mom: int, k_rms: int, k_fac: int) -> Tuple[int, ...]:
    """Widths of the 14 per-element feature groups for the given numbers of decays."""
    return (1, 1, 1, k_mom, k_rms, max(k_mom, k_rms), k_rms, k_fac, k_rms, k_fac, k_fac, k_fac, k_fac,
            max(k_mom, k_fac))


def effective_decays(initial: Sequence[float], offsets: Sequence[float]) -> List[float]:
    """The decays to use: the initial ones, or upstream's reparameterisation when offsets are given.

    HyperV2 uses its initial decays as they are; the published API also takes
    learned offsets (all zero by default), applied as ``1 - (1 - d0) * exp(10 * offset)``.
    """
    if len(offsets) != len(initial):
        raise ValueError(f"{len(offsets)} decay offsets given for {len(initial)} initial decays")
    if not any(offsets):
        return [float(x) for x in torch.tensor(list(initial), dtype=torch.float32)]
    return learned_decays(initial, offsets)


def apply_update(p: torch.Tensor, update: torch.Tensor) -> None:
    """``p -= update`` computed in float32 (a low-precision ``p`` is rounded once)."""
    if p.dtype == torch.float32:
        p.sub_(update)
    else:
        p.copy_((p.to(torch.float32) - update).to(p.dtype))


# ---------------------------------------------------------------- the MLP half
def hyper_mlp_step(params: List[torch.Tensor], params_work: List[torch.Tensor], grads_work: List[torch.Tensor],
                   states: List[Dict[str, torch.Tensor]], controls: torch.Tensor, lr_mults: torch.Tensor, *,
                   mlp, decays: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], widths: Sequence[int],
                   interp_mult: float, use_lr_mult: bool, lr: float, exp_mult: float, step_mult: float,
                   weight_decay: float, kernel_layout: str, foreach: bool) -> None:
    """Accumulators, per-tensor MLP and parameter update of one group on one device.

    ``grads_work`` are clipped work-layout gradients; ``controls`` ``(n, P)`` and
    ``lr_mults`` ``(n,)`` come from the LSTM. ``foreach=True`` updates momentum
    and RMS with multi-tensor kernels and interpolates every tensor's MLP in
    one batched operation; ``False`` goes tensor by tensor. Both compute the same update.
    """
    if not params:
        return
    fn = _multi_tensor_hyper_mlp if foreach else _single_tensor_hyper_mlp
    fn(params, params_work, grads_work, states, controls, lr_mults, mlp=mlp, decays=decays, widths=widths,
       interp_mult=interp_mult, use_lr_mult=use_lr_mult, lr=lr, exp_mult=exp_mult, step_mult=step_mult,
       weight_decay=weight_decay, kernel_layout=kernel_layout)


def _tensor_step(mlp, weights, widths, pw, gw, state, fac_g, lr_mult, *, use_lr_mult, exp_mult, step_mult
                 ) -> torch.Tensor:
    groups = hyper_feature_groups(pw, gw, state["mom"], state["rms"], fac_g, state["fac_row"], state["fac_col"],
                                  state["fac_diag"], rms_eps=RMS_EPS, diag_groups=True)
    dims = range(pw.dim())
    groups = [second_moment_normalize(x, dims, NORMALIZER_EPS) for x in groups]
    out = mlp(groups, weights, widths)
    direction, magnitude = out[..., 0], out[..., 1]
    param_scale = torch.sqrt((pw * pw).mean() + 1e-9)
    step = direction * (param_scale * torch.exp(magnitude * exp_mult)) * step_mult
    return lr_mult * step if use_lr_mult else step


def _finish(p, pw, step, *, lr, weight_decay, kernel_layout) -> None:
    if weight_decay:
        step = step + weight_decay * pw
    apply_update(p, from_work(step * lr, p, kernel_layout))


def _single_tensor_hyper_mlp(params, params_work, grads_work, states, controls, lr_mults, *, mlp, decays, widths,
                             interp_mult, use_lr_mult, lr, exp_mult, step_mult, weight_decay, kernel_layout):
    bank = mlp.flat_bank()
    for i, (p, pw, gw, state) in enumerate(zip(params, params_work, grads_work, states)):
        fac_g = acc.AccumulatorSet.update(state, gw, *decays)
        weights = mlp.unflatten(interp_mult * (bank * controls[i].unsqueeze(-1)).mean(0))
        step = _tensor_step(mlp, weights, widths, pw, gw, state, fac_g, lr_mults[i], use_lr_mult=use_lr_mult,
                            exp_mult=exp_mult, step_mult=step_mult)
        _finish(p, pw, step, lr=lr, weight_decay=weight_decay, kernel_layout=kernel_layout)


def _multi_tensor_hyper_mlp(params, params_work, grads_work, states, controls, lr_mults, *, mlp, decays, widths,
                            interp_mult, use_lr_mult, lr, exp_mult, step_mult, weight_decay, kernel_layout):
    mom_d, rms_d, fac_d = decays
    acc.update_momentum_foreach([s["mom"] for s in states], grads_work, mom_d)
    acc.update_rms_foreach([s["rms"] for s in states], grads_work, rms_d)
    all_weights = interp_mult * (mlp.flat_bank().unsqueeze(0) * controls.unsqueeze(-1)).mean(1)
    for i, (p, pw, gw, state) in enumerate(zip(params, params_work, grads_work, states)):
        fac_g = acc.update_factored(state["fac_row"], state["fac_col"], state["fac_diag"], gw, fac_d)
        step = _tensor_step(mlp, mlp.unflatten(all_weights[i]), widths, pw, gw, state, fac_g, lr_mults[i],
                            use_lr_mult=use_lr_mult, exp_mult=exp_mult, step_mult=step_mult)
        _finish(p, pw, step, lr=lr, weight_decay=weight_decay, kernel_layout=kernel_layout)


# ------------------------------------------------------------------- optimizer
class HyperOptimizerBase(LearnedOptimizer):
    """Shared base of :class:`~pylo.optim.VeLO_naive` and :class:`~pylo.optim.Celo_naive`.

    Subclasses set ``display_name`` and implement :meth:`lstm_inputs`,
    :meth:`lr_mult`, :meth:`controls` and the small policy methods below.
    """

    def __init__(self, params, *, network: HyperNetwork, num_steps: int, lr, exp_mult, step_mult, weight_decay,
                 weight_decay_mode: str, momentum_decays, rms_decays, adafactor_decays, initial_momentum_decays,
                 initial_rms_decays, initial_adafactor_decays, interp_mult: float, clip_grad: bool,
                 max_grad_norm: Optional[float], all_reduce_loss: bool, max_training_steps: Optional[int],
                 foreach: Optional[bool], kernel_layout: str, nonfinite_grads: str = "raise",
                 extra_defaults: Optional[Dict] = None, backend: Optional[str] = None,
                 chunk_size: int = DEFAULT_CHUNK):
        check_number("lr", lr, minimum=0.0)
        check_number("exp_mult", exp_mult)
        check_number("step_mult", step_mult)
        check_number("weight_decay", weight_decay, minimum=0.0)
        check_number("interp_mult", interp_mult)
        if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer (the training horizon), got {num_steps!r}")
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {weight_decay_mode!r}")
        if max_training_steps is not None and (isinstance(max_training_steps, bool) or not isinstance(
                max_training_steps, numbers.Integral) or max_training_steps < 1):
            raise ValueError(f"max_training_steps must be a positive integer or None, got {max_training_steps!r}")
        if max_grad_norm is not None:
            check_number("max_grad_norm", max_grad_norm, minimum=0.0, strict=True)
        if kernel_layout not in KERNEL_LAYOUTS:
            raise ValueError(f"kernel_layout must be one of {KERNEL_LAYOUTS}, got {kernel_layout!r}")
        check_backend(backend, foreach, chunk_size)
        initials = [[float(x) for x in d] for d in (initial_momentum_decays, initial_rms_decays,
                                                      initial_adafactor_decays)]
        decays = [effective_decays(i, o) for i, o in zip(initials, (momentum_decays, rms_decays, adafactor_decays))]
        self.widths = group_widths(*(len(d) for d in decays))
        self._check_network(network, decays)
        defaults = dict(lr=lr, exp_mult=exp_mult, step_mult=step_mult, weight_decay=weight_decay,
                        momentum_decays=decays[0], rms_decays=decays[1], adafactor_decays=decays[2],
                        kernel_layout=kernel_layout, foreach=foreach, backend=backend, chunk_size=chunk_size,
                        **(extra_defaults or {}))
        super().__init__(params, defaults, network, nonfinite_grads=nonfinite_grads)
        self.num_steps = int(num_steps)
        self.weight_decay_mode = weight_decay_mode
        self.interp_mult = float(interp_mult)
        self.clip_grad = bool(clip_grad) or max_grad_norm is not None
        self.max_grad_norm = 1.0 if max_grad_norm is None else float(max_grad_norm)
        self.all_reduce_loss = bool(all_reduce_loss)
        self.max_training_steps = max_training_steps
        self.num_average = (int(math.ceil(self.num_steps / max_training_steps))
                            if max_training_steps is not None and self.num_steps > max_training_steps else 1)
        self._decay_cache: Dict[Tuple, Tuple[torch.Tensor, ...]] = {}
        self._workspaces: Dict = {}

    # ------------------------------------------------------------ subclass API
    def lstm_inputs(self, p: torch.Tensor, mom: torch.Tensor, rms: torch.Tensor, fraction_features: torch.Tensor,
                    loss_features: torch.Tensor) -> torch.Tensor:
        """One tensor's LSTM input (old work-layout ``p``, old accumulators)."""
        raise NotImplementedError

    def lstm_inputs_from_moments(self, moments, fraction_features: torch.Tensor,
                                 loss_features: torch.Tensor) -> torch.Tensor:
        """The same LSTM inputs, ``(K, inputs)``, from the whole-tensor statistics of ``K`` tensors
        (:class:`pylo.optim.hyper_fused.TensorMoments`), as the fused and Triton backends gather them."""
        raise NotImplementedError

    def lstm_reads_moments(self) -> bool:
        """Whether the LSTM input reads the momentum / RMS statistics (else only ``mean(p^2)`` is gathered)."""
        return True

    def lstm_input_size(self, decays) -> int:
        raise NotImplementedError

    def lr_mult(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def controls(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def uses_lr_mult(self) -> bool:
        return True

    def propagates_lstm_state(self) -> bool:
        return True

    def loss_horizon(self, inner_steps: int) -> int:
        return inner_steps

    # ------------------------------------------------------------------ checks
    def _check_network(self, net: HyperNetwork, decays) -> None:
        name = self.display_name
        want_lstm, want_mlp = self.lstm_input_size(decays), sum(self.widths)
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
        key = (device, tuple(group["momentum_decays"]), tuple(group["rms_decays"]), tuple(group["adafactor_decays"]))
        if key not in self._decay_cache:
            self._decay_cache[key] = tuple(acc.float32_decays(group[f"{k}_decays"], device)
                                           for k in ("momentum", "rms", "adafactor"))
        return self._decay_cache[key]

    # -------------------------------------------------------------- the loss
    def _loss_tensor(self, loss, device) -> torch.Tensor:
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"{self.display_name}.step() needs a scalar loss, got a tensor of shape "
                                 f"{tuple(loss.shape)} (reduce it first, e.g. loss.mean())")
            if loss.is_complex():
                raise ValueError(f"{self.display_name}.step() needs a real loss, got {loss.dtype}")
            loss_t = loss.detach().reshape(()).to(device=device, dtype=torch.float32)
        elif isinstance(loss, numbers.Real) and not isinstance(loss, bool):
            loss_t = torch.tensor(float(loss), dtype=torch.float32, device=device)
        else:
            raise TypeError(f"{self.display_name}.step() takes the loss as a tensor or a float, "
                            f"got {type(loss).__name__}")
        if self.all_reduce_loss:
            loss_t = all_reduce_mean(loss_t)
        return loss_t

    def _missing_loss(self) -> TypeError:
        return TypeError(f"{self.display_name}.step() needs the training loss: its LSTM reads the loss history. "
                         "Call opt.step(loss) (a tensor or a float) or opt.step(closure) with a closure that "
                         "returns the loss")

    # ------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One update; takes the loss (``step(loss)``, ``step(loss=...)``) or a closure returning it.

        Returns the loss. With ``nonfinite_grads="raise"`` (default) a NaN/Inf gradient or
        loss raises and nothing changes; with ``"upstream"`` they go through as upstream
        lets them (gradients clipped to +-1000, NaN propagating).
        """
        loss = self._resolve_loss(closure, loss)
        if loss is None:
            raise self._missing_loss()
        items = [(group, p, g) for group, params, grads in self._grad_entries() for p, g in zip(params, grads)]
        if not items:
            return loss
        main = items[0][1].device
        loss_t = self._loss_tensor(loss, main)
        grads = [g for _, _, g in items]
        if self.clip_grad:
            grads = clip_by_global_norm(grads, self.max_grad_norm)
        if self.weight_decay_mode == "prefab" and any(group["weight_decay"] for group, _, _ in items):
            loss_t, grads = self._prefab_weight_decay(items, grads, loss_t)
        if self.nonfinite_grads == "raise":
            self._check_loss(loss_t)
        items = [(group, p, g) for (group, p, _), g in zip(items, grads)]
        if self.num_average > 1:
            ready = self._accumulate(items, loss_t, main)
            if ready is None:
                return loss
            items, loss_t = ready
        self._update(items, loss_t, main)
        return loss

    def _prefab_weight_decay(self, items, grads, loss_t):
        """learned_optimization's ``WeightDecayWrapper``: ``g + wd*p`` and ``loss + sum(wd * sum(p^2))``."""
        penalty = None
        out = []
        for (group, p, _), g in zip(items, grads):
            wd = group["weight_decay"]
            pf = p.detach().to(torch.float32)
            out.append(g + wd * pf if wd else g)
            term = torch.sum(pf * pf).to(loss_t.device) * wd
            penalty = term if penalty is None else penalty + term
        return loss_t + penalty, out

    def _check_loss(self, loss_t: torch.Tensor) -> None:
        value = float(loss_t)
        if not math.isfinite(value):
            raise ValueError(f"{self.display_name}: the loss is not finite ({value}): step not taken, parameters "
                             "and optimizer state unchanged")

    def _global_state(self, device) -> Dict:
        state = self.state.get(GLOBAL_STATE_KEY)
        if state is None:
            inner = self.num_steps // self.num_average
            state = {"iteration": 0, "num_steps": inner, "micro_step": 0, "loss_accum": None,
                     "loss_buffer": loss_buffer.init(self.loss_horizon(inner))}
            self.state[GLOBAL_STATE_KEY] = state
        return state

    def _accumulate(self, items, loss_t, device):
        """prefab's ``GradientAccumulator``: sum ``num_average`` micro-steps, update with their mean."""
        state = self._global_state(device)
        for _, p, g in items:
            st = self.state[p]
            if "grad_accum" in st:
                st["grad_accum"].add_(g)
            else:
                st["grad_accum"] = g.clone()
        loss_accum = loss_t if state["loss_accum"] is None else state["loss_accum"].to(device) + loss_t
        micro_step = state["micro_step"] + 1
        if micro_step % self.num_average:
            self.state[GLOBAL_STATE_KEY] = {**state, "micro_step": micro_step, "loss_accum": loss_accum}
            return None
        self.state[GLOBAL_STATE_KEY] = {**state, "micro_step": micro_step, "loss_accum": None}
        ready = []
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st and "grad_accum" in st:
                    ready.append((group, p, st.pop("grad_accum") / self.num_average))
        return ready, loss_accum / self.num_average

    def _init_param_state(self, state, pw: torch.Tensor, decays, net: HyperNetwork) -> None:
        """Zero accumulators shaped like the work-layout ``pw`` and the learned initial LSTM state."""
        acc.AccumulatorSet.init(state, pw.shape, *(d.numel() for d in decays), pw.device)
        hidden, cell = net.rnn.lstm_init_state
        state["lstm_hidden"] = hidden.detach()[0].to(device=pw.device, dtype=torch.float32, copy=True)
        state["lstm_cell"] = cell.detach()[0].to(device=pw.device, dtype=torch.float32, copy=True)

    def _backend_for(self, group, device: torch.device) -> str:
        backend = group.get("backend")
        triton_ok = backend == "auto" and device.type == "cuda" and self._triton_supports(self.network)
        return resolve_backend(backend, group.get("foreach"), device, triton_ok=triton_ok)

    @staticmethod
    def _triton_supports(net: HyperNetwork) -> bool:
        from pylo.optim.hyper_triton import supports

        return supports(net)

    def _engine(self, backend: str, group, device, net: HyperNetwork):
        """The fused or Triton engine of a group on a device (cheap to build; workspaces are cached)."""
        kwargs = dict(decays=self._decay_tensors(group, device), hidden=net.mlp.hidden_size,
                      kernel_layout=group["kernel_layout"], device=device)
        if backend == "triton":
            from pylo.optim.hyper_triton import TritonHyper

            values = tuple(group[f"{k}_decays"] for k in ("momentum", "rms", "adafactor"))
            return TritonHyper(decay_values=values, **kwargs)
        from pylo.optim.hyper_fused import FusedHyper

        return FusedHyper(chunk=group["chunk_size"], workspaces=self._workspaces, **kwargs)

    def _update(self, items, loss_t, main) -> None:
        """One HyperV2 update of ``items`` (group, param, float32 grad in torch layout)."""
        g_state = self._global_state(main)
        # ten numbers, kept on the CPU: their float64 roundings work on every device
        buffer = loss_buffer.update(loss_buffer.to(g_state["loss_buffer"], "cpu"), loss_t.cpu())
        loss_features = loss_buffer.features(buffer).to(main)
        fraction = (torch.tensor(g_state["iteration"], dtype=torch.float32, device=main)
                    / torch.tensor(g_state["num_steps"], dtype=torch.float32, device=main))
        fraction_features = fractional_tanh_embedding(fraction)
        net = self.network_on(main)

        # per (group, device, backend): the tensors' positions in ``items``
        buckets: Dict[Tuple[int, torch.device, str], List[int]] = {}
        for i, (group, p, g) in enumerate(items):
            state = self.state[p]
            if "mom" not in state:
                self._init_param_state(state, to_work(p, group["kernel_layout"]), self._decay_tensors(group, p.device),
                                       net)
            buckets.setdefault((id(group), p.device, self._backend_for(group, p.device)), []).append(i)

        # LSTM inputs from the old parameters and accumulators. The fused and Triton backends gather them in
        # their first pass, which also updates the accumulators (batches of small tensors at once); payload:
        # (p_work, g_work) for naive/foreach, the backend's handle for fused/triton
        lstm_in = torch.empty(len(items), net.rnn.input_size, device=main)
        payloads: List[object] = [None] * len(items)
        engines: Dict[Tuple, object] = {}
        for key, idx in buckets.items():
            _, dev, backend = key
            group = items[idx[0]][0]
            ff, lf = fraction_features.to(dev), loss_features.to(dev)
            if backend in FAST_BACKENDS:
                engines[key] = engine = self._engine(backend, group, dev, self.network_on(dev))
                handles, batches = engine.prepare_all([items[i][1] for i in idx], [items[i][2] for i in idx],
                                                      [self.state[items[i][1]] for i in idx],
                                                      moments=self.lstm_reads_moments())
                for i, handle in zip(idx, handles):
                    payloads[i] = handle
                for positions, moments in batches:
                    rows = torch.tensor([idx[j] for j in positions], device=main)
                    lstm_in.index_copy_(0, rows, self.lstm_inputs_from_moments(moments, ff, lf).to(main))
                continue
            for i in idx:
                _, p, g = items[i]
                layout, state = group["kernel_layout"], self.state[p]
                pw = to_work(p, layout).to(torch.float32)
                payloads[i] = (pw, to_work(torch.clamp(g, -GRAD_CLIP, GRAD_CLIP), layout))
                lstm_in[i] = self.lstm_inputs(pw, state["mom"], state["rms"], ff, lf).to(main)
        states = [self.state[p] for _, p, _ in items]
        hidden = torch.stack([st["lstm_hidden"].to(main) for st in states])
        cell = torch.stack([st["lstm_cell"].to(main) for st in states])
        raw_controls, raw_lr, (next_hidden, next_cell) = net.rnn(lstm_in, (hidden, cell))
        controls, lr_mults = self.controls(raw_controls), self.lr_mult(raw_lr)
        if self.propagates_lstm_state():
            for key, new in (("lstm_hidden", next_hidden), ("lstm_cell", next_cell)):
                if all(st[key].device == main for st in states):
                    torch._foreach_copy_([st[key] for st in states], list(new.unbind(0)))
                else:
                    for i, st in enumerate(states):
                        st[key].copy_(new[i])

        for key, idx in buckets.items():
            _, device, backend = key
            group = items[idx[0]][0]
            wd = group["weight_decay"] if self.weight_decay_mode == "decoupled" else 0.0
            sel = torch.tensor(idx, device=main)
            group_controls = controls.index_select(0, sel).to(device)
            group_lr_mults = lr_mults.index_select(0, sel).to(device)
            step_kwargs = dict(interp_mult=self.interp_mult, use_lr_mult=self.uses_lr_mult(), lr=group["lr"],
                               exp_mult=group["exp_mult"], step_mult=group["step_mult"], weight_decay=wd)
            mlp = self.network_on(device).mlp
            if backend in FAST_BACKENDS:
                engines[key].finish([payloads[i] for i in idx], group_controls, group_lr_mults, mlp=mlp,
                                    **step_kwargs)
                continue
            hyper_mlp_step([items[i][1] for i in idx], [payloads[i][0] for i in idx], [payloads[i][1] for i in idx],
                           [states[i] for i in idx], group_controls, group_lr_mults, mlp=mlp,
                           decays=self._decay_tensors(group, device), widths=self.widths,
                           kernel_layout=group["kernel_layout"], foreach=backend == "foreach", **step_kwargs)
        self.state[GLOBAL_STATE_KEY] = {**self._global_state(main), "iteration": g_state["iteration"] + 1,
                                        "loss_buffer": buffer}

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


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all ranks when ``torch.distributed`` is initialised, else ``value``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()
