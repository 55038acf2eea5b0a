"""The Triton VeLO / Celo engine (GPU): the host side of :mod:`.kernels`.

The plan of the fused engine (:mod:`.fused`, :mod:`.two_pass`) with each pass one kernel per
tensor: the Adafactor row/column reductions and small tables in torch, ``_pass1`` (LSTM
statistics on the old accumulators, accumulator update, per-block channel sums of squares), the
LSTM over all tensors, then per tensor the folded first layer (:func:`.channels.fold_mlp`, padded
to a power-of-two width) and ``_pass2`` (features, MLP, step, parameter). No host
synchronisation; kernels run on the current CUDA stream. The kernels implement VeLO's decay
counts (3 momentum, 1 RMS, 3 Adafactor: 30 per-element inputs), which Celo shares.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from pylo.core import reduce
from pylo.core.fused import adafactor_tables, table_sumsq
from pylo.core.layout import from_work
from pylo.kernels import axis_strides, require_triton
from pylo.optim.hyperv2.channels import TABLE_NAMES, ChannelLayout, fold_mlp
from pylo.optim.hyperv2.constants import GRAD_CLIP, KERNEL_DECAY_COUNTS, PARAM_SCALE_EPS
from pylo.optim.hyperv2.controller import TensorMoments
from pylo.optim.hyperv2.settings import EngineSettings
from pylo.optim.hyperv2.two_pass import PassTensor, TwoPassEngine

BLOCK = 128


def _float32(values) -> list:
    """Python floats holding float32 values (kernel scalars are float32)."""
    return torch.tensor([float(v) for v in values], dtype=torch.float32).tolist()


def _padded(x: torch.Tensor, shape, device) -> torch.Tensor:
    """``x`` in the corner of a zero tensor of ``shape``."""
    out = torch.zeros(shape, device=device)
    out[tuple(slice(0, s) for s in x.shape)] = x
    return out


class TritonEngine(TwoPassEngine):
    """The Triton backend for one parameter group on one device."""

    name = "triton"

    @classmethod
    def unsupported(cls, network) -> Optional[str]:
        """Why the kernels cannot run ``network``: they implement 30 per-element inputs (VeLO's decay counts)."""
        want = ChannelLayout(*KERNEL_DECAY_COUNTS).total
        if network.mlp.input_size != want:
            return (f"the triton kernels implement {want} per-element MLP inputs (decay counts "
                    f"{KERNEL_DECAY_COUNTS}), the network reads {network.mlp.input_size}")
        return None

    def __init__(self, settings: EngineSettings):
        super().__init__(settings)
        require_triton(torch.device(settings.device))
        counts = settings.decay_counts
        if counts != KERNEL_DECAY_COUNTS:
            raise ValueError(f"the triton backend implements {KERNEL_DECAY_COUNTS} momentum/RMS/Adafactor decays, "
                             f"got {counts}; use backend='fused'")
        self.layout = ChannelLayout(*counts)
        self.kernel_layout = settings.kernel_layout
        self.fac_b = settings.decays[2].clamp(0.0, 1.0)
        mom, rms, fac = (_float32(v) for v in settings.decay_values)
        rms, fac = ([min(max(v, 0.0), 1.0) for v in vals] for vals in (rms, fac))
        mix = lambda vals: torch.tensor(vals, dtype=torch.float32).neg().add(1.0).tolist()  # noqa: E731  float32
        self.decay_args = (*mom, *mix(mom), rms[0], mix(rms)[0], *fac, *mix(fac))
        hidden = settings.mlp.hidden_size
        self.width = max(4, 1 << (hidden - 1).bit_length())  # a power of two (tl.arange)

    def _tensor(self, p: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor]) -> PassTensor:
        """A tensor's contiguous work views, updated Adafactor tables and the kernels' index strides."""
        t = PassTensor(p, g, state, self.kernel_layout)
        t.work = t.pw if t.pw.is_contiguous() else t.pw.contiguous()
        t.gw = t.gw.contiguous()
        t.tables = adafactor_tables(state, t.gw, self.fac_b, clip=GRAD_CLIP)
        t.strides = (1, 1, 1, 1)
        if t.factored:
            d1, d0 = t.tables["dims"]
            t.strides = (*axis_strides(t.shape, d0), *axis_strides(t.shape, d1))
            t.row_fac, t.col_fac = t.tables["row_fac"].contiguous(), t.tables["col_fac"].contiguous()
        else:
            t.row_fac = t.col_fac = state["fac_diag"]
        return t

    def prepare_tensor(self, p: torch.Tensor, g: torch.Tensor, state: Dict[str, torch.Tensor], moments: bool,
                       split=None) -> PassTensor:
        """Pass 1 of one tensor (state initialised): tables, then ``_pass1``; LSTM statistics (whole tensors
        only: shards step on the fused engine)."""
        if split is not None:
            raise ValueError("the Triton engine steps whole tensors; one rank's part of a sharded one takes "
                             "the fused engine")
        import triton

        from pylo.optim.hyperv2.kernels import N_ALL, N_ELEM, N_MOM, _pass1

        t = self._tensor(p, g, state)
        device = t.work.device
        nch = N_ELEM if t.factored else N_ALL
        stride = nch + 2 * N_MOM
        blocks = triton.cdiv(t.n, BLOCK)
        partial = torch.empty(blocks, stride, device=device)
        _pass1[(blocks,)](t.work, t.gw, state["mom"], state["rms"], state["fac_diag"], t.row_fac, t.col_fac,
                          partial, t.n, *t.strides, *self.decay_args, FACTORED=t.factored, MOMENTS=moments,
                          NCH=nch, NP=stride, BLOCK=BLOCK)
        sumsq = torch.zeros(self.layout.total, device=device)
        sumsq[:nch] = reduce.merge_sums(partial[:, :nch])
        if t.factored:
            sumsq[nch:] = table_sumsq(t.tables, t.shape, TABLE_NAMES)
        t.sumsq = sumsq
        t.p_sq_mean = sumsq[self.layout["p"].start] / t.n
        t.moments = TensorMoments(t.shape, t.p_sq_mean.reshape(1))
        if moments:
            counts = torch.full((blocks,), float(BLOCK), device=device)
            counts[-1] = float(t.n - (blocks - 1) * BLOCK)
            mean, var = reduce.merge_moments(partial[:, nch:nch + N_MOM], partial[:, nch + N_MOM:], counts, t.n)
            t.moments.set_accumulators(mean.unsqueeze(0), var.unsqueeze(0), self.layout.k_mom)
        return t

    def fold(self, t: PassTensor, weights: Sequence[torch.Tensor]) -> Dict:
        """The folded MLP (:func:`.channels.fold_mlp`) in the kernels' layout: ``(in, out)``, zero-padded."""
        f = fold_mlp(self.layout, t, weights)
        width, device = self.width, t.work.device
        hidden = f["w_elem"].shape[0]
        dense = f["dense"]
        out = {"w0": _padded(f["w_elem"].t(), (f["w_elem"].shape[1], width), device),
               "b0": _padded(f["b0"][:, 0], (width,), device),
               "wh": (torch.stack([_padded(w.t(), (width, width), device) for w, _ in dense]) if dense
                      else torch.zeros(1, width, width, device=device)),
               "bh": (torch.stack([_padded(b[:, 0], (width,), device) for _, b in dense]) if dense
                      else torch.zeros(1, width, device=device)),
               "wo": _padded(f["w_out"], (2, width), device), "bo": f["b_out"][:, 0].contiguous(),
               "layers": len(dense)}
        if t.factored:
            for key in ("row_tab", "col_tab"):
                out[key] = _padded(f[key].reshape(-1, hidden), (f[key].numel() // hidden, width), device)
        else:
            out["row_tab"] = out["col_tab"] = out["b0"]
        return out

    def finish_tensor(self, t: PassTensor, folded: Dict, lr_mult: Optional[torch.Tensor]) -> None:
        """Pass 2 of one tensor: ``_pass2`` (features, MLP, step, parameter in its own dtype)."""
        import triton

        from pylo.optim.hyperv2.kernels import N_ALL, N_ELEM, _pass2

        s, state = self.s, t.state
        param_scale = torch.sqrt(t.p_sq_mean + PARAM_SCALE_EPS).reshape(1)
        lr_mult_t = (lr_mult if lr_mult is not None else param_scale).reshape(1).to(torch.float32)
        blocks = triton.cdiv(t.n, BLOCK)
        _pass2[(blocks,)](t.work, t.gw, state["mom"], state["rms"], state["fac_diag"], t.row_fac, t.col_fac,
                          folded["w0"], folded["b0"], folded["row_tab"], folded["col_tab"], folded["wh"],
                          folded["bh"], folded["wo"], folded["bo"], param_scale, lr_mult_t, t.n, *t.strides,
                          float(s.exp_mult), float(s.step_mult), float(s.lr), float(s.weight_decay),
                          FACTORED=t.factored, USE_LR_MULT=lr_mult is not None,
                          NCH=N_ELEM if t.factored else N_ALL, HIDDEN_LAYERS=folded["layers"], H=self.width,
                          BLOCK=BLOCK)
        if t.work is not t.pw:
            t.p.copy_(from_work(t.work, t.p, self.kernel_layout))
