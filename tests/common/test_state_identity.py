"""A state dict records what it belongs to; ``load_state_dict`` refuses another optimizer's, another
meta-network's or other shapes' state before changing anything (issue 11, defect 3)."""

import copy

import pytest
import torch

from pylo.parity_tests.optim_db import get


def _named(shapes=((6, 5), (6,))):
    g = torch.Generator().manual_seed(0)
    return [(f"p{i}", torch.nn.Parameter(torch.randn(s, generator=g))) for i, s in enumerate(shapes)]


def _stepped(name, named=None, seed=0, **kwargs):
    info = get(name)
    named = named or _named()
    opt = info.build(named, seed=seed, **kwargs)
    for _, p in named:
        p.grad = torch.full_like(p, 0.1)
    opt.step(loss=1.0) if info.needs_loss else opt.step()
    return opt


def _assert_unchanged(opt, before):
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()


@pytest.mark.parametrize("source,target", [("adafaclo", "elo"), ("celo2", "elo_celo2"), ("velo", "celo"),
                                           ("elo_celo2", "celo2")])
def test_another_optimizers_state_is_refused(source, target):
    sd = _stepped(source).state_dict()
    opt = _stepped(target)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=f"this is a {get(source).recommended.display_name} state dict"):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("name", ["adafaclo", "velo", "celo2"])
def test_another_meta_networks_state_is_refused(name):
    sd = _stepped(name, seed=0).state_dict()
    opt = _stepped(name, seed=1)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="another meta-network"):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("name", ["adafaclo", "velo", "celo2"])
def test_state_for_other_shapes_is_refused(name):
    sd = _stepped(name).state_dict()
    opt = _stepped(name, _named(((5, 6), (6,))))
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="parameters of shapes"):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, before)


def test_the_record_survives_a_round_trip_and_naive_and_recommended_classes_share_it():
    info = get("celo2")
    sd = _stepped("celo2").state_dict()
    assert sd["pylo"]["optimizer"] == "CELO2" and sd["pylo"]["shapes"] == [[[6, 5], [6]]]
    named = _named()
    opt = info.construct(info.recommended, named, network=info.make_small_network(0))
    opt.load_state_dict(sd)
    assert opt.state_dict()["pylo"] == sd["pylo"]
