"""VeLO and Celo as torch optimizers: loss handling, state, skipped parameters, weight decay, averaging."""

import copy
import io
import math
import tempfile

import pytest
import torch

from pylo.errors import CheckpointError
from pylo.models.hyper_network import HyperNetwork
from pylo.optim import Celo, Celo_naive, VeLO, VeLO_naive
from pylo.optim.hyperv2.state import global_entry

SHAPES = {"w": (6, 5), "b": (6,), "s": (), "k": (4, 3, 2, 2)}


def network(lstm_input_size=30, seed=0, param_inits=4):
    torch.manual_seed(seed)
    net = HyperNetwork(lstm_input_size=lstm_input_size, lstm_hidden_size=8, param_inits=param_inits)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return net


def params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(n, torch.nn.Parameter((0.5 * torch.randn(s, generator=g)).to(dtype))) for n, s in SHAPES.items()]


def set_grads(named, step, scale=0.1):
    g = torch.Generator().manual_seed(1000 + step)
    for _, p in named:
        p.grad = (scale * torch.randn(p.shape, generator=g)).to(p.dtype)


def velo(named, **kw):
    kw.setdefault("network", network())
    kw.setdefault("num_steps", 100)
    return VeLO_naive(named, **kw)


def run(opt, named, steps, start=0):
    for s in range(start, start + steps):
        set_grads(named, s)
        opt.step(2.0 / (1 + s))


def snapshot(named):
    return {n: p.detach().clone() for n, p in named}


# ------------------------------------------------------------------ the API
def test_aliases_and_published_defaults():
    import inspect

    # the aliases are the naive classes on their fastest backend (tests/test_hyper_backends.py)
    assert issubclass(VeLO, VeLO_naive) and issubclass(Celo, Celo_naive)
    assert inspect.signature(VeLO_naive).parameters["backend"].default is None

    sig = inspect.signature(VeLO_naive)
    assert sig.parameters["lr"].default == 1.0  # reproduces VeLO (the published port had 0.001)
    assert sig.parameters["num_steps"].default == 10000
    assert sig.parameters["hf_key_rnn"].default == "Pauljanson002/VeLO_RNN"
    assert sig.parameters["hf_key_mlp"].default == "Pauljanson002/VeLO_MLP"
    assert sig.parameters["use_bugged_loss_features"].default is False
    assert sig.parameters["use_bugged_next_lstm_state"].default is False
    # the published positional order still works
    named = params()
    opt = VeLO_naive([p for _, p in named], [0.0] * 3, [0.0], [0.0] * 3, 0.5, network=network())
    assert opt.param_groups[0]["lr"] == 0.5


def test_loss_positionally_by_keyword_or_from_a_closure():
    results = []
    for how in ("positional", "keyword", "tensor", "closure"):
        named = params()
        opt = velo(named)
        for s in range(3):
            set_grads(named, s)
            loss = 2.0 / (1 + s)
            if how == "positional":
                out = opt.step(loss)
            elif how == "keyword":
                out = opt.step(loss=loss)
            elif how == "tensor":
                out = opt.step(torch.tensor(loss, dtype=torch.float64, requires_grad=True))
            else:
                calls = []

                def closure():
                    calls.append(torch.is_grad_enabled())
                    return torch.tensor(loss)

                with torch.no_grad():
                    out = opt.step(closure)
                assert calls == [True]
            assert float(torch.as_tensor(out).detach()) == pytest.approx(loss)
        results.append(snapshot(named))
    for other in results[1:]:
        for n in other:
            assert torch.equal(other[n], results[0][n]), n


def test_missing_or_bad_loss_is_a_clear_error_and_changes_nothing():
    named = params()
    opt = velo(named)
    run(opt, named, 2)
    before, state = snapshot(named), copy.deepcopy(opt.state_dict())
    set_grads(named, 2)
    with pytest.raises(TypeError, match=r"needs the training loss.*step\(loss\)"):
        opt.step()
    with pytest.raises(TypeError, match="not both"):
        opt.step(lambda: 1.0, loss=1.0)
    with pytest.raises(ValueError, match="scalar loss"):
        opt.step(torch.ones(3))
    with pytest.raises(TypeError, match="closure or a loss"):
        opt.step("1.0")
    with pytest.raises(ValueError, match="loss is not finite"):
        opt.step(float("nan"))
    with pytest.raises(ValueError, match="loss is not finite"):
        opt.step(torch.tensor(float("inf")))
    named[0][1].grad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite gradient"):
        opt.step(1.0)
    for n, p in named:
        assert torch.equal(p.detach(), before[n]), n
    assert global_entry(opt.state_dict()["state"])["iteration"] == global_entry(state["state"])["iteration"]


