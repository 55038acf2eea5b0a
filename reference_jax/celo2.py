"""JAX reference of CELO2 / CELO2-base and of scaling_l2o's ``Celo2LOpt`` wrapper.

Follows ``amoudgl/celo: celo/optimizers/celo2_optax.py`` (the learned update,
``Celo2Transformation`` / ``scale_by_celo2``) and ``xiaol827/ELO:
src/learned_optimizers/celo2_lopt.py`` (the full optimizer: optax
``multi_transform`` of the CELO2 chain and AdamW for 1-D / ``embed``
leaves, with a warmup-cosine schedule). Only inference is modelled. The theta
tree is upstream's, so real checkpoints load here and ours load there::

    {"ff_mod_stack": {"~": {"w0__0".."w0__13": (d_i, H), "b0": (H,),
                            "w1": (H, H), "b1": (H,), "w2": (H, 3), "b2": (3,)}}}

with ``d_i = (1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)`` and no stack axis.
The seeded initialisation draws Haiku's distributions from our own keys.

Learning-rate mapping to the torch optimizers (which have no internal
schedule): ``init_lr = peak_lr = end_lr = lr`` makes ``lr_fn`` the constant
``float32(lr)`` at every step, which is what torch's ``lr`` is.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from pylo.reference_jax import common
from pylo.spec.features import celo2_group_widths

FF = "ff_mod_stack"
NORMALIZER_EPS = 1e-9  # Celo2's second-moment normaliser
RMS_EPS = 1e-8
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(x, coeffs, steps: int = 5, eps: float = 1e-8):
    """``orthogonalize_via_newton_schulz`` over the last two axes (batched over the others)."""
    coeffs = jnp.asarray(coeffs).astype(x.dtype)
    swap = x.shape[-2] > x.shape[-1]
    if swap:
        x = jnp.swapaxes(x, -2, -1)
    x = x / (jnp.linalg.norm(x, axis=(-2, -1), keepdims=True) + eps)

    def body(_, x):
        a = x @ jnp.swapaxes(x, -2, -1)
        b = coeffs[1] * a + coeffs[2] * a @ a  # (c * a) @ a, as upstream's precedence gives
        return coeffs[0] * x + b @ x

    x = jax.lax.fori_loop(0, steps, body, x)
    return jnp.swapaxes(x, -2, -1) if swap else x


def normalize(x, axis, eps=NORMALIZER_EPS):
    return x * jax.lax.rsqrt(eps + jnp.mean(jnp.square(x), axis=axis, keepdims=True))


@flax.struct.dataclass
class Celo2State:
    """Optax state of :class:`Celo2Transformation` (upstream's field order)."""

    rms_rolling: Any
    mom_rolling: Any
    fac_rolling: Any
    iteration: jnp.ndarray


class Celo2Transformation:
    """The learned CELO2 update (upstream defaults: CELO2; ``orthogonalize=False`` is CELO2-base).

    ``update`` returns the raw step (not negated, no learning rate), as upstream.
    """

    def __init__(self, theta=None, ff_hidden_size=8, ff_hidden_layers=2,
                 initial_momentum_decays=(0.9, 0.99, 0.999), initial_rms_decays=(0.95,),
                 initial_adafactor_decays=(0.9, 0.99, 0.999), exp_mult=0.0, rmsmult=1.0,
                 param_scale_mult=False, mlp_activation="relu", orthogonalize=True, ns_coeffs=NS_COEFFS,
                 ns_iters=5, ns_eps=1e-8):
        if mlp_activation not in ("relu", "tanh"):
            raise ValueError(f"Invalid MLP activation: {mlp_activation}")
        self.theta = theta
        common.set_decays(self, initial_momentum_decays, initial_rms_decays, initial_adafactor_decays)
        vars(self).update(ff_hidden_size=ff_hidden_size, ff_hidden_layers=ff_hidden_layers, exp_mult=exp_mult,
                          rmsmult=rmsmult, param_scale_mult=param_scale_mult)
        self.act = jax.nn.relu if mlp_activation == "relu" else jax.nn.tanh
        self.orthogonalize = orthogonalize
        self.ns_coeffs = jnp.asarray(ns_coeffs)
        self.ns_iters = ns_iters
        self.ns_eps = ns_eps

    # ----------------------------------------------------------------- theta
    def feature_widths(self):
        """The 14 groups' widths (``w0__0 .. w0__13``), as the features have them: ``m / sqrt(rms)`` and
        ``fac_mom_mult`` broadcast to ``max(k_m, k_rms)`` and ``max(k_m, k_fac)`` channels, which is
        upstream's ``k_m`` for every decay count its network runs with (``k_m`` at least ``k_rms``, ``k_fac``)."""
        return celo2_group_widths(len(self.initial_momentum_decays), len(self.initial_rms_decays),
                                  len(self.initial_adafactor_decays), factored=True)

    def init_meta_params(self, key) -> dict:
        """Fresh theta: truncated-normal weights (1/sqrt(fan_in)), zero biases."""
        widths = self.feature_widths()
        sizes = [self.ff_hidden_size] * self.ff_hidden_layers + [3]
        keys = jax.random.split(key, len(widths) + len(sizes))
        total = sum(widths)
        ff = {f"w0__{i}": common.truncated_normal_init(keys[i], (d, sizes[0]), total) for i, d in enumerate(widths)}
        ff["b0"] = jnp.zeros((sizes[0],), jnp.float32)
        for j in range(1, len(sizes)):
            ff[f"w{j}"] = common.truncated_normal_init(keys[len(widths) + j], (sizes[j - 1], sizes[j]), sizes[j - 1])
            ff[f"b{j}"] = jnp.zeros((sizes[j],), jnp.float32)
        return {FF: {"~": dict(sorted(ff.items()))}}

    # --------------------------------------------------------- per tensor
    def ff_apply(self, ff_params, p, g, m, rms, fac_g, v_col, v_row):
        """Upstream ``_ff_mod``: the step of one tensor (shape of ``p``)."""
        did_reshape = not p.shape
        if did_reshape:
            p, g, m, rms, fac_g, v_col, v_row = (jnp.expand_dims(x, 0) for x in (p, g, m, rms, fac_g, v_col, v_row))
        inps = common.hyper_feature_groups(p, g, m, rms, fac_g, v_col, v_row, None, rms_eps=RMS_EPS,
                                           diag_groups=False)
        mod = ff_params["~"]
        n_dense = self.ff_hidden_layers
        axis = list(range(len(p.shape)))[-2:]
        inps = [normalize(x, axis) for x in inps]
        out = common.split_input_mlp(inps, [mod[f"w0__{i}"] for i in range(len(inps))], mod["b0"],
                                     [mod[f"w{j}"] for j in range(1, n_dense + 1)],
                                     [mod[f"b{j}"] for j in range(1, n_dense + 1)], act=self.act)
        direction, magnitude = out[..., 0], out[..., 1]
        mag = jnp.exp(magnitude * self.exp_mult)
        if self.param_scale_mult:
            step = direction * (jnp.sqrt(jnp.mean(jnp.square(p)) + 1e-9) * mag)
        else:
            step = direction * mag
        if self.orthogonalize and step.ndim >= 2:
            step = newton_schulz(step, self.ns_coeffs, self.ns_iters, self.ns_eps)
        step = normalize(step, axis)
        step = (step * self.rmsmult).reshape(p.shape)
        return jnp.squeeze(step, 0) if did_reshape else step

    # ------------------------------------------------------- optax-like API
    def accumulators(self):
        return (common.vec_rolling_mom(jnp.asarray(self.initial_momentum_decays)),
                common.vec_rolling_rms(jnp.asarray(self.initial_rms_decays)),
                common.vec_factored_rolling(jnp.asarray(self.initial_adafactor_decays)))

    def init(self, params) -> Celo2State:
        mom, rms, fac = self.accumulators()
        return Celo2State(rms_rolling=rms.init(params), mom_rolling=mom.init(params), fac_rolling=fac.init(params),
                          iteration=jnp.asarray(0, jnp.int32))

    def update(self, grads, state: Celo2State, params):
        iteration = optax.safe_increment(state.iteration)
        grads = jax.tree_util.tree_map(lambda x: jnp.clip(x, -1000.0, 1000.0), grads)
        mom, rms, fac = self.accumulators()
        next_mom = mom.update(state.mom_rolling, grads)
        next_rms = rms.update(state.rms_rolling, grads)
        next_fac, fac_g = fac.update(state.fac_rolling, grads)
        step = jax.tree_util.tree_map(lambda *a: self.ff_apply(self.theta[FF], *a), params, grads, next_mom.m,
                                      next_rms.rms, fac_g, next_fac.v_col, next_fac.v_row)
        return step, Celo2State(mom_rolling=next_mom, rms_rolling=next_rms, fac_rolling=next_fac,
                                iteration=iteration)


def scale_by_celo2(theta, **config) -> optax.GradientTransformation:
    t = Celo2Transformation(theta=theta, **config)
    return optax.GradientTransformation(t.init, lambda u, s, params=None: t.update(u, s, params))


def warmup_cosine(init_lr, peak_lr, warmup, decay_steps, end_lr):
    """scaling_l2o's tracer-safe warmup + cosine schedule (float32)."""

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        wf = jnp.maximum(jnp.asarray(warmup, jnp.float32), 1.0)
        df = jnp.maximum(jnp.asarray(decay_steps, jnp.float32), 1.0)
        warm = init_lr + (peak_lr - init_lr) * jnp.minimum(step / wf, 1.0)
        progress = jnp.clip((step - wf) / jnp.maximum(df - wf, 1.0), 0.0, 1.0)
        cos = end_lr + (peak_lr - end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < wf, warm, cos)

    return schedule


def is_adam_leaf(path, value) -> bool:
    """scaling_l2o's routing: 1-D and scalar leaves, and any leaf whose path mentions ``embed``."""
    return value.ndim <= 1 or "embed" in jax.tree_util.keystr(path)


@flax.struct.dataclass
class Celo2LOptState:
    params: Any
    state: Any
    optax_state: Any
    iteration: jnp.ndarray
    num_steps: jnp.ndarray
    scheduled_lr: jnp.ndarray


class Celo2LOpt:
    """scaling_l2o ``Celo2LOpt`` at inference (no checkpoint loading: pass theta to ``opt_fn``)."""

    def __init__(self, init_lr=0.0, peak_lr=1e-3, warmup_steps=0, warmup_fraction=0.0, end_lr=1e-5,
                 weight_decay=0.0, adam_lr_mult=1.0, adam_beta1=0.9, adam_beta2=0.95, adam_weight_decay=None,
                 use_adamw_for_1d=True, orthogonalize=True, clip_grad=False, clip_norm=1.0, **celo2_kwargs):
        self.init_lr, self.peak_lr, self.end_lr = init_lr, peak_lr, end_lr
        self.warmup_steps, self.warmup_fraction = warmup_steps, warmup_fraction
        self.weight_decay = weight_decay
        self.adam_lr_mult, self.adam_beta1, self.adam_beta2 = adam_lr_mult, adam_beta1, adam_beta2
        self.adam_weight_decay = weight_decay if adam_weight_decay is None else adam_weight_decay
        self.use_adamw_for_1d = use_adamw_for_1d
        self.orthogonalize = orthogonalize
        self.clip_grad, self.clip_norm = clip_grad, clip_norm
        self.celo2_kwargs = celo2_kwargs

    def init(self, key) -> dict:
        return Celo2Transformation(orthogonalize=self.orthogonalize, **self.celo2_kwargs).init_meta_params(key)

    def schedule(self, num_steps):
        warmup = self.warmup_steps
        if self.warmup_fraction > 0:
            warmup = jnp.float32(self.warmup_fraction * num_steps)
        return warmup_cosine(self.init_lr, self.peak_lr, warmup, num_steps, self.end_lr)

    def optimizer(self, theta, params, num_steps) -> optax.GradientTransformation:
        lr_fn = self.schedule(num_steps)
        chain = optax.chain(scale_by_celo2(theta, orthogonalize=self.orthogonalize, **self.celo2_kwargs),
                            optax.add_decayed_weights(self.weight_decay), optax.scale_by_learning_rate(lr_fn))
        if not self.use_adamw_for_1d:
            return chain
        adam = optax.adamw(lambda t: self.adam_lr_mult * lr_fn(t), b1=self.adam_beta1, b2=self.adam_beta2,
                           weight_decay=self.adam_weight_decay)
        labels = jax.tree_util.tree_map_with_path(lambda path, v: "adam" if is_adam_leaf(path, v) else "celo2",
                                                  params)
        return optax.multi_transform({"celo2": chain, "adam": adam}, labels)

    def opt_fn(self, theta) -> "Celo2Opt":
        return Celo2Opt(self, theta)


class Celo2Opt(common.BoundOpt):
    no_steps_message = "Must specify num_steps for Celo2LOpt!"

    def init(self, params, model_state=None, num_steps=None, key=None) -> Celo2LOptState:
        num_steps = self.required_steps(num_steps)
        opt = self.lopt.optimizer(self.theta, params, num_steps)
        return Celo2LOptState(params=params, state=model_state, optax_state=opt.init(params),
                              iteration=jnp.asarray(0, jnp.int32), num_steps=jnp.asarray(num_steps, jnp.int32),
                              scheduled_lr=jnp.asarray(self.lopt.schedule(num_steps)(0), jnp.float32))

    def update(self, opt_state: Celo2LOptState, grad, loss=None, model_state=None, is_valid=False, key=None):
        del loss, is_valid, key
        params = opt_state.params
        if self.lopt.clip_grad:
            grad, _ = optax.clip_by_global_norm(self.lopt.clip_norm).update(grad, None)
        opt = self.lopt.optimizer(self.theta, params, opt_state.num_steps)
        updates, optax_state = opt.update(grad, opt_state.optax_state, params)
        next_iteration = opt_state.iteration + 1
        return Celo2LOptState(params=optax.apply_updates(params, updates),
                              state=model_state if model_state is not None else opt_state.state,
                              optax_state=optax_state, iteration=next_iteration, num_steps=opt_state.num_steps,
                              scheduled_lr=jnp.asarray(self.lopt.schedule(opt_state.num_steps)(next_iteration),
                                                       jnp.float32))
