"""The rule machinery of a theta layout: which JAX array becomes which torch tensor.

A :class:`ThetaLayout` infers its geometry from the theta shapes and lists every tensor as a
:class:`TensorRule` (or a :class:`ConcatRule` for blocks joined into one tensor) and every
non-tensor value as a :class:`ConfigRule`. The torch side of each rule is an entry of
:mod:`pylo.spec.networks`; the JAX side is upstream's path, and the JAX shape follows from the
torch one: Haiku stores weights ``(..., in, out)``, so a torch weight stored ``(..., out, in)``
(``nn.Linear``) is transposed on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pylo.converters.tree import Path, path_str
from pylo.errors import CheckpointError
from pylo.spec import OPTIMIZERS
from pylo.spec.networks import Linear, Tensor

Shape = Tuple[int, ...]


def _swap_last(array: np.ndarray, transpose: bool) -> np.ndarray:
    """Haiku ``(..., in, out)`` <-> torch ``(..., out, in)`` (the last two axes; a plain ``.T`` for 2-D)."""
    return np.swapaxes(array, -1, -2) if transpose else array


def _swapped(shape: Shape, transpose: bool) -> Shape:
    return (*shape[:-2], shape[-1], shape[-2]) if transpose else tuple(shape)


@dataclass(frozen=True)
class TensorRule:
    jax_path: Path
    torch_key: str
    jax_shape: Shape
    transpose: bool = False  # Haiku (..., in, out) <-> nn.Linear (..., out, in)

    @property
    def jax_paths(self) -> Tuple[Path, ...]:
        return (self.jax_path,)

    @property
    def jax_shapes(self) -> Tuple[Shape, ...]:
        return (self.jax_shape,)

    def arrays_to_torch(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        array = np.ascontiguousarray(_swap_last(arrays[0], self.transpose), dtype=np.float32)
        return torch.from_numpy(array.copy())

    def tensor_to_jax(self, tensor: torch.Tensor) -> List[np.ndarray]:
        array = tensor.detach().to(torch.float32).cpu().numpy()
        return [np.ascontiguousarray(_swap_last(array, self.transpose))]


@dataclass(frozen=True)
class ConcatRule:
    """Several JAX blocks joined along ``axis`` into one torch tensor (HyperV2's ``w0__0..13``).

    The blocks are concatenated in the listed order (numeric, not the
    lexicographic order of the file), then ``transpose`` swaps the last two axes.
    """

    jax_paths: Tuple[Path, ...]
    torch_key: str
    jax_shapes: Tuple[Shape, ...]
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
    def joined_shape(self) -> Shape:
        shape = list(self.jax_shapes[0])
        shape[self.axis] = sum(s[self.axis] for s in self.jax_shapes)
        return _swapped(tuple(shape), self.transpose)


@dataclass(frozen=True)
class ConfigRule:
    """A small theta array stored as a list in the torch config (e.g. learned decay offsets)."""

    jax_path: Path
    config_key: str
    jax_shape: Shape


def tensor_rule(jax_path: Path, tensor: Tensor) -> TensorRule:
    """A JAX array stored as the torch tensor is (same shape, no transpose)."""
    return TensorRule(jax_path, tensor.key, tensor.shape)


def linear_rules(jax_weight: Path, jax_bias: Path, layer: Linear) -> List[TensorRule]:
    """A Haiku ``(w, b)`` pair <-> a spec :class:`~pylo.spec.networks.Linear` (transposed unless stored in, out)."""
    transpose = not layer.in_out
    return [TensorRule(jax_weight, layer.weight.key, _swapped(layer.weight.shape, transpose), transpose),
            tensor_rule(jax_bias, layer.bias)]


def concat_rule(jax_paths: Sequence[Path], layer_weight: Tensor, widths: Sequence[int], transpose: bool) -> ConcatRule:
    """JAX blocks of ``widths`` inputs each, joined on the input axis into one torch weight."""
    joined = _swapped(layer_weight.shape, transpose)
    axis = len(joined) - 2  # the input axis in Haiku's (..., in, out)
    shapes = tuple((*joined[:axis], int(w), joined[-1]) for w in widths)
    return ConcatRule(tuple(jax_paths), layer_weight.key, shapes, axis=axis, transpose=transpose)


Rules = Tuple[List, List[ConfigRule]]


@dataclass(frozen=True)
class ThetaLayout:
    """An upstream theta layout, shared by the optimizers whose checkpoints take it."""

    name: str
    #: the meta-network (a key of ``pylo.spec.networks.NETWORKS``) the theta converts to
    network: str
    #: ``pylo.spec.OPTIMIZERS`` names whose checkpoints have this layout
    optimizers: Tuple[str, ...]
    looks_like: Callable[[Dict[Path, np.ndarray]], bool]
    infer_config: Callable[[Dict[Path, np.ndarray]], Dict]
    rules: Callable[[Dict], Rules]
    describe: Callable[[Dict], str]
    #: values for ConfigRules that a torch checkpoint may lack (e.g. published defaults)
    config_defaults: Optional[Callable[[], Dict]] = None
    #: namedtuple nodes whose keys keep their field order when written (others are sorted, as Haiku does)
    field_orders: Tuple[Tuple[Path, Tuple[str, ...]], ...] = ()
    #: ``(container, gin bindings, config) -> optimizer settings`` the checkpoint was trained with
    #: (recorded as ``config["pylo"]["optimizer_config"]``); raises on a config.gin that contradicts theta
    training_config: Optional[Callable[[str, Dict[str, Any], Dict], Dict]] = None
    #: brings equivalent theta layouts to the one the rules describe (e.g. drops a stack axis of size 1)
    canonical: Optional[Callable[[Dict[Path, np.ndarray], str], Dict[Path, np.ndarray]]] = None

    def __post_init__(self):
        wrong = [o for o in self.optimizers if o not in OPTIMIZERS or OPTIMIZERS[o].network != self.network]
        if wrong or not self.optimizers:
            raise ValueError(f"theta layout {self.name!r}: optimizers {wrong or '()'} are not pylo.spec.OPTIMIZERS "
                             f"names with network {self.network!r}")


def geometry(config: Dict, keys: Sequence[str]) -> List:
    """``config[k]`` for each key, in order (a missing one raises KeyError naming it)."""
    return [config[k] for k in keys]


def check_keys(origin: str, layout: str, have: set, want: set) -> None:
    missing, extra = sorted(want - have), sorted(have - want)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(path_str(p) for p in missing))
        if extra:
            parts.append("unexpected " + ", ".join(path_str(p) for p in extra))
        raise CheckpointError(f"{origin}: theta does not match {layout}: " + "; ".join(parts))


def check_shape(origin: str, path: Path, got: Sequence[int], want: Sequence[int]) -> None:
    if tuple(got) != tuple(want):
        raise CheckpointError(f"{origin}: {path_str(path)} has shape {tuple(got)}, expected {tuple(want)}")
