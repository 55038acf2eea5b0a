"""The meta-networks: their configs and their torch state-dict keys and shapes (no torch, no JAX).

Every ``pylo.spec.OPTIMIZERS[name].network`` is a key of :data:`NETWORKS`:

* ``meta_mlp``: :class:`pylo.models.meta_mlp.MetaMLP` (AdafacLO, MuLO, ELO);
* ``hyper_network``: :class:`pylo.models.hyper_network.HyperNetwork` (VeLO, Celo), made of the
  two parts of :data:`PARTS`: ``velo_rnn`` (``VeLORNN``, keys ``rnn.*``) and ``velo_mlp``
  (``VeLOMLP``, the bank of per-element MLPs, keys ``mlp.*``);
* ``celo2_mlp``: :class:`pylo.models.celo2_mlp.CELO2MLP` (CELO2, ELO-CELO2).

A kind's *layout* function takes its geometry (the constructor arguments that shape tensors) and
returns the tensors grouped as the network uses them (:class:`Linear` layers and single
:class:`Tensor` entries, each with its state-dict key and shape); ``tensors()`` lists them in
``state_dict()`` order. The converters pair these entries with upstream's theta paths, and
``geometry_from_shapes`` reads a geometry back from a state dict's shapes.

>>> state_dict_shapes("meta_mlp", {"input_size": 39, "hidden_size": 8, "hidden_layers": 0})
{'network.input.weight': (8, 39), 'network.input.bias': (8,), 'network.output.weight': (2, 8), \
'network.output.bias': (2,)}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from pylo.errors import CheckpointError
from pylo.spec.features import HYPER_GROUP_WIDTHS, adafac_input_size, velo_lstm_input_size

Shape = Tuple[int, ...]

#: MetaMLP's two outputs per element: direction and magnitude
META_MLP_OUTPUTS = 2
#: the learned decay offsets of the published MuLO network (``MuLO``'s defaults; the converters'
#: values for a MetaMLP checkpoint whose config lacks them)
MULO_DECAY_OFFSETS = {"momentum_decays": (0.15216392, 0.14245212, 0.06812963), "rms_decays": (0.01079706,),
                      "adafactor_decays": (0.18621896, -0.10864615, -0.06185547)}


@dataclass(frozen=True)
class Tensor:
    """One state-dict entry."""

    key: str
    shape: Shape


@dataclass(frozen=True)
class Linear:
    """An affine layer. ``in_out``: the weight is stored ``(..., in, out)`` and multiplied as ``x @ w``
    (Haiku's layout); otherwise ``(..., out, in)`` as ``torch.nn.Linear.weight``."""

    weight: Tensor
    bias: Tensor
    in_out: bool = False

    def tensors(self) -> Tuple[Tensor, Tensor]:
        return self.weight, self.bias


def _linear(weight: str, bias: str, fan_in: int, fan_out: int, lead: Shape = (), in_out: bool = False) -> Linear:
    shape = (*lead, fan_in, fan_out) if in_out else (*lead, fan_out, fan_in)
    return Linear(Tensor(weight, shape), Tensor(bias, (*lead, fan_out)), in_out)


def _nn_linear(prefix: str, fan_in: int, fan_out: int) -> Linear:
    return _linear(f"{prefix}.weight", f"{prefix}.bias", int(fan_in), int(fan_out))


# ================================================================ MetaMLP
_META = "network"


@dataclass(frozen=True)
class MetaMLPLayout:
    """``input``, ``linear_0 .. linear_<hidden_layers - 1>``, ``output``: ``nn.Linear`` layers."""

    layers: Tuple[Linear, ...]

    def tensors(self) -> Tuple[Tensor, ...]:
        return tuple(t for layer in self.layers for t in layer.tensors())


def meta_mlp_layout(input_size: int, hidden_size: int, hidden_layers: int) -> MetaMLPLayout:
    names = ["input", *(f"linear_{i}" for i in range(hidden_layers)), "output"]
    sizes = [input_size] + [hidden_size] * (hidden_layers + 1) + [META_MLP_OUTPUTS]
    return MetaMLPLayout(tuple(_nn_linear(f"{_META}.{name}", a, b)
                               for name, a, b in zip(names, sizes[:-1], sizes[1:])))


def meta_mlp_geometry(shapes: Mapping[str, Sequence[int]]) -> Dict[str, int]:
    """MetaMLP geometry from a state dict's shapes; ``{}`` when there is no 2-D input layer."""
    w = shapes.get(f"{_META}.input.weight")
    if w is None or len(w) != 2:
        return {}
    n = sum(1 for k in shapes if k.startswith(f"{_META}.linear_") and k.endswith(".weight"))
    return {"input_size": int(w[1]), "hidden_size": int(w[0]), "hidden_layers": n}


# ================================================================ CELO2MLP
@dataclass(frozen=True)
class CELO2MLPLayout:
    """The first layer split by feature group (``w0.<i>``: ``(d_i, hidden)``) and its bias ``b0``,
    then dense layers ``dense_w.<j>`` / ``dense_b.<j>`` stored ``(in, out)``."""

    blocks: Tuple[Tensor, ...]
    bias: Tensor
    dense: Tuple[Linear, ...]

    def tensors(self) -> Tuple[Tensor, ...]:
        return (self.bias, *self.blocks, *(d.weight for d in self.dense), *(d.bias for d in self.dense))


_BLOCK, _BIAS, _DENSE_W, _DENSE_B = "w0.", "b0", "dense_w.", "dense_b."


def celo2_mlp_layout(feature_dims: Sequence[int], hidden_size: int, hidden_layers: int,
                     output_size: int) -> CELO2MLPLayout:
    sizes = [hidden_size] * hidden_layers + [output_size]
    return CELO2MLPLayout(
        blocks=tuple(Tensor(f"{_BLOCK}{i}", (int(d), hidden_size)) for i, d in enumerate(feature_dims)),
        bias=Tensor(_BIAS, (hidden_size,)),
        dense=tuple(_linear(f"{_DENSE_W}{j}", f"{_DENSE_B}{j}", a, b, in_out=True)
                    for j, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))))


