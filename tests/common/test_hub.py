"""Loading meta-networks from the hub's layout, strictly, offline, with revision pins."""

import pytest
import torch

import huggingface_hub.constants as hf_constants
from helpers import write_hub_cache, write_hub_folder
from pylo.errors import CheckpointError, HubUnavailableError
from pylo.hub import split_hub_key
from pylo.models import MetaMLP
from pylo.optim import AdafacLO

REV_A, REV_B = "a" * 40, "b" * 40
CONFIG = {"input_size": 39, "hidden_size": 32, "hidden_layers": 1}  # the published btherien/mulo geometry


def _published_mulo_tensors(seed):
    torch.manual_seed(seed)
    return {k: torch.randn(v.shape) for k, v in MetaMLP(**CONFIG).state_dict().items()}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    a = write_hub_folder(tmp_path / "a", CONFIG, _published_mulo_tensors(1))
    b = write_hub_folder(tmp_path / "b", CONFIG, _published_mulo_tensors(2))
    write_hub_cache(cache, "btherien/mulo", REV_A, a, main=True)
    write_hub_cache(cache, "btherien/mulo", REV_B, b, main=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def _weight(opt):
    return opt.network.network.input.weight


def test_default_hub_key_loads_the_published_layout_offline(hub_cache):
    opt = AdafacLO([torch.nn.Parameter(torch.zeros(3))])
    assert torch.equal(_weight(opt), _published_mulo_tensors(1)["network.input.weight"])


def test_revision_pin(hub_cache):
    opt = AdafacLO([torch.nn.Parameter(torch.zeros(3))], hf_key=f"btherien/mulo@{REV_B}")
    assert torch.equal(_weight(opt), _published_mulo_tensors(2)["network.input.weight"])


def test_published_folder_loads_from_a_local_path(tmp_path):
    folder = write_hub_folder(tmp_path / "mulo", CONFIG, _published_mulo_tensors(3))
    opt = AdafacLO([torch.nn.Parameter(torch.zeros(3))], checkpoint_path=folder)
    assert torch.equal(_weight(opt), _published_mulo_tensors(3)["network.input.weight"])
    # the same folder is a PyTorchModelHubMixin repo for huggingface_hub itself
    assert torch.equal(MetaMLP.from_pretrained(str(folder)).network.input.weight, _weight(opt))


def test_unreachable_hub_says_how_to_load_from_disk():
    with pytest.raises(HubUnavailableError, match="checkpoint_path="):
        AdafacLO([torch.nn.Parameter(torch.zeros(3))])


def test_offline_without_cache_is_the_same_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        AdafacLO([torch.nn.Parameter(torch.zeros(3))])


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.pop("network.output.bias"), "missing tensors network.output.bias"),
    (lambda t: t.update(extra=torch.zeros(1)), "unexpected tensors extra"),
    (lambda t: t.update({"network.linear_0.weight": torch.zeros(32, 31)}), "shape mismatch network.linear_0.weight"),
    (lambda t: t["network.input.bias"].__setitem__(0, float("nan")), "non-finite"),
])
def test_loading_is_strict(tmp_path, edit, match):
    tensors = _published_mulo_tensors(4)
    edit(tensors)
    folder = write_hub_folder(tmp_path / "bad", CONFIG, tensors)
    with pytest.raises(CheckpointError, match=match):
        AdafacLO([torch.nn.Parameter(torch.zeros(3))], checkpoint_path=folder)


def test_corrupt_weights_file(tmp_path):
    folder = write_hub_folder(tmp_path / "bad", CONFIG, _published_mulo_tensors(5))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        AdafacLO([torch.nn.Parameter(torch.zeros(3))], checkpoint_path=folder)


