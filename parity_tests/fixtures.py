"""Built-in parity fixtures: parameter shapes, gradient streams and loss curves.

Everything is generated from a seed with numpy, in float32 and in *torch*
layout; the JAX side receives the same arrays (4-D conv kernels permuted to
JAX's HWIO layout, as a JAX model would hold the same kernel).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from pylo.spec.shapes import TORCH_CONV_TO_JAX, JAX_CONV_TO_TORCH

Shape = Tuple[int, ...]

#: every kind of parameter a model has, in torch layout
DEFAULT_SHAPES: Dict[str, Shape] = {
    "scalar": (),
    "vector": (7,),
    "wide": (5, 9),
    "tall": (11, 4),
    "square": (6, 6),
    "size1": (1, 5),
    "tensor3d": (3, 4, 5),
    "conv": (6, 4, 3, 2),          # torch OIHW -> JAX (3, 2, 4, 6)
    "conv_square": (8, 8, 3, 3),   # tied in/out channels
    "embedding": (50, 8),
}

#: gradient scale per step, cycling: tiny, moderate and large (large ones trigger global-norm clipping)
GRAD_SCALES = (0.1, 0.01, 1.0, 0.1, 10.0, 0.001, 0.3, 3.0)


def to_jax_layout(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(TORCH_CONV_TO_JAX)) if array.ndim == 4 else array


def to_torch_layout(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(JAX_CONV_TO_TORCH)) if array.ndim == 4 else array


def initial_params(shapes: Dict[str, Shape], seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: np.asarray(0.5 * rng.standard_normal(shape), dtype=np.float32) for name, shape in shapes.items()}


def gradient_stream(shapes: Dict[str, Shape], steps: int, seed: int, scales=GRAD_SCALES):
    """Yield per-step ``{name: grad}`` (float32, torch layout)."""
    rng = np.random.default_rng(seed + 1)
    for step in range(steps):
        scale = scales[step % len(scales)]
        yield {name: np.asarray(scale * rng.standard_normal(shape), dtype=np.float32) for name, shape in shapes.items()}


def loss_curve(steps: int, seed: int) -> np.ndarray:
    """A loss that falls, rises, plateaus and falls again, with one spike (so every loss feature moves)."""
    rng = np.random.default_rng(seed + 2)
    t = np.arange(steps, dtype=np.float64)
    fall = 3.0 * np.exp(-t / max(steps / 4, 1))
    bump = 1.5 * np.exp(-((t - 0.55 * steps) ** 2) / (2 * (0.06 * steps + 1) ** 2))
    plateau = np.where((t > 0.7 * steps) & (t < 0.85 * steps), 0.0, -0.002 * t)
    noise = 0.02 * rng.standard_normal(steps)
    loss = 1.0 + fall + bump + plateau + noise + 0.01 * math.pi
    if steps >= 10:
        loss[int(0.9 * steps)] *= 5.0  # one spike, which VeLO's loss buffer caps
    return loss.astype(np.float32)


def shared_checkpoints_dir() -> Path:
    """Where real published checkpoints live: ``PYLO_SHARED_CHECKPOINTS``, else ``../shared/checkpoints``
    beside the repository (as in ``tests/conftest.py``)."""
    env = os.environ.get("PYLO_SHARED_CHECKPOINTS")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "checkpoints"
