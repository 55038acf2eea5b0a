"""Key-mapping tables between upstream JAX theta trees and pylo's torch state dicts.

One :class:`Family` per meta-network layout. A family infers its geometry from
the theta shapes, lists every tensor as a :class:`TensorRule` (JAX path, torch
key, transpose, expected JAX shape) and every non-tensor value as a
:class:`ConfigRule`, and refuses missing, extra or wrongly shaped entries with
a one-line error naming them. The transposes are spelled out: Haiku linear
weights are ``(in, out)``, ``torch.nn.Linear.weight`` is ``(out, in)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pylo.converters.tree import Path, array_leaves, path_str, unflatten
from pylo.errors import CheckpointError


def _swap_last(array: np.ndarray, transpose: bool) -> np.ndarray:
    """Haiku ``(..., in, out)`` <-> torch ``(..., out, in)`` (the last two axes; a plain ``.T`` for 2-D)."""
    return np.swapaxes(array, -1, -2) if transpose else array


@dataclass(frozen=True)
class TensorRule:
    jax_path: Path
    torch_key: str
    jax_shape: Tuple[int, ...]
    transpose: bool = False  # Haiku (..., in, out) <-> nn.Linear (..., out, in)

    @property
    def jax_paths(self) -> Tuple[Path, ...]:
        return (self.jax_path,)

    @property
    def jax_shapes(self) -> Tuple[Tuple[int, ...], ...]:
        return (self.jax_shape,)

    def to_torch(self, array: np.ndarray) -> torch.Tensor:
        array = np.ascontiguousarray(_swap_last(array, self.transpose), dtype=np.float32)
        return torch.from_numpy(array.copy())

    def to_jax(self, tensor: torch.Tensor) -> np.ndarray:
        array = tensor.detach().to(torch.float32).cpu().numpy()
        return np.ascontiguousarray(_swap_last(array, self.transpose))

    def arrays_to_torch(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        return self.to_torch(arrays[0])

    def tensor_to_jax(self, tensor: torch.Tensor) -> List[np.ndarray]:
        return [self.to_jax(tensor)]


@dataclass(frozen=True)
class ConcatRule:
    """Several JAX blocks joined along ``axis`` into one torch tensor (HyperV2's ``w0__0..13``).

    The blocks are concatenated in the listed order (numeric, not the
    lexicographic order of the file), then ``transpose`` swaps the last two axes.
    """

    jax_paths: Tuple[Path, ...]
    torch_key: str
    jax_shapes: Tuple[Tuple[int, ...], ...]
    axis: int
    transpose: bool = False

    def arrays_to_torch(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        joined = np.concatenate([np.asarray(a, dtype=np.float32) for a in arrays], axis=self.axis)
        return torch.from_numpy(np.ascontiguousarray(_swap_last(joined, self.transpose)).copy())

    def tensor_to_jax(self, tensor: torch.Tensor) -> List[np.ndarray]:
        joined = _swap_last(tensor.detach().to(torch.float32).cpu().numpy(), self.transpose)
        ends = np.cumsum([shape[self.axis] for shape in self.jax_shapes])[:-1]
        return [np.ascontiguousarray(a) for a in np.split(joined, ends, axis=self.axis)]

    @property
    def joined_shape(self) -> Tuple[int, ...]:
        shape = list(self.jax_shapes[0])
        shape[self.axis] = sum(s[self.axis] for s in self.jax_shapes)
        if self.transpose:
            shape[-1], shape[-2] = shape[-2], shape[-1]
        return tuple(shape)


@dataclass(frozen=True)
class ConfigRule:
    """A small theta array stored as a list in the torch config (e.g. learned decay offsets)."""

    jax_path: Path
    config_key: str
    jax_shape: Tuple[int, ...]


@dataclass(frozen=True)
class Family:
    """A meta-network layout shared by one or more optimizers."""

    name: str
    optimizers: Tuple[str, ...]
    looks_like: Callable[[Dict[Path, np.ndarray]], bool]
    infer_config: Callable[[Dict[Path, np.ndarray]], Dict]
    rules: Callable[[Dict], Tuple[List[TensorRule], List[ConfigRule]]]
    describe: Callable[[Dict], str]
    #: geometry from torch tensors, for published hub folders whose config lacks it
    infer_torch_config: Optional[Callable[[Dict[str, torch.Tensor]], Dict]] = None
    #: values for ConfigRules that a torch checkpoint may lack (e.g. published defaults)
    config_defaults: Optional[Callable[[], Dict]] = None
    #: namedtuple nodes whose keys keep their field order when written (others are sorted, as Haiku does)
    field_orders: Tuple[Tuple[Path, Tuple[str, ...]], ...] = ()
    #: ``(container, gin bindings, config) -> optimizer settings`` the checkpoint was trained with
    #: (recorded as ``config["pylo"]["optimizer_config"]``); raises on a config.gin that contradicts theta
    training_config: Optional[Callable[[str, Dict[str, Any], Dict], Dict]] = None
    #: brings equivalent theta layouts to the one the rules describe (e.g. drops a stack axis of size 1)
    canonical: Optional[Callable[[Dict[Path, np.ndarray], str], Dict[Path, np.ndarray]]] = None

    # ------------------------------------------------------------ JAX -> torch
    def to_torch(self, theta: Dict, origin: str) -> Tuple[Dict, Dict[str, torch.Tensor]]:
        leaves = array_leaves(theta)
        if self.canonical is not None:
            leaves = self.canonical(leaves, origin)
        non_arrays = [path_str(p) for p, v in _all_leaves(theta) if not isinstance(v, np.ndarray)]
        if non_arrays:
            raise CheckpointError(f"{origin}: non-array entries in theta: {', '.join(non_arrays)}")
        try:
            config = self.infer_config(leaves)
        except CheckpointError as e:
            other = guess_family(theta)
            hint = f" (it looks like {other.name}: --optimizer {other.optimizers[0]})" if other else ""
            raise CheckpointError(f"{origin}: not a {self.name}: {e}{hint}") from None
        tensor_rules, config_rules = self.rules(config)
        expected = {path: shape for r in tensor_rules for path, shape in zip(r.jax_paths, r.jax_shapes)}
        expected.update({r.jax_path: r.jax_shape for r in config_rules})
        _check_keys(origin, self.name, set(leaves), set(expected))
        for path, shape in expected.items():
            _check_shape(origin, path, leaves[path].shape, shape)
            if not np.issubdtype(leaves[path].dtype, np.floating):
                raise CheckpointError(f"{origin}: {path_str(path)} has dtype {leaves[path].dtype}, expected float")
        tensors = {r.torch_key: r.arrays_to_torch([leaves[p] for p in r.jax_paths]) for r in tensor_rules}
        for r in config_rules:
            config[r.config_key] = [float(x) for x in leaves[r.jax_path].astype(np.float32).ravel()]
        return config, tensors

    # ------------------------------------------------------------ torch -> JAX
    def to_jax(self, config: Dict, tensors: Dict[str, torch.Tensor], origin: str) -> Dict:
        if self.infer_torch_config is not None:
            config = {**self.infer_torch_config(tensors), **config}
        try:
            tensor_rules, config_rules = self.rules(config)
        except KeyError as e:
            raise CheckpointError(f"{origin}: config lacks {e.args[0]!r}") from None
        wanted = {r.torch_key for r in tensor_rules}
        have = set(tensors)
        if wanted != have:
            missing, extra = sorted(wanted - have), sorted(have - wanted)
            raise CheckpointError(f"{origin}: tensors do not match {self.name}: "
                                  + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                            extra and f"unexpected {', '.join(extra)}"])))
        items: Dict[Path, np.ndarray] = {}
        for r in tensor_rules:
            if isinstance(r, ConcatRule) and tuple(tensors[r.torch_key].shape) != r.joined_shape:
                raise CheckpointError(f"{origin}: {r.torch_key} has shape {tuple(tensors[r.torch_key].shape)}, "
                                      f"expected {r.joined_shape}")
            for path, shape, array in zip(r.jax_paths, r.jax_shapes, r.tensor_to_jax(tensors[r.torch_key])):
                items[path] = array
                _check_shape(origin, path, array.shape, shape)
        defaults = self.config_defaults() if self.config_defaults else {}
        for r in config_rules:
            values = config.get(r.config_key, defaults.get(r.config_key))
            if values is None:
                raise CheckpointError(f"{origin}: config lacks {r.config_key!r}, needed for {path_str(r.jax_path)}")
            items[r.jax_path] = np.asarray(values, dtype=np.float32).reshape(r.jax_shape)
        return _ordered(unflatten(items), dict(self.field_orders))


def _ordered(tree, field_orders: Dict[Path, Tuple[str, ...]], path: Path = ()):
    """Keys sorted as in upstream files (Haiku dicts), namedtuple fields in field order."""
    if not isinstance(tree, dict):
        return tree
    order = field_orders.get(path) or sorted(tree)
    return {k: _ordered(tree[k], field_orders, path + (k,)) for k in order}


def _all_leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for k in sorted(tree, key=str):
            yield from _all_leaves(tree[k], prefix + (str(k),))
    else:
        yield prefix, tree


def _check_keys(origin: str, family: str, have: set, want: set) -> None:
    missing, extra = sorted(want - have), sorted(have - want)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(path_str(p) for p in missing))
        if extra:
            parts.append("unexpected " + ", ".join(path_str(p) for p in extra))
        raise CheckpointError(f"{origin}: theta does not match {family}: " + "; ".join(parts))


def _check_shape(origin: str, path: Path, got: Sequence[int], want: Sequence[int]) -> None:
    if tuple(got) != tuple(want):
        raise CheckpointError(f"{origin}: {path_str(path)} has shape {tuple(got)}, expected {tuple(want)}")


# ================================================================= MetaMLP (nn/~)
NN = ("nn", "~")


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


def _meta_mlp_torch_config(tensors: Dict[str, torch.Tensor]) -> Dict:
    w = tensors.get("network.input.weight")
    if w is None or w.dim() != 2:
        return {}
    hidden = sum(1 for k in tensors if k.startswith("network.linear_") and k.endswith(".weight"))
    return {"input_size": int(w.shape[1]), "hidden_size": int(w.shape[0]), "hidden_layers": hidden}


def meta_mlp_rules(config: Dict) -> List[TensorRule]:
    """MetaMLP: ``nn/~/w<i>`` (in, out) <-> ``network.<layer>.weight`` (out, in)."""
    n = config["hidden_layers"] + 2
    sizes = [config["input_size"]] + [config["hidden_size"]] * (n - 1) + [2]
    names = ["input"] + [f"linear_{i}" for i in range(n - 2)] + ["output"]
    rules = []
    for i, name in enumerate(names):
        rules.append(TensorRule(NN + (f"w{i}",), f"network.{name}.weight", (sizes[i], sizes[i + 1]), transpose=True))
        rules.append(TensorRule(NN + (f"b{i}",), f"network.{name}.bias", (sizes[i + 1],)))
    return rules


def _adafac_rules(config: Dict) -> Tuple[List[TensorRule], List[ConfigRule]]:
    return meta_mlp_rules(config), [
        ConfigRule(("momentum_decays",), "momentum_decays", (3,)),
        ConfigRule(("rms_decays",), "rms_decays", (1,)),
        ConfigRule(("adafactor_decays",), "adafactor_decays", (3,)),
    ]


def _mulo_defaults() -> Dict:
    from pylo.optim.adafac.constants import MULO_ADAFACTOR_OFFSETS, MULO_MOMENTUM_OFFSETS, MULO_RMS_OFFSETS

    return {"momentum_decays": MULO_MOMENTUM_OFFSETS, "rms_decays": MULO_RMS_OFFSETS,
            "adafactor_decays": MULO_ADAFACTOR_OFFSETS}


def _describe_meta_mlp(config: Dict) -> str:
    return (f"MLP {config['input_size']} -> {config['hidden_size']} x {config['hidden_layers'] + 1} -> 2 "
            f"(upstream hidden_size={config['hidden_size']}, hidden_layers={config['hidden_layers'] + 1})")


ADAFAC_MLP = Family(
    name="AdafacMLPLOpt theta (nn/~ MLP + learned decays)",
    optimizers=("adafaclo", "mulo"),
    looks_like=lambda leaves: NN + ("w0",) in leaves and ("momentum_decays",) in leaves,
    infer_config=_meta_mlp_config,
    rules=_adafac_rules,
    describe=lambda c: "AdafacLO / MuLO: " + _describe_meta_mlp(c),
    infer_torch_config=_meta_mlp_torch_config,
    config_defaults=_mulo_defaults,
)

ELO_MLP = Family(
    name="ELO theta (nn/~ MLP, no learned decays)",
    optimizers=("elo",),
    looks_like=lambda leaves: NN + ("w0",) in leaves and ("momentum_decays",) not in leaves,
    infer_config=_meta_mlp_config,
    rules=lambda config: (meta_mlp_rules(config), []),
    describe=lambda c: "ELO: " + _describe_meta_mlp(c),
    infer_torch_config=_meta_mlp_torch_config,
)


# ======================================================= CELO2MLP (ff_mod_stack/~)
FF = ("ff_mod_stack", "~")


def _celo2_canonical(leaves: Dict[Path, np.ndarray], origin: str) -> Dict[Path, np.ndarray]:
    """Drop a leading stack axis of size 1 (Celo-style ``ff_mod_stack`` with ``param_inits=1``)."""
    lstm = sorted({p[0] for p in leaves if p[0] in ("rnn_params", "lstm_init_state")})
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


def _celo2_torch_config(tensors: Dict[str, torch.Tensor]) -> Dict:
    n_groups = sum(1 for k in tensors if k.startswith("w0."))
    n_dense = sum(1 for k in tensors if k.startswith("dense_w."))
    if not n_groups or not n_dense or "b0" not in tensors or f"dense_b.{n_dense - 1}" not in tensors:
        return {}
    return {"feature_dims": [int(tensors[f"w0.{i}"].shape[0]) for i in range(n_groups) if f"w0.{i}" in tensors],
            "hidden_size": int(tensors["b0"].shape[0]), "hidden_layers": n_dense,
            "output_size": int(tensors[f"dense_b.{n_dense - 1}"].shape[0])}


def celo2_rules(config: Dict) -> List[TensorRule]:
    """CELO2MLP: ``ff_mod_stack/~/w0__i`` <-> ``w0.i``, ``w<j>``/``b<j>`` <-> ``dense_w.<j-1>``/``dense_b.<j-1>``.

    Both sides keep Haiku's ``(in, out)`` weights (the module multiplies ``x @ w``): no transposes.
    """
    hidden, n_dense = config["hidden_size"], config["hidden_layers"]
    sizes = [hidden] * n_dense + [config.get("output_size", 3)]
    rules = [TensorRule(FF + (f"w0__{i}",), f"w0.{i}", (int(d), hidden)) for i, d in enumerate(config["feature_dims"])]
    rules.append(TensorRule(FF + ("b0",), "b0", (hidden,)))
    for j in range(1, n_dense + 1):
        rules.append(TensorRule(FF + (f"w{j}",), f"dense_w.{j - 1}", (sizes[j - 1], sizes[j])))
        rules.append(TensorRule(FF + (f"b{j}",), f"dense_b.{j - 1}", (sizes[j],)))
    return rules


def _describe_celo2(config: Dict) -> str:
    return (f"CELO2 / ELO-CELO2: split-input MLP {len(config['feature_dims'])} groups "
            f"({sum(config['feature_dims'])} inputs) -> {config['hidden_size']} x {config['hidden_layers']} -> "
            f"{config['output_size']} (upstream ff_hidden_size={config['hidden_size']}, "
            f"ff_hidden_layers={config['hidden_layers']})")


CELO2_FF = Family(
    name="CELO2 theta (ff_mod_stack/~ split-input MLP)",
    optimizers=("celo2", "elo_celo2"),
    looks_like=lambda leaves: FF + ("w0__0",) in leaves and not any(p[0] in ("rnn_params", "lstm_init_state")
                                                                     for p in leaves),
    infer_config=_celo2_config,
    rules=lambda config: (celo2_rules(config), []),
    describe=_describe_celo2,
    infer_torch_config=_celo2_torch_config,
    canonical=_celo2_canonical,
)


# ============================================== HyperV2: VeLO and Celo (LSTM + MLP bank)
RNN = ("rnn_params",)
LSTM_STATE = ("lstm_init_state",)
#: upstream rnn_params module -> pylo VeLORNN submodule (the published VeLO_RNN names)
HYPER_RNN_LAYERS = (("linear", "mix_layer1"), ("linear_1", "mix_layer2"), ("linear_2", "final_mix_layer"),
                    ("rnn/linear", "lstm.linear"), ("rnn_to_controls", "rnn_to_controls"), ("step_size", "step_size"))
CELO_LSTM_INPUTS = 18  # fraction embedding (9) + loss features (9)


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


def _consistent_widths(widths: Sequence[int]) -> bool:
    """14 groups whose widths follow from some numbers of momentum / RMS / Adafactor decays."""
    if len(widths) != 14:
        return False
    k_mom, k_rms, k_fac = widths[3], widths[4], widths[7]
    return list(widths) == [1, 1, 1, k_mom, k_rms, max(k_mom, k_rms), k_rms, k_fac, k_rms, k_fac, k_fac, k_fac,
                            k_fac, max(k_mom, k_fac)]


def _check_group_widths(leaves: Dict[Path, np.ndarray], widths: Sequence[int]) -> None:
    from pylo.core.features import HYPER_GROUP_WIDTHS

    if _consistent_widths(widths):
        return
    for i, (got, want) in enumerate(zip(list(widths) + [None] * 14, HYPER_GROUP_WIDTHS)):
        if got != want:
            block = FF + (f"w0__{i}",)
            shape = leaves[block].shape if block in leaves else "missing"
            raise CheckpointError(f"theta {path_str(block)} has shape {shape}: the 14 feature-group blocks "
                                  f"have {HYPER_GROUP_WIDTHS} inputs")
    raise CheckpointError(f"theta has {len(widths)} ff_mod_stack/~/w0__<i> blocks, expected 14")


def _velo_lstm_inputs(widths: Sequence[int]) -> int:
    k_mom, k_rms = widths[3], widths[4]
    return 9 + 9 + k_rms + 5 + k_mom + max(k_mom, k_rms)


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


def _hyper_torch_config(tensors: Dict[str, torch.Tensor]) -> Dict:
    from pylo.models.hyper_network import config_from_tensors

    try:
        return config_from_tensors(tensors)
    except CheckpointError:
        return {}


def hyper_rules(config: Dict) -> Tuple[List, List[ConfigRule]]:
    """HyperV2 theta <-> :class:`pylo.models.HyperNetwork` (``rnn.*``, ``mlp.*``)."""
    from pylo.core.features import HYPER_GROUP_WIDTHS

    n_in, hidden, P = config["lstm_input_size"], config["lstm_hidden_size"], config["param_inits"]
    ff_hidden, n_hidden, n_out = config["hidden_size"], config["hidden_layers"], config["output_size"]
    widths = [int(w) for w in config.get("group_widths") or HYPER_GROUP_WIDTHS]
    if sum(widths) != config["input_size"]:
        raise CheckpointError(f"MLP input size {config['input_size']} does not match feature groups {widths}")
    sizes = {"linear": (n_in, hidden), "linear_1": (n_in, hidden), "linear_2": (n_in, hidden),
             "rnn/linear": (2 * hidden, 4 * hidden), "rnn_to_controls": (hidden, P), "step_size": (hidden, 1)}
    rules: List = [TensorRule(LSTM_STATE + ("hidden",), "rnn.lstm_init_state.0", (1, hidden)),
                   TensorRule(LSTM_STATE + ("cell",), "rnn.lstm_init_state.1", (1, hidden))]
    for jax_name, torch_name in HYPER_RNN_LAYERS:
        fan_in, fan_out = sizes[jax_name]
        rules.append(TensorRule(RNN + (jax_name, "w"), f"rnn.{torch_name}.weight", (fan_in, fan_out), transpose=True))
        rules.append(TensorRule(RNN + (jax_name, "b"), f"rnn.{torch_name}.bias", (fan_out,)))
    rules.append(ConcatRule(tuple(FF + (f"w0__{i}",) for i in range(len(widths))), "mlp.input_weights_",
                            tuple((P, w, ff_hidden) for w in widths), axis=1, transpose=True))
    rules.append(TensorRule(FF + ("b0",), "mlp.input_bias_", (P, ff_hidden)))
    for i in range(n_hidden):
        rules.append(TensorRule(FF + (f"w{i + 1}",), f"mlp.hidden_weights_.{i}", (P, ff_hidden, ff_hidden),
                                transpose=True))
        rules.append(TensorRule(FF + (f"b{i + 1}",), f"mlp.hidden_bias_.{i}", (P, ff_hidden)))
    rules.append(TensorRule(FF + (f"w{n_hidden + 1}",), "mlp.output_weights_", (P, ff_hidden, n_out), transpose=True))
    rules.append(TensorRule(FF + (f"b{n_hidden + 1}",), "mlp.output_bias_", (P, n_out)))
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


def _hyper_looks_like(celo: bool) -> Callable[[Dict[Path, np.ndarray]], bool]:
    def looks_like(leaves: Dict[Path, np.ndarray]) -> bool:
        mix = leaves.get(RNN + ("linear_1", "w"))
        return (FF + ("w0__0",) in leaves and RNN + ("rnn/linear", "w") in leaves and mix is not None
                and mix.ndim == 2 and (mix.shape[0] == CELO_LSTM_INPUTS) == celo)
    return looks_like


VELO = Family(
    name="HyperV2 theta (VeLO: rnn_params LSTM + ff_mod_stack bank)",
    optimizers=("velo",),
    looks_like=_hyper_looks_like(celo=False),
    infer_config=_velo_config,
    rules=hyper_rules,
    describe=_describe_hyper("VeLO"),
    infer_torch_config=_hyper_torch_config,
    field_orders=((LSTM_STATE, ("hidden", "cell")),),
    training_config=_velo_training_config,
)

CELO = Family(
    name="Celo theta (rnn_params LSTM over 18 features + ff_mod_stack)",
    optimizers=("celo",),
    looks_like=_hyper_looks_like(celo=True),
    infer_config=_celo_config,
    rules=hyper_rules,
    describe=_describe_hyper("Celo"),
    infer_torch_config=_hyper_torch_config,
    field_orders=((LSTM_STATE, ("hidden", "cell")),),
)

#: every family, in the order ``inspect`` tries them
FAMILIES: List[Family] = [ADAFAC_MLP, ELO_MLP, CELO2_FF, VELO, CELO]



def family_for(optimizer: str) -> Family:
    for fam in FAMILIES:
        if optimizer in fam.optimizers:
            return fam
    known = sorted(n for f in FAMILIES for n in f.optimizers)
    raise CheckpointError(f"unknown optimizer {optimizer!r}; known: {', '.join(known)}")


def guess_family(theta: Dict) -> Optional[Family]:
    leaves = array_leaves(theta)
    for fam in FAMILIES:
        if fam.looks_like(leaves):
            return fam
    return None
