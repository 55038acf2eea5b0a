"""VeLO (HyperV2) and Celo theta <-> ``HyperNetwork`` (``rnn.*``: the per-tensor LSTM, ``mlp.*``: the MLP bank).

Upstream's tree: ``rnn_params/<module>/{w, b}`` (the LSTM side), ``lstm_init_state/{hidden, cell}``
and ``ff_mod_stack/~`` (the bank of ``param_inits`` MLPs, a leading stack axis on every array;
the first layer split into 14 feature-group blocks ``w0__0 .. w0__13``, joined in numeric order
into one torch weight). VeLO's LSTM reads 30 per-tensor features, Celo's 18.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import numpy as np

from pylo.converters.layouts.celo2_mlp import FF
from pylo.converters.layouts.rules import Rules, ThetaLayout, concat_rule, geometry, linear_rules, tensor_rule
from pylo.converters.tree import Path, path_str
from pylo.errors import CheckpointError
from pylo.spec import OPTIMIZERS
from pylo.spec.features import HYPER_GROUP_WIDTHS, HYPER_GROUPS, celo_lstm_input_size, hyper_decay_counts, \
    velo_lstm_input_size
from pylo.spec.networks import VELO_RNN_LINEARS, hyper_network_layout

RNN = ("rnn_params",)
LSTM_STATE = ("lstm_init_state",)
#: upstream's ``rnn_params`` modules, in the order of ``pylo.spec.networks.VELO_RNN_LINEARS``
UPSTREAM_RNN_LINEARS = ("linear", "linear_1", "linear_2", "rnn/linear", "rnn_to_controls", "step_size")
CELO_LSTM_INPUTS = celo_lstm_input_size()
#: the geometry ``hyper_network_layout`` takes, in the order a config is read
GEOMETRY = ("lstm_input_size", "lstm_hidden_size", "param_inits", "hidden_size", "hidden_layers", "output_size")


def _leaf(leaves: Dict[Path, np.ndarray], path: Path, ndim: int) -> np.ndarray:
    if path not in leaves:
        raise CheckpointError(f"theta has no {path_str(path)}")
    if leaves[path].ndim != ndim:
        raise CheckpointError(f"theta {path_str(path)} has shape {leaves[path].shape}, expected {ndim} axes")
    return leaves[path]


def _hyper_config(leaves: Dict[Path, np.ndarray]) -> Dict:
    """Geometry of a HyperV2 / Celo theta, read from its shapes (then every shape is checked against it)."""
    n_in, hidden = _leaf(leaves, RNN + ("linear_1", "w"), 2).shape
    param_inits = _leaf(leaves, RNN + ("rnn_to_controls", "w"), 2).shape[1]
    widths = []
    while FF + (f"w0__{len(widths)}",) in leaves:  # numeric order, whatever the file's key order
        widths.append(int(_leaf(leaves, FF + (f"w0__{len(widths)}",), 3).shape[1]))
    if not widths:
        raise CheckpointError("theta has no ff_mod_stack/~/w0__0")
    _check_group_widths(leaves, widths)
    layers = 1
    while FF + (f"w{layers}",) in leaves:
        layers += 1
    if layers < 2:
        raise CheckpointError("theta has no ff_mod_stack/~/w1 (the MLP needs at least two layers)")
    return {"lstm_input_size": int(n_in), "lstm_hidden_size": int(hidden), "param_inits": int(param_inits),
            "input_size": sum(widths), "hidden_size": int(_leaf(leaves, FF + ("b0",), 2).shape[1]),
            "hidden_layers": layers - 2, "output_size": int(_leaf(leaves, FF + (f"w{layers - 1}",), 3).shape[2]),
            "group_widths": widths}


def _check_group_widths(leaves: Dict[Path, np.ndarray], widths: Sequence[int]) -> None:
    """The blocks' widths must follow from some numbers of momentum / RMS / Adafactor decays."""
    if hyper_decay_counts(widths) is not None:
        return
    n = len(HYPER_GROUPS)
    for i, (got, want) in enumerate(zip(list(widths) + [None] * n, HYPER_GROUP_WIDTHS)):
        if got != want:
            block = FF + (f"w0__{i}",)
            shape = leaves[block].shape if block in leaves else "missing"
            raise CheckpointError(f"theta {path_str(block)} has shape {shape}: the {n} feature-group blocks "
                                  f"have {HYPER_GROUP_WIDTHS} inputs")
    raise CheckpointError(f"theta has {len(widths)} ff_mod_stack/~/w0__<i> blocks, expected {n}")


def _velo_lstm_inputs(widths: Sequence[int]) -> int:
    k_mom, k_rms, _ = hyper_decay_counts(widths)
    return velo_lstm_input_size(k_mom, k_rms)


def _velo_config(leaves: Dict[Path, np.ndarray]) -> Dict:
    config = _hyper_config(leaves)
    want = _velo_lstm_inputs(config["group_widths"])
    if config["lstm_input_size"] != want:
        hint = " (a Celo theta: use --optimizer celo)" if config["lstm_input_size"] == CELO_LSTM_INPUTS else ""
        raise CheckpointError(f"theta's LSTM reads {config['lstm_input_size']} features, VeLO builds {want}{hint}")
    return config


