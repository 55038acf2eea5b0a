"""VeLO and Celo backends: fused (chunked, CPU/GPU) and Triton (under TRITON_INTERPRET=1 here) vs naive.

The parity suite checks every backend against JAX on the fixture shapes; these
tests add what it does not cover: every rank, tensors spanning many default-size
chunks, bf16/fp16 parameters, other network sizes, backend selection, and the
fused backend's bounded transient memory.
"""

import inspect

import pytest
import torch

from pylo.core.chunked import DEFAULT_CHUNK
from pylo.kernels import triton_available
from pylo.models.hyper_network import HyperNetwork
from pylo.optim import Celo, Celo_naive, VeLO, VeLO_naive
from pylo.optim.backend import resolve_backend
from pylo.optim.hyperv2.controller import LSTMInputs
from pylo.optim.hyperv2.functional import ENGINES
from pylo.optim.hyperv2.two_pass import BatchMember

from helpers import DEVICE, FAST, assert_close, assert_resumes, assert_same_state, assert_triton_needs_a_gpu, params

RANKS = {"scalar": (), "vector": (7,), "matrix": (5, 9), "size1": (1, 5), "rank3": (3, 4, 5),
         "conv": (6, 4, 3, 2), "rank5": (2, 1, 3, 1, 4), "rank5b": (2, 3, 2, 3, 2)}


def network(kind="velo", seed=0, std=0.1, **geometry):
    config = dict(lstm_input_size=30, lstm_hidden_size=8, param_inits=4) if kind == "velo" else dict(
        lstm_input_size=18, lstm_hidden_size=8, param_inits=1)
    config.update(geometry)
    return HyperNetwork.random(seed=seed, std=std, **config)


def make(kind, named, net, **kw):
    if kind == "velo":
        return VeLO_naive(named, network=net, num_steps=50, **kw)
    return Celo_naive(named, 50, network=net, **kw)


def run(opt, named, steps):
    for s in range(steps):
        g = torch.Generator().manual_seed(100 + s)
        for _, p in named:
            scale = 30.0 if s == 1 else 0.1  # one step far beyond the +-0.1 feature clip
            p.grad = (scale * torch.randn(p.shape, generator=g)).to(p.dtype).to(DEVICE)
        opt.step(2.0 / (1 + s))


def compare(kind, shapes, backend, steps=4, dtype=torch.float32, net=None, chunk_size=DEFAULT_CHUNK, **kw):
    """Parameters and optimizers after ``steps`` on ``backend`` and on naive (both with ``kw``)."""
    net = net if net is not None else network(kind)
    ref, got = params(shapes, dtype), params(shapes, dtype)
    opt_ref = make(kind, ref, net, backend="naive", **kw)
    opt_got = make(kind, got, net, backend=backend, chunk_size=chunk_size, **kw)
    run(opt_ref, ref, steps)
    run(opt_got, got, steps)
    return ref, got, opt_ref, opt_got


# ------------------------------------------------------------------ selection
def test_aliases_pick_the_fastest_backend_and_naive_classes_keep_the_published_rule():
    for fast, naive in ((VeLO, VeLO_naive), (Celo, Celo_naive)):
        assert issubclass(fast, naive)
        assert inspect.signature(naive).parameters["backend"].default is None
        assert inspect.signature(naive).parameters["chunk_size"].default == DEFAULT_CHUNK
    named = params({"w": (3, 2)})
    assert VeLO(named, network=network(), num_steps=10).param_groups[0]["backend"] == "auto"
    assert Celo(named, 10, network=network("celo")).param_groups[0]["backend"] == "auto"
    assert VeLO(named, network=network(), num_steps=10, foreach=True).param_groups[0]["backend"] == "foreach"
    assert Celo(named, 10, network=network("celo"), foreach=False).param_groups[0]["backend"] == "naive"
    assert VeLO_naive(named, network=network(), num_steps=10).param_groups[0]["backend"] is None
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend(None, cpu) == "naive" and resolve_backend(None, cuda) == "foreach"
    assert resolve_backend("auto", cpu) == "fused"
    assert resolve_backend("auto", cuda, triton_unsupported="no") == "fused"
    assert resolve_backend("fused", cuda) == "fused"


