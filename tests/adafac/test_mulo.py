"""MuLO: μP learning-rate groups around AdafacLO, and μLO's readout (needs the ``mup`` package)."""

import pytest
import torch

from pylo.models import MetaMLP
from pylo.optim import MuLO, MuLO_naive

mup = pytest.importorskip("mup")


def _net(seed=0):
    torch.manual_seed(seed)
    net = MetaMLP(39, 8, 1)
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    return net


def _mup_model(width):
    from pylo.util.mup import MuLOReadout

    return torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.ReLU(), MuLOReadout(width, 4))


def test_mulo_groups_follow_width_multipliers():
    model = _mup_model(64)
    mup.set_base_shapes(model, _mup_model(16))
    opt = MuLO(model.parameters(), network=_net(), lr=0.5)
    hidden = model[2].weight
    group = next(g for g in opt.param_groups if any(p is hidden for p in g["params"]))
    assert group["lr"] == pytest.approx(0.5 / hidden.infshape.width_mult())
    bias_group = next(g for g in opt.param_groups if any(p is model[2].bias for p in g["params"]))
    assert bias_group["lr"] == 0.5


def test_mulo_default_lr_works_and_trains():
    model = _mup_model(32)
    mup.set_base_shapes(model, _mup_model(16))
    opt = MuLO_naive(model.parameters(), network=_net())
    model(torch.randn(3, 8)).square().mean().backward()
    before = model[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model[0].weight)


def test_mulo_without_base_shapes_says_what_to_do():
    with pytest.raises(ValueError, match="mup.set_base_shapes"):
        MuLO(_mup_model(16).parameters(), network=_net())


def test_mulo_readout_scales_output_after_the_linear():
    from pylo.util.mup import MuLOReadout

    head = MuLOReadout(16, 3, output_mult=2.0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), head)
    base = torch.nn.Sequential(torch.nn.Linear(4, 8), MuLOReadout(8, 3, output_mult=2.0))
    mup.set_base_shapes(model, base)
    x = torch.randn(5, 16)
    expected = torch.nn.functional.linear(x, head.weight, head.bias) * (2.0 / head.width_mult())
    torch.testing.assert_close(head(x), expected)
