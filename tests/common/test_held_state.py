"""State dicts saved by pylo 0.1.0 load and resume bit-exactly on every backend.

``tests/data/held_states.pt`` was written by ``tests/data/make_held_states.py`` with the code of
commit 9023f5f (before the one-architecture redesign): for each optimizer and backend, the
parameters and ``state_dict()`` after three steps and the parameters two steps later. Today's
optimizer, given the same network, loads the old state dict and must reproduce those two steps
bit for bit.
"""

from pathlib import Path

import pytest
import torch

from pylo.kernels import triton_available

DATA = Path(__file__).resolve().parents[1] / "data"

import importlib.util  # noqa: E402
import sys  # noqa: E402

_spec = importlib.util.spec_from_file_location("make_held_states", DATA / "make_held_states.py")
maker = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("make_held_states", maker)
_spec.loader.exec_module(maker)

HELD = torch.load(DATA / "held_states.pt", weights_only=False)


@pytest.mark.parametrize("key", sorted(HELD["entries"]))
def test_old_state_dict_resumes_bit_exactly(key):
    name, backend = key.split("/")
    if name == "mulo":
        pytest.importorskip("mup")
    if backend == "triton" and not triton_available(torch.device("cpu")):
        pytest.skip("triton backend needs TRITON_INTERPRET=1 on a CPU")
    entry = HELD["entries"][key]
    net = maker.networks()[name]()
    net.load_state_dict(HELD["networks"][name])
    named = [(n, torch.nn.Parameter(entry["params"][n].clone())) for n in maker.SHAPES]
    opt = maker.build(name, named, net, backend)
    opt.load_state_dict(entry["state_dict"])
    maker.run(name, opt, named, range(3, 5))
    for n, p in named:
        assert torch.equal(p.detach(), entry["expected"][n]), f"{key}: {n} differs after resuming"