def celo2_mlp_geometry(shapes: Mapping[str, Sequence[int]]) -> Dict[str, Any]:
    """CELO2MLP geometry from a state dict's shapes; ``{}`` when blocks, bias or dense layers are missing."""
    n_groups = sum(1 for k in shapes if k.startswith(_BLOCK))
    n_dense = sum(1 for k in shapes if k.startswith(_DENSE_W))
    last_bias = f"{_DENSE_B}{n_dense - 1}"
    if not n_groups or not n_dense or _BIAS not in shapes or last_bias not in shapes:
        return {}
    dims = [int(shapes[f"{_BLOCK}{i}"][0]) for i in range(n_groups) if f"{_BLOCK}{i}" in shapes]
    return {"feature_dims": dims, "hidden_size": int(shapes[_BIAS][0]), "hidden_layers": n_dense,
            "output_size": int(shapes[last_bias][0])}


# ================================================================ HyperNetwork (VeLO, Celo)
#: VeLORNN's linear layers, in registration order (``mix_layer1`` is upstream's dead first mixing layer;
#: ``lstm.linear`` reads ``[x, h]`` and gives the gates i, g, f, o)
VELO_RNN_LINEARS = ("mix_layer1", "mix_layer2", "final_mix_layer", "lstm.linear", "rnn_to_controls", "step_size")
#: the key prefixes of HyperNetwork's two parts
RNN_PREFIX, MLP_PREFIX = "rnn.", "mlp."


@dataclass(frozen=True)
class VeLORNNLayout:
    """The ``nn.Linear`` layers of :data:`VELO_RNN_LINEARS` and the learned initial state (hidden, cell)."""

    linears: Tuple[Tuple[str, Linear], ...]
    init_state: Tuple[Tensor, Tensor]

    def linear(self, name: str) -> Linear:
        return dict(self.linears)[name]

    def tensors(self) -> Tuple[Tensor, ...]:
        return (*(t for _, layer in self.linears for t in layer.tensors()), *self.init_state)


def velo_rnn_layout(input_size: int, lstm_hidden_size: int, param_inits: int, prefix: str = "") -> VeLORNNLayout:
    h = lstm_hidden_size
    fans = {"mix_layer1": (input_size, h), "mix_layer2": (input_size, h), "final_mix_layer": (input_size, h),
            "lstm.linear": (2 * h, 4 * h), "rnn_to_controls": (h, param_inits), "step_size": (h, 1)}
    linears = tuple((name, _nn_linear(prefix + name, *fans[name])) for name in VELO_RNN_LINEARS)
    state = tuple(Tensor(f"{prefix}lstm_init_state.{i}", (1, h)) for i in range(2))
    return VeLORNNLayout(linears, state)


@dataclass(frozen=True)
class VeLOMLPLayout:
    """One MLP stored ``(..., out, in)``: ``input``, ``hidden`` layers, ``output``. In the bank every
    tensor has a leading ``param_inits`` axis (keys ``input_weights_`` ...); the published module's
    scratch copy of one interpolated MLP has none (keys ``input_weights`` ...)."""

    input: Linear
    hidden: Tuple[Linear, ...]
    output: Linear

    def tensors(self) -> Tuple[Tensor, ...]:
        return (*self.input.tensors(), *self.output.tensors(), *(h.weight for h in self.hidden),
                *(h.bias for h in self.hidden))


