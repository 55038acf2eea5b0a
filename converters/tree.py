"""Nested-dict trees keyed by tuples of path components.

Haiku module names may contain ``/`` (``rnn/linear``) and ``~``, so a path is a
tuple of opaque keys, never a string split on ``/``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Tuple

import numpy as np

Path = Tuple[str, ...]


def flatten(tree: Any, prefix: Path = ()) -> Iterator[Tuple[Path, Any]]:
    """Yield ``(path, leaf)`` in sorted key order (the order JAX flattens dicts in)."""
    if isinstance(tree, dict):
        for key in sorted(tree, key=str):
            yield from flatten(tree[key], prefix + (str(key),))
    else:
        yield prefix, tree


def unflatten(items: Dict[Path, Any]) -> Dict:
    root: Dict = {}
    for path, value in items.items():
        node = root
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return root


def path_str(path: Path) -> str:
    return "/".join(path)


def array_leaves(tree: Any) -> Dict[Path, np.ndarray]:
    return {p: v for p, v in flatten(tree) if isinstance(v, np.ndarray)}
