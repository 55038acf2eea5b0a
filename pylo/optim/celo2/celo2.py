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

from typing import Optional

from pylo.core.chunked import DEFAULT_CHUNK
from pylo.models.celo2_mlp import CELO2MLP, build_celo2_mlp
from pylo.models.loading import NetworkSpec
from pylo.optim.base import check_number
from pylo.optim.celo2.base import Celo2Base
from pylo.optim.celo2.constants import (ADAFACTOR_DECAYS, ADAM_BETAS, GRAD_CLIP, MOMENTUM_DECAYS, NS_COEFFS, NS_EPS,
                                        NS_ITERS, RMS_DECAYS)
from pylo.optim.celo2.settings import AdamWPath, Settings, float32_product
from pylo.optim.celo2.state import init_accumulators, init_adamw

CELO2_SPEC = NetworkSpec(name="CELO2 CELO2MLP", module_type=CELO2MLP, optimizers=("celo2",), build=build_celo2_mlp)


class CELO2_naive(Celo2Base):
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
        foreach: shorthand for ``backend="foreach"`` / ``"naive"``.
        backend: ``"naive"`` (tensor by tensor), ``"foreach"`` (multi-tensor
            accumulators, one MLP call), ``"fused"`` (chunked, bounded memory,
            fastest on CPU), ``"triton"`` (GPU kernels) or ``"auto"`` (triton on
            CUDA when available, else fused; the default of :class:`CELO2`). Neither
            ``backend`` nor ``foreach`` given: foreach on CUDA, else naive.
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
    network_spec = CELO2_SPEC

    def __init__(self, params, lr=0.001, weight_decay=0.0, adam_lr_mult=1.0, adam_weight_decay=None,
                 adam_betas=ADAM_BETAS, adam_eps=1e-08, use_adamw_for_1d=True, orthogonalize=True, clip_grad=False,
                 clip_norm=1.0, ff_hidden_size=8, ff_hidden_layers=2, initial_momentum_decays=MOMENTUM_DECAYS,
                 initial_rms_decays=RMS_DECAYS, initial_adafactor_decays=ADAFACTOR_DECAYS, exp_mult=0.0,
                 rmsmult=1.0, param_scale_mult=False, ns_coeffs=NS_COEFFS, ns_iters=NS_ITERS, ns_eps=NS_EPS,
                 grad_clip_val=GRAD_CLIP, hf_key: Optional[str] = "DiamondXL/celo2", checkpoint_path=None,
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
        self._setup(params, locals(), adam_betas=tuple(float(b) for b in betas), adam_eps=float(adam_eps))

    def _settings(self, group) -> Settings:
        adamw = AdamWPath(lr=float32_product(group["adam_lr_mult"], group["lr"]), betas=tuple(group["adam_betas"]),
                          eps=group["adam_eps"], weight_decay=self.adam_weight_decay(group), shared=False)
        return Settings.of(group, adamw, skip_zero_decay=True)

    def _init_group(self, group, params, adamw_mask, device):
        """The learned path's accumulators, or the AdamW path's own moments."""
        decays = self._decays.of_group(group, device)
        states = [self.state[p] for p in params]
        for p, state, routed in zip(params, states, adamw_mask):
            if routed:
                init_adamw(state, p)
            else:
                init_accumulators(state, p, group["kernel_layout"], decays)
        return states


class CELO2(CELO2_naive):
    """CELO2 / CELO2-base on its fastest backend (``backend="auto"``): the recommended entry point.

    Same arguments and results as :class:`CELO2_naive` (within float32 round-off); see there.
    """

    default_backend = "auto"
