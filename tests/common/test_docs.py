"""The documentation site: every optimizer has a page and an API entry, and ``mkdocs build --strict``
(what CI runs) passes and produces the pages.

The file checks run everywhere; the build runs where the ``docs`` requirements (mkdocs,
mkdocs-material, mkdocstrings[python]) are installed.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pylo.spec import OPTIMIZERS

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
GUIDES = ("converter", "parity", "backends", "distributed", "trainers", "compile")
API_PAGES = ("optim", "base", "sharded", "backend", "checkpoint_io", "hub", "errors")


def _page(name: str) -> str:
    path = DOCS / "optimizers" / f"{name}.md"
    assert path.is_file(), f"optimizer {name!r} (pylo.spec.OPTIMIZERS) has no page: add docs/optimizers/{name}.md"
    return path.read_text()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_has_a_page_in_the_nav(name):
    spec = OPTIMIZERS[name]
    text = _page(name)
    assert text.startswith("# "), f"docs/optimizers/{name}.md needs a title"
    assert f"optimizers/{name}.md" in (REPO / "mkdocs.yml").read_text(), f"add optimizers/{name}.md to mkdocs.yml nav"
    assert spec.classes[0] in text, f"docs/optimizers/{name}.md never names {spec.classes[0]}"
    if spec.needs_loss:
        assert "opt.step(loss)" in text, f"{name} reads the loss: its page must show opt.step(loss)"
    assert f"({name}.md)" in (DOCS / "optimizers" / "index.md").read_text(), "list it in docs/optimizers/index.md"


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_class_is_in_the_api_reference(name):
    spec = OPTIMIZERS[name]
    api = (DOCS / "api" / "optim.md").read_text()
    for cls in spec.classes:
        pattern = rf"^::: {re.escape(spec.module)}\.\w+\.{re.escape(cls)}$"
        assert re.search(pattern, api, re.MULTILINE), f"docs/api/optim.md lacks '::: {spec.module}.<file>.{cls}'"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module)
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _html(site: Path, page: str) -> str:
    path = site / page / "index.html"
    assert path.is_file(), f"the build has no {page}/index.html"
    return path.read_text()


def test_build_has_every_page(site):
    assert (site / "index.html").is_file()
    for page in ["optimizers", *(f"optimizers/{n}" for n in OPTIMIZERS), *GUIDES, "api",
                 *(f"api/{p}" for p in API_PAGES)]:
        _html(site, page)


def test_api_reference_is_generated_from_docstrings(site):
    html = _html(site, "api/optim")
    for spec in OPTIMIZERS.values():
        for cls in spec.classes:
            assert re.search(rf'id="{re.escape(spec.module)}\.\w+\.{re.escape(cls)}"', html), f"no API entry for {cls}"
    # parameters come from the docstrings and signatures, not from the page's own text
    for parameter in ("num_steps", "all_reduce_loss", "orthogonalize", "adam_lr_mult", "step_mult"):
        assert parameter in html, parameter
    assert ":class:" not in html, "a Sphinx role was left unrendered (docs/_hooks/sphinx_roles.py)"
    base = _html(site, "api/base")
    assert "LearnedOptimizer" in base and "load_state_dict" in base
    assert "whole_tensors" in _html(site, "api/sharded")
    assert "write_checkpoint" in _html(site, "api/checkpoint_io")
    assert "HubUnavailableError" in _html(site, "api/errors")
