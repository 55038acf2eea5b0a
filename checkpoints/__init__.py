"""The registry of known published learned-optimizer checkpoints (data: ``registry.json``).

Each entry says which pylo optimizer consumes it, where upstream publishes it,
its file format and container, the optimizer config it was trained with, and
its sha256 where known. ``pylo-convert list`` prints it; ``pylo-convert``
records a matching entry in the converted checkpoint's metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Dict, List, Optional

from pylo.spec import OPTIMIZERS


@dataclass(frozen=True)
class KnownCheckpoint:
    name: str
    optimizer: str
    description: str
    location: str
    format: str
    container: str
    config: Dict = field(default_factory=dict)
    optimizer_kwargs: Dict = field(default_factory=dict)
    companions: List[str] = field(default_factory=list)
    sha256: Optional[str] = None
    size_bytes: Optional[int] = None
    notes: str = ""

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"registry entry {self.name!r}: optimizer {self.optimizer!r} is not a "
                             f"pylo.spec.OPTIMIZERS name (known: {', '.join(OPTIMIZERS)})")


def known() -> List[KnownCheckpoint]:
    text = resources.files(__name__).joinpath("registry.json").read_text()
    return [KnownCheckpoint(**entry) for entry in json.loads(text)]


def get(name: str) -> KnownCheckpoint:
    for entry in known():
        if entry.name == name:
            return entry
    raise KeyError(f"no known checkpoint {name!r}; known: {', '.join(e.name for e in known())}")


def by_sha256(digest: str) -> Optional[KnownCheckpoint]:
    for entry in known():
        if entry.sha256 and entry.sha256 == digest:
            return entry
    return None
