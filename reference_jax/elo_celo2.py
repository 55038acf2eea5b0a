"""JAX reference of ELO-CELO2: scaling_l2o ``ELO_Celo2LOpt`` at inference (``meta_train=False``).

Follows ``xiaol827/ELO: src/learned_optimizers/elo_celo2.py``. One set of
accumulators over all leaves feeds both the CELO2 MLP (every leaf) and the
AdamW update of 1-D / ``embed`` leaves (``m[..., 0]``, ``rms[..., -1]``, bias
corrected with the 1-based iteration). Gradients are optionally clipped by
global norm, then ``nan_to_num``; there is no +-1000 clamp (the MLP is applied
directly, bypassing ``Celo2Transformation.update``). The learning rate is
evaluated at the 1-based iteration; ``init_lr = peak_lr = end_lr = lr`` is the
constant schedule torch's ``lr`` corresponds to. The meta-training expert
trajectory and its imitation losses are not modelled.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from pylo.reference_jax import common
from pylo.reference_jax.celo2 import FF, Celo2Transformation, is_adam_leaf, warmup_cosine


@flax.struct.dataclass
class ELOCelo2State:
    params: Any
    state: Any
    iteration: jnp.ndarray
    num_steps: jnp.ndarray
    scheduled_lr: jnp.ndarray
    mom_rolling: Any
    rms_rolling: Any
    fac_rolling: Any


class ELO_Celo2LOpt:
    def __init__(self, orthogonalize=True, ff_hidden_size=8, ff_hidden_layers=2,
                 initial_momentum_decays=(0.9, 0.99, 0.999), initial_rms_decays=(0.95,),
                 initial_adafactor_decays=(0.9, 0.99, 0.999), init_lr=0.0, peak_lr=1e-3, warmup_steps=0,
                 warmup_fraction=0.0, end_lr=1e-5, weight_decay=0.0, adam_lr_mult=1.0, adam_weight_decay=None,
                 use_adamw_for_1d=True, clip_grad=False, clip_norm=1.0, meta_train=False, **celo2_kwargs):
        if meta_train:
            raise ValueError("the reference models inference only: pass meta_train=False")
        self.celo2 = dict(orthogonalize=orthogonalize, ff_hidden_size=ff_hidden_size,
                          ff_hidden_layers=ff_hidden_layers, initial_momentum_decays=tuple(initial_momentum_decays),
                          initial_rms_decays=tuple(initial_rms_decays),
                          initial_adafactor_decays=tuple(initial_adafactor_decays), **celo2_kwargs)
        self.init_lr, self.peak_lr, self.end_lr = init_lr, peak_lr, end_lr
        self.warmup_steps, self.warmup_fraction = warmup_steps, warmup_fraction
        self.weight_decay = weight_decay
        self.adam_lr_mult = adam_lr_mult
        self.adam_weight_decay = weight_decay if adam_weight_decay is None else adam_weight_decay
        self.use_adamw_for_1d = use_adamw_for_1d
        self.clip_grad, self.clip_norm = clip_grad, clip_norm

    def init(self, key) -> dict:
        return Celo2Transformation(**self.celo2).init_meta_params(key)

    def lr(self, step, num_steps):
        warmup = self.warmup_steps
        if self.warmup_fraction > 0:
            warmup = jnp.float32(self.warmup_fraction * num_steps)
        return warmup_cosine(self.init_lr, self.peak_lr, warmup, num_steps, self.end_lr)(step)

    def opt_fn(self, theta) -> "ELOCelo2Opt":
        return ELOCelo2Opt(self, theta)


class ELOCelo2Opt(common.BoundOpt):
    no_steps_message = "Must specify num_steps for ELO_Celo2LOpt!"

    def __init__(self, lopt: ELO_Celo2LOpt, theta):
        super().__init__(lopt, theta)
        self.t = Celo2Transformation(**lopt.celo2)

    def init(self, params, model_state=None, num_steps=None, key=None) -> ELOCelo2State:
        num_steps = self.required_steps(num_steps)
        mom, rms, fac = self.t.accumulators()
        return ELOCelo2State(params=params, state=model_state, iteration=jnp.asarray(0, jnp.int32),
                             num_steps=jnp.asarray(num_steps, jnp.int32),
                             scheduled_lr=jnp.asarray(self.lopt.lr(0, num_steps), jnp.float32),
                             mom_rolling=mom.init(params), rms_rolling=rms.init(params), fac_rolling=fac.init(params))

    def update(self, opt_state: ELOCelo2State, grad, loss=None, model_state=None, is_valid=False, key=None):
        del loss, is_valid, key
        lopt = self.lopt
        params = opt_state.params
        if lopt.clip_grad:
            grad, _ = optax.clip_by_global_norm(lopt.clip_norm).update(grad, None)
        grad = jax.tree_util.tree_map(jnp.nan_to_num, grad)
        mom, rms, fac = self.t.accumulators()
        next_mom = mom.update(opt_state.mom_rolling, grad)
        next_rms = rms.update(opt_state.rms_rolling, grad)
        next_fac, fac_g = fac.update(opt_state.fac_rolling, grad)
        m, r = next_mom.m, next_rms.rms
        steps = jax.tree_util.tree_map(lambda *a: self.t.ff_apply(self.theta[FF], *a), params, grad, m, r, fac_g,
                                       next_fac.v_col, next_fac.v_row)
        it = opt_state.iteration + 1
        lr = lopt.lr(it, opt_state.num_steps)
        if lopt.use_adamw_for_1d:
            adam_lr = lopt.adam_lr_mult * lr
            b1 = jnp.asarray(lopt.celo2["initial_momentum_decays"][0])
            b2 = jnp.asarray(lopt.celo2["initial_rms_decays"][-1])

            def apply(path, p, s, m_leaf, r_leaf):
                if is_adam_leaf(path, p):
                    m_hat = m_leaf[..., 0] / (1.0 - b1 ** it)
                    v_hat = r_leaf[..., -1] / (1.0 - b2 ** it)
                    return p - adam_lr * (m_hat / (jnp.sqrt(v_hat) + 1e-8) + lopt.adam_weight_decay * p)
                return p - lr * (s + lopt.weight_decay * p)

            new_params = jax.tree_util.tree_map_with_path(apply, params, steps, m, r)
        else:
            new_params = jax.tree_util.tree_map(lambda p, s: p - lr * (s + lopt.weight_decay * p), params, steps)
        return ELOCelo2State(params=new_params, state=model_state if model_state is not None else opt_state.state,
                             iteration=it, num_steps=opt_state.num_steps, scheduled_lr=jnp.asarray(lr, jnp.float32),
                             mom_rolling=next_mom, rms_rolling=next_rms, fac_rolling=next_fac)
