"""Small builders shared by the tests (no network, real libraries)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict

import pytest
import torch
from safetensors.torch import save_file

from pylo.kernels import triton_available


def write_hub_folder(folder: Path, config: Dict, tensors: Dict[str, torch.Tensor]) -> Path:
    """A folder laid out as a ``PyTorchModelHubMixin`` repo: ``config.json`` + ``model.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


def write_hub_cache(cache: Path, repo_id: str, revision: str, folder: Path, main: bool = True) -> Path:
    """Place ``folder``'s files in a Hugging Face cache as the hub client lays it out.

    ``models--owner--name/snapshots/<revision>/<files>`` and ``refs/main`` naming
    the revision (when ``main``), which is what ``snapshot_download`` reads offline.
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        shutil.copy(f, snapshot / f.name)
    if main:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snapshot


# ------------------------------------------------------------------ backend comparisons
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: the fast backends, the Triton one only where it can run (CUDA, or a CPU under TRITON_INTERPRET=1)
FAST = ["fused", pytest.param("triton", marks=pytest.mark.skipif(
    not triton_available(torch.device(DEVICE)), reason="triton needs CUDA or TRITON_INTERPRET=1"))]


def params(shapes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(n, torch.nn.Parameter((0.5 * torch.randn(s, generator=g)).to(dtype).to(DEVICE)))
            for n, s in shapes.items()]


def assert_close(ref, got, atol=1e-6):
    """float32 parameters within ``atol``; low-precision ones within one final rounding of naive's."""
    for (n, p), (_, q) in zip(ref, got):
        a, b = p.detach().float(), q.detach().float()
        if p.dtype == torch.float32:
            torch.testing.assert_close(b, a, rtol=0, atol=atol, msg=n)
            continue
        assert q.dtype == p.dtype
        ulp = torch.finfo(p.dtype).eps * a.abs().clamp_min(torch.finfo(p.dtype).tiny)
        assert ((a - b).abs() <= ulp).all(), n  # float32 round-off may flip one final rounding
        assert a.numel() == 0 or (a == b).float().mean() > 0.9, n


def assert_same_state(opt_ref, ref, opt_got, got):
    """The same state keys per parameter, values within float32 round-off: checkpoints move between backends."""
    for (_, p), (_, q) in zip(ref, got):
        a, b = opt_ref.state[p], opt_got.state[q]
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)


def assert_resumes(opt_a, a, opt_b, b, run, steps=2):
    """``b``/``opt_b`` take ``a``'s parameters and ``opt_a``'s state dict; both run ``steps`` more and agree."""
    with torch.no_grad():
        for (_, p), (_, q) in zip(a, b):
            q.copy_(p)
    opt_b.load_state_dict(opt_a.state_dict())
    run(opt_a, a, steps)
    run(opt_b, b, steps)
    assert_close(b, a)


def assert_triton_needs_a_gpu(monkeypatch, make_step):
    """Without CUDA and without the interpreter, a Triton-backend step (``make_step()`` builds it) says to
    use the fused backend."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    step = make_step()
    with pytest.raises(RuntimeError, match="backend='fused' on CPU"):
        step()


def adafac_theta(hidden=8, seed=0):
    """A seeded upstream AdafacMLPLOpt theta (needs JAX)."""
    import jax
    import numpy as np

    from pylo.reference_jax.adafac_mlp_lopt import AdafacMLPLOpt

    rng = np.random.default_rng(seed)
    theta = AdafacMLPLOpt(hidden_size=hidden).init(jax.random.PRNGKey(seed))
    return jax.tree_util.tree_map(lambda x: np.asarray(x) + rng.normal(0, 0.1, x.shape).astype(np.float32), theta)


def write_theta(folder: Path, theta) -> Path:
    """``theta`` as upstream's flax msgpack ``folder/theta.state``."""
    import flax.serialization

    src = folder / "theta.state"
    src.write_bytes(flax.serialization.to_bytes(theta))
    return src


def convert_cli(src, dst, optimizer="adafaclo", *extra) -> int:
    """``pylo-convert SRC DST --optimizer OPTIMIZER [extra]``, in process; its exit status."""
    from pylo.converters.cli import main

    return main([str(src), str(dst), "--optimizer", optimizer, *extra])
