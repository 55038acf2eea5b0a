"""torch.distributed.checkpoint (issue 10 item 3): ``get/set_optimizer_state_dict`` and ``dcp.save/load``
for every optimizer, on fresh and trained optimizers; a checkpoint saved by 2 FSDP2 ranks loads on 1
and on 2 ranks, and training continues bit-identically to the uninterrupted run."""

import pytest
import torch

import dcp_workers as dw
import dist_workers as w
from pylo.parity_tests.optim_db import DATABASE, get

from common.test_distributed import WORLD, _spawn

pytest.importorskip("torch.distributed.checkpoint")


def _have(modules) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


NAMES = [info.name for info in DATABASE if info.name != "mulo"]  # FSDP2 drops μLO's infshape: test_distributed
ALL = [pytest.param(info.name, marks=[pytest.mark.skipif(not _have(info.requires), reason="needs mup")])
       for info in DATABASE]


def _trained(name, steps, backend="fused"):
    module = w.Shapes()
    opt = get(name).build(list(module.named_parameters()), run_on=backend)
    dw.continued_steps(module, opt, 0, steps)
    return module, opt


@pytest.mark.parametrize("name", ALL)
def test_a_fresh_optimizer_stays_fresh_through_get_optimizer_state_dict(name):
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    module = w.Shapes()
    opt = get(name).build(list(module.named_parameters()), run_on="fused")
    before = w.whole_params(module)
    sd = get_optimizer_state_dict(module, opt)  # DCP's lazy-state step: zero gradients, lr 0
    assert set(sd["state"]) == set(before)  # keyed by parameter names only, every parameter present
    assert all(torch.equal(p, before[n]) for n, p in w.whole_params(module).items())
    assert all(p.grad is None for p in module.parameters())
    dw.continued_steps(module, opt, 0, 4)
    untouched, _ = _trained(name, 4)
    for n, p in w.whole_params(untouched).items():
        assert torch.equal(w.whole_params(module)[n], p), n


@pytest.mark.parametrize("name", ALL)
def test_dcp_save_and_load_resume_bit_exactly(name, tmp_path):
    module, opt = _trained(name, dw.BEFORE)
    assert all(isinstance(k, torch.Tensor) for k in opt.state)  # no non-parameter keys
    dw.save(module, opt, str(tmp_path / "ckpt"))
    dw.continued_steps(module, opt, dw.BEFORE, dw.AFTER)

    fresh = w.Shapes(seed=1)
    opt2 = get(name).build(list(fresh.named_parameters()), run_on="fused")
    dw.load(fresh, opt2, str(tmp_path / "ckpt"))
    dw.continued_steps(fresh, opt2, dw.BEFORE, dw.AFTER)
    for n, p in w.whole_params(module).items():
        assert torch.equal(w.whole_params(fresh)[n], p), n


def _assert_same_state(loaded, saved, where) -> None:
    assert loaded.keys() == saved.keys(), where
    for key, value in saved.items():
        if isinstance(value, dict):
            _assert_same_state(loaded[key], value, (where, key))
        elif isinstance(value, torch.Tensor):
            assert torch.equal(torch.as_tensor(loaded[key]), value), (where, key)


def test_a_checkpoint_of_two_fsdp2_ranks_loads_on_two_ranks_and_on_one(tmp_path):
    """On 2 ranks the resumed run is the uninterrupted one bit for bit. On 1 rank the loaded state is the
    2 ranks' state bit for bit; the steps after it are whole-tensor steps, within 1e-6 of the 2 ranks'
    shard-wise steps (whose statistics are summed shard by shard, :mod:`pylo.optim.sharded`)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    cases = [(n, "fused") for n in NAMES]
    _spawn(dw.fsdp2_dcp_worker, str(tmp_path / "store"), str(tmp_path), cases)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, backend in cases:
        ref = ranks[0][(name, "uninterrupted")]
        one = w.Shapes(seed=1)  # one process, no process group, plain tensors
        opt = get(name).build(list(one.named_parameters()), run_on=backend)
        dw.load(one, opt, str(tmp_path / name))
        _assert_same_state(get_optimizer_state_dict(one, opt)["state"], ranks[0][(name, "state")], name)
        dw.continued_steps(one, opt, dw.BEFORE, dw.AFTER)
        for n, p in ref.items():
            for r in ranks:
                assert torch.equal(r[(name, backend)][n], p), (name, n)
                assert torch.equal(r[(name, "uninterrupted")][n], p), (name, n)
            diff = float((w.whole_params(one)[n] - p).abs().max())
            assert diff <= 1e-6, (name, n, diff)


@pytest.mark.parametrize("name", ["velo", "celo"])
def test_a_first_parameter_without_a_gradient_on_the_first_step_still_loads(name, tmp_path):
    """The optimizer-wide state sits with the first parameter whatever got gradients, so DCP's template
    (every parameter initialised) and the checkpoint agree."""
    module, opt = _trained(name, 0)
    first = next(module.parameters())
    for t in range(dw.BEFORE):
        opt.zero_grad()
        loss = module(t)
        loss.backward()
        if t == 0:
            first.grad = None  # e.g. a branch not taken on the first batch
        opt.step(loss=loss.detach())
    dw.save(module, opt, str(tmp_path / "ckpt"))
    dw.continued_steps(module, opt, dw.BEFORE, dw.AFTER)
    fresh = w.Shapes(seed=1)
    opt2 = get(name).build(list(fresh.named_parameters()), run_on="fused")
    dw.load(fresh, opt2, str(tmp_path / "ckpt"))
    dw.continued_steps(fresh, opt2, dw.BEFORE, dw.AFTER)
    for n, p in w.whole_params(module).items():
        assert torch.equal(w.whole_params(fresh)[n], p), n
