"""Checkpoints of CELO2, ELO-CELO2 and ELO: pylo-convert (flax msgpack, pickles, the real Celo file),
published hub layouts (HF cache and plain folders, offline), and the errors on bad input."""

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pylo.checkpoint_io import read_checkpoint
from pylo.converters.cli import main as pylo_convert
from pylo.errors import CheckpointError, HubUnavailableError
from pylo.optim import CELO2_naive, ELO_CELO2_naive, ELO_naive

jax = pytest.importorskip("jax")
import flax.serialization  # noqa: E402
import jax.numpy as jnp  # noqa: E402

WIDTHS = (1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)


def celo2_theta(hidden=8, seed=0, stack=None):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(((stack,) if stack else ()) + s).astype(np.float32)  # noqa: E731
    ff = {f"w0__{i}": f(d, hidden) for i, d in enumerate(WIDTHS)}
    ff.update(b0=f(hidden), w1=f(hidden, hidden), b1=f(hidden), w2=f(hidden, 3), b2=f(3))
    return {"ff_mod_stack": {"~": ff}}


def elo_theta(hidden=32, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {"nn": {"~": {"w0": f(39, hidden), "b0": f(hidden), "w1": f(hidden, hidden), "b1": f(hidden),
                         "w2": f(hidden, 2), "b2": f(2)}}}


def write(theta, path, fmt):
    if fmt == "msgpack":
        path.write_bytes(flax.serialization.to_bytes(theta))
    elif fmt == "pickle-numpy":
        path.write_bytes(pickle.dumps(theta))
    else:  # scaling_l2o meta-train checkpoints pickle theta as it lives in JAX: jax arrays
        path.write_bytes(pickle.dumps(jax.tree_util.tree_map(jnp.asarray, theta)))
    return path


def convert(capsys, *args):
    status = pylo_convert([str(a) for a in args])
    err = capsys.readouterr().err
    return status, err


def assert_celo2_tensors(folder, theta):
    ff = theta["ff_mod_stack"]["~"]
    tensors = read_checkpoint(folder).tensors
    for i in range(len(WIDTHS)):
        np.testing.assert_array_equal(tensors[f"w0.{i}"].numpy(), np.asarray(ff[f"w0__{i}"]).reshape(WIDTHS[i], -1))
    for key, jax_key in (("b0", "b0"), ("dense_w.0", "w1"), ("dense_b.0", "b1"), ("dense_w.1", "w2"),
                         ("dense_b.1", "b2")):
        want = np.asarray(ff[jax_key])
        np.testing.assert_array_equal(tensors[key].numpy(), want.reshape(want.shape[-tensors[key].dim():]))
    assert len(tensors) == len(WIDTHS) + 5


# --------------------------------------------------------------------------- converters

@pytest.mark.parametrize("fmt", ["msgpack", "pickle-numpy", "pickle-jax"])
@pytest.mark.parametrize("optimizer", ["celo2", "elo_celo2"])
def test_celo2_theta_converts_and_round_trips(tmp_path, capsys, fmt, optimizer):
    theta = celo2_theta()
    src = write(theta, tmp_path / ("theta.pickle" if fmt.startswith("pickle") else "theta.state"), fmt)
    assert convert(capsys, src, tmp_path / "out", "--optimizer", optimizer)[0] == 0
    assert_celo2_tensors(tmp_path / "out", theta)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["hidden_size"] == 8 and config["hidden_layers"] == 2 and config["feature_dims"] == list(WIDTHS)
    assert config["pylo"]["optimizer"] == optimizer
    cls = CELO2_naive if optimizer == "celo2" else ELO_CELO2_naive
    opt = cls([torch.nn.Parameter(torch.zeros(3, 3))], checkpoint_path=tmp_path / "out")
    np.testing.assert_array_equal(opt.network.dense_w[1].detach().numpy(), theta["ff_mod_stack"]["~"]["w2"])
    # back to upstream's format: flax restores it into upstream's theta template, bit for bit
    assert convert(capsys, tmp_path / "out", tmp_path / "back.state", "--to", "jax")[0] == 0
    template = jax.tree_util.tree_map(np.zeros_like, theta)
    back = flax.serialization.from_bytes(template, (tmp_path / "back.state").read_bytes())
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(theta)):
        np.testing.assert_array_equal(a, b)


