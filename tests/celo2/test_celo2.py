"""CELO2, CELO2-base, ELO-CELO2 and ELO: routing, conv layout, AdamW step counts, clipping, errors.

The generic torch.optim conventions (resume, dtypes, closures, ...) run for
these optimizers in ``test_optim_common.py``; numerical parity with the JAX
references in ``parity_tests``.
"""

import copy
import io

import numpy as np
import pytest
import torch

from pylo.core.clipping import global_norm
from pylo.errors import CheckpointError
from pylo.models import CELO2MLP, MetaMLP
from pylo.optim import CELO2, ELO, ELO_CELO2, CELO2_naive, ELO_CELO2_naive, ELO_naive

jax = pytest.importorskip("jax")

from pylo.parity_tests import registry  # noqa: E402
from pylo.parity_tests.pipeline import make_checkpoint  # noqa: E402

CELO2_FAMILY = [CELO2_naive, ELO_CELO2_naive]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Converted seeded checkpoints (and the JAX side) for celo2, elo_celo2 and elo."""
    out = {}
    for name in ("celo2", "elo_celo2", "elo"):
        info = registry.get(name)
        reference, theta, folder = make_checkpoint(info, info.configs[0], tmp_path_factory.mktemp(name))
        out[name] = (reference, theta, str(folder))
    return out


def _ckpt_for(cls, ckpts):
    return ckpts[{CELO2_naive: "celo2", ELO_CELO2_naive: "elo_celo2", ELO_naive: "elo"}[cls]][2]


def _param(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(0.5 * torch.randn(shape, generator=g))


def _grad(shape, seed, scale=0.1):
    g = torch.Generator().manual_seed(10_000 + seed)
    return scale * torch.randn(shape, generator=g)


def test_aliases_and_published_defaults(ckpts):
    import inspect

    for fast, naive in ((CELO2, CELO2_naive), (ELO_CELO2, ELO_CELO2_naive), (ELO, ELO_naive)):  # the aliases pick the fastest backend
        assert issubclass(fast, naive)
        ckpt = _ckpt_for(naive, ckpts)
        assert fast([torch.nn.Parameter(torch.ones(2, 2))], checkpoint_path=ckpt).param_groups[0]["backend"] == "auto"
    for fast, naive in ((CELO2, CELO2_naive), (ELO_CELO2, ELO_CELO2_naive)):
        ckpt = _ckpt_for(naive, ckpts)
        assert naive([torch.nn.Parameter(torch.ones(2, 2))], checkpoint_path=ckpt).param_groups[0]["backend"] is None
        # an explicit foreach= is honoured by the recommended classes too
        opt = fast([torch.nn.Parameter(torch.ones(2, 2))], checkpoint_path=ckpt, foreach=True)
        assert opt.param_groups[0]["backend"] == "foreach"

    celo2 = inspect.signature(CELO2_naive).parameters
    assert celo2["lr"].default == 0.001 and celo2["adam_betas"].default == (0.9, 0.95)
    assert celo2["grad_clip_val"].default == 1000.0 and celo2["hf_key"].default == "DiamondXL/celo2"
    elo_celo2 = inspect.signature(ELO_CELO2_naive).parameters
    assert elo_celo2["weight_decay"].default == 0.1 and elo_celo2["clip_grad"].default is True
    assert elo_celo2["hf_key"].default == "DiamondXL/elo-celo2"
    elo = inspect.signature(ELO_naive).parameters
    assert elo["hidden_size"].default == 32 and elo["hidden_layers"].default == 1
    assert elo["hf_key"].default == "DiamondXL/elo"


# ------------------------------------------------------------------------------ routing

@pytest.mark.parametrize("cls", CELO2_FAMILY)
def test_embed_in_the_name_routes_to_adamw(cls, ckpts):
    emb, w, b = _param((10, 4), 0), _param((4, 4), 1), _param((4,), 2)
    opt = cls([("tok_embed.weight", emb), ("proj.weight", w), ("proj.bias", b)], checkpoint_path=_ckpt_for(cls, ckpts))
    for p in (emb, w, b):
        assert opt.routes_to_adamw(opt.param_groups[0], p, None) == (p.dim() <= 1)
    names = {"tok_embed.weight": True, "proj.weight": False, "proj.bias": True}
    for (name, routed), p in zip(names.items(), (emb, w, b)):
        assert opt.routes_to_adamw(opt.param_groups[0], p, name) is routed
    for p in (emb, w, b):
        p.grad = _grad(p.shape, 0)
    opt.step()
    if cls is CELO2_naive:  # AdamW keeps its own moments; the learned path its accumulators
        assert set(opt.state[emb]) == {"exp_avg", "exp_avg_sq", "step"} == set(opt.state[b])
        assert {"mom", "rms", "fac_row"} <= set(opt.state[w])


def test_is_embedding_group_and_unnamed_params(ckpts):
    emb, w = _param((10, 4), 0), _param((4, 4), 1)
    ckpt = _ckpt_for(CELO2_naive, ckpts)
    plain = CELO2_naive([emb, w], checkpoint_path=ckpt)  # no names: a 2-D embedding takes the learned path
    grouped = CELO2_naive([{"params": [emb], "is_embedding": True}, {"params": [w]}], checkpoint_path=ckpt)
    assert not plain.routes_to_adamw(plain.param_groups[0], emb, None)
    assert grouped.routes_to_adamw(grouped.param_groups[0], emb, None)
    assert not grouped.routes_to_adamw(grouped.param_groups[1], w, None)
    emb.grad, w.grad = _grad(emb.shape, 1), _grad(w.shape, 2)
    grouped.step()
    assert "exp_avg" in grouped.state[emb] and "mom" in grouped.state[w]
    resumed = CELO2_naive([{"params": [emb], "is_embedding": True}, {"params": [w]}], checkpoint_path=ckpt)
    resumed.load_state_dict(grouped.state_dict())
    assert resumed.param_groups[0]["is_embedding"] is True


def test_use_adamw_for_1d_false_sends_everything_through_the_mlp(ckpts):
    emb, b, s = _param((10, 4), 0), _param((4,), 1), _param((), 2)
    opt = CELO2_naive([("embed", emb), ("bias", b), ("scale", s)], checkpoint_path=_ckpt_for(CELO2_naive, ckpts),
                      use_adamw_for_1d=False)
    for p in (emb, b, s):
        p.grad = _grad(p.shape, 3)
    before = [p.detach().clone() for p in (emb, b, s)]
    opt.step()
    for p, old in zip((emb, b, s), before):
        assert "mom" in opt.state[p] and not torch.equal(p.detach(), old)
    # a 1-D learned step is normalised to RMS 1 over the vector (upstream's output normalisation)
    step = (before[1] - b.detach()) / opt.param_groups[0]["lr"]
    assert abs(float(step.square().mean()) - 1.0) < 1e-3


def test_adamw_path_is_adamw(ckpts):
    """The routed path equals torch.optim.AdamW (eps outside the sqrt, bias correction, decoupled decay)."""
    b = _param((16,), 0)
    twin = torch.nn.Parameter(b.detach().clone())
    opt = CELO2_naive([("b", b)], checkpoint_path=_ckpt_for(CELO2_naive, ckpts), lr=0.01, weight_decay=0.1,
                      adam_lr_mult=2.0)
    ref = torch.optim.AdamW([twin], lr=0.02, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for i in range(20):
        b.grad = twin.grad = _grad(b.shape, i, scale=10.0 ** (i % 3 - 1))
        opt.step()
        ref.step()
    torch.testing.assert_close(b.detach(), twin.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", CELO2_FAMILY)
def test_adamw_bias_correction_counts_each_parameters_own_steps(cls, ckpts):
    """A parameter that joins late is corrected with its own step count, not the optimizer's."""
    ckpt = _ckpt_for(cls, ckpts)
    a, b = _param((5,), 0), _param((5,), 1)
    late = torch.nn.Parameter(b.detach().clone())
    opt = cls([("a", a), ("b", b)], checkpoint_path=ckpt, lr=0.01)
    alone = cls([("b", late)], checkpoint_path=ckpt, lr=0.01)
    for i in range(6):
        a.grad = _grad(a.shape, i)
        b.grad = _grad(b.shape, 100 + i) if i >= 3 else None
        opt.step()
        if i >= 3:
            late.grad = _grad(b.shape, 100 + i)
            alone.step()
    assert torch.equal(b.detach(), late.detach())
    assert float(opt.state[b]["step"]) == 3 and float(opt.state[a]["step"]) == 6


