"""The HyperV2 family's constants, each defined once.

HyperV2 is upstream's name (``learned_optimization``'s ``hyper_v2.py``) for the architecture of
VeLO and Celo: a per-tensor LSTM that reads whole-tensor statistics and mixes a bank of
per-element MLPs. Every backend (naive, foreach, fused, Triton) reads these values; the Triton
kernels (:mod:`pylo.optim.hyperv2.kernels`) spell the same numbers as literals.
"""

from __future__ import annotations

#: where the optimizer-wide state (iteration, loss buffer, horizon, averaging) lives in ``optimizer.state``
GLOBAL_STATE_KEY = "hyper_v2"
#: gradients are clipped element-wise to [-GRAD_CLIP, GRAD_CLIP] before everything else
GRAD_CLIP = 1000.0
#: ``rsqrt(rms + RMS_EPS)`` in the per-element features
RMS_EPS = 1e-6
#: ``x * rsqrt(NORMALIZER_EPS + mean(x^2))``: the second-moment normaliser of each feature group
NORMALIZER_EPS = 1e-5
#: ``param_scale = sqrt(mean(p^2) + PARAM_SCALE_EPS)``
PARAM_SCALE_EPS = 1e-9
#: ``"decoupled"``: ``p - lr * (step + wd * p)``; ``"prefab"``: learned_optimization's weight-decay wrapper
WEIGHT_DECAY_MODES = ("decoupled", "prefab")
DEFAULT_MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
DEFAULT_RMS_DECAYS = (0.999,)
DEFAULT_ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
#: the decay counts (momentum, RMS, Adafactor) the Triton kernels implement: VeLO's and Celo's
KERNEL_DECAY_COUNTS = (3, 1, 3)
