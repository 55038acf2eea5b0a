"""Evaluating the per-element MLPs whose first layer is split by feature group.

Upstream (HyperV2, Celo, CELO2) keeps one first-layer block ``w0__i`` per
feature group and sums ``group_i @ w0__i`` in group order before adding the
bias; weights are Haiku ``(in, out)`` and the product is ``x @ w``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def split_input_mlp(groups: Sequence[torch.Tensor], w0: Sequence[torch.Tensor], b0: torch.Tensor,
                    dense_w: Sequence[torch.Tensor], dense_b: Sequence[torch.Tensor],
                    activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu) -> torch.Tensor:
    """``act(sum_i groups[i] @ w0[i] + b0)`` then dense layers (activation between, not after the last).

    Only the first ``len(groups)`` blocks of ``w0`` are used (CELO2's 1-D tensors
    have 9 groups).
    """
    out = groups[0] @ w0[0]
    for x, w in zip(groups[1:], w0[1:]):
        out = out + x @ w
    out = activation(out + b0)
    last = len(dense_w) - 1
    for i, (w, b) in enumerate(zip(dense_w, dense_b)):
        out = out @ w + b
        if i != last:
            out = activation(out)
    return out