# ------------------------------------------------------------------------- conv layout

def _reference_celo2_step(theta, kernel_jax, grad_jax):
    import jax.numpy as jnp

    from pylo.reference_jax.celo2 import Celo2Transformation

    with jax.default_matmul_precision("highest"):
        t = Celo2Transformation(theta=theta)
        state = t.init({"k": jnp.asarray(kernel_jax)})
        step, _ = t.update({"k": jnp.asarray(grad_jax)}, state, {"k": jnp.asarray(kernel_jax)})
    return np.asarray(step["k"])


def test_torch_conv_kernels_are_orthogonalised_per_spatial_tap_as_upstream(ckpts):
    """A torch (out, in, kh, kw) kernel gets the step upstream computes on the same kernel in JAX's HWIO layout."""
    _, theta, folder = ckpts["celo2"]
    kernel, grad = _param((6, 4, 3, 2), 0), _grad((6, 4, 3, 2), 0, scale=1.0)
    expected = _reference_celo2_step(theta, kernel.detach().numpy().transpose(2, 3, 1, 0),
                                     grad.numpy().transpose(2, 3, 1, 0)).transpose(3, 2, 0, 1)

    def torch_step(kernel_layout, p, g):
        p = torch.nn.Parameter(p.detach().clone())
        opt = CELO2_naive([("conv.weight", p)], checkpoint_path=folder, lr=1.0, kernel_layout=kernel_layout)
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        return before - p.detach()

    np.testing.assert_allclose(torch_step("torch", kernel, grad).numpy(), expected, rtol=0, atol=2e-5)
    hwio = (kernel.detach().permute(2, 3, 1, 0).contiguous(), grad.permute(2, 3, 1, 0).contiguous())
    np.testing.assert_allclose(torch_step("jax", *hwio).permute(3, 2, 0, 1).numpy(), expected, rtol=0, atol=2e-5)
    # orthogonalising the raw torch layout (the published port) works over the (kh, kw) taps: not upstream's step
    raw = torch_step("jax", kernel, grad).numpy()
    assert np.abs(raw - expected).max() > 0.1


