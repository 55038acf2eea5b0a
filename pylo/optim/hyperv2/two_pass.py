"""What the fused and Triton engines share: the two-pass plan over a group's tensors.

**Pass 1** (:meth:`TwoPassEngine.prepare`, before the LSTM, which needs its results) visits each
tensor once: the whole-tensor statistics the LSTM reads, taken on the *old* accumulators, then
the accumulator update, the new features and each feature channel's sum of squares (the
second-moment normalisers). **Pass 2** (:meth:`TwoPassEngine.finish`) interpolates every
tensor's MLP at once, folds the normalisers into its first layer (:func:`.channels.fold_mlp`)
and runs features, MLP, step and parameter update again per tensor.

A tensor with a split (``settings.splits``: one rank's part of a sharded parameter) sums its
statistics over the ranks (the fused engine; it is never batched).

Rank < 2 tensors (biases, norms, scalars) of one size can share one slab (:class:`SmallBatch`,
the fused engine does so up to ``chunk_size`` elements): per-tensor sums become reductions over a
``(K, n)`` view and the K MLPs batched products, so a model's hundreds of small tensors cost a few
dozen operations.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch

from pylo.core.layout import to_work
from pylo.core.reduce import Split, global_shape
from pylo.optim.backend import Engine
from pylo.optim.hyperv2.channels import interpolate
from pylo.optim.hyperv2.controller import TensorMoments
from pylo.optim.hyperv2.settings import EngineSettings, Prepared


class PassTensor:
    """One tensor between the passes: its work views, Adafactor tables and pass-1 sums."""

    def __init__(self, p: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor], kernel_layout: str,
                 split: Optional[Split] = None):
        self.p = p
        self.pw = to_work(p, kernel_layout)
        self.gw = to_work(g, kernel_layout)
        self.shape = tuple(self.pw.shape)  # local: one rank's part when ``split`` is given
        self.split = split
        self.global_shape = global_shape(self.shape, split)
        self.n = math.prod(self.global_shape)  # the whole tensor's elements
        self.state = state
        self.m, self.rms, self.diag = state["mom"], state["rms"], None
        self.tables: Optional[Dict] = None
        self.sumsq: Optional[torch.Tensor] = None  # per fused channel
        self.p_sq_mean: Optional[torch.Tensor] = None
        self.moments: Optional[TensorMoments] = None

    @property
    def factored(self) -> bool:
        return self.tables is not None


class SmallBatch:
    """Rank < 2 tensors of one size, processed together: their elements side by side in one slab.

    ``K`` tensors of ``n`` elements each (``K * n <= chunk``); every row of the
    feature buffer is viewed ``(K, n)``, so per-tensor sums are reductions over the
    last axis and the per-tensor MLPs one batched matrix product each.
    """

    def __init__(self, tensors: List[PassTensor]):
        self.tensors = tensors
        self.k, self.n = len(tensors), tensors[0].n
        self.sumsq: Optional[torch.Tensor] = None  # (K, channels)
        self.p_sq_mean: Optional[torch.Tensor] = None
        self.moments: Optional[TensorMoments] = None


class BatchMember:
    """A tensor's place in a :class:`SmallBatch`."""

    def __init__(self, batch: SmallBatch, index: int):
        self.batch, self.index = batch, index


class TwoPassEngine(Engine):
    """Pass 1 and pass 2 over a group's tensors; subclasses implement them per tensor (and per batch).

    Per tensor: ``prepare_tensor(p, g, state, moments, split) -> PassTensor`` (setting ``moments``, a
    :class:`TensorMoments` of one tensor), ``fold(t, weights)`` and ``finish_tensor(t, folded,
    lr_mult)``; per batch: ``prepare_batch`` and ``finish_batch``.
    """

    #: rank < 2 tensors are processed together (grouped by size) up to this many elements per batch; 0: never
    batch_limit = 0

    def __init__(self, settings: EngineSettings):
        self.s = settings

    def prepare(self, params, grads, states) -> Prepared:
        """Pass 1 of a group's tensors (states initialised by the optimizer)."""
        moments = self.s.inputs.reads_moments
        handles: List[object] = [None] * len(params)
        pieces = []  # (positions, TensorMoments) covering every tensor once
        small: Dict[int, List[int]] = {}
        splits = self.s.splits or [None] * len(params)
        for j, (p, g, state, split) in enumerate(zip(params, grads, states, splits)):
            if split is None and state["fac_diag"].numel() and p.numel() <= self.batch_limit:  # rank < 2, small
                small.setdefault(p.numel(), []).append(j)
                continue
            t = self.prepare_tensor(p, g, state, moments, split)
            handles[j] = t
            pieces.append(([j], t.moments))
        for n, positions in small.items():
            per_batch = max(1, self.batch_limit // n)
            for start in range(0, len(positions), per_batch):
                part = positions[start:start + per_batch]
                batch = self.prepare_batch([params[j] for j in part], [grads[j] for j in part],
                                           [states[j] for j in part], moments)
                for i, j in enumerate(part):
                    handles[j] = BatchMember(batch, i)
                pieces.append((part, batch.moments))
        return Prepared(handles, self._lstm_inputs(pieces, len(params)))

    def _lstm_inputs(self, pieces, n: int) -> torch.Tensor:
        """The LSTM inputs of every tensor, ``(n, inputs)``, from the pieces' statistics."""
        rows = [(positions, self.s.inputs.moments(moments)) for positions, moments in pieces]
        out = torch.empty(n, rows[0][1].shape[-1], device=self.s.device)
        for positions, r in rows:
            out.index_copy_(0, torch.tensor(positions, device=out.device), r)
        return out

    def finish(self, prepared: Prepared, *, controls: torch.Tensor, lr_mults: torch.Tensor) -> None:
        """Pass 2 of a group's tensors: every tensor's MLP interpolated at once, folded, applied."""
        s = self.s
        weights = interpolate(s.mlp, controls, s.interp_mult)
        handles = prepared.handles
        members: Dict[int, List[int]] = {}
        for j, handle in enumerate(handles):
            if isinstance(handle, BatchMember):
                members.setdefault(id(handle.batch), []).append(j)
                continue
            self.finish_tensor(handle, self.fold(handle, s.mlp.unflatten(weights[j])),
                               lr_mults[j] if s.use_lr_mult else None)
        for positions in members.values():
            batch = handles[positions[0]].batch
            order = sorted(positions, key=lambda j: handles[j].index)
            sel = torch.tensor(order, device=weights.device)
            self.finish_batch(batch, s.mlp.unflatten(weights.index_select(0, sel)),
                              lr_mults.index_select(0, sel) if s.use_lr_mult else None)

    def prepare_batch(self, params, grads, states, moments: bool) -> SmallBatch:
        raise NotImplementedError(f"{type(self).__name__} does not batch small tensors")

    def finish_batch(self, batch: SmallBatch, weights, lr_mults) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not batch small tensors")