def test_real_celo_ff_mod_stack_through_the_celo2_path(shared_checkpoints, tmp_path, capsys):
    """The real Celo file's ff_mod_stack (hidden 4, stack axis of 1) is a real-format CELO2 network."""
    real = flax.serialization.msgpack_restore((shared_checkpoints / "celo" / "theta.state").read_bytes())
    assert real["ff_mod_stack"]["~"]["w0__0"].shape == (1, 1, 4)
    # the whole Celo checkpoint is not a CELO2 one: refused with a pointer to the right converter
    status, err = convert(capsys, shared_checkpoints / "celo" / "theta.state", tmp_path / "no", "--optimizer", "celo2")
    assert status == 1 and "--optimizer celo" in err and not (tmp_path / "no").exists()
    ff_only = {"ff_mod_stack": real["ff_mod_stack"]}
    for fmt in ("msgpack", "pickle-numpy"):
        src = write(ff_only, tmp_path / f"ff_{fmt}.state", fmt)
        assert convert(capsys, src, tmp_path / fmt, "--optimizer", "celo2")[0] == 0
        assert_celo2_tensors(tmp_path / fmt, ff_only)
        assert read_checkpoint(tmp_path / fmt).config["hidden_size"] == 4

    # the real weights drive the torch optimizer exactly as they drive the JAX reference
    from pylo.parity_tests import fixtures
    from pylo.reference_jax.celo2 import Celo2LOpt

    shapes = {"w": (6, 5), "conv": (6, 4, 3, 2), "embed": (10, 4), "bias": (5,)}
    init = fixtures.initial_params(shapes, seed=3)
    named = [(n, torch.nn.Parameter(torch.from_numpy(a.copy()))) for n, a in init.items()]
    opt = CELO2_naive(named, checkpoint_path=tmp_path / "msgpack", lr=0.01, weight_decay=0.1)
    theta = jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), ff_only)
    lopt = Celo2LOpt(ff_hidden_size=4, init_lr=0.01, peak_lr=0.01, end_lr=0.01, weight_decay=0.1).opt_fn(theta)
    with jax.default_matmul_precision("highest"):
        state = lopt.init({n: jnp.asarray(fixtures.to_jax_layout(a)) for n, a in init.items()}, num_steps=100)
        update = jax.jit(lambda s, g: lopt.update(s, g))
        for grads in fixtures.gradient_stream(shapes, 10, seed=3):
            for n, p in named:
                p.grad = torch.from_numpy(grads[n].copy())
            opt.step()
            state = update(state, {n: jnp.asarray(fixtures.to_jax_layout(g)) for n, g in grads.items()})
    for n, p in named:
        ref = fixtures.to_torch_layout(np.asarray(state.params[n]))
        assert np.abs(p.detach().numpy() - ref).max() <= 1e-6, n


@pytest.mark.parametrize("fmt", ["msgpack", "pickle-jax"])
def test_elo_theta_converts_and_loads(tmp_path, capsys, fmt):
    theta = elo_theta()
    src = write(theta, tmp_path / "theta.bin", fmt)
    assert convert(capsys, src, tmp_path / "out", "--optimizer", "elo")[0] == 0
    ckpt = read_checkpoint(tmp_path / "out")
    nn = theta["nn"]["~"]
    np.testing.assert_array_equal(ckpt.tensors["network.input.weight"].numpy(), nn["w0"].T)
    np.testing.assert_array_equal(ckpt.tensors["network.linear_0.weight"].numpy(), nn["w1"].T)
    np.testing.assert_array_equal(ckpt.tensors["network.output.bias"].numpy(), nn["b2"])
    assert (ckpt.config["input_size"], ckpt.config["hidden_size"], ckpt.config["hidden_layers"]) == (39, 32, 1)
    opt = ELO_naive([torch.nn.Parameter(torch.zeros(3))], checkpoint_path=tmp_path / "out")
    assert opt.network.hidden_layers == 1
    assert convert(capsys, tmp_path / "out", tmp_path / "back.state", "--to", "jax")[0] == 0
    back = flax.serialization.from_bytes(theta, (tmp_path / "back.state").read_bytes())
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(theta)):
        np.testing.assert_array_equal(a, b)


