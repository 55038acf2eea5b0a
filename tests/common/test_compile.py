"""``torch.compile(opt.step)`` works on every optimizer's default backend and equals the eager step
(issue 12 item 4). pylo's step is excluded from Dynamo's graph (``torch.compiler.disable``): it runs
pylo's own fused/Triton engines eagerly, with no graph breaks inside it and no recompilation on its
step counters."""

import pytest
import torch

from pylo.parity_tests.optim_db import DATABASE

SHAPES = {"w": (16, 12), "b": (16,), "conv": (4, 3, 3, 3), "s": ()}


def _run(info, compiled: bool, steps: int = 3):
    g = torch.Generator().manual_seed(0)
    named = [(n, torch.nn.Parameter(0.5 * torch.randn(s, generator=g))) for n, s in SHAPES.items()]
    opt = info.build(named, cls=info.recommended, run_on=None)
    step = torch.compile(opt.step) if compiled else opt.step
    for t in range(steps):
        for _, p in named:
            p.grad = 0.1 * torch.randn(p.shape, generator=g)
        loss = torch.tensor(1.0 / (1 + t))
        step(loss) if info.needs_loss else step()
    return {n: p.detach().clone() for n, p in named}, opt


@pytest.mark.parametrize("info", DATABASE, ids=[i.name for i in DATABASE])
def test_compiled_step_equals_the_eager_step(info):
    for module in info.requires:
        pytest.importorskip(module)
    torch._dynamo.reset()
    eager, _ = _run(info, False)
    compiled, opt = _run(info, True)
    for n, p in eager.items():
        assert torch.equal(compiled[n], p), n
    assert opt.state  # the compiled calls really stepped
