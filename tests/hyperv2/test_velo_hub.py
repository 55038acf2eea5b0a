"""The published PyLO hub layout of VeLO (``Pauljanson002/VeLO_RNN`` + ``Pauljanson002/VeLO_MLP``) loads unchanged.

The folders are built here the way ``PyTorchModelHubMixin.save_pretrained`` lays
them out (``config.json`` + ``model.safetensors``, the published modules' key
names, including the MLP's scratch slots), as plain folders and inside a
Hugging Face cache (``models--owner--name/snapshots/<rev>`` + ``refs/main``).
"""

import json

import pytest
import torch
from safetensors.torch import save_file

from pylo.errors import CheckpointError, HubUnavailableError
from pylo.models.hyper_network import HyperNetwork
from pylo.optim import VeLO

LSTM, INITS, HIDDEN = 8, 4, 4
REVISION = "0123456789abcdef0123456789abcdef01234567"


def seeded_network(seed=0):
    torch.manual_seed(seed)
    net = HyperNetwork(lstm_hidden_size=LSTM, param_inits=INITS)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return net


def published_parts(net: HyperNetwork):
    """State dicts and configs of the published VeLORNN / VeLOMLP for the same weights."""
    sd = net.state_dict()
    rnn = {k[len("rnn."):]: v.clone() for k, v in sd.items() if k.startswith("rnn.")}
    mlp = {k[len("mlp."):]: v.clone() for k, v in sd.items() if k.startswith("mlp.")}
    # the published VeLOMLP also stores one interpolated MLP (scratch, overwritten at every use)
    mlp.update({"input_weights": torch.randn(HIDDEN, 30), "input_bias": torch.randn(HIDDEN),
                "hidden_weights.0": torch.randn(HIDDEN, HIDDEN), "hidden_bias.0": torch.randn(HIDDEN),
                "output_weights": torch.randn(3, HIDDEN), "output_bias": torch.randn(3)})
    rnn_config = {"input_size": 30, "lstm_hidden_size": LSTM, "param_inits": INITS, "mix_layers": True}
    mlp_config = {"param_inits": INITS, "input_size": 30, "hidden_size": HIDDEN, "hidden_layers": 1,
                  "output_size": 3}
    return (rnn, rnn_config), (mlp, mlp_config)


def write_folder(folder, tensors, config):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_hub_cache(cache, repo, tensors, config):
    root = cache / f"models--{repo.replace('/', '--')}"
    write_folder(root / "snapshots" / REVISION, tensors, config)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)


def params():
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(0.5 * torch.randn(s, generator=g)) for s in [(6, 5), (6,), (), (4, 3, 2, 2)]]


def train(opt, ps, steps=3):
    for s in range(steps):
        g = torch.Generator().manual_seed(100 + s)
        for p in ps:
            p.grad = 0.1 * torch.randn(p.shape, generator=g)
        opt.step(1.0 / (1 + s))
    return [p.detach().clone() for p in ps]


def assert_same_network(a: HyperNetwork, b: HyperNetwork):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_local_folders_in_the_published_layout(tmp_path):
    net = seeded_network()
    (rnn, rnn_cfg), (mlp, mlp_cfg) = published_parts(net)
    rnn_dir = write_folder(tmp_path / "VeLO_RNN", rnn, rnn_cfg)
    mlp_dir = write_folder(tmp_path / "VeLO_MLP", mlp, mlp_cfg)
    ps = params()
    opt = VeLO(ps, hf_key_rnn=str(rnn_dir), hf_key_mlp=str(mlp_dir), num_steps=100)
    assert_same_network(opt.network, net)
    ref_ps = params()
    assert all(torch.equal(a, b) for a, b in zip(train(opt, ps), train(VeLO(ref_ps, network=net, num_steps=100),
                                                                       ref_ps)))


def test_hugging_face_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    net = seeded_network(1)
    (rnn, rnn_cfg), (mlp, mlp_cfg) = published_parts(net)
    cache = tmp_path / "hf_cache"
    write_hub_cache(cache, "Pauljanson002/VeLO_RNN", rnn, rnn_cfg)
    write_hub_cache(cache, "Pauljanson002/VeLO_MLP", mlp, mlp_cfg)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    opt = VeLO(params())  # the published default keys, read from the cache
    assert_same_network(opt.network, net)
    opt = VeLO(params(), hf_key_rnn=f"Pauljanson002/VeLO_RNN@{REVISION}", hf_key_mlp="Pauljanson002/VeLO_MLP")
    assert_same_network(opt.network, net)


