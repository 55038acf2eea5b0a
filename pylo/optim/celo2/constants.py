"""The CELO2 family's fixed numbers, each defined once (upstream ``celo2_optax`` and scaling_l2o).

The Triton kernels read the epsilons below as compile-time constants, so a change here reaches
every backend.
"""

from __future__ import annotations

from pylo.core.features import GRAD_CLIP_FEATURE  # noqa: F401  (the clip(g, -0.1, 0.1) feature, shared with HyperV2)
from pylo.core.orthogonalize import NS_COEFFS  # noqa: F401  (Newton-Schulz's quintic coefficients)

#: ``rsqrt(rms + RMS_EPS)`` in the feature groups
RMS_EPS = 1e-8
#: every second-moment normaliser: ``x * rsqrt(NORMALIZER_EPS + mean(x^2))`` over the last two axes
NORMALIZER_EPS = 1e-9
#: ``param_scale_mult``: ``sqrt(mean(p^2) + PARAM_SCALE_EPS)``
PARAM_SCALE_EPS = 1e-9
#: a rank < 2 tensor's Adafactor feature ``g * rsqrt(max(v_diag + DIAG_EPS, DIAG_EPS))``
#: (``pylo.core.accumulators.update_factored`` with ``safe_rsqrt``)
DIAG_EPS = 1e-9
#: ELO-CELO2's shared-accumulator AdamW: ``m / bc1 / (sqrt(rms / bc2) + ADAM_EPS)``
ADAM_EPS = 1e-8
#: CELO2's own AdamW
ADAM_BETAS = (0.9, 0.95)
#: the learned path's elementwise gradient clamp (``grad_clip_val``)
GRAD_CLIP = 1000.0
#: a parameter whose name contains this goes to AdamW (upstream routes tree paths)
EMBED_MARKER = "embed"

#: the fixed accumulator decays of the published networks
MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAYS = (0.95,)
ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
#: Newton-Schulz iterations and the epsilon of its initial normalisation
NS_ITERS = 5
NS_EPS = 1e-8

#: fused backend: matrices of at least this many elements are orthogonalised in place in row blocks of
#: NS_BLOCK (:func:`pylo.core.orthogonalize.newton_schulz_`); smaller ones batched, as the naive path does
NS_IN_PLACE_MIN = 1 << 16
NS_BLOCK = 256
#: fused and Triton AdamW paths: elements per multi-tensor batch, in units of ``chunk_size``
ADAM_BATCH_CHUNKS = 4
