"""Reading the bindings of a learned_optimization ``config.gin`` (no gin-config needed).

Only what the converter needs: ``scope/Name.param = value`` lines, with
backslash continuations, ``#`` comments and values spanning lines inside
brackets. Literal values (numbers, strings, booleans, tuples, lists, None)
are parsed; anything else (``@Configurable()``, ``%MACRO``) is kept as text.
"""

from __future__ import annotations

import ast
from typing import Any, Dict, List

from pylo.errors import CheckpointError

_OPEN, _CLOSE = "([{", ")]}"


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def _depth(text: str) -> int:
    return sum(text.count(c) for c in _OPEN) - sum(text.count(c) for c in _CLOSE)


def _statements(text: str) -> List[str]:
    out, pending = [], ""
    for raw in text.replace("\\\n", " ").splitlines():
        line = _strip_comment(raw).strip()
        if not line and not pending:
            continue
        pending = f"{pending} {line}".strip() if pending else line
        if _depth(pending) <= 0:
            out.append(pending)
            pending = ""
    if pending:
        raise CheckpointError(f"config.gin: unbalanced brackets in {pending[:60]!r}")
    return out


def parse_bindings(text: str) -> Dict[str, Any]:
    """``{"scope/Name.param": value}`` for every binding line (imports and includes are skipped)."""
    bindings: Dict[str, Any] = {}
    for statement in _statements(text):
        if statement.startswith(("import ", "from ", "include ")) or "=" not in statement:
            continue
        key, _, value = statement.partition("=")
        key, value = key.strip(), value.strip()
        try:
            bindings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            bindings[key] = value
    return bindings
