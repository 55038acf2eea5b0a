"""What every pylo optimizer shares on top of ``torch.optim.Optimizer``.

* gradients are collected, validated (sparse and complex gradients are refused
  with a clear message) and copied to float32 work tensors; the caller's
  ``.grad`` is never modified;
* a NaN or Inf gradient raises :class:`NonFiniteGradientError` before anything
  changes (``nonfinite_grads="raise"``, the default; it costs one host sync per
  step), or is handled exactly as upstream handles it (``"upstream"``: the μLO,
  ELO and ELO-CELO2 wrappers apply ``nan_to_num``; CELO2's clamps +-inf to
  +-1000 on its learned path only; VeLO and Celo propagate it);
* ``step(closure)`` and ``step(loss)`` both work (the published PyLO API passes
  the loss positionally); a closure runs under ``torch.enable_grad()``;
* optimizer state stays float32 whatever the parameter dtype, and
  ``load_state_dict`` restores it bit-exactly on the parameters' devices
  (torch's default would cast it to a bf16 parameter's dtype) without
  touching the caller's dict;
* the meta-network is copied once to each device that holds parameters.
"""

from __future__ import annotations

import copy
import hashlib
import math
import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from pylo.core.clipping import clip_by_global_norm
from pylo.optim.backend import BACKEND_KEYS
from pylo.core.reduce import all_reduce_leaves
from pylo.optim.sharded import is_dtensor, local_grad, local_split, local_tensor, shard_axis, whole_tensors

LossLike = Union[torch.Tensor, float, int]
NONFINITE_MODES = ("raise", "upstream")


class NonFiniteGradientError(ValueError):
    """A gradient holds NaN or Inf; the step was not taken and nothing changed."""