def _broken(theta_fn, edit):
    theta = theta_fn()
    edit(theta)
    return theta


@pytest.mark.parametrize("theta, optimizer, match", [
    (celo2_theta(stack=2), "celo2", "stack of 2"),
    (_broken(celo2_theta, lambda t: t["ff_mod_stack"]["~"].pop("w0__3")), "celo2", "unexpected.*w0__4"),
    (_broken(celo2_theta, lambda t: t["ff_mod_stack"]["~"].pop("b2")), "elo_celo2", "missing ff_mod_stack/~/b2"),
    (_broken(celo2_theta, lambda t: t["ff_mod_stack"]["~"].update(b0=np.zeros(7, np.float32))), "celo2",
     r"b0 has shape \(7,\), expected \(8,\)"),
    (_broken(celo2_theta, lambda t: t["ff_mod_stack"]["~"].update(b1=np.zeros(8, np.int32))), "celo2",
     "dtype int32"),
    (_broken(celo2_theta, lambda t: t.update(extra={"x": np.zeros(2, np.float32)})), "celo2", "unexpected extra/x"),
    (_broken(elo_theta, lambda t: t.update(momentum_decays=np.zeros(3, np.float32))), "elo",
     "unexpected momentum_decays"),
    (elo_theta(), "adafaclo", "missing adafactor_decays"),
    (celo2_theta(), "elo", "no nn/~/w0"),
    (elo_theta(), "celo2", "no ff_mod_stack/~/w0__0"),
])
def test_bad_thetas_are_refused_and_nothing_is_written(tmp_path, capsys, theta, optimizer, match):
    src = write(theta, tmp_path / "theta.state", "msgpack")
    status, err = convert(capsys, src, tmp_path / "out", "--optimizer", optimizer)
    assert status == 1
    assert len(err.strip().splitlines()) == 1, err
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "out").exists()


def test_truncated_and_hostile_files_are_refused(tmp_path, capsys):
    data = flax.serialization.to_bytes(celo2_theta())
    (tmp_path / "cut.state").write_bytes(data[: len(data) // 2])
    status, err = convert(capsys, tmp_path / "cut.state", tmp_path / "out", "--optimizer", "celo2")
    assert status == 1 and "truncated" in err
    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"ff_mod_stack": print}))
    status, err = convert(capsys, tmp_path / "evil.pickle", tmp_path / "out", "--optimizer", "celo2")
    assert status == 1 and "refusing" in err
    assert not (tmp_path / "out").exists()


def test_inspect_recognises_celo2_and_elo(tmp_path, capsys):
    write(celo2_theta(hidden=4), tmp_path / "c.state", "msgpack")
    write(elo_theta(), tmp_path / "e.state", "msgpack")
    assert pylo_convert(["inspect", str(tmp_path / "c.state")]) == 0
    out = capsys.readouterr().out
    assert "CELO2 / ELO-CELO2" in out and "ff_hidden_size=4" in out and "--optimizer celo2" in out
    assert pylo_convert(["inspect", str(tmp_path / "e.state")]) == 0
    out = capsys.readouterr().out
    assert "ELO:" in out and "--optimizer elo" in out


# ------------------------------------------------------------------- published hub layouts

def published_celo2_folder(folder, theta, with_config=True):
    """A PyLO ``CELO2MLP`` repository as ``PyTorchModelHubMixin.save_pretrained`` lays it out."""
    ff = theta["ff_mod_stack"]["~"]
    tensors = {f"w0.{i}": torch.from_numpy(ff[f"w0__{i}"]) for i in range(len(WIDTHS))}
    tensors.update({"b0": torch.from_numpy(ff["b0"]), "dense_w.0": torch.from_numpy(ff["w1"]),
                    "dense_b.0": torch.from_numpy(ff["b1"]), "dense_w.1": torch.from_numpy(ff["w2"]),
                    "dense_b.1": torch.from_numpy(ff["b2"])})
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if with_config:
        (folder / "config.json").write_text(json.dumps({"activation": "relu", "feature_dims": list(WIDTHS),
                                                        "hidden_layers": 2, "hidden_size": 8, "output_size": 3}))
    return folder


