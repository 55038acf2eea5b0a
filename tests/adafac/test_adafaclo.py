"""AdafacLO / ELO specifics: decays, clipping, layouts, backend choice, argument checks (no ``mup`` needed;
MuLO's tests are in test_mulo.py)."""

import math

import pytest
import torch

from pylo.checkpoint_io import write_checkpoint
from pylo.core.chunked import DEFAULT_CHUNK
from pylo.core.decays import learned_decays
from pylo.errors import CheckpointError
from pylo.models import MetaMLP
from pylo.optim import ELO, AdafacLO, AdafacLO_naive, ELO_naive
from pylo.optim.adafac import functional
from pylo.optim.adafac.constants import MULO_ADAFACTOR_OFFSETS, MULO_MOMENTUM_OFFSETS, MULO_RMS_OFFSETS


def _net(seed=0, **decays):
    torch.manual_seed(seed)
    net = MetaMLP(39, 8, 1, **decays)
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    return net


def _folder(tmp_path, net, name="ckpt", optimizer="adafaclo"):
    config = {"input_size": net.input_size, "hidden_size": net.hidden_size, "hidden_layers": net.hidden_layers,
              "pylo": {"optimizer": optimizer}}
    for key in ("momentum_decays", "rms_decays", "adafactor_decays"):
        if getattr(net, key) is not None:
            config[key] = getattr(net, key)
    return write_checkpoint(tmp_path / name, config, net.state_dict())


def test_aliases_and_published_defaults():
    import inspect

    assert issubclass(AdafacLO, AdafacLO_naive) and AdafacLO.default_backend == "auto"
    assert AdafacLO_naive.default_backend is None and inspect.signature(AdafacLO_naive).parameters["backend"].default is None

    sig = inspect.signature(AdafacLO_naive)
    assert sig.parameters["momentum_decays"].default == [0.15216392, 0.14245212, 0.06812963]
    assert sig.parameters["lr"].default == 1.0 and sig.parameters["step_mult"].default == 0.01
    assert sig.parameters["hidden_layers"].default == 1 and sig.parameters["hf_key"].default == "btherien/mulo"


def test_effective_decays_follow_upstream_formula():
    got = learned_decays((0.9, 0.99, 0.999), MULO_MOMENTUM_OFFSETS)
    want = [1 - (1 - d) * math.exp(10 * t) for d, t in zip((0.9, 0.99, 0.999), MULO_MOMENTUM_OFFSETS)]
    assert got == pytest.approx(want, rel=1e-6)
    assert got == pytest.approx([0.542027, 0.958441, 0.998024], abs=2e-6)


def test_checkpoint_decays_are_used_unless_passed(tmp_path):
    stored = dict(momentum_decays=[0.1, 0.0, -0.1], rms_decays=[0.05], adafactor_decays=[0.0, 0.1, 0.2])
    ckpt = _folder(tmp_path, _net(**stored))
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert AdafacLO(p, checkpoint_path=ckpt).param_groups[0]["momentum_decays"] == pytest.approx([0.1, 0.0, -0.1])
    explicit = AdafacLO(p, checkpoint_path=ckpt, momentum_decays=[0.0, 0.0, 0.0])
    assert explicit.param_groups[0]["momentum_decays"] == [0.0, 0.0, 0.0]
    assert explicit.param_groups[0]["rms_decays"] == pytest.approx([0.05])
    plain = AdafacLO(p, checkpoint_path=_folder(tmp_path, _net(), "plain"))
    assert plain.param_groups[0]["adafactor_decays"] == MULO_ADAFACTOR_OFFSETS
    assert plain.param_groups[0]["rms_decays"] == MULO_RMS_OFFSETS


def test_network_wins_over_checkpoint_and_checkpoint_over_hub(tmp_path):
    net_a, net_b = _net(1), _net(2)
    ckpt = _folder(tmp_path, net_b)
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert AdafacLO(p, network=net_a, checkpoint_path=ckpt).network is net_a
    # the hub is unreachable in tests: loading from checkpoint_path must not consult it
    opt = AdafacLO(p, checkpoint_path=ckpt, hf_key="nobody/nothing")
    assert torch.equal(opt.network.network.input.weight, net_b.network.input.weight)


