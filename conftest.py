"""What every test folder needs (tests/ and parity_tests/ alike): Triton's interpreter on a machine
without a GPU, the real checkpoints beside the repository, and no network."""

import os

# Triton kernels are checked on the CPU with Triton's interpreter; it must be chosen before triton is imported.
if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:  # pragma: no cover
        pass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def shared_checkpoints() -> Path:
    """Real published checkpoints (read-only), ``../shared/checkpoints`` beside the repository.

    ``PYLO_SHARED_CHECKPOINTS`` overrides the location (e.g. from a git worktree).
    """
    path = Path(os.environ.get("PYLO_SHARED_CHECKPOINTS", REPO.parent / "shared" / "checkpoints"))
    if not path.is_dir():
        pytest.skip(f"real checkpoints not found at {path} (set PYLO_SHARED_CHECKPOINTS)")
    return path


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path_factory):
    """Tests never reach the network: the hub is pointed at a closed local port and a private cache."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "hf_cache"), raising=False)
