"""Downloading meta-networks from the Hugging Face Hub (and joining VeLO's published two-part layout).

Real ``huggingface_hub`` code: it honours ``HF_HUB_OFFLINE`` (then only the
local cache is read), ``HF_HUB_CACHE``/``HF_HOME``, and a revision pinned with
``"owner/name@revision"``. Anything that prevents getting the files becomes a
:class:`~pylo.errors.HubUnavailableError` saying how to load from disk instead.

huggingface_hub's default HTTP client waits forever for a server that accepts and never answers;
while pylo downloads, its requests have connect and read timeouts (:func:`bounded_hub_client`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

from pylo.checkpoint_io import CONFIG_NAME, Checkpoint, read_checkpoint
from pylo.errors import CheckpointError, HubUnavailableError
from pylo.spec.networks import HUB_PART_KEYS, MLP_PREFIX, RNN_PREFIX, hyper_network_geometry, velo_mlp_hub_scratch


def split_hub_key(key: str) -> Tuple[str, Optional[str]]:
    """``"owner/name@rev"`` -> ``("owner/name", "rev")``; no ``@`` -> revision None."""
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"hub key must be a non-empty string like 'owner/name', got {key!r}")
    repo, _, revision = key.strip().partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"hub key must look like 'owner/name' or 'owner/name@revision', got {key!r}")
    return repo, (revision or None)


#: seconds to wait for a connection to the hub (``PYLO_HUB_CONNECT_TIMEOUT``); reads wait
#: ``HF_HUB_DOWNLOAD_TIMEOUT`` (huggingface_hub's setting, 10 s by default) for each chunk
CONNECT_TIMEOUT = 5.0


@contextlib.contextmanager
def bounded_hub_client():
    """Inside, huggingface_hub's requests time out (unless the caller installed their own client factory).

    huggingface_hub passes ``timeout=None`` (wait forever) for its metadata calls, which overrides a
    client's default, so the timeouts are filled in where requests are sent: in the transport.
    """
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None)
    if previous is not _http.default_client_factory:  # the caller configured the client: theirs rules
        yield
        return
    limits = {"connect": float(os.environ.get("PYLO_HUB_CONNECT_TIMEOUT", CONNECT_TIMEOUT)),
              "read": float(constants.HF_HUB_DOWNLOAD_TIMEOUT)}
    limits.update(write=limits["read"], pool=limits["connect"])

    def factory():
        client = _http.default_client_factory()
        client._transport = _BoundedTransport(client._transport, limits)
        return client

    set_client_factory(factory)
    try:
        yield
    finally:
        set_client_factory(previous)


class _BoundedTransport:
    """An httpx transport that sends through ``inner`` with ``limits`` wherever a request set no timeout."""

    def __init__(self, inner, limits):
        self.inner, self.limits = inner, limits

    def handle_request(self, request):
        given = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {k: given.get(k) if given.get(k) is not None else v
                                         for k, v in self.limits.items()}
        return self.inner.handle_request(request)

    def close(self):
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def hub_snapshot(key: str, cache_dir: Optional[str] = None) -> str:
    """Local folder holding the repo's ``config.json`` and safetensors weights."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    repo, revision = split_hub_key(key)
    try:
        with bounded_hub_client():
            return snapshot_download(repo, revision=revision, cache_dir=cache_dir,
                                     allow_patterns=[CONFIG_NAME, "*.safetensors"])
    except RepositoryNotFoundError:
        raise CheckpointError(f"hub repository {repo!r} does not exist (or is private)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"hub repository {repo!r} has no revision {revision!r}") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise HubUnavailableError(
            f"could not get {key!r} from the Hugging Face Hub and it is not in the local cache "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Load the meta-network from disk "
            "instead: pass checkpoint_path='path/to/folder' (a folder with config.json + model.safetensors, "
            "e.g. written by `pylo-convert` or a downloaded hub snapshot), or network=<module>; or populate the "
            "cache on a connected machine and set HF_HUB_OFFLINE=1.") from None


def fetch_hub_checkpoint(key: str, cache_dir: Optional[str] = None) -> Checkpoint:
    """The checkpoint behind a hub key; like ``from_pretrained``, a key naming a local folder reads that folder."""
    if isinstance(key, str) and Path(key).expanduser().is_dir():
        return read_checkpoint(Path(key).expanduser())
    ckpt = read_checkpoint(hub_snapshot(key, cache_dir))
    ckpt.origin = f"hub:{key}"
    return ckpt


def merge_velo_hub_pair(parts: Sequence[Checkpoint]) -> Checkpoint:
    """One :class:`~pylo.models.HyperNetwork` checkpoint from the published ``VeLO_RNN`` and ``VeLO_MLP`` folders.

    Keys are prefixed ``rnn.`` / ``mlp.``; the MLP's scratch slots (one interpolated MLP, no
    meta-parameters) are checked (names and shapes) and dropped. Anything else unexpected stays
    and is refused by strict loading. Keys and shapes come from :mod:`pylo.spec.networks`.
    """
    if len(parts) != 2:
        raise CheckpointError(f"expected the RNN and the MLP hub checkpoints, got {len(parts)}")
    rnn, mlp = parts
    for part, kind, name in ((rnn, "velo_rnn", "VeLO_RNN"), (mlp, "velo_mlp", "VeLO_MLP")):
        if HUB_PART_KEYS[kind] not in part.tensors:
            raise CheckpointError(f"{part.origin}: not a {name} checkpoint (no {HUB_PART_KEYS[kind]})")
    tensors = {f"{RNN_PREFIX}{k}": v for k, v in rnn.tensors.items()}
    tensors.update({f"{MLP_PREFIX}{k}": v for k, v in mlp.tensors.items()})
    origin = f"{rnn.origin} + {mlp.origin}"
    config = hyper_network_geometry({k: tuple(v.shape) for k, v in tensors.items()}, origin)
    scratch = velo_mlp_hub_scratch(config["input_size"], config["hidden_size"], config["hidden_layers"],
                                   config["output_size"])
    hidden = (t for layer in scratch.hidden for t in layer.tensors())
    for slot in (*scratch.input.tensors(), *scratch.output.tensors(), *hidden):
        t = tensors.pop(f"{MLP_PREFIX}{slot.key}", None)
        if t is None:
            raise CheckpointError(f"{mlp.origin}: missing {slot.key} (the published VeLO_MLP layout has it)")
        if tuple(t.shape) != slot.shape:
            raise CheckpointError(f"{mlp.origin}: {slot.key} has shape {tuple(t.shape)}, expected {slot.shape}")
    return Checkpoint(config, tensors, origin)
