"""What the trainer tests share: a tiny regression task, VeLO/Celo on small random meta-networks, and a
spy on the loss each step is fed."""

from __future__ import annotations

from typing import List

import torch

from pylo.parity_tests.optim_db import get

IN, OUT, N = 6, 3, 32


def data(n: int = N, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN, generator=g)
    return x, x @ torch.randn(IN, OUT, generator=g) + 0.1 * torch.randn(n, OUT, generator=g)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(IN, 8), torch.nn.Tanh(), torch.nn.Linear(8, OUT))


def learned(name: str, params, num_steps: int = 100, **kwargs) -> torch.optim.Optimizer:
    """``name``'s recommended class on its small random meta-network (no weights needed)."""
    info = get(name)
    return info.recommended(params, network=info.make_small_network(0), num_steps=num_steps, **kwargs)


def spy_losses(opt) -> List[float]:
    """The losses ``opt``'s update receives, appended as steps run."""
    fed: List[float] = []
    inner = opt._step

    def recording(loss):
        fed.append(float(loss))
        return inner(loss)

    opt._step = recording
    return fed


def window_means(micro: List[float], k: int) -> List[float]:
    """The mean of each run of ``k`` consecutive micro-batch losses."""
    assert len(micro) % k == 0, (len(micro), k)
    return [sum(micro[i:i + k]) / k for i in range(0, len(micro), k)]
