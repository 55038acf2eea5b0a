"""pylo-convert for VeLO and Celo: every upstream container, config.gin, shape checks, round trips."""

import json

import numpy as np
import pytest
import torch

from pylo.checkpoint_io import read_checkpoint
from pylo.converters.cli import main as pylo_convert
from pylo.converters.convert import convert, to_jax
from pylo.converters import flax_msgpack
from pylo.errors import CheckpointError
from pylo.models.hyper_network import HyperNetwork
from pylo.optim import Celo, VeLO

jax = pytest.importorskip("jax")
flax_serialization = pytest.importorskip("flax.serialization")

from pylo.parity_tests.pipeline import perturb_zero_leaves  # noqa: E402
from pylo.reference_jax.celo import Celo as CeloRef  # noqa: E402
from pylo.reference_jax.hyper_v2 import HyperV2  # noqa: E402

RELEASED_GIN = """\
# learned_optimization outer-training config (excerpt)
run_train.lopt = @HyperV2()
HyperV2.lstm_hidden_size = 8
HyperV2.param_inits = 4
HyperV2.use_bugged_loss_features = \\
    False
run_train.outer_learner_fn = @GradientLearner
GradientLearner.theta_opt = @GradientClipOptimizer()
Adam.learning_rate = 3e-4
"""


def velo_theta(seed=0, lstm=8, inits=4):
    theta = HyperV2(lstm_hidden_size=lstm, param_inits=inits).init(jax.random.PRNGKey(seed))
    return jax.tree_util.tree_map(np.asarray, perturb_zero_leaves(theta, seed, 0.1))


def celo_theta(seed=0):
    theta = CeloRef(lstm_hidden_size=8, param_inits=2).init(jax.random.PRNGKey(seed))
    return jax.tree_util.tree_map(np.asarray, perturb_zero_leaves(theta, seed, 0.1))


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flax_serialization.to_bytes(obj))
    return path


def flat(theta):
    out = {}
    for k, v in theta.items() if isinstance(theta, dict) else theta._asdict().items():
        if isinstance(v, dict) or hasattr(v, "_asdict"):
            out.update({(k,) + kk: vv for kk, vv in flat(v).items()})
        else:
            out[(k,)] = np.asarray(v)
    return out


def check_tensors(folder, theta):
    ckpt = read_checkpoint(folder)
    t, th = ckpt.tensors, flat(theta)
    ff = ("ff_mod_stack", "~")
    blocks = [th[ff + (f"w0__{i}",)] for i in range(14)]
    assert torch.equal(t["mlp.input_weights_"], torch.from_numpy(np.concatenate(blocks, 1).swapaxes(1, 2).copy()))
    assert torch.equal(t["mlp.hidden_weights_.0"], torch.from_numpy(th[ff + ("w1",)].swapaxes(1, 2).copy()))
    assert torch.equal(t["mlp.output_bias_"], torch.from_numpy(th[ff + ("b2",)]))
    assert torch.equal(t["rnn.lstm.linear.weight"], torch.from_numpy(th[("rnn_params", "rnn/linear", "w")].T.copy()))
    assert torch.equal(t["rnn.mix_layer1.weight"], torch.from_numpy(th[("rnn_params", "linear", "w")].T.copy()))
    assert torch.equal(t["rnn.mix_layer2.bias"], torch.from_numpy(th[("rnn_params", "linear_1", "b")]))
    assert torch.equal(t["rnn.final_mix_layer.bias"], torch.from_numpy(th[("rnn_params", "linear_2", "b")]))
    assert torch.equal(t["rnn.lstm_init_state.1"], torch.from_numpy(th[("lstm_init_state", "cell")]))
    assert len(t) == len(HyperNetwork(**{k: ckpt.config[k] for k in ("lstm_input_size", "lstm_hidden_size",
                                                                       "param_inits")}).state_dict())
    return ckpt


def test_released_params_file_with_config_gin(tmp_path):
    theta = velo_theta()
    src = write(tmp_path / "velo_run" / "params", {"params": theta, "gen_id": "abc", "step": np.int64(5620)})
    (src.parent / "config.gin").write_text(RELEASED_GIN)
    assert pylo_convert([str(src), str(tmp_path / "out"), "--optimizer", "velo"]) == 0
    ckpt = check_tensors(tmp_path / "out", theta)
    meta = ckpt.config["pylo"]
    assert meta["optimizer_config"] == {"use_bugged_loss_features": False, "use_bugged_next_lstm_state": False}
    assert meta["source"]["container"] == "ParameterCheckpoint" and meta["source"]["step"] == 5620
    assert "HyperV2.param_inits = 4" in meta["source"]["config.gin"]
    opt = VeLO([torch.nn.Parameter(torch.ones(3))], checkpoint_path=str(tmp_path / "out"), num_steps=10)
    assert opt.network.rnn.lstm_hidden_size == 8 and opt.network.mlp.param_inits == 4


