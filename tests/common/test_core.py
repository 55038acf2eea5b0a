"""Shared building blocks: the factoring rule, the work layout, JAX mean semantics, checkpoint I/O."""

import itertools

import numpy as np
import pytest
import torch

from pylo.checkpoint_io import read_checkpoint, write_bytes_atomic, write_checkpoint
from pylo.core.accumulators import init_factored, update_factored
from pylo.core.reduce import mean_over
from pylo.core.clipping import clip_by_global_norm
from pylo.core.features import second_moment_normalize
from pylo.core.layout import from_work, to_work
from pylo.spec.shapes import factored_dims, work_shape
from pylo.errors import CheckpointError


def test_factored_dims_equal_numpy_argsort_without_ties():
    rng = np.random.default_rng(0)
    checked = 0
    for rank in (2, 3, 4):
        for _ in range(200):
            shape = tuple(int(x) for x in rng.integers(1, 40, rank))
            top_two = sorted(shape)[-2:]
            if len(set(shape)) < rank:  # any tie could reorder numpy's result
                continue
            order = np.argsort(shape)
            assert factored_dims(shape) == (int(order[-2]), int(order[-1])), shape
            checked += 1
            assert top_two[0] < top_two[1]
    assert checked > 100


@pytest.mark.parametrize("shape,dims", [
    ((6, 6), (0, 1)), ((64, 64, 3, 3), (0, 1)), ((3, 3, 64, 64), (2, 3)), ((3, 3, 3, 4), (2, 3)),
    ((5, 5, 5), (1, 2)), ((7,), None), ((), None),
])
def test_factored_dims_tie_rule_is_stable(shape, dims):
    assert factored_dims(shape) == dims


def test_work_layout_round_trips_and_views_kernels_as_hwio():
    k = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    w = to_work(k)
    assert w.shape == (4, 5, 3, 2) and w[1, 2, 0, 1] == k[1, 0, 1, 2]
    assert torch.equal(from_work(w, k), k)
    assert to_work(torch.tensor(3.0)).shape == (1,) and from_work(torch.ones(1), torch.tensor(1.0)).shape == ()
    assert to_work(k, "jax").shape == k.shape
    assert work_shape((2, 3, 4, 5)) == (4, 5, 3, 2) and work_shape(()) == (1,)


def test_mean_over_no_axes_is_the_identity_as_in_jax():
    x = torch.tensor([1.0, -2.0, 3.0])
    assert torch.equal(mean_over(x, ()), x)
    assert torch.allclose(second_moment_normalize(x, (), 0.0), torch.sign(x))


def test_factored_accumulator_shapes_follow_upstream():
    for shape in [(4, 6), (3, 4, 5), (7,), (1,)]:
        row, col, diag = init_factored(shape, 3, "cpu")
        dims = factored_dims(shape)
        if dims is None:
            assert row.shape == (0, 3) and diag.shape == shape + (3,)
        else:
            d1, d0 = dims
            assert row.shape == tuple(s for i, s in enumerate(shape) if i != d0) + (3,)
            assert col.shape == tuple(s for i, s in enumerate(shape) if i != d1) + (3,)
            fac_g = update_factored(row, col, diag, torch.randn(shape), torch.tensor([0.9, 0.99, 0.999]))
            assert fac_g.shape == shape + (3,)


def test_global_norm_clipping_matches_optax():
    optax = pytest.importorskip("optax")
    jnp = pytest.importorskip("jax.numpy")
    grads = [torch.randn(3, 4) * 5, torch.randn(2) * 5]
    ours = clip_by_global_norm(grads, 1.0)
    theirs, _ = optax.clip_by_global_norm(1.0).update([jnp.asarray(g.numpy()) for g in grads], None)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), np.asarray(b), rtol=1e-6)
    small = [torch.full((2,), 0.1)]
    assert torch.equal(clip_by_global_norm(small, 1.0)[0], small[0])


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    tensors = {"a": torch.ones(2)}
    import safetensors.torch

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path / "out", {}, tensors)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    write_checkpoint(tmp_path / "out", {"x": 1}, tensors)
    ckpt = read_checkpoint(tmp_path / "out")
    assert ckpt.config["x"] == 1 and set(ckpt.config) == {"x", "pylo"} and torch.equal(ckpt.tensors["a"], tensors["a"])
    write_bytes_atomic(tmp_path / "f.bin", b"abc")
    with pytest.raises(CheckpointError, match="already exists"):
        write_bytes_atomic(tmp_path / "f.bin", b"xyz")
    assert (tmp_path / "f.bin").read_bytes() == b"abc"


def test_torch_state_dict_files_are_read_weights_only(tmp_path):
    torch.save({"network.input.weight": torch.zeros(2, 2)}, tmp_path / "m.pt")
    assert set(read_checkpoint(tmp_path / "m.pt").tensors) == {"network.input.weight"}

    class Evil:
        def __reduce__(self):
            return (print, ("x",))

    torch.save({"a": Evil()}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not a readable torch state dict"):
        read_checkpoint(tmp_path / "bad.pt")


def test_unknown_files_are_refused(tmp_path):
    (tmp_path / "theta.state").write_bytes(b"\x00")
    with pytest.raises(CheckpointError, match="pylo-convert"):
        read_checkpoint(tmp_path / "theta.state")


def test_every_public_optimizer_is_exported():
    import pylo
    import pylo.optim

    for name in pylo.optim.__all__:
        assert getattr(pylo, name) is getattr(pylo.optim, name)
    assert list(itertools.islice(pylo.optim.__all__, 1))
