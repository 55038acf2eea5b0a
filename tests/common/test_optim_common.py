"""torch.optim conventions, checked generically on every optimizer of the optimizer database.

Like PyTorch's ``common_optimizers.py``: one database (``pylo.parity_tests.optim_db``), the same tests
for all. Each optimizer is built the user's way on a small seeded meta-network (``network=``): no
checkpoint, no JAX. MuLO's entries alone skip without ``mup``.
"""

import copy
import io
import math
import subprocess
import sys

import pytest
import torch

from pylo.optim.backend import BACKEND_KEYS, resolve_backend
from pylo.parity_tests import optim_db
from pylo.spec import optimizer_names

ENTRIES = optim_db.DATABASE
SHAPES = {"w": (6, 5), "b": (6,), "s": (), "k": (4, 3, 2, 2)}
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
#: (entry, "naive" or "recommended"): both classes of every optimizer, named by the class
CLASSES = [pytest.param(info, which, id=info.spec.classes[i])
           for info in ENTRIES for i, which in ((1, "naive"), (0, "recommended"))]
VALID = [pytest.param(info, inp, id=f"{info.name}-{inp.desc}") for info in ENTRIES for inp in info.valid_inputs]
ERRORS = [pytest.param(info, which, err, id=f"{info.spec.classes[i]}-{err.desc}")
          for info in ENTRIES for i, which in ((1, "naive"), (0, "recommended")) for err in info.error_inputs]


def _require(info):
    for module in info.requires:
        pytest.importorskip(module)
    return info


@pytest.fixture(params=ENTRIES, ids=[i.name for i in ENTRIES])
def entry(request):
    return _require(request.param)


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(n, torch.nn.Parameter((0.5 * torch.randn(s, generator=g)).to(dtype))) for n, s in SHAPES.items()]


def _build(info, named, backend="naive", **overrides):
    return info.build(named, run_on=backend, **overrides)


def _grads(named, step, scale=0.1):
    g = torch.Generator().manual_seed(1000 + step)
    for _, p in named:
        p.grad = (scale * torch.randn(p.shape, generator=g)).to(p.dtype)


def _step(info, opt, step):
    loss = 2.0 / (1 + step)
    return opt.step(loss=loss) if info.needs_loss else opt.step()


def _run(info, opt, named, steps, start=0):
    for s in range(start, start + steps):
        _grads(named, s)
        _step(info, opt, s)


def _snapshot(named):
    return {n: p.detach().clone() for n, p in named}