def test_three_d_tensors_follow_upstream_on_the_raw_array(ckpts):
    _, theta, folder = ckpts["celo2"]
    p, grad = _param((3, 4, 5), 0), _grad((3, 4, 5), 0, scale=1.0)
    expected = _reference_celo2_step(theta, p.detach().numpy(), grad.numpy())
    opt = CELO2_naive([("t", p)], checkpoint_path=folder, lr=1.0)
    before = p.detach().clone()
    p.grad = grad
    opt.step()
    np.testing.assert_allclose((before - p.detach()).numpy(), expected, rtol=0, atol=2e-5)


# ------------------------------------------------------------------------- clipping

@pytest.mark.parametrize("cls", [CELO2_naive, ELO_CELO2_naive, ELO_naive])
def test_global_norm_clipping_spans_all_groups(cls, ckpts):
    ckpt = _ckpt_for(cls, ckpts)
    shapes = [(6, 5), (5,), (4, 3, 2, 2)]
    grads = [_grad(s, i, scale=3.0) for i, s in enumerate(shapes)]
    norm = global_norm(grads)
    assert norm > 1.0

    def run(clip, gs):
        ps = [_param(s, i) for i, s in enumerate(shapes)]
        opt = cls([{"params": ps[:1]}, {"params": ps[1:]}], checkpoint_path=ckpt, clip_grad=clip, clip_norm=1.0)
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        return [p.detach() for p in ps]

    clipped = run(True, grads)
    expected = run(False, [g / norm * 1.0 for g in grads])
    for a, b in zip(clipped, expected):
        assert torch.equal(a, b)
    per_group = run(False, [grads[0] / global_norm(grads[:1])] + [g / global_norm(grads[1:]) for g in grads[1:]])
    assert not all(torch.equal(a, b) for a, b in zip(clipped, per_group))


