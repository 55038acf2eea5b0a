"""What CELO2 and ELO-CELO2 share as optimizers: validation, network loading, routing, the step loop.

Per step: optional global-norm clipping over *all* groups (``clip_grad``), then per group and
device the routing (:meth:`Celo2Base.routes_to_adamw`), the state (:meth:`Celo2Base._init_group`)
and one call of :func:`pylo.optim.celo2.functional.celo2` on the group's backend.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch

from pylo.core.decays import DECAY_KINDS, DecayTensors, checked_decays
from pylo.models.loading import NetworkSpec, load_network
from pylo.optim.backend import TORCH_DEFAULT, backend_options, resolve_backend, shard_backend
from pylo.optim.base import LearnedOptimizer, check_number
from pylo.optim.celo2.constants import EMBED_MARKER
from pylo.optim.celo2.functional import celo2
from pylo.optim.celo2.settings import Settings
from pylo.optim.celo2.triton import TritonEngine
from pylo.optim.sharded import is_dtensor, local_views
from pylo.spec.features import hyper_group_widths
from pylo.spec.shapes import KERNEL_LAYOUTS


#: the param-group defaults, in order, that the constructors' arguments give (``adam_*``: CELO2's own AdamW)
GROUP_ARGS = ("lr", "weight_decay", "adam_lr_mult", "adam_weight_decay", "adam_betas", "adam_eps", "use_adamw_for_1d",
              "orthogonalize", "initial_momentum_decays", "initial_rms_decays", "initial_adafactor_decays",
              "exp_mult", "rmsmult", "param_scale_mult", "ns_coeffs", "ns_iters", "ns_eps", "grad_clip_val",
              "is_embedding", "kernel_layout")
_AS_GIVEN = {"use_adamw_for_1d": bool, "orthogonalize": bool, "param_scale_mult": bool, "ns_coeffs": tuple}


def group_defaults(args: Mapping[str, Any], **given) -> Dict:
    """The param-group defaults from a constructor's arguments (``given`` over them; absent keys skipped)."""
    args = {**args, "is_embedding": False, **given}
    return {k: _AS_GIVEN.get(k, lambda v: v)(args[k]) for k in GROUP_ARGS if k in args}


