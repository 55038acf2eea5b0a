"""flax msgpack (``flax.serialization.to_bytes``) read and written with msgpack + numpy only.

Layout (flax ``serialization.py``): maps with string keys; tuples and lists as
``{"0": ..., "1": ...}``; namedtuples as ``{field: ...}`` (legacy flax:
``{"name", "fields", "values"}``); arrays as ext type 1 and numpy scalars as
ext type 3, whose payload is msgpack ``(shape, dtype name, C-order bytes)``;
arrays over 2**30 bytes as ``{"__msgpack_chunked_array__", "shape", "chunks"}``.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from pylo.errors import CheckpointError

EXT_NDARRAY = 1
EXT_COMPLEX = 2
EXT_NPSCALAR = 3
CHUNKED = "__msgpack_chunked_array__"


def _dtype(name) -> np.dtype:
    name = name.decode() if isinstance(name, bytes) else str(name)
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise CheckpointError("bfloat16 arrays need the ml_dtypes package (installed with JAX)") from None
        return np.dtype(ml_dtypes.bfloat16)
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise CheckpointError(f"unknown array dtype {name!r} in msgpack checkpoint") from None
    if dtype.hasobject:
        raise CheckpointError("object arrays are not allowed in checkpoints")
    return dtype


def _array_from_payload(payload: bytes) -> np.ndarray:
    shape, dtype_name, buf = msgpack.unpackb(payload, raw=True)
    dtype = _dtype(dtype_name)
    count = int(np.prod(shape)) if len(shape) else 1
    if len(buf) != count * dtype.itemsize:
        raise CheckpointError(f"array of shape {tuple(shape)} {dtype} has {len(buf)} bytes, "
                              f"expected {count * dtype.itemsize} (truncated?)")
    return np.frombuffer(buf, dtype=dtype).reshape(shape).copy()


def _ext_hook(code: int, payload: bytes):
    if code == EXT_NDARRAY:
        return _array_from_payload(payload)
    if code == EXT_NPSCALAR:
        return _array_from_payload(payload)[()]
    if code == EXT_COMPLEX:
        real, imag = msgpack.unpackb(payload)
        return complex(real, imag)
    raise CheckpointError(f"unknown msgpack extension type {code}")


def _unchunk(tree: Any) -> Any:
    if isinstance(tree, dict):
        if tree.get(CHUNKED):
            shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def loads(data: bytes) -> Any:
    """Decode flax msgpack bytes into dicts, numpy arrays and Python scalars."""
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except CheckpointError:
        raise
    except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError, msgpack.exceptions.StackError,
            ValueError, TypeError) as e:
        raise CheckpointError(f"not a valid flax msgpack checkpoint (corrupt or truncated?): "
                              f"{type(e).__name__}: {e}") from None
    return _unchunk(tree)


def _pack_default(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("object arrays cannot be serialised")
        return msgpack.ExtType(EXT_NDARRAY, msgpack.packb(
            (list(obj.shape), obj.dtype.name, np.ascontiguousarray(obj).tobytes("C")), use_bin_type=True))
    if isinstance(obj, np.generic):
        return msgpack.ExtType(EXT_NPSCALAR, msgpack.packb(
            ([], obj.dtype.name, np.asarray(obj).tobytes("C")), use_bin_type=True))
    raise TypeError(f"cannot serialise {type(obj).__name__} to flax msgpack")


def _state_dict(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _state_dict(v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {k: _state_dict(getattr(tree, k)) for k in tree._fields}
    if isinstance(tree, (list, tuple)):
        return {str(i): _state_dict(v) for i, v in enumerate(tree)}
    return tree


def dumps(tree: Any) -> bytes:
    """Encode a tree of dicts/tuples/numpy arrays as ``flax.serialization.to_bytes`` would."""
    return msgpack.packb(_state_dict(tree), default=_pack_default, strict_types=True)