class LearnedOptimizer(torch.optim.Optimizer):
    """Base class of every pylo optimizer.

    A family's class implements ``step`` on top of these helpers and creates missing per-parameter
    state in ``_init_group`` (as ``torch.optim`` does) before its backend engines run.
    """

    #: name used in messages
    display_name = "learned optimizer"

    def __init__(self, params, defaults: Dict[str, Any], network: nn.Module, nonfinite_grads: str = "raise"):
        if nonfinite_grads not in NONFINITE_MODES:
            raise ValueError(f"nonfinite_grads must be one of {NONFINITE_MODES}, got {nonfinite_grads!r}")
        super().__init__(params, defaults)
        self.nonfinite_grads = nonfinite_grads
        self.network = network
        self._device_networks: Dict[torch.device, nn.Module] = {}
        self._network_fingerprint: Optional[str] = None  # computed on the first state_dict()
        self._pending_loss: Optional[LossLike] = None  # accumulate_loss()'s sum, consumed by step()

    @torch.compiler.disable  # torch.compile(opt.step) runs this eagerly: docs/compile.md says why
    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """One update; ``closure`` (re-evaluates the model, run with gradients on) or ``loss``; returns the loss.

        DTensor parameters (FSDP2, HSDP, tensor parallel) are stepped shard-wise or as their whole
        tensors (:mod:`pylo.optim.sharded`), so a sharded run computes what an unsharded one does.
        """
        from_closure = callable(closure)
        given = self._resolve_loss(closure, loss)
        pending, self._pending_loss = getattr(self, "_pending_loss", None), None
        if pending is not None and given is not None and not from_closure:
            self._pending_loss = pending
            raise TypeError(f"{self.display_name}.step() was given a loss, and losses were also recorded with "
                            "accumulate_loss() since the last step; pass one or the other")
        try:
            with whole_tensors(self):
                if self._is_state_initialisation(given, pending):
                    self._init_state(self._grad_entries())
                    return None
                used = self._step(given if pending is None else pending)
        except BaseException:
            self._pending_loss = pending  # all-or-nothing: a refused step keeps the recorded losses too
            raise
        return given if from_closure else used

    def accumulate_loss(self, loss: LossLike) -> None:
        """Record the loss of a micro-batch whose gradient was just added to ``.grad``.

        The next :meth:`step` feeds the loss-reading optimizers (VeLO, Celo) the *sum* of the losses
        recorded since the last step or :meth:`zero_grad`; with recorded losses, a closure's return value
        is not used (the closure still runs) and a loss argument is an error. Record exactly the loss you call ``backward()`` on (already divided by the number
        of accumulated micro-batches, not multiplied by a ``GradScaler``'s scale): then the sum is the
        loss whose gradient is in ``.grad``, the mean loss of one big batch. The trainer integrations in
        :mod:`pylo.integrations` call this for you. Loss-free optimizers accept and ignore it.

        Example::

            for x, y in micro_batches:                      # k micro-batches, one step
                loss = criterion(model(x), y) / k
                loss.backward()
                opt.accumulate_loss(loss)
            opt.step()                                      # VeLO sees the mean loss of the k batches
            opt.zero_grad()
        """
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1 or loss.is_complex():
                raise ValueError(f"accumulate_loss() takes a real scalar loss, got a {loss.dtype} tensor of "
                                 f"shape {tuple(loss.shape)}")
            loss = loss.detach().reshape(()).to(torch.float32)
        elif not isinstance(loss, numbers.Real) or isinstance(loss, bool):
            raise TypeError(f"accumulate_loss() takes a tensor or a float, got {type(loss).__name__}")
        pending = getattr(self, "_pending_loss", None)
        self._pending_loss = loss if pending is None else pending + loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``torch.optim``'s; also forgets the losses recorded with :meth:`accumulate_loss`."""
        super().zero_grad(set_to_none)
        self.clear_accumulated_loss()

    def clear_accumulated_loss(self) -> None:
        """Forget the losses recorded with :meth:`accumulate_loss` (for trainers that zero the gradients
        through the model, ``model.zero_grad()``, after a step a ``GradScaler`` skipped)."""
        self._pending_loss = None

    def _step(self, loss: Optional[LossLike]):
        """The family's update on ordinary tensors, given the resolved loss (``None`` without one)."""
        raise NotImplementedError

    def _init_state(self, entries) -> None:
        """Create the fresh state of the parameters in ``entries`` (as :meth:`_grad_entries` gives them)."""
        raise NotImplementedError

    def _is_state_initialisation(self, given, pending) -> bool:
        """``torch.distributed.checkpoint``'s way to make a lazily built state exist: ``step()`` without a loss
        on an optimizer with no state yet, every ``lr`` 0 and every gradient zero. pylo then only creates the
        state a first step would start from and changes nothing else (no update, no counter, no loss
        needed), so saving or loading a fresh optimizer leaves it fresh."""
        if self.state or given is not None or pending is not None:
            return False
        if any(bool(group.get("lr", 1) != 0) for group in self.param_groups):
            return False
        held = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not held:
            return False
        nonzero = [(torch.count_nonzero(local_tensor(p.grad)) > 0).to(torch.float32) for _, p in held]
        splits = [self._split_for(group, p) for group, p in held]  # DTensors left here are stepped shard-wise
        if any(splits):  # a shard's verdict is its whole gradient's, on every rank
            nonzero = all_reduce_leaves(nonzero, splits, op="max")
        return not any(bool(flag) for flag in nonzero)

    #: whether DTensor parameters are stepped shard by shard (:mod:`pylo.optim.sharded`); set it to
    #: False on an optimizer before its first step to gather them whole instead (state replicated)
    shard_wise = False

    def _steps_shard_wise(self, group: Dict, p: torch.Tensor) -> bool:
        """Whether DTensor parameter ``p`` is stepped on its local shard (else gathered whole)."""
        return self.shard_wise and shard_axis(p)[0]

    @staticmethod
    def _split_for(group: Dict, p: torch.Tensor):
        """The :class:`~pylo.core.reduce.Split` of a parameter stepped shard-wise (None otherwise)."""
        return local_split(p, group.get("kernel_layout", "torch")) if is_dtensor(p) else None

    def _entry_splits(self, entries) -> List:
        return [self._split_for(group, p) for group, params, _ in entries for p in params]

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """``torch.optim``'s, refusing parameters this optimizer would update wrongly."""
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            check_parameter(p, self.display_name)

    # ------------------------------------------------------------------ helpers
    def network_on(self, device: torch.device) -> nn.Module:
        """The float32 meta-network on ``device`` (copied once, then reused)."""
        net = self._device_networks.get(device)
        if net is None:
            first = next(self.network.parameters(), None)
            same = first is None or (first.device == device and first.dtype == torch.float32)
            net = self.network if same else copy.deepcopy(self.network).to(device=device, dtype=torch.float32)
            self._device_networks[device] = net
        return net

    def _grad_entries(self) -> List[Tuple[dict, List[torch.Tensor], List[torch.Tensor]]]:
        """Per group: the parameters that get updated and their float32 gradients.

        Parameters without a gradient, with ``requires_grad=False`` or with no elements are skipped
        (they get no state). A DTensor parameter stepped shard-wise gets its local gradient.
        """
        out = []
        for group in self.param_groups:
            params, grads = [], []
            for p in group["params"]:
                if p.grad is None or not p.requires_grad or p.numel() == 0:
                    continue  # a zero-element tensor has nothing to update and must not enter any statistic
                if p.grad.is_sparse:
                    raise RuntimeError(f"{self.display_name} does not support sparse gradients "
                                       "(use a dense embedding, e.g. nn.Embedding(sparse=False))")
                if p.is_complex() or p.grad.is_complex():
                    raise RuntimeError(f"{self.display_name} does not support complex parameters; "
                                       "optimize torch.view_as_real(param) instead")
                params.append(p)
                grads.append((local_grad(p) if is_dtensor(p) else p.grad).detach().to(torch.float32))
            out.append((group, params, grads))
        if self.nonfinite_grads == "raise":
            self._check_finite(out)
        return out

    def _check_finite(self, entries) -> None:
        """Refuse NaN/Inf gradients and gradients whose square overflows float32 (``|g| > ~1.8e19``: the
        moments and norms every optimizer computes would turn them into Inf and NaN for good)."""
        grads = [g for _, _, gs in entries for g in gs]
        if not grads:
            return
        # one norm per tensor (no temporaries), squared: finite exactly when every g*g and their sum are;
        # NaN and Inf propagate through it. One host sync per device; only a failure looks closer.
        squares = [torch.linalg.vector_norm(g).square() for g in grads]
        splits, nonfinite = self._entry_splits(entries), None
        if any(splits):  # one collective before any branch: each split tensor's whole sum, on every rank
            flags = [torch.stack([sq, (~torch.isfinite(g).all()).to(torch.float32)]) for sq, g in zip(squares, grads)]
            flags = all_reduce_leaves(flags, splits, op="sum")
            squares, nonfinite = [f[0] for f in flags], [f[1] for f in flags]
        finite_sq = [torch.isfinite(sq) for sq in squares]
        by_device: Dict[torch.device, List[torch.Tensor]] = {}
        for g, ok in zip(grads, finite_sq):
            by_device.setdefault(g.device, []).append(ok)
        if all(bool(torch.stack(oks).all()) for oks in by_device.values()):
            return
        if nonfinite is None:
            nonfinite = [(~torch.isfinite(g).all()).to(torch.float32) for g in grads]
        bad, overflow, i = [], False, 0
        for group, params, gs in entries:
            names = dict(zip(map(id, group["params"]), group.get("param_names", [])))
            for p, g in zip(params, gs):
                if not bool(finite_sq[i]):
                    bad.append(repr(names[id(p)]) if id(p) in names else f"#{i} {tuple(p.shape)}")
                    overflow = overflow or not bool(nonfinite[i])
                i += 1
        what = ("a gradient too large for float32 (its square overflows)" if overflow
                else "non-finite gradient (NaN or Inf)")
        raise NonFiniteGradientError(
            f"{what} in {', '.join(bad)}: step not taken, parameters and optimizer state "
            "unchanged (pass nonfinite_grads='upstream' to handle it as upstream does)")

    def _sanitized_entries(self, clip_norm: Optional[float], nan_to_num: bool):
        """:meth:`_grad_entries` with the gradients clipped by their global norm over *all* groups
        (optax ``clip_by_global_norm``, when ``clip_norm`` is given), then ``nan_to_num`` if asked."""
        entries = self._grad_entries()
        flat = [g for _, _, grads in entries for g in grads]
        if clip_norm is not None:
            flat = clip_by_global_norm(flat, clip_norm, self._entry_splits(entries))
        if nan_to_num:
            flat = [torch.nan_to_num(g) for g in flat]
        it = iter(flat)
        return [(group, params, [next(it) for _ in grads]) for group, params, grads in entries]

    @staticmethod
    def _by_device(params: List[torch.Tensor]) -> Dict[torch.device, List[int]]:
        """Indices of ``params`` per device, in order."""
        out: Dict[torch.device, List[int]] = {}
        for i, p in enumerate(params):
            out.setdefault(p.device, []).append(i)
        return out

    @staticmethod
    def _resolve_loss(closure: Optional[Union[Callable[[], LossLike], LossLike]],
                      loss: Optional[LossLike]) -> Optional[LossLike]:
        if closure is not None and loss is not None:
            raise TypeError("pass either a closure or a loss to step(), not both")
        if callable(closure):
            with torch.enable_grad():
                return closure()
        if closure is not None:
            if not isinstance(closure, (torch.Tensor, numbers.Real)):
                raise TypeError(f"step() takes a closure or a loss (tensor or float), got {type(closure).__name__}")
            return closure
        return loss

    # ------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        """``torch.optim``'s state dict, plus what it belongs to under ``"pylo"``: the optimizer, a
        fingerprint of the meta-network and the parameters' shapes (checked by :meth:`load_state_dict`)."""
        out = super().state_dict()
        out[STATE_META_KEY] = self._identity()
        return out

    def _identity(self) -> Dict[str, Any]:
        if self._network_fingerprint is None:
            self._network_fingerprint = network_fingerprint(self.network)
        return {"optimizer": self.display_name, "network": self._network_fingerprint,
                "shapes": [[list(p.shape) for p in g["params"]] for g in self.param_groups]}

    def _check_identity(self, saved: Dict[str, Any]) -> None:
        """Refuse a state dict saved by another optimizer, meta-network or set of parameter shapes."""
        mine = self._identity()
        if saved.get("optimizer") != mine["optimizer"]:
            raise ValueError(f"{self.display_name}.load_state_dict: this is a {saved.get('optimizer')} state dict; "
                             "nothing loaded")
        if saved.get("network") != mine["network"]:
            raise ValueError(f"{self.display_name}.load_state_dict: the state dict was saved with another "
                             f"meta-network (fingerprint {saved.get('network')}, this one {mine['network']}); "
                             "nothing loaded")
        if saved.get("shapes") != mine["shapes"]:
            raise ValueError(f"{self.display_name}.load_state_dict: the state dict is for parameters of shapes "
                             f"{saved.get('shapes')}, these have {mine['shapes']}; nothing loaded")

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a :meth:`state_dict`, keeping float32 state exactly as saved.

        A state dict of another optimizer, meta-network or parameter shapes is refused before anything
        changes (dicts without the ``"pylo"`` record, from pylo 0.1.0, load as before). The given dict
        is not modified and shares no tensors with the optimizer. The backend choice (``backend``,
        ``foreach``, ``chunk_size``) stays the one this optimizer was built with.
        """
        if STATE_META_KEY in state_dict:
            self._check_identity(state_dict[STATE_META_KEY])
            state_dict = {k: v for k, v in state_dict.items() if k != STATE_META_KEY}
        saved_state = state_dict["state"]
        built_with = [{k: group[k] for k in BACKEND_KEYS if k in group} for group in self.param_groups]
        super().load_state_dict({**state_dict, "state": {}})
        for group, backend in zip(self.param_groups, built_with):  # the backend stays the constructed one
            group.update(backend)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        id_map = dict(zip(saved_ids, params))
        for key, value in saved_state.items():
            if key in id_map:
                param = id_map[key]
                self.state[param] = {k: _copy_to(v, param.device) for k, v in value.items()}
            else:
                self.state[key] = copy.deepcopy(value)


def _copy_to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, copy=True)
    return copy.deepcopy(value)


#: the key of a state dict's record of what it belongs to
STATE_META_KEY = "pylo"


def network_fingerprint(network: nn.Module) -> str:
    """A short hash of the meta-network's weights (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, t in sorted(network.state_dict().items()):
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_parameter(p: torch.Tensor, name: str) -> None:
    """Refuse what pylo cannot update correctly: non-float tensors and FSDP1's flattened shards
    (factoring, per-tensor statistics and orthogonalisation would run on a 1-D slice, silently wrong).
    DTensor parameters (FSDP2, tensor parallel) are fine: :mod:`pylo.optim.sharded`."""
    if not (p.is_floating_point() or p.is_complex()):
        raise TypeError(f"{name} optimizes floating-point tensors; got {p.dtype}")
    if getattr(p, "_fsdp_flattened", False):
        raise ValueError(f"{name} cannot run under FSDP1 (FullyShardedDataParallel): it hands the optimizer "
                         "flattened 1-D shards, on which the learned update would be silently wrong; use FSDP2 "
                         "(torch.distributed.fsdp.fully_shard) or DDP")


def check_number(name: str, value, minimum: Optional[float] = None, strict: bool = False) -> None:
    """Validate a hyperparameter with a message naming it."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