def check_hyperparameters(defaults: Dict, clip_norm, ff_hidden_size, ff_hidden_layers) -> None:
    """Validate the family's shared constructor arguments (decays normalised to float lists in place)."""
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
    iters = defaults["ns_iters"]
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"ns_iters must be a non-negative integer, got {iters!r}")
    check_number("ns_eps", defaults["ns_eps"], minimum=0.0)
    if defaults["grad_clip_val"] is not None:
        check_number("grad_clip_val", defaults["grad_clip_val"], minimum=0.0, strict=True)
    if defaults["kernel_layout"] not in KERNEL_LAYOUTS:
        raise ValueError(f"kernel_layout must be one of {KERNEL_LAYOUTS}, got {defaults['kernel_layout']!r}")
    for k in DECAY_KINDS:
        defaults[f"initial_{k}_decays"] = checked_decays(f"initial_{k}_decays", defaults[f"initial_{k}_decays"])
    for name, v in (("ff_hidden_size", ff_hidden_size), ("ff_hidden_layers", ff_hidden_layers)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    defaults["ns_coeffs"] = tuple(float(c) for c in coeffs)


class Celo2Base(LearnedOptimizer):
    """The optimizer side of the CELO2 family.

    Subclasses set ``network_spec`` and implement :meth:`_settings` (their AdamW path) and
    :meth:`_init_group` (their state). ``default_backend`` is the class's backend when neither
    ``backend`` nor ``foreach`` is given (:func:`pylo.optim.backend.backend_options`).
    """

    network_spec: NetworkSpec
    default_backend: Optional[str] = TORCH_DEFAULT
    #: global-norm clipping, then nan_to_num (ELO-CELO2) or not (CELO2)
    upstream_nan_to_num = False
    shard_wise = True

    def _setup(self, params, args: Mapping[str, Any], **given) -> None:
        """Validate and build from the constructor's arguments ``args`` (its ``locals()``), ``given`` over
        the group defaults they make."""
        defaults = group_defaults(args, **given)
        check_hyperparameters(defaults, args["clip_norm"], args["ff_hidden_size"], args["ff_hidden_layers"])
        defaults.update(backend_options(args["backend"], args["foreach"], args["chunk_size"],
                                        default=self.default_backend))
        widths = hyper_group_widths(*(len(defaults[f"initial_{k}_decays"]) for k in DECAY_KINDS))
        net, _ = load_network(self.network_spec, network=args["network"], checkpoint_path=args["checkpoint_path"],
                              hub_keys=[args["hf_key"]] if args["hf_key"] else [],
                              fallback_config=dict(feature_dims=list(widths), hidden_size=args["ff_hidden_size"],
                                                   hidden_layers=args["ff_hidden_layers"]))
        if tuple(net.feature_dims) != widths:
            raise ValueError(f"{self.display_name} builds feature groups of widths {widths} (from the decays) but the "
                             f"meta-network takes {tuple(net.feature_dims)}")
        super().__init__(params, defaults, net, args["nonfinite_grads"])
        self.clip_grad = bool(args["clip_grad"])
        self.clip_norm = float(args["clip_norm"])
        self._decays = DecayTensors()
        self._workspaces: Dict = {}

    # ------------------------------------------------------------------ helpers
    def backend_for(self, group, device: torch.device) -> str:
        """The group's backend on ``device`` (:func:`pylo.optim.backend.resolve_backend`): ``"auto"`` takes
        triton only where its kernels implement the network's decay counts."""
        why = TritonEngine.unsupported(self.network) if group.get("backend") == "auto" else None
        return resolve_backend(group.get("backend"), device, triton_unsupported=why)

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

    def _settings(self, group) -> Settings:
        """The group's settings as the engines read them."""
        raise NotImplementedError

    def _init_group(self, group, params: List[torch.Tensor], adamw_mask: List[bool], device) -> List[Dict]:
        """Create the missing state of ``params``; return their states."""
        raise NotImplementedError

    # --------------------------------------------------------------------- step
    def _device_parts(self, group, params, grads):
        """Per device: its parameters, gradients, AdamW routing mask and (created where missing) states."""
        names = dict(zip(map(id, group["params"]), group.get("param_names", ())))
        for device, idx in self._by_device(params).items():
            ps, gs = [params[i] for i in idx], [grads[i] for i in idx]
            mask = [self.routes_to_adamw(group, p, names.get(id(p))) for p in ps]
            yield device, ps, gs, mask, self._init_group(group, ps, mask, device)

    def _init_state(self, entries) -> None:
        for group, params, grads in entries:
            for _ in self._device_parts(group, params, grads):
                pass

    def _step(self, loss):
        """The CELO2-family update on ordinary tensors; returns the loss (``None`` without one)."""
        for group, params, grads in self._sanitized_entries(self.clip_norm if self.clip_grad else None,
                                                            self.upstream_nan_to_num):
            for device, ps, gs, mask, states in self._device_parts(group, params, grads):
                for sharded in (False, True):
                    idx = [i for i, p in enumerate(ps) if is_dtensor(p) is sharded]
                    if idx:
                        self._update(group, device, [ps[i] for i in idx], [gs[i] for i in idx],
                                     [mask[i] for i in idx], [states[i] for i in idx], sharded)
        return loss

    def _update(self, group, device, params, grads, mask, states, sharded: bool) -> None:
        """One :func:`~pylo.optim.celo2.functional.celo2` call; DTensor parameters (``sharded``) step their
        local shards, with their splits (:mod:`pylo.optim.sharded`), on the fused engine where the group's
        backend is fused or Triton, else on the naive one."""
        backend, splits = self.backend_for(group, device), None
        if sharded:
            backend, splits = shard_backend(backend), [self._split_for(group, p) for p in params]
            params, states = local_views(params, states)
        celo2(params, grads, states, mask, network=self.network_on(device),
              decays=self._decays.of_group(group, device), settings=self._settings(group), backend=backend,
              workspaces=self._workspaces, splits=splits)
