"""Building blocks shared by the JAX references (upstream ``learned_optimizers/common.py``).

Written to compute exactly what upstream computes: accumulators are per-decay
functions vectorised with ``jax.vmap(..., out_axes=-1)``, so states carry a
trailing decay axis and a per-decay step counter ``t`` of shape ``(k,)``.
The one deliberate choice is ``factored_dims``, imported from
``pylo.spec.shapes`` so torch and JAX share one tie-breaking rule. The embeddings'
timescales and offsets are read from ``pylo.spec.features``, the numbers the torch side uses.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pylo.spec.features import FRACTION_OFFSETS, TANH_TIMESCALES  # noqa: F401  (re-exported)
from pylo.spec.shapes import factored_dims  # noqa: F401  (re-exported: the shared rule)


class MomAccumulator(NamedTuple):
    m: Any
    t: Any


class RMSAccumulator(NamedTuple):
    rms: Any
    t: Any


@flax.struct.dataclass
class FactoredAccum:
    v_col: Any
    v_row: Any
    v_diag: Any


class ParamsInState:
    """``get_params``/``set_params`` of a learned_optimization-style optimizer whose state has ``params``."""

    @staticmethod
    def get_params(state):
        return state.params

    @staticmethod
    def set_params(state, params):
        return state.replace(params=params)


class BoundOpt(ParamsInState):
    """A learned optimizer bound to its meta-parameters ``theta`` (upstream's ``opt_fn(theta)``)."""

    #: upstream's message when ``init`` gets no ``num_steps`` (the training horizon)
    no_steps_message = "Must specify number of steps for this lopt!"

    def __init__(self, lopt, theta):
        self.lopt, self.theta = lopt, theta

    def required_steps(self, num_steps):
        """``num_steps`` (the training horizon), which every learned optimizer's ``init`` needs."""
        if num_steps is None:
            raise ValueError(self.no_steps_message)
        return num_steps


def set_decays(obj, momentum, rms, adafactor) -> None:
    """The three accumulator decay lists as tuples on ``obj`` (``initial_{momentum,rms,adafactor}_decays``)."""
    obj.initial_momentum_decays = tuple(momentum)
    obj.initial_rms_decays = tuple(rms)
    obj.initial_adafactor_decays = tuple(adafactor)


class InitUpdate(NamedTuple):
    init: Callable
    update: Callable


def _rolling_mom(decay) -> InitUpdate:
    def init(p):
        return MomAccumulator(m=jax.tree_util.tree_map(jnp.zeros_like, p), t=jnp.asarray(0, jnp.int32))

    def update(state, grad):
        m = jax.tree_util.tree_map(lambda a, b: decay * a + (1 - decay) * b, state.m, grad)
        return MomAccumulator(m=m, t=state.t + 1)

    return InitUpdate(init, update)


def _rolling_rms(decay) -> InitUpdate:
    def init(p):
        return RMSAccumulator(rms=jax.tree_util.tree_map(jnp.zeros_like, p), t=jnp.asarray(0, jnp.int32))

    def update(state, grad):
        d = jnp.clip(decay, 0.0, 1.0)
        rms = jax.tree_util.tree_map(lambda a, b: d * a + (1 - d) * (b * b), state.rms, grad)
        return RMSAccumulator(rms=rms, t=state.t + 1)

    return InitUpdate(init, update)


def safe_rsqrt(x):
    return jax.lax.rsqrt(jnp.maximum(x, 1e-9))


def _factored_rolling(decay, epsilon: float = 1e-30) -> InitUpdate:
    def init_one(p):
        dims = factored_dims(p.shape)
        if dims is None:
            empty = jnp.asarray([], jnp.float32)
            return empty, empty, jnp.zeros(p.shape, jnp.float32)
        d1, d0 = dims
        return (jnp.zeros(np.delete(p.shape, d0), jnp.float32), jnp.zeros(np.delete(p.shape, d1), jnp.float32),
                jnp.asarray([], jnp.float32))

    def init(params):
        leaves, tree = jax.tree_util.tree_flatten(params)
        rows, cols, diags = zip(*[init_one(p) for p in leaves]) if leaves else ((), (), ())
        unflat = lambda xs: jax.tree_util.tree_unflatten(tree, list(xs))  # noqa: E731
        return FactoredAccum(v_row=unflat(rows), v_col=unflat(cols), v_diag=unflat(diags))

    def update_one(v_col, v_row, v_diag, g):
        d = jnp.clip(decay, 0.0, 1.0)
        mix = 1.0 - d
        grad_sqr = g * g + epsilon
        dims = factored_dims(g.shape)
        if dims is None:
            new_v = d * v_diag + mix * grad_sqr
            empty = jnp.asarray([], jnp.float32)
            return empty, empty, new_v, g * safe_rsqrt(new_v + 1e-9)
        d1, d0 = dims
        new_row = d * v_row + mix * jnp.mean(grad_sqr, axis=d0)
        new_col = d * v_col + mix * jnp.mean(grad_sqr, axis=d1)
        reduced_d1 = d1 - 1 if d1 > d0 else d1
        row_mean = jnp.mean(new_row, axis=reduced_d1, keepdims=True)
        row_factor = safe_rsqrt(new_row / (row_mean + 1e-9))
        col_factor = safe_rsqrt(new_col)
        fac_g = g * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
        return new_col, new_row, jnp.asarray([], jnp.float32), fac_g

    def update(state, grads):
        cols, tree = jax.tree_util.tree_flatten(state.v_col)
        rows = jax.tree_util.tree_leaves(state.v_row)
        diags = jax.tree_util.tree_leaves(state.v_diag)
        gs = jax.tree_util.tree_leaves(grads)
        assert len(gs) == len(cols) == len(rows) == len(diags)
        results = [update_one(*args) for args in zip(cols, rows, diags, gs)]
        unflat = lambda i: jax.tree_util.tree_unflatten(tree, [r[i] for r in results])  # noqa: E731
        return FactoredAccum(v_col=unflat(0), v_row=unflat(1), v_diag=unflat(2)), unflat(3)

    return InitUpdate(init, update)


def _vmap_over_decays(make: Callable[[Any], InitUpdate], decays) -> InitUpdate:
    def init(p):
        return jax.vmap(lambda d: make(d).init(p), out_axes=-1)(decays)

    def update(state, grads):
        return jax.vmap(lambda s, d: make(d).update(s, grads), in_axes=-1, out_axes=-1)(state, decays)

    return InitUpdate(init, update)


def vec_rolling_mom(decays) -> InitUpdate:
    return _vmap_over_decays(_rolling_mom, decays)


def vec_rolling_rms(decays) -> InitUpdate:
    return _vmap_over_decays(_rolling_rms, decays)


def vec_factored_rolling(decays) -> InitUpdate:
    return _vmap_over_decays(_factored_rolling, decays)


def second_moment_normalizer(x, axis, eps=1e-5):
    return x * jax.lax.rsqrt(eps + jnp.mean(jnp.square(x), axis=axis, keepdims=True))


def tanh_embedding(x):
    taus = jnp.asarray(TANH_TIMESCALES, dtype=jnp.float32)
    return jax.vmap(lambda tau: jnp.tanh(x / tau - 1.0))(taus)


def fractional_tanh_embedding(x):
    offsets = jnp.asarray(FRACTION_OFFSETS, dtype=jnp.float32)
    return jax.vmap(lambda off: jnp.tanh((x - off) * 10.0))(offsets)


def decay_to_param(x):
    return jnp.log(1 - x) / 10.0


def param_to_decay(x):
    return 1 - jnp.exp(x * 10.0)


def truncated_normal_init(key, shape, fan_in):
    """Haiku's ``TruncatedNormal(stddev=1/sqrt(fan_in))``: truncated at +-2 before scaling."""
    stddev = 1.0 / np.sqrt(fan_in)
    return (stddev * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)).astype(jnp.float32)


