"""Property tests (issue 11) with hypothesis, for every optimizer and backend: random shapes (0-D to
5-D, zero-size and size-1 axes, conv kernels), dtypes (float32, bfloat16, float16) and gradient scales
(zeros, 1e-30 ... 1e30). Each step either succeeds with finite parameters or raises with parameters
and state bit-identical to before; every backend agrees with naive; a resumed run is bit-exact.

Examples per property: ``PYLO_HYPOTHESIS_EXAMPLES`` (CI: the default, 30), derandomised so a run
is reproducible; a failure prints the shrunk case.
"""

import copy
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from pylo.optim.base import NonFiniteGradientError  # noqa: E402
from pylo.parity_tests.optim_db import DATABASE  # noqa: E402


EXAMPLES = int(os.environ.get("PYLO_HYPOTHESIS_EXAMPLES", "30"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SCALES = [0.0, 1e-30, 1e-12, 1e-3, 1.0, 1e3, 1e12, 1e20, 1e30]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ENTRIES = [info for info in DATABASE]

shapes = st.lists(st.sampled_from([0, 1, 2, 3, 5]), min_size=0, max_size=5).map(tuple)
conv = st.tuples(st.sampled_from([2, 4]), st.sampled_from([1, 3]), st.sampled_from([1, 3]), st.sampled_from([1, 2]))
case = st.fixed_dictionaries({
    "shapes": st.lists(st.one_of(shapes, conv), min_size=1, max_size=3),
    "dtype": st.sampled_from(DTYPES),
    "scales": st.lists(st.sampled_from(SCALES), min_size=3, max_size=3),
    "seed": st.integers(0, 2 ** 16),
})


def _params(c):
    g = torch.Generator().manual_seed(c["seed"])
    shapes = list(c["shapes"]) + [(4, 3)]  # one ordinary matrix, so something always steps
    return [(f"p{i}", torch.nn.Parameter((0.5 * torch.randn(s, generator=g)).to(c["dtype"])))
            for i, s in enumerate(shapes)]


def _grads(named, c, step):
    g = torch.Generator().manual_seed(c["seed"] + 1000 * step)
    for i, (_, p) in enumerate(named):
        scale = c["scales"][i % len(c["scales"])] if i < len(named) - 1 else 1e-2
        p.grad = (scale * torch.randn(p.shape, generator=g)).to(p.dtype)


def _snapshot(named, opt):
    return [p.detach().clone() for _, p in named], copy.deepcopy(opt.state_dict()["state"])


def _same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    return a == b


def _step(info, opt, named, c, step):
    """One step; ``True`` when taken, ``False`` when refused (then nothing changed)."""
    _grads(named, c, step)
    before = _snapshot(named, opt)
    try:
        opt.step(loss=1.0 / (1 + step)) if info.needs_loss else opt.step()
    except NonFiniteGradientError:
        after = _snapshot(named, opt)
        assert all(torch.equal(a, b) for a, b in zip(before[0], after[0])), "refused step changed a parameter"
        assert _same_state(before[1], after[1]), "refused step changed the state"
        return False
    assert all(torch.isfinite(p.detach().float()).all() for _, p in named), "a step made a parameter non-finite"
    return True


def _build(info, named, backend):
    try:
        return info.build(named, run_on=backend)
    except ValueError as e:  # μP defines its scaling for at most 2 infinite dims: MuLO refuses the rest
        if "infinite dimensions" not in str(e):
            raise
        hypothesis.reject()


def _backends(info):
    return [b for b in ("naive", "foreach", "fused") if b in info.backends]


@pytest.mark.parametrize("info", ENTRIES, ids=[i.name for i in ENTRIES])
@SETTINGS
@given(c=case)
def test_steps_are_finite_or_refused_and_every_backend_agrees(info, c):
    for module in info.requires:
        pytest.importorskip(module)
    runs = {}
    for backend in _backends(info):
        named = _params(c)
        opt = _build(info, named, backend)
        taken = [_step(info, opt, named, c, s) for s in range(2)]
        runs[backend] = (named, taken)
    ref, taken = runs["naive"]
    for backend, (named, got_taken) in runs.items():
        assert got_taken == taken, backend  # the same steps refused everywhere
        _assert_agree(ref, named)


def _assert_agree(ref, got):
    """float32 within 1e-6; bf16/fp16 within one final rounding of naive's (float32 round-off inside)."""
    for (n, p), (_, q) in zip(ref, got):
        a, b = p.detach().float(), q.detach().float()
        tol = 1e-6 if p.dtype == torch.float32 else torch.finfo(p.dtype).eps * a.abs().clamp_min(1e-30)
        assert ((a - b).abs() <= tol).all(), (n, float((a - b).abs().max()) if a.numel() else 0.0)


@pytest.mark.parametrize("info", ENTRIES, ids=[i.name for i in ENTRIES])
@SETTINGS
@given(c=case)
def test_resume_is_bit_exact(info, c):
    for module in info.requires:
        pytest.importorskip(module)
    backend = "fused" if "fused" in info.backends else "naive"
    named = _params(c)
    opt = _build(info, named, backend)
    _step(info, opt, named, c, 0)
    saved = copy.deepcopy(opt.state_dict())
    twin = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named]
    _step(info, opt, named, c, 1)
    opt2 = _build(info, twin, backend)
    opt2.load_state_dict(saved)
    _step(info, opt2, twin, c, 1)
    for (n, p), (_, q) in zip(named, twin):
        assert torch.equal(p.detach(), q.detach()), n