def test_hub_not_reachable_and_not_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(HubUnavailableError, match="checkpoint_path="):
        VeLO(params())


@pytest.mark.parametrize("damage,match", [
    (lambda rnn, mlp: mlp.pop("output_bias"), "missing output_bias"),
    (lambda rnn, mlp: mlp.update(input_bias=torch.zeros(5)), "input_bias has shape"),
    (lambda rnn, mlp: rnn.update(extra=torch.zeros(2)), "unexpected tensors rnn.extra"),
    (lambda rnn, mlp: rnn.pop("step_size.bias"), "missing tensors rnn.step_size.bias"),
    (lambda rnn, mlp: rnn.update({"lstm.linear.weight": torch.zeros(32, 15)}), "rnn.lstm.linear.weight"),
    (lambda rnn, mlp: rnn.pop("lstm.linear.weight"), "not a VeLO_RNN"),
])
def test_damaged_hub_folders_are_refused(tmp_path, damage, match):
    (rnn, rnn_cfg), (mlp, mlp_cfg) = published_parts(seeded_network())
    damage(rnn, mlp)
    rnn_dir = write_folder(tmp_path / "VeLO_RNN", rnn, rnn_cfg)
    mlp_dir = write_folder(tmp_path / "VeLO_MLP", mlp, mlp_cfg)
    with pytest.raises(CheckpointError, match=match):
        VeLO(params(), hf_key_rnn=str(rnn_dir), hf_key_mlp=str(mlp_dir))


def test_swapped_hub_keys_are_refused(tmp_path):
    (rnn, rnn_cfg), (mlp, mlp_cfg) = published_parts(seeded_network())
    rnn_dir = write_folder(tmp_path / "VeLO_RNN", rnn, rnn_cfg)
    mlp_dir = write_folder(tmp_path / "VeLO_MLP", mlp, mlp_cfg)
    with pytest.raises(CheckpointError, match="not a VeLO_RNN"):
        VeLO(params(), hf_key_rnn=str(mlp_dir), hf_key_mlp=str(rnn_dir))


def test_pylo_folder_round_trip(tmp_path):
    net = seeded_network(2)
    net.save_pretrained(tmp_path / "velo")  # PyTorchModelHubMixin: what a pylo folder is
    opt = VeLO(params(), checkpoint_path=str(tmp_path / "velo"))
    assert_same_network(opt.network, net)
    assert_same_network(HyperNetwork.from_pretrained(tmp_path / "velo"), net)


def test_pylo_convert_joins_the_published_pair_into_one_folder(tmp_path, capsys):
    from pylo.converters.cli import main as convert_main

    net = seeded_network(3)
    (rnn, rnn_cfg), (mlp, mlp_cfg) = published_parts(net)
    rnn_dir = write_folder(tmp_path / "VeLO_RNN", rnn, rnn_cfg)
    mlp_dir = write_folder(tmp_path / "VeLO_MLP", mlp, mlp_cfg)
    out = tmp_path / "velo"
    assert convert_main([str(rnn_dir), str(out), "--optimizer", "velo", "--mlp", str(mlp_dir)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    opt = VeLO(params(), checkpoint_path=str(out), num_steps=100)
    assert_same_network(opt.network, net)
    pair = VeLO(params(), hf_key_rnn=str(rnn_dir), hf_key_mlp=str(mlp_dir), num_steps=100)
    ps_a, ps_b = params(), params()
    train(VeLO(ps_a, checkpoint_path=str(out), num_steps=100), ps_a)
    train(VeLO(ps_b, network=pair.network, num_steps=100), ps_b)
    assert all(torch.equal(a, b) for a, b in zip(ps_a, ps_b))


def test_pylo_convert_hub_pair_refuses_swapped_or_wrong_inputs(tmp_path, capsys):
    from pylo.converters.cli import main as convert_main

    (rnn, rnn_cfg), (mlp, mlp_cfg) = published_parts(seeded_network(4))
    rnn_dir = write_folder(tmp_path / "VeLO_RNN", rnn, rnn_cfg)
    mlp_dir = write_folder(tmp_path / "VeLO_MLP", mlp, mlp_cfg)
    out = tmp_path / "velo"
    assert convert_main([str(mlp_dir), str(out), "--optimizer", "velo", "--mlp", str(rnn_dir)]) == 1
    assert "not a VeLO_RNN" in capsys.readouterr().err and not out.exists()
    assert convert_main([str(rnn_dir), str(out), "--optimizer", "celo", "--mlp", str(mlp_dir)]) == 1
    assert "--mlp is for VeLO" in capsys.readouterr().err and not out.exists()
