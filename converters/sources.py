"""Reading any supported checkpoint into a theta tree or a torch checkpoint.

Recognised by content, not by name:

* flax msgpack (``checkpoints.save_state`` / ``flax.serialization.to_bytes``):
  a bare theta (celo ``theta.state``), a ``ParameterCheckpoint``
  ``{params, gen_id, step}`` (learned_optimization ``params_<step>`` files,
  the released VeLO ``.../params``), or a ``(theta, '', 0)`` tuple stored as
  ``{"0", "1", "2"}`` (older ``no_config/*.checkpoint`` files); legacy flax
  namedtuples ``{name, fields, values}`` anywhere inside are decoded;
* pickles of theta (μLO, scaling_l2o), through the restricted unpickler;
* pylo checkpoint folders and published PyLO hub folders
  (``config.json`` + ``model.safetensors``), or a lone ``.safetensors`` file;
* a folder holding ``theta.state`` or ``params`` (and maybe ``config.gin``).
"""

from __future__ import annotations

import hashlib
import pickletools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from pylo.checkpoint_io import CONFIG_NAME, WEIGHTS_NAME, Checkpoint, read_checkpoint
from pylo.converters import flax_msgpack, safe_pickle
from pylo.errors import CheckpointError

JAX_FILE_NAMES = ("theta.state", "params")
GIN_NAME = "config.gin"


@dataclass
class Source:
    path: str
    format: str  # "flax-msgpack", "pickle", "torch"
    container: str = "bare theta"  # for JAX sources
    theta: Optional[Dict] = None
    checkpoint: Optional[Checkpoint] = None
    gin_config: Optional[str] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def is_jax(self) -> bool:
        return self.theta is not None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_source(path) -> Source:
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / WEIGHTS_NAME).exists() or (path / CONFIG_NAME).exists():
            return Source(str(path), "torch", checkpoint=read_checkpoint(path))
        for name in JAX_FILE_NAMES:
            if (path / name).is_file():
                return read_source(path / name)
        raise CheckpointError(f"{path}: folder has neither {WEIGHTS_NAME} nor a JAX checkpoint "
                              f"({' / '.join(JAX_FILE_NAMES)})")
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{path}: empty file")
    if _looks_like_safetensors(data):
        return Source(str(path), "torch", checkpoint=read_checkpoint(path))
    try:
        if data[:1] == b"\x80" or _is_old_pickle(data):
            raw, fmt = safe_pickle.loads(data), "pickle"
        else:
            raw, fmt = flax_msgpack.loads(data), "flax-msgpack"
        raw = _decode_legacy_namedtuples(raw)
        theta, container, meta = _unwrap(raw, path)
    except CheckpointError as e:
        raise (e if str(e).startswith(str(path)) else CheckpointError(f"{path}: {e}")) from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as e:
        raise CheckpointError(f"{path}: malformed checkpoint tree ({type(e).__name__}: {e})") from None
    gin = path.parent / GIN_NAME
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    return Source(str(path), fmt, container, theta=theta, meta=meta,
                  gin_config=gin.read_text() if gin.is_file() else None)


def _is_old_pickle(data: bytes) -> bool:
    """A protocol-0/1 pickle (no ``\\x80`` header): its opcodes parse, without running, up to a final STOP."""
    if data[-1:] != b"." or data[:1] not in (b"(", b"}", b"]", b"c", b"N", b"I", b"F", b"S", b"V", b"X", b"U"):
        return False
    last = None
    try:
        for last in pickletools.genops(data):  # one opcode at a time: no list as long as the file
            pass
    except Exception:  # noqa: BLE001 - anything that does not parse is not a pickle
        return False
    return last is not None and last[0].name == "STOP" and last[2] == len(data) - 1


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 0 < n <= len(data) - 8 and data[8:9] == b"{"


def _decode_legacy_namedtuples(tree: Any) -> Any:
    """Old flax stored namedtuples as ``{"name", "fields": {"0": f0, ...}, "values": {"0": v0, ...}}``."""
    if isinstance(tree, dict):
        if set(tree) == {"name", "fields", "values"} and isinstance(tree["fields"], dict):
            fields, values = tree["fields"], tree["values"]
            return {fields[str(i)]: _decode_legacy_namedtuples(values[str(i)]) for i in range(len(fields))}
        return {k: _decode_legacy_namedtuples(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _decode_legacy_namedtuples(v) for i, v in enumerate(tree)}
    return tree


def _unwrap(raw: Any, path: Path):
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a theta dict, found {type(raw).__name__}")
    keys = set(raw)
    if keys == {"params", "gen_id", "step"}:
        step = raw["step"]
        step = int(step.item() if hasattr(step, "item") else step)
        return raw["params"], "ParameterCheckpoint", {"gen_id": str(raw["gen_id"]), "step": step}
    if keys == {"0", "1", "2"} and isinstance(raw["0"], dict):
        step = raw["2"]
        return raw["0"], "tuple (theta, gen_id, step)", {
            "gen_id": str(raw["1"]), "step": int(step.item() if hasattr(step, "item") else step)}
    return raw, "bare theta", {}


def wrap(theta: Dict, container: str, meta: Dict) -> Dict:
    """Inverse of :func:`_unwrap` (for writing back upstream's own container)."""
    if container == "ParameterCheckpoint":
        return {"params": theta, "gen_id": meta.get("gen_id", ""), "step": int(meta.get("step", 0))}
    if container.startswith("tuple"):
        return {"0": theta, "1": meta.get("gen_id", ""), "2": int(meta.get("step", 0))}
    return theta
