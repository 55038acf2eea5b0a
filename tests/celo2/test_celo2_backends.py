"""CELO2 / ELO-CELO2 fast backends: fused (chunked) and Triton (under TRITON_INTERPRET=1 here) vs naive.

The parity suite checks every backend against JAX on the fixture shapes (the
interpreted Triton backend on one config per optimizer); these tests add every
rank through the learned path, matrices spanning several kernel blocks,
bf16/fp16 parameters, the step options, other network geometries and the
Triton backend's errors. Sizes stay tiny: Triton's interpreter is slow.
"""

import pytest
import torch

from pylo.kernels import triton_available
from pylo.models import CELO2MLP
from pylo.optim import CELO2_naive, ELO_CELO2_naive
from pylo.spec.features import hyper_group_widths as feature_widths

from helpers import DEVICE, FAST, assert_close, assert_resumes, assert_same_state, assert_triton_needs_a_gpu, params

CLASSES = {"celo2": CELO2_naive, "elo_celo2": ELO_CELO2_naive}
#: every rank the learned path receives (with use_adamw_for_1d=False): 0-D, 1-D, wide/tall 2-D, 3-D, a conv kernel
RANKS = {"scalar": (), "vector": (7,), "wide": (5, 9), "tall": (9, 4), "size1": (1, 5), "rank3": (3, 4, 5),
         "conv": (6, 4, 3, 2)}
TRITON = pytest.mark.skipif(not triton_available(torch.device(DEVICE)),
                            reason="triton needs CUDA or TRITON_INTERPRET=1")


def network(seed=0, **geometry):
    """A CELO2MLP with random weights and non-zero biases."""
    torch.manual_seed(seed)
    net = CELO2MLP(**geometry)
    with torch.no_grad():
        net.b0.normal_(0.0, 0.1)
        for b in net.dense_b:
            b.normal_(0.0, 0.1)
    return net


def run(opt, named, steps):
    for s in range(steps):
        g = torch.Generator().manual_seed(100 + s)
        for _, p in named:
            scale = 3000.0 if s == 1 else 0.1  # one step beyond the +-1000 clamp
            p.grad = (scale * torch.randn(p.shape, generator=g)).to(p.dtype).to(DEVICE)
        opt.step()


def compare(backend, shapes, kind="celo2", steps=3, dtype=torch.float32, net=None, chunk_size=7, **kw):
    """Parameters and optimizers after ``steps`` on ``backend`` and on naive (both with ``kw``)."""
    net = net if net is not None else network()
    ref, got = params(shapes, dtype), params(shapes, dtype)
    opt_ref = CLASSES[kind](ref, network=net, backend="naive", **kw)
    opt_got = CLASSES[kind](got, network=net, backend=backend, chunk_size=chunk_size, **kw)
    run(opt_ref, ref, steps)
    run(opt_got, got, steps)
    return ref, got, opt_ref, opt_got


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", ["celo2", "elo_celo2"])
def test_every_rank_through_the_learned_path_matches_naive(kind, backend):
    ref, got, opt_ref, opt_got = compare(backend, RANKS, kind, use_adamw_for_1d=False)
    assert_close(ref, got)
    assert_same_state(opt_ref, ref, opt_got, got)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", ["celo2", "elo_celo2"])
def test_adamw_routing_matches_naive(kind, backend):
    shapes = {"w": (5, 9), "b": (5,), "s": (), "embed": (6, 4)}
    ref, got, _, _ = compare(backend, shapes, kind, weight_decay=0.05, adam_lr_mult=2.0)
    assert_close(ref, got)


@pytest.mark.parametrize("backend", FAST)
def test_matrices_spanning_several_kernel_blocks(backend):
    # 667 elements per matrix (6 blocks of 128), three matrices of 156 (2 blocks each), a 300-vector
    shapes = {"matrix": (23, 29), "rank3": (3, 12, 13), "vector": (300,)}
    ref, got, _, _ = compare(backend, shapes, use_adamw_for_1d=False, chunk_size=100)
    assert_close(ref, got)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_match_naive_within_one_rounding(backend, dtype):
    ref, got, _, opt_got = compare(backend, RANKS, dtype=dtype, use_adamw_for_1d=False, weight_decay=0.1)
    assert_close(ref, got)
    for _, q in got:
        assert q.dtype == dtype and all(v.dtype == torch.float32 for v in opt_got.state[q].values())


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("options", [
    dict(exp_mult=0.05, param_scale_mult=True, rmsmult=0.7, weight_decay=0.1),
    dict(orthogonalize=False, grad_clip_val=None, lr=0.01),
    dict(kernel_layout="jax"),
], ids=["step-options", "base-noclamp", "jax-layout"])
def test_step_options(backend, options):
    shapes = {"w": (5, 9), "v": (7,), "conv": (6, 4, 3, 2), "conv2": (4, 3, 3, 2)}
    ref, got, _, _ = compare(backend, shapes, use_adamw_for_1d=False, **options)
    assert_close(ref, got)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("geometry", [dict(hidden_size=16, hidden_layers=3), dict(hidden_size=5, hidden_layers=1),
                                      dict(hidden_size=8, hidden_layers=2, activation="tanh")],
                         ids=["h16-dot", "h5-no-hidden", "tanh"])
