"""DDP with the loss-consuming optimizers (VeLO, Celo): real gloo process groups on this machine.

Each rank trains on its own half of the batch; DDP averages the gradients, and VeLO/Celo average the
loss by default, so every rank computes what one process computes on the whole batch.
"""

import time

import pytest
import torch
import torch.multiprocessing as mp

import dist_workers as w
from pylo.parity_tests.optim_db import DATABASE, get

WORLD, STEPS, TIMEOUT_S = 2, 4, 480


def _spawn(worker, *args, world: int = WORLD) -> None:
    """Run ``worker(rank, world, *args)`` on ``world`` ranks; fail (never hang) past ``TIMEOUT_S``."""
    ctx = mp.start_processes(worker, args=(world, *args), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{worker.__name__} did not finish within {TIMEOUT_S} s")


@pytest.mark.parametrize("name", ["velo", "celo"])
def test_ddp_ranks_see_the_mean_loss_by_default(name, tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    _spawn(w.ddp_loss_worker, str(tmp_path / "store"), str(tmp_path), name, STEPS)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # one process on the whole batch: the mean loss and the mean gradient of the two halves
    net = w.model()
    x, y = w.data()
    opt = get(name).build(list(net.named_parameters()))
    w.train(net, opt, x, y, STEPS)
    whole = {**net.state_dict(), "loss_means": w.loss_means(opt)}

    for key, ref in whole.items():
        assert torch.equal(ranks[0]["default"][key], ranks[1]["default"][key]), key
        diff = float((ranks[0]["default"][key] - ref).abs().max() / ref.abs().max().clamp_min(1.0))
        assert diff <= 1e-6, (key, diff)
    # opting out, each rank's LSTM reads its own half's loss
    assert not torch.allclose(ranks[0]["opt_out"]["loss_means"], ranks[1]["opt_out"]["loss_means"])


def test_all_reduce_loss_is_validated():
    net = w.model()
    with pytest.raises(TypeError, match="all_reduce_loss"):
        get("velo").build(list(net.named_parameters()), all_reduce_loss="yes")


# ------------------------------------------------------- what is refused, clearly
@pytest.fixture
def one_rank_group(tmp_path):
    """A real one-rank gloo process group (FSDP needs one to wrap a module)."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _named(module):
    """``(name, parameter)`` pairs with names that every database entry accepts (μP's ParameterDict: no dots)."""
    return [(n.replace(".", "_"), p) for n, p in module.named_parameters()]


@pytest.mark.parametrize("name", [info.name for info in DATABASE])
def test_fsdp1_is_refused_at_construction(name, one_rank_group):
    from torch.distributed.fsdp import FullyShardedDataParallel

    info = get(name)
    for module in info.requires:
        pytest.importorskip(module)
    flat = FullyShardedDataParallel(w.model(), use_orig_params=True, device_id=torch.device("cpu"))
    with pytest.raises(ValueError, match="FSDP1"):
        info.build(_named(flat))


# ------------------------------------------------------------------ FSDP2 / HSDP
SHARDED = [info.name for info in DATABASE if info.name != "mulo"]  # μP's infshape does not survive fully_shard
SHARDED_STEPS = 50


def _unsharded(case):
    name, backend, kwargs, fixture = w.unpack_case(case)
    module = w.Shapes(fixture=fixture)
    opt = get(name).build(list(module.named_parameters()), run_on=backend, **kwargs)
    w.train_shapes(module, opt, SHARDED_STEPS)
    return w.whole_params(module)


def _check_sharded_runs(ranks, cases) -> None:
    for case in cases:
        ref = _unsharded(case)
        for key in ref:
            for r in ranks[1:]:
                assert torch.equal(ranks[0][case][key], r[case][key]), (case, key)
            diff = float((ranks[0][case][key] - ref[key]).abs().max())
            assert diff <= 1e-6, (case, key, diff)


def test_fsdp2_steps_equal_the_unsharded_run(tmp_path):
    cases = [(n, b) for n in SHARDED for b in ("naive", "fused")]
    _spawn(w.fsdp2_worker, str(tmp_path / "store"), str(tmp_path), cases, SHARDED_STEPS)
    _check_sharded_runs([torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)], cases)


def test_velo_averaging_calls_gathers_whole_tensors_and_equals_the_unsharded_run(tmp_path):
    """With ``max_training_steps`` below ``num_steps`` VeLO sums gradients over calls: it steps DTensors whole."""
    cases = [("velo", "naive", (("num_steps", 40), ("max_training_steps", 20)))]
    _spawn(w.fsdp2_worker, str(tmp_path / "store"), str(tmp_path), cases, SHARDED_STEPS)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    ref = _unsharded(cases[0])
    for key in ref:
        assert torch.equal(ranks[0][cases[0]][key], ref[key]), key  # gathered whole: bit for bit


def test_empty_shards_on_inner_axes_equal_the_unsharded_run(tmp_path):
    """A rank holds nothing of an axis that is not the first work axis (FSDP2 on a one-channel conv
    kernel; tensor parallel's Shard(1) on a one-column matrix): every optimizer, naive and fused."""
    fsdp = [(n, b, (), "empty") for n in SHARDED for b in ("naive", "fused")]
    _spawn(w.fsdp2_worker, str(tmp_path / "fsdp"), str(tmp_path), fsdp, SHARDED_STEPS)
    _check_sharded_runs([torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)], fsdp)
    tp = [(n, "fused", (), "empty") for n in SHARDED]
    _spawn(w.placed_worker, str(tmp_path / "tp"), str(tmp_path), tp, SHARDED_STEPS)
    _check_sharded_runs([torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)], tp)