def test_the_triton_engine_says_which_networks_it_cannot_run():
    triton = ENGINES["triton"]
    assert triton.unsupported(network()) is None and triton.unsupported(network("celo")) is None
    assert "30 per-element" in triton.unsupported(network(input_size=22, lstm_input_size=28))
    assert all(ENGINES[b].name == b for b in ENGINES)


def test_the_alias_trains_with_the_fused_backend_on_cpu():
    named, ref = params({"w": (6, 5), "b": (6,)}), params({"w": (6, 5), "b": (6,)})
    net = network()
    opt = VeLO(named, network=net, num_steps=20)
    run(opt, named, 3)
    run(VeLO_naive(ref, network=net, num_steps=20), ref, 3)
    assert_close(ref, named)
    if DEVICE == "cpu":
        assert opt._backend_for(opt.param_groups[0], torch.device("cpu")) == "fused"


@pytest.mark.parametrize("kw,match", [({"backend": "fast"}, "backend must be one of"),
                                      ({"backend": "fused", "foreach": True}, "contradicts"),
                                      ({"chunk_size": 0}, "chunk_size"), ({"chunk_size": True}, "chunk_size"),
                                      ({"chunk_size": 8.0}, "chunk_size")])
def test_bad_backend_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make("velo", params({"w": (3, 2)}), network(), **kw)


def test_triton_needs_a_gpu_or_the_interpreter(monkeypatch):
    def make_step():
        named = params({"w": (3, 2)})
        opt = make("velo", named, network(), backend="triton")
        return lambda: run(opt, named, 1)

    assert_triton_needs_a_gpu(monkeypatch, make_step)


# ------------------------------------------------------------------ numerics
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("kind", ["velo", "celo"])
def test_every_rank_matches_naive(kind, backend):
    ref, got, opt_ref, opt_got = compare(kind, RANKS, backend, chunk_size=7)
    assert_close(ref, got)
    assert_same_state(opt_ref, ref, opt_got, got)


def test_conv_kernels_in_jax_layout():
    shapes = {"conv": (6, 4, 3, 2), "conv2": (3, 3, 5, 8)}
    ref, got, _, _ = compare("velo", shapes, "fused", kernel_layout="jax", chunk_size=5)
    assert_close(ref, got)


def test_large_tensors_span_many_default_chunks():
    shapes = {"matrix": (300, 500), "vector": (70_000,), "rank3": (40, 30, 60), "tall": (40_000, 3)}
    assert all(torch.Size(s).numel() > 2 * DEFAULT_CHUNK for s in shapes.values())
    ref, got, _, _ = compare("velo", shapes, "fused", steps=3)
    assert_close(ref, got)