def test_missing_network_source_is_an_error():
    with pytest.raises(ValueError, match="network=, checkpoint_path= or a hub key"):
        AdafacLO([torch.nn.Parameter(torch.zeros(2))], hf_key=None)


def test_checkpoint_for_another_optimizer_is_refused(tmp_path):
    ckpt = _folder(tmp_path, _net(), optimizer="velo")
    with pytest.raises(CheckpointError, match="'velo'"):
        AdafacLO([torch.nn.Parameter(torch.zeros(2))], checkpoint_path=ckpt)


def test_mulo_checkpoint_loads_into_adafaclo(tmp_path):
    ckpt = _folder(tmp_path, _net(), optimizer="mulo")
    assert AdafacLO([torch.nn.Parameter(torch.zeros(2))], checkpoint_path=ckpt).network.hidden_size == 8


def test_wrong_input_size_network_is_refused():
    with pytest.raises(ValueError, match="39 features"):
        AdafacLO([torch.nn.Parameter(torch.zeros(2))], network=MetaMLP(30, 4, 1))


@pytest.mark.parametrize("kwargs,match", [
    ({"lr": float("nan")}, "lr"), ({"weight_decay": -1.0}, "weight_decay"), ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ({"kernel_layout": "nchw"}, "kernel_layout"), ({"mup_lrs": {"a": 1.0}}, "mup_lrs"),
    ({"momentum_decays": [0.1]}, "momentum decay offsets"), ({"nonfinite_grads": "ignore"}, "nonfinite_grads"),
])
def test_bad_arguments_get_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdafacLO([torch.nn.Parameter(torch.zeros(2))], network=_net(), **kwargs)


def test_integer_params_are_refused():
    with pytest.raises(TypeError, match="floating-point"):
        AdafacLO([torch.zeros(2, dtype=torch.int64)], network=_net())


def _one_step(params, grads, **kwargs):
    opt = AdafacLO(params, network=_net(), **kwargs)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    return [p.detach().clone() for p in params]


def test_global_clipping_spans_all_groups():
    torch.manual_seed(0)
    data = [torch.randn(4, 3), torch.randn(5)]
    grads = [10 * torch.randn(4, 3), 10 * torch.randn(5)]
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    clipped = _one_step([torch.nn.Parameter(d.clone()) for d in data], [g / norm for g in grads])
    groups = [{"params": [torch.nn.Parameter(data[0].clone())]}, {"params": [torch.nn.Parameter(data[1].clone())]}]
    got = _one_step([g["params"][0] for g in groups], grads, clip_grad=True)
    opt_groups = AdafacLO(groups, network=_net(), clip_grad=True)
    assert opt_groups.clip_grad and opt_groups.max_grad_norm == 1.0
    for a, b in zip(clipped, got):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    unclipped = _one_step([torch.nn.Parameter(d.clone()) for d in data], grads)
    assert not torch.allclose(unclipped[0], got[0])


def test_max_grad_norm_alone_turns_clipping_on():
    opt = AdafacLO([torch.nn.Parameter(torch.zeros(2))], network=_net(), max_grad_norm=0.5)
    assert opt.clip_grad and opt.max_grad_norm == 0.5


def test_upstream_mode_applies_nan_to_num():
    data = torch.randn(6)
    grads = torch.randn(6)
    bad = grads.clone()
    bad[2] = float("nan")
    fixed = grads.clone()
    fixed[2] = 0.0
    a = _one_step([torch.nn.Parameter(data.clone())], [bad], nonfinite_grads="upstream")
    b = _one_step([torch.nn.Parameter(data.clone())], [fixed])
    assert torch.equal(a[0], b[0])


def test_torch_conv_kernels_are_computed_in_jax_layout():
    # in == out channels: which axis is "row" then depends on the layout (untied shapes do not care)
    torch.manual_seed(0)
    kernel, grad = torch.randn(4, 4, 3, 2), torch.randn(4, 4, 3, 2)
    hwio = [torch.nn.Parameter(kernel.permute(2, 3, 1, 0).contiguous())]
    want = _one_step(hwio, [grad.permute(2, 3, 1, 0).contiguous()], kernel_layout="jax")[0]
    got = _one_step([torch.nn.Parameter(kernel.clone())], [grad])[0]
    torch.testing.assert_close(got.permute(2, 3, 1, 0), want, rtol=0, atol=0)
    raw = _one_step([torch.nn.Parameter(kernel.clone())], [grad], kernel_layout="jax")[0]
    assert not torch.allclose(raw - kernel, got - kernel, rtol=1e-2)  # the layout matters: features differ


