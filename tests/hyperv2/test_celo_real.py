"""The real Celo checkpoint (amoudgl/celo ``theta.state``) converts, loads and trains."""

import json

import torch

from pylo.converters.cli import main as pylo_convert
from pylo.optim import Celo

CELO_SHA256 = "35683c6123069c101d62ec1f8b2e6d70d50a43e67ebe09953b27620a7dcb836b"


def test_real_celo_converts_loads_and_trains(shared_checkpoints, tmp_path):
    src = shared_checkpoints / "celo" / "theta.state"
    assert pylo_convert([str(src), str(tmp_path / "celo"), "--optimizer", "celo"]) == 0
    config = json.loads((tmp_path / "celo" / "config.json").read_text())
    assert (config["lstm_input_size"], config["lstm_hidden_size"], config["param_inits"]) == (18, 64, 1)
    assert config["pylo"]["source"]["sha256"] == CELO_SHA256 and config["pylo"]["source"]["registry"] == "celo"

    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = torch.sin(x @ torch.randn(10, 1)) + 0.1 * torch.randn(256, 1)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    steps = 120
    opt = Celo(model.parameters(), num_steps=steps, checkpoint_path=str(tmp_path / "celo"))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step(loss)
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(losses[-10:]) / 10 < 0.25 * losses[0], losses[::10]
