"""The foreach CELO2-family engine: the naive arithmetic with multi-tensor accumulator updates and one
MLP call over all tensors of a group (per number of feature groups)."""

from __future__ import annotations

from pylo.optim.celo2.naive import NaiveEngine


class ForeachEngine(NaiveEngine):
    name = "foreach"
    foreach = True