def _mlp_key(prefix: str, layer: str, param: str, suffix: str, index: str = "") -> str:
    return f"{prefix}{layer}_{param}{suffix}{index}"


def _velo_mlp(prefix: str, lead: Shape, suffix: str, input_size: int, hidden_size: int, hidden_layers: int,
              output_size: int) -> VeLOMLPLayout:
    def layer(name: str, fan_in: int, fan_out: int, index: str = "") -> Linear:
        return _linear(_mlp_key(prefix, name, "weights", suffix, index), _mlp_key(prefix, name, "bias", suffix, index),
                       fan_in, fan_out, lead)

    return VeLOMLPLayout(layer("input", input_size, hidden_size),
                         tuple(layer("hidden", hidden_size, hidden_size, f".{i}") for i in range(hidden_layers)),
                         layer("output", hidden_size, output_size))


def velo_mlp_layout(param_inits: int, input_size: int, hidden_size: int, hidden_layers: int, output_size: int,
                    prefix: str = "") -> VeLOMLPLayout:
    """The bank of ``param_inits`` MLPs (``input_weights_`` is upstream's ``w0__0..13`` joined on ``in``)."""
    return _velo_mlp(prefix, (param_inits,), "_", input_size, hidden_size, hidden_layers, output_size)


def velo_mlp_hub_scratch(input_size: int, hidden_size: int, hidden_layers: int, output_size: int) -> VeLOMLPLayout:
    """The published ``VeLO_MLP``'s scratch slots (one interpolated MLP, no meta-parameters)."""
    return _velo_mlp("", (), "", input_size, hidden_size, hidden_layers, output_size)


#: a key that tells each published part's state dict (``VeLO_RNN``, ``VeLO_MLP``) from the other
HUB_PART_KEYS = {"velo_rnn": velo_rnn_layout(1, 1, 1).linear("lstm.linear").weight.key,
                 "velo_mlp": velo_mlp_layout(1, 1, 1, 0, 2).input.weight.key}


@dataclass(frozen=True)
class HyperNetworkLayout:
    rnn: VeLORNNLayout
    mlp: VeLOMLPLayout

    def tensors(self) -> Tuple[Tensor, ...]:
        return (*self.rnn.tensors(), *self.mlp.tensors())


def hyper_network_layout(lstm_input_size: int, lstm_hidden_size: int, param_inits: int, input_size: int,
                         hidden_size: int, hidden_layers: int, output_size: int) -> HyperNetworkLayout:
    return HyperNetworkLayout(velo_rnn_layout(lstm_input_size, lstm_hidden_size, param_inits, RNN_PREFIX),
                              velo_mlp_layout(param_inits, input_size, hidden_size, hidden_layers, output_size,
                                              MLP_PREFIX))


def hyper_network_geometry(shapes: Mapping[str, Sequence[int]], origin: str = "checkpoint") -> Dict[str, int]:
    """HyperNetwork geometry from a state dict's shapes (``rnn.*`` / ``mlp.*`` keys); raises
    :class:`~pylo.errors.CheckpointError` when they are not a VeLO/Celo network's."""
    keys = (f"{RNN_PREFIX}mix_layer2.weight", f"{RNN_PREFIX}rnn_to_controls.weight",
            _mlp_key(MLP_PREFIX, "input", "weights", "_"), _mlp_key(MLP_PREFIX, "output", "weights", "_"))
    try:
        mix, controls, w_in, w_out = (shapes[k] for k in keys)
    except KeyError as e:
        raise CheckpointError(f"{origin}: not a VeLO/Celo network (no {e.args[0]})") from None
    if (len(mix), len(controls), len(w_in), len(w_out)) != (2, 2, 3, 3):
        raise CheckpointError(f"{origin}: VeLO/Celo network tensors have unexpected ranks")
    hidden = _mlp_key(MLP_PREFIX, "hidden", "weights", "_", ".")
    return {"lstm_input_size": int(mix[1]), "lstm_hidden_size": int(mix[0]), "param_inits": int(controls[0]),
            "input_size": int(w_in[2]), "hidden_size": int(w_in[1]),
            "hidden_layers": sum(1 for k in shapes if k.startswith(hidden)), "output_size": int(w_out[1])}


def _hyper_geometry_or_none(shapes: Mapping[str, Sequence[int]]) -> Dict[str, int]:
    try:
        return hyper_network_geometry(shapes)
    except CheckpointError:
        return {}


