"""The Triton VeLO / Celo backend (GPU): host side of :mod:`pylo.kernels.triton_hyper`.

The plan of the fused backend (:mod:`pylo.optim.hyper_fused`) with each pass
one kernel per tensor: the Adafactor row/column reductions and small tables in
torch, ``_pass1`` (LSTM statistics on the old accumulators, accumulator update,
per-block channel sums of squares), the LSTM over all tensors, then per tensor
the folded first layer (:func:`pylo.optim.hyper_fused.fold_mlp`, padded to a
power-of-two width) and ``_pass2`` (features, MLP, step, parameter). No host
synchronisation; kernels run on the current CUDA stream.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from pylo.core.fused import adafactor_tables, table_sumsq
from pylo.core.layout import from_work
from pylo.kernels import axis_strides, require_triton
from pylo.optim.hyper_fused import (GRAD_CLIP, ChannelLayout, FusedTensor, HyperEngine, TensorMoments, fold_mlp,
                                    merge_moments, set_accumulator_moments)

BLOCK = 128
#: the decay counts the kernels implement (momentum, RMS, Adafactor): VeLO's and Celo's
DECAY_COUNTS = (3, 1, 3)


def supports(net) -> bool:
    """Whether the kernels implement this network's geometry (30 inputs from VeLO's decay counts)."""
    return net.mlp.input_size == ChannelLayout(*DECAY_COUNTS).total


def _float32(values) -> list:
    """Python floats holding float32 values (kernel scalars are float32)."""
    return torch.tensor([float(v) for v in values], dtype=torch.float32).tolist()


class TritonHyper(HyperEngine):
    """The Triton backend for one parameter group on one device (the interface of :class:`FusedHyper`)."""

    def __init__(self, *, decays: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], decay_values, hidden: int,
                 kernel_layout: str, device):
        require_triton(torch.device(device))
        counts = tuple(d.numel() for d in decays)
        if counts != DECAY_COUNTS:
            raise ValueError(f"the triton backend implements {DECAY_COUNTS} momentum/RMS/Adafactor decays, got "
                             f"{counts}; use backend='fused'")
        self.layout = ChannelLayout(*counts)
        self.kernel_layout = kernel_layout
        self.fac_b = decays[2].clamp(0.0, 1.0)
        mom, rms, fac = (_float32(v) for v in decay_values)
        rms, fac = ([min(max(v, 0.0), 1.0) for v in vals] for vals in (rms, fac))
        mix = lambda vals: torch.tensor(vals, dtype=torch.float32).neg().add(1.0).tolist()  # noqa: E731  float32
        self.decay_args = (*mom, *mix(mom), rms[0], mix(rms)[0], *fac, *mix(fac))
        self.width = max(4, 1 << (hidden - 1).bit_length())  # a power of two (tl.arange)

    def prepare(self, p: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor], moments: bool
                ) -> FusedTensor:
        """Pass 1 of one tensor (state initialised): tables, then ``_pass1``; LSTM statistics."""
        import triton

        from pylo.kernels.triton_hyper import N_ALL, N_ELEM, N_MOM, _pass1

        t = FusedTensor(p, g, state, self.kernel_layout)
        t.work = t.pw if t.pw.is_contiguous() else t.pw.contiguous()
        t.gw = t.gw.contiguous()
        t.tables = adafactor_tables(state, t.gw, self.fac_b, clip=GRAD_CLIP)
        device = t.work.device
        t.strides = (1, 1, 1, 1)
        if t.factored:
            d1, d0 = t.tables["dims"]
            t.strides = (*axis_strides(t.shape, d0), *axis_strides(t.shape, d1))
            t.row_fac, t.col_fac = t.tables["row_fac"].contiguous(), t.tables["col_fac"].contiguous()
        else:
            t.row_fac = t.col_fac = state["fac_diag"]
        nch = N_ELEM if t.factored else N_ALL
        stride = nch + 2 * N_MOM
        blocks = triton.cdiv(t.n, BLOCK)
        partial = torch.empty(blocks, stride, device=device)
        _pass1[(blocks,)](t.work, t.gw, state["mom"], state["rms"], state["fac_diag"], t.row_fac, t.col_fac,
                          partial, t.n, *t.strides, *self.decay_args, FACTORED=t.factored, MOMENTS=moments,
                          NCH=nch, NP=stride, BLOCK=BLOCK)
        sumsq = torch.zeros(self.layout.total, device=device)
        sumsq[:nch] = partial[:, :nch].sum(dim=0)
        if t.factored:
            sumsq[nch:] = table_sumsq(t.tables, t.shape, ("v_row", "v_col", "row_rsqrt", "col_rsqrt"))
        t.sumsq = sumsq
        t.p_sq_mean = sumsq[self.layout["p"].start] / t.n
        t.moments = TensorMoments(t.shape, t.p_sq_mean.reshape(1))
        if moments:
            counts = torch.full((blocks,), float(BLOCK), device=device)
            counts[-1] = float(t.n - (blocks - 1) * BLOCK)
            mean, var = merge_moments(partial[:, nch:nch + N_MOM], partial[:, nch + N_MOM:], counts, t.n)
            set_accumulator_moments(t.moments, mean.unsqueeze(0), var.unsqueeze(0), DECAY_COUNTS[0])
        return t

    def fold(self, t: FusedTensor, weights: Sequence[torch.Tensor]) -> Dict:
        """The folded MLP (:func:`fold_mlp`) in the kernels' layout: ``(in, out)``, zero-padded to ``width``."""
        f = fold_mlp(self.layout, t, weights)
        width, device = self.width, t.work.device
        hidden = f["w_elem"].shape[0]

        def padded(x: torch.Tensor, shape) -> torch.Tensor:
            out = torch.zeros(shape, device=device)
            out[tuple(slice(0, s) for s in x.shape)] = x
            return out

        dense = f["dense"]
        out = {"w0": padded(f["w_elem"].t(), (f["w_elem"].shape[1], width)),
               "b0": padded(f["b0"][:, 0], (width,)),
               "wh": (torch.stack([padded(w.t(), (width, width)) for w, _ in dense]) if dense
                      else torch.zeros(1, width, width, device=device)),
               "bh": (torch.stack([padded(b[:, 0], (width,)) for _, b in dense]) if dense
                      else torch.zeros(1, width, device=device)),
               "wo": padded(f["w_out"], (2, width)), "bo": f["b_out"][:, 0].contiguous(), "layers": len(dense)}
        if t.factored:
            out["row_tab"] = padded(f["row_tab"].reshape(-1, hidden), (f["row_tab"].numel() // hidden, width))
            out["col_tab"] = padded(f["col_tab"].reshape(-1, hidden), (f["col_tab"].numel() // hidden, width))
        else:
            out["row_tab"] = out["col_tab"] = out["b0"]
        return out

    def apply(self, t: FusedTensor, folded: Dict, lr_mult: Optional[torch.Tensor], *, lr: float, exp_mult: float,
              step_mult: float, weight_decay: float) -> None:
        """Pass 2 of one tensor: ``_pass2`` (features, MLP, step, parameter in its own dtype)."""
        import triton

        from pylo.kernels.triton_hyper import N_ALL, N_ELEM, _pass2

        state = t.state
        param_scale = torch.sqrt(t.p_sq_mean + 1e-9).reshape(1)
        lr_mult_t = (lr_mult if lr_mult is not None else param_scale).reshape(1).to(torch.float32)
        blocks = triton.cdiv(t.n, BLOCK)
        _pass2[(blocks,)](t.work, t.gw, state["mom"], state["rms"], state["fac_diag"], t.row_fac, t.col_fac,
                          folded["w0"], folded["b0"], folded["row_tab"], folded["col_tab"], folded["wh"],
                          folded["bh"], folded["wo"], folded["bo"], param_scale, lr_mult_t, t.n, *t.strides,
                          float(exp_mult), float(step_mult), float(lr), float(weight_decay),
                          FACTORED=t.factored, USE_LR_MULT=lr_mult is not None,
                          NCH=N_ELEM if t.factored else N_ALL, HIDDEN_LAYERS=folded["layers"], H=self.width,
                          BLOCK=BLOCK)
        if t.work is not t.pw:
            t.p.copy_(from_work(t.work, t.p, self.kernel_layout))
