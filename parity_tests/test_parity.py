"""Parity of the registered optimizers with their JAX references.

By default the quick set, as ``pylo-parity`` runs it: every optimizer and every parameter shape on the
backend the recommended class picks (about a minute). ``PYLO_PARITY_FULL=1`` runs the whole matrix
here (every config and backend, fast backends in tiny chunks; about 16 minutes on two cores), which
CI runs as ``pylo-parity --full``. The Triton backends run under ``TRITON_INTERPRET=1`` (set by the
root ``conftest.py`` when there is no GPU), on each entry's ``interpreter_configs`` (the interpreter
is slow); ``pylo-parity --backend triton`` runs every config.
"""

import importlib.util
import os

import pytest

pytest.importorskip("jax")

from pylo.parity_tests import registry  # noqa: E402
from pylo.parity_tests.pipeline import TOLERANCE, run_case  # noqa: E402

FULL = os.environ.get("PYLO_PARITY_FULL") == "1"
#: the whole matrix (what CI runs), whether or not this run runs it
MATRIX = list(registry.cases(interpreter_subset=True))
CASES = MATRIX if FULL else list(registry.cases(quick=True))


@pytest.mark.parametrize("info,config,backend", CASES, ids=[f"{i.name}-{c.name}-{b}" for i, c, b in CASES])
def test_parity(info, config, backend):
    for module in info.requires:
        pytest.importorskip(module)
    reason = registry.unavailable(config)
    if reason:
        pytest.skip(reason)
    result = run_case(info, config, backend, small_chunks=FULL)
    assert result.error is None, result.error
    assert len(result.shapes) == len(config.shapes)
    assert config.steps >= 50
    worst = {n: (tuple(s.shape), s.max_abs, s.first_bad_step) for n, s in result.shapes.items()
             if s.max_abs > TOLERANCE}
    assert result.max_abs <= TOLERANCE, f"over {TOLERANCE:g}: {worst}"


def test_triton_cases_are_collected_without_a_gpu():
    """With Triton installed, every optimizer has Triton cases here, on a GPU or (interpreted) without one."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    import torch

    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1", "the root conftest.py sets TRITON_INTERPRET=1 without a GPU"
    with_triton = {info.name for info, _, backend in MATRIX if backend == "triton"}
    assert with_triton == {info.name for info in registry.REGISTRY if "triton" in info.backends}
