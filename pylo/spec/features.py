"""Feature-group widths and input counts of every meta-network, from the numbers of decays.

One definition read by the torch optimizers, the JAX references and the converters. ``k_mom``,
``k_rms``, ``k_fac`` are the numbers of momentum, RMS and Adafactor decays; a product of a
``k_mom``- and a ``k_rms``-wide group broadcasts to ``max(k_mom, k_rms)`` channels.

>>> hyper_group_widths(3, 1, 3)
(1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)
>>> adafac_input_size(3, 1, 3), velo_lstm_input_size(3, 1), celo_lstm_input_size()
(39, 30, 18)
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

#: ``tanh_embedding`` timescales (AdafacMLPLOpt, MuLO, ELO): the step features
TANH_TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
#: ``_fractional_tanh_embed`` offsets (VeLO, Celo): the fraction-of-training features
FRACTION_OFFSETS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
#: VeLO / Celo loss buffer: timescales kept, and the features computed from them
LOSS_BUFFER_SIZE = 10
#: VeLO's one-hot rank feature (number of axes of size > 1, capped)
RANK_CLASSES = 5
#: per-element feature groups of HyperV2 (VeLO, Celo) and CELO2 for tensors of rank >= 2
HYPER_GROUPS = ("g", "clip", "p", "m", "rms", "mrs", "rs", "fac_g", "grs", "row", "col", "rs_row", "rs_col",
                "fac_mom")
#: the groups CELO2 keeps for tensors of rank < 2 (no Adafactor groups)
UNFACTORED_GROUPS = 9


def adafac_group_widths(k_mom: int, k_rms: int, k_fac: int) -> Tuple[int, ...]:
    """AdafacMLPLOpt's 12 normalised groups: g, p, m, rms, m/sqrt(rms), 1/sqrt(rms), fac_g, row, col,
    rsqrt(row), rsqrt(col), fac_mom_mult."""
    return (1, 1, k_mom, k_rms, max(k_mom, k_rms), k_rms, k_fac, k_fac, k_fac, k_fac, k_fac, max(k_mom, k_fac))


def adafac_input_size(k_mom: int = 3, k_rms: int = 1, k_fac: int = 3) -> int:
    """AdafacLO / MuLO / ELO MLP inputs: the normalised groups plus the 11 step features."""
    return sum(adafac_group_widths(k_mom, k_rms, k_fac)) + len(TANH_TIMESCALES)


def hyper_group_widths(k_mom: int, k_rms: int, k_fac: int) -> Tuple[int, ...]:
    """Widths of the 14 per-element groups of :data:`HYPER_GROUPS` (VeLO, Celo, CELO2)."""
    return (1, 1, 1, k_mom, k_rms, max(k_mom, k_rms), k_rms, k_fac, k_rms, k_fac, k_fac, k_fac, k_fac,
            max(k_mom, k_fac))


def celo2_group_widths(k_mom: int, k_rms: int, k_fac: int, factored: bool) -> Tuple[int, ...]:
    """CELO2's groups for one tensor: all 14 when factored (rank >= 2), the first 9 otherwise."""
    widths = hyper_group_widths(k_mom, k_rms, k_fac)
    return widths if factored else widths[:UNFACTORED_GROUPS]


#: the widths of the published networks (three momentum, one RMS, three Adafactor decays)
HYPER_GROUP_WIDTHS = hyper_group_widths(3, 1, 3)


def velo_lstm_input_size(k_mom: int, k_rms: int) -> int:
    """VeLO's per-tensor LSTM inputs: fraction and loss features, mean RMS, rank, momentum and RMS moments."""
    return len(FRACTION_OFFSETS) + (LOSS_BUFFER_SIZE - 1) + k_rms + RANK_CLASSES + k_mom + max(k_mom, k_rms)


def celo_lstm_input_size() -> int:
    """Celo's LSTM inputs: only the fraction and loss features."""
    return len(FRACTION_OFFSETS) + (LOSS_BUFFER_SIZE - 1)


#: the published networks' numbers of momentum, RMS and Adafactor decays (those of :data:`HYPER_GROUP_WIDTHS`)
DECAY_COUNTS = (3, 1, 3)


def hyper_decay_counts(widths: Sequence[int]) -> Optional[Tuple[int, int, int]]:
    """``(k_mom, k_rms, k_fac)`` whose :func:`hyper_group_widths` are ``widths``; None when no numbers of
    decays give them (read from the ``m``, ``rms`` and ``fac_g`` groups, then every width is checked).

    >>> hyper_decay_counts(HYPER_GROUP_WIDTHS), hyper_decay_counts((1, 1, 1, 3))
    ((3, 1, 3), None)
    """
    if len(widths) != len(HYPER_GROUPS):
        return None
    counts = tuple(int(widths[HYPER_GROUPS.index(g)]) for g in ("m", "rms", "fac_g"))
    return counts if tuple(widths) == hyper_group_widths(*counts) else None
