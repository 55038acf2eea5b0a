"""What a step refuses or skips, on every optimizer and backend (issue 11, defects 2 and 4):
zero-element parameters get no state and no influence on the other tensors; a finite gradient whose
square overflows float32 is refused like a NaN, with parameters and state unchanged."""

import copy

import pytest
import torch

from pylo.optim.base import NonFiniteGradientError

from pylo.parity_tests.optim_db import DATABASE

EMPTY = {"empty_vec": (0,), "empty_rows": (0, 5), "empty_mid": (5, 0, 3)}
FULL = {"w": (6, 5), "b": (6,)}
CASES = [(info, b) for info in DATABASE for b in ("naive", "foreach", "fused") if b in info.backends]


def _named(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(n, torch.nn.Parameter(0.5 * torch.randn(s, generator=g))) for n, s in shapes.items()]


def _run(info, backend, shapes, steps=3):
    named = _named(shapes)
    opt = info.build(named, run_on=backend)
    g = torch.Generator().manual_seed(1)
    for s in range(steps):
        for n, p in named:
            p.grad = 0.1 * torch.randn(p.shape, generator=g) if p.numel() else torch.zeros(p.shape)
        opt.step(loss=1.0 / (1 + s)) if info.needs_loss else opt.step()
    return dict(named), opt


@pytest.mark.parametrize("info,backend", CASES, ids=[f"{i.name}-{b}" for i, b in CASES])
def test_zero_element_parameters_change_nothing(info, backend):
    for module in info.requires:
        pytest.importorskip(module)
    alone, _ = _run(info, backend, FULL)
    mixed, opt = _run(info, backend, {**FULL, **EMPTY})
    for n in FULL:
        assert torch.isfinite(mixed[n]).all(), n
        assert torch.equal(mixed[n].detach(), alone[n].detach()), n
    for n in EMPTY:
        assert mixed[n] not in opt.state, n


@pytest.mark.parametrize("info,backend", CASES, ids=[f"{i.name}-{b}" for i, b in CASES])
@pytest.mark.parametrize("scale", [1e20, 1e30, 3e38])
def test_gradients_that_overflow_when_squared_are_refused(info, backend, scale):
    for module in info.requires:
        pytest.importorskip(module)
    named, opt = _run(info, backend, FULL, steps=2)
    params = {n: p.detach().clone() for n, p in named.items()}
    state = copy.deepcopy(opt.state_dict())
    named["w"].grad = torch.full((6, 5), 0.1)
    named["w"].grad[2, 3] = scale
    named["b"].grad = torch.full((6,), 0.1)
    with pytest.raises(NonFiniteGradientError, match="too large for float32.*'w'|too large for float32.*#0"):
        opt.step(loss=1.0) if info.needs_loss else opt.step()
    for n, p in named.items():
        assert torch.equal(p.detach(), params[n]), n
    after = opt.state_dict()
    for k, st in state["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(after["state"][k][key], v), (k, key)
