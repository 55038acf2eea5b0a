"""JAX reference of HyperV2, the architecture of VeLO (and, with :mod:`.celo`, of Celo v1).

Follows ``learned_optimization/research/general_lopt/hyper_v2.py`` with every
ablation flag at its default (the released VeLO): a per-tensor LSTM reads 30
features of each tensor plus the loss history, mixes them across tensors (a
max-pool), and emits ``param_inits`` control values and a learning-rate
multiplier per tensor; the controls interpolate a bank of ``param_inits``
small MLPs, which then compute the per-element step.

The meta-parameter tree is upstream's, so real checkpoints load here and ours
load there (``lstm_hidden_size=512, param_inits=256`` shown)::

    {"ff_mod_stack": {"~": {"w0__0".."w0__13": (256, d_i, 4), "b0": (256, 4), "w1": (256, 4, 4),
                            "b1": (256, 4), "w2": (256, 4, 3), "b2": (256, 3)}},
     "lstm_init_state": LSTMState(hidden=(1, 512), cell=(1, 512)),
     "rnn_params": {"linear": {w: (30, 512), b}, "linear_1": ..., "linear_2": ...,
                    "rnn/linear": {w: (1024, 2048), b: (2048,)},
                    "rnn_to_controls": {w: (512, 256), b}, "step_size": {w: (512, 1), b: (1,)}}}

Upstream quirks kept on purpose: the first mixing layer (``linear``) is
computed and discarded; the LSTM feature ``var_rms`` is centred on the mean
of the *momentum*; the learning-rate multiplier is the raw linear output;
with ``use_bugged_next_lstm_state`` the LSTM state never advances and with
``use_bugged_loss_features`` the loss buffer's horizon is 10 steps whatever
``num_steps`` is. The seeded initialisation draws Haiku's distributions from
our own key sequence, so seeds do not reproduce upstream's draws.

Usage mirrors learned_optimization::

    lopt = HyperV2(lstm_hidden_size=512, param_inits=256, use_bugged_loss_features=False)
    opt = lopt.opt_fn(lopt.init(jax.random.PRNGKey(0)))
    state = opt.init(params, num_steps=1000)
    state = opt.update(state, grads, loss=loss)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pylo.reference_jax import common
from pylo.spec.features import LOSS_BUFFER_SIZE, RANK_CLASSES, hyper_group_widths, velo_lstm_input_size

GRAD_CLIP = 1000.0
RMS_EPS = 1e-6
NORMALIZER_EPS = 1e-5
BUGGED_LOSS_HORIZON = 10


class LSTMState(NamedTuple):
    """Haiku's ``hk.LSTMState`` (same field order, so flax writes ``{hidden, cell}``)."""

    hidden: Any
    cell: Any


def as_lstm_state(x) -> LSTMState:
    """An ``LSTMState`` from a namedtuple or from a restored ``{hidden, cell}`` dict."""
    if isinstance(x, dict):
        return LSTMState(x["hidden"], x["cell"])
    return LSTMState(x.hidden, x.cell)


# ----------------------------------------------------------------- loss buffer
class LossBuffer:
    """``BufferLossAccumulators``: ten loss averages with half-lives from 10 to ``num_steps``."""

    @staticmethod
    def init(num_steps):
        halflife = jnp.logspace(1, jnp.log10(num_steps), LOSS_BUFFER_SIZE)
        decays = jnp.exp(-1.0 / halflife)
        return {"means": jnp.zeros((LOSS_BUFFER_SIZE,), jnp.float32),
                "iteration": jnp.asarray(0, jnp.int32),
                "running_min": 999999999999.0 * jnp.ones((LOSS_BUFFER_SIZE,), jnp.float32),
                "decays": decays}

    @staticmethod
    def update(state, loss):
        decays, it = state["decays"], state["iteration"]
        debiased = state["means"] / (1 - decays ** (it + 1))
        # the loss is capped at twice the largest running average (the loss itself on the first call)
        cap = jnp.abs(jnp.where(it == 0, loss, jnp.max(debiased))) * 2
        loss = jnp.minimum(cap, loss)
        means = state["means"] * decays + loss * (1.0 - decays)
        debiased = means / (1 - decays ** (it + 1))
        return {"means": means, "iteration": it + 1,
                "running_min": jnp.minimum(state["running_min"], debiased), "decays": decays}

    @staticmethod
    def features(state):
        """Nine values in [-1, 1]: how far each average sits above its running minimum (0 for 2 steps)."""
        decays, it = state["decays"], state["iteration"]
        debiased = state["means"] / (1 - decays ** it)
        running_min = state["running_min"][:-1]
        den = jnp.maximum(1e-8, debiased[1:] - running_min)
        feature = jnp.clip((debiased[:-1] - running_min) / den - 1.0, -1, 1)
        return jnp.where(it <= 2, feature * 0, feature)