def test_infinite_gradients_are_clipped_as_upstream():
    named = params()
    opt = velo(named, nonfinite_grads="upstream")
    set_grads(named, 0)
    named[0][1].grad[0, 0] = float("inf")
    opt.step(1.0)
    assert all(torch.isfinite(p).all() for _, p in named)


def test_bad_arguments():
    named = params()
    with pytest.raises(ValueError, match="lr"):
        velo(named, lr=-1.0)
    with pytest.raises(ValueError, match="num_steps"):
        velo(named, num_steps=0)
    with pytest.raises(ValueError, match="weight_decay_mode"):
        velo(named, weight_decay_mode="l2")
    with pytest.raises(ValueError, match="mup_lrs"):
        velo(named, mup_lrs={"w": 1.0})
    with pytest.raises(ValueError, match="LSTM takes 18"):
        velo(named, network=network(lstm_input_size=18))  # a Celo network
    with pytest.raises(ValueError, match="max_training_steps"):
        velo(named, max_training_steps=0)
    with pytest.raises(ValueError, match="both hf_key_rnn and hf_key_mlp"):
        VeLO_naive(named, hf_key_mlp=None)
    with pytest.raises(TypeError, match="HyperNetwork"):
        velo(named, network=torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="not found"):
        VeLO_naive(named, checkpoint_path="/nonexistent/velo")


# -------------------------------------------------------------------- state
def test_state_dict_resume_is_bit_exact_and_carries_lstm_state_and_loss_buffer():
    named = params()
    opt = velo(named)
    run(opt, named, 4)
    buffer = io.BytesIO()
    torch.save({"params": snapshot(named), "opt": opt.state_dict()}, buffer)
    saved_state = opt.state_dict()["state"]
    assert {"lstm_hidden", "lstm_cell", "mom", "rms"} <= set(saved_state[0])
    assert all(isinstance(k, int) for k in saved_state)  # keyed by parameters only (DCP needs that)
    glob = global_entry(saved_state)
    assert glob["iteration"] == 4 and glob["loss_buffer"]["iteration"] == 4 and glob["num_steps"] == 100
    run(opt, named, 4, start=4)
    expected = snapshot(named)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = [(n, torch.nn.Parameter(saved["params"][n].clone())) for n, _ in named]
    opt2 = velo(resumed)
    sd = saved["opt"]
    before = copy.deepcopy(sd)
    opt2.load_state_dict(sd)
    run(opt2, resumed, 4, start=4)
    for n, p in resumed:
        assert torch.equal(p.detach(), expected[n]), n
    assert torch.equal(sd["state"][0]["lstm_hidden"], before["state"][0]["lstm_hidden"])  # caller's dict untouched
    assert global_entry(sd["state"])["iteration"] == global_entry(before["state"])["iteration"]
    assert torch.equal(global_entry(sd["state"])["loss_buffer"]["means"],
                       global_entry(before["state"])["loss_buffer"]["means"])


def test_state_dict_snapshot_is_not_changed_by_later_steps():
    named = params()
    opt = velo(named)
    run(opt, named, 2)
    glob = global_entry(opt.state_dict()["state"])
    iteration, means = glob["iteration"], glob["loss_buffer"]["means"].clone()
    run(opt, named, 2, start=2)
    assert glob["iteration"] == iteration and torch.equal(glob["loss_buffer"]["means"], means)


def test_params_without_grad_sit_out_and_keep_their_lstm_state():
    named = params()
    opt = velo(named)
    run(opt, named, 2)
    b = named[1][1]
    hidden = opt.state[b]["lstm_hidden"].clone()
    set_grads(named, 2)
    b.grad = None
    named[2][1].requires_grad_(False)  # frozen
    before = snapshot(named)
    opt.step(0.5)
    assert torch.equal(b.detach(), before["b"]) and torch.equal(named[2][1].detach(), before["s"])
    assert torch.equal(opt.state[b]["lstm_hidden"], hidden)
    assert not torch.equal(named[0][1].detach(), before["w"])
    named[2][1].requires_grad_(True)
    run(opt, named, 1, start=3)  # they rejoin
    assert not torch.equal(opt.state[b]["lstm_hidden"], hidden)
    assert not torch.equal(b.detach(), before["b"])


