"""The Triton AdafacLO engine (GPU): the host side of ``pylo.optim.adafac.kernels``.

Per tensor: the Adafactor row/column reductions and the small tables in torch,
then two fused kernels: ``prepare`` runs the first (accumulators + per-block
feature moments), ``finish`` the second (features + MLP + update) after folding
the normaliser and the step features into the first layer, as the fused engine
does. No host synchronisation. (This module's name is the backend's; ``import
triton`` below is the Triton package.)
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from pylo.core.features import tanh_embedding
from pylo.core.fused import adafactor_tables
from pylo.core.layout import from_work, to_work
from pylo.core.reduce import sum_over
from pylo.kernels import axis_strides, require_triton
from pylo.optim.adafac.constants import NORMALIZER_EPS, NUM_RAW
from pylo.optim.adafac.engine import AdafacEngine
from pylo.optim.adafac.network import linear_layers

BLOCK = 128
#: the table operands of the kernels, in their order (a tensor that is not factored passes its diagonal moment)
TABLES = ("v_row", "v_col", "row_fac", "col_fac", "row_rsqrt", "col_rsqrt")


def padded_weights(network, device) -> Dict:
    """MetaMLP weights as (in, out) float32, padded with zeros to a power-of-two width >= 16."""
    layers = linear_layers(network)
    hidden = layers[0].out_features
    width = max(16, 1 << (hidden - 1).bit_length())
    pad = lambda t, shape: torch.nn.functional.pad(t, [0, shape[-1] - t.shape[-1]] + (  # noqa: E731
        [0, shape[0] - t.shape[0]] if t.dim() == 2 else []))
    w0 = layers[0].weight.t()  # (39, hidden)
    hid = layers[1:-1]
    wh = torch.stack([pad(m.weight.t(), (width, width)) for m in hid]) if hid else torch.zeros(1, width, width)
    bh = torch.stack([pad(m.bias, (width,)) for m in hid]) if hid else torch.zeros(1, width)
    wo = pad(layers[-1].weight, (2, width))  # rows: direction, magnitude
    return {"w0": w0.to(device), "b0": layers[0].bias.to(device), "wh": wh.to(device).contiguous(),
            "bh": bh.to(device).contiguous(), "wo": wo.to(device).contiguous(),
            "bo": layers[-1].bias.to(device).contiguous(), "width": width, "hidden_layers": len(hid)}


def _work_views(p: torch.Tensor, g: torch.Tensor, kernel_layout: str):
    """``(pw, work, gw)``: the parameter's work view, a contiguous one, and the contiguous work gradient."""
    pw = to_work(p, kernel_layout)
    return pw, (pw if pw.is_contiguous() else pw.contiguous()), to_work(g, kernel_layout).contiguous()


def _operands(work: torch.Tensor, gw: torch.Tensor, state: Dict, tables):
    """The tensors both kernels take, and the strides that gather a factored tensor's tables."""
    strides = (1, 1, 1, 1)
    if tables is not None:
        d1, d0 = tables["dims"]
        strides = axis_strides(work.shape, d0) + axis_strides(work.shape, d1)
        t = {k: v.contiguous() for k, v in tables.items() if k != "dims"}
    else:
        t = {k: state["fac_diag"] for k in TABLES}
    return (work, gw, state["mom"], state["rms"], state["fac_diag"]) + tuple(t[k] for k in TABLES), strides


def _first_layer(weights: Dict, sumsq: torch.Tensor, n: int, step: torch.Tensor):
    """The padded first layer with the normaliser folded into its weights and the step features into its bias."""
    width, device = weights["width"], sumsq.device
    scale = torch.rsqrt(NORMALIZER_EPS + sumsq / n)
    w0 = torch.zeros(NUM_RAW, width, device=device)
    w0[:, : weights["w0"].shape[1]] = weights["w0"][:NUM_RAW] * scale.unsqueeze(-1)
    b0 = torch.zeros(width, device=device)
    b0[: weights["b0"].shape[0]] = weights["b0"] + tanh_embedding(step) @ weights["w0"][NUM_RAW:]
    return w0, b0


def _one_minus(values) -> List[float]:
    """``1 - v`` computed in float32, as Python floats."""
    return torch.tensor(values, dtype=torch.float32).neg().add(1.0).tolist()


class TritonEngine(AdafacEngine):
    """Two kernels per tensor: ``prepare`` launches the accumulator pass, ``finish`` the update pass."""

    name = "triton"

    def prepare(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], states: Sequence[Dict]
                ) -> List:
        from pylo.optim.adafac.kernels import _pass1  # needs the triton package: loaded when this engine runs

        device = params[0].device
        require_triton(device)
        if self.decay_values is None:
            raise ValueError("the triton engine needs decay_values (the decays as Python floats)")
        mom, rms_v, fac = self.decay_values
        rms_v, fac = [min(max(v, 0.0), 1.0) for v in rms_v], [min(max(v, 0.0), 1.0) for v in fac]
        scalars = (*mom, *_one_minus(mom), rms_v[0], _one_minus(rms_v)[0], *fac, *_one_minus(fac))
        fac_b = self.decays[2].clamp(0.0, 1.0)
        prepared = []
        for p, g, state in zip(params, grads, states):
            _, work, gw = _work_views(p, g, self.kernel_layout)
            tables = adafactor_tables(state, gw, fac_b)
            tensors, strides = _operands(work, gw, state, tables)
            n = work.numel()
            partial = torch.empty(-(-n // BLOCK), NUM_RAW, device=device)
            _pass1[(partial.shape[0],)](*tensors, partial, n, *strides, *scalars, FACTORED=tables is not None,
                                        BLOCK=BLOCK)
            prepared.append((p, g, state, tables, partial))
        return prepared

    def finish(self, prepared: List, **inputs) -> None:
        from pylo.optim.adafac.kernels import _pass2

        if not prepared:
            return
        weights = padded_weights(self.network, prepared[0][0].device)
        scalars = (float(self.exp_mult), float(self.step_mult), float(self.lr), float(self.weight_decay))
        for p, g, state, tables, partial in prepared:
            pw, work, gw = _work_views(p, g, self.kernel_layout)
            tensors, strides = _operands(work, gw, state, tables)
            n = work.numel()
            w0, b0 = _first_layer(weights, sum_over(partial, (0,)), n, state["step"])
            _pass2[(partial.shape[0],)](*tensors, w0, b0, weights["wh"], weights["bh"], weights["wo"], weights["bo"],
                                        n, *strides, *scalars, FACTORED=tables is not None,
                                        HIDDEN_LAYERS=weights["hidden_layers"], H=weights["width"], BLOCK=BLOCK)
            if work is not pw:
                p.copy_(from_work(work, p, self.kernel_layout))
            state["step"] += 1