def test_other_network_geometries(backend, geometry):
    # width 16 takes the kernels' tl.dot path; width 5 pads to 8 with no hidden dense layer
    net = network(seed=1, **geometry)
    ref, got, _, _ = compare(backend, {"w": (5, 9), "v": (7,), "k": (2, 3, 4)}, net=net, use_adamw_for_1d=False)
    assert_close(ref, got)


def test_other_decay_counts_fused_and_a_clear_triton_error():
    kw = dict(initial_momentum_decays=(0.9, 0.99), initial_adafactor_decays=(0.9, 0.999))  # K = 2: supported
    net = network(feature_dims=feature_widths(2, 1, 2))
    for backend in ("fused", "triton") if triton_available(torch.device(DEVICE)) else ("fused",):
        ref, got, _, _ = compare(backend, {"w": (5, 9), "v": (7,)}, net=net, use_adamw_for_1d=False, **kw)
        assert_close(ref, got)
    if triton_available(torch.device(DEVICE)):
        kw = dict(initial_rms_decays=(0.9, 0.95))  # two RMS decays: fused only
        named = params({"w": (5, 9)})
        opt = CELO2_naive(named, network=network(feature_dims=feature_widths(3, 2, 3)), backend="triton", **kw)
        with pytest.raises(ValueError, match="backend='fused'"):
            run(opt, named, 1)


@TRITON
def test_state_moves_between_triton_and_naive():
    net, shapes = network(), {"v": (7,), "w": (5, 9), "conv": (6, 4, 3, 2)}
    a, b = params(shapes), params(shapes)
    opt_a = CELO2_naive(a, network=net, backend="triton", use_adamw_for_1d=False)
    run(opt_a, a, 2)
    assert_resumes(opt_a, a, CELO2_naive(b, network=net, backend="naive", use_adamw_for_1d=False), b, run)


def test_triton_needs_a_gpu_or_the_interpreter(monkeypatch):
    def make_step():
        named = params({"w": (3, 2)})
        opt = CELO2_naive(named, network=network(), backend="triton")
        return lambda: run(opt, named, 1)

    assert_triton_needs_a_gpu(monkeypatch, make_step)


@TRITON
def test_triton_follows_in_place_changes_of_the_network():
    # the kernels' copy of the network is cached between steps; an in-place edit must reach it
    net_ref, net_got = network(), network()
    ref, got = params({"w": (5, 9)}), params({"w": (5, 9)})
    opt_ref = CELO2_naive(ref, network=net_ref, backend="naive")
    opt_got = CELO2_naive(got, network=net_got, backend="triton")
    run(opt_ref, ref, 1)
    run(opt_got, got, 1)
    with torch.no_grad():
        for net in (net_ref, net_got):
            net.b0.add_(0.5)
            net.dense_w[0].mul_(-1.0)
    run(opt_ref, ref, 2)
    run(opt_got, got, 2)
    assert_close(ref, got)


def test_auto_takes_triton_on_cuda_only_for_decay_counts_the_kernels_implement():
    pytest.importorskip("triton")
    named = params({"w": (3, 2)})
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    opt = CELO2_naive(named, network=network(), backend="auto")
    assert opt.backend_for(opt.param_groups[0], cpu) == "fused"
    assert opt.backend_for(opt.param_groups[0], cuda) == "triton"
    opt = CELO2_naive(params({"w": (3, 2)}), network=network(feature_dims=feature_widths(3, 2, 3)), backend="auto",
                      initial_rms_decays=(0.9, 0.95))
    assert opt.backend_for(opt.param_groups[0], cuda) == "fused"
    assert opt.backend_for({**opt.param_groups[0], "backend": "triton"}, cuda) == "triton"  # asked for: its error