def adafactor_feature_groups(m, v_col, v_row, v_diag, shape, *, diag_mom_eps):
    """``[row, col, rsqrt(row + 1e-8), rsqrt(col + 1e-8), fac_mom_mult]`` as upstream builds them.

    Factored tensors tile ``v_row``/``v_col`` over the axis they average out;
    others use ``v_diag`` twice and ``fac_mom_mult = m * (v_diag + eps) ** -0.5``
    (AdafacMLPLOpt: eps 1e-6; HyperV2 and Celo: no eps).
    """
    dims = factored_dims(shape)
    if dims is None:
        mult = m * v_diag ** -0.5 if not diag_mom_eps else m * (v_diag + diag_mom_eps) ** -0.5
        return [v_diag, v_diag, jax.lax.rsqrt(v_diag + 1e-8), jax.lax.rsqrt(v_diag + 1e-8), mult]
    d1, d0 = dims
    tile = [1] * (1 + len(shape))
    tile[d0] = shape[d0]
    row_feat = jnp.tile(jnp.expand_dims(v_row, d0), tile)
    tile = [1] * (1 + len(shape))
    tile[d1] = shape[d1]
    col_feat = jnp.tile(jnp.expand_dims(v_col, d1), tile)
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    row_col_mean = jnp.mean(v_row, axis=reduced_d1, keepdims=True)
    row_factor = safe_rsqrt(v_row / (row_col_mean + 1e-9))
    col_factor = safe_rsqrt(v_col)
    return [row_feat, col_feat, jax.lax.rsqrt(row_feat + 1e-8), jax.lax.rsqrt(col_feat + 1e-8),
            m * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)]


def hyper_feature_groups(p, g, m, rms, fac_g, v_col, v_row, v_diag, *, rms_eps, diag_groups):
    """HyperV2 / Celo / CELO2 ``_ff_mod`` inputs (before normalisation), in upstream's order.

    ``diag_groups``: for rank < 2, add the diagonal Adafactor groups (HyperV2 and
    Celo do, with ``fac_mom_mult = m * v_diag**-0.5``; CELO2 does not).
    ``rms_eps``: 1e-6 (HyperV2, Celo) or 1e-8 (CELO2).
    """
    rsqrt = jax.lax.rsqrt(rms + rms_eps)
    inps = [jnp.expand_dims(g, -1), jnp.expand_dims(jnp.clip(g, -0.1, 0.1), -1), jnp.expand_dims(p, -1), m, rms,
            m * rsqrt, rsqrt, fac_g, jnp.expand_dims(g, -1) * rsqrt]
    dims = factored_dims(g.shape)
    if dims is not None or diag_groups:
        inps += adafactor_feature_groups(m, v_col, v_row, v_diag, g.shape, diag_mom_eps=0.0)
    return inps


def split_input_mlp(inps, w0, b0, dense_w, dense_b, act=jax.nn.relu):
    """``act(sum_i inps[i] @ w0[i] + b0)`` then dense layers, as upstream's unrolled first layer."""
    o = jnp.zeros(inps[0].shape[:-1] + w0[0].shape[1:])
    for x, w in zip(inps, w0):
        o = o + x @ w
    o = o + jnp.broadcast_to(b0, list(o.shape[:-1]) + [o.shape[-1]])
    o = act(o)
    for i, (w, b) in enumerate(zip(dense_w, dense_b)):
        o = o @ w
        o = o + jnp.broadcast_to(b, list(o.shape[:-1]) + [o.shape[-1]])
        if i != len(dense_w) - 1:
            o = act(o)
    return o