def _equal_trees(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal_trees(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal_trees(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


# ------------------------------------------------------------- the database
def test_the_database_has_every_optimizer_of_the_spec():
    assert [i.name for i in ENTRIES] == list(optimizer_names())
    for info in ENTRIES:
        assert (info.recommended.__name__, info.naive.__name__) == info.spec.classes
        assert set(info.backends) == {"naive", "foreach", "fused", "triton"}


def test_the_database_needs_no_jax():
    code = ("import sys, pylo.parity_tests.optim_db\n"
            "print(sorted(m for m in ('jax', 'flax', 'optax', 'pylo.reference_jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------ inputs and backends
@pytest.mark.parametrize("info,inp", VALID)
def test_valid_inputs_build_and_step(info, inp):
    _require(info)
    for cls in (info.naive, info.recommended):
        named = _params()
        opt = info.build(named, cls, run_on=None, **inp.kwargs)
        _run(info, opt, named, 2)
        for n, p in named:
            assert torch.isfinite(p).all(), f"{cls.__name__}({inp.kwargs}): {n}"


@pytest.mark.parametrize("info,which,err", ERRORS)
def test_error_inputs_are_refused(info, which, err):
    _require(info)
    with pytest.raises(err.error, match=err.match):
        info.build(_params(), getattr(info, which), run_on=None, **err.kwargs)


@pytest.mark.parametrize("info,which", CLASSES)
def test_foreach_true_is_honoured(info, which):
    _require(info)
    named = _params()
    opt = info.build(named, getattr(info, which), run_on=None, foreach=True)
    for group in opt.param_groups:
        assert group["backend"] == "foreach"
        assert resolve_backend(group["backend"], CPU) == "foreach" == resolve_backend(group["backend"], CUDA)
    twin = _params()
    _run(info, opt, named, 2)
    _run(info, _build(info, twin, "foreach"), twin, 2)
    for (n, p), (_, q) in zip(named, twin):
        assert torch.equal(p, q), n


def test_the_naive_class_default_is_foreach_on_cuda_and_naive_elsewhere(entry):
    opt = entry.build(_params(), entry.naive, run_on=None)
    for group in opt.param_groups:
        assert resolve_backend(group["backend"], CUDA) == "foreach"
        assert resolve_backend(group["backend"], CPU) == "naive"


def test_the_recommended_class_default_is_auto_fused_on_cpu(entry):
    opt = entry.build(_params(), entry.recommended, run_on=None)
    for group in opt.param_groups:
        assert group["backend"] == "auto"
        assert resolve_backend(group["backend"], CPU) == "fused"


def test_the_constructed_backend_survives_load_state_dict(entry):
    named = _params()
    saved = _build(entry, named, "fused")  # tiny chunks
    _run(entry, saved, named, 2)
    opt = _build(entry, [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named], "naive")
    built = [{k: g.get(k) for k in BACKEND_KEYS} for g in opt.param_groups]
    opt.load_state_dict(saved.state_dict())
    assert [{k: g.get(k) for k in BACKEND_KEYS} for g in opt.param_groups] == built
    assert all(g["backend"] != "fused" for g in opt.param_groups)


def test_every_backend_matches_the_naive_one(entry):
    others = [b for b in entry.backends if b != "naive" and optim_db.backend_available(b)]
    ref = _params()
    _run(entry, _build(entry, ref, "naive"), ref, 4)
    for backend in others:
        got = _params()
        _run(entry, _build(entry, got, backend), got, 4)
        for (n, p), (_, q) in zip(ref, got):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=f"{backend}: {n}")


# ------------------------------------------------------ torch.optim conventions
def test_state_dict_resume_is_bit_exact(entry):
    named = _params()
    opt = _build(entry, named)
    _run(entry, opt, named, 5)
    buffer = io.BytesIO()
    torch.save({"params": _snapshot(named), "opt": opt.state_dict()}, buffer)
    _run(entry, opt, named, 5, start=5)
    expected = _snapshot(named)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = [(n, torch.nn.Parameter(saved["params"][n].clone())) for n, _ in named]
    opt2 = _build(entry, resumed)
    opt2.load_state_dict(saved["opt"])
    _run(entry, opt2, resumed, 5, start=5)
    for n, p in resumed:
        assert torch.equal(p.detach(), expected[n]), n


def test_load_state_dict_leaves_the_callers_dict_alone(entry):
    named = _params()
    opt = _build(entry, named)
    _run(entry, opt, named, 3)
    sd = opt.state_dict()
    before = copy.deepcopy(sd)
    opt2 = _build(entry, [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named])
    opt2.load_state_dict(sd)
    _run(entry, opt2, named, 2, start=3)
    assert _equal_trees(sd, before)


def test_param_groups_hold_no_tensors(entry):
    named = _params()
    opt = _build(entry, named)
    _run(entry, opt, named, 1)

    def walk(x):
        assert not isinstance(x, torch.Tensor), "tensor in param_groups (not device-portable)"
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(opt.state_dict()["param_groups"])


def test_params_without_grad_or_frozen_are_skipped(entry):
    named = _params()
    opt = _build(entry, named)
    _grads(named, 0)
    named[1][1].grad = None
    named[2][1].requires_grad_(False)
    before = _snapshot(named)
    _step(entry, opt, 0)
    after = _snapshot(named)
    assert torch.equal(before["b"], after["b"])
    assert torch.equal(before["s"], after["s"])
    assert not torch.equal(before["w"], after["w"])
    named[2][1].requires_grad_(True)
    _run(entry, opt, named, 2, start=1)  # they join later without breaking anything
    assert not torch.equal(after["b"], named[1][1].detach())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_keep_float32_state(entry, dtype):
    named = _params(dtype)
    opt = _build(entry, named)
    before = _snapshot(named)
    _run(entry, opt, named, 3)
    for n, p in named:
        assert p.dtype == dtype and torch.isfinite(p.float()).all()
    assert any(not torch.equal(before[n], p.detach()) for n, p in named)
    for state in opt.state.values():
        for value in state.values() if isinstance(state, dict) else ():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert value.dtype == torch.float32


def test_closure_is_called_with_grad_enabled_and_its_loss_returned(entry):
    named = _params()
    opt = _build(entry, named)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = sum((p.float() ** 2).sum() for _, p in named)
        loss.backward()
        return loss

    with torch.no_grad():
        returned = opt.step(closure)
    assert calls == [True]
    assert isinstance(returned, torch.Tensor) and returned.item() > 0


def test_zero_lr_means_no_update(entry):
    named = _params()
    opt = _build(entry, named)
    _run(entry, opt, named, 2)
    for group in opt.param_groups:
        group["lr"] = 0.0
    before = _snapshot(named)
    _run(entry, opt, named, 2, start=2)
    for n, p in named:
        assert torch.equal(before[n], p.detach()), n


def test_lr_scales_the_update_and_schedulers_drive_it(entry):
    named = _params()
    opt = _build(entry, named)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _run(entry, opt, named, 2)
    sched.step()
    half = [g["lr"] for g in opt.param_groups]
    twin = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in named]
    opt_twin = _build(entry, twin)
    opt_twin.load_state_dict(opt.state_dict())
    for group, lr in zip(opt_twin.param_groups, half):
        group["lr"] = 2 * lr
    before = _snapshot(named)
    _grads(named, 2)
    _grads(twin, 2)
    _step(entry, opt, 2)
    _step(entry, opt_twin, 2)
    for (n, p), (_, q) in zip(named, twin):
        torch.testing.assert_close(2 * (p.detach() - before[n]), q.detach() - before[n], rtol=0, atol=1e-6)  # p rounding only


def test_add_param_group_after_construction(entry):
    named = _params()
    opt = _build(entry, named[:2])
    _run(entry, opt, named[:2], 2)
    opt.add_param_group({"params": [named[3]]})  # (name, tensor), as the first groups have names
    before = named[3][1].detach().clone()
    _grads(named, 2)
    _step(entry, opt, 2)
    assert not torch.equal(before, named[3][1].detach())


def test_sparse_and_complex_gradients_are_refused(entry):
    named = _params()
    opt = _build(entry, named)
    _grads(named, 0)
    named[0][1].grad = named[0][1].grad.to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        _step(entry, opt, 0)
    cplx = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises((RuntimeError, TypeError, ValueError), match="complex"):
        opt2 = _build(entry, [("c", cplx)])
        cplx.grad = torch.ones(3, dtype=torch.complex64)
        _step(entry, opt2, 0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradients_raise_and_change_nothing(entry, bad):
    named = _params()
    opt = _build(entry, named)
    _run(entry, opt, named, 2)
    before, state_before = _snapshot(named), copy.deepcopy(opt.state_dict())
    _grads(named, 2)
    named[1][1].grad[0] = bad
    with pytest.raises(ValueError, match="non-finite gradient.*'b'"):
        _step(entry, opt, 2)
    assert all(torch.equal(before[n], p.detach()) for n, p in named)
    assert _equal_trees(opt.state_dict(), state_before)