def test_a_parameter_that_never_gets_a_gradient():
    named = params()
    unused = torch.nn.Parameter(torch.ones(3))
    opt = velo([p for _, p in named] + [unused])
    run(opt, named, 3)  # the published port crashed here (p.grad is None)
    assert torch.equal(unused.detach(), torch.ones(3)) and unused not in opt.state


def test_add_param_group_starts_from_the_learned_initial_state():
    named = params()
    net = network()
    opt = velo([p for _, p in named[:2]], network=net)
    run(opt, named[:2], 2)
    opt.add_param_group({"params": [named[3][1]], "lr": 0.5})
    before = named[3][1].detach().clone()
    set_grads(named, 2)
    hidden0 = net.rnn.lstm_init_state[0].detach()[0]
    with torch.no_grad():
        opt.step(0.3)
    assert not torch.equal(before, named[3][1].detach())
    assert not torch.equal(opt.state[named[3][1]]["lstm_hidden"], hidden0)  # it advanced from the initial state
    assert opt.param_groups[1]["lr"] == 0.5


def test_bfloat16_params_keep_float32_state():
    named = params(torch.bfloat16)
    opt = velo(named)
    before = snapshot(named)
    run(opt, named, 3)
    assert any(not torch.equal(before[n], p.detach()) for n, p in named)
    for _, p in named:
        assert p.dtype == torch.bfloat16
        for key, v in opt.state[p].items():
            assert key == "hyper_v2" or v.dtype == torch.float32, key  # the optimizer-wide entry rides along


def test_foreach_matches_single_tensor():
    a, b = params(), params()
    opt_a, opt_b = velo(a, foreach=False), velo(b, foreach=True)
    run(opt_a, a, 4)
    run(opt_b, b, 4)
    for (n, p), (_, q) in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)


def test_lr_multiplies_the_step():
    named, twin = params(), params()
    opt, opt2 = velo(named), velo(twin, lr=0.25)
    before = snapshot(named)
    run(opt, named, 1)
    run(opt2, twin, 1)
    for (n, p), (_, q) in zip(named, twin):
        torch.testing.assert_close(0.25 * (p.detach() - before[n]), q.detach() - before[n], rtol=0, atol=1e-7)


# ------------------------------------------------------------- weight decay
def test_decoupled_weight_decay():
    named, twin = params(), params()
    opt, opt2 = velo(named), velo(twin, weight_decay=0.1, lr=0.5)
    before = snapshot(named)
    run(opt, named, 1)
    run(opt2, twin, 1)
    for (n, p), (_, q) in zip(named, twin):
        step = (before[n] - p.detach())  # lr = 1
        torch.testing.assert_close(q.detach(), before[n] - 0.5 * (step + 0.1 * before[n]), rtol=0, atol=1e-6)


def test_prefab_weight_decay_is_gradient_plus_loss_penalty():
    wd = 0.01
    named, twin = params(), params()
    opt = velo(named, weight_decay=wd, weight_decay_mode="prefab")
    opt2 = velo(twin)
    for s in range(3):
        set_grads(named, s)
        set_grads(twin, s)
        loss = torch.tensor(2.0 / (1 + s))
        penalty = None
        for _, q in twin:  # what the WeightDecayWrapper feeds the optimizer
            term = torch.sum(q.detach() * q.detach()) * wd
            penalty = term if penalty is None else penalty + term
            q.grad = q.grad + wd * q.detach()
        opt.step(loss)
        opt2.step(loss + penalty)
    for (n, p), (_, q) in zip(named, twin):
        assert torch.equal(p.detach(), q.detach()), n


# ------------------------------------------------- long runs: gradient averaging
def test_runs_longer_than_max_training_steps_average_micro_steps():
    named, twin = params(), params()
    opt = velo(named, num_steps=300, max_training_steps=100)  # ceil(300 / 100) = 3 micro-steps per update
    opt2 = velo(twin, num_steps=100, max_training_steps=None)
    assert opt.num_average == 3
    for update in range(2):
        grads, losses = [], []
        for micro in range(3):
            set_grads(named, 10 * update + micro)
            grads.append([p.grad.clone() for _, p in named])
            losses.append(torch.tensor(1.0 / (1 + micro + update)))
            before = snapshot(named)
            opt.step(losses[-1])
            moved = any(not torch.equal(before[n], p.detach()) for n, p in named)
            assert moved == (micro == 2)  # parameters move on every third call only
        for i, (_, q) in enumerate(twin):
            q.grad = (grads[0][i] + grads[1][i] + grads[2][i]) / 3
        opt2.step((losses[0] + losses[1] + losses[2]) / 3)
        for (n, p), (_, q) in zip(named, twin):
            assert torch.equal(p.detach(), q.detach()), n
    assert global_entry(opt.state)["num_steps"] == 100


