"""JAX reference of AdafacMLPLOpt and of μLO's MuAdafacMLPLOpt.

Follows ``learned_optimization/learned_optimizers/adafac_mlp_lopt.py`` and
``mu_learned_optimization/src/mup_adafac_mlp_lopt.py`` (the ``concat_weights``
evaluation of the network). The meta-parameter tree is upstream's, so real
checkpoints load here and ours load there::

    {"momentum_decays": (3,), "rms_decays": (1,), "adafactor_decays": (3,),
     "nn": {"~": {"w0": (39, H), "b0": (H,), "w1": (H, H), "b1": (H,), "w2": (H, 2), "b2": (2,)}}}

(Haiku ``(in, out)`` weights; ``hidden_layers=2`` gives ``w0..w2``.) The seeded
initialisation draws Haiku's distributions (truncated normal, 1/sqrt(fan_in))
from our own key sequence, so seeds do not reproduce upstream's draws.

Use it like learned_optimization::

    lopt = AdafacMLPLOpt(hidden_size=32, step_mult=0.01)
    theta = lopt.init(jax.random.PRNGKey(0))
    opt = lopt.opt_fn(theta)
    state = opt.init(params, num_steps=1000)
    state = opt.update(state, grads, loss=loss)
    params = opt.get_params(state)

or as optax: ``reference_jax.optax_adapter.as_optax(opt, num_steps)``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from pylo.reference_jax import common
from pylo.spec.features import adafac_input_size

NORMALIZER_EPS = 1e-5


@flax.struct.dataclass
class AdafacMLPLOptState:
    params: Any
    state: Any
    mom_rolling: common.MomAccumulator
    rms_rolling: common.RMSAccumulator
    fac_rolling_features: common.FactoredAccum
    num_steps: jnp.ndarray
    iteration: jnp.ndarray


class AdafacMLPLOpt:
    """Upstream ``AdafacMLPLOpt`` (defaults as upstream: hidden 4, 2 hidden layers, step_mult 1e-3)."""

    def __init__(self, exp_mult=0.001, step_mult=0.001, hidden_size=4, hidden_layers=2,
                 initial_momentum_decays=(0.9, 0.99, 0.999), initial_rms_decays=(0.999,),
                 initial_adafactor_decays=(0.9, 0.99, 0.999)):
        self.exp_mult = exp_mult
        self.step_mult = step_mult
        self.hidden_size = hidden_size
        self.hidden_layers = hidden_layers
        common.set_decays(self, initial_momentum_decays, initial_rms_decays, initial_adafactor_decays)

    # ----------------------------------------------------------------- theta
    @property
    def num_inputs(self) -> int:
        return adafac_input_size(len(self.initial_momentum_decays), len(self.initial_rms_decays),
                                 len(self.initial_adafactor_decays))

    def init(self, key) -> dict:
        """Fresh theta: truncated-normal weights, zero biases, zero decay offsets."""
        sizes = [self.num_inputs] + [self.hidden_size] * self.hidden_layers + [2]
        keys = jax.random.split(key, len(sizes) - 1)
        nn = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            nn[f"w{i}"] = common.truncated_normal_init(keys[i], (fan_in, fan_out), fan_in)
            nn[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
        return {  # keys in sorted order, as Haiku writes them
            "adafactor_decays": jnp.zeros([len(self.initial_adafactor_decays)], jnp.float32),
            "momentum_decays": jnp.zeros([len(self.initial_momentum_decays)], jnp.float32),
            "nn": {"~": dict(sorted(nn.items()))},
            "rms_decays": jnp.zeros([len(self.initial_rms_decays)], jnp.float32),
        }

    # --------------------------------------------------------- per tensor
    def _mod(self, nn_params, training_step_feature, p, g, m, rms, fac_g, v_col, v_row, v_diag, lr_scale=None):
        did_reshape = not p.shape
        if did_reshape:
            p, g, m, rms, fac_g, v_diag, v_col, v_row = (
                jnp.expand_dims(x, 0) for x in (p, g, m, rms, fac_g, v_diag, v_col, v_row))
            if lr_scale is not None:
                lr_scale = jnp.expand_dims(lr_scale, 0)
        direction, magnitude = self._network(nn_params, training_step_feature, p, g, m, rms, fac_g, v_col, v_row,
                                             v_diag)
        new_p = self._apply_step(p, direction, magnitude, lr_scale)
        return jnp.squeeze(new_p, 0) if did_reshape else new_p

    def _network(self, nn_params, training_step_feature, p, g, m, rms, fac_g, v_col, v_row, v_diag):
        """Direction and magnitude of one (at least 1-D) tensor: the 39 features through the MLP."""
        rsqrt = jax.lax.rsqrt(rms + 1e-6)
        inps = [jnp.expand_dims(g, -1), jnp.expand_dims(p, -1), m, rms, m * rsqrt, rsqrt, fac_g]
        inps += common.adafactor_feature_groups(m, v_col, v_row, v_diag, g.shape, diag_mom_eps=1e-6)

        axis = list(range(len(p.shape)))
        net = common.second_moment_normalizer(jnp.concatenate(inps, axis=-1), axis=axis, eps=NORMALIZER_EPS)
        stacked = jnp.reshape(training_step_feature, [1] * len(axis) + list(training_step_feature.shape[-1:]))
        net = jnp.concatenate([net, jnp.tile(stacked, list(p.shape) + [1])], axis=-1)
        n_layers = self.hidden_layers + 1
        for i in range(n_layers):
            w, b = nn_params["~"][f"w{i}"], nn_params["~"][f"b{i}"]
            net = net @ w + jnp.broadcast_to(b, list(net.shape[:-1]) + [w.shape[-1]])
            if i != n_layers - 1:
                net = jax.nn.relu(net)
        return net[..., 0], net[..., 1]

    def _apply_step(self, p, direction, magnitude, lr_scale):
        """``p - d * exp(mu * exp_mult) * step_mult`` (times μLO's per-tensor scale)."""
        step = direction * jnp.exp(magnitude * self.exp_mult) * self.step_mult
        step = step.reshape(p.shape)
        return p - step if lr_scale is None else p - step * lr_scale

    # --------------------------------------------------------- the optimizer
    def rolling(self, theta):
        def learned(initial, offsets):
            return common.param_to_decay(common.decay_to_param(jnp.asarray(initial)) + offsets)

        return (common.vec_rolling_mom(learned(self.initial_momentum_decays, theta["momentum_decays"])),
                common.vec_rolling_rms(learned(self.initial_rms_decays, theta["rms_decays"])),
                common.vec_factored_rolling(learned(self.initial_adafactor_decays, theta["adafactor_decays"])))

    def preprocess_grads(self, grads):
        """Upstream AdafacMLPLOpt uses the raw gradients."""
        return grads

    def lr_scales(self, model_state, params):
        return None

    def opt_fn(self, theta) -> "LOptimizer":
        return LOptimizer(self, theta)


class MuAdafacMLPLOpt(AdafacMLPLOpt):
    """μLO: global-norm clip at 1.0 (``clip_grad``), ``nan_to_num``, per-tensor μP lr scales.

    The scales come from ``model_state["mup_lrs_to_use"]``, a tree shaped like
    the params with one scalar per leaf, as in upstream.
    """

    def __init__(self, *args, clip_grad=False, mup_lrs=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.clip_grad = clip_grad
        del mup_lrs  # upstream resets it to None

    def preprocess_grads(self, grads):
        if self.clip_grad:
            grads, _ = optax.clip_by_global_norm(1.0).update(grads, None)
        return jax.tree_util.tree_map(jnp.nan_to_num, grads)

    def lr_scales(self, model_state, params):
        if model_state is None or "mup_lrs_to_use" not in model_state:
            raise ValueError("MuAdafacMLPLOpt.update needs model_state['mup_lrs_to_use'] (one scale per leaf)")
        return model_state["mup_lrs_to_use"]


class LOptimizer(common.BoundOpt):
    """learned_optimization-style optimizer: ``init(params, num_steps)`` / ``update(state, grads, loss)``."""

    def init(self, params, model_state=None, num_steps=None, key=None) -> AdafacMLPLOptState:
        num_steps = self.required_steps(num_steps)
        mom, rms, fac = self.lopt.rolling(self.theta)
        return AdafacMLPLOptState(params=params, state=model_state, rms_rolling=rms.init(params),
                                  mom_rolling=mom.init(params), fac_rolling_features=fac.init(params),
                                  iteration=jnp.asarray(0, jnp.int32), num_steps=jnp.asarray(num_steps))

    def update(self, opt_state: AdafacMLPLOptState, grad, loss=None, model_state=None, is_valid=False, key=None
               ) -> AdafacMLPLOptState:
        del loss, is_valid, key  # unused by this optimizer, as upstream
        grad = self.lopt.preprocess_grads(grad)
        mom, rms, fac = self.lopt.rolling(self.theta)
        next_mom = mom.update(opt_state.mom_rolling, grad)
        next_rms = rms.update(opt_state.rms_rolling, grad)
        next_fac, fac_g = fac.update(opt_state.fac_rolling_features, grad)
        step_feature = common.tanh_embedding(opt_state.iteration)
        fun = functools.partial(self.lopt._mod, self.theta["nn"], step_feature)
        args = [opt_state.params, grad, next_mom.m, next_rms.rms, fac_g, next_fac.v_col, next_fac.v_row,
                next_fac.v_diag]
        scales = self.lopt.lr_scales(model_state, opt_state.params)
        if scales is not None:
            args.append(scales)
        next_params = jax.tree_util.tree_map(fun, *args)
        return AdafacMLPLOptState(params=next_params, mom_rolling=next_mom, rms_rolling=next_rms,
                                  fac_rolling_features=next_fac, iteration=opt_state.iteration + 1,
                                  state=model_state, num_steps=opt_state.num_steps)
