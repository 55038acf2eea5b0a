"""A restricted unpickler for untrusted theta pickles (μLO, scaling_l2o meta-train checkpoints).

Only what a pickled dict of arrays needs is allowed: numpy array/scalar
reconstruction and plain containers. JAX arrays and Haiku ``FlatMapping``s are
read without importing JAX or Haiku (they become numpy arrays and dicts).
Any other global is refused with an error naming it: unpickling arbitrary
objects runs arbitrary code.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

import numpy as np

from pylo.errors import CheckpointError


def _jax_array(fun, args, arr_state, aval_state=None, *rest):
    """Stand-in for ``jax._src.array._reconstruct_array``: the numpy value it wraps."""
    value = fun(*args)
    value.__setstate__(arr_state)
    return value


def _frombuffer(buf, dtype, shape, order="C") -> np.ndarray:
    """numpy's protocol-5 array reconstruction, for numeric dtypes only."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise CheckpointError("refusing object arrays in a theta pickle")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


def _latin1_bytes(text, encoding="latin1") -> bytes:
    """``_codecs.encode`` as protocol-0/1 pickles use it to spell an array's bytes; nothing else."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise CheckpointError("refusing _codecs.encode other than str -> latin1 bytes in a theta pickle")
    return text.encode("latin1")


try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric")
_ALLOWED = {
    **{(m, "_reconstruct"): _multiarray._reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): _multiarray.scalar for m in _NUMPY_MODULES},
    **{(m, "_frombuffer"): _frombuffer for m in _NUMPY_MODULES},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_bytes,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("jax._src.array", "_reconstruct_array"): _jax_array,
    ("haiku._src.data_structures", "FlatMapping"): dict,
    ("haiku._src.data_structures", "FlatMap"): dict,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise CheckpointError(f"refusing to unpickle {module}.{name}: only numpy arrays and plain containers "
                                  "are accepted in theta pickles")
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid):
        raise CheckpointError("refusing pickles with persistent ids (torch.save files are not theta pickles)")


def loads(data: bytes) -> Any:
    try:
        obj = RestrictedUnpickler(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except Exception as e:  # truncated streams raise EOFError, UnpicklingError, ...
        raise CheckpointError(f"not a readable pickle (corrupt or truncated?): {type(e).__name__}: {e}") from None
    _check_arrays(obj)
    return obj


def _check_arrays(obj: Any) -> None:
    if isinstance(obj, dict):
        for v in obj.values():
            _check_arrays(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_arrays(v)
    elif isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise CheckpointError("refusing object arrays in a theta pickle")
