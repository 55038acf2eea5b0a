"""The conversions behind ``pylo-convert`` (usable from Python too)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from pylo import checkpoints
from pylo.checkpoint_io import FORMAT_VERSION, META_KEY, write_bytes_atomic, write_checkpoint
from pylo.converters import flax_msgpack
from pylo.converters.gin_config import parse_bindings
from pylo.converters.mappings import ThetaLayout, guess_layout, layout_for, theta_to_torch, torch_to_theta
from pylo.converters.sources import Source, read_source, wrap
from pylo.converters.tree import array_leaves, flatten, path_str
from pylo.errors import CheckpointError
from pylo.hub import merge_velo_hub_pair

CONTAINERS = ("auto", "bare", "parameter-checkpoint", "tuple")


def _layout_of_torch_source(source: Source, optimizer: Optional[str]) -> ThetaLayout:
    recorded = source.checkpoint.optimizer
    if optimizer is None and recorded is None:
        raise CheckpointError(f"{source.path}: checkpoint does not say which optimizer it is for; pass --optimizer")
    layout = layout_for(optimizer or recorded)
    if recorded is not None and recorded not in layout.optimizers:
        raise CheckpointError(f"{source.path}: checkpoint is for {recorded!r}, not {optimizer!r}")
    return layout


def _hub_pair(rnn_src, mlp_src, optimizer: str) -> Source:
    """The published VeLO hub pair (``VeLO_RNN`` + ``VeLO_MLP`` folders) as one torch source."""
    if optimizer != "velo":
        raise CheckpointError(f"--mlp is for VeLO's published VeLO_RNN + VeLO_MLP folders, not {optimizer!r}")
    parts = [read_source(p) for p in (rnn_src, mlp_src)]
    for part in parts:
        if part.is_jax:
            raise CheckpointError(f"{part.path}: --mlp pairs two PyTorchModelHubMixin folders; this is a "
                                  "JAX checkpoint (convert it alone)")
    merged = merge_velo_hub_pair([part.checkpoint for part in parts])
    origin = {"format": "PyLO hub pair (VeLO_RNN + VeLO_MLP)", "files": [Path(part.path).name for part in parts]}
    return Source(merged.origin, "torch", checkpoint=merged, meta={"origin": origin})


def convert(src, dst, optimizer: str, *, overwrite: bool = False, mlp=None) -> Path:
    """Convert ``src`` (any supported input) to a pylo checkpoint folder ``dst``.

    ``mlp``: for VeLO's published hub pair, ``src`` is the ``VeLO_RNN`` folder and
    ``mlp`` the ``VeLO_MLP`` folder; ``dst`` then holds both parts in one folder.
    Returns the folder. Nothing is written if any check fails.
    """
    layout = layout_for(optimizer)
    source = read_source(src) if mlp is None else _hub_pair(src, mlp, optimizer)
    training: Dict = {}
    if source.is_jax:
        config, tensors = theta_to_torch(layout, source.theta, source.path)
        origin = {"format": source.format, "container": source.container, **source.meta,
                  "file": Path(source.path).name}
        if source.gin_config is not None:
            origin["config.gin"] = source.gin_config
        known = checkpoints.by_sha256(source.meta.get("sha256", ""))
        if known is not None:
            origin["registry"] = known.name
        if layout.training_config is not None:
            gin = parse_bindings(source.gin_config) if source.gin_config else {}
            try:
                training = layout.training_config(source.container, gin, config)
            except CheckpointError as e:
                raise CheckpointError(f"{source.path}: {e}") from None
    else:
        _layout_of_torch_source(source, optimizer)
        theta = torch_to_theta(layout, source.checkpoint.config, source.checkpoint.tensors, source.path)  # validates
        config, tensors = theta_to_torch(layout, theta, source.path)
        meta = source.checkpoint.config.get(META_KEY, {})
        origin = (dict(meta.get("source", {})) or source.meta.get("origin")
                  or {"format": "pylo/PyLO hub folder", "file": Path(source.path).name})
        training = dict(meta.get("optimizer_config", {}))
    config[META_KEY] = {"optimizer": optimizer, "format_version": FORMAT_VERSION, "source": origin}
    if training:
        config[META_KEY]["optimizer_config"] = training
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{src}: non-finite weights (NaN or Inf) in {', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}; nothing written")
    return write_checkpoint(dst, config, tensors, overwrite=overwrite, source=src)


def to_jax(src, dst, optimizer: Optional[str] = None, *, container: str = "auto", overwrite: bool = False) -> Path:
    """Write a pylo (or published PyLO) checkpoint back as upstream flax msgpack."""
    if container not in CONTAINERS:
        raise CheckpointError(f"container must be one of {', '.join(CONTAINERS)}")
    source = read_source(src)
    if source.is_jax:
        raise CheckpointError(f"{source.path}: already a JAX checkpoint ({source.format})")
    layout = _layout_of_torch_source(source, optimizer)
    ckpt = source.checkpoint
    theta = torch_to_theta(layout, ckpt.config, ckpt.tensors, source.path)
    origin = ckpt.config.get(META_KEY, {}).get("source", {})
    kind = {"bare": "bare theta", "parameter-checkpoint": "ParameterCheckpoint", "tuple": "tuple"}.get(
        container, origin.get("container", "bare theta"))
    return write_bytes_atomic(dst, flax_msgpack.dumps(wrap(theta, kind, origin)), overwrite=overwrite)


def inspect_source(src) -> str:
    """A readable account of a checkpoint: format, container, tree, and what it looks like."""
    source = read_source(src)
    lines: List[str] = [f"path:      {source.path}", f"format:    {source.format}"]
    if source.is_jax:
        lines.append(f"container: {source.container}"
                     + "".join(f", {k}={v}" for k, v in source.meta.items() if k in ("gen_id", "step")))
        if source.gin_config is not None:
            lines.append("config.gin: present beside the file")
        lines.append("tree:")
        total = 0
        for path, leaf in flatten(source.theta):
            if isinstance(leaf, np.ndarray):
                total += leaf.size
                lines.append(f"  {path_str(path):<45} {str(tuple(leaf.shape)):<16} {leaf.dtype}")
            else:
                lines.append(f"  {path_str(path):<45} {type(leaf).__name__} {leaf!r}")
        lines.append(f"total:     {total} values in {len(array_leaves(source.theta))} arrays")
        lines.append("looks like: " + _looks_like(source.theta))
        known = checkpoints.by_sha256(source.meta.get("sha256", ""))
        if known is not None:
            lines.append(f"registry:  {known.name} ({known.description}; {known.location})")
    else:
        ckpt = source.checkpoint
        meta = ckpt.config.get(META_KEY)
        lines.append("kind:      " + ("pylo checkpoint folder" if meta else "PyTorchModelHubMixin folder (PyLO hub layout)"))
        lines.append("config:    " + ", ".join(f"{k}={v}" for k, v in sorted(ckpt.config.items()) if k != META_KEY))
        lines.append("tensors:")
        for key in sorted(ckpt.tensors):
            t = ckpt.tensors[key]
            lines.append(f"  {key:<45} {str(tuple(t.shape)):<16} {str(t.dtype).replace('torch.', '')}")
        if meta:
            lines.append(f"looks like: {meta.get('optimizer')} checkpoint written by pylo-convert")
    return "\n".join(lines)


def _looks_like(theta: Dict) -> str:
    layout = guess_layout(theta)
    if layout is None:
        return "no known learned optimizer"
    try:
        config = layout.infer_config(array_leaves(theta))
        theta_to_torch(layout, theta, "theta")
    except CheckpointError as e:
        return f"{layout.name}, but it does not convert: {e}"
    return f"{layout.describe(config)}  -> pylo-convert SRC DST --optimizer {layout.optimizers[0]}"


def list_known() -> str:
    """The registry of published checkpoints as a table."""
    rows = [("name", "optimizer", "format", "location")]
    rows += [(e.name, e.optimizer, e.format, e.location) for e in checkpoints.known()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)