def test_config_gin_class_defaults_apply_when_unbound(tmp_path):
    src = write(tmp_path / "run" / "params", {"params": velo_theta(), "gen_id": "", "step": 0})
    (src.parent / "config.gin").write_text("run_train.lopt = @HyperV2()\nHyperV2.param_inits = 4\n")
    convert(src, tmp_path / "out", "velo")
    recorded = read_checkpoint(tmp_path / "out").config["pylo"]["optimizer_config"]
    assert recorded == {"use_bugged_loss_features": True, "use_bugged_next_lstm_state": False}  # HyperV2's defaults


def test_config_gin_that_contradicts_theta_is_refused(tmp_path):
    src = write(tmp_path / "run" / "params", {"params": velo_theta(), "gen_id": "", "step": 0})
    (src.parent / "config.gin").write_text(RELEASED_GIN.replace("param_inits = 4", "param_inits = 256"))
    with pytest.raises(CheckpointError, match="param_inits"):
        convert(src, tmp_path / "out", "velo")
    (src.parent / "config.gin").write_text("run_train.lopt = @AdafacMLPLOpt()\n")
    with pytest.raises(CheckpointError, match="AdafacMLPLOpt"):
        convert(src, tmp_path / "out", "velo")
    assert not (tmp_path / "out").exists()


def test_bare_theta_state_as_in_the_celo_repository(tmp_path):
    theta = velo_theta(seed=1)
    src = write(tmp_path / "velo-4000" / "theta.state", theta)
    convert(tmp_path / "velo-4000", tmp_path / "out", "velo")  # a folder holding theta.state works too
    ckpt = check_tensors(tmp_path / "out", theta)
    assert ckpt.config["pylo"]["source"]["container"] == "bare theta"
    assert "optimizer_config" not in ckpt.config["pylo"]  # unknown: nothing recorded
    assert src.exists()