def test_hsdp_on_a_2x2_mesh_equals_the_unsharded_run(tmp_path):
    cases = [("adafaclo", "naive"), ("velo", "fused"), ("celo2", "fused")]
    _spawn(w.fsdp2_worker, str(tmp_path / "store"), str(tmp_path), cases, SHARDED_STEPS, (2, 2), world=4)
    _check_sharded_runs([torch.load(tmp_path / f"rank{r}.pt") for r in range(4)], cases)


def test_column_wise_tensor_parallel_equals_the_unsharded_run(tmp_path):
    cases = [(n, "fused") for n in SHARDED]
    _spawn(w.placed_worker, str(tmp_path / "store"), str(tmp_path), cases, SHARDED_STEPS)
    _check_sharded_runs([torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)], cases)


def test_mulo_under_fsdp2_without_its_base_shapes_is_refused_clearly(one_rank_group):
    pytest.importorskip("mup")
    from torch.distributed.fsdp import fully_shard

    from pylo.optim import MuLO_naive

    model = w.mup_model()
    fully_shard(model)
    with pytest.raises(ValueError, match="record_base_shapes"):
        MuLO_naive(model.parameters(), network=get("mulo").make_small_network(0))


def test_mulo_under_fsdp2_with_its_base_shapes_restored_equals_the_unsharded_run(tmp_path):
    pytest.importorskip("mup")
    _spawn(w.mulo_fsdp2_worker, str(tmp_path / "store"), str(tmp_path), SHARDED_STEPS)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    module = w.mup_model()
    w.train_mulo(module, SHARDED_STEPS, *w.data())
    for name, p in w.whole_params(module).items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        diff = float((ranks[0][name] - p).abs().max())
        assert diff <= 1e-6, (name, diff)
        assert not torch.equal(p, dict(w.mup_model().named_parameters())[name]), name  # it did train


def test_restore_base_shapes_refuses_shapes_of_another_model():
    pytest.importorskip("mup")
    from pylo.util.mup import record_base_shapes, restore_base_shapes

    shapes = record_base_shapes(w.mup_model())
    other = torch.nn.Sequential(torch.nn.Linear(w.FEATURES, 7))
    with pytest.raises(ValueError, match="recorded base shapes"):
        restore_base_shapes(other, {"0.weight": shapes["0.weight"]})


@pytest.mark.parametrize("name", ["adafaclo", "velo", "celo2"])
def test_a_plain_state_dict_of_sharded_state_resumes_bit_exactly(name, one_rank_group):
    """``opt.state_dict()`` / ``load_state_dict`` (per rank, ``torch.save``-able) with DTensor state: the
    resumed run equals the uninterrupted one bit for bit, and the state tensors stay DTensors."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    def built():
        module = w.Shapes()
        fully_shard(module)
        return module, get(name).build(list(module.named_parameters()), run_on="fused")

    module, opt = built()
    w.train_shapes(module, opt, 3)
    saved = opt.state_dict()
    assert any(isinstance(v, DTensor) for st in saved["state"].values() for v in st.values())
    resumed, opt2 = built()
    resumed.load_state_dict(module.state_dict())
    opt2.load_state_dict(saved)
    for m, o in ((module, opt), (resumed, opt2)):
        for t in range(3, 6):
            o.zero_grad()
            m(t).backward()
            o.step(loss=m(t).detach())
    for n, p in w.whole_params(module).items():
        assert torch.equal(w.whole_params(resumed)[n], p), n


@pytest.mark.parametrize("name,poison,cause", [("adafaclo", "nan", "non-finite"), ("velo", "nan", "non-finite"),
                                               ("celo2", "overflow", "too large for float32")])
def test_a_bad_gradient_in_shards_is_refused_on_every_rank(name, poison, cause, tmp_path):
    _spawn(w.nan_shard_worker, str(tmp_path / "store"), str(tmp_path), name, poison)
    seen = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert all(s["unchanged"] for s in seen)
    assert seen[0]["message"] is not None and seen[0]["message"] == seen[1]["message"]
    assert cause in seen[0]["message"] and "'wide'" in seen[0]["message"]