def test_celo2_clamps_the_learned_path_only(ckpts):
    """Upstream clamps to +-1000 inside the CELO2 transformation; optax's AdamW sees the raw gradient."""
    ckpt = _ckpt_for(CELO2_naive, ckpts)
    shapes = {"w": (6, 5), "b": (5,)}
    raw = {n: _grad(s, i, scale=3000.0) for i, (n, s) in enumerate(shapes.items())}

    def run(grads, **kw):
        named = [(n, _param(s, i)) for i, (n, s) in enumerate(shapes.items())]
        opt = CELO2_naive(named, checkpoint_path=ckpt, lr=0.01, **kw)
        for n, p in named:
            p.grad = grads[n].clone()
        opt.step()
        return {n: p.detach() for n, p in named}

    default = run(raw)
    learned_only = run({"w": raw["w"].clamp(-1000, 1000), "b": raw["b"]}, grad_clip_val=None)
    everything = run({n: g.clamp(-1000, 1000) for n, g in raw.items()}, grad_clip_val=None)
    assert torch.equal(default["w"], learned_only["w"]) and torch.equal(default["b"], learned_only["b"])
    assert not torch.equal(default["b"], everything["b"])


def test_elo_celo2_clamp_is_inert_under_default_clipping(ckpts):
    ckpt = _ckpt_for(ELO_CELO2_naive, ckpts)
    grads = [_grad((6, 5), 0, scale=5000.0), _grad((5,), 1, scale=5000.0)]
    out = []
    for kw in ({}, {"grad_clip_val": None}):
        ps = [_param((6, 5), 0), _param((5,), 1)]
        opt = ELO_CELO2_naive(ps, checkpoint_path=ckpt, **kw)
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()
        out.append([p.detach() for p in ps])
    assert all(torch.equal(a, b) for a, b in zip(*out))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_upstream_nonfinite_handling(ckpts, bad):
    """CELO2 has no nan_to_num (+-inf is clamped, NaN propagates); ELO-CELO2 and ELO apply nan_to_num."""
    for cls in (CELO2_naive, ELO_CELO2_naive, ELO_naive):
        w = _param((6, 5), 0)
        opt = cls([w], checkpoint_path=_ckpt_for(cls, ckpts), nonfinite_grads="upstream", clip_grad=False)
        w.grad = _grad(w.shape, 0)
        w.grad[0, 0] = bad
        opt.step()
        finite = bool(torch.isfinite(w).all())
        if cls is CELO2_naive and bad != bad:  # NaN
            assert not finite
        elif cls is ELO_naive and bad == float("inf"):
            pass  # nan_to_num maps inf to 3.4e38, whose square overflows the accumulators, as upstream
        else:
            assert finite, cls.__name__


# -------------------------------------------------------------------- state / devices

@pytest.mark.parametrize("cls", [CELO2_naive, ELO_CELO2_naive, ELO_naive])
def test_state_dict_round_trip_with_named_and_embedding_params(cls, ckpts):
    ckpt = _ckpt_for(cls, ckpts)
    shapes = {"embed.weight": (10, 4), "conv.weight": (4, 3, 2, 2), "fc.bias": (4,), "scale": ()}

    def fresh():
        return [(n, _param(s, i)) for i, (n, s) in enumerate(shapes.items())]

    def run(opt, named, start, steps):
        for i in range(start, start + steps):
            for j, (n, p) in enumerate(named):
                p.grad = _grad(p.shape, 7 * i + j)
            opt.step()

    named = fresh()
    opt = cls(named, checkpoint_path=ckpt, foreach=True)
    run(opt, named, 0, 3)
    buf = io.BytesIO()
    torch.save({"p": {n: p.detach().clone() for n, p in named}, "opt": opt.state_dict()}, buf)
    run(opt, named, 3, 3)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    again = [(n, torch.nn.Parameter(saved["p"][n].clone())) for n, _ in named]
    opt2 = cls(again, checkpoint_path=ckpt, foreach=False)
    opt2.load_state_dict(saved["opt"])
    run(opt2, again, 3, 3)
    for (n, p), (_, q) in zip(named, again):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)


