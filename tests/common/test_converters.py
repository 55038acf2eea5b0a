"""pylo-convert: every input format, the round trip, and every kind of bad input."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pylo.checkpoint_io import read_checkpoint
from pylo.converters import flax_msgpack, safe_pickle
from pylo.converters.cli import main as pylo_convert
from pylo.converters.sources import read_source
from pylo.errors import CheckpointError

from helpers import adafac_theta, convert_cli as _convert, write_theta as _write

flax_serialization = pytest.importorskip("flax.serialization")
jax = pytest.importorskip("jax")


def _tensors(folder):
    return read_checkpoint(folder).tensors


def _assert_same_checkpoint(a, b):
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def _no_leftovers(folder: Path, keep=()):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep) == []


# ----------------------------------------------------------------- formats
def test_msgpack_decoder_matches_flax_on_the_real_celo_file(shared_checkpoints):
    data = (shared_checkpoints / "celo" / "theta.state").read_bytes()
    ours = flax_msgpack.loads(data)
    theirs = flax_serialization.msgpack_restore(data)
    flat_ours = dict(jax.tree_util.tree_flatten_with_path(ours)[0])
    flat_theirs = dict(jax.tree_util.tree_flatten_with_path(theirs)[0])
    assert flat_ours.keys() == flat_theirs.keys() and len(flat_ours) == 33
    assert all(np.array_equal(flat_ours[k], flat_theirs[k]) for k in flat_ours)
    assert flax_msgpack.dumps(ours) == data  # byte-identical re-encoding


def test_encoder_matches_flax_to_bytes():
    theta = adafac_theta()
    assert flax_msgpack.dumps(theta) == flax_serialization.to_bytes(theta)


@pytest.mark.parametrize("wrap", [
    lambda t: t,
    lambda t: {"params": t, "gen_id": "abc", "step": np.int64(5620)},
    lambda t: (t, "", 0),
])
def test_containers_convert_to_the_same_checkpoint(tmp_path, wrap):
    theta = adafac_theta()
    (tmp_path / "bare.state").write_bytes(flax_serialization.to_bytes(theta))
    (tmp_path / "wrapped").write_bytes(flax_serialization.to_bytes(wrap(theta)))
    assert _convert(tmp_path / "bare.state", tmp_path / "a") == 0
    assert _convert(tmp_path / "wrapped", tmp_path / "b") == 0
    _assert_same_checkpoint(tmp_path / "a", tmp_path / "b")


def test_parameter_checkpoint_metadata_and_gin_are_recorded(tmp_path):
    (tmp_path / "params").write_bytes(flax_serialization.to_bytes(
        {"params": adafac_theta(), "gen_id": "g1", "step": 5620}))
    (tmp_path / "config.gin").write_text("HyperV2.lstm_hidden_size = 512\n")
    source = read_source(tmp_path)  # a folder holding `params` is read too
    assert source.container == "ParameterCheckpoint" and source.meta["step"] == 5620
    assert _convert(tmp_path / "params", tmp_path / "out") == 0
    meta = json.loads((tmp_path / "out" / "config.json").read_text())["pylo"]["source"]
    assert meta["gen_id"] == "g1" and "lstm_hidden_size" in meta["config.gin"]


def test_legacy_namedtuple_encoding_is_decoded():
    legacy = {"name": "LSTMState", "fields": {"0": "hidden", "1": "cell"},
              "values": {"0": np.ones((1, 2), np.float32), "1": np.zeros((1, 2), np.float32)}}
    import msgpack

    raw = msgpack.unpackb(flax_msgpack.dumps({"lstm_init_state": legacy}), strict_map_key=False,
                          ext_hook=flax_msgpack._ext_hook)
    from pylo.converters.sources import _decode_legacy_namedtuples

    decoded = _decode_legacy_namedtuples(raw)
    assert set(decoded["lstm_init_state"]) == {"hidden", "cell"}
    assert np.array_equal(decoded["lstm_init_state"]["hidden"], np.ones((1, 2)))


@pytest.mark.parametrize("make", ["numpy", "jax", "flatmapping"])
def test_theta_pickles_are_read_safely(tmp_path, make):
    theta = adafac_theta()
    if make == "jax":
        theta = jax.tree_util.tree_map(jax.numpy.asarray, theta)
    elif make == "flatmapping":
        import haiku as hk

        theta = hk.data_structures.to_immutable_dict(theta)
    (tmp_path / "theta.pickle").write_bytes(pickle.dumps(theta))
    (tmp_path / "theta.state").write_bytes(flax_serialization.to_bytes(adafac_theta()))
    assert _convert(tmp_path / "theta.pickle", tmp_path / "a") == 0
    assert _convert(tmp_path / "theta.state", tmp_path / "b") == 0
    _assert_same_checkpoint(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("protocol", [0, 1, 2, 5])
def test_theta_pickles_of_every_protocol_convert_alike(tmp_path, protocol):
    theta = adafac_theta()
    (tmp_path / "theta.pickle").write_bytes(pickle.dumps(theta, protocol=protocol))
    (tmp_path / "theta.state").write_bytes(flax_serialization.to_bytes(theta))
    assert _convert(tmp_path / "theta.pickle", tmp_path / "a") == 0
    assert _convert(tmp_path / "theta.state", tmp_path / "b") == 0
    _assert_same_checkpoint(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("protocol", [0, 1])
def test_malicious_old_protocol_pickles_are_refused_too(tmp_path, protocol, capsys):
    (tmp_path / "theta.pickle").write_bytes(pickle.dumps({"nn": _Evil()}, protocol=protocol))
    assert _convert(tmp_path / "theta.pickle", tmp_path / "out") == 1
    assert "refusing to unpickle" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="_codecs.encode"):
        safe_pickle.loads(b"c_codecs\nencode\n(Vx\nVutf-16\ntR.")  # only str -> latin1 bytes is allowed


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "theta.pickle").write_bytes(pickle.dumps({"nn": _Evil()}))
    assert _convert(tmp_path / "theta.pickle", tmp_path / "out") == 1
    assert "refusing to unpickle" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        safe_pickle.loads(pickle.dumps({"nn": _Evil()}))


def test_object_arrays_in_pickles_are_refused():
    with pytest.raises(CheckpointError, match="object arrays"):
        safe_pickle.loads(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))


# ------------------------------------------------------------ round trip
@pytest.mark.parametrize("container", ["bare", "parameter-checkpoint", "tuple"])
def test_round_trip_to_jax_is_byte_exact(tmp_path, container):
    theta = adafac_theta(hidden=16)
    wrapped = {"bare": theta, "parameter-checkpoint": {"params": theta, "gen_id": "x", "step": 7},
               "tuple": (theta, "", 0)}[container]
    src = tmp_path / "theta.state"
    src.write_bytes(flax_serialization.to_bytes(wrapped))
    assert _convert(src, tmp_path / "torch", "mulo") == 0
    assert pylo_convert([str(tmp_path / "torch"), str(tmp_path / "back.state"), "--to", "jax"]) == 0
    assert (tmp_path / "back.state").read_bytes() == src.read_bytes()
    restored = flax_serialization.from_bytes(theta, (tmp_path / "back.state").read_bytes()) \
        if container == "bare" else None
    if restored is not None:
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(restored),
                                                        jax.tree_util.tree_leaves(theta)))


def test_published_pylo_folder_converts_both_ways(tmp_path):
    from helpers import write_hub_folder
    from pylo.models import MetaMLP

    net = MetaMLP(39, 32, 1)
    folder = write_hub_folder(tmp_path / "mulo", {"input_size": 39, "hidden_size": 32, "hidden_layers": 1},
                              net.state_dict())
    assert _convert(folder, tmp_path / "pylo", "mulo") == 0
    assert pylo_convert([str(folder), str(tmp_path / "theta.state"), "--to", "jax", "--optimizer", "mulo"]) == 0
    theta = flax_msgpack.loads((tmp_path / "theta.state").read_bytes())
    assert np.array_equal(theta["nn"]["~"]["w0"], net.network.input.weight.detach().numpy().T)
    # no decays in the published folder: the published μLO defaults are written
    assert np.allclose(theta["momentum_decays"], [0.15216392, 0.14245212, 0.06812963])


def test_converted_folder_is_a_hub_repo_and_a_lone_safetensors_file_works(tmp_path):
    (tmp_path / "theta.state").write_bytes(flax_serialization.to_bytes(adafac_theta()))
    assert _convert(tmp_path / "theta.state", tmp_path / "out") == 0
    from pylo.models import MetaMLP

    net = MetaMLP.from_pretrained(str(tmp_path / "out"))
    assert net.momentum_decays is not None and len(net.momentum_decays) == 3
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((tmp_path / "out" / "model.safetensors").read_bytes())
    assert read_checkpoint(lone).config["hidden_size"] == 8


# ------------------------------------------------------------- bad input
def _drop(theta, *path):
    node = theta
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return theta


@pytest.mark.parametrize("edit,match", [
    (lambda t: _drop(t, "nn", "~", "b1"), "missing nn/~/b1"),
    (lambda t: t["nn"]["~"].update(w9=np.zeros((2, 2), np.float32)) or t, "unexpected nn/~/w9"),
    (lambda t: t["nn"]["~"].update(w1=np.zeros((8, 7), np.float32)) or t, r"nn/~/w1 has shape \(8, 7\)"),
    (lambda t: _drop(t, "momentum_decays"), "missing momentum_decays"),
    (lambda t: t.update(rms_decays=np.zeros(2, np.float32)) or t, r"rms_decays has shape \(2,\)"),
])
def test_wrong_trees_get_one_line_errors_and_no_output(tmp_path, capsys, edit, match):
    src = _write(tmp_path, edit(adafac_theta()))
    assert _convert(src, tmp_path / "out") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re

    assert re.search(match, err), err
    assert _no_leftovers(tmp_path, keep={"theta.state"})


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files_get_one_line_errors_and_no_output(tmp_path, capsys, damage):
    src = _write(tmp_path, adafac_theta())
    data = src.read_bytes()
    src.write_bytes({"truncate": data[: len(data) - 100], "garbage": b"\x93\x01garbage" * 10, "empty": b""}[damage])
    assert _convert(src, tmp_path / "out") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pylo-convert: error:") and len(err.splitlines()) == 1
    assert _no_leftovers(tmp_path, keep={"theta.state"})


def test_wrong_optimizer_name(tmp_path, capsys):
    src = _write(tmp_path, adafac_theta())
    with pytest.raises(SystemExit) as exc:
        _convert(src, tmp_path / "out", "adam")
    assert exc.value.code == 2 and "invalid choice: 'adam'" in capsys.readouterr().err


def test_theta_of_another_family(tmp_path, capsys, shared_checkpoints):
    assert _convert(shared_checkpoints / "celo" / "theta.state", tmp_path / "out", "mulo") == 1
    err = capsys.readouterr().err
    assert "theta.state: not a AdafacMLPLOpt theta" in err and not (tmp_path / "out").exists()


def test_existing_destination_is_kept_without_overwrite(tmp_path):
    src = _write(tmp_path, adafac_theta())
    dst = tmp_path / "out"
    assert _convert(src, dst) == 0
    before = (dst / "model.safetensors").read_bytes()
    assert _convert(src, dst, "mulo") == 1 and (dst / "model.safetensors").read_bytes() == before
    assert _no_leftovers(tmp_path, keep={"theta.state", "out"})


def test_missing_source(tmp_path, capsys):
    assert _convert(tmp_path / "nope", tmp_path / "out") == 1
    assert "no such file" in capsys.readouterr().err


def test_inspect_describes_the_tree(tmp_path, capsys):
    src = _write(tmp_path, adafac_theta())
    assert pylo_convert(["inspect", str(src)]) == 0
    out = capsys.readouterr().out
    assert "nn/~/w0" in out and "(39, 8)" in out and "float32" in out
    assert "looks like: AdafacLO / MuLO" in out and "bare theta" in out


def test_inspect_recognises_a_registry_checkpoint(shared_checkpoints, capsys):
    assert pylo_convert(["inspect", str(shared_checkpoints / "celo" / "theta.state")]) == 0
    out = capsys.readouterr().out
    assert "registry:  celo" in out and "lstm_init_state/hidden" in out and "rnn_params/rnn/linear/w" in out


def test_list_prints_the_registry(capsys):
    assert pylo_convert(["list"]) == 0
    out = capsys.readouterr().out
    assert "btherien/mulo" in out and "amoudgl/celo" in out and "Pauljanson002/VeLO_RNN" in out


# ------------------------------------------------------- every optimizer
def _reference_theta(optimizer):
    from pylo.reference_jax.adafac_mlp_lopt import AdafacMLPLOpt
    from pylo.reference_jax.celo import Celo
    from pylo.reference_jax.celo2 import Celo2Transformation
    from pylo.reference_jax.elo import ELO_AdafacMLPLOpt
    from pylo.reference_jax.elo_celo2 import ELO_Celo2LOpt
    from pylo.reference_jax.hyper_v2 import HyperV2

    key = jax.random.PRNGKey(1)
    return {"adafaclo": lambda: AdafacMLPLOpt(hidden_size=6).init(key),
            "mulo": lambda: AdafacMLPLOpt(hidden_size=5, hidden_layers=3).init(key),
            "elo": lambda: ELO_AdafacMLPLOpt(hidden_size=4).init(key),
            "velo": lambda: HyperV2(lstm_hidden_size=6, param_inits=3, ff_hidden_layers=3).init(key),
            "celo": lambda: Celo(lstm_hidden_size=5, param_inits=2).init(key),
            "celo2": lambda: Celo2Transformation(ff_hidden_size=4, ff_hidden_layers=3).init_meta_params(key),
            "elo_celo2": lambda: ELO_Celo2LOpt(ff_hidden_size=5).init(key)}[optimizer]()


@pytest.mark.parametrize("optimizer", ["adafaclo", "mulo", "elo", "velo", "celo", "celo2", "elo_celo2"])
def test_converted_tensors_are_the_spec_state_dict_and_load_strictly(tmp_path, optimizer):
    """The target keys and shapes come from pylo.spec.networks, which are those of the torch module."""
    import importlib

    from pylo.models.loading import load_strict
    from pylo.spec import OPTIMIZERS
    from pylo.spec.networks import NETWORKS

    (tmp_path / "theta.state").write_bytes(flax_serialization.to_bytes(_reference_theta(optimizer)))
    assert _convert(tmp_path / "theta.state", tmp_path / "out", optimizer) == 0
    ckpt = read_checkpoint(tmp_path / "out")
    kind = NETWORKS[OPTIMIZERS[optimizer].network]
    assert {k: tuple(v.shape) for k, v in ckpt.tensors.items()} == kind.state_dict_shapes(ckpt.config)
    module_name, cls = kind.module.split(":")
    module = getattr(importlib.import_module(module_name), cls)(
        **{k: v for k, v in ckpt.config.items() if k in kind.defaults})
    load_strict(module, ckpt.tensors, str(tmp_path / "out"))


# ------------------------------------------------------- issue 11, defect 8
def test_broken_pipe_exits_quietly():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "pylo.converters.cli", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""


def test_checkpoint_files_follow_the_umask(tmp_path):
    import os

    from pylo.checkpoint_io import write_checkpoint

    old = os.umask(0o022)
    try:
        folder = write_checkpoint(tmp_path / "ckpt", {"pylo": {}}, {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    assert {(folder / n).stat().st_mode & 0o777 for n in ("config.json", "model.safetensors")} == {0o644}


def test_celo_adam_theta_is_named_not_sent_to_celo(tmp_path, capsys):
    import numpy as np

    theta = {"lstm_init_state": [np.zeros((1, 64), np.float32), np.zeros((1, 64), np.float32)],
             "rnn_params": {"linear": {"w": np.zeros((3, 64), np.float32), "b": np.zeros(64, np.float32)}}}
    src = _write(tmp_path, theta)
    assert _convert(src, tmp_path / "out", "celo2") == 1
    err = capsys.readouterr().err
    assert "Celo-Adam" in err and "--optimizer celo or velo" not in err