def test_no_config_tuple_checkpoint_records_the_legacy_flags(tmp_path):
    theta = velo_theta(seed=2)
    src = write(tmp_path / "aug11_aug4_trunc10per_last.checkpoint", (theta, "", 0))
    convert(src, tmp_path / "out", "velo")
    ckpt = check_tensors(tmp_path / "out", theta)
    assert ckpt.config["pylo"]["optimizer_config"] == {"use_bugged_loss_features": True,
                                                      "use_bugged_next_lstm_state": True}
    with pytest.warns(UserWarning, match="use_bugged_loss_features=True, use_bugged_next_lstm_state=True"):
        VeLO([torch.nn.Parameter(torch.ones(3))], checkpoint_path=str(tmp_path / "out"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the matching flags: no warning
        VeLO([torch.nn.Parameter(torch.ones(3))], checkpoint_path=str(tmp_path / "out"),
             use_bugged_loss_features=True, use_bugged_next_lstm_state=True)


def test_legacy_flax_namedtuple_encoding(tmp_path):
    theta = velo_theta(seed=3)
    state = theta["lstm_init_state"]
    legacy = dict(theta, lstm_init_state={"name": "LSTMState", "fields": {"0": "hidden", "1": "cell"},
                                          "values": {"0": state.hidden, "1": state.cell}})
    src = tmp_path / "theta.state"
    src.write_bytes(flax_msgpack.dumps(legacy))
    convert(src, tmp_path / "out", "velo")
    check_tensors(tmp_path / "out", theta)


def test_w0_blocks_are_read_in_numeric_order(tmp_path):
    theta = velo_theta(seed=4)
    for i in range(14):  # block i holds the value i everywhere
        theta["ff_mod_stack"]["~"][f"w0__{i}"] = np.full_like(theta["ff_mod_stack"]["~"][f"w0__{i}"], float(i))
    src = write(tmp_path / "theta.state", theta)
    convert(src, tmp_path / "out", "velo")
    w = read_checkpoint(tmp_path / "out").tensors["mlp.input_weights_"]  # (P, hidden, 30)
    widths = [1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3]
    expected = torch.tensor([float(i) for i, w_ in enumerate(widths) for _ in range(w_)])
    assert torch.equal(w[0, 0], expected)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t["rnn_params"]["step_size"].update(w=np.zeros((8, 2), np.float32)), "step_size/w"),
    (lambda t: t["rnn_params"]["rnn/linear"].update(w=np.zeros((16, 31), np.float32)), "rnn/linear/w"),
    (lambda t: t["ff_mod_stack"]["~"].update(w1=np.zeros((4, 4, 5), np.float32)), "ff_mod_stack/~/w1"),
    (lambda t: t["ff_mod_stack"]["~"].pop("b2"), "ff_mod_stack/~/b2"),
    (lambda t: t["rnn_params"].update(extra={"w": np.zeros((2, 2), np.float32)}), "rnn_params/extra/w"),
    (lambda t: t["ff_mod_stack"]["~"].update(w0__3=np.zeros((4, 2, 4), np.float32)), "w0__3"),
])
def test_every_shape_is_checked(tmp_path, edit, match):
    theta = velo_theta(seed=5)
    edit(theta)
    src = write(tmp_path / "theta.state", theta)
    with pytest.raises(CheckpointError, match=match):
        convert(src, tmp_path / "out", "velo")
    assert not (tmp_path / "out").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    src = write(tmp_path / "theta.state", celo_theta())
    assert pylo_convert([str(src), str(tmp_path / "out"), "--optimizer", "velo"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Celo" in err and "--optimizer celo" in err
    (tmp_path / "corrupt.state").write_bytes(src.read_bytes()[:500])
    assert pylo_convert([str(tmp_path / "corrupt.state"), str(tmp_path / "out"), "--optimizer", "velo"]) == 1
    assert "truncated" in capsys.readouterr().err


def test_velo_theta_is_not_a_celo_theta(tmp_path):
    src = write(tmp_path / "theta.state", velo_theta())
    with pytest.raises(CheckpointError, match="--optimizer velo"):
        convert(src, tmp_path / "out", "celo")


@pytest.mark.parametrize("container", ["bare", "parameter-checkpoint", "tuple"])
def test_round_trip_back_to_upstream_msgpack(tmp_path, container):
    theta = velo_theta(seed=6)
    wrapped = {"bare": theta, "parameter-checkpoint": {"params": theta, "gen_id": "g", "step": 7},
               "tuple": (theta, "", 0)}[container]
    src = write(tmp_path / "in.state", wrapped)
    convert(src, tmp_path / "out", "velo")
    to_jax(tmp_path / "out", tmp_path / "back.state")
    back = flax_msgpack.loads((tmp_path / "back.state").read_bytes())
    if container != "bare":
        back = back["params"] if container == "parameter-checkpoint" else back["0"]
    restored = flax_serialization.from_state_dict(theta, back)  # upstream's own reader accepts it
    for (path, a), (_, b) in zip(sorted(flat(theta).items()), sorted(flat(restored).items())):
        assert np.array_equal(a, b), path
    assert list(back["lstm_init_state"]) == ["hidden", "cell"]  # namedtuple field order
    assert list(back["rnn_params"]) == sorted(back["rnn_params"])


def test_celo_theta_converts_and_loads(tmp_path):
    theta = celo_theta(seed=7)
    src = write(tmp_path / "theta.state", theta)
    assert pylo_convert([str(src), str(tmp_path / "out"), "--optimizer", "celo"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["lstm_input_size"] == 18 and config["param_inits"] == 2 and config["pylo"]["optimizer"] == "celo"
    opt = Celo([torch.nn.Parameter(torch.ones(3))], num_steps=10, checkpoint_path=str(tmp_path / "out"))
    assert torch.equal(opt.network.mlp.output_bias_, torch.from_numpy(theta["ff_mod_stack"]["~"]["b2"]))
    with pytest.raises(CheckpointError, match="celo"):  # a Celo checkpoint does not fit VeLO
        VeLO([torch.nn.Parameter(torch.ones(3))], checkpoint_path=str(tmp_path / "out"))


def test_inspect_recognises_velo(tmp_path, capsys):
    src = write(tmp_path / "theta.state", velo_theta())
    assert pylo_convert(["inspect", str(src)]) == 0
    out = capsys.readouterr().out
    assert "rnn_params/rnn/linear/w" in out and "--optimizer velo" in out
