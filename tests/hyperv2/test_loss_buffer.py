"""The loss buffer of VeLO / Celo (pylo.optim.hyperv2.loss_buffer) against the JAX reference."""

import numpy as np
import pytest
import torch

from pylo.optim.hyperv2 import loss_buffer

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from pylo.parity_tests.fixtures import loss_curve  # noqa: E402
from pylo.reference_jax.hyper_v2 import LossBuffer  # noqa: E402

init_jax = jax.jit(LossBuffer.init)
update_jax = jax.jit(LossBuffer.update)
features_jax = jax.jit(LossBuffer.features)


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


def test_decays_are_within_one_ulp_of_xlas_for_every_horizon():
    # pylo rounds the exact decays once; XLA's float32 log/pow/exp are within an ulp of them
    for horizon in list(range(1, 400)) + [1000, 4321, 150_000]:
        ours = loss_buffer.loss_decays(horizon).numpy()
        theirs = np.asarray(init_jax(horizon)["decays"])
        assert _ulps(ours, theirs).max() <= 1, horizon


@pytest.mark.parametrize("horizon", [10, 50, 100, 1000])
def test_bit_identical_to_the_reference(horizon):
    # horizons where XLA's decays are the correctly rounded ones (the parity fixtures use these)
    losses = loss_curve(60, seed=3)  # falls, rises, plateaus, spikes (the cap binds)
    ours, theirs = loss_buffer.init(horizon), init_jax(horizon)
    assert np.array_equal(ours["decays"].numpy(), np.asarray(theirs["decays"]))
    for loss in losses:
        ours = loss_buffer.update(ours, torch.tensor(loss))
        theirs = update_jax(theirs, jnp.float32(loss))
        for key in ("means", "running_min"):
            assert np.array_equal(ours[key].numpy(), np.asarray(theirs[key])), key
        assert np.array_equal(loss_buffer.features(ours).numpy(), np.asarray(features_jax(theirs)))
        assert ours["iteration"] == int(theirs["iteration"])


def test_feature_semantics():
    state = loss_buffer.init(100)
    for i, loss in enumerate([5.0, 4.0, 3.0, 2.5, 2.0]):
        state = loss_buffer.update(state, torch.tensor(loss))
        feats = loss_buffer.features(state)
        if i < 2:
            assert torch.equal(feats, torch.zeros(9))  # the first two updates say nothing
        else:
            assert torch.equal(feats, -torch.ones(9))  # a falling loss sits at every running minimum
    for loss in [3.0, 4.0, 5.0]:
        state = loss_buffer.update(state, torch.tensor(loss))
    assert (loss_buffer.features(state) > -1).all()  # a rising loss lifts the features
    assert loss_buffer.features(state).abs().max() <= 1


def test_update_leaves_the_old_state_alone():
    state = loss_buffer.init(50)
    new = loss_buffer.update(state, torch.tensor(2.0))
    assert state["iteration"] == 0 and torch.equal(state["means"], torch.zeros(10))
    assert new["iteration"] == 1


def test_loss_spikes_are_capped():
    state = loss_buffer.update(loss_buffer.init(50), torch.tensor(1.0))
    capped = loss_buffer.update(state, torch.tensor(1e9))
    reference = loss_buffer.update(state, torch.tensor(2.0))  # twice the largest average
    assert torch.equal(capped["means"], reference["means"])
