"""The backend contract every optimizer family implements, and the one rule that picks a backend.

Backends compute the same update within float32 round-off:

* ``"naive"``: tensor by tensor, the readable reference;
* ``"foreach"``: multi-tensor accumulator updates and one network call over all tensors;
* ``"fused"``: two passes per tensor in bounded memory (chunks of ``chunk_size`` elements), the
  second-moment normalisers folded into the first layer; fastest on CPU;
* ``"triton"``: the fused plan as GPU kernels (CUDA; on a CPU only under ``TRITON_INTERPRET=1``).

**Choosing** (:func:`backend_options` validates at construction, :func:`resolve_backend` decides
per device at each step), the same for every class:

1. an explicit ``backend=`` wins; ``foreach=`` beside it must agree with it;
2. else an explicit ``foreach=True`` / ``False`` means ``"foreach"`` / ``"naive"``;
3. else the class default: ``"auto"`` for the recommended classes (``VeLO``, ``AdafacLO`` ...),
   torch's rule for the ``X_naive`` classes (``"foreach"`` on CUDA, ``"naive"`` elsewhere);
4. ``"auto"`` is ``"triton"`` on CUDA when Triton is installed and the family's kernels implement
   the network, else ``"fused"``.

The choice lives in the param group (``group["backend"]``) and stays what the optimizer was built
with: :meth:`pylo.optim.base.LearnedOptimizer.load_state_dict` keeps it over a saved one.

**Engines.** Each family has one :class:`Engine` subclass per backend, in a table
``{backend: engine class}`` that its functional entry dispatches through. An engine is built
per (param group, device) for one step and is used in two calls, the two passes of the fused
plan: :meth:`Engine.prepare` (accumulators, and whatever per-tensor statistics the family's
controller needs) and :meth:`Engine.finish` (features, network, parameter update). State is
created by the optimizer class (``_init_group``) before ``prepare``; engines never create it.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from pylo.core.chunked import DEFAULT_CHUNK
from pylo.kernels import triton_available

BACKENDS = ("naive", "foreach", "fused", "triton")
CHOICES = BACKENDS + ("auto",)
#: the param-group keys that hold the backend choice (kept over a loaded state dict)
BACKEND_KEYS = ("backend", "foreach", "chunk_size")
#: the class default of the ``X_naive`` classes: torch's multi-tensor-on-CUDA rule
TORCH_DEFAULT = None


def backend_options(backend: Optional[str], foreach: Optional[bool], chunk_size: int = DEFAULT_CHUNK, *,
                    default: Optional[str] = TORCH_DEFAULT) -> Dict[str, Any]:
    """Validate ``backend``, ``foreach`` and ``chunk_size`` once; return them as param-group defaults.

    ``default`` is the class's choice when neither ``backend`` nor ``foreach`` is given
    (``"auto"``, or :data:`TORCH_DEFAULT`).

    >>> backend_options(None, True, default="auto")["backend"]
    'foreach'
    >>> backend_options("fused", False)
    Traceback (most recent call last):
    ...
    ValueError: backend='fused' contradicts foreach=False: pass one of them
    """
    if backend is not None and backend not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {backend!r}")
    if foreach is not None and not isinstance(foreach, bool):
        raise ValueError(f"foreach must be True, False or None, got {foreach!r}")
    if backend is not None and foreach is not None and backend != ("foreach" if foreach else "naive"):
        raise ValueError(f"backend={backend!r} contradicts foreach={foreach!r}: pass one of them")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if backend is None:
        backend = default if foreach is None else ("foreach" if foreach else "naive")
    return {"backend": backend, "foreach": foreach, "chunk_size": chunk_size}


#: the engines that step one rank's part of a sharded tensor (with its splits, :mod:`pylo.optim.sharded`)
SHARD_BACKENDS = ("naive", "fused")


def shard_backend(resolved: str) -> str:
    """The engine that steps DTensor shards for a group whose tensors would run on ``resolved``: the fused
    engine for fused or Triton (the Triton kernels take whole tensors only), else the naive one."""
    return "fused" if resolved in ("fused", "triton") else "naive"


def check_shard_backend(backend: str, splits) -> None:
    """Refuse ``splits`` for an engine that cannot step shards."""
    if splits is not None and backend not in SHARD_BACKENDS:
        raise ValueError(f"sharded tensors (splits) step on the {' or '.join(SHARD_BACKENDS)} backend, "
                         f"not {backend!r}")


def resolve_backend(choice: Optional[str], device: torch.device, triton_unsupported: Optional[str] = None) -> str:
    """The backend a group with ``group["backend"] == choice`` runs on ``device``.

    ``triton_unsupported``: why the family's kernels cannot run this network (None: they can);
    ``"auto"`` then falls back to ``"fused"``.
    """
    if choice is None:
        return "foreach" if device.type == "cuda" else "naive"
    if choice == "auto":
        ok = device.type == "cuda" and triton_unsupported is None and triton_available(device)
        return "triton" if ok else "fused"
    return choice


def engine_table(engines: Mapping[str, type]) -> Dict[str, type]:
    """A family's ``{backend: Engine subclass}``, checked to cover every backend."""
    missing = [b for b in BACKENDS if b not in engines]
    if missing:
        raise TypeError(f"engine table lacks {missing}")
    return dict(engines)


class Engine:
    """One backend of one family's update, for one param group on one device and one step.

    Subclasses take the family's per-group settings in ``__init__`` and implement the two passes.
    """

    #: the backend's name (a member of :data:`BACKENDS`)
    name: str = ""

    @classmethod
    def unsupported(cls, network: torch.nn.Module) -> Optional[str]:
        """Why this backend cannot run ``network`` (None: it can). ``"auto"`` skips such a backend."""
        return None

    def prepare(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], states: Sequence[Dict]):
        """Pass 1: update the accumulators in ``states``; return what :meth:`finish` needs."""
        raise NotImplementedError

    def finish(self, prepared, **inputs) -> None:
        """Pass 2: features, network and the in-place parameter update."""
        raise NotImplementedError