# ----------------------------------------------------------------------- state
@flax.struct.dataclass
class State:
    """Upstream ``hyper_v2.State`` (same fields and order)."""

    params: Any
    rms_rolling: Any
    mom_rolling: Any
    fac_rolling: Any
    iteration: jnp.ndarray
    state: Any
    num_steps: jnp.ndarray
    lstm_hidden_state: Any
    loss_buffer: Any


def _clip_log_abs(v, scale=1.0):
    return jnp.clip(jnp.log(1e-8 + jnp.abs(v * scale)), -5, 5) * 0.5


def _linear(params, x):
    """``hk.Linear``: ``x @ w`` plus the broadcast bias."""
    out = jnp.dot(x, params["w"])
    return out + jnp.broadcast_to(params["b"], out.shape)


def _lstm(params, x, state: LSTMState):
    """``hk.LSTM``: one linear over ``[x, h]``, gates in the order i, g, f, o, forget bias +1."""
    gated = _linear(params, jnp.concatenate([x, state.hidden], axis=-1))
    i, g, f, o = jnp.split(gated, 4, axis=-1)
    f = jax.nn.sigmoid(f + 1)
    c = f * state.cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, LSTMState(h, c)


class HyperV2:
    """Upstream ``HyperV2`` at its default ablation flags.

    ``ff_mult`` is the interpolation factor upstream hard-codes to 100 (the
    Celo repository's ``velo.py`` makes it an argument).
    """

    #: LSTM feature groups, in the (sorted-key) order upstream concatenates them
    LSTM_FEATURES = ("fraction_left", "loss_features", "mean_rms", "rank", "var_m", "var_rms")

    def __init__(self, lstm_hidden_size=128, ff_hidden_size=4, ff_hidden_layers=2,
                 initial_momentum_decays=(0.9, 0.99, 0.999), initial_rms_decays=(0.999,),
                 initial_adafactor_decays=(0.9, 0.99, 0.999), param_inits=64, exp_mult=0.001, step_mult=0.001,
                 use_bugged_next_lstm_state=False, use_bugged_loss_features=True, ff_mult=100.0):
        self.lstm_hidden_size = lstm_hidden_size
        self.ff_hidden_size = ff_hidden_size
        self.ff_hidden_layers = ff_hidden_layers
        common.set_decays(self, initial_momentum_decays, initial_rms_decays, initial_adafactor_decays)
        self.param_inits = param_inits
        self.exp_mult = exp_mult
        self.step_mult = step_mult
        self.use_bugged_next_lstm_state = use_bugged_next_lstm_state
        self.use_bugged_loss_features = use_bugged_loss_features
        self.ff_mult = ff_mult

    # ------------------------------------------------------------ sizes
    @property
    def group_widths(self) -> Sequence[int]:
        """Widths of the 14 per-element feature groups (``w0__0`` .. ``w0__13``)."""
        return hyper_group_widths(len(self.initial_momentum_decays), len(self.initial_rms_decays),
                                  len(self.initial_adafactor_decays))

    @property
    def num_lstm_inputs(self) -> int:
        return velo_lstm_input_size(len(self.initial_momentum_decays), len(self.initial_rms_decays))

    # ------------------------------------------------------------ theta
    def _init_ff(self, key):
        widths = self.group_widths
        fan_in = sum(widths)
        sizes = [self.ff_hidden_size] * self.ff_hidden_layers + [3]
        keys = jax.random.split(key, len(widths) + len(sizes) - 1)
        params = {f"w0__{i}": common.truncated_normal_init(keys[i], (w, sizes[0]), fan_in)
                  for i, w in enumerate(widths)}
        params["b0"] = jnp.zeros((sizes[0],), jnp.float32)
        for layer in range(1, len(sizes)):
            params[f"w{layer}"] = common.truncated_normal_init(
                keys[len(widths) + layer - 1], (sizes[layer - 1], sizes[layer]), sizes[layer - 1])
            params[f"b{layer}"] = jnp.zeros((sizes[layer],), jnp.float32)
        return {"~": dict(sorted(params.items()))}

    def _init_rnn(self, key):
        n_in, hidden = self.num_lstm_inputs, self.lstm_hidden_size
        shapes = {"linear": (n_in, hidden), "linear_1": (n_in, hidden), "linear_2": (n_in, hidden),
                  "rnn/linear": (2 * hidden, 4 * hidden), "rnn_to_controls": (hidden, self.param_inits),
                  "step_size": (hidden, 1)}
        keys = jax.random.split(key, len(shapes))
        return {name: {"b": jnp.zeros((shape[1],), jnp.float32),
                       "w": common.truncated_normal_init(k, shape, shape[0])}
                for k, (name, shape) in zip(keys, sorted(shapes.items()))}

    def init(self, key) -> dict:
        """Fresh theta (upstream's tree): truncated-normal weights, zero biases and initial state."""
        k_ff, k_rnn = jax.random.split(key)
        hidden = self.lstm_hidden_size
        return {
            "ff_mod_stack": jax.vmap(self._init_ff)(jax.random.split(k_ff, self.param_inits)),
            "lstm_init_state": LSTMState(hidden=jnp.zeros((1, hidden), jnp.float32),
                                         cell=jnp.zeros((1, hidden), jnp.float32)),
            "rnn_params": self._init_rnn(k_rnn),
        }

    # ------------------------------------------------------ per tensor, LSTM side
    def lstm_features(self, p, g, m, rms, fraction_trained, loss_features):
        """The per-tensor LSTM input (old params, clipped g, old accumulators)."""
        del g  # upstream rescales it too, but no feature reads it
        norm_mult = jax.lax.rsqrt(jnp.maximum(1e-9, jnp.mean(p ** 2)))
        m = m * norm_mult
        rms = rms * norm_mult
        axes = list(range(p.ndim))
        mean_m = jnp.mean(m, axis=axes, keepdims=True)
        mean_rms = jnp.mean(rms, axis=axes, keepdims=True)
        inputs = {
            "fraction_left": common.fractional_tanh_embedding(fraction_trained),
            "loss_features": loss_features,
            "var_m": _clip_log_abs(jnp.mean(jnp.square(m - mean_m), axis=axes), scale=10.0),
            "mean_rms": _clip_log_abs(jnp.reshape(mean_rms, [mean_rms.shape[-1]]), scale=10.0),
            # centred on the momentum's mean, as upstream does
            "var_rms": _clip_log_abs(jnp.mean(jnp.square(rms - mean_m), axis=axes), scale=10.0),
            "rank": jax.nn.one_hot(int(np.sum(np.asarray(p.shape) > 1)), RANK_CLASSES, dtype=jnp.float32),
        }
        assert tuple(sorted(inputs)) == self.LSTM_FEATURES
        return jnp.concatenate([inputs[k] for k in self.LSTM_FEATURES], axis=0)

    def rnn_forward(self, rnn_params, x, state: LSTMState):
        """``(controls, lr_mult, next_state)`` for the stacked per-tensor features ``x``."""
        _unused = jax.nn.relu(_linear(rnn_params["linear"], x))  # upstream's dead first mixing layer
        mixed = jax.nn.relu(_linear(rnn_params["linear_1"], x))
        x = _linear(rnn_params["linear_2"], x) + jnp.max(mixed, axis=0, keepdims=True)
        out, state = _lstm(rnn_params["rnn/linear"], x, state)
        controls = _linear(rnn_params["rnn_to_controls"], out)
        lr_mult = self.lr_mult(jnp.squeeze(_linear(rnn_params["step_size"], out), -1))
        return controls, lr_mult, state

    def lr_mult(self, raw):
        """VeLO uses the raw ``step_size`` output."""
        return raw

    def controls(self, raw_row):
        """VeLO uses the raw controls."""
        return raw_row

    def interpolate(self, ff_stack, control):
        """``ff_mult * mean_k(control_k * stack_k)`` for every leaf of the bank."""
        def one(ff_p):
            c = jnp.reshape(control, [ff_p.shape[0]] + [1] * (ff_p.ndim - 1))
            return self.ff_mult * jnp.mean(ff_p * c, axis=0)

        return jax.tree_util.tree_map(one, ff_stack)

    def loss_horizon(self, num_steps):
        return BUGGED_LOSS_HORIZON if self.use_bugged_loss_features else num_steps

    def propagates_lstm_state(self) -> bool:
        return not self.use_bugged_next_lstm_state

    def applies_lr_mult(self) -> bool:
        return True

    # ----------------------------------------------------- per tensor, MLP side
    def ff_mod(self, ff_params, lr_mult, p, g, m, rms, fac_g, v_col, v_row, v_diag):
        """One tensor's new value from its interpolated MLP (``_ff_mod``)."""
        did_reshape = p.ndim == 0
        if did_reshape:
            p, g, m, rms, fac_g, v_diag, v_col, v_row = (
                jnp.expand_dims(x, 0) for x in (p, g, m, rms, fac_g, v_diag, v_col, v_row))
        inps = common.hyper_feature_groups(p, g, m, rms, fac_g, v_col, v_row, v_diag, rms_eps=RMS_EPS,
                                           diag_groups=True)
        axes = list(range(p.ndim))
        inps = [common.second_moment_normalizer(x, axis=axes, eps=NORMALIZER_EPS) for x in inps]
        mlp = ff_params["~"]
        n_dense = self.ff_hidden_layers
        out = common.split_input_mlp(inps, [mlp[f"w0__{i}"] for i in range(len(inps))], mlp["b0"],
                                     [mlp[f"w{i}"] for i in range(1, n_dense + 1)],
                                     [mlp[f"b{i}"] for i in range(1, n_dense + 1)])
        direction, magnitude = out[..., 0], out[..., 1]
        param_scale = jnp.sqrt(jnp.mean(jnp.square(p)) + 1e-9)
        step = direction * (param_scale * jnp.exp(magnitude * self.exp_mult)) * self.step_mult
        if self.applies_lr_mult():
            step = lr_mult * step
        new_p = p - step.reshape(p.shape)
        return jnp.squeeze(new_p, 0) if did_reshape else new_p

    def accumulators(self):
        return (common.vec_rolling_mom(jnp.asarray(self.initial_momentum_decays)),
                common.vec_rolling_rms(jnp.asarray(self.initial_rms_decays)),
                common.vec_factored_rolling(jnp.asarray(self.initial_adafactor_decays)))

    def opt_fn(self, theta) -> "HyperOptimizer":
        return HyperOptimizer(self, theta)


