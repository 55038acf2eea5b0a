"""The JAX references as learned_optimization-style optimizers and as optax transformations."""

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")

from pylo.reference_jax.adafac_mlp_lopt import AdafacMLPLOpt, MuAdafacMLPLOpt  # noqa: E402
from pylo.reference_jax.optax_adapter import as_optax  # noqa: E402


def _setup():
    lopt = AdafacMLPLOpt(hidden_size=8)
    theta = lopt.init(jax.random.PRNGKey(0))
    params = {"w": jax.numpy.ones((3, 4)), "b": jax.numpy.zeros((4,)), "s": jax.numpy.asarray(0.5)}
    grads = [jax.tree_util.tree_map(lambda p, i=i: 0.1 * (i + 1) * jax.numpy.ones_like(p), params) for i in range(3)]
    return lopt, theta, params, grads


def test_theta_tree_is_named_as_upstream():
    lopt, theta, _, _ = _setup()
    assert set(theta) == {"momentum_decays", "rms_decays", "adafactor_decays", "nn"}
    assert set(theta["nn"]["~"]) == {"w0", "b0", "w1", "b1", "w2", "b2"}
    assert theta["nn"]["~"]["w0"].shape == (39, 8) and theta["nn"]["~"]["w2"].shape == (8, 2)


def test_optax_wrapper_equals_the_lopt_api():
    lopt, theta, params, grads = _setup()
    opt = lopt.opt_fn(theta)
    state = opt.init(params, num_steps=10)
    tx = as_optax(opt, num_steps=10)
    ostate = tx.init(params)
    oparams = params
    for g in grads:
        state = opt.update(state, g, loss=1.0)
        updates, ostate = tx.update(g, ostate, oparams, loss=1.0)
        oparams = optax.apply_updates(oparams, updates)
    for a, b in zip(jax.tree_util.tree_leaves(opt.get_params(state)), jax.tree_util.tree_leaves(oparams)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-7)


def test_num_steps_is_required_and_mulo_needs_its_scales():
    lopt, theta, params, grads = _setup()
    with pytest.raises(ValueError, match="number of steps"):
        lopt.opt_fn(theta).init(params)
    mu = MuAdafacMLPLOpt(hidden_size=8).opt_fn(theta)
    state = mu.init(params, num_steps=5)
    with pytest.raises(ValueError, match="mup_lrs_to_use"):
        mu.update(state, grads[0])


def test_torch_users_need_no_jax(tmp_path):
    """pylo.optim and pylo-convert work with JAX/flax/optax unimportable."""
    theta_file = tmp_path / "theta.state"
    import flax.serialization

    _, theta, _, _ = _setup()
    theta_file.write_bytes(flax.serialization.to_bytes(theta))
    code = f"""
import sys
for name in ("jax", "jaxlib", "flax", "optax"):
    sys.modules[name] = None
import torch
from pylo.converters.cli import main
assert main([{str(theta_file)!r}, {str(tmp_path / 'ckpt')!r}, "--optimizer", "adafaclo"]) == 0
from pylo.optim import AdafacLO
p = torch.nn.Parameter(torch.ones(3))
opt = AdafacLO([p], checkpoint_path={str(tmp_path / 'ckpt')!r})
p.grad = torch.ones(3)
opt.step()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_references_read_their_constants_and_widths_from_the_spec():
    from pylo.reference_jax import common, hyper_v2
    from pylo.reference_jax.celo import Celo
    from pylo.reference_jax.celo2 import Celo2Transformation
    from pylo.spec import features, shapes

    assert common.TANH_TIMESCALES is features.TANH_TIMESCALES
    assert common.FRACTION_OFFSETS is features.FRACTION_OFFSETS
    assert common.factored_dims is shapes.factored_dims
    assert hyper_v2.LOSS_BUFFER_SIZE is features.LOSS_BUFFER_SIZE and hyper_v2.RANK_CLASSES is features.RANK_CLASSES
    velo = hyper_v2.HyperV2()
    assert tuple(velo.group_widths) == features.HYPER_GROUP_WIDTHS and velo.num_lstm_inputs == 30
    assert Celo().num_lstm_inputs == 18
    assert tuple(Celo2Transformation().feature_widths()) == features.HYPER_GROUP_WIDTHS
    assert AdafacMLPLOpt().num_inputs == 39
    small = hyper_v2.HyperV2(initial_momentum_decays=(0.9, 0.99), initial_adafactor_decays=(0.9,))
    assert tuple(small.group_widths) == (1, 1, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 2)
    assert small.num_lstm_inputs == 9 + 9 + 1 + 5 + 2 + 2
