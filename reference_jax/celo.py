"""JAX reference of Celo v1 (``amoudgl/celo`` ``celo/optimizers/celo.py``).

Celo is HyperV2 (:mod:`.hyper_v2`) with a smaller LSTM scheduler:

* the LSTM reads only the fraction-trained embedding and the loss features
  (18 inputs: no per-tensor statistics, no norm rescaling);
* ``lr_mult = 0.1 * exp(step_size(h))``, applied only when ``train_phase > 1``;
* controls are a softmax over the ``param_inits`` MLPs and the interpolation
  is a plain mean (no x100); with the released ``param_inits=1`` the MLP is
  exactly ``ff_mod_stack[0]``;
* the loss buffer always uses ``num_steps`` and the LSTM state always advances.

Released configuration: ``Celo(lstm_hidden_size=64, param_inits=1, train_phase=2)``.
The theta tree is HyperV2's with ``rnn_params/*`` reading 18 inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pylo.reference_jax import common
from pylo.reference_jax.hyper_v2 import HyperV2
from pylo.spec.features import celo_lstm_input_size

LR_MULT_SCALE = 0.1


class Celo(HyperV2):
    """Upstream ``Celo`` at its default ablation flags (class defaults: lstm 128, param_inits 64)."""

    LSTM_FEATURES = ("fraction_left", "loss_features")

    def __init__(self, lstm_hidden_size=128, ff_hidden_size=4, ff_hidden_layers=2,
                 initial_momentum_decays=(0.9, 0.99, 0.999), initial_rms_decays=(0.999,),
                 initial_adafactor_decays=(0.9, 0.99, 0.999), param_inits=64, exp_mult=0.001, step_mult=0.001,
                 train_phase=1):
        super().__init__(lstm_hidden_size=lstm_hidden_size, ff_hidden_size=ff_hidden_size,
                         ff_hidden_layers=ff_hidden_layers, initial_momentum_decays=initial_momentum_decays,
                         initial_rms_decays=initial_rms_decays, initial_adafactor_decays=initial_adafactor_decays,
                         param_inits=param_inits, exp_mult=exp_mult, step_mult=step_mult,
                         use_bugged_next_lstm_state=False, use_bugged_loss_features=False, ff_mult=1.0)
        self.train_phase = train_phase

    @property
    def num_lstm_inputs(self) -> int:
        return celo_lstm_input_size()

    def lstm_features(self, p, g, m, rms, fraction_trained, loss_features):
        del p, g, m, rms
        return jnp.concatenate([common.fractional_tanh_embedding(fraction_trained), loss_features], axis=0)

    def lr_mult(self, raw):
        return jnp.exp(raw) * LR_MULT_SCALE

    def controls(self, raw_row):
        return jax.nn.softmax(raw_row)

    def interpolate(self, ff_stack, control):
        """``mean_k(control_k * stack_k)`` (no multiplier)."""
        def one(ff_p):
            c = jnp.reshape(control, [ff_p.shape[0]] + [1] * (ff_p.ndim - 1))
            return jnp.mean(ff_p * c, axis=0)

        return jax.tree_util.tree_map(one, ff_stack)

    def applies_lr_mult(self) -> bool:
        return self.train_phase > 1
