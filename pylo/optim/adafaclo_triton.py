"""The Triton AdafacLO backend (GPU): host side of ``pylo.kernels.triton_adafaclo``.

Per tensor: the Adafactor row/column reductions and the small tables in torch,
then two fused kernels (accumulators + per-block feature moments; features +
MLP + update). The normaliser and the step features are folded into the first
layer between them, as in the fused CPU backend. No host synchronisation.
"""

from __future__ import annotations

from typing import Dict, List

import torch

from pylo.core.features import tanh_embedding
from pylo.core.fused import adafactor_tables
from pylo.core.layout import from_work, to_work
from pylo.spec.shapes import factored_dims
from pylo.kernels import axis_strides, require_triton
from pylo.optim.adafaclo_fused import NORMALIZER_EPS, NUM_RAW

BLOCK = 128


def _padded_weights(network, device):
    """MetaMLP weights as (in, out) float32, padded with zeros to a power-of-two width >= 16."""
    layers = [m for m in network.network if isinstance(m, torch.nn.Linear)]
    hidden = layers[0].out_features
    width = max(16, 1 << (hidden - 1).bit_length())
    pad = lambda t, shape: torch.nn.functional.pad(t, [0, shape[-1] - t.shape[-1]] + ([0, shape[0] - t.shape[0]]  # noqa: E731
                                                                                  if t.dim() == 2 else []))
    w0 = layers[0].weight.t()  # (39, hidden)
    hid = layers[1:-1]
    wh = torch.stack([pad(m.weight.t(), (width, width)) for m in hid]) if hid else torch.zeros(1, width, width)
    bh = torch.stack([pad(m.bias, (width,)) for m in hid]) if hid else torch.zeros(1, width)
    wo = pad(layers[-1].weight, (2, width))  # rows: direction, magnitude
    return {"w0": w0.to(device), "b0": layers[0].bias.to(device), "wh": wh.to(device).contiguous(),
            "bh": bh.to(device).contiguous(), "wo": wo.to(device).contiguous(),
            "bo": layers[-1].bias.to(device).contiguous(), "width": width, "hidden_layers": len(hid)}


def triton_adafaclo(params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict[str, torch.Tensor]], *,
                    network, decays, decay_values, lr, exp_mult, step_mult, weight_decay, kernel_layout) -> None:
    """Triton AdafacLO update of one parameter group on one CUDA device (or the interpreter)."""
    import triton

    from pylo.kernels.triton_adafaclo import _pass1, _pass2
    from pylo.optim.adafaclo import _init_state

    device = params[0].device
    require_triton(device)
    mom, rms_v, fac = decay_values
    clip = lambda vals: [min(max(v, 0.0), 1.0) for v in vals]  # noqa: E731
    rms_v, fac = clip(rms_v), clip(fac)
    one_minus = lambda vals: torch.tensor(vals, dtype=torch.float32).neg().add(1.0).tolist()  # noqa: E731  float32
    am, ar, af = one_minus(mom), one_minus(rms_v), one_minus(fac)
    weights = _padded_weights(network, device)
    width = weights["width"]
    fac_b = decays[2].clamp(0.0, 1.0)
    for p, g, state in zip(params, grads, states):
        pw = to_work(p, kernel_layout)
        _init_state(state, pw, decays)
        shape = tuple(pw.shape)
        n = pw.numel()
        work = pw if pw.is_contiguous() else pw.contiguous()
        gw = to_work(g, kernel_layout).contiguous()
        tables = adafactor_tables(state, gw, fac_b)
        dims = factored_dims(shape)
        inner0 = span0 = inner1 = span1 = 1
        empty = state["fac_diag"]
        if tables is not None:
            d1, d0 = dims
            inner0, span0 = axis_strides(shape, d0)
            inner1, span1 = axis_strides(shape, d1)
            t = {k: v.contiguous() for k, v in tables.items() if k != "dims"}
        else:
            t = {k: empty for k in ("v_row", "v_col", "row_fac", "col_fac", "row_rsqrt", "col_rsqrt")}
        blocks = triton.cdiv(n, BLOCK)
        partial = torch.empty(blocks, NUM_RAW, device=device)
        common = (work, gw, state["mom"], state["rms"], state["fac_diag"], t["v_row"], t["v_col"], t["row_fac"],
                  t["col_fac"], t["row_rsqrt"], t["col_rsqrt"])
        _pass1[(blocks,)](*common, partial, n, inner0, span0, inner1, span1, *mom, *am, rms_v[0], ar[0], *fac, *af,
                          FACTORED=tables is not None, BLOCK=BLOCK)
        scale = torch.rsqrt(NORMALIZER_EPS + partial.sum(dim=0) / n)
        w0 = torch.zeros(NUM_RAW, width, device=device)
        w0[:, : weights["w0"].shape[1]] = weights["w0"][:NUM_RAW] * scale.unsqueeze(-1)
        b0 = torch.zeros(width, device=device)
        b0[: weights["b0"].shape[0]] = weights["b0"] + tanh_embedding(state["step"]) @ weights["w0"][NUM_RAW:]
        _pass2[(blocks,)](*common, w0, b0, weights["wh"], weights["bh"], weights["wo"], weights["bo"], n,
                          inner0, span0, inner1, span1, float(exp_mult), float(step_mult), float(lr),
                          float(weight_decay), FACTORED=tables is not None,
                          HIDDEN_LAYERS=weights["hidden_layers"], H=width, BLOCK=BLOCK)
        if work is not pw:
            p.copy_(from_work(work, p, kernel_layout))
        state["step"] += 1
