"""The AdafacLO family's constants (AdafacLO, MuLO, ELO), each defined once.

Upstream names: ``AdafacMLPLOpt`` in ``learned_optimization`` (AdafacLO), its μLO variant
(MuLO) and scaling_l2o's ``ELO_AdafacMLPLOpt`` (ELO) share these features and this network.
Torch-free (the Triton kernels and the converters read it too).
"""

from __future__ import annotations

from pylo.spec.features import TANH_TIMESCALES, adafac_group_widths, adafac_input_size

#: learned decay offsets of the released μLO checkpoint (the published defaults of AdafacLO / MuLO)
MULO_MOMENTUM_OFFSETS = [0.15216392, 0.14245212, 0.06812963]
MULO_RMS_OFFSETS = [0.01079706]
MULO_ADAFACTOR_OFFSETS = [0.18621896, -0.10864615, -0.06185547]

#: the numbers of momentum, RMS and Adafactor decays the features (and every backend) are built for
DECAY_COUNTS = (3, 1, 3)
#: MLP inputs: 28 second-moment-normalised accumulator features + 11 tanh step features
NUM_FEATURES = adafac_input_size(*DECAY_COUNTS)
#: the normalised ("raw") features; the step features follow them in the first layer
NUM_RAW = sum(adafac_group_widths(*DECAY_COUNTS))
NUM_STEP_FEATURES = len(TANH_TIMESCALES)

#: ``rsqrt(rms + RMS_EPS)`` and the diagonal moment's ``(v + RMS_EPS) ** -0.5``
RMS_EPS = 1e-6
#: the second-moment normaliser ``x * rsqrt(NORMALIZER_EPS + mean(x^2))``
NORMALIZER_EPS = 1e-5
