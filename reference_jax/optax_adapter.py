"""Any reference optimizer as an optax ``GradientTransformationExtraArgs``.

Mirrors upstream ``opt_to_optax.opt_to_optax_opt``: ``init`` runs
``opt.init(params, num_steps=N)`` and drops the params from the state; ``update``
puts them back, calls ``opt.update(state, grads, **extra_args)`` (``loss=...``
and ``model_state=...`` travel as extra args) and returns ``new - old``.
"""

from __future__ import annotations

from typing import Optional

import jax
import optax


def as_optax(opt, num_steps: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
    """Wrap a learned_optimization-style optimizer (``init``/``update``/``get_params``/``set_params``)."""

    def init_fn(params):
        return opt.set_params(opt.init(params, num_steps=num_steps), ())

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("this optimizer needs params: call update(grads, state, params, loss=...)")
        extra = dict(extra_args.pop("extra_args", None) or {}, **extra_args)
        next_state = opt.update(opt.set_params(state, params), updates, **extra)
        step = jax.tree_util.tree_map(lambda a, b: a - b, opt.get_params(next_state), params)
        return step, opt.set_params(next_state, ())

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
