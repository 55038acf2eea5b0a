"""CELO2 / ELO-CELO2 theta (``ff_mod_stack/~``: one split-input MLP) <-> ``CELO2MLP``.

``w0__<i>`` is the first-layer block of feature group ``i``, ``b0`` its bias, ``w<j>`` / ``b<j>``
the dense layers after it. Both sides keep Haiku's ``(in, out)`` weights: no transposes. A
Celo-style stack axis of size 1 (``param_inits=1``) is accepted and dropped.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from pylo.converters.layouts.rules import TensorRule, ThetaLayout, geometry, linear_rules, tensor_rule
from pylo.converters.tree import Path
from pylo.errors import CheckpointError
from pylo.spec.networks import NETWORKS, celo2_mlp_layout

FF = ("ff_mod_stack", "~")
#: the top-level trees of a VeLO / Celo theta that a CELO2 theta lacks
HYPER_ONLY = ("rnn_params", "lstm_init_state")
_DEFAULT_OUTPUTS = NETWORKS["celo2_mlp"].defaults["output_size"]


def _celo2_canonical(leaves: Dict[Path, np.ndarray], origin: str) -> Dict[Path, np.ndarray]:
    """Drop a leading stack axis of size 1 (Celo-style ``ff_mod_stack`` with ``param_inits=1``)."""
    lstm = sorted({p[0] for p in leaves if p[0] in HYPER_ONLY})
    if lstm and not any(p[:1] == FF[:1] for p in leaves):
        raise CheckpointError(f"{origin}: an LSTM optimizer without ff_mod_stack (it has {' and '.join(lstm)} only), "
                              "like Celo-Adam (amoudgl/celo-adam); pylo does not implement that optimizer")
    if lstm:
        raise CheckpointError(f"{origin}: this is a VeLO/Celo-style checkpoint (it has {' and '.join(lstm)}); CELO2 "
                              "theta holds only ff_mod_stack: convert it with --optimizer celo or velo")
    ff = {p: v for p, v in leaves.items() if p[:2] == FF}
    stacked = [p for p, v in ff.items() if v.ndim == (1 if p[2].startswith("b") else 2) + 1]
    if not stacked:
        return leaves
    sizes = {int(ff[p].shape[0]) for p in stacked}
    if len(stacked) != len(ff) or sizes != {1}:
        raise CheckpointError(
            f"{origin}: ff_mod_stack holds a stack of {max(sizes)} per-parameter MLPs (a VeLO/Celo-style "
            "param_inits axis); CELO2 has a single MLP (a stack axis of size 1 is accepted)"
            if len(stacked) == len(ff) else f"{origin}: ff_mod_stack mixes stacked and unstacked arrays")
    return {p: (v[0] if p in ff else v) for p, v in leaves.items()}


def _celo2_config(leaves: Dict[Path, np.ndarray]) -> Dict:
    n_groups = 0
    while FF + (f"w0__{n_groups}",) in leaves:
        n_groups += 1
    n_dense = 0
    while FF + (f"w{n_dense + 1}",) in leaves:
        n_dense += 1
    if n_groups == 0 or n_dense == 0:
        raise CheckpointError("theta has no ff_mod_stack/~/w0__0 .. and w1 .. (a CELO2 per-parameter MLP)")
    w0 = leaves[FF + ("w0__0",)]
    last = leaves[FF + (f"w{n_dense}",)]
    if w0.ndim < 2 or last.ndim < 2:
        raise CheckpointError(f"ff_mod_stack/~/w0__0 has shape {w0.shape}, expected (inputs, hidden)")
    return {"feature_dims": [int(leaves[FF + (f"w0__{i}",)].shape[-2]) for i in range(n_groups)],
            "hidden_size": int(w0.shape[-1]), "hidden_layers": n_dense, "output_size": int(last.shape[-1]),
            "activation": "relu"}


def celo2_rules(config: Dict) -> List[TensorRule]:
    """CELO2MLP: ``ff_mod_stack/~/w0__i`` <-> block ``i``, ``b0`` <-> its bias,
    ``w<j>``/``b<j>`` <-> dense layer ``j-1``."""
    hidden_size, hidden_layers = geometry(config, ("hidden_size", "hidden_layers"))
    output_size = config.get("output_size", _DEFAULT_OUTPUTS)
    layout = celo2_mlp_layout(geometry(config, ("feature_dims",))[0], hidden_size, hidden_layers, output_size)
    rules = [tensor_rule(FF + (f"w0__{i}",), block) for i, block in enumerate(layout.blocks)]
    rules.append(tensor_rule(FF + ("b0",), layout.bias))
    for j, dense in enumerate(layout.dense, start=1):
        rules += linear_rules(FF + (f"w{j}",), FF + (f"b{j}",), dense)
    return rules


def _describe_celo2(config: Dict) -> str:
    return (f"CELO2 / ELO-CELO2: split-input MLP {len(config['feature_dims'])} groups "
            f"({sum(config['feature_dims'])} inputs) -> {config['hidden_size']} x {config['hidden_layers']} -> "
            f"{config['output_size']} (upstream ff_hidden_size={config['hidden_size']}, "
            f"ff_hidden_layers={config['hidden_layers']})")


CELO2_FF = ThetaLayout(
    name="CELO2 theta (ff_mod_stack/~ split-input MLP)",
    network="celo2_mlp",
    optimizers=("celo2", "elo_celo2"),
    looks_like=lambda leaves: FF + ("w0__0",) in leaves and not any(p[0] in HYPER_ONLY for p in leaves),
    infer_config=_celo2_config,
    rules=lambda config: (celo2_rules(config), []),
    describe=_describe_celo2,
    canonical=_celo2_canonical,
)