@pytest.mark.parametrize("backend", FAST)
def test_triton_blocks_and_fused_chunks_on_a_mid_size_tensor(backend):
    shapes = {"matrix": (23, 29), "vector": (531,)}  # several kernel blocks, chunks that cut rows
    ref, got, _, _ = compare("velo", shapes, backend, chunk_size=100)
    assert_close(ref, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_tensors_are_batched_by_size(dtype):
    # rank < 2 tensors of one size share a slab (here at most 30 elements: batches of 4 and 2 vectors,
    # 30 scalars, two 13s); a long vector and matrices go tensor by tensor
    shapes = {**{f"v{i}": (7,) for i in range(6)}, **{f"s{i}": () for i in range(31)}, "u0": (13,), "u1": (13,),
              "long": (45,), "w": (5, 9), "t": (2, 3, 4)}
    ref, got, opt_ref, opt_got = compare("velo", shapes, "fused", dtype=dtype, chunk_size=30)
    assert_close(ref, got)
    for (_, p), (_, q) in zip(ref, got):  # each tensor keeps its own LSTM state and accumulators
        torch.testing.assert_close(opt_got.state[q]["lstm_hidden"], opt_ref.state[p]["lstm_hidden"], rtol=0,
                                   atol=1e-6)
        torch.testing.assert_close(opt_got.state[q]["mom"], opt_ref.state[p]["mom"], rtol=1e-5, atol=1e-6)
    device = torch.device(DEVICE)
    features = torch.zeros(9, device=device)
    settings = opt_got._settings(opt_got.param_groups[0], device, LSTMInputs(opt_got.controller, features, features))
    with torch.no_grad():
        prepared = ENGINES["fused"](settings).prepare([p for _, p in got], [p.grad.float() for _, p in got],
                                                      [opt_got.state[p] for _, p in got])
    assert prepared.lstm_inputs.shape == (len(got), 30)
    batches = {}
    for handle in prepared.handles:
        batch = handle.batch if isinstance(handle, BatchMember) else handle
        batches[id(batch)] = batches.get(id(batch), 0) + 1
    sizes = sorted(batches.values())
    assert sizes == [1, 1, 1, 1, 2, 2, 4, 30], sizes  # long, w, t, s30, v-pair, u-pair, v-four, 30 scalars


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_match_naive_within_one_rounding(backend, dtype):
    ref, got, _, opt_got = compare("velo", RANKS, backend, dtype=dtype, chunk_size=7)
    assert_close(ref, got)
    for _, q in got:
        assert q.dtype == dtype and all(v.dtype == torch.float32 for k, v in opt_got.state[q].items() if k != "hyper_v2")


@pytest.mark.parametrize("backend", FAST)
def test_other_network_sizes(backend):
    # hidden 16 takes the kernels' tl.dot path; two hidden layers; no hidden layer
    for hidden, layers in ((16, 2), (4, 0), (3, 1)):
        net = network(hidden_size=hidden, hidden_layers=layers, std=0.05)
        ref, got, _, _ = compare("velo", {"w": (5, 9), "v": (7,), "k": (2, 3, 4)}, backend, net=net, chunk_size=11)
        assert_close(ref, got)


def test_other_decay_counts_fused_and_a_clear_triton_error():
    # two momentum and two Adafactor decays: 22 per-element inputs, 28 LSTM inputs; the kernels
    # implement VeLO's (3, 1, 3) only
    kw = dict(initial_momentum_decays=(0.9, 0.99), momentum_decays=(0.0, 0.0),
              initial_adafactor_decays=(0.9, 0.999), adafactor_decays=(0.0, 0.0))
    net = network(input_size=22, lstm_input_size=28)
    ref, got, _, _ = compare("velo", {"w": (5, 9), "v": (7,), "s": ()}, "fused", net=net, chunk_size=6, **kw)
    assert_close(ref, got)
    if triton_available(torch.device(DEVICE)):
        named = params({"w": (5, 9)})
        opt = make("velo", named, net, backend="triton", **kw)
        with pytest.raises(ValueError, match="backend='fused'"):
            run(opt, named, 1)


def test_weight_decay_lr_and_prefab_on_fused():
    for kw in (dict(weight_decay=0.1, lr=0.5), dict(weight_decay=1e-3, weight_decay_mode="prefab")):
        ref, got, _, _ = compare("velo", {"w": (5, 9), "v": (7,)}, "fused", chunk_size=8, **kw)
        assert_close(ref, got)


def test_state_moves_between_backends():
    net = network()
    a, b = params(RANKS), params(RANKS)
    opt_a = make("velo", a, net, backend="fused", chunk_size=9)
    run(opt_a, a, 3)
    assert_resumes(opt_a, a, make("velo", b, net, backend="naive"), b, run)


# ------------------------------------------------------------------ memory
@pytest.mark.skipif(DEVICE != "cpu", reason="CPU allocation events")
def test_fused_transient_memory_is_bounded():
    from pylo.bench.measure import peak_transient_bytes

    named = params({"matrix": (512, 384), "vector": (60_000,)})
    opt = make("velo", named, network(), backend="fused")
    run(opt, named, 2)  # the workspace is allocated once, then reused
    n = sum(p.numel() for _, p in named)
    per_param = peak_transient_bytes(lambda: opt.step(1.0), torch.device("cpu")) / n
    assert per_param < 16, per_param
