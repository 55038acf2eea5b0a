"""Our constructors keep the published PyLO ``pylo.optim`` signatures and defaults.

The reference is ``../shared/spec/pylo_optim_api.txt`` (the published API docs).
Deliberate departures are listed here, each with its reason.
"""

import ast
import inspect
import os
import re
from pathlib import Path

import pytest

import pylo.optim as optim
from pylo.core.chunked import DEFAULT_CHUNK
from pylo.spec import OPTIMIZERS

SPEC = Path(os.environ.get("PYLO_SHARED_SPEC", Path(__file__).resolve().parents[3] / "shared" / "spec"))
DEPARTURES = {
    ("VeLO_naive", "lr"): 1.0,  # the published 0.001 makes every step 1000x smaller than VeLO's
}


def _published():
    path = SPEC / "pylo_optim_api.txt"
    if not path.exists():
        pytest.skip(f"published API reference not found at {path} (set PYLO_SHARED_SPEC)")
    out = {}
    for match in re.finditer(r"class pylo\.optim\.(\w+)\((.*?)\)\[source\]", path.read_text()):
        fn = ast.parse(f"def f({match.group(2)}): pass").body[0].args
        names = [a.arg for a in fn.args]
        out[match.group(1)] = (names, dict(zip(names[len(names) - len(fn.defaults):],
                                               (ast.literal_eval(d) for d in fn.defaults))))
    return out


def _same(a, b):
    norm = lambda x: list(x) if isinstance(x, (list, tuple)) else x  # noqa: E731
    return norm(a) == norm(b)


def test_every_published_class_exists_with_its_defaults():
    published = _published()
    assert {"AdafacLO_naive", "VeLO_naive", "CELO2_naive", "ELO_CELO2_naive", "ELO_naive"} <= set(published)
    for name, (names, defaults) in published.items():
        params = inspect.signature(getattr(optim, name)).parameters
        assert list(params)[: len(names)] == names, f"{name}: positional order differs"
        for key, want in defaults.items():
            want = DEPARTURES.get((name, key), want)
            assert _same(params[key].default, want), f"{name}.{key}: {params[key].default!r} != {want!r}"
        for extra in ("checkpoint_path", "network"):
            assert extra in params, f"{name} lacks {extra}="


def test_aliases_and_mulo_wrapper():
    for alias, naive in [("AdafacLO", "AdafacLO_naive"), ("VeLO", "VeLO_naive"), ("CELO2", "CELO2_naive"),
                         ("ELO_CELO2", "ELO_CELO2_naive"), ("ELO", "ELO_naive")]:
        a, n = getattr(optim, alias), getattr(optim, naive)
        assert a is n or issubclass(a, n), alias
    params = inspect.signature(optim.MuLO_naive).parameters
    assert list(params)[:2] == ["params", "impl"] and params["impl"].default is optim.AdafacLO_naive


def test_every_class_takes_the_one_backend_rule():
    """``backend=None, foreach=None, chunk_size=DEFAULT_CHUNK`` for every class: the recommended ``X``
    differs from ``X_naive`` only by its class default (``"auto"``), so an explicit ``foreach=`` wins in both."""
    want = {"backend": None, "foreach": None, "chunk_size": DEFAULT_CHUNK}
    other = {}
    for spec in OPTIMIZERS.values():
        for name in spec.classes:
            cls = getattr(optim, name)
            if not inspect.isclass(cls):  # MuLO's wrappers hand every keyword to AdafacLO
                continue
            params = inspect.signature(cls).parameters
            got = {k: params[k].default if k in params else "absent" for k in want}
            if got != want:
                other[name] = got
    assert not other, other
