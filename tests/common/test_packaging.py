"""The distribution installs only the ``pylo`` import name, with the data it needs."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(REPO)], capture_output=True, text=True)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build wheels here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("pylo_lopt-*.whl")
    return path


def test_wheel_installs_only_the_pylo_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pylo"}
    for module in ("pylo/reference_jax/adafac_mlp_lopt.py", "pylo/converters/cli.py",
                   "pylo/parity_tests/registry.py", "pylo/parity_tests/optim_db.py",
                   "pylo/parity_tests/configs.py", "pylo/checkpoints/registry.json", "pylo/spec/shapes.py"):
        assert module in names, module


def test_wheel_declares_console_scripts_and_optional_jax(wheel):
    z = zipfile.ZipFile(wheel)
    entry = next(n for n in z.namelist() if n.endswith("entry_points.txt"))
    text = z.read(entry).decode()
    assert "pylo-convert = pylo.converters.cli:main" in text and "pylo-parity = pylo.parity_tests.cli:main" in text
    meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    assert "Name: pylo-lopt" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist")]
    assert any(line.startswith("Requires-Dist: torch>=") for line in requires)
    assert all("extra ==" in line for line in requires if "jax" in line)
