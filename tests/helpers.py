"""Small builders shared by the tests (no network, real libraries)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict

import torch
from safetensors.torch import save_file


def write_hub_folder(folder: Path, config: Dict, tensors: Dict[str, torch.Tensor]) -> Path:
    """A folder laid out as a ``PyTorchModelHubMixin`` repo: ``config.json`` + ``model.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


def write_hub_cache(cache: Path, repo_id: str, revision: str, folder: Path, main: bool = True) -> Path:
    """Place ``folder``'s files in a Hugging Face cache as the hub client lays it out.

    ``models--owner--name/snapshots/<revision>/<files>`` and ``refs/main`` naming
    the revision (when ``main``), which is what ``snapshot_download`` reads offline.
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        shutil.copy(f, snapshot / f.name)
    if main:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snapshot