# -------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-0.1), "lr"),
    (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(adam_betas=(0.9, 1.0)), "adam_betas"),
    (dict(adam_betas=(0.9,)), "adam_betas"),
    (dict(ns_coeffs=(1.0, 2.0)), "ns_coeffs"),
    (dict(ns_iters=-1), "ns_iters"),
    (dict(grad_clip_val=0.0), "grad_clip_val"),
    (dict(clip_norm=0.0), "clip_norm"),
    (dict(kernel_layout="nchw"), "kernel_layout"),
    (dict(initial_rms_decays=()), "initial_rms_decays"),
    (dict(initial_momentum_decays=(0.9, 0.99)), "feature groups of widths"),
    (dict(nonfinite_grads="ignore"), "nonfinite_grads"),
])
def test_celo2_rejects_bad_arguments(ckpts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CELO2_naive([_param((3, 3), 0)], checkpoint_path=_ckpt_for(CELO2_naive, ckpts), **kwargs)


def test_network_sources_and_their_errors(ckpts, tmp_path):
    p = [_param((3, 3), 0)]
    with pytest.raises(TypeError, match="CELO2MLP"):
        CELO2_naive(p, network=MetaMLP(39, 8, 1))
    with pytest.raises(TypeError, match="MetaMLP"):
        ELO_naive(p, network=CELO2MLP())
    with pytest.raises(ValueError, match="no CELO2 CELO2MLP meta-network"):
        CELO2_naive(p, hf_key=None)
    with pytest.raises(ValueError, match="takes 30"):
        ELO_naive(p, network=MetaMLP(30, 8, 1))
    with pytest.raises(CheckpointError, match="not found"):
        ELO_CELO2_naive(p, checkpoint_path=tmp_path / "missing")
    # a converted checkpoint records its optimizer: ELO-CELO2 weights are not CELO2 weights
    with pytest.raises(CheckpointError, match="elo_celo2"):
        CELO2_naive(p, checkpoint_path=_ckpt_for(ELO_CELO2_naive, ckpts))
    with pytest.raises(CheckpointError, match="'celo2'"):
        ELO_naive(p, checkpoint_path=_ckpt_for(CELO2_naive, ckpts))
    net = CELO2MLP(hidden_size=4)
    opt = CELO2_naive(p, network=net)
    assert opt.network is net


def test_checkpoint_geometry_wins_over_ff_hidden_size(ckpts):
    """``ff_hidden_size`` only describes checkpoints that do not state their geometry."""
    folder = _ckpt_for(CELO2_naive, ckpts)
    opt = CELO2_naive([_param((3, 3), 0)], checkpoint_path=folder, ff_hidden_size=16)
    assert opt.network.hidden_size == 8


def test_low_precision_conv_params_follow_the_float32_update(ckpts):
    folder = _ckpt_for(CELO2_naive, ckpts)
    p32 = _param((4, 3, 2, 2), 0)
    p16 = torch.nn.Parameter(p32.detach().to(torch.bfloat16))
    o32 = CELO2_naive([p32], checkpoint_path=folder, lr=0.01)
    o16 = CELO2_naive([p16], checkpoint_path=folder, lr=0.01)
    start = p16.detach().float().clone()
    p32.data.copy_(start)
    for i in range(3):
        p32.grad = _grad(p32.shape, i)
        p16.grad = p32.grad.to(torch.bfloat16)
        o32.step()
        o16.step()
    assert p16.dtype == torch.bfloat16
    assert (p16.detach().float() - p32.detach()).abs().max() < 0.02
    assert all(v.dtype == torch.float32 for v in o16.state[p16].values())