def test_the_default_150k_threshold():
    named = params()
    assert velo(named, num_steps=150_000).num_average == 1
    long = velo(named, num_steps=400_000)
    assert long.num_average == 3 and long.num_steps // long.num_average == 133_333


def test_averaging_state_resumes_mid_window():
    named, twin = params(), params()
    opt, opt2 = velo(named, num_steps=20, max_training_steps=10), None
    run(opt, named, 3)  # one update done, one micro-step pending
    sd = opt.state_dict()
    opt2 = velo(twin, num_steps=20, max_training_steps=10)
    for (_, q), (_, p) in zip(twin, named):
        q.data.copy_(p.detach())
    opt2.load_state_dict(sd)
    run(opt, named, 3, start=3)
    run(opt2, twin, 3, start=3)
    for (n, p), (_, q) in zip(named, twin):
        assert torch.equal(p.detach(), q.detach()), n


# ------------------------------------------------------------------- DDP loss
def test_all_reduce_loss_without_a_process_group_is_a_no_op():
    import torch.distributed as dist

    assert not dist.is_initialized()
    a, b = params(), params()
    opt_a, opt_b = velo(a), velo(b, all_reduce_loss=True)
    run(opt_a, a, 3)
    run(opt_b, b, 3)
    for (n, p), (_, q) in zip(a, b):
        assert torch.equal(p.detach(), q.detach()), n


def test_all_reduce_loss_with_a_single_process_group():
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            a, b = params(), params()
            opt_a, opt_b = velo(a), velo(b, all_reduce_loss=True)
            run(opt_a, a, 2)
            run(opt_b, b, 2)
            for (n, p), (_, q) in zip(a, b):
                assert torch.equal(p.detach(), q.detach()), n
        finally:
            dist.destroy_process_group()


# -------------------------------------------------------------------- legacy
def test_bugged_next_lstm_state_keeps_the_initial_state():
    named = params()
    net = network()
    opt = velo(named, network=net, use_bugged_next_lstm_state=True)
    run(opt, named, 3)
    h0 = net.rnn.lstm_init_state[0].detach()[0]
    for _, p in named:
        assert torch.equal(opt.state[p]["lstm_hidden"], h0)


def test_bugged_loss_features_use_a_ten_step_horizon():
    named = params()
    opt = velo(named, use_bugged_loss_features=True, num_steps=5000)
    run(opt, named, 1)
    decays = global_entry(opt.state)["loss_buffer"]["decays"]
    assert torch.allclose(decays, torch.full((10,), math.exp(-0.1)))


# ---------------------------------------------------------------------- Celo
def celo(named, **kw):
    kw.setdefault("network", network(lstm_input_size=18, param_inits=1))
    return Celo_naive(named, kw.pop("num_steps", 100), **kw)


def test_celo_needs_num_steps_and_its_weights():
    named = params()
    with pytest.raises(TypeError, match="num_steps"):
        Celo_naive(named, network=network(lstm_input_size=18))
    with pytest.raises(ValueError, match="pylo-convert theta.state"):
        Celo_naive(named, num_steps=10)
    with pytest.raises(ValueError, match="train_phase"):
        celo(named, train_phase=3)
    with pytest.raises(ValueError, match="LSTM takes 30"):
        celo(named, network=network())


def test_celo_phase_one_ignores_the_lstm_step_size():
    named, twin = params(), params()
    net = network(lstm_input_size=18, param_inits=1)
    opt, opt2 = celo(named, network=net, train_phase=1), celo(twin, network=copy.deepcopy(net), train_phase=1)
    with torch.no_grad():
        opt2.network.rnn.step_size.bias.add_(3.0)  # a different lr multiplier
    run(opt, named, 2)
    run(opt2, twin, 2)
    for (n, p), (_, q) in zip(named, twin):
        assert torch.equal(p.detach(), q.detach()), n


def test_celo_state_dict_round_trip_and_missing_loss():
    named = params()
    opt = celo(named)
    run(opt, named, 2)
    set_grads(named, 2)
    with pytest.raises(TypeError, match="Celo.step"):
        opt.step()
    sd = opt.state_dict()
    twin = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named]
    opt2 = celo(twin)
    opt2.load_state_dict(sd)
    run(opt, named, 2, start=2)
    run(opt2, twin, 2, start=2)
    for (n, p), (_, q) in zip(named, twin):
        assert torch.equal(p.detach(), q.detach()), n
