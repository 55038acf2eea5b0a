"""One param group's CELO2-family settings, as the engines read them (built by the optimizer class)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from pylo.optim.celo2.constants import NS_COEFFS, NS_EPS, NS_ITERS


@dataclass(frozen=True)
class LearnedStep:
    """How the MLP output becomes a step (upstream ``Celo2Transformation`` options)."""

    exp_mult: float = 0.0
    rmsmult: float = 1.0
    param_scale_mult: bool = False
    orthogonalize: bool = True
    ns_coeffs: Tuple[float, float, float] = NS_COEFFS
    ns_iters: int = NS_ITERS
    ns_eps: float = NS_EPS

    @classmethod
    def of(cls, group: Dict) -> "LearnedStep":
        return cls(exp_mult=group["exp_mult"], rmsmult=group["rmsmult"], param_scale_mult=group["param_scale_mult"],
                   orthogonalize=group["orthogonalize"], ns_coeffs=tuple(group["ns_coeffs"]),
                   ns_iters=group["ns_iters"], ns_eps=group["ns_eps"])


@dataclass(frozen=True)
class AdamWPath:
    """The AdamW that 0-/1-D and embedding parameters take.

    ``shared=False`` (CELO2): optax ``adamw`` with the parameter's own moments; ``True`` (ELO-CELO2):
    the learned path's accumulators are updated and ``m[..., 0]``, ``rms[..., -1]`` are the moments.
    ``lr`` is already float32-rounded (:func:`float32_product`).
    """

    lr: float
    betas: Tuple[float, float]
    eps: float
    weight_decay: float
    shared: bool


@dataclass(frozen=True)
class Settings:
    """Everything an engine needs of one param group.

    ``skip_zero_decay``: optax skips a zero weight decay (CELO2); ELO-CELO2 always adds ``0 * p``
    (which differs only for a non-finite ``p``).
    """

    step: LearnedStep
    lr: float
    weight_decay: float
    grad_clip_val: Optional[float]
    kernel_layout: str
    skip_zero_decay: bool
    chunk_size: int
    adamw: AdamWPath

    @classmethod
    def of(cls, group: Dict, adamw: AdamWPath, skip_zero_decay: bool) -> "Settings":
        return cls(step=LearnedStep.of(group), lr=group["lr"], weight_decay=group["weight_decay"],
                   grad_clip_val=group["grad_clip_val"], kernel_layout=group["kernel_layout"],
                   skip_zero_decay=skip_zero_decay, chunk_size=group["chunk_size"], adamw=adamw)


def float32_product(a: float, b: float) -> float:
    """``a * b`` rounded as JAX's float32 arithmetic rounds it (e.g. ``adam_lr_mult * lr``)."""
    return float(np.float32(a) * np.float32(b))
