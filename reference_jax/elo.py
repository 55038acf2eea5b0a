"""JAX reference of ELO: scaling_l2o ``ELO_AdafacMLPLOpt`` at inference (``meta_train=False``).

Follows ``xiaol827/ELO: src/learned_optimizers/elo_adfac_mlp_lopt.py``. The
features and MLP are AdafacMLPLOpt's (this class reuses our
:class:`~pylo.reference_jax.adafac_mlp_lopt.AdafacMLPLOpt` network), with:

* theta ``{"nn": {"~": {w0..b2}}}`` only (no learned decays: the raw initial
  decays drive the accumulators);
* optional global-norm clipping, then ``nan_to_num``;
* ``p <- p - (d * exp(mu * exp_mult) + weight_decay * p) * scheduled_lr``;
  ``scheduled_lr`` is ``step_mult`` (or a cosine to ``step_mult_min``) after a
  linear warmup from ``init_lr`` evaluated at the 0-based iteration, so the
  first update uses ``init_lr``. ``init_lr = step_mult`` with no warmup
  fraction is the constant schedule torch's ``lr`` corresponds to.

The meta-training expert trajectory and its losses are not modelled.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import optax

from pylo.reference_jax import common
from pylo.reference_jax.adafac_mlp_lopt import AdafacMLPLOpt, AdafacMLPLOptState


@flax.struct.dataclass
class ELOState(AdafacMLPLOptState):
    """AdafacLO's state and the learning rate the schedule gave last."""

    scheduled_lr: jnp.ndarray


def cosine_scheduler(step, num_steps, lr_init, lr_final=0.0):
    fraction = jnp.clip(step / (num_steps - 1), 0.0, 1.0)
    return lr_final + (lr_init - lr_final) * (0.5 * (1.0 + jnp.cos(jnp.pi * fraction)))


class ELO_AdafacMLPLOpt(AdafacMLPLOpt):
    def __init__(self, exp_mult=0.001, step_mult=0.001, weight_decay=0.0, hidden_size=4, hidden_layers=2,
                 initial_momentum_decays=(0.9, 0.99, 0.999), initial_rms_decays=(0.999,),
                 initial_adafactor_decays=(0.9, 0.99, 0.999), clip_grad=False, clip_norm=1.0, meta_train=False,
                 use_lo_cosine_scheduler=False, step_mult_min=1e-4, init_lr=0.0, warmup_fraction=0.05,
                 warmup_steps=0):
        if meta_train:
            raise ValueError("the reference models inference only: pass meta_train=False")
        super().__init__(exp_mult=exp_mult, step_mult=step_mult, hidden_size=hidden_size,
                         hidden_layers=hidden_layers, initial_momentum_decays=initial_momentum_decays,
                         initial_rms_decays=initial_rms_decays, initial_adafactor_decays=initial_adafactor_decays)
        self.weight_decay = weight_decay
        self.clip_grad, self.clip_norm = clip_grad, clip_norm
        self.use_lo_cosine_scheduler, self.step_mult_min = use_lo_cosine_scheduler, step_mult_min
        self.init_lr, self.warmup_fraction, self.warmup_steps = init_lr, warmup_fraction, warmup_steps

    def init(self, key) -> dict:
        theta = super().init(key)
        return {"nn": theta["nn"]}

    def rolling(self, theta):
        return (common.vec_rolling_mom(jnp.asarray(self.initial_momentum_decays)),
                common.vec_rolling_rms(jnp.asarray(self.initial_rms_decays)),
                common.vec_factored_rolling(jnp.asarray(self.initial_adafactor_decays)))

    def preprocess_grads(self, grads):
        if self.clip_grad:
            grads, _ = optax.clip_by_global_norm(self.clip_norm).update(grads, None)
        return jax.tree_util.tree_map(jnp.nan_to_num, grads)

    def scheduled_lr(self, iteration, num_steps):
        lr = jnp.array(self.step_mult)
        if self.use_lo_cosine_scheduler:
            lr = cosine_scheduler(iteration, num_steps, self.step_mult, self.step_mult_min)
        warmup = self.warmup_fraction * num_steps if self.warmup_fraction > 0 else self.warmup_steps
        warmup = jnp.maximum(jnp.asarray(warmup, jnp.float32), 1.0)
        it = iteration.astype(jnp.float32)
        warm = self.init_lr + (self.step_mult - self.init_lr) * jnp.minimum(it / warmup, 1.0)
        return jnp.where(it < warmup, warm, lr)

    def _apply_step(self, p, direction, magnitude, lr):
        step = (direction * jnp.exp(magnitude * self.exp_mult)).reshape(p.shape)
        return p - (step + self.weight_decay * p) * lr

    def opt_fn(self, theta) -> "ELOOpt":
        return ELOOpt(self, theta)


class ELOOpt(common.BoundOpt):
    def init(self, params, model_state=None, num_steps=None, key=None) -> ELOState:
        num_steps = self.required_steps(num_steps)
        mom, rms, fac = self.lopt.rolling(self.theta)
        return ELOState(params=params, state=model_state, mom_rolling=mom.init(params), rms_rolling=rms.init(params),
                        fac_rolling_features=fac.init(params), num_steps=jnp.asarray(num_steps),
                        iteration=jnp.asarray(0, jnp.int32),
                        scheduled_lr=jnp.asarray(self.lopt.step_mult, jnp.float32))

    def update(self, opt_state: ELOState, grad, loss=None, model_state=None, is_valid=False, key=None) -> ELOState:
        del loss, is_valid, key
        grad = self.lopt.preprocess_grads(grad)
        mom, rms, fac = self.lopt.rolling(self.theta)
        next_mom = mom.update(opt_state.mom_rolling, grad)
        next_rms = rms.update(opt_state.rms_rolling, grad)
        next_fac, fac_g = fac.update(opt_state.fac_rolling_features, grad)
        lr = self.lopt.scheduled_lr(opt_state.iteration, opt_state.num_steps)
        fun = functools.partial(self.lopt._mod, self.theta["nn"], common.tanh_embedding(opt_state.iteration),
                                lr_scale=lr)
        params = jax.tree_util.tree_map(fun, opt_state.params, grad, next_mom.m, next_rms.rms, fac_g, next_fac.v_col,
                                        next_fac.v_row, next_fac.v_diag)
        return ELOState(params=params, state=model_state, mom_rolling=next_mom, rms_rolling=next_rms,
                        fac_rolling_features=next_fac, num_steps=opt_state.num_steps,
                        iteration=opt_state.iteration + 1, scheduled_lr=lr)