# ================================================================ the registry
@dataclass(frozen=True)
class NetworkKind:
    """One meta-network: its torch module, constructor arguments with their defaults, the arguments
    that shape its tensors (``geometry``, in the layout function's order) and its layout."""

    name: str
    module: str  # "package.module:Class"
    defaults: Mapping[str, Any]
    geometry: Tuple[str, ...]
    layout: Callable[..., Any]
    #: the geometry a state dict's shapes describe (``{}`` when they do not); None for the parts
    from_shapes: Optional[Callable[[Mapping[str, Sequence[int]]], Dict]] = None

    def config(self, **overrides: Any) -> Dict[str, Any]:
        """The constructor arguments: the defaults with ``overrides``."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise TypeError(f"{self.name} has no argument {', '.join(unknown)}; it takes {', '.join(self.defaults)}")
        return {**self.defaults, **overrides}

    def layout_for(self, config: Mapping[str, Any]):
        """The layout of a config (missing arguments take their defaults)."""
        full = self.config(**{k: v for k, v in config.items() if k in self.defaults})
        return self.layout(*(full[k] for k in self.geometry))

    def state_dict_shapes(self, config: Mapping[str, Any]) -> Dict[str, Shape]:
        """``{key: shape}`` in ``state_dict()`` order."""
        return {t.key: t.shape for t in self.layout_for(config).tensors()}


_HYPER_INPUTS = sum(HYPER_GROUP_WIDTHS)

#: the meta-networks of the optimizers (``pylo.spec.OPTIMIZERS[name].network``)
NETWORKS: Dict[str, NetworkKind] = {k.name: k for k in (
    NetworkKind("meta_mlp", "pylo.models.meta_mlp:MetaMLP",
                {"input_size": adafac_input_size(), "hidden_size": 32, "hidden_layers": 1, "momentum_decays": None,
                 "rms_decays": None, "adafactor_decays": None},
                ("input_size", "hidden_size", "hidden_layers"), meta_mlp_layout, meta_mlp_geometry),
    NetworkKind("hyper_network", "pylo.models.hyper_network:HyperNetwork",
                {"lstm_input_size": velo_lstm_input_size(3, 1), "lstm_hidden_size": 512, "param_inits": 256,
                 "input_size": _HYPER_INPUTS, "hidden_size": 4, "hidden_layers": 1, "output_size": 3},
                ("lstm_input_size", "lstm_hidden_size", "param_inits", "input_size", "hidden_size", "hidden_layers",
                 "output_size"), hyper_network_layout, _hyper_geometry_or_none),
    NetworkKind("celo2_mlp", "pylo.models.celo2_mlp:CELO2MLP",
                {"feature_dims": HYPER_GROUP_WIDTHS, "hidden_size": 8, "hidden_layers": 2, "output_size": 3,
                 "activation": "relu"},
                ("feature_dims", "hidden_size", "hidden_layers", "output_size"), celo2_mlp_layout, celo2_mlp_geometry),
)}

#: HyperNetwork's parts, as separate modules (the published ``VeLO_RNN`` / ``VeLO_MLP`` hub repositories)
PARTS: Dict[str, NetworkKind] = {k.name: k for k in (
    NetworkKind("velo_rnn", "pylo.models.hyper_network:VeLORNN",
                {"input_size": velo_lstm_input_size(3, 1), "lstm_hidden_size": 512, "param_inits": 256},
                ("input_size", "lstm_hidden_size", "param_inits"), velo_rnn_layout),
    NetworkKind("velo_mlp", "pylo.models.hyper_network:VeLOMLP",
                {"param_inits": 256, "input_size": _HYPER_INPUTS, "hidden_size": 4, "hidden_layers": 1,
                 "output_size": 3},
                ("param_inits", "input_size", "hidden_size", "hidden_layers", "output_size"), velo_mlp_layout),
)}


def network(kind: str) -> NetworkKind:
    """A meta-network kind (or a HyperNetwork part) by name."""
    found = NETWORKS.get(kind) or PARTS.get(kind)
    if found is None:
        raise KeyError(f"no meta-network {kind!r}; known: {', '.join([*NETWORKS, *PARTS])}")
    return found


def state_dict_shapes(kind: str, config: Mapping[str, Any]) -> Dict[str, Shape]:
    """The torch module's ``state_dict()`` keys and shapes for a config, in order."""
    return network(kind).state_dict_shapes(config)


def geometry_from_shapes(kind: str, shapes: Mapping[str, Sequence[int]]) -> Dict:
    """The geometry a state dict's shapes describe; ``{}`` when they do not describe ``kind``."""
    found = NETWORKS.get(kind)
    if found is None:
        raise KeyError(f"no meta-network {kind!r}; known: {', '.join(NETWORKS)}")
    return found.from_shapes(shapes)
