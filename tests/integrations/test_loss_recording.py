"""``accumulate_loss``: the one rule every trainer recipe rests on, and the plain-torch recipes
(gradient accumulation by hand, ``torch.amp.GradScaler``, ``OneCycleLR``)."""

import math

import pytest
import torch

from pylo.optim.base import NonFiniteGradientError
from pylo.parity_tests.optim_db import get

from integrations.common import data, learned, spy_losses, tiny_model, window_means

LOSS_READERS = ["velo", "celo"]


def _accumulated_step(model, opt, k, x, y):
    micro = []
    for xb, yb in zip(x.chunk(k), y.chunk(k)):
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        micro.append(loss.item())
        (loss / k).backward()
        opt.accumulate_loss(loss / k)
    opt.step()
    opt.zero_grad()
    return micro


@pytest.mark.parametrize("name", LOSS_READERS)
def test_accumulated_losses_feed_the_mean_of_the_big_batch(name):
    model = tiny_model()
    opt = learned(name, model.parameters())
    fed = spy_losses(opt)
    x, y = data()
    micro = []
    for _ in range(3):
        micro += _accumulated_step(model, opt, 4, x, y)
    assert fed == pytest.approx(window_means(micro, 4), rel=1e-6)


@pytest.mark.parametrize("name", LOSS_READERS)
def test_accumulating_equals_passing_the_loss(name):
    x, y = data()
    runs = []
    for record in (True, False):
        model = tiny_model()
        opt = learned(name, model.parameters())
        for _ in range(3):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.accumulate_loss(loss) if record else None
            opt.step() if record else opt.step(loss)
            opt.zero_grad()
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_zero_grad_forgets_recorded_losses_and_a_bare_step_keeps_its_error():
    model = tiny_model()
    opt = learned("velo", model.parameters())
    x, y = data()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.accumulate_loss(5.0)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(TypeError, match="needs the training loss.*accumulate_loss"):
        opt.step()


def test_a_loss_and_recorded_losses_together_are_refused_and_nothing_is_lost():
    model = tiny_model()
    opt = learned("velo", model.parameters())
    fed = spy_losses(opt)
    x, y = data()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.accumulate_loss(0.25)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match="one or the other"):
        opt.step(1.0)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    opt.step()
    assert fed == [0.25]


def test_a_refused_step_keeps_the_recorded_losses():
    model = tiny_model()
    opt = learned("celo", model.parameters())
    fed = spy_losses(opt)
    x, y = data()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.accumulate_loss(0.5)
    good = model[0].weight.grad.clone()
    model[0].weight.grad[0, 0] = math.nan
    with pytest.raises(NonFiniteGradientError):
        opt.step()
    model[0].weight.grad = good
    opt.step()
    assert fed == [0.5, 0.5]  # the refused attempt saw it too, and it was still there for the retry


def test_loss_free_optimizers_accept_and_drop_recorded_losses():
    model = tiny_model()
    info = get("adafaclo")
    opt = info.recommended(model.parameters(), network=info.make_small_network(0))
    x, y = data()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.accumulate_loss(torch.tensor(2.0))
    opt.step()
    assert opt._pending_loss is None


@pytest.mark.parametrize("bad,error", [(torch.ones(2), ValueError), ("1.0", TypeError), (True, TypeError)])
def test_accumulate_loss_refuses_what_is_not_a_scalar_loss(bad, error):
    opt = learned("velo", tiny_model().parameters())
    with pytest.raises(error, match="accumulate_loss"):
        opt.accumulate_loss(bad)


@pytest.mark.parametrize("recipe", ["accumulate_loss", "positional loss"])
def test_grad_scaler_steps_as_the_unscaled_loop_does(recipe):
    x, y = data()
    runs = []
    for scaled in (True, False):
        model = tiny_model()
        opt = learned("velo", model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        for _ in range(3):
            loss = torch.nn.functional.mse_loss(model(x), y)
            if not scaled:
                loss.backward()
                opt.step(loss)
            elif recipe == "accumulate_loss":
                scaler.scale(loss).backward()
                opt.accumulate_loss(loss)
                scaler.step(opt)
                scaler.update()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt, loss)
                scaler.update()
            opt.zero_grad()
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)  # a power-of-two scale is undone exactly


@pytest.mark.parametrize("name", ["velo", "adafaclo", "celo2"])
def test_one_cycle_lr_runs_with_cycle_momentum_off(name):
    model = tiny_model()
    info = get(name)
    kwargs = {"num_steps": 10} if info.needs_loss else {}
    opt = info.recommended(model.parameters(), network=info.make_small_network(0), **kwargs)
    with pytest.raises(ValueError, match="momentum"):  # no betas/momentum in pylo's groups: torch's own error
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10, cycle_momentum=False)
    x, y = data()
    lrs = []
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step(loss) if info.needs_loss else opt.step()
        opt.zero_grad()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(1.0) and min(lrs) < 0.6  # warms up to max_lr, then anneals