def _celo_config(leaves: Dict[Path, np.ndarray]) -> Dict:
    config = _hyper_config(leaves)
    if config["lstm_input_size"] != CELO_LSTM_INPUTS:
        hint = " (a VeLO theta: use --optimizer velo)" if config["lstm_input_size"] == _velo_lstm_inputs(
            config["group_widths"]) else ""
        raise CheckpointError(f"theta's LSTM reads {config['lstm_input_size']} features, Celo builds "
                              f"{CELO_LSTM_INPUTS}{hint}")
    return config


def hyper_rules(config: Dict) -> Rules:
    """HyperV2 theta <-> :class:`pylo.models.HyperNetwork` (``rnn.*``, ``mlp.*``)."""
    n_in, hidden, inits, ff_hidden, n_hidden, n_out = geometry(config, GEOMETRY)
    widths = [int(w) for w in config.get("group_widths") or HYPER_GROUP_WIDTHS]
    if sum(widths) != config["input_size"]:
        raise CheckpointError(f"MLP input size {config['input_size']} does not match feature groups {widths}")
    net = hyper_network_layout(n_in, hidden, inits, sum(widths), ff_hidden, n_hidden, n_out)
    hidden_state, cell_state = net.rnn.init_state
    rules: List = [tensor_rule(LSTM_STATE + ("hidden",), hidden_state), tensor_rule(LSTM_STATE + ("cell",), cell_state)]
    for upstream, name in zip(UPSTREAM_RNN_LINEARS, VELO_RNN_LINEARS):
        rules += linear_rules(RNN + (upstream, "w"), RNN + (upstream, "b"), net.rnn.linear(name))
    mlp = net.mlp
    rules.append(concat_rule([FF + (f"w0__{i}",) for i in range(len(widths))], mlp.input.weight, widths,
                             transpose=not mlp.input.in_out))
    rules.append(tensor_rule(FF + ("b0",), mlp.input.bias))
    for i, layer in enumerate([*mlp.hidden, mlp.output], start=1):
        rules += linear_rules(FF + (f"w{i}",), FF + (f"b{i}",), layer)
    return rules, []


#: HyperV2's class defaults for the flags a config.gin may bind
HYPER_V2_FLAG_DEFAULTS = {"use_bugged_loss_features": True, "use_bugged_next_lstm_state": False}
#: config.gin geometry bindings -> pylo config keys
HYPER_V2_GEOMETRY = {"lstm_hidden_size": "lstm_hidden_size", "param_inits": "param_inits",
                     "ff_hidden_size": "hidden_size"}


def _velo_training_config(container: str, gin: Dict[str, Any], config: Dict) -> Dict:
    """The bug flags a VeLO checkpoint was trained with, where its container or config.gin says."""
    if container.startswith("tuple"):  # pretrained_optimizers._pretrained_lopt_load_baseline
        return {"use_bugged_loss_features": True, "use_bugged_next_lstm_state": True}
    if not gin:
        return {}
    lopt = next((str(v) for k, v in gin.items() if k.endswith("run_train.lopt")), None)
    if lopt is not None and "HyperV2" not in lopt:
        raise CheckpointError(f"config.gin trains {lopt}, not HyperV2 (VeLO)")
    bound = {k.rsplit("HyperV2.", 1)[1]: v for k, v in gin.items() if "HyperV2." in k}
    for gin_key, config_key in HYPER_V2_GEOMETRY.items():
        if gin_key in bound and bound[gin_key] != config[config_key]:
            raise CheckpointError(f"config.gin sets HyperV2.{gin_key} = {bound[gin_key]} but theta has "
                                  f"{config[config_key]}")
    return {name: bool(bound.get(name, default)) for name, default in HYPER_V2_FLAG_DEFAULTS.items()}


def _describe_hyper(name: str) -> Callable[[Dict], str]:
    def describe(c: Dict) -> str:
        return (f"{name}: LSTM {c['lstm_input_size']} -> {c['lstm_hidden_size']}, bank of {c['param_inits']} MLPs "
                f"{c['input_size']} -> {c['hidden_size']} x {c['hidden_layers'] + 1} -> {c['output_size']}")
    return describe


def _hyper_layout(name: str, optimizer: str, infer_config: Callable[[Dict[Path, np.ndarray]], Dict],
                  **extra: Any) -> ThetaLayout:
    """VeLO's and Celo's layouts differ only in the LSTM's inputs (and what a config.gin may say)."""
    celo = optimizer == "celo"

    def looks_like(leaves: Dict[Path, np.ndarray]) -> bool:
        mix = leaves.get(RNN + ("linear_1", "w"))
        return (FF + ("w0__0",) in leaves and RNN + ("rnn/linear", "w") in leaves and mix is not None
                and mix.ndim == 2 and (mix.shape[0] == CELO_LSTM_INPUTS) == celo)

    return ThetaLayout(name=name, network="hyper_network", optimizers=(optimizer,), looks_like=looks_like,
                       infer_config=infer_config, rules=hyper_rules,
                       describe=_describe_hyper(OPTIMIZERS[optimizer].classes[0]),
                       field_orders=((LSTM_STATE, ("hidden", "cell")),), **extra)


VELO = _hyper_layout("HyperV2 theta (VeLO: rnn_params LSTM + ff_mod_stack bank)", "velo", _velo_config,
                     training_config=_velo_training_config)
CELO = _hyper_layout(f"Celo theta (rnn_params LSTM over {CELO_LSTM_INPUTS} features + ff_mod_stack)", "celo",
                     _celo_config)
