"""GPU kernels (Triton) for the learned optimizers.

They run on CUDA devices; on a machine without a GPU they run only under
``TRITON_INTERPRET=1`` (Triton's interpreter, used by the tests to check them
against the naive path).
"""

from __future__ import annotations

import importlib.util
import os

import torch


def triton_available(device: torch.device) -> bool:
    """Whether the Triton backend can run on ``device``."""
    if importlib.util.find_spec("triton") is None:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def require_triton(device: torch.device) -> None:
    if not triton_available(device):
        raise RuntimeError(
            f"the triton backend needs the `triton` package and a CUDA device (got {device}); on a CPU it runs only "
            "under TRITON_INTERPRET=1, for testing. Use backend='fused' on CPU.")


def axis_strides(shape, axis: int):
    """``(inner, span)`` such that dropping ``axis`` maps flat index i -> ``(i // span) * inner + i % inner``.

    How the kernels gather a factored tensor's row/column tables (which drop one axis) for any rank.
    """
    inner = 1
    for s in shape[axis + 1:]:
        inner *= int(s)
    return inner, inner * int(shape[axis])
