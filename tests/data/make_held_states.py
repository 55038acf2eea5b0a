"""Write ``held_states.pt``: state dicts saved by pylo 0.1.0 (commit 9023f5f), for the held resume test.

For every optimizer and backend: a small seeded meta-network, five parameters (matrix, vector,
scalar, conv kernel, embedding), three steps; then the parameters, the optimizer's ``state_dict()``
and the parameters two steps later, computed by the code of that release. ``tests/test_held_state.py``
loads each state dict into today's optimizer and checks that the two steps reproduce them bit for bit.

Run (only to re-create the file from an old checkout): ``TRITON_INTERPRET=1 python tests/data/make_held_states.py``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

SHAPES = {"w": (6, 5), "b": (6,), "s": (), "k": (4, 3, 2, 2), "embed.weight": (7, 3)}
BACKENDS = ("naive", "foreach", "fused", "triton")


def networks():
    from pylo.models import CELO2MLP, HyperNetwork, MetaMLP

    torch.manual_seed(0)
    return {
        "adafaclo": lambda: MetaMLP(39, 16, 1),
        "mulo": lambda: MetaMLP(39, 16, 1),
        "elo": lambda: MetaMLP(39, 16, 1),
        "velo": lambda: HyperNetwork.random(seed=3, lstm_hidden_size=24, param_inits=8),
        "celo": lambda: HyperNetwork.random(seed=4, lstm_input_size=18, lstm_hidden_size=16, param_inits=4),
        "celo2": lambda: CELO2MLP(),
        "elo_celo2": lambda: CELO2MLP(),
    }


def build(name, named, network, backend):
    import pylo.optim as O

    kw = dict(network=network, backend=backend)
    if name == "adafaclo":
        return O.AdafacLO_naive(named, **kw)
    if name == "mulo":
        import mup

        model = torch.nn.ParameterDict({n.replace(".", "_"): p for n, p in named})
        base = torch.nn.ParameterDict({n.replace(".", "_"): torch.nn.Parameter(torch.zeros(
            tuple(s // 2 if s >= 4 else s for s in p.shape))) for n, p in named})
        mup.set_base_shapes(model, base)
        return O.MuLO_naive(list(model.named_parameters()), **kw)
    if name == "elo":
        return O.ELO_naive(named, lr=0.01, weight_decay=0.1, **kw)
    if name == "velo":
        return O.VeLO_naive(named, num_steps=100, **kw)
    if name == "celo":
        return O.Celo_naive(named, num_steps=100, train_phase=1, **kw)
    if name == "celo2":
        return O.CELO2_naive(named, lr=0.01, weight_decay=0.1, **kw)
    if name == "elo_celo2":
        return O.ELO_CELO2_naive(named, **kw)
    raise KeyError(name)


NEEDS_LOSS = ("velo", "celo")


def params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(n, torch.nn.Parameter(0.5 * torch.randn(s, generator=g))) for n, s in SHAPES.items()]


def grads(step):
    g = torch.Generator().manual_seed(1000 + step)
    return {n: 0.1 * torch.randn(s, generator=g) for n, s in SHAPES.items()}


def run(name, opt, named, steps):
    for s in steps:
        gs = grads(s)
        for n, p in named:
            p.grad = gs[n].clone()
        opt.step(loss=2.0 / (1 + s)) if name in NEEDS_LOSS else opt.step()


def main() -> None:
    out = {"networks": {}, "entries": {}}
    for name, make in networks().items():
        net = make()
        out["networks"][name] = {k: v.clone() for k, v in net.state_dict().items()}
        for backend in BACKENDS:
            named = params()
            opt = build(name, named, net, backend)
            run(name, opt, named, range(3))
            entry = {"params": {n: p.detach().clone() for n, p in named}, "state_dict": copy.deepcopy(opt.state_dict())}
            run(name, opt, named, range(3, 5))
            entry["expected"] = {n: p.detach().clone() for n, p in named}
            out["entries"][f"{name}/{backend}"] = entry
    path = Path(__file__).with_name("held_states.pt")
    torch.save(out, path)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(out['entries'])} entries)")


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")
    main()