class HyperOptimizer(common.BoundOpt):
    """learned_optimization-style optimizer for a theta: ``init`` / ``update`` / ``get_params``."""

    no_steps_message = "HyperV2 needs num_steps (the training horizon)"

    @functools.partial(jax.jit, static_argnums=(0,))
    def init(self, params, model_state=None, num_steps=None, key=None) -> State:
        del key
        num_steps = self.required_steps(num_steps)
        mom, rms, fac = self.lopt.accumulators()
        n_tensors = len(jax.tree_util.tree_leaves(params))
        init_state = as_lstm_state(self.theta["lstm_init_state"])
        lstm_state = jax.tree_util.tree_map(lambda x: jnp.tile(x, [n_tensors] + [1] * (x.ndim - 1)), init_state)
        return State(params=params, state=model_state, rms_rolling=rms.init(params), mom_rolling=mom.init(params),
                     fac_rolling=fac.init(params), iteration=jnp.asarray(0, jnp.int32),
                     num_steps=jnp.asarray(num_steps, jnp.int32), lstm_hidden_state=lstm_state,
                     loss_buffer=LossBuffer.init(self.lopt.loss_horizon(num_steps)))

    @functools.partial(jax.jit, static_argnums=(0,))
    def update(self, opt_state: State, grads, loss=None, model_state=None, is_valid=False, key=None) -> State:
        del is_valid, key  # the key is split upstream but never used numerically
        if loss is None:
            raise ValueError("HyperV2.update needs the loss")
        lopt, theta = self.lopt, self.theta
        loss_buffer = LossBuffer.update(opt_state.loss_buffer, loss)
        loss_features = LossBuffer.features(loss_buffer)
        grads = jax.tree_util.tree_map(lambda g: jnp.clip(g, -GRAD_CLIP, GRAD_CLIP), grads)
        fraction_trained = opt_state.iteration / jnp.asarray(opt_state.num_steps, jnp.float32)

        params, tree = jax.tree_util.tree_flatten(opt_state.params)
        flat = lambda t: jax.tree_util.tree_leaves(t)  # noqa: E731
        features = [lopt.lstm_features(p, g, m, r, fraction_trained, loss_features)
                    for p, g, m, r in zip(params, flat(grads), flat(opt_state.mom_rolling.m),
                                          flat(opt_state.rms_rolling.rms))]
        controls, lr_mult, next_lstm = lopt.rnn_forward(theta["rnn_params"], jnp.stack(features),
                                                        as_lstm_state(opt_state.lstm_hidden_state))
        lstm_state = next_lstm if lopt.propagates_lstm_state() else opt_state.lstm_hidden_state

        mom, rms, fac = lopt.accumulators()
        next_mom = mom.update(opt_state.mom_rolling, grads)
        next_rms = rms.update(opt_state.rms_rolling, grads)
        next_fac, fac_g = fac.update(opt_state.fac_rolling, grads)
        new_params = [
            lopt.ff_mod(lopt.interpolate(theta["ff_mod_stack"], lopt.controls(controls[i])), lr_mult[i], *args)
            for i, args in enumerate(zip(params, flat(grads), flat(next_mom.m), flat(next_rms.rms), flat(fac_g),
                                         flat(next_fac.v_col), flat(next_fac.v_row), flat(next_fac.v_diag)))]
        return State(params=jax.tree_util.tree_unflatten(tree, new_params), state=model_state,
                     mom_rolling=next_mom, rms_rolling=next_rms, fac_rolling=next_fac,
                     iteration=opt_state.iteration + 1, num_steps=opt_state.num_steps,
                     lstm_hidden_state=lstm_state, loss_buffer=loss_buffer)
