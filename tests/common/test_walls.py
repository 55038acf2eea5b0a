"""The walls between pylo's parts hold: each is checked in a fresh interpreter.

* the converters run without the optimizers and without JAX;
* the JAX references run without torch;
* the optimizers run without JAX;
* ``import pylo`` loads nothing heavy until a name is used.
"""

import json
import subprocess
import sys

import pytest


def loaded_after(statement: str) -> set:
    """The top-level module names (and ``pylo.optim``) loaded by ``statement`` in a fresh interpreter."""
    code = (f"{statement}\nimport sys, json\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
            "({'pylo.optim'} if 'pylo.optim' in sys.modules else set()))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_pylo_is_lazy():
    loaded = loaded_after("import pylo")
    assert not loaded & {"torch", "jax", "pylo.optim"}


@pytest.mark.parametrize("module", ["pylo.converters", "pylo.converters.cli", "pylo.converters.mappings",
                                    "pylo.spec.networks"])
def test_converters_load_no_optimizer_and_no_jax(module):
    loaded = loaded_after(f"import {module}")
    assert "pylo.optim" not in loaded and "jax" not in loaded, sorted(loaded)


def test_reference_jax_loads_no_torch():
    pytest.importorskip("jax")
    modules = ["adafac_mlp_lopt", "hyper_v2", "celo", "celo2", "elo", "elo_celo2", "prefab", "optax_adapter"]
    loaded = loaded_after("\n".join(f"import pylo.reference_jax.{m}" for m in modules))
    assert "torch" not in loaded


def test_optimizers_load_no_jax():
    from pylo.spec import optimizer_class_names

    loaded = loaded_after("import pylo.optim\n" + "\n".join(f"pylo.optim.{c}" for c in optimizer_class_names()))
    assert "jax" not in loaded and "flax" not in loaded and "optax" not in loaded
