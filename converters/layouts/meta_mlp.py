"""AdafacMLPLOpt / MuLO and ELO theta (``nn/~/w<i>``, ``b<i>``) <-> ``MetaMLP``.

Upstream's ``hidden_layers`` counts every hidden layer (weights ``w0 .. w<hidden_layers>``);
MetaMLP's counts hidden-to-hidden layers, one fewer. AdafacMLPLOpt (AdafacLO, MuLO) also learns
decay offsets, stored in the torch config; ELO's theta has only the MLP.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from pylo.converters.layouts.rules import ConfigRule, Rules, TensorRule, ThetaLayout, geometry, linear_rules
from pylo.converters.tree import Path
from pylo.errors import CheckpointError
from pylo.spec import OPTIMIZERS
from pylo.spec.features import DECAY_COUNTS
from pylo.spec.networks import META_MLP_OUTPUTS, MULO_DECAY_OFFSETS, meta_mlp_layout

NN = ("nn", "~")
#: the learned decay offsets of AdafacMLPLOpt's theta (top-level arrays, one per decay)
DECAY_KEYS = ("momentum_decays", "rms_decays", "adafactor_decays")


def _mlp_layers(leaves: Dict[Path, np.ndarray]) -> int:
    n = 0
    while NN + (f"w{n}",) in leaves:
        n += 1
    return n


def _meta_mlp_config(leaves: Dict[Path, np.ndarray]) -> Dict:
    n = _mlp_layers(leaves)
    if n < 2:
        raise CheckpointError("theta has no nn/~/w0 .. w<k> MLP (need at least 2 layers)")
    w0 = leaves[NN + ("w0",)]
    if w0.ndim != 2:
        raise CheckpointError(f"nn/~/w0 has shape {w0.shape}, expected (inputs, hidden)")
    return {"input_size": int(w0.shape[0]), "hidden_size": int(w0.shape[1]), "hidden_layers": n - 2}


def meta_mlp_rules(config: Dict) -> List[TensorRule]:
    """MetaMLP: ``nn/~/w<i>`` (in, out) <-> layer ``i``'s ``nn.Linear`` weight (out, in), ``b<i>`` <-> its bias."""
    hidden_layers, input_size, hidden_size = geometry(config, ("hidden_layers", "input_size", "hidden_size"))
    layers = meta_mlp_layout(input_size, hidden_size, hidden_layers).layers
    return [rule for i, layer in enumerate(layers) for rule in linear_rules(NN + (f"w{i}",), NN + (f"b{i}",), layer)]


def _adafac_rules(config: Dict) -> Rules:
    return meta_mlp_rules(config), [ConfigRule((key,), key, (count,)) for key, count in zip(DECAY_KEYS, DECAY_COUNTS)]


def _mulo_defaults() -> Dict:
    return {key: list(values) for key, values in MULO_DECAY_OFFSETS.items()}


def _describe_meta_mlp(config: Dict) -> str:
    return (f"MLP {config['input_size']} -> {config['hidden_size']} x {config['hidden_layers'] + 1} -> "
            f"{META_MLP_OUTPUTS} "
            f"(upstream hidden_size={config['hidden_size']}, hidden_layers={config['hidden_layers'] + 1})")


def _meta_layout(name: str, optimizers: Tuple[str, ...], learned_decays: bool, **extra: Any) -> ThetaLayout:
    """AdafacMLPLOpt's and ELO's layouts differ only in the learned decay offsets beside the MLP."""
    def looks_like(leaves: Dict[Path, np.ndarray]) -> bool:
        return NN + ("w0",) in leaves and ((DECAY_KEYS[0],) in leaves) == learned_decays

    names = " / ".join(OPTIMIZERS[o].classes[0] for o in optimizers)
    return ThetaLayout(name=name, network="meta_mlp", optimizers=optimizers, looks_like=looks_like,
                       infer_config=_meta_mlp_config,
                       rules=_adafac_rules if learned_decays else lambda config: (meta_mlp_rules(config), []),
                       describe=lambda c: f"{names}: " + _describe_meta_mlp(c), **extra)


ADAFAC_MLP = _meta_layout("AdafacMLPLOpt theta (nn/~ MLP + learned decays)", ("adafaclo", "mulo"), True,
                          config_defaults=_mulo_defaults)
ELO_MLP = _meta_layout("ELO theta (nn/~ MLP, no learned decays)", ("elo",), False)