def test_pickled_weights_are_not_read_from_folders(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        AdafacLO([torch.nn.Parameter(torch.zeros(3))], checkpoint_path=tmp_path)


@pytest.mark.parametrize("key", ["", "mulo", "a/b/c", "/x"])
def test_bad_hub_keys(key):
    with pytest.raises(ValueError, match="hub key"):
        split_hub_key(key)


def test_hub_key_with_revision():
    assert split_hub_key("btherien/mulo@v1") == ("btherien/mulo", "v1")
    assert split_hub_key("btherien/mulo") == ("btherien/mulo", None)


# ------------------------------------------------ VeLO's published two-part layout
def _velo_hub_parts(scratch_shape=None):
    from pylo.checkpoint_io import Checkpoint
    from pylo.spec.networks import velo_mlp_hub_scratch, velo_mlp_layout, velo_rnn_layout

    rnn = {t.key: torch.randn(t.shape) for t in velo_rnn_layout(30, 8, 4).tensors()}
    mlp = {t.key: torch.randn(t.shape) for t in velo_mlp_layout(4, 30, 4, 2, 3).tensors()}
    mlp.update({t.key: torch.randn(t.shape) for t in velo_mlp_hub_scratch(30, 4, 2, 3).tensors()})
    if scratch_shape is not None:
        mlp["hidden_bias.1"] = torch.zeros(scratch_shape)
    return Checkpoint({}, rnn, "VeLO_RNN"), Checkpoint({}, mlp, "VeLO_MLP")


def test_velo_hub_pair_joins_into_one_hyper_network():
    from pylo.hub import merge_velo_hub_pair
    from pylo.models.loading import load_strict
    from pylo.models import HyperNetwork

    rnn, mlp = _velo_hub_parts()
    merged = merge_velo_hub_pair([rnn, mlp])
    assert merged.config == {"lstm_input_size": 30, "lstm_hidden_size": 8, "param_inits": 4, "input_size": 30,
                             "hidden_size": 4, "hidden_layers": 2, "output_size": 3}
    assert merged.origin == "VeLO_RNN + VeLO_MLP"
    assert torch.equal(merged.tensors["rnn.lstm.linear.weight"], rnn.tensors["lstm.linear.weight"])
    load_strict(HyperNetwork(**merged.config), merged.tensors, merged.origin)  # scratch slots dropped


@pytest.mark.parametrize("case,match", [
    ("swapped", "VeLO_MLP: not a VeLO_RNN checkpoint .no lstm.linear.weight."),
    ("one", "expected the RNN and the MLP hub checkpoints, got 1"),
    ("scratch-shape", r"VeLO_MLP: hidden_bias.1 has shape \(5,\), expected \(4,\)"),
    ("scratch-missing", "VeLO_MLP: missing output_bias"),
])
def test_velo_hub_pair_refuses_what_is_not_the_published_layout(case, match):
    from pylo.hub import merge_velo_hub_pair

    rnn, mlp = _velo_hub_parts(scratch_shape=(5,) if case == "scratch-shape" else None)
    if case == "scratch-missing":
        del mlp.tensors["output_bias"]
    parts = {"swapped": [mlp, rnn], "one": [rnn]}.get(case, [rnn, mlp])
    with pytest.raises(CheckpointError, match=match):
        merge_velo_hub_pair(parts)


@pytest.fixture
def silent_server():
    """A server on 127.0.0.1 that accepts connections and never answers; yields its URL."""
    import socket
    import threading

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held, stop = [], threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    sock.close()


def test_a_hub_that_never_answers_times_out_with_the_clear_error(silent_server, monkeypatch, tmp_path):
    import time

    monkeypatch.setattr(hf_constants, "ENDPOINT", silent_server)
    monkeypatch.setenv("HF_ENDPOINT", silent_server)
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="checkpoint_path="):
        AdafacLO([torch.nn.Parameter(torch.zeros(3))])
    assert time.monotonic() - start < 60


def test_loading_prints_nothing_and_logs_where_the_network_came_from(hub_cache, capfd, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="pylo"):
        AdafacLO([torch.nn.Parameter(torch.zeros(3))])
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert any("meta-network loaded from hub:btherien/mulo" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
