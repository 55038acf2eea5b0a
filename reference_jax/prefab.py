"""JAX reference of learned_optimization's prefab VeLO wrappers.

``research/general_lopt/prefab.py`` ``LearnedOptimizer(num_training_steps,
weight_decay, max_training_steps=150_000)`` wraps the pretrained optimizer in

* ``GradientAccumulator`` (``optimizers/gradient_accumulator.py``) when the run
  is longer than ``max_training_steps``: ``k = ceil(N / max_training_steps)``
  micro-steps are summed and divided by ``k`` (gradients and loss), the inner
  optimizer sees ``num_steps = N // k`` and steps on every ``k``-th call;
* ``WeightDecayWrapper`` (``optimizers/optimizer_wrappers.py``) when
  ``weight_decay > 0``: ``g <- g + wd * p`` and ``loss <- loss + sum_leaves(wd * sum(p^2))``
  on every call, outside the accumulator.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp

MAX_TRAINING_STEPS = 150_000


@flax.struct.dataclass
class GradientAccumulatorState:
    grad_accum: Any
    loss_accum: Any
    inner_opt_state: Any
    iteration: Any
    model_state: Any


class GradientAccumulator:
    def __init__(self, opt, num_average: int):
        self.opt = opt
        self.num_average = num_average

    def init(self, params, model_state=None, num_steps=None, **kwargs):
        inner_steps = None if num_steps is None else num_steps // self.num_average
        inner = self.opt.init(params, model_state=model_state, num_steps=inner_steps, **kwargs)
        return GradientAccumulatorState(grad_accum=jax.tree_util.tree_map(jnp.zeros_like, params),
                                        loss_accum=jnp.asarray(0.0, jnp.float32), inner_opt_state=inner,
                                        iteration=jnp.asarray(0, jnp.int32), model_state=model_state)

    def update(self, opt_state, grad, model_state=None, loss=None, **kwargs):
        grad_accum = jax.tree_util.tree_map(lambda a, b: a + b, opt_state.grad_accum, grad)
        loss_accum = opt_state.loss_accum + loss
        should_update = (opt_state.iteration + 1) % self.num_average == 0

        def apply(args):
            inner, loss_sum, grad_sum = args
            inner = self.opt.update(inner, jax.tree_util.tree_map(lambda x: x / self.num_average, grad_sum),
                                    loss=loss_sum / self.num_average, model_state=model_state, **kwargs)
            return inner, jnp.zeros_like(loss_sum), jax.tree_util.tree_map(jnp.zeros_like, grad_sum)

        # upstream's ``jax_utils.maybe_do``: a loop that runs ``apply`` zero times or once
        inner, loss_accum, grad_accum = jax.lax.fori_loop(
            0, jnp.asarray(should_update, jnp.int32), lambda _, args: apply(args),
            (opt_state.inner_opt_state, loss_accum, grad_accum))
        return GradientAccumulatorState(grad_accum=grad_accum, loss_accum=loss_accum, inner_opt_state=inner,
                                        iteration=opt_state.iteration + 1, model_state=model_state)

    def get_params(self, state):
        return self.opt.get_params(state.inner_opt_state)


class WeightDecayWrapper:
    def __init__(self, opt, weight_decay: float):
        self.opt = opt
        self.weight_decay = weight_decay

    def init(self, params, model_state=None, **kwargs):
        return self.opt.init(params, model_state=model_state, **kwargs)

    def update(self, opt_state, grads, model_state=None, loss=None, **kwargs):
        params = self.opt.get_params(opt_state)
        loss = loss + sum(jnp.sum(p ** 2) * self.weight_decay for p in jax.tree_util.tree_leaves(params))
        grads = jax.tree_util.tree_map(lambda g, p: g + self.weight_decay * p, grads, params)
        return self.opt.update(opt_state, grads, model_state=model_state, loss=loss, **kwargs)

    def get_params(self, state):
        return self.opt.get_params(state)


def num_average(num_training_steps: int, max_training_steps: int = MAX_TRAINING_STEPS) -> int:
    """Micro-steps averaged per update (1: no accumulation)."""
    if num_training_steps > max_training_steps:
        return int(math.ceil(num_training_steps / max_training_steps))
    return 1


class Prefab:
    """A learned optimizer (``init(key)``/``opt_fn(theta)``) with prefab's wrappers around its optimizer."""

    def __init__(self, lopt, weight_decay: float = 0.0, max_training_steps: int = MAX_TRAINING_STEPS):
        self.lopt = lopt
        self.weight_decay = weight_decay
        self.max_training_steps = max_training_steps

    def init(self, key):
        return self.lopt.init(key)

    def opt_fn(self, theta):
        return _PrefabOptimizer(self, self.lopt.opt_fn(theta))


class _PrefabOptimizer:
    def __init__(self, prefab: Prefab, base):
        self.prefab = prefab
        self.base = base
        self.opt = None

    def _wrapped(self, num_steps):
        opt = self.base
        k = num_average(num_steps, self.prefab.max_training_steps)
        if k > 1:
            opt = GradientAccumulator(opt, k)
        if self.prefab.weight_decay > 0.0:
            opt = WeightDecayWrapper(opt, self.prefab.weight_decay)
        return opt

    def init(self, params, model_state=None, num_steps=None, key=None):
        if num_steps is None:
            raise ValueError("the prefab wrappers need num_steps")
        self.opt = self._wrapped(num_steps)
        return self.opt.init(params, model_state=model_state, num_steps=num_steps, key=key)

    def update(self, opt_state, grads, loss=None, model_state=None, **kwargs):
        return self.opt.update(opt_state, grads, model_state=model_state, loss=loss, **kwargs)

    def get_params(self, state):
        return self.opt.get_params(state)
