"""Reading and writing pylo checkpoints: a folder with ``config.json`` + ``model.safetensors``.

This is the layout of a ``PyTorchModelHubMixin`` repository on the Hugging Face
Hub, so a folder written here can be pushed as is, and a downloaded hub
snapshot is read by the same code. The config holds the network's constructor
arguments at top level (what ``from_pretrained`` passes to ``__init__``) and
pylo's own metadata under ``"pylo"``; the same config is embedded in the
safetensors header so a lone ``.safetensors`` file is self-describing.

Writes are atomic: the folder is assembled beside its destination (``.NAME.tmp-XXXXXXXX``) and
swapped into place with one ``renameat2(RENAME_EXCHANGE)``, so at every instant the destination holds
the old checkpoint or the new one. ``overwrite`` replaces only a pylo checkpoint folder (its
``config.json`` names pylo) that holds nothing else and does not contain the source being converted.
Leftovers of an interrupted write are removed by the next write to the same destination and are
never read as checkpoints.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import torch

from pylo.errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
META_KEY = "pylo"
HEADER_CONFIG_KEY = "pylo_config"
FORMAT_VERSION = 1
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth")


@dataclass
class Checkpoint:
    """Network constructor config, tensors, and where they came from (for messages)."""

    config: Dict
    tensors: Dict[str, torch.Tensor]
    origin: str
    meta: Dict = field(default_factory=dict)

    @property
    def optimizer(self) -> Optional[str]:
        return self.config.get(META_KEY, {}).get("optimizer")


def _read_safetensors(path: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (corrupt or truncated?): {e}") from None
    return tensors, header


def _read_config(path: Path) -> Dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON config: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config must be a JSON object")
    return config


def _floating(ckpt: Checkpoint) -> Checkpoint:
    """Refuse non-floating tensors: a meta-network's weights are floats, and casting integers would
    silently give other weights."""
    bad = [f"{k} ({v.dtype})" for k, v in ckpt.tensors.items() if not v.is_floating_point()]
    if bad:
        raise CheckpointError(f"{ckpt.origin}: non-floating tensors in a checkpoint: {', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}")
    return ckpt


def read_checkpoint(path) -> Checkpoint:
    """Read a local checkpoint (:func:`_read_any`), refusing non-floating tensors."""
    return _floating(_read_any(path))


def _read_any(path) -> Checkpoint:
    """Read a local checkpoint: a folder, a ``.safetensors`` file, or a torch state-dict file.

    Torch files (``.pt``/``.pth``/``.bin``) are read with ``weights_only=True``
    (tensors and plain containers only).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if LEFTOVER.match(path.name):
        raise CheckpointError(f"{path}: the leftover of an interrupted pylo write, not a checkpoint")
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.exists():
            pickled = [n for n in PICKLE_WEIGHTS if (path / n).exists()]
            hint = (f" (found {pickled[0]}: pickled weights are not read from folders; "
                    "convert them with `pylo-convert`)") if pickled else ""
            raise CheckpointError(f"{path}: no {WEIGHTS_NAME} in checkpoint folder{hint}")
        tensors, header = _read_safetensors(weights)
        config_path = path / CONFIG_NAME
        config = _read_config(config_path) if config_path.exists() else _header_config(header, weights)
        _verify_checksum(config, weights)
        return Checkpoint(config, tensors, str(path))
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors, header = _read_safetensors(path)
        config = _header_config(header, path)
        if not config and (path.parent / CONFIG_NAME).exists():
            config = _read_config(path.parent / CONFIG_NAME)
        return Checkpoint(config, tensors, str(path))
    if suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for bad files
            raise CheckpointError(f"{path}: not a readable torch state dict: {e}") from None
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path}: expected a flat state dict of tensors")
        config = _read_config(path.parent / CONFIG_NAME) if (path.parent / CONFIG_NAME).exists() else {}
        return Checkpoint(config, dict(obj), str(path))
    raise CheckpointError(
        f"{path}: unsupported checkpoint file (expected a folder, .safetensors or .pt); "
        "upstream JAX checkpoints must first be converted with `pylo-convert`")


