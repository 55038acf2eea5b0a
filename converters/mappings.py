"""Key-mapping tables between upstream JAX theta trees and pylo's torch state dicts.

One :class:`~pylo.converters.layouts.rules.ThetaLayout` per upstream theta layout
(:mod:`pylo.converters.layouts`); this module lists them (:data:`LAYOUTS`), finds one by
optimizer name or by content, and converts with it. A conversion refuses missing, extra or
wrongly shaped entries with a one-line error naming them.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from pylo.converters.layouts.celo2_mlp import CELO2_FF
from pylo.converters.layouts.hyper_network import CELO, VELO
from pylo.converters.layouts.meta_mlp import ADAFAC_MLP, ELO_MLP
from pylo.converters.layouts.rules import ConcatRule, ThetaLayout, check_keys, check_shape
from pylo.converters.tree import Path, array_leaves, path_str, unflatten
from pylo.errors import CheckpointError
from pylo.spec import optimizer_names
from pylo.spec.networks import geometry_from_shapes

__all__ = ["LAYOUTS", "ThetaLayout", "guess_layout", "layout_for", "theta_to_torch", "torch_to_theta"]

#: every layout, in the order ``inspect`` tries them
LAYOUTS: List[ThetaLayout] = [ADAFAC_MLP, ELO_MLP, CELO2_FF, VELO, CELO]


def layout_for(optimizer: str) -> ThetaLayout:
    for layout in LAYOUTS:
        if optimizer in layout.optimizers:
            return layout
    raise CheckpointError(f"unknown optimizer {optimizer!r}; known: {', '.join(sorted(optimizer_names()))}")


def guess_layout(theta: Dict) -> Optional[ThetaLayout]:
    leaves = array_leaves(theta)
    for layout in LAYOUTS:
        if layout.looks_like(leaves):
            return layout
    return None


# ------------------------------------------------------------ JAX -> torch
def theta_to_torch(layout: ThetaLayout, theta: Dict, origin: str) -> Tuple[Dict, Dict[str, torch.Tensor]]:
    """``(config, tensors)`` of the torch network for an upstream theta tree (every entry checked)."""
    leaves = array_leaves(theta)
    if layout.canonical is not None:
        leaves = layout.canonical(leaves, origin)
    non_arrays = [path_str(p) for p, v in _all_leaves(theta) if not isinstance(v, np.ndarray)]
    if non_arrays:
        raise CheckpointError(f"{origin}: non-array entries in theta: {', '.join(non_arrays)}")
    try:
        config = layout.infer_config(leaves)
    except CheckpointError as e:
        other = guess_layout(theta)
        hint = f" (it looks like {other.name}: --optimizer {other.optimizers[0]})" if other else ""
        raise CheckpointError(f"{origin}: not a {layout.name}: {e}{hint}") from None
    tensor_rules, config_rules = layout.rules(config)
    expected = {path: shape for r in tensor_rules for path, shape in zip(r.jax_paths, r.jax_shapes)}
    expected.update({r.jax_path: r.jax_shape for r in config_rules})
    check_keys(origin, layout.name, set(leaves), set(expected))
    for path, shape in expected.items():
        check_shape(origin, path, leaves[path].shape, shape)
        if not np.issubdtype(leaves[path].dtype, np.floating):
            raise CheckpointError(f"{origin}: {path_str(path)} has dtype {leaves[path].dtype}, expected float")
    tensors = {r.torch_key: r.arrays_to_torch([leaves[p] for p in r.jax_paths]) for r in tensor_rules}
    for r in config_rules:
        config[r.config_key] = [float(x) for x in leaves[r.jax_path].astype(np.float32).ravel()]
    return config, tensors


# ------------------------------------------------------------ torch -> JAX
def torch_to_theta(layout: ThetaLayout, config: Dict, tensors: Dict[str, torch.Tensor], origin: str) -> Dict:
    """The upstream theta tree of a torch network (its geometry read from the tensors where the config lacks it)."""
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    config = {**geometry_from_shapes(layout.network, shapes), **config}
    try:
        tensor_rules, config_rules = layout.rules(config)
    except KeyError as e:
        raise CheckpointError(f"{origin}: config lacks {e.args[0]!r}") from None
    wanted = {r.torch_key for r in tensor_rules}
    have = set(tensors)
    if wanted != have:
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        raise CheckpointError(f"{origin}: tensors do not match {layout.name}: "
                              + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                        extra and f"unexpected {', '.join(extra)}"])))
    items: Dict[Path, np.ndarray] = {}
    for r in tensor_rules:
        if isinstance(r, ConcatRule) and shapes[r.torch_key] != r.joined_shape:
            raise CheckpointError(f"{origin}: {r.torch_key} has shape {shapes[r.torch_key]}, "
                                  f"expected {r.joined_shape}")
        for path, shape, array in zip(r.jax_paths, r.jax_shapes, r.tensor_to_jax(tensors[r.torch_key])):
            items[path] = array
            check_shape(origin, path, array.shape, shape)
    defaults = layout.config_defaults() if layout.config_defaults else {}
    for r in config_rules:
        values = config.get(r.config_key, defaults.get(r.config_key))
        if values is None:
            raise CheckpointError(f"{origin}: config lacks {r.config_key!r}, needed for {path_str(r.jax_path)}")
        items[r.jax_path] = np.asarray(values, dtype=np.float32).reshape(r.jax_shape)
    return _ordered(unflatten(items), dict(layout.field_orders))


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
