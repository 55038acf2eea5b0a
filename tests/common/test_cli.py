"""The console scripts exist, document themselves, and list the parity cases."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def script(name):
    """The console script installed beside this interpreter (else on PATH)."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


@pytest.mark.parametrize("name", ["pylo-convert", "pylo-parity"])
def test_help(name):
    exe = script(name)
    assert exe, f"{name} is not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage" in out and "example" in out


def test_parity_list_names_every_registry_case():
    from pylo.parity_tests import registry

    out = subprocess.run([script("pylo-parity"), "--full", "--list"], capture_output=True, text=True,
                         check=True).stdout
    for info, config, backend in registry.cases(interpreter_subset=True):
        assert f"{info.name:<10} {config.name:<20} {backend:<8}" in out


def test_parity_default_is_one_quick_case_per_optimizer():
    from pylo.parity_tests import registry

    out = subprocess.run([script("pylo-parity"), "--list"], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [info.name for info in registry.REGISTRY]
    assert all(line.split()[2] == "fused" for line in lines)


def test_parity_cli_reports_and_fails_on_no_selection(tmp_path):
    proc = subprocess.run([script("pylo-parity"), "--config", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no case matches" in proc.stderr


def test_parity_cli_writes_reports(tmp_path):
    pytest.importorskip("jax")
    from pylo.parity_tests.cli import main

    status = main(["--optimizer", "adafaclo", "--config", "upstream-defaults", "--backend", "naive",
                   "--out", str(tmp_path), "--no-progress"])
    assert status == 0
    import json

    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and report["cases"][0]["max_abs"] <= 1e-6
    assert "| adafaclo | upstream-defaults | naive |" in (tmp_path / "parity.md").read_text()


def test_convert_help_offers_exactly_the_spec_optimizers():
    from pylo.spec import optimizer_names

    out = subprocess.run([script("pylo-convert"), "--help"], capture_output=True, text=True, check=True).stdout
    assert "{" + ",".join(optimizer_names()) + "}" in out.replace("\n", "").replace(" ", "")