#: ``config.json``'s record (under :data:`META_KEY`) of ``model.safetensors``'s SHA-256
CHECKSUM_KEY = "weights_sha256"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_checksum(config: Dict, weights: Path) -> None:
    """A folder pylo wrote records its weights' SHA-256; a file that no longer matches is refused (a
    damaged file that still parses would otherwise load as other weights). Folders without it load."""
    meta = config.get(META_KEY)
    want = meta.get(CHECKSUM_KEY) if isinstance(meta, dict) else None
    if want is not None and _sha256(weights) != want:
        raise CheckpointError(f"{weights}: does not match the SHA-256 recorded in {CONFIG_NAME} "
                              "(the file is damaged or was replaced); convert or download it again")


def _header_config(header: Dict, path: Path) -> Dict:
    raw = header.get(HEADER_CONFIG_KEY)
    if raw is None:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt pylo config in safetensors header: {e}") from None
    return config if isinstance(config, dict) else {}


def write_checkpoint(folder, config: Dict, tensors: Dict[str, torch.Tensor], overwrite: bool = False,
                     source=None) -> Path:
    """Atomically write ``folder`` (``config.json`` + ``model.safetensors``).

    ``overwrite`` replaces an existing pylo checkpoint folder only (:func:`check_replaceable`);
    ``source``, the file or folder being converted, must not lie inside ``folder``.
    """
    from safetensors.torch import save_file

    folder = Path(folder).expanduser()
    if folder.exists():
        if not overwrite:
            raise CheckpointError(f"{folder} already exists (pass overwrite=True / --overwrite to replace it)")
        check_replaceable(folder, source)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(contiguous, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt", HEADER_CONFIG_KEY: json.dumps(config, sort_keys=True)})
        meta = config.get(META_KEY)
        meta = dict(meta) if isinstance(meta, dict) else {}
        recorded = {**config, META_KEY: {**meta, CHECKSUM_KEY: _sha256(tmp / WEIGHTS_NAME)}}
        (tmp / CONFIG_NAME).write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
        mode = 0o666 & ~_umask()
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            os.chmod(tmp / name, mode)  # both files as the umask says (safetensors writes 0600)
            _fsync(tmp / name)
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


#: what a pylo checkpoint folder may hold (anything else makes ``overwrite`` refuse)
CHECKPOINT_FILES = {CONFIG_NAME, WEIGHTS_NAME, "README.md", ".gitattributes"}
#: the names of a write's temporary and backup folders (``.NAME.tmp-XXXXXXXX`` / ``.NAME.old-XXXXXXXX``)
LEFTOVER = re.compile(r"^\..+\.(tmp|old)-[0-9a-f]{8}$")


def check_replaceable(folder: Path, source=None) -> None:
    """Refuse to replace anything but a pylo checkpoint folder that holds nothing else and not the source."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} exists and is not a folder; not replacing it")
    others = sorted(p.name for p in folder.iterdir() if p.name not in CHECKPOINT_FILES)
    if others:
        raise CheckpointError(f"{folder} holds files that are not a pylo checkpoint's ({', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}); not replacing it")
    config_path = folder / CONFIG_NAME
    config = _read_config(config_path) if config_path.exists() else {}
    if META_KEY not in config:
        raise CheckpointError(f"{folder} is not a pylo checkpoint folder (no pylo config.json); not replacing it")
    if source is not None:
        src = Path(source).expanduser().resolve()
        if src == folder.resolve() or folder.resolve() in src.parents:
            raise CheckpointError(f"{folder} contains the source {source}; write the conversion elsewhere")


def remove_leftovers(target: Path) -> None:
    """Delete the temporary and backup folders or files that interrupted writes to ``target`` left."""
    for p in target.parent.glob(f".{glob.escape(target.name)}.*"):
        if LEFTOVER.match(p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def write_bytes_atomic(path, data: bytes, overwrite: bool = False) -> Path:
    """Atomically write one file (temp file in the same folder, then ``os.replace``)."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; not replacing it with a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _replace_dir(tmp: Path, folder: Path) -> None:
    """Move ``tmp`` to ``folder``; an existing ``folder`` is swapped out atomically, then deleted."""
    if not folder.exists():
        os.rename(tmp, folder)
        return
    if _exchange(tmp, folder):  # tmp now holds the old checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # no renameat2 (not Linux): two renames; a crash between them leaves the old one in .NAME.old-*
    backup = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(folder, backup)
    try:
        os.rename(tmp, folder)
    except BaseException:
        os.rename(backup, folder)
        raise
    shutil.rmtree(backup, ignore_errors=True)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