def published_elo_folder(folder, theta):
    """A PyLO ``MetaMLP`` repository (``DiamondXL/elo``: 39 -> 32 -> 32 -> 2)."""
    nn = theta["nn"]["~"]
    tensors = {}
    for i, name in enumerate(["input", "linear_0", "output"]):
        tensors[f"network.{name}.weight"] = torch.from_numpy(np.ascontiguousarray(nn[f"w{i}"].T))
        tensors[f"network.{name}.bias"] = torch.from_numpy(nn[f"b{i}"])
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"hidden_layers": 1, "hidden_size": 32, "input_size": 39}))
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding the three published repos."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf"
    rev = "0123456789abcdef0123456789abcdef01234567"
    thetas = {"DiamondXL/celo2": celo2_theta(seed=1), "DiamondXL/elo-celo2": celo2_theta(seed=2),
              "DiamondXL/elo": elo_theta(seed=3)}
    for repo, theta in thetas.items():
        root = cache / f"models--{repo.replace('/', '--')}"
        make = published_elo_folder if repo.endswith("/elo") else published_celo2_folder
        make(root / "snapshots" / rev, theta)
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(rev)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, rev, thetas


def test_default_hub_keys_load_the_published_layouts_strictly(hub_cache):
    _, _, thetas = hub_cache
    p = [torch.nn.Parameter(torch.zeros(4, 4))]
    for cls, repo in ((CELO2_naive, "DiamondXL/celo2"), (ELO_CELO2_naive, "DiamondXL/elo-celo2")):
        net = cls(p).network
        ff = thetas[repo]["ff_mod_stack"]["~"]
        np.testing.assert_array_equal(net.w0[13].detach().numpy(), ff["w0__13"])
        np.testing.assert_array_equal(net.dense_b[1].detach().numpy(), ff["b2"])
    net = ELO_naive(p).network
    np.testing.assert_array_equal(net.network.input.weight.detach().numpy(), thetas["DiamondXL/elo"]["nn"]["~"]["w0"].T)


def test_published_folders_load_as_plain_folders_and_convert_to_jax(hub_cache, tmp_path, capsys):
    cache, rev, thetas = hub_cache
    snap = cache / "models--DiamondXL--celo2" / "snapshots" / rev
    opt = CELO2_naive([torch.nn.Parameter(torch.zeros(4, 4))], checkpoint_path=snap, hf_key=None)
    np.testing.assert_array_equal(opt.network.w0[0].detach().numpy(), thetas["DiamondXL/celo2"]["ff_mod_stack"]["~"]["w0__0"])
    assert convert(capsys, snap, tmp_path / "celo2.state", "--to", "jax", "--optimizer", "celo2")[0] == 0
    back = flax.serialization.from_bytes(thetas["DiamondXL/celo2"], (tmp_path / "celo2.state").read_bytes())
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(thetas["DiamondXL/celo2"])):
        np.testing.assert_array_equal(a, b)
    elo_snap = cache / "models--DiamondXL--elo" / "snapshots" / rev
    assert convert(capsys, elo_snap, tmp_path / "elo", "--optimizer", "elo")[0] == 0
    assert read_checkpoint(tmp_path / "elo").config["pylo"]["optimizer"] == "elo"


def test_hub_folder_without_config_is_inferred_from_the_tensors(tmp_path):
    folder = published_celo2_folder(tmp_path / "noconf", celo2_theta(hidden=8), with_config=False)
    opt = CELO2_naive([torch.nn.Parameter(torch.zeros(4, 4))], checkpoint_path=folder)
    assert opt.network.hidden_size == 8


def test_broken_hub_folders_name_the_problem(hub_cache, tmp_path):
    cache, rev, thetas = hub_cache
    folder = published_celo2_folder(tmp_path / "bad", celo2_theta())
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    tensors.pop("w0.7")
    tensors["b0"] = torch.zeros(5)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensors w0\.7.*b0: checkpoint \(5,\)"):
        CELO2_naive([torch.nn.Parameter(torch.zeros(4, 4))], checkpoint_path=folder)
    with pytest.raises(HubUnavailableError, match="checkpoint_path"):
        CELO2_naive([torch.nn.Parameter(torch.zeros(4, 4))], hf_key="DiamondXL/not-cached")