def test_weight_decay_is_decoupled_and_scaled_by_lr():
    torch.manual_seed(0)
    data, grad = torch.randn(4, 3), torch.randn(4, 3)
    plain = _one_step([torch.nn.Parameter(data.clone())], [grad], lr=0.5)[0]
    decayed = _one_step([torch.nn.Parameter(data.clone())], [grad], lr=0.5, weight_decay=0.1)[0]
    torch.testing.assert_close(plain - decayed, 0.5 * 0.1 * data, rtol=1e-4, atol=1e-6)


def test_meta_network_is_copied_per_device_not_moved():
    net = _net()
    opt = AdafacLO([torch.nn.Parameter(torch.zeros(2))], network=net)
    assert opt.network_on(torch.device("cpu")) is net


# ------------------------------------------------------------------ backend choice (pylo.optim.backend)
FAMILY = [(AdafacLO_naive, AdafacLO), (ELO_naive, ELO)]


@pytest.mark.parametrize("naive,fast", FAMILY, ids=["adafaclo", "elo"])
def test_backend_choice_follows_the_one_rule(naive, fast):
    p = [torch.nn.Parameter(torch.zeros(2))]
    group = lambda cls, **kw: cls(p, network=_net(), **kw).param_groups[0]  # noqa: E731
    assert group(naive)["backend"] is None and group(fast)["backend"] == "auto"
    assert group(fast, foreach=True)["backend"] == "foreach" and group(fast, foreach=False)["backend"] == "naive"
    assert group(naive, backend="fused")["backend"] == "fused"
    assert group(naive)["chunk_size"] == DEFAULT_CHUNK
    with pytest.raises(ValueError, match="chunk_size"):
        naive(p, network=_net(), chunk_size=True)
    with pytest.raises(ValueError, match="contradicts"):
        fast(p, network=_net(), backend="fused", foreach=True)
    with pytest.raises(ValueError, match="backend must be"):
        naive(p, network=_net(), backend="cuda")


@pytest.mark.parametrize("naive,fast", FAMILY, ids=["adafaclo", "elo"])
def test_default_and_explicit_foreach_run_that_engine(naive, fast, monkeypatch):
    ran = []
    for name, engine in functional.ENGINES.items():
        monkeypatch.setattr(engine, "prepare", lambda self, *a, _orig=engine.prepare: ran.append(self.name)
                            or _orig(self, *a))
    for cls, kw in ((naive, {}), (fast, {"foreach": True}), (fast, {})):
        p = torch.nn.Parameter(torch.ones(3, 2))
        p.grad = torch.ones(3, 2)
        cls([p], network=_net(), **kw).step()
    assert ran == ["naive", "foreach", "fused"]  # on a CPU: naive by torch's rule; auto is fused here


def test_state_is_created_by_the_class_and_the_functional_entry_needs_it():
    p = torch.nn.Parameter(torch.ones(2, 3, 2, 2))
    p.grad = torch.ones_like(p)
    opt = AdafacLO_naive([p], network=_net())
    opt.step()
    state = opt.state[p]
    assert list(state) == ["mom", "rms", "fac_row", "fac_col", "fac_diag", "step"]
    assert state["mom"].shape == (2, 2, 3, 2, 3) and state["step"].item() == 1  # HWIO work layout
    kwargs = dict(network=_net(), decays=opt._decay_tensors(opt.param_groups[0], p.device), lr=1.0, exp_mult=0.001,
                  step_mult=0.01, weight_decay=0.0, kernel_layout="torch")
    with pytest.raises(ValueError, match="init_state"):
        functional.adafaclo([p], [p.grad], [{}], **kwargs)
    with pytest.raises(ValueError, match="backend must be one of"):
        functional.adafaclo([p], [p.grad], [state], backend="auto", **kwargs)
    assert set(functional.ENGINES) == {"naive", "foreach", "fused", "triton"}
